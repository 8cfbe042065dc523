"""Guest exceptions as Xen delivers them to an x86-64 PV kernel: the virtual IDT and its bounce frame.

Owns the trap table a guest registers with HYPERVISOR_set_trap_table (and CALLBACKOP_register for the
NMI), and the frame Xen's create_bounce_frame (xen/arch/x86/x86_64/entry.S) and pv_inject_event
(xen/arch/x86/pv/traps.c) build when the guest faults: on the current stack, 16-byte aligned, from the
new %rsp upward [rcx, r11, (error code), rip, cs, rflags, rsp, ss]; the cs slot carries the selector
with its privilege bits cleared in bits 0-15 and the upcall mask as it was in bits 32-39; rflags.IF is
"events were unmasked"; a handler whose flags have TI_GET_IF (bit 2) set runs with events masked;
TF, NT, RF, VM and AC are cleared; a page fault's address goes to vcpu_info.arch.cr2.
Invariant: a bounce is a pure function of guest state, made at a deterministic point (a fault exit);
a frame that cannot be written is the guest's fault (GuestFault: the domain crashes, as in Xen).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from xen import abi
from xen.evtchn import EventChannels
from xen.upcall import RFLAGS_IF, RFLAGS_IOPL, RFLAGS_VM, GuestFault
from xen.vcpu import GuestMemoryError, VCpu

# Exception vectors (the x86 architecture; Xen's public headers do not name them).
VECTOR_DIVIDE_ERROR = 0
VECTOR_NMI = 2
VECTOR_BREAKPOINT = 3
VECTOR_INVALID_OPCODE = 6
VECTOR_GENERAL_PROTECTION = 13
VECTOR_PAGE_FAULT = 14
VECTOR_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
                10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC",
                19: "#XM"}
# Exceptions that push an error code (Xen's TRAP_HAVE_EC).
VECTORS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17})
TI_MASK_EVENTS = 1 << 2                 # trap_info.flags: TI_GET_IF
_RFLAGS_CLEARED_ON_ENTRY = (1 << 8) | (1 << 14) | (1 << 16) | RFLAGS_VM | (1 << 18)   # TF NT RF VM AC
VECTOR_COUNT = 256


@dataclass(frozen=True)
class TrapEntry:
    """One virtual IDT entry (struct trap_info)."""
    vector: int
    flags: int
    cs: int
    address: int


@dataclass
class TrapTable:
    """The guest's virtual IDT: vector -> TrapEntry. An absent vector has no handler. A dataclass: each
    vCPU's is part of the checkpointed and snapshotted domain state (xen/smp.py), compared by its entries."""
    _entries: dict[int, TrapEntry] = field(default_factory=dict)

    def set(self, entry: TrapEntry) -> None:
        self._entries[entry.vector] = entry

    def clear(self, vector: int) -> None:
        self._entries.pop(vector, None)

    def clear_all(self) -> None:
        self._entries.clear()

    def handler(self, vector: int) -> TrapEntry | None:
        entry = self._entries.get(vector)
        return entry if entry is not None and entry.address else None

    def save_state(self) -> dict[int, TrapEntry]:
        return dict(self._entries)

    def load_state(self, state: dict[int, TrapEntry]) -> None:
        self._entries = dict(state)


def describe(vector: int) -> str:
    return VECTOR_NAMES.get(vector, f"vector {vector}")


def bounce_exception(vcpu: VCpu, events: EventChannels, entry: TrapEntry, error_code: int | None,
                     fault_address: int | None = None) -> None:
    """Enter the guest's handler for `entry.vector` with Xen's exception frame (see the module doc).
    `error_code` is pushed when not None; `fault_address` (a page fault's) goes to vcpu_info.arch.cr2."""
    saved_mask = events.upcall_masked()
    rsp = vcpu.reg("rsp")
    rflags = vcpu.rflags()
    frame_rflags = (rflags & ~(RFLAGS_IF | RFLAGS_IOPL)) | (0 if saved_mask else RFLAGS_IF)
    cs_slot = abi.BOUNCE_FRAME_CS | (int(saved_mask) << 32)
    words = [vcpu.reg("rcx"), vcpu.reg("r11")]
    if error_code is not None:
        words.append(error_code & 0xFFFFFFFF)
    words += [vcpu.pc, cs_slot, frame_rflags, rsp, abi.FLAT_KERNEL_SS]
    new_rsp = (rsp & ~0xF) - 8 * len(words)
    try:
        vcpu.write(new_rsp, struct.pack(f"<{len(words)}Q", *words))
    except GuestMemoryError as error:
        raise GuestFault(f"cannot push the {describe(entry.vector)} exception frame at {new_rsp:#x}: "
                         f"stack not mapped") from error
    if fault_address is not None:
        vcpu.machine.write_u64(events.vcpu_info_address() + abi.VcpuInfo.arch.offset + abi.ArchVcpuInfo.cr2.offset,
                               fault_address)      # shared_info is Xen's page: by machine address
    if entry.flags & TI_MASK_EVENTS:
        events.set_upcall_mask(True)
    vcpu.set_rflags(rflags & ~_RFLAGS_CLEARED_ON_ENTRY)
    vcpu.set_reg("rsp", new_rsp)
    vcpu.pc = entry.address
