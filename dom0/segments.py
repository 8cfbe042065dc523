"""Parallel verification of one recording: one segment per interval between stored snapshots.

Owns the segments of a recording (segment 0 from the start to the first usable stored snapshot,
segment k from stored snapshot k-1 to stored snapshot k, the last one to the end of the log), verifying
one segment in this process (`verify_segment`: the `xenrr replay --segment K` unit), running the units
in N forked workers at once (`SegmentWorkers`, `xenrr replay --jobs N`) or as `replay --segment` processes
(`run_segment_unit`: dom0/batch.py runs those on Dask),
and merging their summaries into the one `xenrr replay --json` gives.

A segment starts from its stored snapshot, which is checked against the state digest logged at its
position before it is trusted (stub/timeline.py), and ends at the next snapshot's position, whose
digest (logged just before it) the replay checks on its way: consecutive segments overlap in that
digest, so the whole recording is verified, every digest once at least. A snapshot that turns out
unusable is skipped: its segment starts from the state before it (slower, as exact).

Invariant: the merged verdict is "verified" only when every segment is, and a divergence is reported
from the earliest segment that has one.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from dom0.replay import ReplaySession
from dom0.snapshots import SnapshotFile
from xen.inject import ReplayDivergence
from xen.replay import Mark

START = Mark(0, 0)        # a recording of a freshly built domain starts here (one of a running domain later)


def count_segments(recording: Path, warn: Callable[[str], None] = lambda problem: None) -> int:
    """How many segments `recording` has (one more than its usable stored snapshots); `warn` is told
    what is damaged (by default nothing: each unit reports the problems)."""
    stored = SnapshotFile.beside(recording, warn)
    count = len(segment_bounds(stored))
    if stored is not None:
        stored.close()
    return count


def segment_bounds(stored: SnapshotFile | None, start: Mark = START) -> list[Mark]:
    """Where the segments start: the recording's start, then every usable stored snapshot."""
    return [start] + ([entry.mark for entry in stored.usable] if stored is not None else [])


def parse_range(text: str) -> tuple[int, int]:
    """`K` or `K-L` (segments K to L): (K, L). ValueError in words."""
    first, _, last = text.partition("-")
    try:
        numbers = int(first), int(last or first)
    except ValueError:
        raise ValueError(f"a segment is K or K-L (numbers), not {text!r}") from None
    if numbers[0] < 0 or numbers[1] < numbers[0]:
        raise ValueError(f"a segment range K-L needs 0 <= K <= L, not {text!r}")
    return numbers


