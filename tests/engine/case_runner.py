"""Run one corpus case from one machine state on icicle or on unicorn, and compare the results.

Owns: the corpus loader and assembler (tests/engine/asm/*.cases, assembled with GNU `as`, cached in
the temp dir by content hash), the random initial states, and the two runners. Invariant: both runners
start from exactly the same architectural state (GPRs, the rflags arithmetic bits, XMM0-15, MXCSR,
FS base, scratch memory, stack) and report the same fields, so `differences` compares like with like.
"""
import hashlib
import os
import random
import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import icicle
import unicorn
from unicorn import x86_const as ux

ASM_DIR = Path(__file__).resolve().parent / 'asm'
CODE, SCRATCH, STACK = 0x400000, 0x600000, 0x700000
SCRATCH_SIZE, STACK_SIZE = 0x3000, 0x1000
DATA = SCRATCH + 0x1000          # %rbx: 16-aligned data with float/integer edge values
STRING_SRC, STRING_DST = SCRATCH + 0x800, SCRATCH + 0x1800
FS_BASE = SCRATCH + 0x2000
MXCSR_RESET = 0x1F80
STEP_LIMIT = 5000                # no case runs longer; more means a runaway loop

GPRS = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'rsp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15']
FLAG_BITS = {'C': 0, 'P': 2, 'A': 4, 'Z': 6, 'S': 7, 'D': 10, 'O': 11}
ICICLE_FLAGS = {'C': 'CF', 'P': 'PF', 'A': 'AF', 'Z': 'ZF', 'S': 'SF', 'D': 'DF', 'O': 'OF'}


@dataclass(frozen=True)
class Case:
    group: str
    asm: str
    defined_flags: str           # subset of CPAZSOD compared after the case
    start: int = 0
    end: int = 0

    @property
    def name(self) -> str:
        return f'{self.group}: {self.asm}'


@dataclass(frozen=True)
class State:
    gprs: tuple[int, ...]
    flags: int                   # rflags bits C P A Z S D O only
    xmm: tuple[int, ...]
    scratch: bytes
    stack: bytes


@dataclass(frozen=True)
class Outcome:
    status: str                  # 'ok' or a description of the exception that stopped the case
    rip: int
    state: State
    instructions: int = 0        # icicle only: icount advance, the int3 end marker included


def load_cases() -> list[Case]:
    """Every case of tests/engine/asm/*.cases, in file and line order (not yet assembled)."""
    cases = []
    for path in sorted(ASM_DIR.glob('*.cases')):
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith('#'):
                flags, asm = (part.strip() for part in line.split('|', 1))
                cases.append(Case(path.stem, asm, '' if flags == '-' else flags))
    return cases


def assemble_source(lines: list[str]) -> tuple[bytes, dict[str, int]]:
    """Assemble GNU `as` source lines as code at CODE: the bytes and the address of every symbol.

    Results are cached in the temp dir by content hash, so a test run assembles each source once.
    """
    source = '\n'.join(['.text', '.code64', *lines]) + '\n'
    cache = Path(tempfile.gettempdir()) / f'xenrr-engine-asm-{hashlib.sha256(source.encode()).hexdigest()[:16]}'
    if not cache.exists():
        work = Path(tempfile.mkdtemp(prefix='xenrr-engine-asm-'))
        (work / 'code.S').write_text(source)
        subprocess.run(['as', '--64', '-o', work / 'code.o', work / 'code.S'], check=True, capture_output=True)
        subprocess.run(['objcopy', '-O', 'binary', '-j', '.text', work / 'code.o', work / 'code.bin'], check=True)
        nm = subprocess.run(['nm', work / 'code.o'], check=True, capture_output=True, text=True).stdout
        (work / 'code.syms').write_text(nm)
        try:
            os.replace(work, cache)          # atomic: a concurrent run sees no cache or a complete one
        except OSError:                      # another run published the same result first
            shutil.rmtree(work)
    symbols = {}
    for line in (cache / 'code.syms').read_text().splitlines():
        address, _, name = line.split()
        symbols[name] = CODE + int(address, 16)
    return (cache / 'code.bin').read_bytes(), symbols


def assemble(cases: list[Case]) -> tuple[bytes, list[Case]]:
    """Assemble all cases into one code blob at CODE, each followed by two nops and an int3 end
    marker: the nops keep a stop right after the case inside the same translated block."""
    lines = []
    for i, case in enumerate(cases):
        lines += ['.p2align 4', f'case{i}:', *(s.strip() for s in case.asm.split(';')), 'nop', 'nop', f'end{i}:', 'int3']
    blob, symbols = assemble_source(lines)
    placed = [Case(c.group, c.asm, c.defined_flags, symbols[f'case{i}'], symbols[f'end{i}']) for i, c in enumerate(cases)]
    return blob, placed


