"""Hypercall dispatch: the real Xen numbers, argument decoding, and Xen's error codes.

Owns what each hypercall does to a domain. Arguments arrive in rdi, rsi, rdx, r10, r8 and the
result goes to rax (the vCPU wrapper has already moved pc past the `syscall`). Invariant: a
hypercall is a pure function of guest state and domain state - nothing from outside the domain
is read here (outside inputs only enter through xen/inject.py) - and no guest argument can make
the hypervisor fail: bad pointers give -EFAULT, bad values -EINVAL, unknown operations -ENOSYS.
"""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Callable, TypeVar

from xen import abi
from xen.evtchn import Binding
from xen.traps import VECTOR_NMI, TrapEntry
from xen.mm import WRITABLE, MmuError
from xen.upcall import RFLAGS_IF, RFLAGS_IOPL, RFLAGS_VM, do_iret
from xen.vcpu import GuestMemoryError, fresh_cpu_state

if TYPE_CHECKING:
    from xen.domain import Domain
    from xen.smp import VcpuContext

CONSOLE_CHUNK = 128                      # Xen copies guest console text in chunks like this
MIN_TIMER_PERIOD_NS = 1_000_000          # Xen refuses periodic timers faster than 1 ms
XEN_VERSION = (4, 17)
_StructT = TypeVar("_StructT", bound=ctypes.Structure)


class HypercallError(Exception):
    """Ends a hypercall with a Xen error code."""

    def __init__(self, errno: int):
        super().__init__(errno)
        self.errno = errno


def _read(domain: "Domain", address: int, struct_type: type[_StructT]) -> _StructT:
    try:
        return struct_type.from_buffer_copy(domain.vcpu.read(address, ctypes.sizeof(struct_type)))
    except GuestMemoryError:
        raise HypercallError(abi.XEN_EFAULT) from None


def _write(domain: "Domain", address: int, data: bytes) -> None:
    """copy_to_guest: -EFAULT unless the guest itself may write every byte."""
    try:
        domain.vcpu.write_for_guest(address, data)
    except GuestMemoryError:
        raise HypercallError(abi.XEN_EFAULT) from None


def _check_port(domain: "Domain", port: int) -> None:
    if not 0 < port < domain.events.max_ports or domain.events.binding(port) is None:
        raise HypercallError(abi.XEN_EINVAL)


# --------------------------------------------------------------------------- handlers

def console_io(domain: "Domain", command: int, count: int, buffer: int, *_: int) -> int:
    if command == abi.CONSOLEIO_write:
        count &= 0xFFFFFFFF                      # Xen's count is an unsigned int
        for offset in range(0, count, CONSOLE_CHUNK):
            try:
                chunk = domain.vcpu.read(buffer + offset, min(CONSOLE_CHUNK, count - offset))
            except GuestMemoryError:
                raise HypercallError(abi.XEN_EFAULT) from None   # as Xen: what came before is printed
            domain.hypervisor_console(chunk)
        return 0
    if command == abi.CONSOLEIO_read:
        return 0        # the hypervisor console has no input for guests
    raise HypercallError(abi.XEN_ENOSYS)


def sched_op(domain: "Domain", command: int, argument: int, *_: int) -> int:
    if command == abi.SCHEDOP_yield:
        domain.yield_vcpu()
        return 0
    if command == abi.SCHEDOP_block:
        domain.block()
        return 0
    if command == abi.SCHEDOP_poll:
        return _sched_poll(domain, _read(domain, argument, abi.SchedPoll))
    if command == abi.SCHEDOP_shutdown:
        domain.shutdown(_read(domain, argument, abi.SchedShutdown).reason)   # Xen passes any code on
        return 0
    raise HypercallError(abi.XEN_ENOSYS)


MAX_POLL_PORTS = 128                     # xen/common/sched/core.c do_poll: "fairly arbitrary limit"


def _sched_poll(domain: "Domain", request: abi.SchedPoll) -> int:
    """SCHEDOP_poll as do_poll: -EINVAL for more than 128 ports, -EFAULT for a port list outside the
    guest's half; 0 at once when an unmasked upcall is pending or a polled port is (reading the list
    stops there: a bad port after it is not seen); a bad port -EINVAL; else block (Domain.start_poll)."""
    ports = request.ports.p
    count = request.nr_ports
    if count > MAX_POLL_PORTS:
        raise HypercallError(abi.XEN_EINVAL)
    if not _range_ok(ports, 4 * count):
        raise HypercallError(abi.XEN_EFAULT)
    events = domain.events
    if events.upcall_pending() and not events.upcall_masked():
        return 0
    port = 0
    for index in range(count):
        port = _read(domain, ports + 4 * index, ctypes.c_uint32).value
        if port >= events.max_ports:
            raise HypercallError(abi.XEN_EINVAL)
        if events.is_pending(port):
            return 0
    domain.start_poll(port if count == 1 else None, request.timeout)
    return 0


