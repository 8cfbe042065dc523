/*
 * System time: system_time + scaled (rdtsc - tsc_timestamp), read under the
 * vcpu_time_info version protocol (odd = update in progress; retry when the
 * version changed while reading).
 */
#include "clock.h"
#include "kernel.h"

static uint64_t rdtsc(void)
{
    uint32_t lo, hi;

    asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static uint64_t scale_delta(uint64_t delta, uint32_t mul, int8_t shift)
{
    if (shift < 0)
        delta >>= -shift;
    else
        delta <<= shift;
    return (uint64_t)(((unsigned __int128)delta * mul) >> 32);
}

uint64_t system_time_ns(void)
{
    const volatile struct vcpu_time_info *t = &shared_info->vcpu_info[0].time;
    uint32_t version;
    uint64_t ns, tsc, stamp;
    uint32_t mul;
    int8_t shift;

    do {
        version = t->version;
        asm volatile("" ::: "memory");
        ns = t->system_time;
        stamp = t->tsc_timestamp;
        mul = t->tsc_to_system_mul;
        shift = t->tsc_shift;
        tsc = rdtsc();
        asm volatile("" ::: "memory");
    } while ((version & 1) || version != t->version);
    /* A TSC behind the stamp (never on a sane hypervisor) counts as no time passed. */
    return ns + (tsc > stamp ? scale_delta(tsc - stamp, mul, shift) : 0);
}
