/*
 * kbdshell's parts: the line editor (editor.c) turns keystrokes into lines,
 * the command interpreter (commands.c) runs them, main.c owns boot, the timer
 * and the input loop. See README.md for the user-visible behaviour.
 */
#ifndef KBDSHELL_SHELL_H
#define KBDSHELL_SHELL_H

#include <stdint.h>

#define LINE_SIZE 64
#define HISTORY_LINES 8
/* Longest line the editor can hand over (LINE_SIZE plus the 4 bytes of the bug). */
#define LINE_TEXT_MAX (LINE_SIZE + 4)

struct editor {
    char line[LINE_SIZE];   /* the line being typed */
    unsigned hist_count;    /* lines entered so far */
    unsigned len;           /* characters in line */
    int after_cr;           /* last key was CR: an LF right after it ends no new line */
};

extern struct editor ed;

/* editor.c */
void handle_key(char c);
int line_insert(char c);
void print_prompt(void);
void print_history(void);

/* commands.c */
void run_command(const char *line);

/* evtchn.c */
void cmd_evtchn(const char *arg);

/* xs.c */
void cmd_xs(const char *arg);

/* main.c */
uint64_t timer_ticks(void);

#endif