def event_channel_op(domain: "Domain", command: int, argument: int, *_: int) -> int:
    events = domain.events
    if command == abi.EVTCHNOP_send:
        port = _read(domain, argument, abi.EvtchnSend).port
        _check_port(domain, port)
        binding = events.binding(port)
        if binding.kind == "virq":
            raise HypercallError(abi.XEN_EINVAL)
        if binding.kind == "interdomain" and not domain.dom0_backend_port(port):
            # raise the other end (an unbound port: dropped, as Xen does)
            if binding.target == domain.domid:
                domain.notify_guest(binding.remote_port)
            else:
                domain.tell_remote("notify", port, int(binding.target), binding.remote_port)
            return 0
        domain.guest_notified(port)
        return 0
    if command == abi.EVTCHNOP_bind_virq:
        request = _read(domain, argument, abi.EvtchnBindVirq)
        if request.virq >= abi.NR_VIRQS:
            raise HypercallError(abi.XEN_EINVAL)
        if request.virq not in abi.PER_VCPU_VIRQS and request.vcpu != 0:    # a global VIRQ goes to vCPU 0
            raise HypercallError(abi.XEN_EINVAL)
        if request.vcpu >= len(domain.vcpus):
            raise HypercallError(abi.XEN_ENOENT)
        if events.port_for_virq(request.virq, request.vcpu) is not None:
            raise HypercallError(abi.XEN_EEXIST)
        if not events.has_free_port():
            raise HypercallError(abi.XEN_ENOSPC)
        port = events.allocate(Binding("virq", request.virq, request.vcpu))
        request.port = port
        _write(domain, argument, bytes(request))
        return 0
    if command == abi.EVTCHNOP_bind_ipi:
        request = _read(domain, argument, abi.EvtchnBindIpi)
        if request.vcpu >= len(domain.vcpus):
            raise HypercallError(abi.XEN_ENOENT)
        if not events.has_free_port():
            raise HypercallError(abi.XEN_ENOSPC)
        request.port = events.allocate(Binding("ipi", None, request.vcpu))
        _write(domain, argument, bytes(request))
        return 0
    if command == abi.EVTCHNOP_bind_vcpu:
        return _bind_vcpu(domain, _read(domain, argument, abi.EvtchnBindVcpu))
    if command == abi.EVTCHNOP_alloc_unbound:
        request = _read(domain, argument, abi.EvtchnAllocUnbound)
        if request.dom not in (abi.DOMID_SELF, domain.domid):
            raise HypercallError(abi.XEN_EPERM)       # a port in another domain: XSM_TARGET refuses a domU
        if not events.has_free_port():
            raise HypercallError(abi.XEN_ENOSPC)
        remote = domain.domid if request.remote_dom == abi.DOMID_SELF else request.remote_dom
        request.port = events.allocate(Binding("unbound", remote))
        if remote != domain.domid:
            domain.tell_remote("offer", request.port, remote, 0)
        _write(domain, argument, bytes(request))
        return 0
    if command == abi.EVTCHNOP_bind_interdomain:
        return _bind_interdomain(domain, argument)
    if command == abi.EVTCHNOP_close:
        port = _read(domain, argument, abi.EvtchnClose).port
        _check_port(domain, port)
        binding = events.binding(port)
        if binding.kind == "backend":
            raise HypercallError(abi.XEN_EINVAL)    # device ports belong to the toolstack
        events.close(port)
        if binding.kind == "interdomain" and binding.target == domain.domid:     # the other end is ours
            events.rebind(binding.remote_port, Binding("unbound", domain.domid))
        elif binding.kind == "interdomain" and not domain.dom0_backend_port(port):
            domain.tell_remote("closed", port, int(binding.target), binding.remote_port)
        elif binding.kind == "unbound" and binding.target != domain.domid:
            domain.tell_remote("withdraw", port, int(binding.target), 0)
        return 0
    if command == abi.EVTCHNOP_unmask:
        port = _read(domain, argument, abi.EvtchnUnmask).port
        if not 0 <= port < events.max_ports:       # port 0 is reserved but valid (evtchn_unmask)
            raise HypercallError(abi.XEN_EINVAL)
        events.unmask(port)
        return 0
    if command == abi.EVTCHNOP_status:
        return _evtchn_status(domain, argument)
    raise HypercallError(abi.XEN_ENOSYS)


def _bind_interdomain(domain: "Domain", argument: int) -> int:
    """EVTCHNOP_bind_interdomain as xen/common/event_channel.c: the remote port must be unbound and
    offered to us (-EINVAL otherwise); the new local port is connected to it and, as Xen does for
    notifications the unbound port may have missed, marked pending. Another domain's offers are known
    only from the host's logged inputs (EventChannels.offers), so the answer is a function of this
    domain's state and replays alone. A domain id nobody uses is -EINVAL here, not Xen's -ESRCH: a
    domain does not know which others exist."""
    events = domain.events
    request = _read(domain, argument, abi.EvtchnBindInterdomain)
    remote = domain.domid if request.remote_dom == abi.DOMID_SELF else request.remote_dom
    if not events.has_free_port():
        raise HypercallError(abi.XEN_ENOSPC)
    if remote == domain.domid:
        peer = events.binding(request.remote_port)
        if peer is None or peer.kind != "unbound" or peer.target != domain.domid:
            raise HypercallError(abi.XEN_EINVAL)
    elif (remote, request.remote_port) not in events.offers:
        raise HypercallError(abi.XEN_EINVAL)
    local = events.allocate(Binding("interdomain", remote, remote_port=request.remote_port))
    if remote == domain.domid:
        events.rebind(request.remote_port, Binding("interdomain", remote, remote_port=local))
    else:
        events.offers.discard((remote, request.remote_port))
        domain.tell_remote("bound", local, remote, request.remote_port)
    domain.notify_guest(local)
    request.local_port = local
    _write(domain, argument, bytes(request))
    return 0


def _bind_vcpu(domain: "Domain", request: abi.EvtchnBindVcpu) -> int:
    """EVTCHNOP_bind_vcpu as event_channel.c evtchn_bind_vcpu: -ENOENT for a vCPU the domain lacks, -EINVAL
    for a port out of range, closed, an IPI, a per-vCPU VIRQ or a device port Xen's toolstack attached."""
    events = domain.events
    if request.vcpu >= len(domain.vcpus):
        raise HypercallError(abi.XEN_ENOENT)
    if not 0 < request.port < events.max_ports:
        raise HypercallError(abi.XEN_EINVAL)
    binding = events.binding(request.port)
    if binding is None or binding.kind in ("ipi", "backend") or \
            binding.kind == "virq" and binding.target in abi.PER_VCPU_VIRQS:
        raise HypercallError(abi.XEN_EINVAL)
    events.bind_vcpu(request.port, request.vcpu)
    return 0


def _evtchn_status(domain: "Domain", argument: int) -> int:
    request = _read(domain, argument, abi.EvtchnStatus)
    if request.dom != abi.DOMID_SELF:
        raise HypercallError(abi.XEN_ESRCH)
    if not 0 < request.port < domain.events.max_ports:
        raise HypercallError(abi.XEN_EINVAL)
    binding = domain.events.binding(request.port)
    request.vcpu = 0 if binding is None else binding.vcpu
    if binding is None:
        request.status = abi.EVTCHNSTAT_closed
    elif binding.kind == "ipi":
        request.status = abi.EVTCHNSTAT_ipi
    elif binding.kind == "virq":
        request.status = abi.EVTCHNSTAT_virq
        request.u.virq = int(binding.target)
    elif binding.kind == "interdomain":
        request.status = abi.EVTCHNSTAT_interdomain
        request.u.interdomain.dom = int(binding.target)
        request.u.interdomain.port = binding.remote_port
    elif binding.kind == "backend":
        request.status = abi.EVTCHNSTAT_interdomain
        request.u.interdomain.dom = 0
        request.u.interdomain.port = request.port
    else:
        request.status = abi.EVTCHNSTAT_unbound
        request.u.unbound.dom = int(binding.target)
    _write(domain, argument, bytes(request))
    return 0


