"""The Xen PV x86-64 guest ABI: structure layouts and constants, under Xen's own names.

Owns the binary interface between a PV guest and our hypervisor: the shared pages (start_info,
shared_info with its vcpu_info and vcpu_time_info, the console ring), the HYPERVISOR_iret frame and
the hypercall argument structures the hypervisor decodes, plus the numbers both sides agree on.

Invariant: every layout (size, field offsets and sizes, signedness) and every constant here equals
the one in the real public headers /usr/include/xen (Debian libxen-dev, compiled for x86-64 with
__XEN_INTERFACE_VERSION__ = __XEN_LATEST_INTERFACE_VERSION__); tests/xen/test_abi.py compiles a C
program against those headers and fails on any difference.

Naming: structures are ctypes classes in CamelCase (StartInfo is `struct start_info`) whose field
names are the C member names; constants keep their C names, except that `__HYPERVISOR_x` is spelled
`HYPERVISOR_x` (Python mangles double-underscore names inside class bodies) and errno values keep
the `XEN_` prefix that xen/errno.h gives them. Hypercalls return the negated errno (-XEN_EINVAL).
"""

import ctypes

# x86 page size (Xen's PAGE_SIZE; XENVER_pagesize reports it; no public header names it).
PAGE_SIZE = 4096

# --- Hypercall numbers (xen.h, __HYPERVISOR_*): the complete table of the interface version. ---
HYPERVISOR_set_trap_table = 0
HYPERVISOR_mmu_update = 1
HYPERVISOR_set_gdt = 2
HYPERVISOR_stack_switch = 3
HYPERVISOR_set_callbacks = 4
HYPERVISOR_fpu_taskswitch = 5
HYPERVISOR_sched_op_compat = 6
HYPERVISOR_platform_op = 7
HYPERVISOR_set_debugreg = 8
HYPERVISOR_get_debugreg = 9
HYPERVISOR_update_descriptor = 10
HYPERVISOR_memory_op = 12
HYPERVISOR_multicall = 13
HYPERVISOR_update_va_mapping = 14
HYPERVISOR_set_timer_op = 15
HYPERVISOR_event_channel_op_compat = 16
HYPERVISOR_xen_version = 17
HYPERVISOR_console_io = 18
HYPERVISOR_physdev_op_compat = 19
HYPERVISOR_grant_table_op = 20
HYPERVISOR_vm_assist = 21
HYPERVISOR_update_va_mapping_otherdomain = 22
HYPERVISOR_iret = 23
HYPERVISOR_vcpu_op = 24
HYPERVISOR_set_segment_base = 25
HYPERVISOR_mmuext_op = 26
HYPERVISOR_xsm_op = 27
HYPERVISOR_nmi_op = 28
HYPERVISOR_sched_op = 29
HYPERVISOR_callback_op = 30
HYPERVISOR_xenoprof_op = 31
HYPERVISOR_event_channel_op = 32
HYPERVISOR_physdev_op = 33
HYPERVISOR_hvm_op = 34
HYPERVISOR_sysctl = 35
HYPERVISOR_domctl = 36
HYPERVISOR_kexec_op = 37
HYPERVISOR_tmem_op = 38
HYPERVISOR_argo_op = 39
HYPERVISOR_xenpmu_op = 40
HYPERVISOR_dm_op = 41
HYPERVISOR_hypfs_op = 42

# Hypercall number -> name without the prefix ("sched_op"), for logs and error messages.
# (Hypercall names are lower case, which keeps HYPERVISOR_VIRT_START below out.)
HYPERCALL_NAMES: dict[int, str] = {
    value: name.removeprefix("HYPERVISOR_")
    for name, value in list(globals().items())
    if name.startswith("HYPERVISOR_") and name.removeprefix("HYPERVISOR_").islower()
}

# --- Error numbers (xen/errno.h) that the hypervisor returns, negated. ---
XEN_EPERM = 1
XEN_ENOENT = 2
XEN_ESRCH = 3
XEN_EAGAIN = 11
XEN_ENOMEM = 12
XEN_EACCES = 13
XEN_EFAULT = 14
XEN_EBUSY = 16
XEN_EEXIST = 17
XEN_EINVAL = 22
XEN_ENOSPC = 28
XEN_ENOSYS = 38
XEN_ETIME = 62
XEN_EOPNOTSUPP = 95

