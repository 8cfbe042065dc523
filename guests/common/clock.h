/* Guest system time from shared_info's vcpu_time_info and the TSC. */
#ifndef COMMON_CLOCK_H
#define COMMON_CLOCK_H

#include <stdint.h>

/* Nanoseconds since the domain booted, as the hypervisor defines system time. */
uint64_t system_time_ns(void);

#endif
