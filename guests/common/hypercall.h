/*
 * Hypercall wrappers: every hypercall is a call into the hypercall page the
 * hypervisor fills (entry nr at hypercall_page + nr * 32), arguments in
 * rdi, rsi, rdx, r10, r8, result in rax. The argument registers, rcx and r11
 * are treated as clobbered, as the ABI allows.
 */
#ifndef COMMON_HYPERCALL_H
#define COMMON_HYPERCALL_H

#include "xenabi.h"

extern char hypercall_page[4096];

#define HYPERCALL(nr, a1, a2, a3, a4, a5) ({                                  \
    register unsigned long _a1 asm("rdi") = (unsigned long)(a1);              \
    register unsigned long _a2 asm("rsi") = (unsigned long)(a2);              \
    register unsigned long _a3 asm("rdx") = (unsigned long)(a3);              \
    register unsigned long _a4 asm("r10") = (unsigned long)(a4);              \
    register unsigned long _a5 asm("r8") = (unsigned long)(a5);               \
    long _ret;                                                                \
    asm volatile("call hypercall_page + %c[offset]"                           \
                 : "=a"(_ret), "+r"(_a1), "+r"(_a2), "+r"(_a3), "+r"(_a4),    \
                   "+r"(_a5)                                                  \
                 : [offset] "i"((nr) * 32)                                    \
                 : "rcx", "r11", "memory", "cc");                             \
    _ret;                                                                     \
})

static inline long HYPERVISOR_console_io(int cmd, unsigned long count, const void *buf)
{
    return HYPERCALL(__HYPERVISOR_console_io, cmd, count, buf, 0, 0);
}

static inline long HYPERVISOR_sched_op(int cmd, void *arg)
{
    return HYPERCALL(__HYPERVISOR_sched_op, cmd, arg, 0, 0, 0);
}

static inline long HYPERVISOR_event_channel_op(int cmd, void *arg)
{
    return HYPERCALL(__HYPERVISOR_event_channel_op, cmd, arg, 0, 0, 0);
}

static inline long HYPERVISOR_set_callbacks(void (*event)(void), void (*failsafe)(void),
                                            void (*syscall)(void))
{
    return HYPERCALL(__HYPERVISOR_set_callbacks, event, failsafe, syscall, 0, 0);
}

static inline long HYPERVISOR_vcpu_op(int cmd, unsigned int vcpu, void *arg)
{
    return HYPERCALL(__HYPERVISOR_vcpu_op, cmd, vcpu, arg, 0, 0);
}

static inline long HYPERVISOR_set_timer_op(uint64_t deadline_ns)
{
    return HYPERCALL(__HYPERVISOR_set_timer_op, deadline_ns, 0, 0, 0, 0);
}

static inline long HYPERVISOR_update_va_mapping(const void *va, uint64_t pte, unsigned long flags)
{
    return HYPERCALL(__HYPERVISOR_update_va_mapping, va, pte, flags, 0, 0);
}

static inline long HYPERVISOR_mmu_update(const struct mmu_update *requests, unsigned int count,
                                         unsigned int *done, domid_t domid)
{
    return HYPERCALL(__HYPERVISOR_mmu_update, requests, count, done, domid, 0);
}

static inline long HYPERVISOR_mmuext_op(const struct mmuext_op *ops, unsigned int count,
                                        unsigned int *done, domid_t domid)
{
    return HYPERCALL(__HYPERVISOR_mmuext_op, ops, count, done, domid, 0);
}

static inline long HYPERVISOR_grant_table_op(unsigned int cmd, void *op, unsigned int count)
{
    return HYPERCALL(__HYPERVISOR_grant_table_op, cmd, op, count, 0, 0);
}

static inline long HYPERVISOR_xen_version(int cmd, void *arg)
{
    return HYPERCALL(__HYPERVISOR_xen_version, cmd, arg, 0, 0, 0);
}

#endif
