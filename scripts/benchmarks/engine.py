"""Engine throughput: one CPU-bound guest loop on xen.vcpu.VCpu under different stop patterns, and on unicorn.

Owns one measurement, taken side by side in one process, median of interleaved repetitions. The guest is
a small assembly loop (LOOP_SOURCE: 11 integer instructions per iteration, one load and one store) assembled
with GNU `as` into a temporary directory at bench time and ending in `hlt`. It runs:
- plain: `VCpu.run` to a limit far beyond the loop's end (it stops at the `hlt`, an IDLE exit);
- exits every N: `VCpu.run(icount + N)` in a loop until the `hlt`, for N = 10000, 1000, 100;
- breakpoints: plain, with 10 breakpoints set on code next to the loop that never runs;
- step: `VCpu.step()` until the `hlt`, on a shorter run;
- unicorn: the same bytes at the same addresses, `emu_start` to the `hlt` with no hooks (the reference).
All VCpu sides share one VCpu (its speed varies by several per cent from instance to instance, which
would swamp the differences measured; the breakpoints are set only around their own runs), unicorn has
one instance; every side is warmed up by one untimed run of WARM_UP_ITERATIONS on which all sides must
agree (rax, the checksum). Invariant: repeated runs of a side agree on the checksum, and a VCpu
run retires exactly SETUP + PER_ITERATION * iterations + 1 instructions (the `hlt` included); unicorn
stops before the `hlt`.
"""
from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import unicorn
from unicorn import x86_const

from xen.vcpu import ExitReason, VCpu

CODE_ADDRESS = 0x400000
DATA_ADDRESS = CODE_ADDRESS + 0x1000
MEMORY_BYTES = 0x2000
SETUP, PER_ITERATION = 3, 11          # instructions before the loop and in one iteration of LOOP_SOURCE
BREAKPOINT_COUNT = 10
BIG_LIMIT = 10**15

LOOP_SOURCE = """
    .text
    .code64
    .globl start, done, cold
start:                          # rdi = iterations (> 0), rbx = a 4 KiB data page
    xor %eax, %eax
    movabs $0x5851f42d4c957f2d, %rsi
    mov %rdi, %rcx
1:  imul %rsi, %rax
    add %rcx, %rax
    mov %rax, %rdx
    shr $29, %rdx
    xor %rdx, %rax
    mov %ecx, %r8d
    and $511, %r8d
    xor (%rbx,%r8,8), %rax
    mov %rdx, (%rbx,%r8,8)
    dec %rcx
    jnz 1b
done:
    hlt
cold:                           # never executed: the unhit breakpoints go here
    .rept 10
    nop
    .endr
    ret
"""

# (mode, label in the table); iterations per mode and size below.
MODES = (
    ("plain", "(a) VCpu.run, large limit"),
    ("exit_10000", "(b) run(icount+10000) in a loop"),
    ("exit_1000", "(b) run(icount+1000) in a loop"),
    ("exit_100", "(b) run(icount+100) in a loop"),
    ("breakpoints", "(c) plain + 10 unhit breakpoints"),
    ("step", "(d) VCpu.step() each instruction"),
    ("unicorn", "(e) unicorn, no hooks"),
)
ITERATIONS = {
    False: {"plain": 40_000_000, "exit_10000": 40_000_000, "exit_1000": 10_000_000, "exit_100": 1_000_000,
            "breakpoints": 40_000_000, "step": 20_000, "unicorn": 10_000_000},
    True: {"plain": 1_000_000, "exit_10000": 1_000_000, "exit_1000": 250_000, "exit_100": 25_000,
           "breakpoints": 1_000_000, "step": 1_000, "unicorn": 500_000},
}
REPEATS = {False: 7, True: 5}
WARM_UP_ITERATIONS = 1_000