# --- sched_op (sched.h) ---
SCHEDOP_yield = 0
SCHEDOP_block = 1
SCHEDOP_shutdown = 2
SCHEDOP_poll = 3
SHUTDOWN_poweroff = 0
SHUTDOWN_reboot = 1
SHUTDOWN_suspend = 2
SHUTDOWN_crash = 3
SHUTDOWN_watchdog = 4
SHUTDOWN_soft_reset = 5
SHUTDOWN_MAX = 5

# --- event_channel_op (event_channel.h) ---
EVTCHNOP_bind_interdomain = 0
EVTCHNOP_bind_virq = 1
EVTCHNOP_bind_pirq = 2
EVTCHNOP_close = 3
EVTCHNOP_send = 4
EVTCHNOP_status = 5
EVTCHNOP_alloc_unbound = 6
EVTCHNOP_bind_ipi = 7
EVTCHNOP_bind_vcpu = 8
EVTCHNOP_unmask = 9
EVTCHNSTAT_closed = 0
EVTCHNSTAT_unbound = 1
EVTCHNSTAT_interdomain = 2
EVTCHNSTAT_pirq = 3
EVTCHNSTAT_virq = 4
EVTCHNSTAT_ipi = 5
# Ports of the 2-level event channel ABI with 64-bit longs: 64 selector bits x 64 pending bits.
# (Headers before interface 0x00040400 called this NR_EVENT_CHANNELS.)
EVTCHN_2L_NR_CHANNELS = 4096
DOMID_SELF = 0x7FF0

# --- Virtual interrupts (xen.h) ---
VIRQ_TIMER = 0
VIRQ_DEBUG = 1
VIRQ_CONSOLE = 2
VIRQ_XENOPROF = 7
VIRQ_XENPMU = 13
PER_VCPU_VIRQS = (VIRQ_TIMER, VIRQ_DEBUG, VIRQ_XENOPROF, VIRQ_XENPMU)   # "V." in xen.h; the rest are global
NR_VIRQS = 24

# --- vcpu_op (vcpu.h) ---
VCPUOP_initialise = 0
VCPUOP_up = 1
VCPUOP_down = 2
VCPUOP_is_up = 3
VCPUOP_get_runstate_info = 4
VCPUOP_register_runstate_memory_area = 5
VCPUOP_set_periodic_timer = 6
VCPUOP_stop_periodic_timer = 7
VCPUOP_set_singleshot_timer = 8
VCPUOP_stop_singleshot_timer = 9
VCPU_SSHOTTMR_future = 1
VCPUOP_register_vcpu_info = 10
RUNSTATE_running = 0
RUNSTATE_runnable = 1
RUNSTATE_blocked = 2
RUNSTATE_offline = 3

# --- memory_op (memory.h) ---
XENMEM_increase_reservation = 0
XENMEM_decrease_reservation = 1
XENMEM_maximum_ram_page = 2
XENMEM_current_reservation = 3
XENMEM_maximum_reservation = 4
XENMEM_memory_map = 9
XENMEM_machphys_mapping = 12
MACH2PHYS_VIRT_START = 0xFFFF800000000000
MACH2PHYS_VIRT_END = 0xFFFF804000000000

# --- console_io (xen.h) ---
CONSOLEIO_write = 0
CONSOLEIO_read = 1

# --- xen_version (version.h) ---
XENVER_version = 0
XENVER_extraversion = 1
XENVER_capabilities = 3
XENVER_changeset = 4
XENVER_platform_parameters = 5
XENVER_get_features = 6
XENVER_pagesize = 7
XEN_EXTRAVERSION_LEN = 16
XEN_CAPABILITIES_INFO_LEN = 1024
XEN_CHANGESET_INFO_LEN = 64
# Start of the hypervisor's hole in a 64-bit PV guest's address space (XENVER_platform_parameters).
HYPERVISOR_VIRT_START = 0xFFFF800000000000
HYPERVISOR_VIRT_END = 0xFFFF880000000000
# The machine-to-phys table, readable by 64-bit PV guests (arch-x86/xen-x86_64.h).

