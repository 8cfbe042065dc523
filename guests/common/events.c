/*
 * Event channel handling. Invariant: the upcall clears evtchn_upcall_pending,
 * takes the selector with an atomic exchange and clears the pending bit of a
 * port before running its handler, so an event arriving during a handler is
 * never lost, only delivered again. Ports without a handler stay pending.
 */
#include "events.h"
#include "hypercall.h"
#include "kernel.h"

#define MAX_HANDLERS 8
#define BITS_PER_WORD (8 * sizeof(xen_ulong_t))

extern void hypervisor_callback(void);
extern void failsafe_callback(void);

static struct {
    evtchn_port_t port;
    event_handler_fn handler;
} handlers[MAX_HANDLERS];
static unsigned int handler_count;

#define barrier() asm volatile("" ::: "memory")

static struct vcpu_info *vcpu0(void)
{
    return &shared_info->vcpu_info[0];
}

void events_init(void)
{
    if (HYPERVISOR_set_callbacks(hypervisor_callback, failsafe_callback, NULL) != 0)
        panic("set_callbacks failed");
}

evtchn_port_t event_bind_virq(uint32_t virq)
{
    struct evtchn_bind_virq bind = { .virq = virq, .vcpu = 0 };

    if (HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &bind) != 0)
        panic("EVTCHNOP_bind_virq failed");
    return bind.port;
}

void event_set_handler(evtchn_port_t port, event_handler_fn handler)
{
    struct evtchn_unmask unmask = { .port = port };

    if (handler_count == MAX_HANDLERS)
        panic("too many event handlers");
    handlers[handler_count].port = port;
    handlers[handler_count].handler = handler;
    barrier();
    handler_count++;
    if (HYPERVISOR_event_channel_op(EVTCHNOP_unmask, &unmask) != 0)
        panic("EVTCHNOP_unmask failed");
}

void events_mask(void)
{
    vcpu0()->evtchn_upcall_mask = 1;
    barrier();
}

void events_unmask(void)
{
    barrier();
    vcpu0()->evtchn_upcall_mask = 0;
    barrier();
    /* Anything that became pending while masked: a cheap hypercall delivers it. */
    if (vcpu0()->evtchn_upcall_pending)
        HYPERVISOR_xen_version(XENVER_version, NULL);
}

void events_block(void)
{
    HYPERVISOR_sched_op(SCHEDOP_block, NULL);
}

void do_event_upcall(void)
{
    struct vcpu_info *v = vcpu0();

    while (v->evtchn_upcall_pending) {
        xen_ulong_t selector;
        unsigned int i;

        v->evtchn_upcall_pending = 0;
        selector = __atomic_exchange_n(&v->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
        for (i = 0; i < handler_count; i++) {
            evtchn_port_t port = handlers[i].port;
            unsigned int word = port / BITS_PER_WORD;
            xen_ulong_t bit = (xen_ulong_t)1 << (port % BITS_PER_WORD);

            if (!(selector & ((xen_ulong_t)1 << word)))
                continue;
            if (!(shared_info->evtchn_pending[word] & ~shared_info->evtchn_mask[word] & bit))
                continue;
            __atomic_fetch_and(&shared_info->evtchn_pending[word], ~bit, __ATOMIC_SEQ_CST);
            handlers[i].handler(port);
        }
    }
}
