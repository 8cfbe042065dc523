/*
 * The kernel core every guest built on common/ shares: the boot information
 * the hypervisor handed over, fatal-error handling and power-off. entry.S
 * calls start_kernel(), which initialises console and events and then runs
 * the guest's own guest_main().
 */
#ifndef COMMON_KERNEL_H
#define COMMON_KERNEL_H

#include "xenabi.h"

extern start_info_t *start_info;
extern shared_info_t *shared_info;

/* Called from entry.S: boot with the hypervisor's start_info. */
__attribute__((noreturn)) void start_kernel(start_info_t *si);
/* Called from entry.S when the hypervisor invokes the failsafe callback. */
__attribute__((noreturn)) void on_failsafe_callback(void);

/* Provided by each guest: its program, run with events unmasked. */
void guest_main(void);

/* Report msg on the hypervisor log and the console, then shut down with SHUTDOWN_crash. */
__attribute__((noreturn)) void panic(const char *msg);

/* Drain console output, then shut down with SHUTDOWN_poweroff. */
__attribute__((noreturn)) void poweroff(void);

#endif