def _double(x: float) -> int:
    return struct.unpack('<Q', struct.pack('<d', x))[0]


def _single(x: float) -> int:
    return struct.unpack('<I', struct.pack('<f', x))[0]


DOUBLES = [_double(x) for x in (0.0, -0.0, 1.0, -1.5, 2.5, 3.5, -2.5, 0.5, 1e300, -1e-300, 123456.789, 0.49999999999999994,
                                 1e10, 2.0**31, -2.0**31, 2.0**31 - 0.5, 2.0**63, -2.0**63, 2.0**64, -7.0, 1.0 / 3, 4e9)]
DOUBLES += [0x1, 0x8000000000000001, 0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000000, 0xFFF8000000000000,
            0x7FF4000000000000, 0x000FFFFFFFFFFFFF]
SINGLES = [_single(x) for x in (0.0, -0.0, 1.0, -1.5, 2.5, 0.5, -3.5, 3.4e38, 1e-38, 16777217.0, 2.0**31, -2.0**31,
                                 2.0**63, 1.0 / 3, 3e9, -0.75)]
SINGLES += [0x1, 0x80000001, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7FA00000]
INTEGERS = [0, 1, 2, 3, 7, 0x10, 0x7F, 0x80, 0xFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
            2**63 - 1, 2**63, 2**64 - 1, 2**64 - 2, 0x0F0F0F0F0F0F0F0F]


def _random_qword(rng: random.Random) -> int:
    kind = rng.random()
    if kind < 0.35:
        return rng.getrandbits(64)
    if kind < 0.55:
        return rng.choice(INTEGERS)
    if kind < 0.8:
        return rng.choice(DOUBLES)
    return rng.choice(SINGLES) | rng.choice(SINGLES) << 32


