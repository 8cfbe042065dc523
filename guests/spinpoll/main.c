/*
 * spinpoll: waits for keys the way GRUB's Xen port does - it polls the console
 * ring and reads the TSC in a loop, never blocks, never yields and never
 * enables events. It echoes each line it reads ("> echo" style) and powers off
 * on "halt". Invariant: while no key arrives it makes no hypercall and moves no
 * ring index, so only the hypervisor's ring-poll idle detection can tell that
 * it waits (see xen/sched.py).
 */
#include "console.h"
#include "kernel.h"
#include "lib.h"
#include "notes.h"

XEN_GUEST_NOTES("spinpoll");

#define LINE_MAX 64
#define WORK_PER_POLL 32        /* about GRUB's ~130 instructions between two TSC reads */

/* TSC reads while waiting: the guest's notion of how long it has been idle. */
static volatile uint64_t last_tsc;

static uint64_t read_tsc(void)
{
    uint32_t lo, hi;

    asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static char wait_key(void)
{
    char c;

    while (console_read(&c, 1) == 0) {
        for (int i = 0; i < WORK_PER_POLL; i++)
            asm volatile("" ::: "memory");
        last_tsc = read_tsc();
    }
    return c;
}

void guest_main(void)
{
    char line[LINE_MAX + 1];
    size_t n = 0;

    console_puts("spinpoll ready\r\n> ");
    for (;;) {
        char c = wait_key();

        if (c != '\r' && c != '\n') {
            if (n < LINE_MAX) {
                line[n++] = c;
                console_write(&c, 1);
            }
            continue;
        }
        line[n] = '\0';
        console_puts("\r\n");
        if (strcmp(line, "halt") == 0)
            poweroff();
        if (n > 0) {
            console_puts(line);
            console_puts("\r\n");
        }
        n = 0;
        console_puts("> ");
    }
}
