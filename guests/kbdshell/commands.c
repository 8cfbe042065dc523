/*
 * The command interpreter: splits a line into WORD and ARG and runs
 * echo, calc, hash, hist, ticks, uptime, bench, pages, evtchn (evtchn.c), xs (xs.c), halt and par (par.c). Output formats are
 * specified in README.md; every output line ends with "\r\n".
 */
#include "shell.h"
#include "console.h"
#include "kernel.h"
#include "lib.h"
#include "clock.h"
#include "hypercall.h"
#include "memory.h"
#include "par.h"

#define FNV1A_OFFSET 0xcbf29ce484222325ull
#define FNV1A_PRIME 0x100000001b3ull
#define BENCH_MULTIPLIER 6364136223846793005ull

static void print_line(const char *s)
{
    console_puts(s);
    console_puts("\r\n");
}

/* ---- calc: recursive descent over + - * / % ( ) with 64-bit wrap-around ---- */

enum calc_error { CALC_OK, CALC_SYNTAX, CALC_DIV_ZERO };

struct calc {
    const char *p;
    enum calc_error error;
};

static int64_t calc_expr(struct calc *c);

static void skip_spaces(struct calc *c)
{
    while (*c->p == ' ')
        c->p++;
}

static void fail(struct calc *c, enum calc_error error)
{
    if (c->error == CALC_OK)
        c->error = error;
}

static int64_t calc_primary(struct calc *c)
{
    uint64_t value = 0;

    skip_spaces(c);
    if (*c->p == '(') {
        int64_t inner;

        c->p++;
        inner = calc_expr(c);
        skip_spaces(c);
        if (*c->p != ')') {
            fail(c, CALC_SYNTAX);
            return 0;
        }
        c->p++;
        return inner;
    }
    if (*c->p < '0' || *c->p > '9') {
        fail(c, CALC_SYNTAX);
        return 0;
    }
    while (*c->p >= '0' && *c->p <= '9')
        value = value * 10 + (uint64_t)(*c->p++ - '0');
    return (int64_t)value;
}

static int64_t calc_unary(struct calc *c)
{
    skip_spaces(c);
    if (*c->p == '-') {
        c->p++;
        return (int64_t)-(uint64_t)calc_unary(c);
    }
    if (*c->p == '+') {
        c->p++;
        return calc_unary(c);
    }
    return calc_primary(c);
}

static int64_t divide(struct calc *c, char op, int64_t a, int64_t b)
{
    if (b == 0) {
        fail(c, CALC_DIV_ZERO);
        return 0;
    }
    if (b == -1)   /* INT64_MIN / -1 overflows (and traps on x86): wrap instead. */
        return op == '/' ? (int64_t)-(uint64_t)a : 0;
    return op == '/' ? a / b : a % b;
}

static int64_t calc_term(struct calc *c)
{
    int64_t value = calc_unary(c);

    for (;;) {
        char op;

        skip_spaces(c);
        op = *c->p;
        if (op != '*' && op != '/' && op != '%')
            return value;
        c->p++;
        if (op == '*')
            value = (int64_t)((uint64_t)value * (uint64_t)calc_unary(c));
        else
            value = divide(c, op, value, calc_unary(c));
    }
}

static int64_t calc_expr(struct calc *c)
{
    int64_t value = calc_term(c);

    for (;;) {
        char op;

        skip_spaces(c);
        op = *c->p;
        if (op != '+' && op != '-')
            return value;
        c->p++;
        if (op == '+')
            value = (int64_t)((uint64_t)value + (uint64_t)calc_term(c));
        else
            value = (int64_t)((uint64_t)value - (uint64_t)calc_term(c));
    }
}

static void cmd_calc(const char *arg)
{
    struct calc c = { .p = arg, .error = CALC_OK };
    int64_t value = calc_expr(&c);

    skip_spaces(&c);
    if (*c.p != '\0')
        fail(&c, CALC_SYNTAX);
    if (c.error == CALC_DIV_ZERO) {
        print_line("error: division by zero");
    } else if (c.error == CALC_SYNTAX) {
        print_line("error: syntax");
    } else {
        console_put_i64(value);
        console_puts("\r\n");
    }
}

/* ---- hash, bench ---- */

static uint64_t fnv1a64(const char *text)
{
    uint64_t hash = FNV1A_OFFSET;

    for (; *text; text++) {
        hash ^= (unsigned char)*text;
        hash *= FNV1A_PRIME;
    }
    return hash;
}

static void cmd_hash(const char *arg)
{
    console_put_hex64(fnv1a64(arg));
    console_puts("\r\n");
}

/* The benchmark loop (README.md gives the same definition in Python). */
__attribute__((noinline)) static uint64_t bench_loop(uint64_t iterations)
{
    uint64_t x = 0, i;

    for (i = 0; i < iterations; i++) {
        x = x * BENCH_MULTIPLIER + i;
        x ^= x >> 29;
    }
    return x;
}

static void cmd_bench(const char *arg)
{
    uint64_t iterations;

    if (!parse_u64(arg, &iterations)) {
        print_line("error: usage: bench N");
        return;
    }
    console_put_hex64(bench_loop(iterations));
    console_puts("\r\n");
}

/* ---- pages: the PV memory model at work (README.md) ---- */

#define PTE_PRESENT 0x1ul
#define PTE_RW 0x2ul
#define PTE_FRAME 0x000ffffffffff000ul
#define PTE_DATA (PTE_PRESENT | PTE_RW | 0x60ul)

PAGE_WINDOW(pages_window);

