"""Reverse execution: latency of reverse-continue and goto over a long recording, and checkpoint memory.

Owns one measurement of the timeline (stub/timeline.py) in process, without GDB in the loop (the
remote protocol adds a constant few ms). The recording is kbdshell typing `bench N` with a virtual
clock, then `halt`: `handle_key` runs for every key, so between the Enter that starts the bench and
the `h` of `halt` it is not hit for ~N*8 instructions. From a position D instructions after that
Enter, reverse-continue with a breakpoint on `handle_key` must travel exactly D back.
Invariant: every latency is measured from a timeline that has already replayed the whole recording
forward once (as a debugging session has), and every stop is checked to be the expected hit.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from elftools.elf.elffile import ELFFile

from dom0.replay import ReplaySession
from stub.timeline import Timeline

ROOT = Path(__file__).resolve().parents[2]
KBDSHELL = ROOT / "guests" / "kbdshell" / "kbdshell.elf"
ITERATIONS = {False: 130_000_000, True: 2_000_000}      # ~8 instructions per iteration
DISTANCES = {False: (10**6, 10**8, 10**9), True: (10**5, 10**6)}
REPEATS = 3


def _symbol(name: str) -> int:
    with KBDSHELL.open("rb") as file:
        [symbol] = ELFFile(file).get_section_by_name(".symtab").get_symbol_by_name(name)
        return symbol["st_value"]


def _record(directory: Path, iterations: int) -> Path:
    log = directory / "bench.xrr"
    subprocess.run([sys.executable, "-m", "dom0.cli", "record", str(KBDSHELL), "-o", str(log), "--clock", "virtual",
                    "--keys", rf"bench {iterations}\rhalt\r"], check=True, capture_output=True, cwd=ROOT)
    return log


def _timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def run(quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        log = _record(Path(directory), ITERATIONS[quick])
        session = ReplaySession(log)
        timeline = Timeline(session)
        forward_seconds, end = _timed(timeline.cont)
        instructions = end.mark.icount
        events = timeline.events()
        enter = next(e for e in events if e.kind_name == "console-input" and e.payload == b"\r")
        timeline.add_breakpoint(_symbol("handle_key"))
        timeline.goto(end.mark)
        # the handle_key hit for the Enter: the last hit before the bench loop
        timeline.goto_event(enter.number + 1)
        hit = timeline.reverse_cont()
        results = {"recorded_instructions": instructions, "forward_replay_seconds": forward_seconds,
                   "guest_ram_bytes": session.domain.vcpu.memory_size, "reverse_continue": {}, "goto_event": {}}
        for distance in DISTANCES[quick]:
            if hit.mark.icount + distance >= instructions:
                continue
            samples = []
            for _ in range(REPEATS):
                timeline.goto_icount(hit.mark.icount + distance)
                seconds, stop = _timed(timeline.reverse_cont)
                if stop.mark != hit.mark:
                    raise RuntimeError(f"reverse-continue stopped at {stop.mark}, expected {hit.mark}")
                samples.append(seconds)
            results["reverse_continue"][str(distance)] = statistics.median(samples)
        timeline.remove_breakpoint(_symbol("handle_key"))
        for label, number in (("first", 1), ("middle", len(events) // 2), ("last", len(events))):
            samples = []
            for _ in range(REPEATS):
                timeline.goto(end.mark)
                seconds, _ = _timed(lambda: timeline.goto_event(number))
                samples.append(seconds)
            results["goto_event"][label] = statistics.median(samples)
        results["checkpoints"] = len(timeline.checkpoints)
        results["checkpoint_bytes"] = timeline.checkpoint_bytes()
        results["checkpoint_ram_ratio"] = timeline.checkpoint_bytes() / session.domain.vcpu.memory_size
        session.close()
    return results


def table(results: dict) -> str:
    lines = [f"recording: {results['recorded_instructions']:,} instructions, forward replay in the debugger "
             f"{results['forward_replay_seconds']:.2f} s",
             "| operation | median latency (s) | target (s) |", "|---|---:|---:|"]
    targets = {str(10**6): 0.05, str(10**8): 0.2, str(10**9): 1.0}
    for distance, seconds in results["reverse_continue"].items():
        lines.append(f"| reverse-continue {int(distance):.0e} instructions back | {seconds:.3f} | "
                     f"{targets.get(distance, '-')} |")
    for label, seconds in results["goto_event"].items():
        lines.append(f"| rr-goto {label} event (from the end) | {seconds:.3f} | 0.1 |")
    lines.append(f"| checkpoints held | {results['checkpoints']} | - |")
    lines.append(f"| checkpoint memory / guest RAM | {results['checkpoint_ram_ratio']:.2f} | < 2 |")
    return "\n".join(lines)