def set_callbacks(domain: "Domain", event_address: int, failsafe_address: int, syscall_address: int,
                  *_: int) -> int:
    domain.event_callback = event_address
    domain.failsafe_callback = failsafe_address
    return 0


def _is_canonical(address: int) -> bool:
    """x86-64 canonical: bits 63..47 all equal (Xen's is_canonical_address)."""
    top = address >> 47
    return top == 0 or top == (1 << 17) - 1


def callback_op(domain: "Domain", command: int, argument: int, *_: int) -> int:
    """CALLBACKOP_register/unregister as xen/arch/x86/pv/callback.c: a non-canonical address -EINVAL,
    an unknown type -ENOSYS; event, failsafe and NMI callbacks take effect (the syscall, syscall32 and
    sysenter entries are kept by Xen for guest user mode, which xenrr does not run, and accepted)."""
    if command == abi.CALLBACKOP_register:
        request = _read(domain, argument, abi.CallbackRegister)
        if not _is_canonical(request.address):
            raise HypercallError(abi.XEN_EINVAL)
        if request.type == abi.CALLBACKTYPE_event:
            domain.event_callback = request.address
        elif request.type == abi.CALLBACKTYPE_failsafe:
            domain.failsafe_callback = request.address
        elif request.type == abi.CALLBACKTYPE_nmi:
            domain.traps.set(TrapEntry(VECTOR_NMI, 0, abi.FLAT_KERNEL_CS, request.address))
        elif request.type not in (abi.CALLBACKTYPE_syscall, abi.CALLBACKTYPE_syscall32,
                                  abi.CALLBACKTYPE_sysenter):
            raise HypercallError(abi.XEN_ENOSYS)
        return 0
    if command == abi.CALLBACKOP_unregister:
        kind = _read(domain, argument, abi.CallbackUnregister).type
        if kind == abi.CALLBACKTYPE_nmi:
            domain.traps.clear(VECTOR_NMI)
            return 0
        if kind in (abi.CALLBACKTYPE_event, abi.CALLBACKTYPE_failsafe, abi.CALLBACKTYPE_syscall,
                    abi.CALLBACKTYPE_syscall32, abi.CALLBACKTYPE_sysenter):
            raise HypercallError(abi.XEN_EINVAL)
        raise HypercallError(abi.XEN_ENOSYS)
    raise HypercallError(abi.XEN_ENOSYS)


def set_trap_table(domain: "Domain", table: int, *_: int) -> int:
    """HYPERVISOR_set_trap_table as xen/arch/x86/pv/traps.c do_set_trap_table: NULL clears the virtual
    IDT; otherwise entries are copied in until one with address 0. An unreadable entry ends the call with
    -EFAULT and a non-canonical handler with -EINVAL; the entries before either stay set."""
    if table == 0:
        domain.traps.clear_all()
        return 0
    entry_size = ctypes.sizeof(abi.TrapInfo)
    while True:
        entry = _read(domain, table, abi.TrapInfo)
        if entry.address == 0:
            return 0
        if not _is_canonical(entry.address):
            raise HypercallError(abi.XEN_EINVAL)
        domain.traps.set(TrapEntry(entry.vector, entry.flags, entry.cs, entry.address))
        table += entry_size


# The vm_assist types Xen accepts from a 64-bit PV guest (PV64_VM_ASSIST_MASK, asm/domain.h).
VM_ASSIST_VALID = ((1 << abi.VMASST_TYPE_4gb_segments) | (1 << abi.VMASST_TYPE_4gb_segments_notify)
                   | (1 << abi.VMASST_TYPE_writable_pagetables) | (1 << abi.VMASST_TYPE_pae_extended_cr3)
                   | (1 << abi.VMASST_TYPE_architectural_iopl) | (1 << abi.VMASST_TYPE_runstate_update_flag)
                   | (1 << abi.VMASST_TYPE_m2p_strict))


def vm_assist(domain: "Domain", command: int, kind: int, *_: int) -> int:
    """HYPERVISOR_vm_assist as xen/common/domain.c do_vm_assist: the type is checked first (-EINVAL),
    then the command (-ENOSYS). Enabled types are remembered (XENVER_get_features reports one)."""
    command &= 0xFFFFFFFF
    kind &= 0xFFFFFFFF
    if kind >= 64 or not VM_ASSIST_VALID >> kind & 1:
        raise HypercallError(abi.XEN_EINVAL)
    if command == abi.VMASST_CMD_enable:
        domain.vm_assist |= 1 << kind
        return 0
    if command == abi.VMASST_CMD_disable:
        domain.vm_assist &= ~(1 << kind)
        return 0
    raise HypercallError(abi.XEN_ENOSYS)


def set_segment_base(domain: "Domain", which: int, base: int, *_: int) -> int:
    """HYPERVISOR_set_segment_base as xen/arch/x86/pv/misc-hypercalls.c do_set_segment_base: the FS
    base, the kernel GS base (the active one, the guest runs in kernel mode) and the user GS base (the
    inactive one, kept in Domain.gs_base_user) take canonical addresses, else -EINVAL.
    SEGBASE_GS_USER_SEL loads a user %gs selector: every descriptor a PV guest can name is flat (Xen's
    GDT; xenrr has no guest LDT/GDT entries), so the user base becomes 0 and the call never fails, as
    in Xen. Any other `which` is -EINVAL."""
    which &= 0xFFFFFFFF
    if which == abi.SEGBASE_GS_USER_SEL:
        domain.gs_base_user = 0
        return 0
    if which not in (abi.SEGBASE_FS, abi.SEGBASE_GS_USER, abi.SEGBASE_GS_KERNEL) or not _is_canonical(base):
        raise HypercallError(abi.XEN_EINVAL)
    if which == abi.SEGBASE_FS:
        domain.vcpu.set_reg("fs_base", base)
    elif which == abi.SEGBASE_GS_KERNEL:
        domain.vcpu.set_reg("gs_base", base)
    else:
        domain.gs_base_user = base
    return 0


def set_timer_op(domain: "Domain", deadline: int, *_: int) -> int:
    if deadline == 0:
        domain.time.set_singleshot(None)
    else:
        domain.time.set_singleshot(deadline)
        domain.expire_timers()
    return 0


