/*
 * PV keyboard frontend. Invariant: in_cons is written only here, after the
 * events it consumes were read, and each move is followed by EVTCHNOP_send
 * (as xen-kbdfront notifies the backend); in_prod and the out ring are never
 * written. Modifier state (Shift, Ctrl held) changes only on their key events.
 */
#include "kbdfront.h"
#include "events.h"
#include "hypercall.h"
#include "kernel.h"
#include "lib.h"
#include "memory.h"
#include "xenstore.h"
#include <linux/input-event-codes.h>
#include <xen/grant_table.h>
#include <xen/io/kbdif.h>
#include <xen/io/xenbus.h>

#define REPLY_MAX 128
#define RING_GREF GNTTAB_NR_RESERVED_ENTRIES    /* the first entry not reserved for the toolstack */

PAGE_WINDOW(ring_window);                  /* the shared page: indices, then the in and out rings */
PAGE_WINDOW(grant_window);
static struct xenkbd_page *const ring_page = (struct xenkbd_page *)ring_window;
static struct xenkbd_page *page;            /* ring_page once connected */
static evtchn_port_t port;
static int shift_keys, ctrl_keys;          /* how many Shift / Ctrl keys are held */
static char backend[REPLY_MAX];

#define barrier() asm volatile("" ::: "memory")

/* The US keymap: keycode -> character without and with Shift (0: none). */
static const char plain[KEY_SPACE + 1] = {
    [KEY_1] = '1', [KEY_2] = '2', [KEY_3] = '3', [KEY_4] = '4', [KEY_5] = '5', [KEY_6] = '6', [KEY_7] = '7',
    [KEY_8] = '8', [KEY_9] = '9', [KEY_0] = '0', [KEY_MINUS] = '-', [KEY_EQUAL] = '=', [KEY_BACKSPACE] = 0x7f,
    [KEY_TAB] = '\t', [KEY_Q] = 'q', [KEY_W] = 'w', [KEY_E] = 'e', [KEY_R] = 'r', [KEY_T] = 't', [KEY_Y] = 'y',
    [KEY_U] = 'u', [KEY_I] = 'i', [KEY_O] = 'o', [KEY_P] = 'p', [KEY_LEFTBRACE] = '[', [KEY_RIGHTBRACE] = ']',
    [KEY_ENTER] = '\r', [KEY_A] = 'a', [KEY_S] = 's', [KEY_D] = 'd', [KEY_F] = 'f', [KEY_G] = 'g', [KEY_H] = 'h',
    [KEY_J] = 'j', [KEY_K] = 'k', [KEY_L] = 'l', [KEY_SEMICOLON] = ';', [KEY_APOSTROPHE] = '\'',
    [KEY_GRAVE] = '`', [KEY_BACKSLASH] = '\\', [KEY_Z] = 'z', [KEY_X] = 'x', [KEY_C] = 'c', [KEY_V] = 'v',
    [KEY_B] = 'b', [KEY_N] = 'n', [KEY_M] = 'm', [KEY_COMMA] = ',', [KEY_DOT] = '.', [KEY_SLASH] = '/',
    [KEY_SPACE] = ' ', [KEY_ESC] = 0x1b,
};
static const char shifted[KEY_SPACE + 1] = {
    [KEY_1] = '!', [KEY_2] = '@', [KEY_3] = '#', [KEY_4] = '$', [KEY_5] = '%', [KEY_6] = '^', [KEY_7] = '&',
    [KEY_8] = '*', [KEY_9] = '(', [KEY_0] = ')', [KEY_MINUS] = '_', [KEY_EQUAL] = '+', [KEY_LEFTBRACE] = '{',
    [KEY_RIGHTBRACE] = '}', [KEY_SEMICOLON] = ':', [KEY_APOSTROPHE] = '"', [KEY_GRAVE] = '~',
    [KEY_BACKSLASH] = '|', [KEY_COMMA] = '<', [KEY_DOT] = '>', [KEY_SLASH] = '?',
};

static void notify_backend(void)
{
    struct evtchn_send send = { .port = port };

    HYPERVISOR_event_channel_op(EVTCHNOP_send, &send);
}

/* Keyboard and store events only end SCHEDOP_block; the readers look at the rings. */
static void on_event(evtchn_port_t event_port)
{
    (void)event_port;
}

static void on_xenstore_event(const char *path, const char *token)
{
    (void)path;
    (void)token;
}

/* Read `dir`/`key` into reply; 1 on success. */
static int read_node(const char *dir, const char *key, char *reply)
{
    char path[REPLY_MAX * 2];
    size_t len = strlen(dir);

    memcpy(path, dir, len);
    path[len] = '/';
    memcpy(path + len + 1, key, strlen(key) + 1);
    return xs_request(XS_READ, 0, path, strlen(path) + 1, reply, REPLY_MAX, NULL) == XS_READ;
}

static int write_node(uint32_t tx, const char *key, uint64_t value)
{
    char payload[REPLY_MAX], reply[REPLY_MAX];
    static const char dir[] = "device/vkbd/0/";
    size_t len = sizeof(dir) - 1, key_len = strlen(key);

    memcpy(payload, dir, len);
    memcpy(payload + len, key, key_len + 1);
    len += key_len + 1;
    len += format_u64(payload + len, value);
    return xs_request(XS_WRITE, tx, payload, len, reply, sizeof(reply), NULL) == XS_WRITE;
}

