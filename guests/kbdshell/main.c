/*
 * kbdshell: the 100 Hz VIRQ_TIMER tick counter and the input loop, which
 * idles in SCHEDOP_block until there is input: from the PV keyboard when the
 * domain has one that connects, from the console otherwise.
 */
#include "shell.h"
#include "console.h"
#include "events.h"
#include "hypercall.h"
#include "kbdfront.h"
#include "kernel.h"
#include "notes.h"

XEN_GUEST_NOTES("kbdshell");

#define TIMER_PERIOD_NS 10000000ull   /* 100 Hz */

/* Number of VIRQ_TIMER events received; written only by the upcall. */
static volatile uint64_t ticks;

uint64_t timer_ticks(void)
{
    return ticks;
}

static void on_timer(evtchn_port_t port)
{
    (void)port;
    ticks++;
}

static void start_timer(void)
{
    struct vcpu_set_periodic_timer period = { .period_ns = TIMER_PERIOD_NS };

    event_set_handler(event_bind_virq(VIRQ_TIMER), on_timer);
    if (HYPERVISOR_vcpu_op(VCPUOP_set_periodic_timer, 0, &period) != 0)
        panic("VCPUOP_set_periodic_timer failed");
}

void guest_main(void)
{
    int keyboard;

    start_timer();
    keyboard = kbdfront_init();
    console_puts(keyboard ? "kbdshell ready (PV keyboard)\r\n" : "kbdshell ready\r\n");
    print_prompt();
    for (;;) {
        char keys[64];
        size_t n = keyboard ? kbdfront_read_wait(keys, sizeof(keys)) : console_read_wait(keys, sizeof(keys)), i;

        for (i = 0; i < n; i++)
            handle_key(keys[i]);
    }
}
