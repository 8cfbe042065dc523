/*
 * The line editor: echo, backspace, line end, history. The editor state is
 * the one global `ed`; line_insert() stores every typed character.
 *
 * DELIBERATE BUG (documented in README.md, hunted by the reverse-debugging
 * demo): line_insert's bounds check allows four characters too many, so
 * characters 65-68 of a long line are written past ed.line into
 * ed.hist_count. Nothing else is overwritten and the guest keeps running.
 */
#include "shell.h"
#include "console.h"
#include "lib.h"

struct editor ed;

/* The last HISTORY_LINES lines, oldest first starting at `oldest`. */
static struct {
    char text[HISTORY_LINES][LINE_TEXT_MAX + 1];
    unsigned oldest;
    unsigned used;
} history;

void print_prompt(void)
{
    console_puts("> ");
}

__attribute__((noinline)) int line_insert(char c)
{
    /* BUG: the limit should be sizeof(ed.line); this one is off by four. */
    if (ed.len >= sizeof(ed.line) + 4)
        return 0;
    ed.line[ed.len++] = c;
    return 1;
}

static void history_add(const char *text)
{
    unsigned slot = (history.oldest + history.used) % HISTORY_LINES;

    memcpy(history.text[slot], text, strlen(text) + 1);
    if (history.used < HISTORY_LINES)
        history.used++;
    else
        history.oldest = (history.oldest + 1) % HISTORY_LINES;
}

void print_history(void)
{
    unsigned i;

    console_put_u64(ed.hist_count);
    console_puts("\r\n");
    for (i = 0; i < history.used; i++) {
        console_puts(history.text[(history.oldest + i) % HISTORY_LINES]);
        console_puts("\r\n");
    }
}

static void submit_line(void)
{
    char text[LINE_TEXT_MAX + 1];
    unsigned len = ed.len;

    memcpy(text, ed.line, len);
    text[len] = '\0';
    ed.len = 0;
    if (len == 0)
        return;
    ed.hist_count++;
    history_add(text);
    run_command(text);
}

static void erase_last(void)
{
    if (ed.len == 0)
        return;
    ed.len--;
    console_puts("\b \b");
}

__attribute__((noinline)) void handle_key(char c)
{
    int line_end_follows_cr = (c == '\n' && ed.after_cr);

    ed.after_cr = (c == '\r');
    if (line_end_follows_cr)
        return;
    if (c == '\r' || c == '\n') {
        console_puts("\r\n");
        submit_line();
        print_prompt();
    } else if (c == 0x7f || c == 0x08) {
        erase_last();
    } else if (c >= 0x20 && c <= 0x7e) {
        if (line_insert(c))
            console_write(&c, 1);
    }
}
