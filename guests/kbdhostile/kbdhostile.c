/*
 * kbdhostile: a PV keyboard frontend (xen/io/kbdif.h) that misbehaves on
 * purpose, once in each way the backend must survive, starting the device
 * over (Closed, then Initialising: xen/io/xenbus.h) after each:
 *   wrong-order   Connected without ever being Initialised
 *   not-a-state   a state that is not a XenbusState
 *   bad-gref      a page-gref beyond the grant table
 *   ungranted     a page-gref whose entry grants nothing
 *   bad-port      an event-channel that is not a port allocated for dom0
 *   no-ring       neither page-gref nor page-ref
 *   ring-indices  connected, then in_cons moved out of range and notified
 *   in-prod       connected, then in_prod (the backend's index) moved
 * then connects with the obsolete page-ref alone (accepted), connects properly,
 * disconnects (Closing, Closed) and powers off.
 * After each step it prints the backend's state and whether the grant is
 * still in use (GTF_reading / GTF_writing) and the port still bound
 * (EVTCHNOP_status). README.md has the expected transcript.
 */
#include "console.h"
#include "events.h"
#include "hypercall.h"
#include "kernel.h"
#include "lib.h"
#include "memory.h"
#include "notes.h"
#include "xenstore.h"
#include <xen/grant_table.h>
#include <xen/io/kbdif.h>
#include <xen/io/xenbus.h>

XEN_GUEST_NOTES("kbdhostile");

#define REPLY_MAX 256
#define RING_GREF GNTTAB_NR_RESERVED_ENTRIES
#define EMPTY_GREF (RING_GREF + 1)

PAGE_WINDOW(ring_window);
PAGE_WINDOW(grant_window);
static struct xenkbd_page *const ring = (struct xenkbd_page *)ring_window;
static grant_entry_v1_t *table;
static evtchn_port_t port;
static char reply[REPLY_MAX];

static int request(uint32_t type, const char *a, const char *b)
{
    char payload[REPLY_MAX];
    uint32_t len = strlen(a) + 1;

    memcpy(payload, a, len);
    if (b) {
        memcpy(payload + len, b, strlen(b));
        len += strlen(b);
    }
    return xs_request(type, 0, payload, len, reply, sizeof(reply), NULL);
}

static void write_text(const char *key, const char *value)
{
    char path[REPLY_MAX] = "device/vkbd/0/";

    memcpy(path + strlen(path), key, strlen(key) + 1);
    if (request(XS_WRITE, path, value) != XS_WRITE)
        panic("kbdhostile: xenstore write refused");
}

static void write_number(const char *key, uint64_t value)
{
    char text[FORMAT_BUF_SIZE];

    text[format_u64(text, value)] = 0;
    write_text(key, text);
}

static void set_state(int state)
{
    write_number("state", state);
}

/* One line: the step, the backend's state, whether the ring's grant is in use and the port bound. */
static void report(const char *step)
{
    struct evtchn_status status = { .dom = DOMID_SELF, .port = port };
    char backend_state[REPLY_MAX];

    if (request(XS_READ, "/local/domain/0/backend/vkbd/1/0/state", NULL) != XS_READ)
        panic("kbdhostile: cannot read the backend's state");
    memcpy(backend_state, reply, strlen(reply) + 1);
    HYPERVISOR_event_channel_op(EVTCHNOP_status, &status);
    console_puts(step);
    console_puts(": backend state ");
    console_puts(backend_state);
    console_puts(table[RING_GREF].flags & (GTF_reading | GTF_writing) ? ", grant in use" : ", grant free");
    console_puts(status.status == EVTCHNSTAT_interdomain ? ", port bound\r\n" : ", port unbound\r\n");
}

/* Closed, then Initialising: a frontend starting over; the backend offers the device again. */
static void start_over(void)
{
    set_state(XenbusStateClosed);
    set_state(XenbusStateInitialising);
    request(XS_RM, "device/vkbd/0/page-gref", NULL);
    request(XS_RM, "device/vkbd/0/page-ref", NULL);
    ring->in_cons = ring->in_prod = ring->out_cons = ring->out_prod = 0;
}

static void publish(uint64_t gref, uint64_t channel)
{
    write_number("page-gref", gref);
    write_number("event-channel", channel);
    set_state(XenbusStateInitialised);
}

static void notify(void)
{
    struct evtchn_send send = { .port = port };

    HYPERVISOR_event_channel_op(EVTCHNOP_send, &send);
}

static void connect(void)
{
    publish(RING_GREF, port);
    set_state(XenbusStateConnected);
}

void guest_main(void)
{
    xen_pfn_t frame = 0;
    struct gnttab_setup_table setup = { .dom = DOMID_SELF, .nr_frames = 1 };
    struct evtchn_alloc_unbound alloc = { .dom = DOMID_SELF, .remote_dom = 0 };

    xs_init(NULL);
    console_puts("kbdhostile ready\r\n");
    set_xen_guest_handle(setup.frame_list, &frame);
    if (HYPERVISOR_grant_table_op(GNTTABOP_setup_table, &setup, 1) != 0 || setup.status != GNTST_okay)
        panic("kbdhostile: GNTTABOP_setup_table failed");
    table = map_machine_frame(grant_window, frame);
    table[RING_GREF].domid = 0;
    table[RING_GREF].frame = (uint32_t)virt_to_mfn(ring);
    asm volatile("" ::: "memory");
    table[RING_GREF].flags = GTF_permit_access;
    if (HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &alloc) != 0)
        panic("kbdhostile: EVTCHNOP_alloc_unbound failed");
    port = alloc.port;
    report("start");

    set_state(XenbusStateConnected);
    report("wrong-order");
    start_over();
    report("start-over");

    write_text("state", "9");
    report("not-a-state");
    start_over();

    publish(100000, port);
    report("bad-gref");
    start_over();

    publish(EMPTY_GREF, port);
    report("ungranted");
    start_over();

    publish(RING_GREF, start_info->console.domU.evtchn);
    report("bad-port");
    start_over();

    write_number("event-channel", port);
    set_state(XenbusStateInitialised);
    report("no-ring");
    start_over();

    write_number("page-ref", virt_to_mfn(ring));          /* kbdif.h's obsolete PFN of the page: accepted */
    write_number("event-channel", port);
    set_state(XenbusStateInitialised);
    set_state(XenbusStateConnected);
    report("legacy-page-ref");
    start_over();

    connect();
    report("connected");
    ring->in_cons = ring->in_prod + 1000;
    notify();
    report("ring-indices");
    start_over();

    connect();
    ring->in_prod = 7;
    notify();
    report("in-prod");
    start_over();

    connect();
    report("connected");
    set_state(XenbusStateClosing);
    report("closing");
    set_state(XenbusStateClosed);
    report("closed");
    console_puts("kbdhostile done\r\n");
}