def assemble_loop() -> tuple[bytes, dict[str, int]]:
    """LOOP_SOURCE assembled at CODE_ADDRESS: the code bytes and the address of each global symbol."""
    with tempfile.TemporaryDirectory(prefix="xenrr-bench-engine-") as work:
        source, obj, binary = Path(work, "loop.S"), Path(work, "loop.o"), Path(work, "loop.bin")
        source.write_text(LOOP_SOURCE)
        for command in (["as", "--64", "-o", obj, source], ["objcopy", "-O", "binary", "-j", ".text", obj, binary]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{command[0]} failed on the benchmark loop: {done.stderr.strip()}")
        symbols = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
        addresses = {name: CODE_ADDRESS + int(value, 16)
                     for value, kind, name in (line.split() for line in symbols.splitlines()) if kind in "Tt"}
        return binary.read_bytes(), addresses


class IcicleLoop:
    """The loop on one VCpu, restartable from the same state and sliced however the caller asks."""

    def __init__(self, code: bytes, symbols: dict[str, int]):
        self.vcpu = VCpu.flat(MEMORY_BYTES, memory_base=CODE_ADDRESS)
        self.vcpu.write(CODE_ADDRESS, code)
        self._start, self._done, self._cold = symbols["start"], symbols["done"], symbols["cold"]

    def _run_to_hlt(self, chunk: int | None) -> None:
        vcpu = self.vcpu
        if chunk is None:
            while vcpu.step().reason == ExitReason.LIMIT:
                pass
            return
        while vcpu.run(vcpu.icount + chunk).reason == ExitReason.LIMIT:
            pass

    def measure(self, iterations: int, chunk: int | None, breakpoints: int = 0) -> dict:
        """Run the loop to its hlt with run(icount + chunk) calls (chunk None: step() calls), `breakpoints`
        unhit breakpoints set for the run; its instructions, seconds and checksum."""
        vcpu = self.vcpu
        vcpu.write(DATA_ADDRESS, bytes(0x1000))
        vcpu.set_reg("rdi", iterations)
        vcpu.set_reg("rbx", DATA_ADDRESS)
        vcpu.pc = self._start
        for offset in range(breakpoints):
            vcpu.add_breakpoint(self._cold + offset)
        first = vcpu.icount
        started = time.perf_counter()
        self._run_to_hlt(chunk)
        seconds = time.perf_counter() - started
        for offset in range(breakpoints):
            vcpu.remove_breakpoint(self._cold + offset)
        instructions = vcpu.icount - first
        if vcpu.pc != self._done + 1 or instructions != SETUP + PER_ITERATION * iterations + 1:
            raise RuntimeError(f"the loop did not end at its hlt: pc {vcpu.pc:#x}, {instructions} instructions")
        return {"instructions": instructions, "seconds": seconds, "checksum": f"{vcpu.reg('rax'):016x}"}


class UnicornLoop:
    """The same loop on unicorn with no hooks, from `start` to the `hlt` (which unicorn does not execute)."""

    def __init__(self, code: bytes, symbols: dict[str, int]):
        self.uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        self.uc.mem_map(CODE_ADDRESS, MEMORY_BYTES)
        self.uc.mem_write(CODE_ADDRESS, code)
        self._start, self._done = symbols["start"], symbols["done"]

    def measure(self, iterations: int) -> dict:
        uc = self.uc
        uc.mem_write(DATA_ADDRESS, bytes(0x1000))
        uc.reg_write(x86_const.UC_X86_REG_RDI, iterations)
        uc.reg_write(x86_const.UC_X86_REG_RBX, DATA_ADDRESS)
        started = time.perf_counter()
        uc.emu_start(self._start, self._done)
        seconds = time.perf_counter() - started
        if uc.reg_read(x86_const.UC_X86_REG_RIP) != self._done:
            raise RuntimeError("unicorn did not reach the loop's hlt")
        return {"instructions": SETUP + PER_ITERATION * iterations, "seconds": seconds,
                "checksum": f"{uc.reg_read(x86_const.UC_X86_REG_RAX):016x}"}


def _sides(code: bytes, symbols: dict[str, int]) -> dict[str, Callable[[int], dict]]:
    icicle, reference = IcicleLoop(code, symbols), UnicornLoop(code, symbols)
    return {"plain": lambda iterations: icicle.measure(iterations, BIG_LIMIT),
            "exit_10000": lambda iterations: icicle.measure(iterations, 10_000),
            "exit_1000": lambda iterations: icicle.measure(iterations, 1_000),
            "exit_100": lambda iterations: icicle.measure(iterations, 100),
            "breakpoints": lambda iterations: icicle.measure(iterations, BIG_LIMIT, BREAKPOINT_COUNT),
            "step": lambda iterations: icicle.measure(iterations, None),
            "unicorn": reference.measure}


def run(quick: bool) -> dict:
    iterations, repeats = ITERATIONS[quick], REPEATS[quick]
    code, symbols = assemble_loop()
    sides = _sides(code, symbols)
    warm_up = {mode: measure(WARM_UP_ITERATIONS)["checksum"] for mode, measure in sides.items()}
    if len(set(warm_up.values())) != 1:
        raise RuntimeError(f"the sides disagree on the loop's checksum: {warm_up}")
    samples: dict[str, list[dict]] = {mode: [] for mode, _ in MODES}
    for _ in range(repeats):                       # interleaved, so a host hiccup hits every side alike
        for mode, _ in MODES:
            samples[mode].append(sides[mode](iterations[mode]))
    medians = {mode: statistics.median(s["instructions"] / s["seconds"] for s in runs) for mode, runs in samples.items()}
    results: dict = {"repeats": repeats, "instructions_per_iteration": PER_ITERATION}
    for mode, runs in samples.items():
        checksums = {sample["checksum"] for sample in runs}
        if len(checksums) != 1:
            raise RuntimeError(f"{mode}: runs of the same loop disagree on the checksum: {checksums}")
        results[mode] = {"iterations": iterations[mode], "instructions": runs[0]["instructions"],
                         "checksum": checksums.pop(), "median_ips": medians[mode],
                         "ratio_to_plain": medians[mode] / medians["plain"],
                         "ratio_to_unicorn": medians[mode] / medians["unicorn"],
                         "median_seconds": statistics.median(sample["seconds"] for sample in runs),
                         "ips_runs": [sample["instructions"] / sample["seconds"] for sample in runs]}
    return results


def table(results: dict) -> str:
    lines = [f"engine throughput: {results['instructions_per_iteration']}-instruction assembly loop, "
             f"median of {results['repeats']} interleaved runs",
             f"{'':36} {'instructions':>12} {'Minstr/s':>9} {'vs (a)':>7} {'vs unicorn':>10} {'seconds':>8}"]
    for mode, label in MODES:
        row = results[mode]
        lines.append(f"{label:36} {row['instructions']:>12,} {row['median_ips'] / 1e6:>9.4g} "
                     f"{row['ratio_to_plain']:>#7.3g} {row['ratio_to_unicorn']:>#10.3g} {row['median_seconds']:>8.3f}")
    return "\n".join(lines)
