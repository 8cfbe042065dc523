/*
 * hostile: a guest that misbehaves on command, for the hypervisor's
 * hostile-guest tests. It reads command letters from the console and either
 * runs a battery of bad hypercalls, printing each result as `name=<rax>`, or
 * faults in one specific way. README.md lists the commands and the expected
 * output; every expected hypercall result is what real Xen returns.
 */
#include "clock.h"
#include "console.h"
#include "events.h"
#include "hypercall.h"
#include "kernel.h"
#include "notes.h"

XEN_GUEST_NOTES("hostile");

/* Canonical addresses no guest memory is ever mapped at (64 TiB and up). */
#define UNMAPPED_WRITE_ADDR  0x0000400000000000ull
#define UNMAPPED_READ_ADDR   0x0000400000001000ull
#define UPCALL_READ_ADDR     0x0000400000002000ull
#define UNMAPPED_ARG_ADDR    0x0000400000003000ull
/* Start of the hypervisor's reserved area in a 64-bit PV guest's address space. */
#define XEN_AREA_ADDR        0xffff800000000000ull
/* Where a Linux x86-64 kernel links its text: kernel-looking, not ours. */
#define KERNEL_LOOKING_ADDR  0xffffffff81000000ull
#define NONCANONICAL_ADDR    0x8000000000000000ull

#define BAD_COMMAND 99
#define BAD_SHUTDOWN_REASON 99
/* A port no hypervisor hands out before it is bound: unbound. */
#define UNBOUND_PORT 63
/* Beyond any 2-level event channel port (4096). */
#define OUT_OF_RANGE_PORT 100000
#define UNUSED_HYPERCALL 60
#define LAST_PAGE_HYPERCALL 127
#define MAX_BLOCKS_WAITING_FOR_UPCALL 1000

static const char console_message[] = "hostile: console_io with a truncated count\n";

/* ---- raw hypercalls: any entry of the page, or a bare syscall ---- */

static long hypercall_entry(unsigned int nr, unsigned long a1, unsigned long a2, unsigned long a3)
{
    register unsigned long r_a1 asm("rdi") = a1;
    register unsigned long r_a2 asm("rsi") = a2;
    register unsigned long r_a3 asm("rdx") = a3;
    long ret;

    asm volatile("call *%[entry]"
                 : "=a"(ret), "+r"(r_a1), "+r"(r_a2), "+r"(r_a3)
                 : [entry] "r"(hypercall_page + nr * 32)
                 : "rcx", "r11", "r10", "r8", "memory", "cc");
    return ret;
}

static long raw_syscall(unsigned long rax, unsigned long a1, unsigned long a2)
{
    register unsigned long r_a1 asm("rdi") = a1;
    register unsigned long r_a2 asm("rsi") = a2;

    asm volatile("syscall"
                 : "+a"(rax), "+r"(r_a1), "+r"(r_a2)
                 :
                 : "rcx", "r11", "rdx", "r10", "r8", "memory", "cc");
    return (long)rax;
}

/* ---- the battery ---- */

static void report(const char *name, long result)
{
    console_puts(name);
    console_puts("=");
    console_put_i64(result);
    console_puts("\r\n");
}

static void *addr(unsigned long long a)
{
    return (void *)(unsigned long)a;
}

/* The first address past the domain's pages: unmapped (the bootstrap region ends at or before it). */
static unsigned long end_of_guest_memory(void)
{
    return start_info->nr_pages << 12;
}

static void battery_console_io(void)
{
    unsigned long memory_end = end_of_guest_memory();

    report("console_write_null", HYPERVISOR_console_io(CONSOLEIO_write, 5, NULL));
    report("console_write_unmapped",
           HYPERVISOR_console_io(CONSOLEIO_write, 5, addr(UNMAPPED_ARG_ADDR)));
    report("console_write_past_memory",
           HYPERVISOR_console_io(CONSOLEIO_write, 5, addr(memory_end)));
    report("console_write_xen_area",
           HYPERVISOR_console_io(CONSOLEIO_write, 5, addr(XEN_AREA_ADDR)));
    report("console_write_kernel_address",
           HYPERVISOR_console_io(CONSOLEIO_write, 5, addr(KERNEL_LOOKING_ADDR)));
    report("console_write_noncanonical",
           HYPERVISOR_console_io(CONSOLEIO_write, 5, addr(NONCANONICAL_ADDR)));
    report("console_write_huge_count",
           HYPERVISOR_console_io(CONSOLEIO_write, 0x7fffffff, addr(memory_end - 16)));
    report("console_write_count_zero", HYPERVISOR_console_io(CONSOLEIO_write, 0, NULL));
    report("console_write_count_truncated",
           HYPERVISOR_console_io(CONSOLEIO_write, (1ul << 32) | (sizeof(console_message) - 1),
                                 console_message));
    report("console_io_bad_cmd", HYPERVISOR_console_io(BAD_COMMAND, 5, console_message));
}