def group(count: int, units: int) -> list[tuple[int, int]]:
    """`count` segments in at most `units` runs of consecutive ones, as even as they come."""
    units = max(1, min(units, count))
    edges = [count * unit // units for unit in range(units + 1)]
    return [(edges[unit], edges[unit + 1] - 1) for unit in range(units)]


def verify_segment(session: ReplaySession, stored: SnapshotFile | None, first: int, last: int,
                   warn: Callable[[str], None]) -> dict:
    """Replay segments `first` to `last` (from the first's snapshot to the digest of the snapshot after
    the last) and check them; the summary. ValueError when the recording has no such segment."""
    from stub.timeline import Timeline        # the timeline restores and checks stored snapshots

    bounds = segment_bounds(stored, Mark(session.start_icount, 0))
    if last >= len(bounds):
        raise ValueError(f"segment {last} does not exist: the recording has segments 0 to {len(bounds) - 1}")
    start, end = bounds[first], (bounds[last + 1] if last + 1 < len(bounds) else None)
    timeline = Timeline(session, checkpoint_interval=2**62, stored=stored, warn=warn)
    replayer, vcpu = session.replayer, session.domain.vcpu
    divergence = None
    started_at = bounds[0]
    try:
        timeline.goto(start)
        started_at = timeline.position
        before_digests, before_inputs = replayer.digests_checked, replayer.inputs_applied
        replayer.run(end)
    except ReplayDivergence as error:
        divergence = str(error)
        before_digests = before_inputs = 0
    return {"session": str(session.log_path), "segment": f"{first}-{last}", "last": last + 1 == len(bounds),
            "segments": len(bounds),
            "from_icount": started_at.icount, "to_icount": vcpu.icount,
            "events": replayer.inputs_applied - before_inputs if divergence is None else replayer.inputs_applied,
            "instructions": vcpu.icount - started_at.icount,
            "digests_checked": replayer.digests_checked - before_digests,
            "verified": divergence is None, "divergence": divergence,
            "complete": end is None and replayer.recorded_outcome is not None,
            "recorded_outcome": replayer.recorded_outcome if end is None else None}


def segment_command(recording: Path, segments: tuple[int, int], image: Path | None) -> list[str]:
    """The command of one unit: `xenrr replay --json --segment K-L RECORDING`."""
    command = [sys.executable, "-m", "dom0.cli", "replay", "--json", "--segment", f"{segments[0]}-{segments[1]}",
               str(recording.resolve())]
    return command + (["--image", str(image.resolve())] if image is not None else [])


def run_segment_unit(recording: Path, segments: tuple[int, int], image: Path | None) -> dict:
    """Segments K-L verified by a child `xenrr replay --segment K-L`: its summary, or an error entry."""
    started = time.perf_counter()
    done = subprocess.run(segment_command(recording, segments, image), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    try:
        summary = json.loads(done.stdout)
    except json.JSONDecodeError:
        summary = None
    if not isinstance(summary, dict) or "segment" not in summary:
        reason = (summary or {}).get("error") if isinstance(summary, dict) else None
        last = reason or (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return _failed_unit(segments, last, seconds)
    return {**summary, "seconds": seconds}


def _failed_unit(segments: tuple[int, int], reason: str, seconds: float) -> dict:
    """The summary of a unit that could not be verified at all (`reason`: one line)."""
    number = f"{segments[0]}-{segments[1]}"
    return {"segment": number, "verified": False, "error": reason,
            "divergence": f"segment {number} could not be verified: {reason}",
            "events": 0, "instructions": 0, "digests_checked": 0, "complete": False, "recorded_outcome": None,
            "from_icount": None, "to_icount": None, "seconds": seconds}


class SegmentWorkers:
    """`xenrr replay --jobs N`'s units, each verified by a forked copy of this process (no interpreter to
    start, nothing to import; in a fork server's child, the engine it has ready too): started at once,
    so that they run while this process checks the recording itself; `results` waits for them."""

    def __init__(self, recording: Path, count: int, jobs: int, image: Path | None):
        import multiprocessing          # only --jobs forks workers

        context = multiprocessing.get_context("fork")
        self._started = time.perf_counter()
        self._workers = []
        for unit in group(count, jobs):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_verify_unit, args=(recording, unit, image, sender), daemon=True,
                                      name=f"xenrr-segment-{unit[0]}-{unit[1]}")
            process.start()
            sender.close()
            self._workers.append((unit, process, receiver))

    @property
    def pids(self) -> list[int]:
        return [process.pid for _, process, _ in self._workers]

    def results(self, progress: Callable[[int], None] = lambda done: None) -> list[dict]:
        """Every unit's summary in order (a worker that died: an error entry naming how)."""
        from multiprocessing.connection import wait

        results: list[dict | None] = [None] * len(self._workers)
        waiting = {receiver: index for index, (_, _, receiver) in enumerate(self._workers)}
        while waiting:
            for receiver in wait(list(waiting)):
                index = waiting.pop(receiver)
                unit, process, _ = self._workers[index]
                try:
                    summary = receiver.recv()
                except (EOFError, OSError):
                    summary = None
                receiver.close()
                process.join()
                seconds = time.perf_counter() - self._started
                if summary is None:
                    code = process.exitcode
                    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
                    summary = _failed_unit(unit, f"its worker process ended ({how})", seconds)
                elif "segment" not in summary:
                    summary = _failed_unit(unit, summary["error"], seconds)
                results[index] = {**summary, "seconds": seconds}
                progress(len(self._workers) - len(waiting))
        return results

    def stop(self) -> None:
        """End the workers (the recording turned out unusable here)."""
        for _, process, receiver in self._workers:
            process.kill()
            process.join()
            receiver.close()


def _verify_unit(recording: Path, segments: tuple[int, int], image: Path | None, sender) -> None:
    """In a forked worker: verify segments K-L and send the summary (or {"error": one line})."""
    quiet = lambda problem: None        # noqa: E731 - the parent has said what is damaged, once
    try:
        session = ReplaySession(recording, image)
        summary = verify_segment(session, SnapshotFile.beside(recording, quiet), segments[0], segments[1], quiet)
        session.close()
    except Exception as error:          # an unusable recording, a damaged part: the unit says why, in one line
        summary = {"error": str(error).splitlines()[0] if str(error) else type(error).__name__}
    sender.send(summary)
    sender.close()


def merge(summaries: list[dict]) -> dict:
    """The summary of the whole recording from its segments' (in order)."""
    diverged = [summary for summary in summaries if not summary["verified"]]
    last = summaries[-1]
    return {"segments": max(summary.get("segments", 0) for summary in summaries), "units": len(summaries),
            "verified": not diverged,
            "divergence": diverged[0]["divergence"] if diverged else None,
            "events": sum(summary["events"] for summary in summaries),
            "instructions": last["to_icount"] if last["to_icount"] is not None else 0,
            "digests_checked": sum(summary["digests_checked"] for summary in summaries),
            "complete": last["complete"], "recorded_outcome": last["recorded_outcome"]}
