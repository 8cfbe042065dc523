/*
 * abiprobe: calls the hypercalls and sub-operations xenrr implements beyond the
 * basic console/event/timer set with valid and hostile arguments, and takes every
 * kind of exception through its own trap table. Each result is printed as
 * `name=<value>`; README.md lists the values real Xen gives, with the Xen source
 * that decides each one. Then the guest powers off.
 */
#include "console.h"
#include "events.h"
#include "hypercall.h"
#include "kernel.h"
#include "notes.h"
#include "clock.h"
#include "memory.h"
#include <xen/callback.h>
#include <xen/memory.h>
#include <xen/physdev.h>

XEN_GUEST_NOTES("abiprobe");

#define UNMAPPED_ADDR     0x0000400000003000ull
#define FAULT_READ_ADDR   0x0000400000004000ull
#define FAULT_WRITE_ADDR  0x0000400000005000ull
#define NONCANONICAL_ADDR 0x8000000000000000ull
#define TI_MASK_EVENTS    4

struct trap_frame {
    unsigned long vector, error_code, rip, cs, rflags, rsp, ss;
};

void trap_divide_error(void);
void trap_breakpoint(void);
void trap_invalid_opcode(void);
void trap_general_protection(void);
void trap_page_fault(void);
void trap_software_0x80(void);

static volatile struct {
    struct trap_frame frame;
    unsigned long cr2;
    unsigned int mask_in_handler;
    unsigned int count;
} last;
static unsigned long resume_skip;

void on_trap(struct trap_frame *frame);
void on_trap(struct trap_frame *frame)
{
    last.frame = *frame;
    last.cr2 = shared_info->vcpu_info[0].arch.cr2;
    last.mask_in_handler = shared_info->vcpu_info[0].evtchn_upcall_mask;
    last.count++;
    frame->rip += resume_skip;
}

static long hypercall2(unsigned int nr, unsigned long a1, unsigned long a2)
{
    return HYPERCALL(nr, a1, a2, 0, 0, 0);
}

static void report(const char *name, long value)
{
    console_puts(name);
    console_puts("=");
    console_put_i64(value);
    console_puts("\r\n");
}

static unsigned long a(unsigned long long address)
{
    return (unsigned long)address;
}

static void probe_trap_table(void)
{
    trap_info_t noncanonical[] = {
        { 0x80, 0, FLAT_KERNEL_CS, (unsigned long)trap_software_0x80 },
        { 6, 0, FLAT_KERNEL_CS, a(NONCANONICAL_ADDR) },
        { 0, 0, 0, 0 },
    };
    trap_info_t table[] = {
        { 0, 0, FLAT_KERNEL_CS, (unsigned long)trap_divide_error },
        { 3, 3, FLAT_KERNEL_CS, (unsigned long)trap_breakpoint },
        { 6, TI_MASK_EVENTS, FLAT_KERNEL_CS, (unsigned long)trap_invalid_opcode },
        { 13, 0, FLAT_KERNEL_CS, (unsigned long)trap_general_protection },
        { 14, 0, FLAT_KERNEL_CS, (unsigned long)trap_page_fault },
        { 0, 0, 0, 0 },
    };

    report("set_trap_table_unmapped", hypercall2(__HYPERVISOR_set_trap_table, a(UNMAPPED_ADDR), 0));
    report("set_trap_table_noncanonical", hypercall2(__HYPERVISOR_set_trap_table, (unsigned long)noncanonical, 0));
    /* The entry before the bad one stayed set: int $0x80 reaches its handler. */
    last.count = 0;
    resume_skip = 0;
    asm volatile("int $0x80" ::: "memory");
    report("trap_kept_before_noncanonical", last.count == 1 && last.frame.vector == 0x80);
    report("set_trap_table_null", hypercall2(__HYPERVISOR_set_trap_table, 0, 0));
    report("set_trap_table", hypercall2(__HYPERVISOR_set_trap_table, (unsigned long)table, 0));
}

/* Run one faulting instruction at `site` (a label in the asm) and report the frame. */
#define FAULT(name, skip, asm_text, ...) do {                                       \
        unsigned long site;                                                         \
        last.count = 0;                                                             \
        resume_skip = (skip);                                                       \
        asm volatile("lea 1f(%%rip), %[site]\n" asm_text                            \
                     : [site] "=&r"(site) : __VA_ARGS__ : "memory", "rax", "rdx");  \
        report(name "_taken", last.count);                                          \
        report(name "_vector", (long)last.frame.vector);                            \
        report(name "_error_code", (long)last.frame.error_code);                    \
        report(name "_rip_offset", (long)(last.frame.rip - site));                  \
    } while (0)

