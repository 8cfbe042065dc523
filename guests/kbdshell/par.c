/*
 * par N: two vCPUs each run par_worker(N), adding 1 to a shared counter N
 * times, and the total is printed (README.md, "par").
 *
 * vCPU 1 is brought up on the first `par` with VCPUOP_initialise and
 * VCPUOP_up (a one-vCPU domain answers -ENOENT: par says so). It waits in
 * SCHEDOP_poll on an IPI port bound to it (EVTCHNOP_bind_ipi); vCPU 0 sends
 * on that port to start a round and waits, the same way, on an IPI port of
 * its own that vCPU 1 sends on when its half is done. Both IPI ports stay
 * masked: they wake the poller without an upcall. The round and done
 * counters, not the ports, say whether there is work, so a wake-up that comes
 * early or twice is harmless.
 *
 * THE DELIBERATE RACE: par_worker's update of par_counter is an unlocked
 * read-modify-write (load, a little work, store). When the vCPU running it is
 * switched out between its load and its store, every increment the other vCPU
 * makes meanwhile is overwritten by the stale store and lost. So the total is
 * 2N only when no switch falls inside that window: it depends on N and on the
 * interleaving (under xenrr, on the quantum), and a recording with a wrong
 * total replays with the same wrong total.
 */
#include "par.h"
#include "console.h"
#include "events.h"
#include "hypercall.h"
#include "kernel.h"
#include "lib.h"

#define SECONDARY_STACK_SIZE (16 * 1024)
#define BITS_PER_WORD (8 * sizeof(xen_ulong_t))

extern void hypervisor_callback(void);
extern void failsafe_callback(void);

/* par's data lives at the end of the image (link.ld's last .bss section, after the page windows), so
 * adding par moved none of kbdshell's other variables: their pages, and what else shares them, stay. */
#define PAR_DATA __attribute__((section(".bss.windows")))

static char secondary_stack[SECONDARY_STACK_SIZE] PAR_DATA __attribute__((aligned(16)));
static struct vcpu_guest_context secondary_context PAR_DATA;
static evtchn_port_t wake_secondary PAR_DATA;      /* IPI port notifying vCPU 1 */
static evtchn_port_t wake_primary PAR_DATA;        /* IPI port notifying vCPU 0 */
static int secondary_up PAR_DATA;

static volatile uint64_t par_counter PAR_DATA;     /* the shared counter both workers update */
static volatile uint64_t par_iterations PAR_DATA;
static volatile uint64_t par_round PAR_DATA;       /* started rounds (written by vCPU 0) */
static volatile uint64_t par_done PAR_DATA;        /* finished rounds (written by vCPU 1) */

static __attribute__((noinline)) void par_worker(uint64_t n)
{
    uint64_t i;

    for (i = 0; i < n; i++) {
        uint64_t seen = par_counter;               /* read ... */
        uint64_t spin = (i & 7) + 4, mix = seen;

        while (spin--)                             /* ... a little work ... */
            mix = mix * 31 + spin;
        asm volatile("" : : "r"(mix));
        par_counter = seen + 1;                    /* ... write: THE RACE (no lock, not atomic) */
    }
}

static evtchn_port_t bind_masked_ipi(unsigned int vcpu)
{
    struct evtchn_bind_ipi bind = { .vcpu = vcpu };

    if (HYPERVISOR_event_channel_op(EVTCHNOP_bind_ipi, &bind) != 0)
        panic("EVTCHNOP_bind_ipi failed");
    __atomic_fetch_or(&shared_info->evtchn_mask[bind.port / BITS_PER_WORD],
                      (xen_ulong_t)1 << (bind.port % BITS_PER_WORD), __ATOMIC_SEQ_CST);
    return bind.port;
}

static void send(evtchn_port_t port)
{
    struct evtchn_send request = { .port = port };

    HYPERVISOR_event_channel_op(EVTCHNOP_send, &request);
}

/* Wait until *counter reaches target, polling `port` (its pending bit is cleared after each wake). */
static void wait_for(volatile uint64_t *counter, uint64_t target, evtchn_port_t port)
{
    struct sched_poll poll = { .nr_ports = 1, .timeout = 0 };

    set_xen_guest_handle(poll.ports, &port);
    while (*counter != target) {
        HYPERVISOR_sched_op(SCHEDOP_poll, &poll);
        __atomic_fetch_and(&shared_info->evtchn_pending[port / BITS_PER_WORD],
                           ~((xen_ulong_t)1 << (port % BITS_PER_WORD)), __ATOMIC_SEQ_CST);
    }
}

static __attribute__((noreturn)) void secondary_main(void)
{
    uint64_t round = 0;

    for (;;) {
        wait_for(&par_round, round + 1, wake_secondary);
        round++;
        par_worker(par_iterations);
        par_done = round;
        send(wake_primary);
    }
}

static unsigned long current_cr3(void)
{
    unsigned long cr3;

    asm volatile("mov %%cr3, %0" : "=r"(cr3));      /* emulated by Xen for a PV kernel */
    return cr3;
}

/* VCPUOP_initialise and VCPUOP_up for vCPU 1; the Xen error code on failure. */
static long start_secondary(void)
{
    struct vcpu_guest_context *c = &secondary_context;
    unsigned long stack_top = (unsigned long)secondary_stack + SECONDARY_STACK_SIZE;
    long rc;

    c->flags = VGCF_in_kernel;
    c->user_regs.rip = (unsigned long)secondary_main;
    c->user_regs.rsp = stack_top - 8;              /* as after a call: the ABI's alignment */
    c->user_regs.cs = FLAT_KERNEL_CS;
    c->user_regs.ss = FLAT_KERNEL_SS;
    c->user_regs.rflags = 0x202;
    c->kernel_ss = FLAT_KERNEL_SS;
    c->kernel_sp = stack_top;
    c->ctrlreg[3] = current_cr3();
    c->event_callback_eip = (unsigned long)hypervisor_callback;
    c->failsafe_callback_eip = (unsigned long)failsafe_callback;
    rc = HYPERVISOR_vcpu_op(VCPUOP_initialise, 1, c);
    if (rc != 0)
        return rc;
    wake_secondary = bind_masked_ipi(1);
    wake_primary = bind_masked_ipi(0);
    HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 1, NULL);   /* vCPU 1 takes no ticks */
    return HYPERVISOR_vcpu_op(VCPUOP_up, 1, NULL);
}

void cmd_par(const char *arg)
{
    uint64_t n, total;

    if (!parse_u64(arg, &n) || n > (1ull << 40)) {
        console_puts("error: usage: par N\r\n");
        return;
    }
    if (!secondary_up) {
        long rc = start_secondary();

        if (rc == -2) {                 /* -ENOENT (xen/errno.h): the domain has one vCPU */
            console_puts("par: needs a second vCPU (xenrr run --vcpus 2)\r\n");
            return;
        }
        if (rc != 0) {
            console_puts("par: cannot start vCPU 1\r\n");
            return;
        }
        secondary_up = 1;
    }
    par_counter = 0;
    par_iterations = n;
    par_round = par_round + 1;
    send(wake_secondary);
    par_worker(n);
    wait_for(&par_done, par_round, wake_primary);
    total = par_counter;
    console_puts("par: ");
    console_put_u64(total);
    console_puts(" of ");
    console_put_u64(2 * n);
    if (total == 2 * n) {
        console_puts(" updates\r\n");
    } else {
        console_puts(" updates (");
        console_put_u64(2 * n - total);
        console_puts(" lost)\r\n");
    }
}
