/*
 * The xs command: the domain's xenstore (read, write, rm, perms, watch, and the watch events seen), as
 * README.md specifies. Watch events arrive on the ring while any request waits for its reply, or when
 * `xs events` polls it; the first EVENTS_KEPT since the last `xs events` are kept, the rest counted.
 */
#include "shell.h"
#include "console.h"
#include "lib.h"
#include "xenstore.h"

#define EVENTS_KEPT 8
#define EVENT_PATH_MAX 96
#define XS_USAGE "error: usage: xs read P | write P V | rm P | perms P PERM... | watch P | events\r\n"

static char reply[XENSTORE_PAYLOAD_MAX + 1];
static char events[EVENTS_KEPT][EVENT_PATH_MAX];
static uint64_t events_seen;

static void on_event(const char *path, const char *token)
{
    (void)token;
    if (events_seen < EVENTS_KEPT) {
        size_t len = strlen(path);

        if (len >= EVENT_PATH_MAX)
            len = EVENT_PATH_MAX - 1;
        memcpy(events[events_seen], path, len);
        events[events_seen][len] = '\0';
    }
    events_seen++;
}

/* Send a request whose payload is `len` bytes; print the reply's value (`show`) or "ok", or the error. */
static void request(uint32_t type, const char *payload, uint32_t len, int show)
{
    uint32_t reply_len = 0;
    int answer;

    xs_set_event_handler(on_event);
    answer = xs_request(type, 0, payload, len, reply, sizeof(reply), &reply_len);
    if (answer == XS_ERROR) {
        console_puts("error: ");
        console_puts(reply);
    } else if (answer < 0) {
        console_puts("error: reply too long");
    } else if (show) {
        console_write(reply, reply_len);
    } else {
        console_puts("ok");
    }
    console_puts("\r\n");
}

/* The next space-separated word of *arg, or NULL if there is none (the word is nul-terminated in place). */
static char *next_word(char **arg)
{
    char *word;

    while (**arg == ' ')
        (*arg)++;
    if (**arg == '\0')
        return NULL;
    word = *arg;
    while (**arg && **arg != ' ')
        (*arg)++;
    if (**arg)
        *(*arg)++ = '\0';
    return word;
}

void cmd_xs(const char *arg)
{
    static char line[LINE_TEXT_MAX + 1];
    static char payload[LINE_TEXT_MAX + 16];
    char *rest = line, *op, *path;
    size_t len;

    memcpy(line, arg, strlen(arg) + 1);
    op = next_word(&rest);
    path = next_word(&rest);
    if (op && strcmp(op, "events") == 0) {
        uint64_t i;

        xs_set_event_handler(on_event);
        xs_poll_events();
        for (i = 0; i < events_seen && i < EVENTS_KEPT; i++) {
            console_puts("event ");
            console_puts(events[i]);
            console_puts("\r\n");
        }
        console_puts("events ");
        console_put_u64(events_seen);
        console_puts("\r\n");
        events_seen = 0;
        return;
    }
    if (!op || !path) {
        console_puts(XS_USAGE);
        return;
    }
    len = strlen(path);
    memcpy(payload, path, len + 1);
    if (strcmp(op, "read") == 0) {
        request(XS_READ, payload, len + 1, 1);
    } else if (strcmp(op, "rm") == 0) {
        request(XS_RM, payload, len + 1, 0);
    } else if (strcmp(op, "watch") == 0) {
        memcpy(payload + len + 1, "kbdshell", 9);
        request(XS_WATCH, payload, len + 10, 0);
    } else if (strcmp(op, "write") == 0) {
        size_t value_len = strlen(rest);      /* the rest of the line, verbatim (the value has no nul) */

        memcpy(payload + len + 1, rest, value_len);
        request(XS_WRITE, payload, len + 1 + value_len, 0);
    } else if (strcmp(op, "perms") == 0) {
        char *perm;

        len++;
        while ((perm = next_word(&rest)) != NULL) {
            size_t perm_len = strlen(perm) + 1;

            memcpy(payload + len, perm, perm_len);
            len += perm_len;
        }
        request(XS_SET_PERMS, payload, len, 0);
    } else {
        console_puts(XS_USAGE);
    }
}