# --- Memory management: mmu_update, update_va_mapping, mmuext_op (xen.h) ---
MMU_NORMAL_PT_UPDATE = 0
MMU_MACHPHYS_UPDATE = 1
MMU_PT_UPDATE_PRESERVE_AD = 2
MMU_PT_UPDATE_NO_TRANSLATE = 3
MMUEXT_PIN_L1_TABLE = 0
MMUEXT_PIN_L2_TABLE = 1
MMUEXT_PIN_L3_TABLE = 2
MMUEXT_PIN_L4_TABLE = 3
MMUEXT_UNPIN_TABLE = 4
MMUEXT_NEW_BASEPTR = 5
MMUEXT_TLB_FLUSH_LOCAL = 6
MMUEXT_INVLPG_LOCAL = 7
MMUEXT_TLB_FLUSH_MULTI = 8
MMUEXT_INVLPG_MULTI = 9
MMUEXT_TLB_FLUSH_ALL = 10
MMUEXT_INVLPG_ALL = 11
MMUEXT_FLUSH_CACHE = 12
MMUEXT_SET_LDT = 13
MMUEXT_NEW_USER_BASEPTR = 15
MMUEXT_CLEAR_PAGE = 16
MMUEXT_COPY_PAGE = 17
MMUEXT_FLUSH_CACHE_GLOBAL = 18
MMUEXT_MARK_SUPER = 19
MMUEXT_UNMARK_SUPER = 20
UVMF_NONE = 0
UVMF_TLB_FLUSH = 1
UVMF_INVLPG = 2
UVMF_FLUSHTYPE_MASK = 3
UVMF_MULTI = 0
UVMF_LOCAL = 0
UVMF_ALL = 4

# --- set_callbacks / callback_op (callback.h) ---
CALLBACKTYPE_event = 0
CALLBACKTYPE_failsafe = 1
CALLBACKTYPE_syscall = 2
CALLBACKTYPE_nmi = 4
CALLBACKTYPE_sysenter = 5
CALLBACKTYPE_syscall32 = 7
CALLBACKF_mask_events = 1
CALLBACKOP_register = 0
CALLBACKOP_unregister = 1

# --- vm_assist (xen.h) ---
VMASST_CMD_enable = 0
VMASST_CMD_disable = 1
VMASST_TYPE_4gb_segments = 0
VMASST_TYPE_4gb_segments_notify = 1
VMASST_TYPE_writable_pagetables = 2
VMASST_TYPE_pae_extended_cr3 = 3
VMASST_TYPE_architectural_iopl = 4
VMASST_TYPE_runstate_update_flag = 5
VMASST_TYPE_m2p_strict = 32

# --- XENVER_get_features submap 0 (features.h) ---
XENFEAT_pae_pgdir_above_4gb = 4
XENFEAT_mmu_pt_update_preserve_ad = 5
XENFEAT_highmem_assist = 6
XENFEAT_gnttab_map_avail_bits = 7
XENFEAT_memory_op_vnode_supported = 13
XENFEAT_direct_mapped = 17
XENFEAT_NR_SUBMAPS = 1

# --- x86-64 PV segments and HYPERVISOR_iret flags (arch-x86/xen-x86_64.h) ---
SEGBASE_FS = 0
SEGBASE_GS_USER = 1
SEGBASE_GS_KERNEL = 2
SEGBASE_GS_USER_SEL = 3
FLAT_KERNEL_CS = 0xE033
FLAT_KERNEL_SS = 0xE02B
FLAT_KERNEL_DS = 0x0000
# The guest's GDT may use entries below the ones Xen reserves (arch-x86/xen.h).
FIRST_RESERVED_GDT_PAGE = 14
FIRST_RESERVED_GDT_BYTE = FIRST_RESERVED_GDT_PAGE * 4096
FIRST_RESERVED_GDT_ENTRY = FIRST_RESERVED_GDT_BYTE // 8
# The cs Xen pushes in an event-upcall bounce frame: FLAT_KERNEL_CS with the privilege bits cleared.
BOUNCE_FRAME_CS = FLAT_KERNEL_CS & ~3
VGCF_in_syscall = 1 << 8
VGCF_i387_valid = 1 << 0             # vcpu_guest_context.flags (arch-x86/xen.h)
VGCF_in_kernel = 1 << 2

# --- ELF notes (elfnote.h): the note owner is "Xen" ---
XEN_ELFNOTE_ENTRY = 1
XEN_ELFNOTE_HYPERCALL_PAGE = 2
XEN_ELFNOTE_VIRT_BASE = 3
XEN_ELFNOTE_PADDR_OFFSET = 4
XEN_ELFNOTE_XEN_VERSION = 5
XEN_ELFNOTE_GUEST_OS = 6
XEN_ELFNOTE_LOADER = 8
XEN_ELFNOTE_FEATURES = 10