static void probe_exceptions(void)
{
    unsigned long zero = 0, value = 1;

    FAULT("trap_ud2", 2, "1: ud2\n");
    report("trap_ud2_events_masked_in_handler", last.mask_in_handler);
    report("trap_ud2_events_unmasked_after_iret", !shared_info->vcpu_info[0].evtchn_upcall_mask);
    report("trap_frame_cs", (long)last.frame.cs);
    report("trap_frame_rflags_if", (long)((last.frame.rflags >> 9) & 1));
    report("trap_frame_ss", (long)last.frame.ss);

    FAULT("trap_pf_read", 3, "1: movq (%[p]), %%rdx\n", [p] "c"(a(FAULT_READ_ADDR)));
    report("trap_pf_read_cr2_is_address", last.cr2 == FAULT_READ_ADDR);
    FAULT("trap_pf_write", 3, "1: movq %[v], (%[p])\n", [p] "r"(a(FAULT_WRITE_ADDR)), [v] "r"(value));
    report("trap_pf_write_cr2_is_address", last.cr2 == FAULT_WRITE_ADDR);
    FAULT("trap_gp_privileged", 4, "1: lgdt (%%rsp)\n");
    FAULT("trap_de", 3, "1: divq %[z]\n", [z] "r"(zero));
    FAULT("trap_int3", 0, "1: int3\n");
}

static void probe_control_registers(void)
{
    static uint8_t not_a_table[4096] __attribute__((aligned(4096)));
    unsigned long cr0, cr2, cr3, cr4, same, bad_cr0, bad_cr3;

    last.count = 0;
    asm volatile("mov %%cr0, %0" : "=r"(cr0));
    asm volatile("mov %%cr2, %0" : "=r"(cr2));
    asm volatile("mov %%cr3, %0" : "=r"(cr3));
    asm volatile("mov %%cr4, %0" : "=r"(cr4));
    report("cr0_read", (long)cr0);
    report("cr2_read_is_last_fault_address", cr2 == FAULT_WRITE_ADDR);
    report("cr3_read_is_l4_machine_address", cr3 == virt_to_mfn((void *)start_info->pt_base) << 12);
    report("cr4_read_pae", (long)((cr4 >> 5) & 1));
    same = cr3;
    asm volatile("mov %0, %%cr3" :: "r"(same) : "memory");
    report("cr_moves_took_no_trap", last.count);
    bad_cr3 = virt_to_mfn(not_a_table) << 12;
    bad_cr0 = cr0 & ~1ul;
    FAULT("cr3_write_not_a_table", 3, "1: mov %[v], %%cr3\n", [v] "c"(bad_cr3));
    FAULT("cr0_write_clearing_pe", 3, "1: mov %[v], %%cr0\n", [v] "c"(bad_cr0));
    FAULT("cr8_read", 4, "1: mov %%cr8, %%rax\n", "r"(0));
}

static void probe_vm_assist(void)
{
    report("vm_assist_unknown_type", hypercall2(__HYPERVISOR_vm_assist, VMASST_CMD_enable, 31));
    report("vm_assist_type_past_long", hypercall2(__HYPERVISOR_vm_assist, VMASST_CMD_enable, 64));
    report("vm_assist_bad_cmd", hypercall2(__HYPERVISOR_vm_assist, 7, VMASST_TYPE_writable_pagetables));
    report("vm_assist_enable_m2p_strict", hypercall2(__HYPERVISOR_vm_assist, VMASST_CMD_enable,
                                                     VMASST_TYPE_m2p_strict));
}

static void probe_features(void)
{
    xen_feature_info_t info = { .submap_idx = 0 };

    report("get_features_submap_0", HYPERVISOR_xen_version(XENVER_get_features, &info));
    report("get_features_submap_0_bits", info.submap);
    report("vm_assist_enable_pae_extended_cr3",
           hypercall2(__HYPERVISOR_vm_assist, VMASST_CMD_enable, VMASST_TYPE_pae_extended_cr3));
    HYPERVISOR_xen_version(XENVER_get_features, &info);
    report("get_features_submap_0_bits_with_pae_extended_cr3", info.submap);
    info.submap_idx = 7;
    report("get_features_submap_7", HYPERVISOR_xen_version(XENVER_get_features, &info));
    report("get_features_unmapped", HYPERVISOR_xen_version(XENVER_get_features, (void *)a(UNMAPPED_ADDR)));
}