def vcpu_op(domain: "Domain", command: int, vcpu_id: int, argument: int, *_: int) -> int:
    """vcpu_op as xen/arch/x86/domain.c do_vcpu_op and common/domain.c common_vcpu_op: -ENOENT for a vCPU
    the domain does not have (checked first); the singleshot timer only for the calling vCPU (-EINVAL)."""
    vcpu_id &= 0xFFFFFFFF
    if vcpu_id >= len(domain.vcpus):
        raise HypercallError(abi.XEN_ENOENT)
    target = domain.vcpus[vcpu_id]
    if command == abi.VCPUOP_initialise:
        return _initialise_vcpu(domain, vcpu_id, argument)
    if command == abi.VCPUOP_up:
        if not target.initialised:
            raise HypercallError(abi.XEN_EINVAL)
        domain.vcpu_up(vcpu_id)
        return 0
    if command == abi.VCPUOP_down:
        domain.vcpu_down(vcpu_id)
        return 0
    if command == abi.VCPUOP_is_up:
        return int(target.up)
    if command == abi.VCPUOP_set_periodic_timer:
        period = _read(domain, argument, abi.VcpuSetPeriodicTimer).period_ns
        if period < MIN_TIMER_PERIOD_NS:
            raise HypercallError(abi.XEN_EINVAL)
        domain.time.set_periodic(period, vcpu_id)
        return 0
    if command == abi.VCPUOP_stop_periodic_timer:
        domain.time.set_periodic(None, vcpu_id)
        return 0
    if command in (abi.VCPUOP_set_singleshot_timer, abi.VCPUOP_stop_singleshot_timer) and vcpu_id != domain.current:
        raise HypercallError(abi.XEN_EINVAL)
    if command == abi.VCPUOP_set_singleshot_timer:
        request = _read(domain, argument, abi.VcpuSetSingleshotTimer)
        if request.flags & abi.VCPU_SSHOTTMR_future and request.timeout_abs_ns < domain.time.now():
            raise HypercallError(abi.XEN_ETIME)
        domain.time.set_singleshot(request.timeout_abs_ns)
        domain.expire_timers()
        return 0
    if command == abi.VCPUOP_stop_singleshot_timer:
        domain.time.set_singleshot(None)
        return 0
    if command == abi.VCPUOP_get_runstate_info:
        _write(domain, argument, bytes(target.runstate.info(domain.time.now())))
        return 0
    if command == abi.VCPUOP_register_runstate_memory_area:
        return _register_runstate_area(domain, target,
                                       _read(domain, argument, abi.VcpuRegisterRunstateMemoryArea).addr.p)
    if command == abi.VCPUOP_register_vcpu_info:
        return _register_vcpu_info(domain, vcpu_id, _read(domain, argument, abi.VcpuRegisterVcpuInfo))
    raise HypercallError(abi.XEN_ENOSYS)


MAX_LDT_ENTRIES = 8192                   # arch_set_info_guest's LDT check
MAX_GDT_ENTRIES = 16 * 512               # vcpu_guest_context.gdt_frames[16], 512 descriptors a frame


def _initialise_vcpu(domain: "Domain", vcpu_id: int, argument: int) -> int:
    """VCPUOP_initialise as default_initialise_vcpu and arch_set_info_guest for a 64-bit PV vCPU: the
    context is copied first (-EFAULT), an initialised vCPU refuses (-EEXIST), then -EINVAL for debug
    registers 6/7 above 32 bits, a non-canonical rip, rsp, kernel_sp, segment base, callback or trap
    handler, a misaligned LDT or one of more than 8192 entries, a GDT of more than 16 frames, or user
    mode without a user page table. Registers as Xen loads them: IOPL cleared, IF set. xenrr runs every
    vCPU on one address space and one GDT (docs/architecture.md): a context naming another L4 base or
    GDT than the domain's current ones is -EINVAL."""
    context = _read(domain, argument, abi.VcpuGuestContext)
    if domain.vcpus[vcpu_id].initialised:
        raise HypercallError(abi.XEN_EEXIST)
    regs = context.user_regs
    if context.debugreg[6] >> 32 or context.debugreg[7] >> 32:
        raise HypercallError(abi.XEN_EINVAL)
    addresses = [regs.rip, regs.rsp, context.kernel_sp, context.fs_base, context.gs_base_kernel, context.gs_base_user,
                 context.event_callback_eip, context.syscall_callback_eip, context.failsafe_callback_eip]
    addresses += [context.ldt_base] if context.ldt_ents else []
    addresses += [entry.address for entry in context.trap_ctxt]
    if not all(_is_canonical(address) for address in addresses):
        raise HypercallError(abi.XEN_EINVAL)
    if context.ldt_base % abi.PAGE_SIZE or context.ldt_ents > MAX_LDT_ENTRIES or context.gdt_ents > MAX_GDT_ENTRIES:
        raise HypercallError(abi.XEN_EINVAL)
    if not context.flags & abi.VGCF_in_kernel and not context.ctrlreg[1]:
        raise HypercallError(abi.XEN_EINVAL)
    memory = domain.memory
    gdt = tuple(context.gdt_frames[:len(memory.gdt)]) if context.gdt_ents else ()
    if context.ctrlreg[3] >> 12 != memory.cr3 or \
            (context.gdt_ents and (context.gdt_ents, gdt) != (memory.gdt_entries, memory.gdt)):
        raise HypercallError(abi.XEN_EINVAL)
    names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp") + tuple(f"r{n}" for n in range(8, 16))
    registers = {name: getattr(regs, name) for name in names}
    registers["rflags"] = (regs.rflags & ~(RFLAGS_IOPL | RFLAGS_VM)) | RFLAGS_IF | 0x2
    registers["fs_base"], registers["gs_base"] = context.fs_base, context.gs_base_kernel
    traps = [TrapEntry(entry.vector, entry.flags, entry.cs, entry.address)
             for entry in context.trap_ctxt if entry.address]
    domain.initialise_vcpu(vcpu_id, fresh_cpu_state(registers, regs.rip, domain.vcpu.icount),
                           event_callback=context.event_callback_eip, failsafe_callback=context.failsafe_callback_eip,
                           traps=traps, gs_base_user=context.gs_base_user,
                           kernel_stack=(context.kernel_ss, context.kernel_sp))
    return 0


def _register_runstate_area(domain: "Domain", target: "VcpuContext", address: int) -> int:
    """common/domain.c VCPUOP_register_runstate_memory_area: only guest_handle_okay can fail it
    (-EFAULT); the area is copied at once and on every runstate change, a failed copy ignored;
    address 0 unregisters."""
    size = ctypes.sizeof(abi.VcpuRunstateInfo)
    if not _range_ok(address, size):
        raise HypercallError(abi.XEN_EFAULT)
    target.runstate.area = address
    target.runstate.publish(domain.time.now(), domain.copy_runstate)
    return 0


