"""SMP guests: the speed of a two-vCPU domain against one vCPU, and what the quantum does to speed and to races.

Owns two measurements on kbdshell under the virtual clock (so every run is a function of its input):
- speed: guest instructions per second of `bench N` on a one-vCPU domain, against `par N` on a two-vCPU
  domain (both vCPUs busy, taking turns on the one engine) at several quanta, and against `bench N` on a
  two-vCPU domain whose second vCPU is up but idle (after `par 1`). Each figure is by difference with the
  same session typing N = 0 (instructions from the final count, seconds around Scheduler.run), medians over
  repeats taken interleaved;
- race frequency: at each quantum, one session typing `par N` for a series of N; the share of runs whose
  total lost updates (kbdshell's deliberate unlocked read-modify-write) and the mean share of updates lost.
Invariant: only measures; nothing asserts its figures (docs/benchmarks.md holds a run's table).
"""
from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

from dom0.consoleinput import KeyScript, parse_key_script
from xen.builder import DomainImage, build_domain
from xen.domain import Domain
from xen.sched import Scheduler

KBDSHELL = Path(__file__).resolve().parents[2] / "guests" / "kbdshell" / "kbdshell.elf"
MEMORY_BYTES = 16 * 1024 * 1024
ITERATIONS = {False: 1_000_000, True: 200_000}         # par N, by `quick`
BENCH_ITERATIONS = {False: 10_000_000, True: 2_000_000}  # bench N: ~ as many instructions as par N
REPEATS = {False: 3, True: 1}
QUANTA = (1_000, 10_000, 100_000, 1_000_000)
RACE_QUANTA = (1_000, 3_000, 10_000, 30_000, 100_000, 300_000)
RACE_RUNS = {False: [300 + 97 * k for k in range(30)], True: [300 + 97 * k for k in range(6)]}


def _session(image: DomainImage, vcpus: int, quantum: int, keys: str) -> tuple[int, float, str]:
    output = bytearray()
    domain = Domain(image, vcpus=vcpus, quantum=quantum, console_output=output.extend)
    scheduler = Scheduler(domain, KeyScript(parse_key_script(keys + r"halt\r")), clock="virtual")
    started = time.perf_counter()
    outcome = scheduler.run()
    seconds = time.perf_counter() - started
    if outcome.reason != "shutdown":
        raise RuntimeError(f"session {keys!r} did not complete: {outcome}")
    return outcome.icount, seconds, output.decode()


def _speed(image: DomainImage, vcpus: int, quantum: int, prefix: str, command: str, iterations: int) -> float:
    """Instructions per second spent in `command N`, by difference with `command 0`."""
    busy = _session(image, vcpus, quantum, rf"{prefix}{command} {iterations}\r")
    empty = _session(image, vcpus, quantum, rf"{prefix}{command} 0\r")
    return (busy[0] - empty[0]) / (busy[1] - empty[1])


def _races(image: DomainImage, quantum: int, runs: list[int]) -> dict:
    _, _, output = _session(image, 2, quantum, "".join(rf"par {n}\r" for n in runs))
    totals = [(int(total), int(of)) for total, of in re.findall(r"par: (\d+) of (\d+) updates", output)]
    if len(totals) != len(runs):
        raise RuntimeError(f"expected {len(runs)} par results at quantum {quantum}, got {totals}")
    return {"runs": len(totals), "racy_runs": sum(total < of for total, of in totals),
            "lost_share": statistics.mean((of - total) / of for total, of in totals)}


def run(quick: bool) -> dict:
    image = build_domain(KBDSHELL.read_bytes(), MEMORY_BYTES)
    iterations, bench_iterations, repeats = ITERATIONS[quick], BENCH_ITERATIONS[quick], REPEATS[quick]
    samples: dict[str, list[float]] = {"one_vcpu_bench": [], "two_vcpus_bench_one_busy": [],
                                       **{f"two_vcpus_par_q{quantum}": [] for quantum in QUANTA}}
    for _ in range(repeats):                   # interleaved: a host hiccup hits every configuration alike
        samples["one_vcpu_bench"].append(_speed(image, 1, QUANTA[-2], "", "bench", bench_iterations))
        samples["two_vcpus_bench_one_busy"].append(_speed(image, 2, QUANTA[-2], r"par 1\r", "bench", bench_iterations))
        for quantum in QUANTA:
            samples[f"two_vcpus_par_q{quantum}"].append(_speed(image, 2, quantum, "", "par", iterations))
    speeds = {name: statistics.median(values) for name, values in samples.items()}
    return {"iterations": iterations, "bench_iterations": bench_iterations, "repeats": repeats,
            "instructions_per_second": speeds,
            "ratio_to_one_vcpu": {name: speed / speeds["one_vcpu_bench"] for name, speed in speeds.items()},
            "races": {str(quantum): _races(image, quantum, RACE_RUNS[quick]) for quantum in RACE_QUANTA}}


def table(results: dict) -> str:
    lines = [f"SMP speed (virtual clock, medians of {results['repeats']}; par {results['iterations']}, "
             f"bench {results['bench_iterations']})", f"  {'configuration':<34} {'instructions/s':>15} {'vs 1 vCPU':>10}"]
    for name, speed in results["instructions_per_second"].items():
        lines.append(f"  {name:<34} {speed:>15,.0f} {results['ratio_to_one_vcpu'][name]:>9.2f}x")
    lines.append("The race (par N over a series of N): runs that lost updates, mean share of updates lost")
    lines.append(f"  {'quantum':>9} {'racy runs':>10} {'lost':>8}")
    for quantum, race in results["races"].items():
        lines.append(f"  {int(quantum):>9,} {race['racy_runs']:>4} / {race['runs']:<3} {race['lost_share']:>7.1%}")
    return "\n".join(lines)