static void probe_events(void)
{
    static const struct evtchn_bind_virq read_only = { .virq = VIRQ_DEBUG };   /* in .rodata */
    struct evtchn_bind_virq again = { .virq = VIRQ_DEBUG };
    struct evtchn_unmask unmask = { .port = 0 };

    report("evtchn_unmask_port_0", HYPERVISOR_event_channel_op(EVTCHNOP_unmask, &unmask));
    report("evtchn_bind_virq_read_only_struct",
           HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, (void *)&read_only));
    report("evtchn_bind_virq_read_only_struct_unchanged", read_only.port == 0);
    report("evtchn_bind_virq_read_only_then_again", HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &again));
}

static void probe_callbacks(void)
{
    struct callback_register nmi = { .type = CALLBACKTYPE_nmi, .address = (unsigned long)trap_breakpoint };
    struct callback_register bad_address = { .type = CALLBACKTYPE_event, .address = a(NONCANONICAL_ADDR) };
    struct callback_register bad_type = { .type = 6, .address = (unsigned long)trap_breakpoint };
    struct callback_unregister unregister_event = { .type = CALLBACKTYPE_event };
    struct callback_unregister unregister_nmi = { .type = CALLBACKTYPE_nmi };
    struct callback_unregister unregister_bad = { .type = 6 };

    report("callback_register_nmi", hypercall2(__HYPERVISOR_callback_op, CALLBACKOP_register, (unsigned long)&nmi));
    report("callback_register_noncanonical",
           hypercall2(__HYPERVISOR_callback_op, CALLBACKOP_register, (unsigned long)&bad_address));
    report("callback_register_unknown_type",
           hypercall2(__HYPERVISOR_callback_op, CALLBACKOP_register, (unsigned long)&bad_type));
    report("callback_register_unmapped",
           hypercall2(__HYPERVISOR_callback_op, CALLBACKOP_register, a(UNMAPPED_ADDR)));
    report("callback_unregister_event",
           hypercall2(__HYPERVISOR_callback_op, CALLBACKOP_unregister, (unsigned long)&unregister_event));
    report("callback_unregister_nmi",
           hypercall2(__HYPERVISOR_callback_op, CALLBACKOP_unregister, (unsigned long)&unregister_nmi));
    report("callback_unregister_unknown_type",
           hypercall2(__HYPERVISOR_callback_op, CALLBACKOP_unregister, (unsigned long)&unregister_bad));
    report("callback_op_bad_cmd", hypercall2(__HYPERVISOR_callback_op, 9, (unsigned long)&nmi));
}

static void probe_segment_base(void)
{
    static volatile unsigned long fs_target = 0x1234, gs_target = 0x5678;
    unsigned long seen;

    report("segbase_fs", hypercall2(__HYPERVISOR_set_segment_base, SEGBASE_FS, (unsigned long)&fs_target));
    asm volatile("movq %%fs:0, %0" : "=r"(seen) :: "memory");
    report("segbase_fs_read_through_fs", (long)seen);
    report("segbase_gs_kernel", hypercall2(__HYPERVISOR_set_segment_base, SEGBASE_GS_KERNEL,
                                           (unsigned long)&gs_target));
    asm volatile("movq %%gs:0, %0" : "=r"(seen) :: "memory");
    report("segbase_gs_kernel_read_through_gs", (long)seen);
    report("segbase_gs_user", hypercall2(__HYPERVISOR_set_segment_base, SEGBASE_GS_USER, 0x10000));
    report("segbase_gs_user_sel", hypercall2(__HYPERVISOR_set_segment_base, SEGBASE_GS_USER_SEL, 0));
    report("segbase_fs_noncanonical", hypercall2(__HYPERVISOR_set_segment_base, SEGBASE_FS, a(NONCANONICAL_ADDR)));
    report("segbase_gs_user_noncanonical",
           hypercall2(__HYPERVISOR_set_segment_base, SEGBASE_GS_USER, a(NONCANONICAL_ADDR)));
    report("segbase_bad_which", hypercall2(__HYPERVISOR_set_segment_base, 4, 0));
    hypercall2(__HYPERVISOR_set_segment_base, SEGBASE_FS, 0);
    hypercall2(__HYPERVISOR_set_segment_base, SEGBASE_GS_KERNEL, 0);
}

static long poll(evtchn_port_t *ports, unsigned int count, uint64_t timeout)
{
    struct sched_poll request = { .nr_ports = count, .timeout = timeout };

    set_xen_guest_handle(request.ports, ports);
    return HYPERVISOR_sched_op(SCHEDOP_poll, &request);
}