static uint64_t backend_state(void)
{
    char reply[REPLY_MAX];
    uint64_t state = XenbusStateUnknown;

    if (!read_node(backend, "state", reply) || !parse_u64(reply, &state))
        return XenbusStateUnknown;
    return state;
}

/* Grant the ring page to the backend's domain with a v1 grant entry; returns the reference. */
static grant_ref_t grant_ring(domid_t backend_id)
{
    xen_pfn_t frame = 0;
    struct gnttab_setup_table setup = { .dom = DOMID_SELF, .nr_frames = 1 };
    grant_entry_v1_t *table;

    set_xen_guest_handle(setup.frame_list, &frame);
    if (HYPERVISOR_grant_table_op(GNTTABOP_setup_table, &setup, 1) != 0 || setup.status != GNTST_okay)
        panic("kbdfront: GNTTABOP_setup_table failed");
    table = map_machine_frame(grant_window, frame);
    table[RING_GREF].domid = backend_id;
    table[RING_GREF].frame = (uint32_t)virt_to_mfn(ring_page);
    barrier();                                  /* flags last: the entry is valid once they are set */
    table[RING_GREF].flags = GTF_permit_access;
    return RING_GREF;
}

/* Publish the ring and the channel, then Initialised, in one transaction (retried on EAGAIN). */
static int publish(grant_ref_t ref)
{
    char reply[REPLY_MAX];

    for (;;) {
        uint64_t tx = 0;

        if (xs_request(XS_TRANSACTION_START, 0, "", 1, reply, sizeof(reply), NULL) != XS_TRANSACTION_START
            || !parse_u64(reply, &tx))
            return 0;
        if (!write_node(tx, XENKBD_FIELD_RING_GREF, ref) || !write_node(tx, XENKBD_FIELD_RING_REF,
                                                                          virt_to_mfn(ring_page))
            || !write_node(tx, XENKBD_FIELD_EVT_CHANNEL, port))
            return 0;
        if (xs_request(XS_TRANSACTION_END, tx, "T", 2, reply, sizeof(reply), NULL) == XS_TRANSACTION_END)
            return write_node(0, "state", XenbusStateInitialised);
        if (strcmp(reply, "EAGAIN") != 0)
            return 0;
    }
}

int kbdfront_init(void)
{
    char reply[REPLY_MAX];
    struct evtchn_alloc_unbound alloc = { .dom = DOMID_SELF };
    uint64_t backend_id = 0;

    if (!xs_init(on_xenstore_event))
        return 0;                               /* a domain without xenstore has no devices */
    if (!read_node("device/vkbd/0", "backend", backend))
        return 0;                               /* no PV keyboard: the console it is */
    if (!read_node("device/vkbd/0", "backend-id", reply) || !parse_u64(reply, &backend_id))
        return 0;
    if (backend_state() != XenbusStateInitWait)
        return 0;
    alloc.remote_dom = (domid_t)backend_id;
    if (HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &alloc) != 0)
        panic("kbdfront: EVTCHNOP_alloc_unbound failed");
    port = alloc.port;
    ring_page->in_cons = ring_page->in_prod = 0;
    ring_page->out_cons = ring_page->out_prod = 0;
    if (!publish(grant_ring((domid_t)backend_id)))
        return 0;
    /* The backend answers within our own xenstore write: it is Connected now, or it refused. */
    if (backend_state() != XenbusStateConnected)
        return 0;
    page = ring_page;
    event_set_handler(port, on_event);
    return write_node(0, "state", XenbusStateConnected);
}

/* The character a key event types (0: none), following Shift and Ctrl. */
static char key_char(uint32_t keycode, int pressed)
{
    char c;

    if (keycode == KEY_LEFTSHIFT || keycode == KEY_RIGHTSHIFT) {
        shift_keys += pressed ? 1 : (shift_keys > 0 ? -1 : 0);
        return 0;
    }
    if (keycode == KEY_LEFTCTRL || keycode == KEY_RIGHTCTRL) {
        ctrl_keys += pressed ? 1 : (ctrl_keys > 0 ? -1 : 0);
        return 0;
    }
    if (!pressed || keycode > KEY_SPACE)
        return 0;
    c = plain[keycode];
    if (ctrl_keys && c >= 'a' && c <= 'z')
        return (char)(c & 0x1f);
    if (shift_keys && shifted[keycode])
        return shifted[keycode];
    if (shift_keys && c >= 'a' && c <= 'z')
        return (char)(c - 'a' + 'A');
    return c;
}

size_t kbdfront_read(char *buf, size_t max)
{
    uint32_t cons = page->in_cons;
    uint32_t prod = __atomic_load_n(&page->in_prod, __ATOMIC_ACQUIRE);
    size_t n = 0;

    while (cons != prod && n < max) {
        union xenkbd_in_event *event = &XENKBD_IN_RING_REF(page, cons);
        char c = event->type == XENKBD_TYPE_KEY ? key_char(event->key.keycode, event->key.pressed) : 0;

        if (c)
            buf[n++] = c;
        cons++;
    }
    if (cons != page->in_cons) {
        barrier();
        page->in_cons = cons;
        notify_backend();
    }
    return n;
}

size_t kbdfront_read_wait(char *buf, size_t max)
{
    for (;;) {
        size_t n;

        events_mask();
        n = kbdfront_read(buf, max);
        if (n > 0) {
            events_unmask();
            return n;
        }
        events_block();
    }
}
