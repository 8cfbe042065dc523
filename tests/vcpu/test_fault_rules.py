"""Every fault kind the engine can report has its own icount and rip rule (xen/vcpu.py, _fault).

A fault exit says: `icount` instructions retired, pc is on the instruction that did not. Replay
stands on it: running a fresh vCPU to that icount must stop at that very pc. Each case below is a
snippet of hand-assembled bytes with a known number of instructions that retire before the fault;
it is checked in the JIT and the interpreter, under run(), step() and dirty-page tracking.
"""
from __future__ import annotations

import pytest

from xen.vcpu import ExitReason, VCpu

BASE = 0x100000
MEMORY = 0x10000                 # 16 pages; BASE + MEMORY is unmapped
READ_ONLY_PAGE = BASE + 0x3000
STACK_TOP = BASE + 0x8000
NOPS = b"\x90" * 3


def _imm64(value: int) -> bytes:
    return value.to_bytes(8, "little")


MOV_RAX_UNMAPPED = b"\x48\xb8" + _imm64(0x4000_0000_0000)        # mov rax, 0x400000000000

# name -> (code after the nops, instructions that retire, pc of the fault relative to BASE or absolute,
#          detail text). The nops retire too and are added below.
CASES = {
    "ud2": (b"\x0f\x0b", 0, 0, "invalid instruction"),
    "ud1": (b"\x0f\xb9\xc0", 0, 0, "invalid instruction"),
    "undecodable push es": (b"\x06", 0, 0, "undecodable"),
    "undecodable ff ff": (b"\xff\xff", 0, 0, "undecodable"),
    "undecodable lock nop": (b"\xf0\x90", 0, 0, "undecodable"),
    "divide by zero": (b"\x48\x31\xc9\x48\xf7\xf1", 1, 3, "divide error"),
    "read unmapped": (MOV_RAX_UNMAPPED + b"\x48\x8b\x00", 1, 10, "read from unmapped"),
    "write unmapped": (MOV_RAX_UNMAPPED + b"\x48\x89\x00", 1, 10, "write to unmapped"),
    "write read-only": (b"\x48\xb8" + _imm64(READ_ONLY_PAGE) + b"\x48\x89\x00", 1, 10, "read-only"),
    "jmp unmapped": (MOV_RAX_UNMAPPED + b"\xff\xe0", 2, 0x4000_0000_0000, "execute"),
    "jmp zero": (b"\x31\xc0\xff\xe0", 2, 0, "execute"),
    "call unmapped": (MOV_RAX_UNMAPPED + b"\xff\xd0", 2, 0x4000_0000_0000, "execute"),
    "ret unmapped": (MOV_RAX_UNMAPPED + b"\x50\xc3", 3, 0x4000_0000_0000, "execute"),
    "jmp noncanonical": (b"\x48\xb8" + _imm64(1 << 63) + b"\xff\xe0", 2, 1 << 63, "execute"),
    "int 0x80": (b"\xcd\x80", 0, 0, "software interrupt"),
    "int3": (b"\xcc", 0, 0, "software interrupt"),
    "mov cr3": (b"\x0f\x22\xd8", 0, 0, "not supported"),
    "in al": (b"\xe4\x60", 0, 0, "not supported"),
}
ABSOLUTE = {"jmp unmapped", "jmp zero", "call unmapped", "ret unmapped", "jmp noncanonical"}


def _vcpu(code: bytes, jit: bool, at: int = BASE) -> VCpu:
    vcpu = VCpu.flat(MEMORY, BASE, jit=jit)
    vcpu.set_read_only(((READ_ONLY_PAGE - BASE) // 4096,))
    vcpu.write(at, code)
    vcpu.pc = at
    vcpu.set_reg("rsp", STACK_TOP)
    return vcpu


def _run_to_fault(vcpu: VCpu, mode: str):
    if mode == "dirty":
        vcpu.track_dirty_pages()
    if mode == "step":
        for _ in range(50):
            exit = vcpu.step()
            if exit.reason != ExitReason.LIMIT:
                return exit
        raise AssertionError("no fault within 50 steps")
    return vcpu.run(1000)


def _expected(name: str) -> tuple[bytes, int, int, str]:
    code, retired, pc, detail = CASES[name]
    pc = pc if name in ABSOLUTE else BASE + len(NOPS) + pc
    return NOPS + code, len(NOPS) + retired, pc, detail


@pytest.mark.parametrize("mode", ["run", "step", "dirty"])
@pytest.mark.parametrize("jit", [True, False], ids=["jit", "interp"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_fault_icount_and_rip(name, jit, mode):
    code, retired, pc, detail = _expected(name)
    exit = _run_to_fault(_vcpu(code, jit), mode)
    assert exit.reason == ExitReason.FAULT
    assert detail in exit.detail
    assert (exit.icount, exit.pc) == (retired, pc)


@pytest.mark.parametrize("name", sorted(CASES))
def test_replay_to_the_fault_icount_stops_on_the_faulting_instruction(name):
    """What replay does with a recorded crash: run to its icount; the state must match there."""
    code, retired, pc, _ = _expected(name)
    recorded = _vcpu(code, jit=True).run(1000)
    replay = _vcpu(code, jit=True)
    stop = replay.run(recorded.icount)
    assert (stop.reason, stop.icount, stop.pc) == (ExitReason.LIMIT, retired, pc)
    assert replay.run(1000)[:3] == recorded[:3]


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "interp"])
@pytest.mark.parametrize("code, retired", [(b"\x0f", 2), (b"\x48\xb8\x11\x11", 2), (b"\x06", 2)],
                         ids=["ud2 split", "mov imm64 split", "undecodable last byte"])
def test_instruction_running_into_unmapped_memory_is_not_counted(code, retired, jit):
    """Bytes that run off the end of guest memory: the instruction never started, pc on its first byte."""
    start = BASE + MEMORY - len(code) - 2
    exit = _vcpu(b"\x90\x90" + code, jit, at=start).run(1000)
    assert exit.reason == ExitReason.FAULT
    assert (exit.icount, exit.pc) == (retired, start + 2)


@pytest.mark.parametrize("mode", ["plain", "dirty tracking", "watched"])
def test_hypervisor_writes_for_the_guest_honour_its_page_permissions(mode):
    """copy_to_guest semantics: a read-only (code) page refuses the write in every mode, unchanged."""
    from xen.vcpu import GuestMemoryError
    vcpu = _vcpu(b"\x90", jit=True)
    if mode == "dirty tracking":
        vcpu.track_dirty_pages()
    elif mode == "watched":
        vcpu.add_watch(READ_ONLY_PAGE, 8, "w")
    before = vcpu.read(READ_ONLY_PAGE - 8, 16)
    with pytest.raises(GuestMemoryError):
        vcpu.write_for_guest(READ_ONLY_PAGE - 8, b"\xff" * 16)     # straddles into the read-only page
    with pytest.raises(GuestMemoryError):
        vcpu.write_for_guest(BASE + MEMORY - 4, b"\xff" * 8)        # runs past the end of memory
    assert vcpu.read(READ_ONLY_PAGE - 8, 16) == before
    vcpu.write_for_guest(BASE + 0x5000, b"ok")
    assert vcpu.read(BASE + 0x5000, 2) == b"ok"