static int port_pending(evtchn_port_t port)
{
    return (shared_info->evtchn_pending[port / 64] >> (port % 64)) & 1;
}

static void clear_port(evtchn_port_t port)
{
    __atomic_and_fetch(&shared_info->evtchn_pending[port / 64], ~(1ul << (port % 64)), __ATOMIC_SEQ_CST);
}

/* The timer port stays masked: SCHEDOP_poll sees pending ports whether masked or not. */
static void probe_poll(void)
{
    struct sched_poll unmapped_ports = { .nr_ports = 1 };
    evtchn_port_t timer_port, ports[2], bad_port = 5000;
    uint64_t start;
    uint8_t upcall_mask = shared_info->vcpu_info[0].evtchn_upcall_mask;

    report("sched_poll_unmapped_argument", HYPERVISOR_sched_op(SCHEDOP_poll, (void *)a(UNMAPPED_ADDR)));
    report("sched_poll_too_many_ports", poll(ports, 129, 0));
    report("sched_poll_noncanonical_ports", poll((evtchn_port_t *)a(NONCANONICAL_ADDR), 1, 0));
    set_xen_guest_handle(unmapped_ports.ports, (evtchn_port_t *)a(UNMAPPED_ADDR));
    report("sched_poll_unmapped_ports", HYPERVISOR_sched_op(SCHEDOP_poll, &unmapped_ports));
    report("sched_poll_bad_port", poll(&bad_port, 1, 0));

    HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 0, 0);
    timer_port = event_bind_virq(VIRQ_TIMER);
    HYPERVISOR_set_timer_op(system_time_ns());           /* due at once: the port is pending */
    report("sched_poll_pending_port", poll(&timer_port, 1, 0));
    ports[0] = timer_port;
    ports[1] = bad_port;
    report("sched_poll_pending_port_before_bad_one", poll(ports, 2, 0));
    clear_port(timer_port);

    start = system_time_ns();
    report("sched_poll_timeout", poll(&timer_port, 1, start + 2000000));
    report("sched_poll_timeout_waited_2ms", system_time_ns() - start >= 2000000);
    report("sched_poll_timeout_port_pending", port_pending(timer_port));
    report("sched_poll_timeout_in_past", poll(&timer_port, 1, 1));

    start = system_time_ns();
    HYPERVISOR_set_timer_op(start + 3000000);
    report("sched_poll_woken_by_port", poll(&timer_port, 1, 0));
    report("sched_poll_woken_by_port_waited_3ms", system_time_ns() - start >= 3000000);
    report("sched_poll_woken_by_port_pending", port_pending(timer_port));
    report("sched_poll_upcall_mask_unchanged", shared_info->vcpu_info[0].evtchn_upcall_mask == upcall_mask);
    clear_port(timer_port);
}

static void probe_runstate(void)
{
    static struct vcpu_runstate_info area, now;
    struct vcpu_register_runstate_memory_area noncanonical = { .addr.p = a(NONCANONICAL_ADDR) };
    struct vcpu_register_runstate_memory_area unmapped = { .addr.p = a(UNMAPPED_ADDR) };
    struct vcpu_register_runstate_memory_area valid = { .addr.p = (unsigned long)&area };
    evtchn_port_t never = 4095;
    uint64_t start, blocked_before, blocked;

    report("runstate_get", HYPERVISOR_vcpu_op(VCPUOP_get_runstate_info, 0, &now));
    report("runstate_get_state", now.state);
    report("runstate_get_unmapped", HYPERVISOR_vcpu_op(VCPUOP_get_runstate_info, 0, (void *)a(UNMAPPED_ADDR)));
    report("runstate_register_noncanonical",
           HYPERVISOR_vcpu_op(VCPUOP_register_runstate_memory_area, 0, &noncanonical));
    report("runstate_register_unmapped", HYPERVISOR_vcpu_op(VCPUOP_register_runstate_memory_area, 0, &unmapped));
    report("runstate_register", HYPERVISOR_vcpu_op(VCPUOP_register_runstate_memory_area, 0, &valid));
    report("runstate_area_state", area.state);
    report("runstate_area_matches_get", area.time[RUNSTATE_blocked] == now.time[RUNSTATE_blocked]);
    blocked_before = area.time[RUNSTATE_blocked];
    start = system_time_ns();
    poll(&never, 1, start + 1000000);                    /* blocked for 1 ms */
    report("runstate_area_state_after_block", area.state);
    blocked = area.time[RUNSTATE_blocked] - blocked_before;   /* from the poll call to the timeout */
    report("runstate_area_blocked_almost_1ms_more", blocked > 990000 && blocked <= 1000000);
    report("runstate_area_entry_time_is_the_wake", area.state_entry_time == start + 1000000);
}

