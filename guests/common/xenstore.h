/*
 * A xenstore client over the domain's ring (xen/io/xs_wire.h): one request
 * at a time, answered synchronously. Watch events that arrive while waiting
 * for a reply are handed to the event callback in arrival order.
 */
#ifndef COMMON_XENSTORE_H
#define COMMON_XENSTORE_H

#include "xenabi.h"
#include <xen/io/xs_wire.h>

typedef void (*xs_event_fn)(const char *path, const char *token);

/* Map the store ring. Returns 0 when no xenstored was introduced to the domain (the ring's
 * server_features field is still 0: every xenstored xenrr runs advertises XENSTORE_SERVER_FEATURE_ERROR),
 * so that a guest can go on without xenstore instead of waiting forever for a reply. */
int xs_init(xs_event_fn on_event);

/*
 * Send request `type` (payload `len` bytes) in transaction `tx` and wait for
 * its reply. The reply payload is copied into `reply` (at most `max` - 1
 * bytes, then nul-terminated). Returns the reply's type (XS_ERROR: `reply`
 * is the error's name) or -1 if the reply did not fit.
 */
int xs_request(uint32_t type, uint32_t tx, const void *payload, uint32_t len, char *reply, uint32_t max,
               uint32_t *reply_len);

/* Hand watch events to `on_event` from now on (NULL: drop them). */
void xs_set_event_handler(xs_event_fn on_event);

/* Take pending watch events off the ring without sending a request; the server is notified of the room
 * made, so events it still held follow. */
void xs_poll_events(void);

#endif
