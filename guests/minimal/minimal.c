/*
 * minimal: a second, independent PV guest that uses the Xen ABI differently
 * from kbdshell, to keep the hypervisor honest. It shares no code with the
 * other guests. Its entry point is a C function (start_info arrives in %rsi,
 * which is the second argument register), it runs on the hypervisor's boot
 * stack, its Xen notes live in an unallocated SHT_NOTE section (no PT_NOTE),
 * it stops the default periodic ticker and uses one-shot set_timer_op
 * timers, polls with SCHEDOP_yield while events are masked, and prints
 * through both CONSOLEIO_write and the console ring. It maps shared_info and
 * the console ring (named by machine frame) onto two pages of its bss with
 * update_va_mapping. README.md gives the transcript. Invariant: the guest
 * only ever touches its image, the boot stack, start_info, shared_info and
 * the console page.
 */
#include <stddef.h>
#include <stdint.h>

#include <xen/xen.h>
#include <xen/elfnote.h>
#include <xen/event_channel.h>
#include <xen/sched.h>
#include <xen/vcpu.h>
#include <xen/version.h>
#include <xen/io/console.h>

#define TIMER_DELAY_NS 1000000ull      /* 1 ms */
#define BULK_LINES 48                  /* 48 * 80 bytes, written before one notify: fills the 2 KiB ring */
#define INPUT_MAX 32
#define DRAIN_MAX_YIELDS 1000
#define RFLAGS_IF 0x200ull
#define FRAME_CS (FLAT_KERNEL_CS64 & ~3)

/* ---- ELF notes and the hypercall page ---- */

/*
 * The notes go into a non-allocated SHT_NOTE section (flags ""), so no
 * segment covers them; each is name "Xen", then a descriptor padded to 4.
 */
#define STR_(x) #x
#define STR(x) STR_(x)
#define NOTE(type, desc) \
    ".balign 4\n.long 4, 9f - 8f, " STR(type) "\n.asciz \"Xen\"\n8: " desc "\n9: .balign 4\n"

asm(".pushsection .note.Xen, \"\", @note\n"
    NOTE(XEN_ELFNOTE_GUEST_OS, ".asciz \"minimal\"")
    NOTE(XEN_ELFNOTE_XEN_VERSION, ".asciz \"xen-3.0\"")
    NOTE(XEN_ELFNOTE_LOADER, ".asciz \"generic\"")
    NOTE(XEN_ELFNOTE_ENTRY, ".quad _start")
    NOTE(XEN_ELFNOTE_HYPERCALL_PAGE, ".quad minimal_hypercall_page")
    ".popsection\n"
    /* Filled by the hypervisor; a page of its own in the code segment. */
    ".pushsection .text.hypercall_page, \"ax\", @progbits\n"
    ".balign 4096\n"
    ".globl minimal_hypercall_page\n"
    "minimal_hypercall_page: .fill 4096, 1, 0xcc\n"
    ".popsection\n");

extern char minimal_hypercall_page[4096];

/* ---- hypercalls: one out-of-line caller, entry address computed at run time ---- */

static __attribute__((noinline)) long hypercall(unsigned int nr, unsigned long a1, unsigned long a2,
                                                unsigned long a3)
{
    register unsigned long rdi asm("rdi") = a1;
    register unsigned long rsi asm("rsi") = a2;
    register unsigned long rdx asm("rdx") = a3;
    unsigned long entry = (unsigned long)minimal_hypercall_page + nr * 32ul;
    long result;

    asm volatile("call *%[entry]"
                 : "=a"(result), "+r"(rdi), "+r"(rsi), "+r"(rdx)
                 : [entry] "r"(entry)
                 : "rcx", "r11", "r8", "r10", "memory", "cc");
    return result;
}

/* ---- state ---- */

static start_info_t *start;
static shared_info_t *shared;
static struct xencons_interface *ring;
static evtchn_port_t console_port;
static evtchn_port_t timer_port;
static volatile unsigned int timer_upcalls;
static volatile int bad_frame_seen;

#define barrier() asm volatile("" ::: "memory")

static struct vcpu_info *vcpu(void)
{
    return &shared->vcpu_info[0];
}

static unsigned long length(const char *s)
{
    unsigned long n = 0;

    while (s[n])
        n++;
    return n;
}

static void log_to_hypervisor(const char *s)
{
    hypercall(__HYPERVISOR_console_io, CONSOLEIO_write, length(s), (unsigned long)s);
}

static void yield(void)
{
    hypercall(__HYPERVISOR_sched_op, SCHEDOP_yield, 0, 0);
}

static __attribute__((noreturn)) void shut_down(unsigned int reason)
{
    struct sched_shutdown request = { .reason = reason };

    hypercall(__HYPERVISOR_sched_op, SCHEDOP_shutdown, (unsigned long)&request, 0);
    __builtin_trap();
}

static __attribute__((noreturn)) void fail(const char *why)
{
    log_to_hypervisor("minimal: FAILED: ");
    log_to_hypervisor(why);
    log_to_hypervisor("\n");
    shut_down(SHUTDOWN_crash);
}

/* ---- console ring ---- */

