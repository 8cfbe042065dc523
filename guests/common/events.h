/*
 * Event channels: binding, per-port handlers, the upcall dispatcher and the
 * event mask. Handlers run inside the upcall with events masked and must not
 * use the console.
 */
#ifndef COMMON_EVENTS_H
#define COMMON_EVENTS_H

#include "xenabi.h"

typedef void (*event_handler_fn)(evtchn_port_t port);

/* Register the upcall entry with set_callbacks. Events stay masked. */
void events_init(void);

/* Bind a VIRQ on vCPU 0 (EVTCHNOP_bind_virq); panics on failure. */
evtchn_port_t event_bind_virq(uint32_t virq);
/* Call handler for every event on port, and unmask the port (EVTCHNOP_unmask). */
void event_set_handler(evtchn_port_t port, event_handler_fn handler);

/* Mask / unmask upcalls (vcpu_info.evtchn_upcall_mask). Unmasking delivers what is pending. */
void events_mask(void);
void events_unmask(void);
/*
 * Call with events masked, after checking there is no work: SCHEDOP_block
 * unmasks atomically and returns at once if an event is pending, so no
 * wake-up is lost. Returns with events unmasked and pending events handled.
 */
void events_block(void);

/* Called from hypervisor_callback (entry.S) with events masked. */
void do_event_upcall(void);

#endif