# --- physdev_op (physdev.h) ---
PHYSDEVOP_irq_status_query = 5
PHYSDEVOP_set_iopl = 6
PHYSDEVOP_set_iobitmap = 7
PHYSDEVOP_apic_read = 8
PHYSDEVOP_apic_write = 9
PHYSDEVOP_alloc_irq_vector = 10
PHYSDEVOP_free_irq_vector = 11
PHYSDEVOP_eoi = 12
PHYSDEVOP_map_pirq = 13
PHYSDEVOP_unmap_pirq = 14
PHYSDEVOP_manage_pci_add = 15
PHYSDEVOP_manage_pci_remove = 16
PHYSDEVOP_pirq_eoi_gmfn_v1 = 17
PHYSDEVOP_restore_msi = 19
PHYSDEVOP_manage_pci_add_ext = 20
PHYSDEVOP_setup_gsi = 21
PHYSDEVOP_get_free_pirq = 23
PHYSDEVOP_pci_mmcfg_reserved = 24
PHYSDEVOP_pci_device_add = 25
PHYSDEVOP_pci_device_remove = 26
PHYSDEVOP_restore_msi_ext = 27
PHYSDEVOP_pirq_eoi_gmfn_v2 = 28
PHYSDEVOP_dbgp_op = 29
PHYSDEVOP_prepare_msix = 30
PHYSDEVOP_release_msix = 31
XENIRQSTAT_needs_eoi = 1
MAP_PIRQ_TYPE_MSI = 0
MAP_PIRQ_TYPE_GSI = 1

# --- Sizes ---
XEN_LEGACY_MAX_VCPUS = 32
MAX_GUEST_CMDLINE = 1024
XENCONS_IN_SIZE = 1024  # sizeof(xencons_interface.in)
XENCONS_OUT_SIZE = 2048  # sizeof(xencons_interface.out)

_u8, _i8, _u16, _u32, _u64 = ctypes.c_uint8, ctypes.c_int8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class _Struct(ctypes.LittleEndianStructure):
    """Base of every C struct here: x86-64 natural alignment, little-endian."""


class _Union(ctypes.LittleEndianUnion):
    """Base of every C union here."""


# --- Shared pages ---


class VcpuTimeInfo(_Struct):
    """struct vcpu_time_info: per-vCPU system time, guarded by an odd/even `version` (32 bytes)."""

    _fields_ = [
        ("version", _u32),
        ("pad0", _u32),
        ("tsc_timestamp", _u64),
        ("system_time", _u64),
        ("tsc_to_system_mul", _u32),
        ("tsc_shift", _i8),
        ("flags", _u8),
        ("pad1", _u8 * 2),
    ]


class ArchVcpuInfo(_Struct):
    """struct arch_vcpu_info (x86-64)."""

    _fields_ = [("cr2", _u64), ("pad", _u64)]


class VcpuInfo(_Struct):
    """struct vcpu_info: upcall pending/mask bytes, the pending selector word, time (64 bytes)."""

    _fields_ = [
        ("evtchn_upcall_pending", _u8),
        ("evtchn_upcall_mask", _u8),
        ("evtchn_pending_sel", _u64),
        ("arch", ArchVcpuInfo),
        ("time", VcpuTimeInfo),
    ]


class ArchSharedInfo(_Struct):
    """struct arch_shared_info (x86-64)."""

    _fields_ = [
        ("max_pfn", _u64),
        ("pfn_to_mfn_frame_list_list", _u64),
        ("nmi_reason", _u64),
        ("p2m_cr3", _u64),
        ("p2m_vaddr", _u64),
        ("p2m_generation", _u64),
    ]


class SharedInfo(_Struct):
    """struct shared_info: vcpu_info[32], the 2-level event pending/mask bitmaps, wallclock."""

    _fields_ = [
        ("vcpu_info", VcpuInfo * XEN_LEGACY_MAX_VCPUS),
        ("evtchn_pending", _u64 * 64),
        ("evtchn_mask", _u64 * 64),
        ("wc_version", _u32),
        ("wc_sec", _u32),
        ("wc_nsec", _u32),
        ("wc_sec_hi", _u32),
        ("arch", ArchSharedInfo),
    ]


class StartInfoConsoleDomU(_Struct):
    """start_info.console.domU: the console ring's frame and event channel."""

    _fields_ = [("mfn", _u64), ("evtchn", _u32)]


class StartInfoConsole(_Union):
    """start_info.console (only the domU member: we build unprivileged domains)."""

    _fields_ = [("domU", StartInfoConsoleDomU)]


