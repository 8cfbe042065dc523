"""Event upcalls and HYPERVISOR_iret, as Xen does them for x86-64 PV guests.

Owns the guest-stack frames that enter and leave the event callback. Delivery pushes Xen's bounce
frame - from the new %rsp upward [rcx, r11, rip, cs, rflags, rsp, ss], 16-byte aligned, cs = 0xe030,
rflags.IF = events were unmasked - masks events and jumps to the registered callback. iret pops
struct iret_context and restores the mask from rflags.IF. Invariant: both are pure functions of
guest state, run only at deterministic points (return from a hypercall or an injection).
A frame that cannot be written or read is the guest's fault: `GuestFault` crashes the domain.
"""
from __future__ import annotations

import ctypes
import struct

from xen import abi
from xen.evtchn import EventChannels
from xen.vcpu import GuestMemoryError, VCpu

RFLAGS_IF = 1 << 9
RFLAGS_IOPL = 3 << 12
RFLAGS_VM = 1 << 17
_FRAME = struct.Struct("<7Q")


class GuestFault(Exception):
    """The guest made the hypervisor do something impossible on its behalf (the domain must crash)."""


def deliver_if_pending(vcpu: VCpu, events: EventChannels, callback: int | None) -> bool:
    """Deliver the event upcall when one is pending and unmasked. True when an upcall was entered."""
    if not events.upcall_pending() or events.upcall_masked():
        return False
    if not callback:
        raise GuestFault("event upcall pending but no event callback registered")
    rsp = vcpu.reg("rsp")
    frame_top = rsp & ~0xF
    new_rsp = frame_top - _FRAME.size
    frame = _FRAME.pack(vcpu.reg("rcx"), vcpu.reg("r11"), vcpu.pc, abi.BOUNCE_FRAME_CS,
                        vcpu.rflags() | RFLAGS_IF, rsp, abi.FLAT_KERNEL_SS)
    try:
        vcpu.write_for_guest(new_rsp, frame)
    except GuestMemoryError as error:
        raise GuestFault(f"cannot push the event bounce frame at {new_rsp:#x}: stack not writable") from error
    events.set_upcall_mask(True)
    vcpu.set_reg("rsp", new_rsp)
    vcpu.pc = callback
    return True


def do_iret(vcpu: VCpu, events: EventChannels) -> int:
    """HYPERVISOR_iret: restore the context the guest left at %rsp. Returns the rax to resume with."""
    rsp = vcpu.reg("rsp")
    try:
        raw = vcpu.read(rsp, ctypes.sizeof(abi.IretContext))
    except GuestMemoryError as error:
        raise GuestFault(f"HYPERVISOR_iret with an unreadable frame at {rsp:#x}") from error
    frame = abi.IretContext.from_buffer_copy(raw)
    rflags = (frame.rflags & ~(RFLAGS_IOPL | RFLAGS_VM)) | RFLAGS_IF
    if frame.flags & abi.VGCF_in_syscall:
        vcpu.set_reg("rcx", frame.rip)     # a return through sysret clobbers rcx and r11
        vcpu.set_reg("r11", rflags)
    else:
        vcpu.set_reg("rcx", frame.rcx)
        vcpu.set_reg("r11", frame.r11)
    vcpu.set_rflags(rflags)
    vcpu.set_reg("rsp", frame.rsp)
    vcpu.pc = frame.rip
    events.set_upcall_mask(not frame.rflags & RFLAGS_IF)
    return frame.rax