static void notify_console(void)
{
    struct evtchn_send send = { .port = console_port };

    hypercall(__HYPERVISOR_event_channel_op, EVTCHNOP_send, (unsigned long)&send, 0);
}

/* Queue s; notify the backend only when the ring is full (then yield until it drains). */
static void ring_write(const char *s)
{
    XENCONS_RING_IDX prod = ring->out_prod;

    for (; *s; s++) {
        while (prod - *(volatile XENCONS_RING_IDX *)&ring->out_cons >= sizeof(ring->out)) {
            barrier();
            ring->out_prod = prod;
            notify_console();
            yield();
        }
        ring->out[MASK_XENCONS_IDX(prod, ring->out)] = *s;
        prod++;
    }
    barrier();
    ring->out_prod = prod;
}

static void ring_print(const char *s)
{
    ring_write(s);
    notify_console();
}

static void drain_output(void)
{
    int yields;

    for (yields = 0; yields < DRAIN_MAX_YIELDS; yields++) {
        if (*(volatile XENCONS_RING_IDX *)&ring->out_cons == ring->out_prod)
            return;
        notify_console();
        yield();
    }
}

/* Poll for one input line (events masked): yield while the ring is empty. */
static unsigned long ring_read_line(char *line, unsigned long max)
{
    unsigned long n = 0;

    for (;;) {
        XENCONS_RING_IDX cons = ring->in_cons;
        char c;

        while (cons == *(volatile XENCONS_RING_IDX *)&ring->in_prod)
            yield();
        barrier();
        c = ring->in[MASK_XENCONS_IDX(cons, ring->in)];
        barrier();
        ring->in_cons = cons + 1;
        if (c == '\r' || c == '\n') {
            if (n > 0)
                break;
            continue;
        }
        if (n < max)
            line[n++] = c;
    }
    notify_console();
    return n;
}

/* ---- time ---- */

static uint64_t now_ns(void)
{
    const volatile struct vcpu_time_info *t = &vcpu()->time;
    uint32_t version, lo, hi;
    uint64_t system_time, stamp, tsc, delta;
    uint32_t mul;
    int8_t shift;

    do {
        version = t->version;
        barrier();
        system_time = t->system_time;
        stamp = t->tsc_timestamp;
        mul = t->tsc_to_system_mul;
        shift = t->tsc_shift;
        asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
        barrier();
    } while ((version & 1) || version != t->version);
    tsc = ((uint64_t)hi << 32) | lo;
    delta = tsc > stamp ? tsc - stamp : 0;
    delta = shift < 0 ? delta >> -shift : delta << shift;
    return system_time + (uint64_t)(((unsigned __int128)delta * mul) >> 32);
}

static void arm_one_shot_timer(void)
{
    if (hypercall(__HYPERVISOR_set_timer_op, now_ns() + TIMER_DELAY_NS, 0, 0) != 0)
        fail("set_timer_op");
}

/* ---- events ---- */

static int test_and_clear_pending(evtchn_port_t port)
{
    xen_ulong_t *word = &shared->evtchn_pending[port / (8 * sizeof(xen_ulong_t))];
    xen_ulong_t bit = (xen_ulong_t)1 << (port % (8 * sizeof(xen_ulong_t)));

    return (__atomic_fetch_and(word, ~bit, __ATOMIC_SEQ_CST) & bit) != 0;
}