class StartInfo(_Struct):
    """struct start_info: what a PV kernel finds at %rsi on entry."""

    _fields_ = [
        ("magic", ctypes.c_char * 32),
        ("nr_pages", _u64),
        ("shared_info", _u64),
        ("flags", _u32),
        ("store_mfn", _u64),
        ("store_evtchn", _u32),
        ("console", StartInfoConsole),
        ("pt_base", _u64),
        ("nr_pt_frames", _u64),
        ("mfn_list", _u64),
        ("mod_start", _u64),
        ("mod_len", _u64),
        ("cmd_line", _i8 * MAX_GUEST_CMDLINE),
        ("first_p2m_pfn", _u64),
        ("nr_p2m_frames", _u64),
    ]


class XenconsInterface(_Struct):
    """struct xencons_interface (io/console.h): the PV console ring page."""

    _fields_ = [
        ("in", ctypes.c_char * XENCONS_IN_SIZE),
        ("out", ctypes.c_char * XENCONS_OUT_SIZE),
        ("in_cons", _u32),
        ("in_prod", _u32),
        ("out_cons", _u32),
        ("out_prod", _u32),
    ]


class IretContext(_Struct):
    """struct iret_context: the frame HYPERVISOR_iret pops, lowest address (rax) first."""

    _fields_ = [
        ("rax", _u64),
        ("r11", _u64),
        ("rcx", _u64),
        ("flags", _u64),
        ("rip", _u64),
        ("cs", _u64),
        ("rflags", _u64),
        ("rsp", _u64),
        ("ss", _u64),
    ]


# --- Hypercall arguments ---


class SchedShutdown(_Struct):
    """struct sched_shutdown (SCHEDOP_shutdown)."""

    _fields_ = [("reason", ctypes.c_uint)]


class GuestHandle(_Struct):
    """XEN_GUEST_HANDLE(type): `struct { type *p; }`, p being a guest virtual address."""

    _fields_ = [("p", _u64)]


class SchedPoll(_Struct):
    """struct sched_poll (SCHEDOP_poll): ports.p -> evtchn_port_t[nr_ports]."""

    _fields_ = [("ports", GuestHandle), ("nr_ports", ctypes.c_uint), ("timeout", _u64)]


class EvtchnAllocUnbound(_Struct):
    """struct evtchn_alloc_unbound (EVTCHNOP_alloc_unbound)."""

    _fields_ = [("dom", _u16), ("remote_dom", _u16), ("port", _u32)]


class EvtchnBindInterdomain(_Struct):
    """struct evtchn_bind_interdomain (EVTCHNOP_bind_interdomain)."""

    _fields_ = [("remote_dom", _u16), ("remote_port", _u32), ("local_port", _u32)]


class EvtchnBindVirq(_Struct):
    """struct evtchn_bind_virq (EVTCHNOP_bind_virq)."""

    _fields_ = [("virq", _u32), ("vcpu", _u32), ("port", _u32)]


class EvtchnBindIpi(_Struct):
    """struct evtchn_bind_ipi (EVTCHNOP_bind_ipi): vcpu in, port out."""

    _fields_ = [("vcpu", _u32), ("port", _u32)]


class EvtchnBindVcpu(_Struct):
    """struct evtchn_bind_vcpu (EVTCHNOP_bind_vcpu): the vCPU a port notifies."""

    _fields_ = [("port", _u32), ("vcpu", _u32)]


class EvtchnClose(_Struct):
    """struct evtchn_close (EVTCHNOP_close)."""

    _fields_ = [("port", _u32)]


class EvtchnSend(_Struct):
    """struct evtchn_send (EVTCHNOP_send)."""

    _fields_ = [("port", _u32)]


class EvtchnUnmask(_Struct):
    """struct evtchn_unmask (EVTCHNOP_unmask)."""

    _fields_ = [("port", _u32)]


class EvtchnStatusUnbound(_Struct):
    """evtchn_status.u.unbound."""

    _fields_ = [("dom", _u16)]


class EvtchnStatusInterdomain(_Struct):
    """evtchn_status.u.interdomain."""

    _fields_ = [("dom", _u16), ("port", _u32)]


class EvtchnStatusU(_Union):
    """evtchn_status.u, selected by `status`."""

    _fields_ = [
        ("unbound", EvtchnStatusUnbound),
        ("interdomain", EvtchnStatusInterdomain),
        ("pirq", _u32),
        ("virq", _u32),
    ]