static void battery_sched_op(void)
{
    report("sched_op_bad_cmd", HYPERVISOR_sched_op(BAD_COMMAND, NULL));
    report("sched_shutdown_null", HYPERVISOR_sched_op(SCHEDOP_shutdown, NULL));
    report("sched_shutdown_unmapped",
           HYPERVISOR_sched_op(SCHEDOP_shutdown, addr(UNMAPPED_ARG_ADDR)));
}

static long send(evtchn_port_t port)
{
    struct evtchn_send send = { .port = port };

    return HYPERVISOR_event_channel_op(EVTCHNOP_send, &send);
}

static long bind_virq(uint32_t virq, uint32_t vcpu, evtchn_port_t *port)
{
    struct evtchn_bind_virq bind = { .virq = virq, .vcpu = vcpu };
    long rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &bind);

    if (port)
        *port = bind.port;
    return rc;
}

static void battery_event_channel_op(void)
{
    struct evtchn_unmask unmask = { .port = OUT_OF_RANGE_PORT };
    struct evtchn_close close = { .port = UNBOUND_PORT };
    evtchn_port_t timer_port = 0;

    report("evtchn_bind_virq_timer", bind_virq(VIRQ_TIMER, 0, &timer_port));
    report("evtchn_bad_cmd", HYPERVISOR_event_channel_op(BAD_COMMAND, &unmask));
    report("evtchn_send_null", HYPERVISOR_event_channel_op(EVTCHNOP_send, NULL));
    report("evtchn_send_unmapped",
           HYPERVISOR_event_channel_op(EVTCHNOP_send, addr(UNMAPPED_ARG_ADDR)));
    report("evtchn_send_out_of_range_port", send(OUT_OF_RANGE_PORT));
    report("evtchn_send_unbound_port", send(UNBOUND_PORT));
    report("evtchn_send_virq_port", send(timer_port));
    report("evtchn_bind_virq_null", HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, NULL));
    report("evtchn_bind_virq_bad_virq", bind_virq(NR_VIRQS, 0, NULL));
    report("evtchn_bind_virq_huge_virq", bind_virq(0xffffffffu, 0, NULL));
    report("evtchn_bind_virq_bad_vcpu", bind_virq(VIRQ_TIMER, 1, NULL));
    report("evtchn_bind_virq_twice", bind_virq(VIRQ_TIMER, 0, NULL));
    report("evtchn_unmask_out_of_range_port",
           HYPERVISOR_event_channel_op(EVTCHNOP_unmask, &unmask));
    report("evtchn_close_unbound_port", HYPERVISOR_event_channel_op(EVTCHNOP_close, &close));
}

static void battery_timers(void)
{
    struct vcpu_set_periodic_timer period = { .period_ns = 10000000 };
    struct vcpu_set_periodic_timer too_short = { .period_ns = 999999 };

    report("vcpu_op_bad_vcpu", HYPERVISOR_vcpu_op(VCPUOP_set_periodic_timer, 1, &period));
    report("vcpu_op_huge_vcpu",
           HYPERVISOR_vcpu_op(VCPUOP_set_periodic_timer, 0xffffffffu, &period));
    report("vcpu_op_bad_cmd", HYPERVISOR_vcpu_op(BAD_COMMAND, 0, &period));
    report("vcpu_periodic_timer_null", HYPERVISOR_vcpu_op(VCPUOP_set_periodic_timer, 0, NULL));
    report("vcpu_periodic_timer_too_short",
           HYPERVISOR_vcpu_op(VCPUOP_set_periodic_timer, 0, &too_short));
    report("set_timer_op_negative", HYPERVISOR_set_timer_op((uint64_t)-1));
    report("set_timer_op_cancel", HYPERVISOR_set_timer_op(0));
}

void code_store_target(void);

static void battery_other(void)
{
    report("xen_version_bad_cmd", HYPERVISOR_xen_version(BAD_COMMAND, NULL));
    report("xen_version_extraversion_unmapped",
           HYPERVISOR_xen_version(XENVER_extraversion, addr(UNMAPPED_ARG_ADDR)));
    report("xen_version_extraversion_hypercall_page",
           HYPERVISOR_xen_version(XENVER_extraversion, hypercall_page));
    report("xen_version_extraversion_own_code",
           HYPERVISOR_xen_version(XENVER_extraversion, (void *)code_store_target));
    report("hypercall_unused_60", hypercall_entry(UNUSED_HYPERCALL, 0, 0, 0));
    report("hypercall_page_last_127", hypercall_entry(LAST_PAGE_HYPERCALL, 0, 0, 0));
    report("hypercall_raw_number_above_32_bits",
           raw_syscall((1ul << 32) | __HYPERVISOR_xen_version, XENVER_version, 0));
}