/* Machine address of the L1 entry that maps va, walking the tables from the current L4 through
 * the bootstrap region's 1:1 map (a table frame's pfn is its mfn there). 0 if none. */
static uint64_t l1_entry_maddr(unsigned long l4_mfn, unsigned long va)
{
    unsigned long mfn = l4_mfn;
    int level;

    for (level = 4; level > 1; level--) {
        const uint64_t *table = (const uint64_t *)(mfn << PAGE_SHIFT);
        uint64_t entry = table[(va >> (PAGE_SHIFT + 9 * (level - 1))) & 511];

        if (!(entry & PTE_PRESENT))
            return 0;
        mfn = (entry & PTE_FRAME) >> PAGE_SHIFT;
    }
    return (mfn << PAGE_SHIFT) + ((va >> PAGE_SHIFT) & 511) * 8;
}

static int mmuext(unsigned int cmd, unsigned long mfn)
{
    struct mmuext_op op = { .cmd = cmd, .arg1.mfn = mfn };
    unsigned int done = 0;

    return HYPERVISOR_mmuext_op(&op, 1, &done, DOMID_SELF) == 0 && done == 1;
}

/* Take the top page of memory, copy the current L4 into it (through a window mapped with
 * update_va_mapping), pin it, run on it (NEW_BASEPTR), write a word into the window's own frame
 * through an mmu_update-made mapping, switch back, unpin, restore. Prints a checksum of the L4
 * copy as read back through that mapping and whether the word survived the switch back; a
 * refused step prints its name. */
static void cmd_pages(void)
{
    unsigned long top = start_info->nr_pages - 1;
    unsigned long top_mfn = ((const unsigned long *)start_info->mfn_list)[top];
    unsigned long l4_mfn = virt_to_mfn((const void *)start_info->pt_base);
    unsigned long window_mfn = virt_to_mfn(pages_window);
    uint64_t *window = (uint64_t *)pages_window;
    uint64_t check = 0;
    struct mmu_update update;
    unsigned int done = 0;
    unsigned i;

    HYPERVISOR_update_va_mapping((void *)(top << PAGE_SHIFT), 0, UVMF_INVLPG);  /* -EINVAL if unmapped */
    if (HYPERVISOR_update_va_mapping(pages_window, (top_mfn << PAGE_SHIFT) | PTE_DATA, UVMF_INVLPG)) {
        print_line("pages: update_va_mapping refused");
        return;
    }
    memcpy(window, (const void *)start_info->pt_base, PAGE_SIZE);
    map_machine_frame(pages_window, window_mfn);
    if (!mmuext(MMUEXT_PIN_L4_TABLE, top_mfn) || !mmuext(MMUEXT_NEW_BASEPTR, top_mfn)) {
        print_line("pages: pin or new_baseptr refused");
        return;
    }
    /* running on the copy: map the window onto the top frame again, with mmu_update this time */
    update.ptr = l1_entry_maddr(l4_mfn, (unsigned long)pages_window) | MMU_NORMAL_PT_UPDATE;  /* the copy shares it */
    update.val = (top_mfn << PAGE_SHIFT) | PTE_PRESENT;        /* read-only: it is a page table */
    if (HYPERVISOR_mmu_update(&update, 1, &done, DOMID_SELF) || done != 1) {
        print_line("pages: mmu_update refused");
        return;
    }
    for (i = 0; i < 512; i++)
        check = check * 31 + window[i];
    update.val = (window_mfn << PAGE_SHIFT) | PTE_DATA;
    HYPERVISOR_mmu_update(&update, 1, &done, DOMID_SELF);
    window[0] = check;
    if (!mmuext(MMUEXT_NEW_BASEPTR, l4_mfn) || !mmuext(MMUEXT_UNPIN_TABLE, top_mfn)) {
        print_line("pages: switching back refused");
        return;
    }
    console_puts("pages: ");
    console_put_hex64(check);
    print_line(window[0] == check ? " ok" : " lost");
}

/* ---- dispatch ---- */

void run_command(const char *line)
{
    char word[LINE_TEXT_MAX + 1];
    const char *arg;
    unsigned n = 0;

    while (*line == ' ')
        line++;
    if (*line == '\0')
        return;
    while (line[n] && line[n] != ' ') {
        word[n] = line[n];
        n++;
    }
    word[n] = '\0';
    arg = line[n] == ' ' ? line + n + 1 : line + n;

    if (strcmp(word, "echo") == 0) {
        print_line(arg);
    } else if (strcmp(word, "calc") == 0) {
        cmd_calc(arg);
    } else if (strcmp(word, "hash") == 0) {
        cmd_hash(arg);
    } else if (strcmp(word, "hist") == 0) {
        print_history();
    } else if (strcmp(word, "ticks") == 0) {
        console_put_u64(timer_ticks());
        console_puts("\r\n");
    } else if (strcmp(word, "uptime") == 0) {
        console_put_u64(system_time_ns());
        console_puts("\r\n");
    } else if (strcmp(word, "bench") == 0) {
        cmd_bench(arg);
    } else if (strcmp(word, "pages") == 0) {
        cmd_pages();
    } else if (strcmp(word, "evtchn") == 0) {
        cmd_evtchn(arg);
    } else if (strcmp(word, "xs") == 0) {
        cmd_xs(arg);
    } else if (strcmp(word, "halt") == 0) {
        poweroff();
    } else if (strcmp(word, "par") == 0) {
        cmd_par(arg);
    } else {
        console_puts("unknown command: ");
        print_line(word);
    }
}