class EvtchnStatus(_Struct):
    """struct evtchn_status (EVTCHNOP_status): dom/port in, the rest out."""

    _fields_ = [
        ("dom", _u16),
        ("port", _u32),
        ("status", _u32),
        ("vcpu", _u32),
        ("u", EvtchnStatusU),
    ]


class VcpuSetPeriodicTimer(_Struct):
    """struct vcpu_set_periodic_timer (VCPUOP_set_periodic_timer)."""

    _fields_ = [("period_ns", _u64)]


class MulticallEntry(_Struct):
    """struct multicall_entry (HYPERVISOR_multicall): one hypercall and its result."""

    _fields_ = [("op", _u64), ("result", _u64), ("args", _u64 * 6)]


class XenMachphysMapping(_Struct):
    """struct xen_machphys_mapping (XENMEM_machphys_mapping)."""

    _fields_ = [("v_start", _u64), ("v_end", _u64), ("max_mfn", _u64)]


class XenMemoryMap(_Struct):
    """struct xen_memory_map (XENMEM_memory_map): nr_entries, then a handle to e820 entries."""

    _fields_ = [("nr_entries", _u32), ("buffer", GuestHandle)]


class VcpuRunstateInfo(_Struct):
    """struct vcpu_runstate_info (VCPUOP_get_runstate_info, the registered runstate area)."""

    _fields_ = [("state", ctypes.c_int), ("state_entry_time", _u64), ("time", _u64 * 4)]


class RunstateAreaAddress(_Union):
    """vcpu_register_runstate_memory_area.addr: the area's guest virtual address (member p)."""

    _fields_ = [("p", _u64)]


class VcpuRegisterRunstateMemoryArea(_Struct):
    """struct vcpu_register_runstate_memory_area."""

    _fields_ = [("addr", RunstateAreaAddress)]


class VcpuRegisterVcpuInfo(_Struct):
    """struct vcpu_register_vcpu_info (VCPUOP_register_vcpu_info)."""

    _fields_ = [("mfn", _u64), ("offset", _u32), ("rsvd", _u32)]


class VcpuSetSingleshotTimer(_Struct):
    """struct vcpu_set_singleshot_timer (VCPUOP_set_singleshot_timer)."""

    _fields_ = [("timeout_abs_ns", _u64), ("flags", _u32)]


class XenFeatureInfo(_Struct):
    """struct xen_feature_info (XENVER_get_features)."""

    _fields_ = [("submap_idx", ctypes.c_uint), ("submap", _u32)]


class XenPlatformParameters(_Struct):
    """struct xen_platform_parameters (XENVER_platform_parameters)."""

    _fields_ = [("virt_start", _u64)]


class TrapInfo(_Struct):
    """struct trap_info (HYPERVISOR_set_trap_table): one virtual IDT entry. flags bits 0-1 are the DPL,
    bit 2 (TI_GET_IF) masks events on entry; a table ends at the first entry whose address is 0."""

    _fields_ = [("vector", _u8), ("flags", _u8), ("cs", _u16), ("address", _u64)]


class CpuUserRegs(_Struct):
    """struct cpu_user_regs (arch-x86/xen-x86_64.h): a vCPU's general registers, as in vcpu_guest_context."""

    _fields_ = [(name, _u64) for name in ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
                                          "rax", "rcx", "rdx", "rsi", "rdi")] + [
        ("error_code", _u32), ("entry_vector", _u32), ("rip", _u64), ("cs", _u16), ("_pad0", _u16 * 1),
        ("saved_upcall_mask", _u8), ("_pad1", _u8 * 3), ("rflags", _u64), ("rsp", _u64),
        ("ss", _u16), ("_pad2", _u16 * 3), ("es", _u16), ("_pad3", _u16 * 3), ("ds", _u16), ("_pad4", _u16 * 3),
        ("fs", _u16), ("_pad5", _u16 * 3), ("gs", _u16), ("_pad6", _u16 * 3)]


class VcpuGuestContext(_Struct):
    """struct vcpu_guest_context (arch-x86/xen.h, x86_64): a vCPU's initial state for VCPUOP_initialise."""

    _fields_ = [
        ("fpu_ctxt", _u8 * 512), ("flags", _u64), ("user_regs", CpuUserRegs), ("trap_ctxt", TrapInfo * 256),
        ("ldt_base", _u64), ("ldt_ents", _u64), ("gdt_frames", _u64 * 16), ("gdt_ents", _u64),
        ("kernel_ss", _u64), ("kernel_sp", _u64), ("ctrlreg", _u64 * 8), ("debugreg", _u64 * 8),
        ("event_callback_eip", _u64), ("failsafe_callback_eip", _u64), ("syscall_callback_eip", _u64),
        ("vm_assist", _u64), ("fs_base", _u64), ("gs_base_kernel", _u64), ("gs_base_user", _u64)]


