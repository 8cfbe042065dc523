"""Privileged instructions a PV guest kernel may execute: Xen emulates moves to and from control
registers (xen/arch/x86/pv/emul-priv-op.c read_cr/write_cr) and refuses the rest with #GP.

Owns what a control-register move does to the domain; the vCPU (xen/vcpu.py) decodes the instruction.
The guest sees CR0 as Xen's host CR0 with the task-switched flag clear, CR2 as the fault address Xen
saved for it, CR3 as its current L4 base as a machine address (xen_pfn_to_cr3), CR4 as a fixed value;
writing CR3 is MMUEXT_NEW_BASEPTR, writing CR2 sets the saved fault address, writing CR0 may change
only TS (no effect: the FPU is always available), writing CR4 is accepted and has no effect (Xen keeps
its own CR4). Invariant: every effect is a pure function of guest and domain state.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from xen import abi
from xen.mm import MmuError
from xen.vcpu import ControlMove

if TYPE_CHECKING:
    from xen.domain import Domain

X86_CR0_TS = 1 << 3
# Xen's CR0 on a 64-bit host: PE, MP, ET, NE, WP, AM, PG (TS is the guest's own).
HOST_CR0 = 0x8005_0033
# CR4 as a PV guest reads it: PAE, OSFXSR, OSXMMEXCPT (the features our CPUID table gives).
GUEST_CR4 = 0x620


def _cr2_address(domain: "Domain") -> int:
    return domain.events.vcpu_info_address() + abi.VcpuInfo.arch.offset + abi.ArchVcpuInfo.cr2.offset


def emulate(domain: "Domain", move: ControlMove) -> bool:
    """Carry out a control-register move; False when Xen would refuse it (the caller raises #GP)."""
    vcpu = domain.vcpu
    if move.to_register:
        if move.control == 0:
            value = HOST_CR0
        elif move.control == 2:
            value = vcpu.machine.read_u64(_cr2_address(domain))
        elif move.control == 3:
            value = domain.memory.cr3 << 12
        elif move.control == 4:
            value = GUEST_CR4
        else:
            return False
        vcpu.set_reg(move.register, value)
        return True
    value = vcpu.reg(move.register)
    if move.control == 0:
        return (value ^ HOST_CR0) & ~X86_CR0_TS == 0
    if move.control == 2:
        vcpu.machine.write_u64(_cr2_address(domain), value)
        return True
    if move.control == 3:
        try:
            domain.memory.new_baseptr(value >> 12)
        except MmuError:
            return False
        return True
    return move.control == 4