/* Called by upcall_entry with the bounce frame [rcx, r11, rip, cs, rflags, rsp, ss]. */
__attribute__((used)) static void on_upcall(const uint64_t *frame)
{
    if (frame[3] != FRAME_CS || !(frame[4] & RFLAGS_IF))
        bad_frame_seen = 1;
    vcpu()->evtchn_upcall_pending = 0;
    __atomic_exchange_n(&vcpu()->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
    if (test_and_clear_pending(timer_port))
        timer_upcalls++;
    test_and_clear_pending(console_port);
}

/*
 * The upcall entry: save what C may clobber, hand on_upcall the bounce frame,
 * restore, put rcx and r11 back from the frame and HYPERVISOR_iret with
 * flags = 0 (the hypercall page's iret entry pushes rcx, r11 and rax).
 */
__attribute__((naked)) static void upcall_entry(void)
{
    asm volatile(
        "push %%rax\n\t"
        "push %%rdx\n\t"
        "push %%rsi\n\t"
        "push %%rdi\n\t"
        "push %%r8\n\t"
        "push %%r9\n\t"
        "push %%r10\n\t"
        "push %%rbp\n\t"
        "lea 64(%%rsp), %%rdi\n\t"
        "mov %%rsp, %%rbp\n\t"
        "and $-16, %%rsp\n\t"
        "call on_upcall\n\t"
        "mov %%rbp, %%rsp\n\t"
        "pop %%rbp\n\t"
        "pop %%r10\n\t"
        "pop %%r9\n\t"
        "pop %%r8\n\t"
        "pop %%rdi\n\t"
        "pop %%rsi\n\t"
        "pop %%rdx\n\t"
        "pop %%rax\n\t"
        "pop %%rcx\n\t"
        "pop %%r11\n\t"
        "pushq $0\n\t"
        "jmp minimal_hypercall_page + %c[iret]"
        :
        : [iret] "i"(__HYPERVISOR_iret * 32));
}

__attribute__((naked)) static void failsafe_entry(void)
{
    asm volatile("and $-16, %%rsp\n\t"
                 "call failsafe_crash" ::);
}

__attribute__((used, noreturn)) static void failsafe_crash(void)
{
    fail("failsafe callback");
}

/* ---- memory: Xen names shared_info and the console ring by machine frame; we map them ---- */

/* Two pages of our own address space for them (their own frames are simply left unused). */
static char shared_page[4096] __attribute__((aligned(4096)));
static char console_page[4096] __attribute__((aligned(4096)));

#define PTE_PRESENT_RW_ACCESSED_DIRTY 0x63ul

static void *map_frame(char *page, unsigned long mfn)
{
    if (hypercall(__HYPERVISOR_update_va_mapping, (unsigned long)page,
                  (mfn << 12) | PTE_PRESENT_RW_ACCESSED_DIRTY, UVMF_INVLPG) != 0)
        fail("update_va_mapping");
    return page;
}

/* ---- the program ---- */

static void check_version(void)
{
    long version = hypercall(__HYPERVISOR_xen_version, XENVER_version, 0, 0);

    ring_print(version >= 0x30000 ? "minimal: xen_version ok\r\n" : "minimal: xen_version bad\r\n");
}

static void print_bulk(void)
{
    static const char tail[] = " abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n";
    char line[16 + sizeof(tail)];
    int i;
    unsigned long j;

    for (i = 0; i < BULK_LINES; i++) {
        const char *head = "minimal: line ";

        for (j = 0; head[j]; j++)
            line[j] = head[j];
        line[j++] = (char)('0' + i / 10);
        line[j++] = (char)('0' + i % 10);
        for (unsigned long k = 0; k < sizeof(tail); k++)
            line[j + k] = tail[k];
        ring_write(line);
    }
    notify_console();
}

/* With events masked, poll the timer's pending bit with SCHEDOP_yield. */
static void polled_timer(void)
{
    struct evtchn_bind_virq bind = { .virq = VIRQ_TIMER, .vcpu = 0 };
    uint64_t deadline;

    if (hypercall(__HYPERVISOR_event_channel_op, EVTCHNOP_bind_virq, (unsigned long)&bind, 0))
        fail("EVTCHNOP_bind_virq");
    timer_port = bind.port;
    if (hypercall(__HYPERVISOR_vcpu_op, VCPUOP_stop_periodic_timer, 0, 0) != 0)
        fail("VCPUOP_stop_periodic_timer");
    test_and_clear_pending(timer_port);
    deadline = now_ns() + TIMER_DELAY_NS;
    arm_one_shot_timer();
    while (!test_and_clear_pending(timer_port))
        yield();
    ring_print(now_ns() >= deadline ? "minimal: one-shot timer fired while masked\r\n"
                                    : "minimal: one-shot timer fired early\r\n");
}

/* Unmask, block until a timer upcall arrived, check the bounce frames, mask again. */
static void upcall_timer(void)
{
    struct evtchn_unmask unmask = { .port = timer_port };

    if (hypercall(__HYPERVISOR_set_callbacks, (unsigned long)upcall_entry,
                  (unsigned long)failsafe_entry, 0) != 0)
        fail("set_callbacks");
    if (hypercall(__HYPERVISOR_event_channel_op, EVTCHNOP_unmask, (unsigned long)&unmask, 0))
        fail("EVTCHNOP_unmask");
    arm_one_shot_timer();
    for (;;) {
        vcpu()->evtchn_upcall_mask = 1;
        barrier();
        if (timer_upcalls > 0)
            break;
        hypercall(__HYPERVISOR_sched_op, SCHEDOP_block, 0, 0);
    }
    ring_print(bad_frame_seen ? "minimal: upcall frame bad\r\n" : "minimal: upcall frame ok\r\n");
}

static void echo_input_line(void)
{
    char line[INPUT_MAX + 1];
    unsigned long n;

    ring_print("minimal: type a line\r\n");
    n = ring_read_line(line, INPUT_MAX);
    line[n] = '\0';
    ring_print("minimal: read '");
    ring_print(line);
    ring_print("'\r\n");
}

__attribute__((force_align_arg_pointer, noreturn, used))
void _start(unsigned long unused_rdi, start_info_t *si)
{
    (void)unused_rdi;
    start = si;
    if (si->magic[0] != 'x' || si->magic[12] != '6' || si->magic[13] != '4')
        fail("start_info magic");
    shared = map_frame(shared_page, start->shared_info >> 12);
    ring = map_frame(console_page, start->console.domU.mfn);
    console_port = start->console.domU.evtchn;

    log_to_hypervisor("minimal: hello from console_io\n");
    ring_print("minimal: hello from the console ring\r\n");
    check_version();
    print_bulk();
    polled_timer();
    upcall_timer();
    echo_input_line();
    ring_print("minimal: bye\r\n");
    drain_output();
    log_to_hypervisor("minimal: bye\n");
    shut_down(SHUTDOWN_poweroff);
}