class CallbackUnregister(_Struct):
    """struct callback_unregister (CALLBACKOP_unregister)."""

    _fields_ = [("type", _u16), ("_unused", _u16)]


class CallbackRegister(_Struct):
    """struct callback_register (CALLBACKOP_register)."""

    _fields_ = [("type", _u16), ("flags", _u16), ("address", _u64)]


# --- Xenstore (io/xs_wire.h) ---
XS_CONTROL = 0
XS_DIRECTORY = 1
XS_READ = 2
XS_GET_PERMS = 3
XS_WATCH = 4
XS_UNWATCH = 5
XS_TRANSACTION_START = 6
XS_TRANSACTION_END = 7
XS_INTRODUCE = 8
XS_RELEASE = 9
XS_GET_DOMAIN_PATH = 10
XS_WRITE = 11
XS_MKDIR = 12
XS_RM = 13
XS_SET_PERMS = 14
XS_WATCH_EVENT = 15
XS_ERROR = 16
XS_IS_DOMAIN_INTRODUCED = 17
XS_RESUME = 18
XS_SET_TARGET = 19
XS_RESET_WATCHES = 21
XS_DIRECTORY_PART = 22
XS_TYPE_COUNT = 23
XENSTORE_RING_SIZE = 1024
XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048
XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2
XENSTORE_CONNECTED = 0
XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1
XENSTORE_ERROR_RINGIDX = 2
XENSTORE_ERROR_PROTO = 3


class XsdSockmsg(_Struct):
    """struct xsd_sockmsg (io/xs_wire.h): the header of every xenstore message."""

    _fields_ = [("type", _u32), ("req_id", _u32), ("tx_id", _u32), ("len", _u32)]


class XenstoreDomainInterface(_Struct):
    """struct xenstore_domain_interface (io/xs_wire.h): the domain's xenstore ring page."""

    _fields_ = [
        ("req", ctypes.c_char * XENSTORE_RING_SIZE),
        ("rsp", ctypes.c_char * XENSTORE_RING_SIZE),
        ("req_cons", _u32),
        ("req_prod", _u32),
        ("rsp_cons", _u32),
        ("rsp_prod", _u32),
        ("server_features", _u32),
        ("connection", _u32),
        ("error", _u32),
    ]


# --- Grant tables (grant_table.h) ---
GNTTABOP_map_grant_ref = 0
GNTTABOP_unmap_grant_ref = 1
GNTTABOP_setup_table = 2
GNTTABOP_copy = 5
GNTTABOP_query_size = 6
GNTTABOP_set_version = 8
GNTTABOP_get_status_frames = 9
GNTTABOP_get_version = 10
GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10
GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transitive = 3
GTF_type_mask = 3
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4
GNTMAP_readonly = 1 << 2
GNTTAB_NR_RESERVED_ENTRIES = 8


class GrantEntryV1(_Struct):
    """struct grant_entry_v1: one entry of a version-1 grant table frame."""

    _fields_ = [("flags", _u16), ("domid", _u16), ("frame", _u32)]


class GnttabSetupTable(_Struct):
    """struct gnttab_setup_table (GNTTABOP_setup_table): frame_list.p -> xen_pfn_t[nr_frames]."""

    _fields_ = [("dom", _u16), ("nr_frames", _u32), ("status", ctypes.c_int16), ("frame_list", GuestHandle)]


class GnttabQuerySize(_Struct):
    """struct gnttab_query_size (GNTTABOP_query_size)."""

    _fields_ = [("dom", _u16), ("nr_frames", _u32), ("max_nr_frames", _u32), ("status", ctypes.c_int16)]


class GnttabSetVersion(_Struct):
    """struct gnttab_set_version (GNTTABOP_set_version)."""

    _fields_ = [("version", _u32)]


class GnttabGetVersion(_Struct):
    """struct gnttab_get_version (GNTTABOP_get_version)."""

    _fields_ = [("dom", _u16), ("pad", _u16), ("version", _u32)]

class MmuUpdate(_Struct):
    """struct mmu_update (mmu_update): ptr is a machine address whose low 2 bits are the command."""

    _fields_ = [("ptr", _u64), ("val", _u64)]


