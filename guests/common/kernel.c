/*
 * Kernel core: boot (start_kernel), panic and power-off. Invariant: after
 * start_kernel's set-up, start_info, shared_info (mapped by the guest at a
 * window of its own: start_info gives its machine address), the console and
 * the event callback are valid for the rest of the guest's life.
 */
#include "kernel.h"
#include "console.h"
#include "events.h"
#include "hypercall.h"
#include "lib.h"
#include "memory.h"

#define START_INFO_MAGIC "xen-3.0-x86_64"

start_info_t *start_info;
shared_info_t *shared_info;

PAGE_WINDOW(shared_info_window);

static void hypervisor_log(const char *msg)
{
    HYPERVISOR_console_io(CONSOLEIO_write, strlen(msg), msg);
}

/* SCHEDOP_shutdown does not return; if a broken hypervisor lets it, stop with ud2. */
static __attribute__((noreturn)) void shutdown(unsigned int reason)
{
    struct sched_shutdown request = { .reason = reason };

    HYPERVISOR_sched_op(SCHEDOP_shutdown, &request);
    __builtin_trap();
}

void panic(const char *msg)
{
    hypervisor_log("panic: ");
    hypervisor_log(msg);
    hypervisor_log("\n");
    if (start_info && console_ready()) {
        console_puts("panic: ");
        console_puts(msg);
        console_puts("\r\n");
        console_flush();
    }
    shutdown(SHUTDOWN_crash);
}

void poweroff(void)
{
    console_flush();
    shutdown(SHUTDOWN_poweroff);
}

void on_failsafe_callback(void)
{
    panic("failsafe callback");
}

void start_kernel(start_info_t *si)
{
    if (memcmp(si->magic, START_INFO_MAGIC, sizeof(START_INFO_MAGIC) - 1) != 0) {
        hypervisor_log("panic: bad start_info magic\n");
        shutdown(SHUTDOWN_crash);
    }
    start_info = si;
    memory_init();
    shared_info = map_machine_frame(shared_info_window, si->shared_info >> PAGE_SHIFT);
    events_init();
    console_init();
    events_unmask();
    guest_main();
    poweroff();
}