static void probe_multicall(void)
{
    static multicall_entry_t batch[5], nested[1];
    static unsigned long fs_seen;
    unsigned long seen;

    batch[0] = (multicall_entry_t){ .op = __HYPERVISOR_xen_version, .args = { XENVER_version } };
    batch[1] = (multicall_entry_t){ .op = __HYPERVISOR_vm_assist, .args = { VMASST_CMD_enable, 31 } };
    batch[2] = (multicall_entry_t){ .op = __HYPERVISOR_set_segment_base,
                                    .args = { SEGBASE_FS, (unsigned long)&fs_seen } };
    batch[3] = (multicall_entry_t){ .op = __HYPERVISOR_multicall, .args = { (unsigned long)nested, 1 } };
    batch[4] = (multicall_entry_t){ .op = 60 };
    nested[0] = (multicall_entry_t){ .op = __HYPERVISOR_xen_version, .args = { XENVER_version } };
    fs_seen = 0x4242;
    report("multicall", hypercall2(__HYPERVISOR_multicall, (unsigned long)batch, 5));
    report("multicall_xen_version_result", (long)batch[0].result);
    report("multicall_vm_assist_bad_type_result", (long)batch[1].result);
    report("multicall_set_segment_base_result", (long)batch[2].result);
    asm volatile("movq %%fs:0, %0" : "=r"(seen) :: "memory");
    report("multicall_set_segment_base_took_effect", seen == 0x4242);
    report("multicall_nested_result", (long)batch[3].result);
    report("multicall_nested_entry_not_run", nested[0].result == 0);
    report("multicall_unknown_op_result", (long)batch[4].result);
    report("multicall_noncanonical_array", hypercall2(__HYPERVISOR_multicall, a(NONCANONICAL_ADDR), 1));
    report("multicall_unmapped_array", hypercall2(__HYPERVISOR_multicall, a(UNMAPPED_ADDR), 1));
    report("multicall_empty", hypercall2(__HYPERVISOR_multicall, a(UNMAPPED_ADDR), 0));
    hypercall2(__HYPERVISOR_set_segment_base, SEGBASE_FS, 0);
}

static void probe_memory_op(void)
{
    domid_t self = DOMID_SELF, dom0 = 0, nobody = 77;
    struct xen_machphys_mapping mapping;
    struct xen_memory_map map = { .nr_entries = 4 };
    long max_ram_page = hypercall2(__HYPERVISOR_memory_op, XENMEM_maximum_ram_page, 0);

    report("memory_maximum_ram_page_above_the_domain", max_ram_page > (long)start_info->nr_pages);
    report("memory_maximum_ram_page_start_extent",
           hypercall2(__HYPERVISOR_memory_op, XENMEM_maximum_ram_page | (1 << 6), 0));
    report("memory_current_reservation_is_nr_pages",
           hypercall2(__HYPERVISOR_memory_op, XENMEM_current_reservation, (unsigned long)&self)
           == (long)start_info->nr_pages);
    report("memory_maximum_reservation_is_nr_pages",
           hypercall2(__HYPERVISOR_memory_op, XENMEM_maximum_reservation, (unsigned long)&self)
           == (long)start_info->nr_pages);
    report("memory_current_reservation_dom0",
           hypercall2(__HYPERVISOR_memory_op, XENMEM_current_reservation, (unsigned long)&dom0));
    report("memory_current_reservation_no_such_domain",
           hypercall2(__HYPERVISOR_memory_op, XENMEM_current_reservation, (unsigned long)&nobody));
    report("memory_current_reservation_unmapped",
           hypercall2(__HYPERVISOR_memory_op, XENMEM_current_reservation, a(UNMAPPED_ADDR)));
    report("memory_machphys_mapping", hypercall2(__HYPERVISOR_memory_op, XENMEM_machphys_mapping,
                                                 (unsigned long)&mapping));
    report("memory_machphys_mapping_v_start_is_m2p", mapping.v_start == MACH2PHYS_VIRT_START);
    report("memory_machphys_mapping_v_end_is_m2p_end", mapping.v_end == MACH2PHYS_VIRT_END);
    report("memory_machphys_mapping_max_mfn", mapping.max_mfn == (unsigned long)max_ram_page - 1);
    report("memory_machphys_mapping_unmapped",
           hypercall2(__HYPERVISOR_memory_op, XENMEM_machphys_mapping, a(UNMAPPED_ADDR)));
    report("memory_memory_map", hypercall2(__HYPERVISOR_memory_op, XENMEM_memory_map, (unsigned long)&map));
    report("memory_memory_map_unmapped", hypercall2(__HYPERVISOR_memory_op, XENMEM_memory_map, a(UNMAPPED_ADDR)));
    report("memory_unknown_op", hypercall2(__HYPERVISOR_memory_op, 63, 0));
}

