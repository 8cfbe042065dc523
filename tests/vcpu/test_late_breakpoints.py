"""Breakpoints added after the code they sit in has run are hit, on the JIT exactly as on the interpreter.

The engine translates a block once and looks it up by its start address; a breakpoint added later in
the middle of such a block must still stop execution there (issue 9, section 1). Each case runs a
small loop on a VCpu with the JIT and with the interpreter and asserts the first stop of each.
"""
from __future__ import annotations

import pytest

from xen.vcpu import ExitReason, VCpu

CODE_ADDRESS = 0x1000
# top: inc rax; inc rbx; inc rcx; jmp top        (one block of four instructions, 11 bytes)
LOOP = bytes.fromhex("48ffc0" "48ffc3" "48ffc1" "ebf5")
INC_RBX, INC_RCX, JMP_TOP = CODE_ADDRESS + 3, CODE_ADDRESS + 6, CODE_ADDRESS + 9


def _loop_vcpu(jit: bool) -> VCpu:
    vcpu = VCpu.flat(0x10000, jit=jit)
    vcpu.write(CODE_ADDRESS, LOOP)
    vcpu.pc = CODE_ADDRESS
    return vcpu


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "interpreter"])
def test_a_breakpoint_added_mid_block_after_the_block_ran_is_hit(jit):
    vcpu = _loop_vcpu(jit)
    assert vcpu.run(100).reason == ExitReason.LIMIT       # 25 iterations: the block is translated
    vcpu.add_breakpoint(INC_RBX)
    stop = vcpu.run(10_000)
    assert (stop.reason, stop.pc, stop.icount) == (ExitReason.BREAKPOINT, INC_RBX, 101)
    stop = vcpu.run(10_000)                               # resumed from the breakpoint: one loop later
    assert (stop.reason, stop.pc, stop.icount) == (ExitReason.BREAKPOINT, INC_RBX, 105)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "interpreter"])
def test_a_breakpoint_removed_then_added_again_after_running_is_hit(jit):
    vcpu = _loop_vcpu(jit)
    vcpu.add_breakpoint(INC_RCX)
    assert vcpu.run(10_000).icount == 2
    vcpu.remove_breakpoint(INC_RCX)
    assert vcpu.run(400).reason == ExitReason.LIMIT       # runs (and is translated) without it
    vcpu.add_breakpoint(INC_RCX)
    stop = vcpu.run(10_000)
    assert (stop.reason, stop.pc, stop.icount) == (ExitReason.BREAKPOINT, INC_RCX, 402)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "interpreter"])
def test_stepping_over_a_breakpoint_at_a_loops_back_jump_keeps_it(jit):
    """Resuming from a breakpoint runs its instruction with the breakpoint lifted; the jump back to
    the block containing it must not leave a translation that skips it."""
    vcpu = _loop_vcpu(jit)
    vcpu.run(50)
    vcpu.add_breakpoint(JMP_TOP)
    stops = [vcpu.run(10_000).icount for _ in range(4)]
    assert stops == [51, 55, 59, 63]
    vcpu.step()                                            # a single step lifts it too
    assert vcpu.run(10_000).icount == 67


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "interpreter"])
def test_every_instruction_of_a_translated_block_can_be_a_late_breakpoint(jit):
    vcpu = _loop_vcpu(jit)
    for round_number, address in enumerate((INC_RCX, JMP_TOP, INC_RBX, CODE_ADDRESS, INC_RCX)):
        vcpu.run(vcpu.icount + 37)                         # arbitrary, mid-loop: everything translated
        vcpu.add_breakpoint(address)
        start = vcpu.icount
        stop = vcpu.run(start + 10_000)
        assert (stop.reason, stop.pc) == (ExitReason.BREAKPOINT, address), round_number
        assert stop.icount - start <= 4, "not the first time the loop reached it"
        vcpu.remove_breakpoint(address)
