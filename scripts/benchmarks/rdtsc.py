"""What a guest's RDTSC costs: GRUB reads the TSC about every 130 instructions while it polls its console.

Owns one measurement on xen.vcpu.VCpu, side by side in one process, median of interleaved repetitions:
a loop of POLL_BODY instructions (register adds) and one TSC read, run to LOOP_INSTRUCTIONS retired
instructions with one `VCpu.run`, in three variants of the read:
- `nop`: no exit (the baseline);
- `rdtsc` (0f 31): the plain opcode, answered by the wrapper's fast path inside `run`;
- `rex.W rdtsc` (48 0f 31): the same read through the general decoder (every other emulated instruction's path).
Cost per RDTSC = (variant - nop) / reads. Invariant: every variant retires exactly LOOP_INSTRUCTIONS
instructions, and the TSC values the loop stores equal the instruction counts (checked at the end).
"""
from __future__ import annotations

import statistics
import time

from xen.vcpu import VCpu

BASE = 0x400000
POLL_BODY = 128                        # instructions of a loop iteration before its jump (GRUB: ~130 per read)
LOOP_INSTRUCTIONS = {False: 10_000_000, True: 1_000_000}
REPEATS = {False: 5, True: 2}
WARM_UP = 100_000
READS = {"nop": b"\x90", "rdtsc": b"\x0f\x31", "rex.W rdtsc": b"\x48\x0f\x31"}


def _loop(read: bytes) -> bytes:
    body = b"\x48\x83\xc3\x01" * (POLL_BODY - 2) + read + b"\x48\x89\xc1"   # add $1,%rbx ...; read; mov %rax,%rcx
    jump = -(len(body) + 2)
    return body + b"\xeb" + (jump & 0xFF).to_bytes(1, "little") if jump >= -128 else \
        body + b"\xe9" + (jump - 3 & 0xFFFFFFFF).to_bytes(4, "little")


def _time(read: bytes, instructions: int) -> tuple[float, int]:
    vcpu = VCpu.flat(0x2000, memory_base=BASE)
    vcpu.write(BASE, _loop(read))
    vcpu.pc = BASE
    vcpu.run(WARM_UP)                                        # translation happens here, untimed
    started = time.perf_counter()
    exit = vcpu.run(WARM_UP + instructions)
    seconds = time.perf_counter() - started
    instructions += WARM_UP
    if exit.icount != instructions:
        raise RuntimeError(f"{read.hex()}: stopped at {exit.icount} ({exit.reason})")
    period = POLL_BODY + 1                                   # the loop's instructions, its jump included
    if read != READS["nop"]:
        tsc = vcpu.reg("rcx") & 0xFFFFFFFF                   # a read is instruction POLL_BODY - 1 of its iteration
        if (tsc - (POLL_BODY - 1)) % period or not instructions - period < tsc <= instructions:
            raise RuntimeError(f"{read.hex()}: the last TSC read {tsc} is not that read's instruction count")
    return seconds, (instructions - WARM_UP) // period


def run(quick: bool) -> dict:
    instructions, repeats = LOOP_INSTRUCTIONS[quick], REPEATS[quick]
    samples: dict[str, list[float]] = {name: [] for name in READS}
    reads = 0
    for _ in range(repeats):
        for name, read in READS.items():
            seconds, reads = _time(read, instructions)
            samples[name].append(seconds)
    medians = {name: statistics.median(times) for name, times in samples.items()}
    per_read = {name: (medians[name] - medians["nop"]) / reads for name in READS if name != "nop"}
    return {"instructions": instructions, "reads": reads, "poll_body": POLL_BODY, "repeats": repeats,
            "seconds": medians, "runs": samples, "seconds_per_read": per_read,
            "grub_ns_per_instruction": {name: medians[name] / instructions * 1e9 for name in READS}}


def table(results: dict) -> str:
    lines = [f"RDTSC: a loop reading the TSC every {results['poll_body']} instructions, {results['instructions']:,} "
             f"instructions ({results['reads']:,} reads), median of {results['repeats']}",
             f"{'read':14} {'seconds':>8} {'ns/instr':>9} {'us per read':>12}"]
    for name, seconds in results["seconds"].items():
        per_read = results["seconds_per_read"].get(name)
        lines.append(f"{name:14} {seconds:>8.3f} {results['grub_ns_per_instruction'][name]:>9.1f} "
                     f"{per_read * 1e6 if per_read is not None else 0:>12.2f}")
    return "\n".join(lines)