#define DESC_CODE64_DPL0        0x00209a0000000000ull   /* present long-mode code segment, DPL 0 */
#define DESC_CODE64_DPL3        0x0020fa0000000000ull
#define DESC_DATA_DPL0          0x00cf92000000ffffull
#define DESC_DATA_DPL3          0x00cff2000000ffffull
#define DESC_TSS64              0x0000890000000000ull   /* present 64-bit TSS: a system descriptor */
#define DESC_GATE_KERNEL_CS     0x0000ec00e0331234ull   /* present call gate, DPL 3, to FLAT_KERNEL_CS */
#define DESC_GATE_AS_STORED     0x00008c00e0331234ull   /* DPL 0, the old DPL in the selector's RPL */
#define DESC_GATE_RESERVED_BITS 0x0000ec01e0331234ull
#define DESC_GATE_XEN_SELECTOR  0x0000ec00e0401234ull   /* selector 0xe040: in Xen's reserved GDT entries */
#define PTE_READ_ONLY           0x21ull                 /* present, accessed */
#define PTE_WRITABLE            0x23ull

static long update_descriptor(unsigned long long maddr, unsigned long long descriptor)
{
    return hypercall2(__HYPERVISOR_update_descriptor, (unsigned long)maddr, (unsigned long)descriptor);
}

static void probe_descriptor_tables(void)
{
    static uint64_t gdt[512] __attribute__((aligned(4096)));
    static uint64_t data[512] __attribute__((aligned(4096)));
    unsigned long frames[1] = { virt_to_mfn(gdt) };
    unsigned long long gdt_maddr = (unsigned long long)frames[0] << 12;
    unsigned long long table_maddr = (unsigned long long)virt_to_mfn((void *)start_info->pt_base) << 12;

    report("set_gdt_too_many_entries",
           hypercall2(__HYPERVISOR_set_gdt, (unsigned long)frames, FIRST_RESERVED_GDT_ENTRY + 1));
    report("set_gdt_unmapped_frame_list", hypercall2(__HYPERVISOR_set_gdt, a(UNMAPPED_ADDR), 1));
    report("set_gdt_writable_frame", hypercall2(__HYPERVISOR_set_gdt, (unsigned long)frames, 16));
    frames[0] = table_maddr >> 12;
    report("set_gdt_page_table_frame", hypercall2(__HYPERVISOR_set_gdt, (unsigned long)frames, 16));
    frames[0] = 1ul << 40;
    report("set_gdt_foreign_frame", hypercall2(__HYPERVISOR_set_gdt, (unsigned long)frames, 16));
    frames[0] = gdt_maddr >> 12;
    gdt[1] = DESC_TSS64;
    report("gdt_page_made_read_only", HYPERVISOR_update_va_mapping(gdt, gdt_maddr | PTE_READ_ONLY, UVMF_INVLPG));
    report("set_gdt_bad_descriptor", hypercall2(__HYPERVISOR_set_gdt, (unsigned long)frames, 16));
    report("update_descriptor_read_only_page", update_descriptor(gdt_maddr + 8, 0));
    report("set_gdt", hypercall2(__HYPERVISOR_set_gdt, (unsigned long)frames, 16));
    report("set_gdt_page_mapped_writable",
           HYPERVISOR_update_va_mapping(gdt, gdt_maddr | PTE_WRITABLE, UVMF_INVLPG));
    report("update_descriptor_misaligned", update_descriptor(gdt_maddr + 4, DESC_CODE64_DPL0));
    report("update_descriptor_code64", update_descriptor(gdt_maddr + 16, DESC_CODE64_DPL0));
    report("update_descriptor_code64_dpl_raised_to_3", gdt[2] == DESC_CODE64_DPL3);
    report("update_descriptor_tss", update_descriptor(gdt_maddr + 24, DESC_TSS64));
    report("update_descriptor_call_gate", update_descriptor(gdt_maddr + 24, DESC_GATE_KERNEL_CS));
    report("update_descriptor_call_gate_stored", gdt[3] == DESC_GATE_AS_STORED);
    report("update_descriptor_call_gate_reserved_bits", update_descriptor(gdt_maddr + 40, DESC_GATE_RESERVED_BITS));
    report("update_descriptor_call_gate_xen_selector", update_descriptor(gdt_maddr + 40, DESC_GATE_XEN_SELECTOR));
    report("update_descriptor_page_table_frame", update_descriptor(table_maddr, 0));
    report("update_descriptor_foreign_frame", update_descriptor(1ull << 52, 0));
    report("update_descriptor_writable_page",
           update_descriptor((unsigned long long)virt_to_mfn(data) << 12, DESC_DATA_DPL0));
    report("update_descriptor_writable_page_dpl_raised_to_3", data[0] == DESC_DATA_DPL3);
    report("set_gdt_empty", hypercall2(__HYPERVISOR_set_gdt, (unsigned long)frames, 0));
    report("gdt_page_writable_after_release",
           HYPERVISOR_update_va_mapping(gdt, gdt_maddr | PTE_WRITABLE, UVMF_INVLPG));
}

