/*
 * The evtchn command: event channels between domains (and within one), as
 * README.md specifies. Ports it allocates or binds count the events that
 * arrive on them (the handler only counts: it runs in the upcall).
 */
#include "shell.h"
#include "console.h"
#include "events.h"
#include "hypercall.h"
#include "lib.h"

#define COUNTED_PORTS 4

static struct {
    evtchn_port_t port;
    volatile uint64_t events;
} counted[COUNTED_PORTS];
static unsigned counted_ports;

static void count_event(evtchn_port_t port)
{
    unsigned i;

    for (i = 0; i < counted_ports; i++)
        if (counted[i].port == port)
            counted[i].events++;
}

/* Count events on port from now on (a port seen before keeps its slot, and its count). */
static void watch_port(evtchn_port_t port)
{
    struct evtchn_unmask unmask = { .port = port };
    unsigned i;

    for (i = 0; i < counted_ports; i++)
        if (counted[i].port == port) {
            HYPERVISOR_event_channel_op(EVTCHNOP_unmask, &unmask);
            return;
        }
    if (counted_ports == COUNTED_PORTS)
        return;
    counted[counted_ports].port = port;
    counted_ports++;
    event_set_handler(port, count_event);
}

/* "error: RC", or what, followed by value when what ends in a space. */
static void put_result(int rc, const char *what, uint64_t value)
{
    if (rc != 0) {
        console_puts("error: ");
        console_put_i64(rc);
    } else {
        console_puts(what);
        if (*what && what[strlen(what) - 1] == ' ')
            console_put_u64(value);
    }
    console_puts("\r\n");
}

/* The next decimal number of *arg (spaces before it skipped); 0 if there is none. */
static int next_number(const char **arg, uint64_t *value)
{
    char digits[24];
    unsigned n = 0;

    while (**arg == ' ')
        (*arg)++;
    while (**arg && **arg != ' ' && n < sizeof(digits) - 1)
        digits[n++] = *(*arg)++;
    digits[n] = '\0';
    return parse_u64(digits, value);
}

static void status(evtchn_port_t port)
{
    struct evtchn_status st = { .dom = DOMID_SELF, .port = port };
    int rc = HYPERVISOR_event_channel_op(EVTCHNOP_status, &st);

    if (rc != 0) {
        put_result(rc, "", 0);
        return;
    }
    switch (st.status) {
    case EVTCHNSTAT_closed:
        console_puts("closed");
        break;
    case EVTCHNSTAT_unbound:
        console_puts("unbound d");
        console_put_u64(st.u.unbound.dom);
        break;
    case EVTCHNSTAT_interdomain:
        console_puts("interdomain d");
        console_put_u64(st.u.interdomain.dom);
        console_puts(" port ");
        console_put_u64(st.u.interdomain.port);
        break;
    case EVTCHNSTAT_virq:
        console_puts("virq ");
        console_put_u64(st.u.virq);
        break;
    default:
        console_puts("status ");
        console_put_u64(st.status);
    }
    console_puts("\r\n");
}

void cmd_evtchn(const char *arg)
{
    uint64_t a = 0, b = 0;
    int have_a;
    const char *rest = arg;
    char op[8];
    unsigned n = 0;

    while (*rest && *rest != ' ' && n < sizeof(op) - 1)
        op[n++] = *rest++;
    op[n] = '\0';
    have_a = next_number(&rest, &a);
    if (have_a && strcmp(op, "alloc") == 0) {
        struct evtchn_alloc_unbound alloc = { .dom = DOMID_SELF, .remote_dom = (domid_t)a };
        int rc = HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &alloc);

        if (rc == 0)
            watch_port(alloc.port);
        put_result(rc, "port ", alloc.port);
    } else if (have_a && strcmp(op, "bind") == 0 && next_number(&rest, &b)) {
        struct evtchn_bind_interdomain bind = { .remote_dom = (domid_t)a, .remote_port = (evtchn_port_t)b };
        int rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_interdomain, &bind);

        if (rc == 0)
            watch_port(bind.local_port);
        put_result(rc, "port ", bind.local_port);
    } else if (have_a && strcmp(op, "send") == 0) {
        struct evtchn_send send = { .port = (evtchn_port_t)a };
        uint64_t times = next_number(&rest, &b) ? b : 1, i;
        int rc = 0;

        for (i = 0; i < times && rc == 0; i++)
            rc = HYPERVISOR_event_channel_op(EVTCHNOP_send, &send);
        put_result(rc, "ok", 0);
    } else if (have_a && strcmp(op, "close") == 0) {
        struct evtchn_close close = { .port = (evtchn_port_t)a };

        put_result(HYPERVISOR_event_channel_op(EVTCHNOP_close, &close), "ok", 0);
    } else if (have_a && strcmp(op, "count") == 0) {
        uint64_t events = 0;
        unsigned i;

        for (i = 0; i < counted_ports; i++)
            if (counted[i].port == a)
                events = counted[i].events;
        put_result(0, "events ", events);
    } else if (have_a && strcmp(op, "status") == 0) {
        status((evtchn_port_t)a);
    } else {
        console_puts("error: usage: evtchn alloc D | bind D P | send P [N] | close P | count P | status P\r\n");
    }
}
