"""Reverse execution: latency of reverse-continue and goto over a long recording, and checkpoint memory.

Owns one measurement of the timeline (stub/timeline.py) in process, without GDB in the loop (the
remote protocol adds a constant few ms). The recording is kbdshell typing `bench N` with a virtual
clock, then `halt`: `handle_key` runs for every key, so between the Enter that starts the bench and
the `h` of `halt` it is not hit for ~N*8 instructions. From a position D instructions after that
Enter, reverse-continue with a breakpoint on `handle_key` must travel exactly D back.

Reverse watch: a second recording computes a deeply nested `calc` (the only code that writes the deep
stack page watched) then runs `bench` for 10^10 instructions. A write watchpoint on the deepest stack
word, from D = 10^9 and 10^10 instructions after its last write: reverse-continue skips the segments
that did not write its page (stub/timeline.py), so its latency should not grow with D. The ratio of
the two, and of each to the linear breakpoint scan over 10^9 measured in the same run, are reported.

Invariant: every latency is measured from a timeline that has already replayed the whole recording
forward once (as a debugging session has), every stop is checked to be the expected hit, and the hits
a scan keeps are dropped before each measurement, so that every figure is that of a scan.
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
from xen.vcpu import PAGE_MASK, PAGE_SIZE

ROOT = Path(__file__).resolve().parents[2]
KBDSHELL = ROOT / "guests" / "kbdshell" / "kbdshell.elf"
ITERATIONS = {False: 130_000_000, True: 2_000_000}      # ~8 instructions per iteration
DISTANCES = {False: (10**6, 10**8, 10**9), True: (10**5, 10**6)}
WATCH_ITERATIONS = {False: 1_300_000_000, True: 2_000_000}
WATCH_DISTANCES = {False: (10**9, 10**10), True: (10**5, 10**7)}
DEEP_CALC = "((((((((((1+2))))))))))*3"
REPEATS = 3


def _symbol(name: str) -> int:
    with KBDSHELL.open("rb") as file:
        [symbol] = ELFFile(file).get_section_by_name(".symtab").get_symbol_by_name(name)
        return symbol["st_value"]


def _record(directory: Path, keys: str, name: str = "bench.xrr") -> Path:
    log = directory / name
    subprocess.run([sys.executable, "-m", "dom0.cli", "record", str(KBDSHELL), "-o", str(log), "--clock", "virtual",
                    "--keys", keys], check=True, capture_output=True, cwd=ROOT)
    return log


def _timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def run(quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        log = _record(Path(directory), rf"bench {ITERATIONS[quick]}\rhalt\r")
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
                timeline.drop_kept_hits()
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
        results["reverse_watch"] = _reverse_watch(Path(directory), quick)
    linear = results["reverse_continue"].get(str(10**9))
    watch = results["reverse_watch"]["reverse_continue"]
    near, far = (watch[str(distance)] for distance in WATCH_DISTANCES[quick])
    results["reverse_watch"]["far_to_near_ratio"] = far / near
    if linear:
        results["reverse_watch"]["to_breakpoint_scan_ratio"] = {d: seconds / linear for d, seconds in watch.items()}
    return results


def _deepest_stack_word(timeline: Timeline) -> int:
    """The lowest non-zero word of the stack below its top page (written by calc's deepest frame)."""
    bottom = (_symbol("boot_stack") + PAGE_SIZE - 1) & PAGE_MASK
    for page in range(bottom, _symbol("boot_stack_top") & PAGE_MASK, PAGE_SIZE):
        words = timeline.vcpu.read(page, PAGE_SIZE)
        for offset in range(0, PAGE_SIZE, 8):
            if any(words[offset:offset + 8]):
                return page + offset
    raise RuntimeError("the nested calc wrote nothing below the stack's top page")


def _reverse_watch(directory: Path, quick: bool) -> dict:
    """Write watch + reverse-continue from far after the watched word's last write."""
    log = _record(directory, rf"calc {DEEP_CALC}\rbench {WATCH_ITERATIONS[quick]}\rhalt\r", "watch.xrr")
    session = ReplaySession(log)
    timeline = Timeline(session)
    end = timeline.cont().mark
    address = _deepest_stack_word(timeline)
    timeline.add_watchpoint(address, 8, "w")
    write = timeline.reverse_cont()
    if write.reason != "watchpoint" or write.watch_address != address:
        raise RuntimeError(f"the watch on {address:#x} found {write}")
    results = {"recorded_instructions": end.icount, "reverse_continue": {}, "instructions_scanned": {}}
    for distance in WATCH_DISTANCES[quick]:
        samples, scanned = [], []
        for _ in range(REPEATS):
            timeline.goto_icount(write.mark.icount + distance)
            timeline.drop_kept_hits()
            before = timeline.instructions_scanned
            seconds, stop = _timed(timeline.reverse_cont)
            if stop.mark != write.mark:
                raise RuntimeError(f"watch reverse-continue stopped at {stop.mark}, expected {write.mark}")
            samples.append(seconds)
            scanned.append(timeline.instructions_scanned - before)
        results["reverse_continue"][str(distance)] = statistics.median(samples)
        results["instructions_scanned"][str(distance)] = statistics.median(scanned)
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
    watch = results["reverse_watch"]
    watch_targets = {str(10**9): 0.05, str(10**10): 0.2}
    lines += ["", f"reverse watch recording: {watch['recorded_instructions']:,} instructions",
              "| operation | median latency (s) | instructions replayed | target (s) |", "|---|---:|---:|---:|"]
    for distance, seconds in watch["reverse_continue"].items():
        lines.append(f"| watch + reverse-continue {int(distance):.0e} instructions after the write | {seconds:.3f} | "
                     f"{watch['instructions_scanned'][distance]:,.0f} | {watch_targets.get(distance, '-')} |")
    lines.append(f"| ratio: farther / nearer watch reverse-continue | {watch['far_to_near_ratio']:.2f} | - | ~1 |")
    for distance, ratio in watch.get("to_breakpoint_scan_ratio", {}).items():
        lines.append(f"| ratio: watch {int(distance):.0e} back / breakpoint scan 1e+09 back | {ratio:.3f} | - | - |")
    return "\n".join(lines)