static long physdev(unsigned int command, unsigned long argument)
{
    return hypercall2(__HYPERVISOR_physdev_op, command, argument);
}

static void probe_physdev(void)
{
    static uint8_t eoi_map[4096] __attribute__((aligned(4096)));
    struct physdev_set_iopl iopl = { .iopl = 3 };
    struct physdev_set_iobitmap iobitmap = { .nr_ports = 1024 };
    struct physdev_irq_status_query query = { .irq = 0, .flags = 0 };
    struct physdev_eoi eoi = { .irq = 0 };
    struct physdev_get_free_pirq free_pirq = { .type = MAP_PIRQ_TYPE_MSI };
    struct physdev_pirq_eoi_gmfn gmfn = { .gmfn = virt_to_mfn((void *)start_info->pt_base) };
    struct physdev_map_pirq map = { .domid = DOMID_SELF, .type = MAP_PIRQ_TYPE_GSI, .index = 1, .pirq = 1 };
    struct physdev_unmap_pirq unmap = { .domid = DOMID_SELF, .pirq = 1 };
    struct physdev_manage_pci pci = { .bus = 0, .devfn = 0 };

    report("physdev_set_iopl", physdev(PHYSDEVOP_set_iopl, (unsigned long)&iopl));
    iopl.iopl = 4;
    report("physdev_set_iopl_4", physdev(PHYSDEVOP_set_iopl, (unsigned long)&iopl));
    report("physdev_set_iopl_unmapped", physdev(PHYSDEVOP_set_iopl, a(UNMAPPED_ADDR)));
    set_xen_guest_handle(iobitmap.bitmap, eoi_map);
    report("physdev_set_iobitmap", physdev(PHYSDEVOP_set_iobitmap, (unsigned long)&iobitmap));
    iobitmap.nr_ports = 65537;
    report("physdev_set_iobitmap_too_many_ports", physdev(PHYSDEVOP_set_iobitmap, (unsigned long)&iobitmap));
    iobitmap.nr_ports = 1024;
    set_xen_guest_handle(iobitmap.bitmap, (uint8_t *)a(0xffff800000000000ull));
    report("physdev_set_iobitmap_in_xen", physdev(PHYSDEVOP_set_iobitmap, (unsigned long)&iobitmap));
    report("physdev_set_iobitmap_unmapped", physdev(PHYSDEVOP_set_iobitmap, a(UNMAPPED_ADDR)));
    report("physdev_irq_status_query", physdev(PHYSDEVOP_irq_status_query, (unsigned long)&query));
    report("physdev_irq_status_query_flags", query.flags);
    query.irq = 1u << 20;
    report("physdev_irq_status_query_past_the_pirqs", physdev(PHYSDEVOP_irq_status_query, (unsigned long)&query));
    report("physdev_irq_status_query_unmapped", physdev(PHYSDEVOP_irq_status_query, a(UNMAPPED_ADDR)));
    report("physdev_eoi_no_such_pirq", physdev(PHYSDEVOP_eoi, (unsigned long)&eoi));
    report("physdev_eoi_unmapped", physdev(PHYSDEVOP_eoi, a(UNMAPPED_ADDR)));
    report("physdev_get_free_pirq_msi", physdev(PHYSDEVOP_get_free_pirq, (unsigned long)&free_pirq));
    report("physdev_get_free_pirq_msi_pirq", free_pirq.pirq);
    free_pirq.type = MAP_PIRQ_TYPE_GSI;
    report("physdev_get_free_pirq_gsi", physdev(PHYSDEVOP_get_free_pirq, (unsigned long)&free_pirq));
    report("physdev_get_free_pirq_gsi_pirq", free_pirq.pirq);
    eoi.irq = free_pirq.pirq;
    report("physdev_eoi_allocated_pirq", physdev(PHYSDEVOP_eoi, (unsigned long)&eoi));
    report("physdev_get_free_pirq_unmapped", physdev(PHYSDEVOP_get_free_pirq, a(UNMAPPED_ADDR)));
    report("physdev_pirq_eoi_gmfn_page_table", physdev(PHYSDEVOP_pirq_eoi_gmfn_v2, (unsigned long)&gmfn));
    gmfn.gmfn = virt_to_mfn(eoi_map);
    report("physdev_pirq_eoi_gmfn", physdev(PHYSDEVOP_pirq_eoi_gmfn_v2, (unsigned long)&gmfn));
    report("physdev_pirq_eoi_gmfn_again", physdev(PHYSDEVOP_pirq_eoi_gmfn_v1, (unsigned long)&gmfn));
    report("physdev_pirq_eoi_gmfn_unmapped", physdev(PHYSDEVOP_pirq_eoi_gmfn_v2, a(UNMAPPED_ADDR)));
    report("physdev_map_pirq_self", physdev(PHYSDEVOP_map_pirq, (unsigned long)&map));
    map.domid = 7;
    report("physdev_map_pirq_no_such_domain", physdev(PHYSDEVOP_map_pirq, (unsigned long)&map));
    report("physdev_map_pirq_unmapped", physdev(PHYSDEVOP_map_pirq, a(UNMAPPED_ADDR)));
    report("physdev_unmap_pirq_self", physdev(PHYSDEVOP_unmap_pirq, (unsigned long)&unmap));
    report("physdev_manage_pci_add", physdev(PHYSDEVOP_manage_pci_add, (unsigned long)&pci));
    report("physdev_manage_pci_add_unmapped", physdev(PHYSDEVOP_manage_pci_add, a(UNMAPPED_ADDR)));
    report("physdev_pci_mmcfg_reserved_unmapped", physdev(PHYSDEVOP_pci_mmcfg_reserved, a(UNMAPPED_ADDR)));
    report("physdev_apic_read_unmapped", physdev(PHYSDEVOP_apic_read, a(UNMAPPED_ADDR)));
    report("physdev_unknown_op", physdev(99, 0));
}