def random_state(seed: int) -> State:
    """A reproducible initial state following the register conventions of scripts/engine_corpus.py."""
    rng = random.Random(seed)
    gprs = {name: _random_qword(rng) for name in GPRS}
    gprs.update(rbx=DATA, rsi=STRING_SRC + rng.randrange(0, 64), rdi=STRING_DST + rng.randrange(0, 64),
                rsp=STACK + STACK_SIZE // 2, rcx=rng.choice([0, 1, 2, 7, 8, 15, 16, 31, 32, 33, 63, 64, 65, rng.randrange(80)]))
    flags = sum(1 << FLAG_BITS[f] for f in 'CPAZSO' if rng.random() < 0.5)
    xmm = tuple(_random_qword(rng) | _random_qword(rng) << 64 for _ in range(16))
    scratch = bytearray(rng.getrandbits(8) for _ in range(SCRATCH_SIZE))
    for offset in range(0x1000, 0x1100, 8):
        value = rng.choice(DOUBLES) if rng.random() < 0.6 else _random_qword(rng)
        scratch[offset:offset + 8] = value.to_bytes(8, 'little')
    if rng.random() < 0.3:           # equal strings, so that repe cmps runs its full count
        scratch[0x1800:0x1C00] = scratch[0x800:0xC00]
    return State(tuple(gprs[name] for name in GPRS), flags, xmm, bytes(scratch), bytes(STACK_SIZE))


def case_seed(case: Case, trial: int) -> int:
    return zlib.crc32(f'{case.group}|{case.asm}|{trial}'.encode())


class IcicleRunner:
    """Runs cases on one icicle instance (created by the caller, so stock or patched, JIT or not)."""

    def __init__(self, vm: icicle.Icicle, blob: bytes):
        self.vm = vm
        vm.mem_map(CODE, (len(blob) + 0xFFF) & ~0xFFF, icicle.MemoryProtection.ExecuteRead)
        vm.mem_write(CODE, blob)
        vm.mem_map(SCRATCH, SCRATCH_SIZE, icicle.MemoryProtection.ReadWrite)
        vm.mem_map(STACK, STACK_SIZE, icicle.MemoryProtection.ReadWrite)

    def run(self, case: Case, state: State, stops: tuple[int, ...] = ()) -> Outcome:
        """Run the case from `state`, stopping at each icount offset in `stops` and resuming."""
        vm = self.vm
        for name, value in zip(GPRS, state.gprs):
            vm.reg_write(name, value)
        for flag, bit in FLAG_BITS.items():
            vm.reg_write(ICICLE_FLAGS[flag], state.flags >> bit & 1)
        for k, value in enumerate(state.xmm):
            vm.reg_write(f'XMM{k}_Qa', value & (2**64 - 1))
            vm.reg_write(f'XMM{k}_Qb', value >> 64)
        vm.reg_write('MXCSR', MXCSR_RESET)
        vm.reg_write('FS_OFFSET', FS_BASE)
        vm.mem_write(SCRATCH, state.scratch)
        vm.mem_write(STACK, state.stack)
        vm.pc = case.start
        start = vm.icount
        for stop in stops:
            vm.icount_limit = start + stop
            if vm.run() != icicle.RunStatus.InstructionLimit:
                break
        else:
            vm.icount_limit = start + STEP_LIMIT
            vm.run()
        code = vm.exception_code
        if code == icicle.ExceptionCode.Syscall and vm.exception_value == 3 and vm.pc == case.end:
            status = 'ok'
        else:
            status = f'icicle: {str(code).split(".")[-1]} value={vm.exception_value:#x} at +{vm.pc - case.start:#x}'
        flags = sum(vm.reg_read(ICICLE_FLAGS[f]) << bit for f, bit in FLAG_BITS.items())
        xmm = tuple(vm.reg_read(f'XMM{k}_Qa') | vm.reg_read(f'XMM{k}_Qb') << 64 for k in range(16))
        result = State(tuple(vm.reg_read(name) for name in GPRS), flags, xmm,
                       vm.mem_read(SCRATCH, SCRATCH_SIZE), vm.mem_read(STACK, STACK_SIZE))
        return Outcome(status, vm.pc, result, vm.icount - start)


UC_GPRS = [getattr(ux, f'UC_X86_REG_{name.upper()}') for name in GPRS]
FLAG_MASK = sum(1 << bit for bit in FLAG_BITS.values())


class UnicornRunner:
    """Runs cases on a unicorn x86-64 instance, the reference engine."""

    def __init__(self, blob: bytes):
        self.uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        self.uc.mem_map(CODE, (len(blob) + 0xFFF) & ~0xFFF)
        self.uc.mem_write(CODE, blob)
        self.uc.mem_map(SCRATCH, SCRATCH_SIZE)
        self.uc.mem_map(STACK, STACK_SIZE)
        self.interrupts: list[int] = []
        self.uc.hook_add(unicorn.UC_HOOK_INTR, self._on_interrupt)

    def _on_interrupt(self, uc: unicorn.Uc, number: int, _data: object) -> None:
        self.interrupts.append(number)
        uc.emu_stop()

    def run(self, case: Case, state: State) -> Outcome:
        uc = self.uc
        for reg, value in zip(UC_GPRS, state.gprs):
            uc.reg_write(reg, value)
        uc.reg_write(ux.UC_X86_REG_EFLAGS, state.flags | 0x2)
        for k, value in enumerate(state.xmm):
            uc.reg_write(ux.UC_X86_REG_XMM0 + k, value)
        uc.reg_write(ux.UC_X86_REG_MXCSR, MXCSR_RESET)
        uc.reg_write(ux.UC_X86_REG_FS_BASE, FS_BASE)
        uc.mem_write(SCRATCH, state.scratch)
        uc.mem_write(STACK, state.stack)
        self.interrupts.clear()
        status = 'ok'
        try:
            uc.emu_start(case.start, case.end, count=STEP_LIMIT)
        except unicorn.UcError as error:
            status = f'unicorn: {error}'
        rip = uc.reg_read(ux.UC_X86_REG_RIP)
        if self.interrupts:
            status = f'unicorn: interrupt {self.interrupts[0]}'
        elif status == 'ok' and rip != case.end:
            status = f'unicorn: stopped at +{rip - case.start:#x}'
        result = State(tuple(uc.reg_read(reg) for reg in UC_GPRS), uc.reg_read(ux.UC_X86_REG_EFLAGS) & FLAG_MASK,
                       tuple(uc.reg_read(ux.UC_X86_REG_XMM0 + k) for k in range(16)),
                       bytes(uc.mem_read(SCRATCH, SCRATCH_SIZE)), bytes(uc.mem_read(STACK, STACK_SIZE)))
        return Outcome(status, rip, result)


def differences(a: State, b: State, flags: str = 'CPAZSOD') -> list[str]:
    """Human-readable list of what differs between two final states (flags limited to `flags`)."""
    found = [f'{name} {x:#x} / {y:#x}' for name, x, y in zip(GPRS, a.gprs, b.gprs) if x != y]
    mask = sum(1 << FLAG_BITS[f] for f in flags)
    if (a.flags ^ b.flags) & mask:
        found.append('flags ' + ' '.join(f'{f}={a.flags >> FLAG_BITS[f] & 1}/{b.flags >> FLAG_BITS[f] & 1}'
                                         for f in flags if (a.flags ^ b.flags) >> FLAG_BITS[f] & 1))
    found += [f'xmm{k} {x:#034x} / {y:#034x}' for k, (x, y) in enumerate(zip(a.xmm, b.xmm)) if x != y]
    for name, base, x, y in [('scratch', SCRATCH, a.scratch, b.scratch), ('stack', STACK, a.stack, b.stack)]:
        if x != y:
            first = next(i for i in range(len(x)) if x[i] != y[i]) & ~7
            found.append(f'{name} at {base + first:#x}: {x[first:first + 8].hex()} / {y[first:first + 8].hex()}')
    return found
