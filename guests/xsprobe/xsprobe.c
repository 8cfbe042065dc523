/*
 * xsprobe: a guest that talks to xenstore over its ring and prints what it
 * gets back, one line per request, then powers off. It exercises every
 * message type a frontend uses - READ, WRITE, MKDIR, RM, DIRECTORY,
 * GET_PERMS, SET_PERMS, WATCH (with its initial event and an event for a
 * write below the watched path), UNWATCH, TRANSACTION_START/END (a commit and
 * a conflict that fails with EAGAIN), GET_DOMAIN_PATH - and the error replies
 * (ENOENT, EACCES, EINVAL). Then, like a Linux PV kernel's xenbus, it
 * watches control/shutdown and powers off when the toolstack writes
 * "poweroff" there (`xenrr run --xenstore-write control/shutdown=poweroff`).
 * Before that it sets up its grant table as a frontend does (GNTTABOP_set_version,
 * query_size, setup_table, get_version: xen/grant_table.h), grants one of its
 * pages to dom0 and publishes the grant reference at data/gref.
 * README.md has the expected transcript.
 */
#include "console.h"
#include "events.h"
#include "hypercall.h"
#include "kernel.h"
#include "lib.h"
#include "notes.h"
#include "xenstore.h"
#include "memory.h"
#include <xen/grant_table.h>

XEN_GUEST_NOTES("xsprobe");

#define REPLY_MAX 512
#define GRANT_REF 8                 /* the first entry not reserved for the toolstack */

static char granted_page[4096] __attribute__((aligned(4096))) = "granted by xsprobe";
PAGE_WINDOW(grant_window);

static char reply[REPLY_MAX];
static volatile int shutdown_event;

static const char *type_name(int type)
{
    switch (type) {
    case XS_ERROR: return "error";
    case -1: return "too-long";
    default: return "ok";
    }
}

/* Print `label: <ok|error> <payload>` with nuls shown as '|'. */
static void show(const char *label, int type, uint32_t len)
{
    console_puts(label);
    console_puts(": ");
    console_puts(type_name(type));
    console_puts(" ");
    for (uint32_t i = 0; i < len; i++)
        console_write(reply[i] ? &reply[i] : "|", 1);
    console_puts("\r\n");
}

static void on_event(const char *path, const char *token)
{
    console_puts("event: ");
    console_puts(path);
    console_puts(" ");
    console_puts(token);
    console_puts("\r\n");
    if (strcmp(token, "shutdown") == 0)
        shutdown_event = 1;
}

/* Store-port events only wake the guest; the main loop reads the ring. */
static void on_store_port(evtchn_port_t port)
{
    (void)port;
}

static void request_raw(const char *label, uint32_t type, uint32_t tx, const char *payload, uint32_t len)
{
    uint32_t reply_len = 0;
    int result = xs_request(type, tx, payload, len, reply, sizeof(reply), &reply_len);

    show(label, result, reply_len);
}

/* A request whose payload is `a` and, if given, `b`, each nul-terminated (WRITE: b unterminated). */
static void request(const char *label, uint32_t type, uint32_t tx, const char *a, const char *b)
{
    char payload[REPLY_MAX];
    uint32_t len = strlen(a) + 1;

    memcpy(payload, a, len);
    if (b) {
        size_t b_len = strlen(b) + (type == XS_WRITE ? 0 : 1);
        memcpy(payload + len, b, b_len);
        len += b_len;
    }
    request_raw(label, type, tx, payload, len);
}

static uint32_t start_transaction(const char *label)
{
    uint64_t id = 0;

    request(label, XS_TRANSACTION_START, 0, "", NULL);
    parse_u64(reply, &id);
    return (uint32_t)id;
}

static void report(const char *label, long result, long value)
{
    console_puts(label);
    console_puts(": ");
    console_put_i64(result);
    console_puts(" ");
    console_put_i64(value);
    console_puts("\r\n");
}