static void run_battery(void)
{
    battery_console_io();
    battery_sched_op();
    battery_event_channel_op();
    battery_timers();
    battery_other();
    console_puts("battery done\r\n");
    poweroff();
}

/* ---- faults ---- */

/* The target of command `c`: a function whose first byte the guest overwrites. */
__attribute__((noinline)) void code_store_target(void)
{
    asm volatile("");
}

/* Timer handler for command `i`: faults inside the event upcall. */
__attribute__((noinline)) static void faulting_timer_handler(evtchn_port_t port)
{
    (void)port;
    (void)*(volatile uint64_t *)addr(UPCALL_READ_ADDR);
}

static void fault_in_upcall(void)
{
    struct vcpu_set_periodic_timer period = { .period_ns = 1000000 };
    int blocks;

    event_set_handler(event_bind_virq(VIRQ_TIMER), faulting_timer_handler);
    if (HYPERVISOR_vcpu_op(VCPUOP_set_periodic_timer, 0, &period) != 0)
        panic("VCPUOP_set_periodic_timer failed");
    for (blocks = 0; blocks < MAX_BLOCKS_WAITING_FOR_UPCALL; blocks++) {
        events_mask();
        events_block();
    }
}

/* In asm: C division by zero is undefined, and gcc folds it away. */
static void divide_by_zero(void)
{
    int64_t quotient = 1, divisor = 0;

    asm volatile("cqto\n\tidivq %[divisor]"
                 : "+a"(quotient)
                 : [divisor] "r"(divisor)
                 : "rdx", "cc");
}

static void jump_to_zero(void)
{
    void (*volatile target)(void) = 0;

    target();
}

struct command {
    char letter;
    const char *description;
    void (*run)(void);
};

static void ud2(void) { asm volatile("ud2"); }
static void write_unmapped(void) { *(volatile uint64_t *)addr(UNMAPPED_WRITE_ADDR) = 0x1234; }
static void read_unmapped(void) { (void)*(volatile uint64_t *)addr(UNMAPPED_READ_ADDR); }
static void store_to_code(void) { *(volatile unsigned char *)(void *)code_store_target = 0xc3; }

static void bad_shutdown_reason(void)
{
    struct sched_shutdown request = { .reason = BAD_SHUTDOWN_REASON };

    report("sched_shutdown_bad_reason", HYPERVISOR_sched_op(SCHEDOP_shutdown, &request));
}


/* ---- fuzz (`f<seed>`): random hypercalls, then a random fault ---- */

#define FUZZ_HYPERCALLS 300
#define FUZZ_NUMBER_LIMIT 64

extern void hypervisor_callback(void);
extern void failsafe_callback(void);
extern char fuzz_undecodable[], fuzz_ud2[];

/* Code the fuzzer may jump to or name as a callback: an undecodable byte (push %es does not
 * exist in 64-bit mode) and ud2. Never called directly. */
asm(".pushsection .text\n"
    "fuzz_undecodable: .byte 0x06\n"
    "fuzz_ud2: ud2\n"
    ".popsection");

static uint64_t fuzz_state;
static unsigned char fuzz_scratch[8192] __attribute__((aligned(4096)));

static uint64_t fuzz_next(void)
{
    /* xorshift64*: the same seed gives the same campaign on every run */
    fuzz_state ^= fuzz_state >> 12;
    fuzz_state ^= fuzz_state << 25;
    fuzz_state ^= fuzz_state >> 27;
    return fuzz_state * 0x2545F4914F6CDD1Dull;
}

static unsigned long fuzz_pick(unsigned long n)
{
    return (unsigned long)(fuzz_next() % n);
}

/* An argument: small numbers, Xen-looking values, and pointers to memory of every kind - the
 * guest's writable scratch page, its read+execute code and hypercall page, the last bytes of
 * memory, unmapped and non-canonical addresses. */
static unsigned long fuzz_argument(void)
{
    unsigned long memory_end = end_of_guest_memory();

    switch (fuzz_pick(12)) {
    case 0: return 0;
    case 1: return fuzz_pick(8);
    case 2: return fuzz_pick(64);
    case 3: return (unsigned long)fuzz_scratch + fuzz_pick(sizeof(fuzz_scratch));
    case 4: return (unsigned long)fuzz_scratch;
    case 5: return (unsigned long)hypercall_page + fuzz_pick(4096);
    case 6: return (unsigned long)code_store_target;
    case 7: return memory_end - 1 - fuzz_pick(64);
    case 8: return UNMAPPED_ARG_ADDR + fuzz_pick(4096);
    case 9: return NONCANONICAL_ADDR;
    case 10: return fuzz_next();
    default: return 1000000ul * fuzz_pick(100);
    }
}