static void probe_vcpu_info(void)
{
    static uint8_t page[4096] __attribute__((aligned(4096)));
    struct vcpu_register_vcpu_info request = { .mfn = virt_to_mfn(page), .offset = 4096 - 56 };
    vcpu_info_t *moved = (vcpu_info_t *)(page + 128);

    report("vcpu_info_crossing_the_page", HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, 0, &request));
    request.offset = 132;
    report("vcpu_info_misaligned", HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, 0, &request));
    request.mfn = virt_to_mfn((void *)start_info->pt_base);
    request.offset = 128;
    report("vcpu_info_page_table_frame", HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, 0, &request));
    report("vcpu_info_unmapped_argument",
           HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, 0, (void *)a(UNMAPPED_ADDR)));
    shared_info->vcpu_info[0].evtchn_upcall_mask = 1;   /* the copy comes with events masked */
    request.mfn = virt_to_mfn(page);
    report("vcpu_info_register", HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, 0, &request));
    report("vcpu_info_moved_upcall_pending", moved->evtchn_upcall_pending);
    report("vcpu_info_moved_pending_sel_all_set", moved->evtchn_pending_sel == ~0ul);
    report("vcpu_info_moved_mask_copied", moved->evtchn_upcall_mask);
    report("vcpu_info_moved_time_published", moved->time.system_time != 0 && !(moved->time.version & 1));
    report("vcpu_info_register_again", HYPERVISOR_vcpu_op(VCPUOP_register_vcpu_info, 0, &request));
}

void guest_main(void)
{
    console_puts("abiprobe\r\n");
    probe_trap_table();
    probe_exceptions();
    probe_control_registers();
    probe_vm_assist();
    probe_features();
    probe_events();
    probe_callbacks();
    probe_segment_base();
    probe_poll();
    probe_runstate();
    probe_multicall();
    probe_memory_op();
    probe_descriptor_tables();
    probe_physdev();
    probe_vcpu_info();              /* last: the common code keeps using shared_info's vcpu_info */
    console_puts("abiprobe done\r\n");
    poweroff();
}