/* Set up the grant table, grant granted_page to dom0 and publish the reference. */
static void grant_a_page(void)
{
    struct gnttab_set_version set = { .version = 2 };
    struct gnttab_get_version get = { .dom = DOMID_SELF };
    struct gnttab_query_size query = { .dom = DOMID_SELF };
    xen_pfn_t frame = 0;
    struct gnttab_setup_table setup = { .dom = DOMID_SELF, .nr_frames = 1 };
    grant_entry_v1_t *table;
    char ref[FORMAT_BUF_SIZE];

    long result;

    result = HYPERVISOR_grant_table_op(GNTTABOP_set_version, &set, 1);
    report("set_version 2", result, set.version);       /* not offered: the current version comes back */
    set.version = 1;
    result = HYPERVISOR_grant_table_op(GNTTABOP_set_version, &set, 1);
    report("set_version 1", result, set.version);
    result = HYPERVISOR_grant_table_op(GNTTABOP_get_version, &get, 1);
    report("get_version", result, get.version);
    result = HYPERVISOR_grant_table_op(GNTTABOP_query_size, &query, 1);
    report("query_size", result, query.max_nr_frames);
    set_xen_guest_handle(setup.frame_list, &frame);
    result = HYPERVISOR_grant_table_op(GNTTABOP_setup_table, &setup, 1);
    report("setup_table", result, setup.status);
    console_puts(frame >= start_info->nr_pages ? "grant frame outside the domain's pages\r\n"
                                               : "grant frame inside the domain's pages!\r\n");
    table = map_machine_frame(grant_window, frame);          /* a machine frame: ours to map */
    table[GRANT_REF].domid = 0;
    table[GRANT_REF].frame = (uint32_t)((unsigned long)granted_page >> 12);
    asm volatile("" ::: "memory");               /* flags last: the entry is valid once they are set */
    table[GRANT_REF].flags = GTF_permit_access;
    ref[format_u64(ref, GRANT_REF)] = 0;
    request("write data/gref", XS_WRITE, 0, "data/gref", ref);
}

void guest_main(void)
{
    uint32_t tx;

    xs_init(on_event);
    console_puts("xsprobe ready\r\n");
    request("read name", XS_READ, 0, "name", NULL);
    request("read domid", XS_READ, 0, "domid", NULL);
    request("domain path", XS_GET_DOMAIN_PATH, 0, "1", NULL);
    request("directory device/vbd", XS_DIRECTORY, 0, "device/vbd", NULL);
    request("write data/probe", XS_WRITE, 0, "data/probe", "hello");
    request("read data/probe", XS_READ, 0, "data/probe", NULL);
    request("mkdir data/dir/sub", XS_MKDIR, 0, "data/dir/sub", NULL);
    request("directory data", XS_DIRECTORY, 0, "data", NULL);
    request("perms data/probe", XS_GET_PERMS, 0, "data/probe", NULL);
    static const char set_perms[] = "data/probe\0n1\0r0";      /* owner 1, dom0 may read */
    request_raw("set perms data/probe", XS_SET_PERMS, 0, set_perms, sizeof(set_perms));
    request("perms data/probe", XS_GET_PERMS, 0, "data/probe", NULL);
    request("write name", XS_WRITE, 0, "name", "evil");
    request("read /libxl/1/type", XS_READ, 0, "/libxl/1/type", NULL);
    request("read bad//path", XS_READ, 0, "bad//path", NULL);
    request("watch data/dir", XS_WATCH, 0, "data/dir", "tok");
    request("write data/dir/sub/x", XS_WRITE, 0, "data/dir/sub/x", "1");
    request("unwatch data/dir", XS_UNWATCH, 0, "data/dir", "tok");
    request("write data/dir/sub/y", XS_WRITE, 0, "data/dir/sub/y", "2");

    tx = start_transaction("transaction start");
    request("write data/t in tx", XS_WRITE, tx, "data/t", "committed");
    request("read data/t outside", XS_READ, 0, "data/t", NULL);
    request("transaction commit", XS_TRANSACTION_END, tx, "T", NULL);
    request("read data/t", XS_READ, 0, "data/t", NULL);

    tx = start_transaction("transaction start");
    request("read data/t in tx", XS_READ, tx, "data/t", NULL);
    request("write data/t outside", XS_WRITE, 0, "data/t", "changed");
    request("transaction commit", XS_TRANSACTION_END, tx, "T", NULL);

    request("rm data/dir", XS_RM, 0, "data/dir", NULL);
    request("read data/dir/sub/x", XS_READ, 0, "data/dir/sub/x", NULL);
    grant_a_page();
    console_puts("xsprobe done\r\n");

    event_set_handler(start_info->store_evtchn, on_store_port);
    request("watch control/shutdown", XS_WATCH, 0, "control/shutdown", "shutdown");
    for (;;) {
        xs_poll_events();
        if (shutdown_event) {
            shutdown_event = 0;
            request("read control/shutdown", XS_READ, 0, "control/shutdown", NULL);
            if (strcmp(reply, "poweroff") == 0)
                poweroff();
        }
        events_block();
    }
}