def _register_vcpu_info(domain: "Domain", vcpu_id: int, request: abi.VcpuRegisterVcpuInfo) -> int:
    """common/domain.c map_vcpu_info: -EINVAL when the vcpu_info would cross the page, is not 8-byte
    aligned, was registered already, or the frame is not a writable page of the domain's (the frame
    keeps that writable type reference for good, as in Xen)."""
    offset = request.offset
    if offset > abi.PAGE_SIZE - ctypes.sizeof(abi.VcpuInfo) or offset % 8:
        raise HypercallError(abi.XEN_EINVAL)
    if domain.events.vcpu_info_override(vcpu_id) is not None:
        raise HypercallError(abi.XEN_EINVAL)
    try:
        domain.memory.get_type(request.mfn, WRITABLE)
    except MmuError:
        raise HypercallError(abi.XEN_EINVAL) from None
    domain.move_vcpu_info(vcpu_id, request.mfn * abi.PAGE_SIZE + offset)
    return 0


def xen_version(domain: "Domain", command: int, argument: int, *_: int) -> int:
    if command == abi.XENVER_version:
        return (XEN_VERSION[0] << 16) | XEN_VERSION[1]
    if command == abi.XENVER_extraversion:
        _write(domain, argument, b".0-xenrr".ljust(abi.XEN_EXTRAVERSION_LEN, b"\0"))
        return 0
    if command == abi.XENVER_capabilities:
        _write(domain, argument, b"xen-3.0-x86_64".ljust(abi.XEN_CAPABILITIES_INFO_LEN, b"\0"))
        return 0
    if command == abi.XENVER_changeset:
        _write(domain, argument, b"xenrr".ljust(abi.XEN_CHANGESET_INFO_LEN, b"\0"))
        return 0
    if command == abi.XENVER_pagesize:
        return abi.PAGE_SIZE
    if command == abi.XENVER_get_features:
        request = _read(domain, argument, abi.XenFeatureInfo)
        if request.submap_idx != 0:          # Xen 4.17 xen/common/kernel.c: only submap 0 exists
            raise HypercallError(abi.XEN_EINVAL)
        request.submap = _features(domain)
        _write(domain, argument, bytes(request))
        return 0
    if command == abi.XENVER_platform_parameters:
        _write(domain, argument, bytes(abi.XenPlatformParameters(virt_start=abi.HYPERVISOR_VIRT_START)))
        return 0
    raise HypercallError(abi.XEN_ENOSYS)


def _features(domain: "Domain") -> int:
    """XENVER_get_features submap 0 as Xen 4.17 gives a PV domU (not translated, direct-mapped)."""
    features = ((1 << abi.XENFEAT_memory_op_vnode_supported) | (1 << abi.XENFEAT_mmu_pt_update_preserve_ad)
                | (1 << abi.XENFEAT_highmem_assist) | (1 << abi.XENFEAT_gnttab_map_avail_bits)
                | (1 << abi.XENFEAT_direct_mapped))
    if domain.vm_assist >> abi.VMASST_TYPE_pae_extended_cr3 & 1:
        features |= 1 << abi.XENFEAT_pae_pgdir_above_4gb
    return features


def _address_ok(address: int) -> bool:
    """Xen's __addr_ok for a 64-bit PV guest: the lower canonical half, or above Xen's reserved area."""
    return address < 1 << 47 or address >= abi.HYPERVISOR_VIRT_END


def _range_ok(address: int, size: int) -> bool:
    """Xen's guest_handle_okay/array_access_ok: both ends of `size` bytes at `address` pass __addr_ok."""
    return _address_ok(address) and _address_ok(address + size)


def grant_table_op(domain: "Domain", command: int, argument: int, count: int, *_: int) -> int:
    """HYPERVISOR_grant_table_op as xen/common/grant_table.c do_grant_table_op, for the operations a
    domU uses on its own table (xen/grant.py): per-operation results go to the op's status field."""
    table = domain.grants
    count &= 0xFFFFFFFF
    if count >= 1 << 31:                                    # Xen: (int)count < 0
        raise HypercallError(abi.XEN_EINVAL)
    if command == abi.GNTTABOP_setup_table:
        if count != 1:
            raise HypercallError(abi.XEN_EINVAL)
        op = _read(domain, argument, abi.GnttabSetupTable)
        frame_list = op.frame_list.p
        if not _address_ok(frame_list):                     # guest_handle_okay
            raise HypercallError(abi.XEN_EFAULT)

        def write_frame(index: int, frame: int) -> bool:
            try:
                _write(domain, frame_list + 8 * index, frame.to_bytes(8, "little"))
            except HypercallError:
                return False
            return True
        table.setup_table(op, write_frame)
        status = abi.GnttabSetupTable.status
        _write(domain, argument + status.offset, bytes(op)[status.offset:status.offset + status.size])
        return 0
    if command == abi.GNTTABOP_query_size:
        if count != 1:
            raise HypercallError(abi.XEN_EINVAL)
        op = _read(domain, argument, abi.GnttabQuerySize)
        table.query_size(op)
        _write(domain, argument, bytes(op))
        return 0
    if command in (abi.GNTTABOP_set_version, abi.GNTTABOP_get_version):
        op = _read(domain, argument, abi.GnttabSetVersion if command == abi.GNTTABOP_set_version
                   else abi.GnttabGetVersion)
        result = table.set_version(op) if command == abi.GNTTABOP_set_version else table.get_version(op)
        if result == -abi.XEN_ESRCH or result == -abi.XEN_EPERM:
            raise HypercallError(-result)                   # get_version writes nothing back then
        _write(domain, argument, bytes(op))
        if result:
            raise HypercallError(-result)
        return 0
    raise HypercallError(abi.XEN_ENOSYS)


# --------------------------------------------------------------------------- memory management

_DOMIDS_SELF = (abi.DOMID_SELF, 0)       # DOMID_SELF, or the domain's own id (a domU is not dom0: ours is 0 here)


def _mm_call(operation: Callable[[], None]) -> None:
    try:
        operation()
    except MmuError as error:
        raise HypercallError(error.errno) from None


def _report_done(domain: "Domain", done_pointer: int, done: int) -> None:
    if done_pointer:
        _write(domain, done_pointer, done.to_bytes(4, "little"))


