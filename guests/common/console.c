/*
 * PV console ring driver. Invariant: out_prod and in_cons are written only
 * here, each after the data it publishes or consumes (compiler barriers
 * suffice: x86 keeps stores ordered), and every change is followed by an
 * EVTCHNOP_send so the backend looks at the ring.
 */
#include "console.h"
#include "events.h"
#include "hypercall.h"
#include "kernel.h"
#include "lib.h"
#include "memory.h"

/* How many times console_flush yields before giving up on a stalled backend. */
#define FLUSH_MAX_YIELDS 1000

static struct xencons_interface *ring;
PAGE_WINDOW(console_window);
static evtchn_port_t port;

#define barrier() asm volatile("" ::: "memory")

static XENCONS_RING_IDX read_index(const XENCONS_RING_IDX *index)
{
    return __atomic_load_n(index, __ATOMIC_ACQUIRE);
}

static void notify_backend(void)
{
    struct evtchn_send send = { .port = port };

    HYPERVISOR_event_channel_op(EVTCHNOP_send, &send);
}

/* Console events only end SCHEDOP_block; console_read_wait reads the ring. */
static void on_console_event(evtchn_port_t event_port)
{
    (void)event_port;
}

void console_init(void)
{
    ring = map_machine_frame(console_window, start_info->console.domU.mfn);
    port = start_info->console.domU.evtchn;
    event_set_handler(port, on_console_event);
}

int console_ready(void)
{
    return ring != NULL;
}

void console_write(const char *buf, size_t n)
{
    while (n > 0) {
        XENCONS_RING_IDX cons = read_index(&ring->out_cons);
        XENCONS_RING_IDX prod = ring->out_prod;
        size_t space;

        if (prod - cons > sizeof(ring->out))
            panic("console output ring indexes corrupt");
        space = sizeof(ring->out) - (prod - cons);
        if (space == 0) {
            notify_backend();
            HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
            continue;
        }
        while (space > 0 && n > 0) {
            ring->out[MASK_XENCONS_IDX(prod, ring->out)] = *buf++;
            prod++;
            space--;
            n--;
        }
        barrier();
        ring->out_prod = prod;
    }
    notify_backend();
}

void console_puts(const char *s)
{
    console_write(s, strlen(s));
}

void console_put_i64(int64_t v)
{
    char text[FORMAT_BUF_SIZE];

    console_write(text, format_i64(text, v));
}

void console_put_u64(uint64_t v)
{
    char text[FORMAT_BUF_SIZE];

    console_write(text, format_u64(text, v));
}

void console_put_hex64(uint64_t v)
{
    char text[FORMAT_BUF_SIZE];

    console_write(text, format_hex64(text, v));
}

void console_flush(void)
{
    int yields;

    for (yields = 0; yields < FLUSH_MAX_YIELDS; yields++) {
        if (read_index(&ring->out_cons) == ring->out_prod)
            return;
        notify_backend();
        HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
    }
}

size_t console_read(char *buf, size_t max)
{
    XENCONS_RING_IDX cons = ring->in_cons;
    XENCONS_RING_IDX prod = read_index(&ring->in_prod);
    size_t n = 0;

    while (cons != prod && n < max)
        buf[n++] = ring->in[MASK_XENCONS_IDX(cons++, ring->in)];
    if (n > 0) {
        barrier();
        ring->in_cons = cons;
        notify_backend();
    }
    return n;
}

size_t console_read_wait(char *buf, size_t max)
{
    for (;;) {
        size_t n;

        events_mask();
        n = console_read(buf, max);
        if (n > 0) {
            events_unmask();
            return n;
        }
        events_block();
    }
}
