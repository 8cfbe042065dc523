/*
 * The xenstore client. Invariant: request bytes are written into req[] only
 * where the server has consumed, indices are published after the data with a
 * barrier, and every change is followed by a notification on the store port,
 * as a Linux xenbus frontend does.
 */
#include "xenstore.h"
#include "hypercall.h"
#include "kernel.h"
#include "lib.h"
#include "memory.h"

#define barrier() asm volatile("" ::: "memory")
#define EVENT_MAX 256

static struct xenstore_domain_interface *ring;
PAGE_WINDOW(xenstore_window);
static xs_event_fn event_callback;
static uint32_t next_req_id = 1;

static void notify(void)
{
    struct evtchn_send send = { .port = start_info->store_evtchn };

    HYPERVISOR_event_channel_op(EVTCHNOP_send, &send);
}

int xs_init(xs_event_fn on_event)
{
    ring = map_machine_frame(xenstore_window, start_info->store_mfn);
    event_callback = on_event;
    return ring->server_features != 0;
}

static void put(const void *data, uint32_t len)
{
    const char *bytes = data;

    while (len) {
        XENSTORE_RING_IDX prod = ring->req_prod;
        uint32_t room = XENSTORE_RING_SIZE - (prod - ring->req_cons);

        if (room == 0) {
            notify();
            HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
            continue;
        }
        if (room > len)
            room = len;
        for (uint32_t i = 0; i < room; i++)
            ring->req[MASK_XENSTORE_IDX(prod + i)] = bytes[i];
        barrier();
        ring->req_prod = prod + room;
        bytes += room;
        len -= room;
    }
    notify();
}

static void get(void *data, uint32_t len)
{
    char *bytes = data;

    while (len) {
        XENSTORE_RING_IDX cons = ring->rsp_cons;

        if (cons == ring->rsp_prod) {
            notify();                   /* tell the server we made room; it writes the rest */
            if (ring->rsp_cons == ring->rsp_prod)
                HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
            continue;
        }
        barrier();
        *bytes++ = ring->rsp[MASK_XENSTORE_IDX(cons)];
        barrier();
        ring->rsp_cons = cons + 1;
        len--;
    }
}

/* Read one message; watch events go to the callback. Returns its header. */
static struct xsd_sockmsg receive(char *payload, uint32_t max, uint32_t *stored)
{
    struct xsd_sockmsg msg;
    char discard;

    get(&msg, sizeof(msg));
    *stored = 0;
    for (uint32_t i = 0; i < msg.len; i++) {
        if (*stored + 1 < max)
            get(&payload[(*stored)++], 1);
        else
            get(&discard, 1);
    }
    payload[*stored] = 0;
    return msg;
}

static void deliver_event(const char *payload, uint32_t len)
{
    size_t path_len = strlen(payload);

    if (event_callback && path_len + 1 < len)
        event_callback(payload, payload + path_len + 1);
}

int xs_request(uint32_t type, uint32_t tx, const void *payload, uint32_t len, char *reply, uint32_t max,
               uint32_t *reply_len)
{
    struct xsd_sockmsg msg = { .type = type, .req_id = next_req_id++, .tx_id = tx, .len = len };
    char event[EVENT_MAX];

    put(&msg, sizeof(msg));
    put(payload, len);
    for (;;) {
        uint32_t stored;
        struct xsd_sockmsg answer = receive(reply, max, &stored);

        if (answer.type == XS_WATCH_EVENT) {
            memcpy(event, reply, stored < EVENT_MAX ? stored + 1 : EVENT_MAX);
            event[EVENT_MAX - 1] = 0;
            deliver_event(event, stored);
            continue;
        }
        if (answer.req_id != msg.req_id)
            continue;
        if (reply_len)
            *reply_len = stored;
        return stored < answer.len ? -1 : (int)answer.type;
    }
}

void xs_set_event_handler(xs_event_fn on_event)
{
    event_callback = on_event;
}

void xs_poll_events(void)
{
    char event[EVENT_MAX];

    while (ring->rsp_cons != ring->rsp_prod) {
        uint32_t stored;
        struct xsd_sockmsg answer = receive(event, sizeof(event), &stored);

        if (answer.type == XS_WATCH_EVENT)
            deliver_event(event, stored);
        if (ring->rsp_cons == ring->rsp_prod)
            notify();                   /* room made: the server writes what it still holds */
    }
}