def mmu_update(domain: "Domain", requests: int, count: int, done_pointer: int, foreign_domid: int,
               *_: int) -> int:
    """Page-table writes and m2p updates, one struct mmu_update each (xen.h); stops at the first
    failure, reporting how many were done in *done_pointer (Xen's do_mmu_update)."""
    count &= 0xFFFFFFFF
    if foreign_domid & 0xFFFF not in _DOMIDS_SELF:
        raise HypercallError(abi.XEN_ESRCH)
    memory = domain.memory
    done = 0
    try:
        for index in range(count):
            request = _read(domain, requests + index * ctypes.sizeof(abi.MmuUpdate), abi.MmuUpdate)
            command = request.ptr & 3
            if command in (abi.MMU_NORMAL_PT_UPDATE, abi.MMU_PT_UPDATE_PRESERVE_AD):
                address = request.ptr & ~7
                _mm_call(lambda: memory.update_entry(address >> 12, (address & 0xFFF) // 8, request.val))
            elif command == abi.MMU_MACHPHYS_UPDATE:
                frame = request.ptr >> 12
                if not memory.owns(frame):
                    raise HypercallError(abi.XEN_EINVAL)
                memory.set_m2p(frame, request.val)
            else:
                raise HypercallError(abi.XEN_ENOSYS)
            done += 1
    finally:
        _report_done(domain, done_pointer, done)
    return 0


def update_va_mapping(domain: "Domain", address: int, value: int, flags: int, *_: int) -> int:
    """Set the L1 entry that maps `address` (xen.h). The vCPU's mappings follow at once, so every
    flush type is satisfied; a vCPU-mask pointer in `flags` is read as Xen reads it."""
    if flags & ~abi.UVMF_FLUSHTYPE_MASK not in (abi.UVMF_LOCAL, abi.UVMF_ALL):
        _read(domain, flags & ~abi.UVMF_FLUSHTYPE_MASK, ctypes.c_uint64)
    _mm_call(lambda: domain.memory.update_va_mapping(address, value))
    return 0


_PIN_LEVELS = {abi.MMUEXT_PIN_L1_TABLE: 1, abi.MMUEXT_PIN_L2_TABLE: 2, abi.MMUEXT_PIN_L3_TABLE: 3,
               abi.MMUEXT_PIN_L4_TABLE: 4}
_FLUSHES = (abi.MMUEXT_TLB_FLUSH_LOCAL, abi.MMUEXT_INVLPG_LOCAL, abi.MMUEXT_TLB_FLUSH_MULTI,
            abi.MMUEXT_INVLPG_MULTI, abi.MMUEXT_TLB_FLUSH_ALL, abi.MMUEXT_INVLPG_ALL)


def _mmuext(domain: "Domain", op: abi.MmuextOp) -> None:
    memory = domain.memory
    command, frame = op.cmd, op.arg1.mfn
    if command in _PIN_LEVELS:
        _mm_call(lambda: memory.pin(frame, _PIN_LEVELS[command]))
    elif command == abi.MMUEXT_UNPIN_TABLE:
        _mm_call(lambda: memory.unpin(frame))
    elif command == abi.MMUEXT_NEW_BASEPTR:
        _mm_call(lambda: memory.new_baseptr(frame))
    elif command == abi.MMUEXT_NEW_USER_BASEPTR:
        _mm_call(lambda: memory.new_user_baseptr(frame))
    elif command in _FLUSHES:
        if command in (abi.MMUEXT_TLB_FLUSH_MULTI, abi.MMUEXT_INVLPG_MULTI):
            _read(domain, op.arg2.src_mfn, ctypes.c_uint64)      # the vCPU mask, read as Xen reads it
    elif command == abi.MMUEXT_SET_LDT:
        if op.arg2.nr_ents != 0:
            raise HypercallError(abi.XEN_EINVAL)    # no LDT support: only "no LDT" is accepted
    elif command == abi.MMUEXT_CLEAR_PAGE:
        _mm_call(lambda: memory.get_type(frame, WRITABLE))
        domain.vcpu.write_frame(frame, bytes(abi.PAGE_SIZE))
        memory.put_type(frame)
    elif command == abi.MMUEXT_COPY_PAGE:
        source = op.arg2.src_mfn
        if not memory.owns(source):
            raise HypercallError(abi.XEN_EINVAL)
        _mm_call(lambda: memory.get_type(frame, WRITABLE))
        domain.vcpu.write_frame(frame, domain.vcpu.read_frame(source))
        memory.put_type(frame)
    elif command in (abi.MMUEXT_FLUSH_CACHE, abi.MMUEXT_FLUSH_CACHE_GLOBAL):
        raise HypercallError(abi.XEN_EACCES)        # a domU without cache-flush permission
    else:
        raise HypercallError(abi.XEN_ENOSYS)


def mmuext_op(domain: "Domain", operations: int, count: int, done_pointer: int, foreign_domid: int,
              *_: int) -> int:
    """Extended MMU operations, one struct mmuext_op each (xen.h): pins, base pointers, flushes;
    stops at the first failure, reporting how many were done in *done_pointer."""
    count &= 0xFFFFFFFF
    if foreign_domid & 0xFFFF not in _DOMIDS_SELF:
        raise HypercallError(abi.XEN_ESRCH)
    done = 0
    try:
        for index in range(count):
            _mmuext(domain, _read(domain, operations + index * ctypes.sizeof(abi.MmuextOp), abi.MmuextOp))
            done += 1
    finally:
        _report_done(domain, done_pointer, done)
    return 0


def set_gdt(domain: "Domain", frame_list: int, entries: int, *_: int) -> int:
    """Install the guest's GDT (Xen's do_set_gdt, arch/x86/pv/descriptor-tables.c): more entries
    than FIRST_RESERVED_GDT_ENTRY -EINVAL, an unreadable frame list -EFAULT, a frame that cannot be a
    descriptor page -EINVAL (xen/mm.py `set_gdt`). Kept and checkpointed; never used for segmentation."""
    entries &= 0xFFFFFFFF
    if entries > abi.FIRST_RESERVED_GDT_ENTRY:
        raise HypercallError(abi.XEN_EINVAL)
    count = -(-entries // (abi.PAGE_SIZE // 8))          # 512 descriptors a frame
    frames = [_read(domain, frame_list + index * 8, ctypes.c_uint64).value for index in range(count)]
    _mm_call(lambda: domain.memory.set_gdt(frames, entries))
    return 0


def update_descriptor(domain: "Domain", machine_address: int, descriptor: int, *_: int) -> int:
    """Write one segment descriptor at a machine address (Xen's do_update_descriptor): misaligned,
    refused by check_descriptor, not the domain's frame or a page-table frame: -EINVAL."""
    _mm_call(lambda: domain.memory.update_descriptor(machine_address // abi.PAGE_SIZE,
                                                     machine_address & (abi.PAGE_SIZE - 1), descriptor))
    return 0


def iret(domain: "Domain", *_: int) -> int:
    return do_iret(domain.vcpu, domain.events)


# memory.h keeps these for Xen itself (__XEN__): a memory_op command's low bits are the sub-op, the rest
# a continuation's start extent.
MEMOP_EXTENT_SHIFT = 6
MEMOP_CMD_MASK = (1 << MEMOP_EXTENT_SHIFT) - 1


def memory_op(domain: "Domain", command: int, argument: int, *_: int) -> int:
    """HYPERVISOR_memory_op, the informational sub-ops a PV kernel asks at boot (xen/common/memory.c
    do_memory_op, arch/x86/mm.c arch_memory_op, arch/x86/x86_64/mm.c subarch_memory_op). The host's
    RAM is xenrr's machine frames (max_page = their count); the domain's reservation is its pages
    (the toolstack's maxmem = memory). A PV domU has no e820 unless the toolstack set one (libxl only
    does with e820_host): XENMEM_memory_map is -ENOSYS and the kernel falls back to nr_pages of RAM.
    Changing the reservation (increase/decrease/populate) is not modelled: -ENOSYS."""
    operation, start_extent = command & MEMOP_CMD_MASK, (command & 0xFFFFFFFF) >> MEMOP_EXTENT_SHIFT
    if operation == abi.XENMEM_maximum_ram_page:
        if start_extent:
            raise HypercallError(abi.XEN_EINVAL)
        return domain.image.frame_count
    if operation in (abi.XENMEM_current_reservation, abi.XENMEM_maximum_reservation):
        if start_extent:
            raise HypercallError(abi.XEN_EINVAL)
        domid = _read(domain, argument, ctypes.c_uint16).value
        if domid == 0:
            raise HypercallError(abi.XEN_EPERM)      # dom0 exists; XSM_TARGET refuses a domU
        if domid not in (abi.DOMID_SELF, domain.domid):
            raise HypercallError(abi.XEN_ESRCH)
        return domain.image.nr_pages
    if operation == abi.XENMEM_memory_map:
        _read(domain, argument, abi.XenMemoryMap)
        raise HypercallError(abi.XEN_ENOSYS)
    if operation == abi.XENMEM_machphys_mapping:
        mapping = abi.XenMachphysMapping(v_start=abi.MACH2PHYS_VIRT_START, v_end=abi.MACH2PHYS_VIRT_END,
                                         max_mfn=domain.image.frame_count - 1)
        _write(domain, argument, bytes(mapping))
        return 0
    raise HypercallError(abi.XEN_ENOSYS)


def multicall(domain: "Domain", entries: int, count: int, *_: int) -> int:
    """HYPERVISOR_multicall as xen/common/multicall.c do_multicall: -EFAULT when the array is outside
    the guest's half; each entry goes through `dispatch` and its result is copied back (a failed copy
    ends the call with -EFAULT); a nested multicall is refused with -EINVAL in its entry (Xen's
    re-entry check); an `iret` entry ends the batch (mc_exit). Xen's preemption points are not taken:
    a batch always completes in one call."""
    count &= 0xFFFFFFFF
    size = ctypes.sizeof(abi.MulticallEntry)
    if not _range_ok(entries, size * count):
        raise HypercallError(abi.XEN_EFAULT)
    result_offset = abi.MulticallEntry.result.offset
    for index in range(count):
        address = entries + index * size
        entry = _read(domain, address, abi.MulticallEntry)
        if entry.op == abi.HYPERVISOR_multicall:
            result = -abi.XEN_EINVAL
        else:
            result = dispatch(domain, entry.op, tuple(entry.args))
        _write(domain, address + result_offset, (result & (2**64 - 1)).to_bytes(8, "little"))
        if entry.op == abi.HYPERVISOR_iret or not domain.alive:
            break
    return 0


# Xen sizes a domU's pirq space as nr_irqs_gsi + extra_domU_irqs (common/domain.c): xenrr's host has
# one 24-pin IO-APIC (nr_irqs_gsi 24) and Xen's default extra_domU_irqs is 32.
NR_IRQS_GSI = 24
NR_PIRQS = NR_IRQS_GSI + 32
IOBMP_BYTES = 8192
# Operations Xen 4.17 leaves to a privileged domain (XSM_PRIV with the dummy policy: -EPERM for a
# domU), with the size of the argument each copies before its permission check (a bad pointer is then
# -EFAULT); 0: checked before anything is read (pci_mmcfg_reserved, dbgp_op).
_PHYSDEV_PRIVILEGED = {
    abi.PHYSDEVOP_apic_read: 16, abi.PHYSDEVOP_apic_write: 16, abi.PHYSDEVOP_alloc_irq_vector: 8,
    abi.PHYSDEVOP_manage_pci_add: 2, abi.PHYSDEVOP_manage_pci_remove: 2, abi.PHYSDEVOP_manage_pci_add_ext: 6,
    abi.PHYSDEVOP_pci_device_add: 12, abi.PHYSDEVOP_pci_device_remove: 4, abi.PHYSDEVOP_prepare_msix: 4,
    abi.PHYSDEVOP_release_msix: 4, abi.PHYSDEVOP_restore_msi: 2, abi.PHYSDEVOP_restore_msi_ext: 4,
    abi.PHYSDEVOP_pci_mmcfg_reserved: 0, abi.PHYSDEVOP_dbgp_op: 0,
}


def physdev_op(domain: "Domain", command: int, argument: int, *_: int) -> int:
    """Physical-device operations as Xen's do_physdev_op (arch/x86/physdev.c) answers a PV domU with
    no passthrough device: the argument is copied first (-EFAULT); set_iopl (kept, never enforced:
    the guest kernel's port I/O is not emulated) and set_iobitmap are kept; irq_status_query says
    "needs EOI" for any pirq below NR_PIRQS; eoi of a pirq the domain does not have is -EINVAL;
    pirq_eoi_gmfn registers one writable page of the domain's (then -EBUSY); get_free_pirq hands out
    pirqs as Xen's get_free_pirq; map/unmap_pirq are refused (-EPERM for this domain or dom0,
    -ESRCH for any other); the privileged operations are -EPERM after the argument checks Xen makes
    first (restore_msi as for a device the host has: Xen gives -ENODEV for a bus/devfn it has not);
    anything else -ENOSYS."""
    command &= 0xFFFFFFFF
    if command == abi.PHYSDEVOP_set_iopl:
        iopl = _read(domain, argument, abi.PhysdevSetIopl).iopl
        if iopl > 3:
            raise HypercallError(abi.XEN_EINVAL)
        domain.iopl = iopl
        return 0
    if command == abi.PHYSDEVOP_set_iobitmap:
        request = _read(domain, argument, abi.PhysdevSetIobitmap)
        if not _address_ok(request.bitmap.p) or request.nr_ports > 65536:
            raise HypercallError(abi.XEN_EINVAL)
        domain.io_bitmap = (request.bitmap.p, request.nr_ports)
        return 0
    if command == abi.PHYSDEVOP_irq_status_query:
        query = _read(domain, argument, abi.PhysdevIrqStatusQuery)
        if query.irq >= NR_PIRQS:
            raise HypercallError(abi.XEN_EINVAL)
        query.flags = abi.XENIRQSTAT_needs_eoi
        _write(domain, argument, bytes(query))
        return 0
    if command == abi.PHYSDEVOP_eoi:
        if _read(domain, argument, abi.PhysdevEoi).irq not in domain.pirqs:
            raise HypercallError(abi.XEN_EINVAL)
        return 0
    if command in (abi.PHYSDEVOP_pirq_eoi_gmfn_v1, abi.PHYSDEVOP_pirq_eoi_gmfn_v2):
        return _register_pirq_eoi_page(domain, _read(domain, argument, abi.PhysdevPirqEoiGmfn).gmfn,
                                       auto_unmask=command == abi.PHYSDEVOP_pirq_eoi_gmfn_v1)
    if command == abi.PHYSDEVOP_get_free_pirq:
        request = _read(domain, argument, abi.PhysdevGetFreePirq)
        request.pirq = _free_pirq(domain, request.type)
        domain.pirqs = tuple(sorted((*domain.pirqs, request.pirq)))
        _write(domain, argument, bytes(request))
        return 0
    if command in (abi.PHYSDEVOP_map_pirq, abi.PHYSDEVOP_unmap_pirq):
        request_type = abi.PhysdevMapPirq if command == abi.PHYSDEVOP_map_pirq else abi.PhysdevUnmapPirq
        if _read(domain, argument, request_type).domid not in _DOMIDS_SELF:
            raise HypercallError(abi.XEN_ESRCH)
        raise HypercallError(abi.XEN_EPERM)
    if command == abi.PHYSDEVOP_setup_gsi:
        if not 0 <= _read(domain, argument, ctypes.c_int32).value < NR_IRQS_GSI:
            raise HypercallError(abi.XEN_EINVAL)
        raise HypercallError(abi.XEN_EPERM)
    if command in _PHYSDEV_PRIVILEGED:
        if _PHYSDEV_PRIVILEGED[command]:
            _read(domain, argument, ctypes.c_uint8 * _PHYSDEV_PRIVILEGED[command])
        raise HypercallError(abi.XEN_EPERM)
    raise HypercallError(abi.XEN_ENOSYS)


def _register_pirq_eoi_page(domain: "Domain", frame: int, auto_unmask: bool) -> int:
    """The pirq EOI bitmap page holds a writable type reference for as long as the domain lives."""
    _mm_call(lambda: domain.memory.get_type(frame, WRITABLE))
    if domain.pirq_eoi_frame is not None:
        domain.memory.put_type(frame)
        raise HypercallError(abi.XEN_EBUSY)
    domain.pirq_eoi_frame = frame
    domain.pirq_auto_unmask = auto_unmask
    return 0


def _free_pirq(domain: "Domain", pirq_type: int) -> int:
    """Xen's get_free_pirq: a GSI-type pirq from 16 up below nr_irqs_gsi, else from the top down."""
    candidates = list(range(16, NR_IRQS_GSI)) if pirq_type == abi.MAP_PIRQ_TYPE_GSI else []
    candidates += range(NR_PIRQS - 1, NR_IRQS_GSI - 1, -1)
    for pirq in candidates:
        if pirq not in domain.pirqs:
            return pirq
    raise HypercallError(abi.XEN_ENOSPC)


def _accept(domain: "Domain", *_: int) -> int:
    """Hypercalls a PV kernel makes at boot whose effect we do not model (documented in docs)."""
    return 0


Handler = Callable[..., int]
HANDLERS: dict[int, Handler] = {
    abi.HYPERVISOR_console_io: console_io,
    abi.HYPERVISOR_sched_op: sched_op,
    abi.HYPERVISOR_event_channel_op: event_channel_op,
    abi.HYPERVISOR_set_callbacks: set_callbacks,
    abi.HYPERVISOR_callback_op: callback_op,
    abi.HYPERVISOR_set_timer_op: set_timer_op,
    abi.HYPERVISOR_vcpu_op: vcpu_op,
    abi.HYPERVISOR_xen_version: xen_version,
    abi.HYPERVISOR_iret: iret,
    abi.HYPERVISOR_grant_table_op: grant_table_op,
    abi.HYPERVISOR_mmu_update: mmu_update,
    abi.HYPERVISOR_update_va_mapping: update_va_mapping,
    abi.HYPERVISOR_mmuext_op: mmuext_op,
    abi.HYPERVISOR_fpu_taskswitch: _accept,
    abi.HYPERVISOR_vm_assist: vm_assist,
    abi.HYPERVISOR_set_trap_table: set_trap_table,
    abi.HYPERVISOR_stack_switch: _accept,
    abi.HYPERVISOR_set_segment_base: set_segment_base,
    abi.HYPERVISOR_multicall: multicall,
    abi.HYPERVISOR_memory_op: memory_op,
    abi.HYPERVISOR_set_gdt: set_gdt,
    abi.HYPERVISOR_update_descriptor: update_descriptor,
    abi.HYPERVISOR_physdev_op: physdev_op,
}


def dispatch(domain: "Domain", number: int, arguments: tuple[int, ...]) -> int:
    """Run hypercall `number`; returns the value for rax (negative Xen errno on failure)."""
    handler = HANDLERS.get(number)
    if handler is None:
        return -abi.XEN_ENOSYS
    try:
        return handler(domain, *arguments)
    except HypercallError as error:
        return -error.errno