class MmuextOpArg1(_Union):
    _fields_ = [("mfn", _u64), ("linear_addr", _u64)]


class MmuextOpArg2(_Union):
    _fields_ = [("nr_ents", ctypes.c_uint), ("src_mfn", _u64)]   # vcpumask (a guest handle) aliases src_mfn


class MmuextOp(_Struct):
    """struct mmuext_op (mmuext_op)."""

    _fields_ = [("cmd", ctypes.c_uint), ("arg1", MmuextOpArg1), ("arg2", MmuextOpArg2)]


# --- physdev_op arguments (physdev.h) ---
class PhysdevEoi(_Struct):
    """struct physdev_eoi (PHYSDEVOP_eoi)."""

    _fields_ = [("irq", _u32)]


class PhysdevPirqEoiGmfn(_Struct):
    """struct physdev_pirq_eoi_gmfn (PHYSDEVOP_pirq_eoi_gmfn_v1/v2)."""

    _fields_ = [("gmfn", _u64)]


class PhysdevIrqStatusQuery(_Struct):
    """struct physdev_irq_status_query (PHYSDEVOP_irq_status_query)."""

    _fields_ = [("irq", _u32), ("flags", _u32)]


class PhysdevSetIopl(_Struct):
    """struct physdev_set_iopl (PHYSDEVOP_set_iopl)."""

    _fields_ = [("iopl", _u32)]


class PhysdevSetIobitmap(_Struct):
    """struct physdev_set_iobitmap (PHYSDEVOP_set_iobitmap): bitmap.p -> uint8_t[8192]."""

    _fields_ = [("bitmap", GuestHandle), ("nr_ports", _u32)]


class PhysdevGetFreePirq(_Struct):
    """struct physdev_get_free_pirq (PHYSDEVOP_get_free_pirq)."""

    _fields_ = [("type", ctypes.c_int), ("pirq", _u32)]


class PhysdevMapPirq(_Struct):
    """struct physdev_map_pirq (PHYSDEVOP_map_pirq)."""

    _fields_ = [("domid", _u16), ("type", ctypes.c_int), ("index", ctypes.c_int), ("pirq", ctypes.c_int),
                ("bus", ctypes.c_int), ("devfn", ctypes.c_int), ("entry_nr", ctypes.c_int), ("table_base", _u64)]


class PhysdevUnmapPirq(_Struct):
    """struct physdev_unmap_pirq (PHYSDEVOP_unmap_pirq)."""

    _fields_ = [("domid", _u16), ("pirq", ctypes.c_int)]


# --- Xenbus states (io/xenbus.h) ---
XenbusStateUnknown = 0
XenbusStateInitialising = 1
XenbusStateInitWait = 2
XenbusStateInitialised = 3
XenbusStateConnected = 4
XenbusStateClosing = 5
XenbusStateClosed = 6
XenbusStateReconfiguring = 7
XenbusStateReconfigured = 8

# --- The PV keyboard/pointer device (io/kbdif.h) ---
XENKBD_TYPE_MOTION = 1
XENKBD_TYPE_RESERVED = 2
XENKBD_TYPE_KEY = 3
XENKBD_TYPE_POS = 4
XENKBD_TYPE_MTOUCH = 5
XENKBD_IN_EVENT_SIZE = 40
XENKBD_OUT_EVENT_SIZE = 40
XENKBD_IN_RING_SIZE = 2048
XENKBD_IN_RING_LEN = XENKBD_IN_RING_SIZE // XENKBD_IN_EVENT_SIZE
XENKBD_IN_RING_OFFS = 1024
XENKBD_OUT_RING_SIZE = 1024
XENKBD_OUT_RING_LEN = XENKBD_OUT_RING_SIZE // XENKBD_OUT_EVENT_SIZE
XENKBD_OUT_RING_OFFS = XENKBD_IN_RING_OFFS + XENKBD_IN_RING_SIZE


class XenkbdPage(_Struct):
    """struct xenkbd_page (io/kbdif.h): the ring indices at the start of the shared page; the in ring
    (backend -> frontend) starts at XENKBD_IN_RING_OFFS, the out ring at XENKBD_OUT_RING_OFFS."""

    _fields_ = [("in_cons", _u32), ("in_prod", _u32), ("out_cons", _u32), ("out_prod", _u32)]


class XenkbdKey(_Struct):
    """struct xenkbd_key (io/kbdif.h): a key press or release, a Linux input keycode."""

    _fields_ = [("type", _u8), ("pressed", _u8), ("keycode", _u32)]
