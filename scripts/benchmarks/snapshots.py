"""Seekable recordings: what stored snapshots cost while recording, and what they buy.

Owns three measurements on kbdshell running `bench N` under the virtual clock (one timer event every
10^7 instructions, so events are spread evenly over the recording):
- record overhead: the same session recorded in process (dom0.record.record) without snapshots and
  with the default `--snapshot-every`, alternately, REPEATS times each; the median wall times side by
  side and their ratio (on a shared machine this ratio is noise-bound), and the snapshots' own CPU
  cost measured exactly - the capture the guest waits for plus the snapshot thread's CPU time - as a
  fraction of the recording's wall time; what the snapshots cost in bytes per second of recording and
  per 10^9 instructions;
- goto from a cold session, in process: a new ReplaySession (engine created, domain built) and Timeline
  with the stored snapshots, sent to event E: everything but the interpreter's start-up and imports;
- goto from a cold start: `xenrr replay --from E --until-event E` as a fresh process (interpreter
  start-up, imports, domain build, nearest snapshot restored and checked, replay to E), to events
  spread over the recording, with the snapshots (median of GOTO_REPEATS) and without them (the log
  alone: replay from the start, median of REPEATS); and the extrapolation to a 10^11-instruction
  recording: a goto's cost does not depend on the position but on the distance to the snapshot before
  it (at most one interval), so it is the median over the positions plus indexing the extra snapshot
  headers such a recording has (measured per header), and the worst position likewise;
  the same command through a fork server (dom0/forkserver.py: the client's start, a forked child with
  everything imported and an engine ready), extrapolated the same way;
- parallel verification: `xenrr replay --jobs 1` against `--jobs 2` (forked workers), median wall times and
  the ratio, as fresh processes and through the fork server.
Invariant: every timing is a median of runs made side by side in one run of the benchmark.
"""
from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.fixed_costs import fork_server, served_command
from dom0.consoleinput import KeyScript, parse_key_script
from dom0.record import record
from dom0.replay import ReplaySession
from dom0.snapshots import DEFAULT_EVERY_INSTRUCTIONS, Interval, SnapshotFile, snapshot_path
from dom0.toolstack import connect_xenstore, xenstore_config
from xen.builder import build_domain
from xen.domain import Domain

ROOT = Path(__file__).resolve().parents[2]
KBDSHELL = ROOT / "guests" / "kbdshell" / "kbdshell.elf"
ITERATIONS = {False: 500_000_000, True: 12_000_000}        # ~8 instructions per iteration
REPEATS = {False: 3, True: 1}
GOTO_REPEATS = {False: 5, True: 1}
GOTO_POSITIONS = 6
TARGET_INSTRUCTIONS = 10**11
MEMORY_BYTES = 16 * 1024 * 1024


def _record(path: Path, iterations: int, every: Interval) -> dict:
    domain = Domain(build_domain(KBDSHELL.read_bytes(), MEMORY_BYTES))
    connect_xenstore(domain, xenstore_config(KBDSHELL))
    keys = KeyScript(parse_key_script(rf"bench {iterations}\rhalt\r"))
    started = time.perf_counter()
    result = record(domain, KBDSHELL, keys, path, clock="virtual", max_instructions=None, linger_ns=10**9,
                    overwrite=True, snapshot_every=every)
    return {"seconds": time.perf_counter() - started, "instructions": result.outcome.icount,
            "snapshots": result.snapshots, "snapshot_bytes": result.snapshot_bytes,
            "snapshot_cpu": result.snapshot_capture_seconds + result.snapshot_write_cpu_seconds,
            "capture": result.snapshot_capture_seconds}


