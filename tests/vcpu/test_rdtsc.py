"""RDTSC reads the documented virtual TSC - the retired-instruction count, the RDTSC included - on every
path the vCPU wrapper answers it (the fast path of `VCpu.run` for the plain opcode, the general decoder
for prefixed forms and for `VCpu.step`), whatever limits slice the run. GRUB polls the TSC every ~130
instructions, so the fast path carries most of a GRUB session."""
from __future__ import annotations

import pytest

from tests.engine.case_runner import CODE, assemble_source
from xen.vcpu import ExitReason, VCpu

DATA = CODE + 0x1000
ROUNDS = 20
# rbx -> table; per round: plain rdtsc, store, rex.W rdtsc, store; 4 instructions of set-up per round
SOURCE = [f"mov ${DATA}, %rbx", f"mov ${ROUNDS}, %ecx",
          "1: rdtsc", "mov %eax, (%rbx)", "rex.W rdtsc", "mov %eax, 4(%rbx)", "add $8, %rbx", "dec %ecx", "jnz 1b",
          "hlt"]
SETUP, PER_ROUND = 2, 7


def _vcpu() -> VCpu:
    code, _ = assemble_source(SOURCE)
    vcpu = VCpu.flat(0x2000, memory_base=CODE)
    vcpu.write(CODE, code)
    vcpu.pc = CODE
    return vcpu


def _expected() -> list[int]:
    values = []
    for round_ in range(ROUNDS):
        first = SETUP + round_ * PER_ROUND + 1
        values += [first, first + 2]
    return values


def _table(vcpu: VCpu) -> list[int]:
    raw = vcpu.read(DATA, ROUNDS * 8)
    return [int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4)]


@pytest.mark.parametrize("slicing", ["one run", "slices of 3", "single steps"])
def test_rdtsc_is_the_instruction_count(slicing):
    vcpu = _vcpu()
    while True:
        if slicing == "one run":
            exit = vcpu.run(10**9)
        elif slicing == "slices of 3":
            exit = vcpu.run(vcpu.icount + 3)
        else:
            exit = vcpu.step()
        if exit.reason == ExitReason.IDLE:
            break
        assert exit.reason == ExitReason.LIMIT
    assert _table(vcpu) == _expected()
    assert vcpu.icount == SETUP + ROUNDS * PER_ROUND + 1