static unsigned long fuzz_callback(void)
{
    switch (fuzz_pick(8)) {
    case 0: return UNMAPPED_WRITE_ADDR;
    case 1: return (unsigned long)fuzz_undecodable;
    case 2: return (unsigned long)fuzz_ud2;
    case 3: return 0;
    default: return (unsigned long)hypervisor_callback;
    }
}

static const unsigned int fuzz_numbers[] = {
    __HYPERVISOR_console_io, __HYPERVISOR_sched_op, __HYPERVISOR_event_channel_op,
    __HYPERVISOR_set_callbacks, __HYPERVISOR_callback_op, __HYPERVISOR_set_timer_op,
    __HYPERVISOR_vcpu_op, __HYPERVISOR_xen_version,
};

static long fuzz_hypercall(void)
{
    unsigned long a1 = fuzz_argument(), a2 = fuzz_argument(), a3 = fuzz_argument();
    unsigned int nr;

    if (fuzz_pick(16) == 0)
        nr = (unsigned int)fuzz_pick(FUZZ_NUMBER_LIMIT);
    else
        nr = fuzz_numbers[fuzz_pick(sizeof(fuzz_numbers) / sizeof(fuzz_numbers[0]))];
    if (nr == __HYPERVISOR_iret || nr == __HYPERVISOR_stack_switch)
        nr = __HYPERVISOR_xen_version;         /* those move the stack: one fault per campaign */
    if (nr == __HYPERVISOR_set_callbacks)
        a1 = fuzz_callback();
    if (nr == __HYPERVISOR_sched_op && a1 == SCHEDOP_block)
        HYPERVISOR_set_timer_op(system_time_ns() + 1000000);   /* something to wake up for */
    if (nr == __HYPERVISOR_console_io && a2 > 256)
        a2 = fuzz_pick(256);                   /* keep the console readable */
    return hypercall_entry(nr, a1, a2, a3);
}

static void fuzz_final_fault(void)
{
    void (*volatile target)(void);

    switch (fuzz_pick(9)) {
    case 0: target = (void (*)(void))fuzz_undecodable; target(); break;
    case 1: target = (void (*)(void))UNMAPPED_WRITE_ADDR; target(); break;
    case 2: target = (void (*)(void))NONCANONICAL_ADDR; target(); break;
    case 3: ud2(); break;
    case 4: divide_by_zero(); break;
    case 5: write_unmapped(); break;
    case 6: store_to_code(); break;
    case 7: asm volatile("int $0x80"); break;
    default:
        /* the event callback at an unmapped address, then wait for the timer */
        HYPERVISOR_set_callbacks((void (*)(void))UNMAPPED_WRITE_ADDR, failsafe_callback, 0);
        HYPERVISOR_set_timer_op(system_time_ns() + 1000000);
        events_unmask();
        events_block();
        break;
    }
}

static void fuzz(void)
{
    char digit;
    unsigned int i;

    fuzz_state = 0x9E3779B97F4A7C15ull;
    for (;;) {
        console_read_wait(&digit, 1);
        if (digit < '0' || digit > '9')
            break;
        fuzz_state = fuzz_state * 10 + (uint64_t)(digit - '0') + 1;
    }
    for (i = 0; i < FUZZ_HYPERCALLS; i++) {
        long rc = fuzz_hypercall();

        if (i % 32 == 0) {
            console_puts("fuzz ");
            console_put_u64(i);
            console_puts(" rc=");
            console_put_i64(rc);
            console_puts("\r\n");
        }
    }
    console_puts("fuzz: final fault\r\n");
    console_flush();
    fuzz_final_fault();
}

static const struct command commands[] = {
    { 'a', "hypercall battery", run_battery },
    { 'u', "ud2", ud2 },
    { 'w', "write to unmapped address", write_unmapped },
    { 'r', "read from unmapped address", read_unmapped },
    { 'c', "store to own code", store_to_code },
    { 'i', "fault inside the event upcall", fault_in_upcall },
    { 'd', "divide by zero", divide_by_zero },
    { 'z', "jump to address 0", jump_to_zero },
    { 's', "shutdown with an unknown reason", bad_shutdown_reason },
    { 'f', "fuzz", fuzz },
};

static void run_command(char letter)
{
    unsigned int i;

    for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (commands[i].letter != letter)
            continue;
        console_puts("hostile: ");
        console_puts(commands[i].description);
        console_puts("\r\n");
        console_flush();
        commands[i].run();
        console_puts("hostile: command returned\r\n");
        poweroff();
    }
    console_puts("hostile: unknown command ");
    console_write(&letter, 1);
    console_puts("\r\n");
}

void guest_main(void)
{
    console_puts("hostile ready\r\n");
    for (;;) {
        char letter;

        console_read_wait(&letter, 1);
        if (letter != '\r' && letter != '\n' && letter != ' ')
            run_command(letter);
    }
}