def _cli_seconds(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dom0.cli", *args], check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - started


def _served_seconds(environment: dict[str, str], *args: str) -> float:
    """`xenrr ARGS` as users start it, through the benchmark's fork server."""
    started = time.perf_counter()
    subprocess.run(served_command(*args), check=True, capture_output=True, cwd=ROOT, env=environment)
    return time.perf_counter() - started


def _session_goto_seconds(log: Path, event_number: int, stored: bool) -> float:
    """A cold session (new engine, domain built) and timeline sent to just before event `event_number`."""
    from stub.timeline import Timeline

    started = time.perf_counter()
    session = ReplaySession(log)
    timeline = Timeline(session, stored=SnapshotFile.beside(log, lambda message: None) if stored else None)
    timeline.goto_event(event_number)
    seconds = time.perf_counter() - started
    session.close()
    return seconds


def _header_seconds(snapshots: Path) -> float:
    """What indexing one entry of the companion file costs (opening it, per entry)."""
    times = []
    for _ in range(5):
        started = time.perf_counter()
        stored = SnapshotFile(snapshots)
        count = len(stored.entries)
        stored.close()
        times.append((time.perf_counter() - started) / max(count, 1))
    return statistics.median(times)


def run(quick: bool) -> dict:
    iterations, repeats = ITERATIONS[quick], REPEATS[quick]
    default = Interval(instructions=DEFAULT_EVERY_INSTRUCTIONS) if not quick else Interval(instructions=10**7)
    with tempfile.TemporaryDirectory() as directory, fork_server() as environment:
        plain_log, log = Path(directory) / "plain.xrr", Path(directory) / "snap.xrr"
        plain_runs, snap_runs = [], []
        for _ in range(repeats):
            plain_runs.append(_record(plain_log, iterations, Interval()))
            snap_runs.append(_record(log, iterations, default))
        plain_seconds = statistics.median(run["seconds"] for run in plain_runs)
        snap_seconds = statistics.median(run["seconds"] for run in snap_runs)
        instructions = snap_runs[-1]["instructions"]
        cpu_fraction = statistics.median(run["snapshot_cpu"] / run["seconds"] for run in snap_runs)
        capture_fraction = statistics.median(run["capture"] / run["seconds"] for run in snap_runs)
        snapshot_bytes = snap_runs[-1]["snapshot_bytes"]

        events = ReplaySession(log).events()
        picks = [events[round(index * (len(events) - 1) / (GOTO_POSITIONS - 1))] for index in range(GOTO_POSITIONS)]
        bare = Path(directory) / "bare"
        bare.mkdir()
        shutil.copy(log, bare / log.name)
        gotos = []
        for event in picks:
            goto = ("replay", "--quiet", "--from", str(event.number), "--until-event", str(event.number))
            with_snapshots = statistics.median(_cli_seconds(*goto, str(log)) for _ in range(GOTO_REPEATS[quick]))
            served = statistics.median(_served_seconds(environment, *goto, str(log))
                                       for _ in range(GOTO_REPEATS[quick]))
            without = statistics.median(
                _cli_seconds("replay", "--quiet", "--from", str(event.number), "--until-event", str(event.number),
                             str(bare / log.name)) for _ in range(repeats))
            in_process = statistics.median(_session_goto_seconds(log, event.number, True)
                                           for _ in range(GOTO_REPEATS[quick]))
            in_process_without = statistics.median(_session_goto_seconds(log, event.number, False)
                                                   for _ in range(repeats))
            gotos.append({"event": event.number, "icount": event.icount, "seconds_with_snapshots": round(with_snapshots, 3),
                          "served_seconds_with_snapshots": round(served, 3),
                          "seconds_from_the_start": round(without, 3),
                          "session_seconds_with_snapshots": round(in_process, 3),
                          "session_seconds_from_the_start": round(in_process_without, 3)})
        per_header = _header_seconds(snapshot_path(log))
        stored = SnapshotFile(snapshot_path(log))
        count = len(stored.entries)
        stored.close()
        every = default.instructions
        extra_headers = TARGET_INSTRUCTIONS // every - count
        typical = statistics.median(goto["seconds_with_snapshots"] for goto in gotos)
        worst = max(goto["seconds_with_snapshots"] for goto in gotos)
        served_typical = statistics.median(goto["served_seconds_with_snapshots"] for goto in gotos)
        served_worst = max(goto["served_seconds_with_snapshots"] for goto in gotos)
        session_typical = statistics.median(goto["session_seconds_with_snapshots"] for goto in gotos)
        session_worst = max(goto["session_seconds_with_snapshots"] for goto in gotos)

        jobs, served_jobs = {}, {}
        for n in (1, 2):
            jobs[n] = statistics.median(_cli_seconds("replay", "--quiet", "--jobs", str(n), str(log))
                                        for _ in range(repeats))
            served_jobs[n] = statistics.median(_served_seconds(environment, "replay", "--quiet", "--jobs", str(n),
                                                               str(log)) for _ in range(repeats))
        full = statistics.median(_cli_seconds("replay", "--quiet", str(log)) for _ in range(repeats))
    return {
        "instructions": instructions, "snapshot_every": every, "snapshots": count,
        "record_seconds_without": round(plain_seconds, 3), "record_seconds_with": round(snap_seconds, 3),
        "record_overhead_ratio": round(snap_seconds / plain_seconds, 4),
        "snapshot_cpu_fraction": round(cpu_fraction, 4), "snapshot_capture_fraction": round(capture_fraction, 4),
        "snapshot_bytes": snapshot_bytes,
        "snapshot_bytes_per_second": round(snapshot_bytes / snap_seconds),
        "snapshot_bytes_per_1e9_instructions": round(snapshot_bytes * 10**9 / instructions),
        "goto_cold": gotos,
        "index_seconds_per_snapshot": per_header,
        "goto_cold_1e11_extrapolated_seconds": round(typical + extra_headers * per_header, 3),
        "goto_cold_1e11_extrapolated_worst_seconds": round(worst + extra_headers * per_header, 3),
        "goto_served_1e11_extrapolated_seconds": round(served_typical + extra_headers * per_header, 3),
        "goto_served_1e11_extrapolated_worst_seconds": round(served_worst + extra_headers * per_header, 3),
        "goto_session_1e11_extrapolated_seconds": round(session_typical + extra_headers * per_header, 3),
        "goto_session_1e11_extrapolated_worst_seconds": round(session_worst + extra_headers * per_header, 3),
        "replay_seconds": round(full, 3), "replay_jobs_1_seconds": round(jobs[1], 3),
        "replay_jobs_2_seconds": round(jobs[2], 3), "jobs_speedup": round(jobs[1] / jobs[2], 3),
        "served_replay_jobs_1_seconds": round(served_jobs[1], 3), "served_replay_jobs_2_seconds": round(served_jobs[2], 3),
        "served_jobs_speedup": round(served_jobs[1] / served_jobs[2], 3),
    }


def table(results: dict) -> str:
    lines = [f"recording: kbdshell bench, {results['instructions']:,} instructions, a snapshot every "
             f"{results['snapshot_every']:,} ({results['snapshots']} snapshots)",
             f"record without snapshots {results['record_seconds_without']:.3f} s, with "
             f"{results['record_seconds_with']:.3f} s: ratio {results['record_overhead_ratio']:.4f}; snapshots' CPU "
             f"{results['snapshot_cpu_fraction']:.2%} of the recording's wall time "
             f"(the guest waited {results['snapshot_capture_fraction']:.2%})",
             f"snapshots: {results['snapshot_bytes']:,} bytes = {results['snapshot_bytes_per_second']:,} bytes per "
             f"second of recording, {results['snapshot_bytes_per_1e9_instructions']:,} per 10^9 instructions",
             "goto (s)       process: a fresh `xenrr replay --from E --until-event E` (in-process); fork server: "
             "the same command through it; session: in process, cold session and timeline",
             f"{'event':>6} {'icount':>14} {'process, snapshots':>19} {'fork server, snapshots':>23} "
             f"{'process, no snapshots':>22} {'session, snapshots':>19} {'session, no snapshots':>22}"]
    lines += [f"{goto['event']:>6} {goto['icount']:>14,} {goto['seconds_with_snapshots']:>19.3f} "
              f"{goto['served_seconds_with_snapshots']:>23.3f} "
              f"{goto['seconds_from_the_start']:>22.3f} {goto['session_seconds_with_snapshots']:>19.3f} "
              f"{goto['session_seconds_from_the_start']:>22.3f}" for goto in results["goto_cold"]]
    lines += [f"goto from a cold start on a 10^11-instruction recording (extrapolated): "
              f"{results['goto_cold_1e11_extrapolated_seconds']:.3f} s typical, "
              f"{results['goto_cold_1e11_extrapolated_worst_seconds']:.3f} s worst as a process; through the fork "
              f"server {results['goto_served_1e11_extrapolated_seconds']:.3f} s typical, "
              f"{results['goto_served_1e11_extrapolated_worst_seconds']:.3f} s worst; in process "
              f"{results['goto_session_1e11_extrapolated_seconds']:.3f} s typical, "
              f"{results['goto_session_1e11_extrapolated_worst_seconds']:.3f} s worst "
              f"({results['index_seconds_per_snapshot'] * 1e6:.1f} us to index each snapshot)",
              f"replay {results['replay_seconds']:.3f} s; --jobs 1 {results['replay_jobs_1_seconds']:.3f} s, --jobs 2 "
              f"{results['replay_jobs_2_seconds']:.3f} s: speed-up {results['jobs_speedup']:.2f}; through the fork "
              f"server --jobs 1 {results['served_replay_jobs_1_seconds']:.3f} s, --jobs 2 "
              f"{results['served_replay_jobs_2_seconds']:.3f} s: speed-up {results['served_jobs_speedup']:.2f}"]
    return "\n".join(lines)
