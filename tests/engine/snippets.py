"""Small assembly snippets on a raw engine, for the named regression and exit tests.

Owns: loading one snippet (`start:` ... `end: int3`) into a freshly reset icicle instance with scratch
memory and a stack, running it with or without stops, and the stop-anywhere icount check. Invariant:
`load` resets the instance first (which also drops translated code), so every run starts from the
same architectural state whatever ran before on that instance.
"""
from dataclasses import dataclass

import icicle

from tests.engine.case_runner import CODE, MXCSR_RESET, SCRATCH, SCRATCH_SIZE, STACK, STACK_SIZE, assemble_source

GPRS = ('rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'rsp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15')
FLAGS = ('CF', 'PF', 'AF', 'ZF', 'SF', 'IF', 'DF', 'OF')
BIG_LIMIT = 100_000


@dataclass(frozen=True)
class Snippet:
    code: bytes
    labels: dict[str, int]      # every label of the snippet, `start` and `end` included

    @property
    def start(self) -> int:
        return self.labels['start']

    @property
    def end(self) -> int:
        return self.labels['end']


@dataclass(frozen=True)
class Stop:
    """Where and why a run stopped, and the complete observable state there."""
    status: str
    code: str
    value: int
    pc: int
    icount: int
    registers: tuple[int, ...]  # GPRS, then FLAGS, then XMM0..15 as (low, high) quadword pairs
    memory: bytes

    def reg(self, name: str) -> int:
        """A GPR or flag by its engine name (rax, r8, CF, ...), or xmmN as a 128-bit value."""
        if name.startswith('xmm'):
            index = len(GPRS) + len(FLAGS) + 2 * int(name[3:])
            return self.registers[index] | self.registers[index + 1] << 64
        return self.registers[(GPRS + FLAGS).index(name)]


def snippet(asm: str) -> Snippet:
    """Assemble `asm` (statements separated by ';' or newlines) between `start:` and `end: int3`."""
    lines = ['start:', *(part.strip() for part in asm.replace('\n', ';').split(';') if part.strip()), 'end:', 'int3']
    code, labels = assemble_source(lines)
    return Snippet(code, labels)


def load(vm: icicle.Icicle, code: Snippet, registers: dict[str, int] | None = None, memory: bytes = b'') -> None:
    """Reset `vm` and set it up to run `code`: GPRs zero unless given (`xmmN` names take 128-bit
    values), %rsp on the stack, %rsi/%rdi into scratch memory (which starts as `memory`,
    zero-padded), MXCSR at its reset value."""
    vm.reset()
    vm.mem_map(CODE, (len(code.code) + 0xFFF) & ~0xFFF, icicle.MemoryProtection.ExecuteRead)
    vm.mem_write(CODE, code.code)
    vm.mem_map(SCRATCH, SCRATCH_SIZE, icicle.MemoryProtection.ReadWrite)
    vm.mem_map(STACK, STACK_SIZE, icicle.MemoryProtection.ReadWrite)
    vm.mem_write(SCRATCH, memory.ljust(SCRATCH_SIZE, b'\0'))
    values = dict.fromkeys(GPRS, 0) | {'rsp': STACK + STACK_SIZE // 2, 'rsi': SCRATCH, 'rdi': SCRATCH + 0x800}
    for name, value in (values | (registers or {})).items():
        if name.startswith('xmm'):      # 128-bit value, written as its two halves
            vm.reg_write(f'XMM{name[3:]}_Qa', value & (2**64 - 1))
            vm.reg_write(f'XMM{name[3:]}_Qb', value >> 64 & (2**64 - 1))
        else:
            vm.reg_write(name, value & (2**64 - 1))
    vm.reg_write('MXCSR', MXCSR_RESET)
    vm.pc = code.start


def observe(vm: icicle.Icicle, status: icicle.RunStatus) -> Stop:
    registers = tuple(vm.reg_read(name) for name in GPRS + FLAGS) + tuple(
        vm.reg_read(f'XMM{k}_Q{half}') for k in range(16) for half in 'ab')
    return Stop(str(status).rpartition('.')[2], str(vm.exception_code).rpartition('.')[2], vm.exception_value,
                vm.pc, vm.icount, registers, vm.mem_read(SCRATCH, SCRATCH_SIZE) + vm.mem_read(STACK, STACK_SIZE))


def run(vm: icicle.Icicle, stops: tuple[int, ...] = (), limit: int = BIG_LIMIT) -> Stop:
    """Run from the loaded state, stopping at each absolute icount in `stops` and resuming, up to `limit`."""
    for stop in stops:
        vm.icount_limit = stop
        status = vm.run()
        if status != icicle.RunStatus.InstructionLimit:
            return observe(vm, status)
    vm.icount_limit = limit
    return observe(vm, vm.run())


def run_snippet(vm: icicle.Icicle, code: Snippet, registers: dict[str, int] | None = None,
                memory: bytes = b'', stops: tuple[int, ...] = ()) -> Stop:
    load(vm, code, registers, memory)
    return run(vm, stops)


def stop_anywhere_mismatches(vm: icicle.Icicle, code: Snippet, registers: dict[str, int] | None = None,
                             memory: bytes = b'') -> list[str]:
    """Stop once at every icount before the end of `code`, resume, and compare the final stop (icount,
    pc, registers, memory) with a run without stops. Returns a description of every mismatch."""
    reference = run_snippet(vm, code, registers, memory)
    mismatches = []
    for stop in range(1, reference.icount):
        got = run_snippet(vm, code, registers, memory, stops=(stop,))
        if got != reference:
            mismatches.append(f'stop at icount {stop}: ended at icount {got.icount} pc {got.pc:#x}, '
                              f'reference {reference.icount} pc {reference.pc:#x}')
    return mismatches
