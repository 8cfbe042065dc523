"""Segment descriptors a 64-bit PV guest may install: Xen's check_descriptor rules.

Owns the decision whether an 8-byte x86 segment descriptor may sit in a guest's GDT or be written
by update_descriptor, and the fix-ups Xen applies on the way (xen.git RELEASE-4.17.0,
arch/x86/pv/descriptor-tables.c `check_descriptor`, for a 64-bit PV domain):
- a not-present descriptor is always accepted unchanged;
- the DPL is raised to the guest kernel's ring (3 for a 64-bit PV guest, `__fixup_guest_selector`);
- code and data segments (S bit set) are accepted with no base/limit checks (long-mode code included);
- a system descriptor of type 0 is accepted (the upper half of a 16-byte call gate);
- any other system descriptor but a call gate (type 0xc) is refused (TSS, LDT, interrupt/trap gates);
- a call gate must target a guest GDT selector, FLAT_KERNEL_CS or an LDT selector; its DPL is forced
  to 0 with the original DPL kept in the target selector's RPL, and its reserved bits (7:0 of the high
  word) must be 0.
Invariant: `checked_descriptor` is a pure function of the descriptor; it never touches state.
"""
from __future__ import annotations

from xen import abi

_PRESENT = 1 << 15
_DPL_MASK = 3 << 13
_S = 1 << 12
_TYPE_MASK = 0xF << 8
_CALL_GATE = 0xC << 8
_GUEST_KERNEL_RPL = 3          # a 64-bit PV kernel runs in ring 3


def _gate_selector_ok(selector: int) -> bool:
    return (selector >> 3) < abi.FIRST_RESERVED_GDT_ENTRY or selector == abi.FLAT_KERNEL_CS or bool(selector & 4)


def checked_descriptor(descriptor: int) -> int | None:
    """The descriptor as Xen stores it, or None when Xen refuses it (-EINVAL for the caller)."""
    low, high = descriptor & 0xFFFFFFFF, descriptor >> 32
    if not high & _PRESENT:
        return descriptor
    dpl = max((high >> 13) & 3, _GUEST_KERNEL_RPL)
    high = (high & ~_DPL_MASK) | (dpl << 13)
    if high & _S:
        return high << 32 | low
    if high & _TYPE_MASK == 0:
        return descriptor
    if high & _TYPE_MASK != _CALL_GATE:
        return None
    selector = low >> 16
    if not _gate_selector_ok(selector):
        return None
    high &= ~_DPL_MASK
    low = (low & 0xFFFF) | (((selector & ~3) | dpl) << 16)
    if high & 0xFF:
        return None
    return high << 32 | low
