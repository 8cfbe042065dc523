"""Checks and verifications of many recordings on Dask: `xenrr check` and `xenrr verify` over a corpus.

Owns the batch runner: telling recordings from check scripts (by content: a recording starts with the
log's magic bytes, whatever its name), expanding directories and globs, running one work unit per
recording on a Dask cluster, and reporting the results as a table, JSON or JUnit XML with one exit
status. The cluster is a `distributed.LocalCluster` of worker processes on the loopback interface by
default, or the scheduler at `--scheduler tcp://HOST:PORT` (or DASK_SCHEDULER_ADDRESS); Dask does
all the scheduling, retrying and failure detection.

A work unit is the single-recording command itself, `xenrr check --json RECORDING SCRIPT...` or
`xenrr replay --json RECORDING` (with `verify --segments`, one unit per segment between stored
snapshots, `xenrr replay --json --segment K-K RECORDING`, merged per recording by dom0/segments.py),
run as a child process of the Dask worker: the unit's verdict is
exactly what that command says of the recording alone, and pytest, GDB and the engine of one unit
never share a process with another's. A unit whose worker dies is retried by Dask once
(ALLOWED_FAILURES on the local cluster) and then reported as crashed. The local cluster hands a worker
one unit at a time (worker-saturation 1.0): Dask counts a worker's death against every unit assigned to
it, so a unit queued behind one that kills its worker would be reported crashed with it.

Invariant: every recording given gets exactly one `UnitResult`, whatever happens to the others (a
failing, damaged or unusable recording, a crashing worker); the exit status is the first that
applies of EXIT_FAILED (a check failed, a replay diverged, a worker crashed), EXIT_UNUSABLE (a
recording cannot be replayed at all), EXIT_DAMAGED (a log is damaged or incomplete; its valid part
verified), else EXIT_PASSED.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from dom0.logfile import FILE_MAGIC, count_phrase

EXIT_PASSED, EXIT_FAILED, EXIT_UNUSABLE, EXIT_DAMAGED = 0, 1, 2, 3
ALLOWED_FAILURES = 1                    # a unit whose worker dies twice is reported as crashed
LOCAL_CLUSTER_CONFIG = {"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                        "distributed.scheduler.worker-saturation": 1.0}    # one unit per worker at a time
KILL_WORKER_HOOK = "XENRR_BATCH_TEST_KILL_WORKER"   # tests only: a recording name whose unit kills its worker
UNIT_STATUS = {0: "passed", 1: "failed", 2: "unusable", 3: "damaged"}     # a unit command's exit status


class BatchError(Exception):
    """Arguments or a cluster that the batch cannot run with: one line (exit status 2)."""


@dataclass(frozen=True)
class UnitResult:
    """How the work unit of one recording ended. `status` is passed, failed, damaged, unusable or
    crashed; `detail` says why in one line; `checks` holds each check's result (`xenrr check` only)."""
    recording: str
    status: str
    detail: str
    seconds: float
    checks: list[dict] = field(default_factory=list)


def is_recording(path: Path) -> bool:
    """A file that starts with the log's magic bytes, whatever its name."""
    try:
        with open(path, "rb") as file:
            return file.read(len(FILE_MAGIC)) == FILE_MAGIC
    except OSError:
        return False


def _is_pattern(argument: str) -> bool:
    return any(character in argument for character in "*?[") and not Path(argument).exists()


def wants_batch(arguments: list[str]) -> bool:
    """Arguments that name more than one recording, a directory of recordings, or a glob."""
    recordings = 0
    for argument in arguments:
        path = Path(argument)
        if _is_pattern(argument) or (path.is_dir() and any(map(is_recording, _files_under(path)))):
            return True
        recordings += is_recording(path)
    return recordings > 1


def _files_under(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


def gather(arguments: list[str], scripts_in_directories: bool = True) -> tuple[list[Path], list[Path]]:
    """The recordings and the check scripts that `arguments` name, each in the order given. A file is a
    recording by its content; in a directory, the recordings and (if `scripts_in_directories`) the
    test_*.py files count."""
    recordings: list[Path] = []
    scripts: list[Path] = []
    for argument in arguments:
        if _is_pattern(argument):
            paths = [Path(found) for found in sorted(glob.glob(argument, recursive=True))]
            if not paths:
                raise BatchError(f"{argument} matches no file")
        else:
            paths = [Path(argument)]
        for path in paths:
            if path.is_dir():
                files = _files_under(path)
                found = [file for file in files if is_recording(file)]
                tests = [file for file in files if scripts_in_directories
                         and file.name.startswith("test_") and file.suffix == ".py"]
                if not found and not tests:
                    raise BatchError(f"{path} holds no recordings" + (" and no test_*.py check scripts"
                                                                     if scripts_in_directories else ""))
                recordings += found
                scripts += tests
            elif not path.exists():
                raise BatchError(f"cannot read {path}: no such file")
            elif is_recording(path):
                recordings.append(path)
            else:
                scripts.append(path)
    if not recordings:
        raise BatchError(f"no recordings among {' '.join(arguments)} (a recording is a file written by `xenrr record`)")
    return list(dict.fromkeys(recordings)), list(dict.fromkeys(scripts))


def _unit_command(command: str, recording: Path, scripts: list[Path], image: Path | None,
                  select: str | None) -> list[str]:
    arguments = [sys.executable, "-m", "dom0.cli", "check" if command == "check" else "replay", "--json",
                 str(recording.resolve())]
    if command == "check":
        arguments += [str(script.resolve()) for script in scripts]
        if select is not None:
            arguments += ["-k", select]
    if image is not None:
        arguments += ["--image", str(image.resolve())]
    return arguments


def run_unit(command: str, recording: Path, scripts: list[Path], image: Path | None = None,
             select: str | None = None) -> UnitResult:
    """One work unit (on a Dask worker): the single-recording command as a child process, its JSON
    summary turned into a UnitResult."""
    if os.environ.get(KILL_WORKER_HOOK) == recording.name:
        os.kill(os.getpid(), signal.SIGKILL)
    started = time.perf_counter()
    done = subprocess.run(_unit_command(command, recording, scripts, image, select), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    seconds = round(time.perf_counter() - started, 3)
    try:
        summary = json.loads(done.stdout)
    except json.JSONDecodeError:
        summary = None
    if done.returncode not in UNIT_STATUS or not isinstance(summary, dict):
        last_line = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return UnitResult(str(recording), "crashed", f"`xenrr {command}` ended abnormally: {last_line}", seconds)
    status = UNIT_STATUS[done.returncode]
    if "error" in summary:
        return UnitResult(str(recording), status, summary["error"], seconds)
    if command == "check":
        return UnitResult(str(recording), status, _check_detail(summary), seconds, summary["checks"])
    return UnitResult(str(recording), status, _verify_detail(summary), seconds)


def _check_detail(summary: dict) -> str:
    if summary["failed"]:
        failed = [check for check in summary["checks"] if check["outcome"] in ("failed", "error")]
        first = failed[0]
        where = f"{first['file']}:{first['line']}" if first["line"] else first["file"]
        return (f"{summary['failed']} of {len(summary['checks'])} checks failed, first {first['name']} at {where}: "
                f"{(first['message'].strip().splitlines() or [''])[0]}")
    return f"{summary['passed']} checks held" + (f" ({summary['skipped']} skipped)" if summary["skipped"] else "")


def _verify_detail(summary: dict) -> str:
    if summary["divergence"]:
        return f"diverged: {summary['divergence']}"
    counts = (f"{count_phrase(summary['events'], 'event')}, {summary['instructions']} instructions, "
              f"{count_phrase(summary['digests_checked'], 'digest')} checked")
    if summary["damage"]:
        return f"damaged: {summary['damage']}; verified before it: {counts}"
    if not summary["complete"]:
        return f"incomplete (no END record); verified: {counts}"
    return f"verified to the end: {counts}"


def _connect(scheduler: str | None, workers: int):
    """A Dask client on the scheduler given, or on a new local cluster of `workers` processes."""
    import logging                 # here, with Dask: the single-recording commands start without them

    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            return Client(scheduler, timeout="10s")
        except (OSError, ValueError, TypeError) as error:
            raise BatchError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
    with dask.config.set(LOCAL_CLUSTER_CONFIG):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL)
    return Client(cluster)


@contextmanager
def _client(scheduler: str | None, workers: int):
    """`_connect`, and the client (and a local cluster) closed afterwards whatever happened."""
    client = _connect(scheduler, workers)
    try:
        yield client
    finally:
        cluster = client.cluster
        client.close()
        if cluster is not None:
            cluster.close()


def run_batch(command: str, recordings: list[Path], scripts: list[Path], *, image: Path | None = None,
              select: str | None = None, workers: int = 1, scheduler: str | None = None,
              progress: Callable[[int], None] = lambda done: None) -> list[UnitResult]:
    """Run the work unit of every recording on Dask; the results in the order of `recordings`.
    `progress(done)` is called as units finish."""
    from distributed import as_completed

    with _client(scheduler, workers) as client:
        futures = {client.submit(run_unit, command, recording, scripts, image, select, pure=False): index
                   for index, recording in enumerate(recordings)}
        results: list[UnitResult | None] = [None] * len(recordings)
        for done, future in enumerate(as_completed(futures), start=1):
            index = futures[future]
            try:
                results[index] = future.result()
            except Exception as error:          # KilledWorker and anything else Dask reports for the unit
                results[index] = UnitResult(str(recordings[index]), "crashed",
                                            f"its Dask worker failed: {type(error).__name__}: "
                                            f"{' '.join(str(error).split())}", 0.0)
            progress(done)
    return results


def run_segment_batch(recordings: list[Path], *, image: Path | None = None, workers: int = 1,
                      scheduler: str | None = None, progress: Callable[[int], None] = lambda done: None
                      ) -> list[UnitResult]:
    """`verify --segments`: one Dask unit per segment of every recording (dom0/segments.py), merged back
    into one result per recording, in the order of `recordings`. `progress(done)` counts recordings."""
    from distributed import as_completed

    from dom0.segments import count_segments, run_segment_unit

    counts = [count_segments(recording) for recording in recordings]
    with _client(scheduler, workers) as client:
        futures = {client.submit(run_segment_unit, recording, (number, number), image, pure=False): (index, number)
                   for index, recording in enumerate(recordings) for number in range(counts[index])}
        summaries: list[dict] = [{} for _ in recordings]
        results: list[UnitResult | None] = [None] * len(recordings)
        for future in as_completed(futures):
            index, number = futures[future]
            try:
                summaries[index][number] = future.result()
            except Exception as error:          # KilledWorker and anything else Dask reports for the unit
                summaries[index][number] = {"segment": f"{number}-{number}", "verified": False, "crashed": True,
                                            "divergence": f"segment {number}: its Dask worker failed: "
                                                          f"{type(error).__name__}: {' '.join(str(error).split())}",
                                            "events": 0, "instructions": 0, "digests_checked": 0, "complete": False,
                                            "recorded_outcome": None, "to_icount": None, "seconds": 0.0}
            if len(summaries[index]) == counts[index]:
                results[index] = _merged_result(recordings[index], [summaries[index][n] for n in range(counts[index])])
                progress(sum(result is not None for result in results))
    return results


def _merged_result(recording: Path, summaries: list[dict]) -> UnitResult:
    """One recording's result from its segments' summaries (in order); its seconds are all its units'."""
    from dom0.segments import merge

    merged = merge(summaries)
    seconds = round(sum(summary["seconds"] for summary in summaries), 3)
    if any(summary.get("crashed") for summary in summaries):
        return UnitResult(str(recording), "crashed", merged["divergence"], seconds)
    if any("error" in summary for summary in summaries):
        return UnitResult(str(recording), "unusable", merged["divergence"], seconds)
    merged["damage"] = summaries[-1].get("damage")
    status = "failed" if not merged["verified"] else "damaged" if merged["damage"] or not merged["complete"] \
        else "passed"
    detail = _verify_detail(merged)
    return UnitResult(str(recording), status, f"{detail} ({count_phrase(len(summaries), 'segment')})", seconds)


def exit_status(results: list[UnitResult]) -> int:
    statuses = {result.status for result in results}
    if statuses & {"failed", "crashed"}:
        return EXIT_FAILED
    if "unusable" in statuses:
        return EXIT_UNUSABLE
    if "damaged" in statuses:
        return EXIT_DAMAGED
    return EXIT_PASSED


def _status_counts(results: list[UnitResult]) -> dict[str, int]:
    """How many results have each status, in the order the reports give them."""
    return {status: sum(result.status == status for result in results)
            for status in ("passed", "failed", "damaged", "unusable", "crashed")}


def summary_line(command: str, results: list[UnitResult]) -> str:
    counts = _status_counts(results)
    verdict = "PASS" if counts["passed"] == len(results) else "FAIL"
    told = ", ".join(f"{count} {status}" for status, count in counts.items() if count)
    return f"{verdict} {command}: {len(results)} recordings: {told}"


def table(results: list[UnitResult]) -> str:
    """One line per recording: status, seconds, recording, detail."""
    width = max(len(result.recording) for result in results)
    lines = [f"{'STATUS':<9} {'SECONDS':>8}  {'RECORDING':<{width}}  DETAIL"]
    lines += [f"{result.status:<9} {result.seconds:>8.2f}  {result.recording:<{width}}  {result.detail}"
              for result in results]
    return "\n".join(lines)


def to_json(command: str, results: list[UnitResult], scripts: list[Path]) -> str:
    counts = _status_counts(results)
    return json.dumps({"command": command, "status": exit_status(results), "scripts": [str(s) for s in scripts],
                       **counts, "recordings": [asdict(result) for result in results]}, indent=1)


def to_junit_xml(command: str, results: list[UnitResult]) -> bytes:
    """JUnit XML as CI systems read it: one testsuite per recording; one testcase per check (`check`) or
    one for the replay (`verify`); a unit that never ran its checks is one testcase with an error."""
    import xml.etree.ElementTree as ElementTree       # here: only --junit-xml needs it
    root = ElementTree.Element("testsuites", name=f"xenrr {command}")
    for result in results:
        suite = ElementTree.SubElement(root, "testsuite", name=result.recording, time=f"{result.seconds:.3f}")
        cases = []
        if result.checks:
            for check in result.checks:
                case = ElementTree.SubElement(suite, "testcase", classname=check["file"], name=check["name"])
                kind = {"failed": "failure", "error": "error", "skipped": "skipped"}.get(check["outcome"])
                if kind is not None:
                    where = f"{check['file']}:{check['line']}" if check["line"] else check["file"]
                    problem = ElementTree.SubElement(case, kind, message=check["message"])
                    problem.text = f"{where}: {check['source']}\n{check['message']}\n{check['output']}"
                cases.append(check["outcome"])
        else:
            case = ElementTree.SubElement(suite, "testcase", classname=result.recording,
                                          name="replay" if command == "verify" else "checks")
            if result.status != "passed":
                kind = "failure" if result.status == "failed" else "error"
                ElementTree.SubElement(case, kind, message=result.detail, type=result.status).text = result.detail
            cases.append({"passed": "passed", "failed": "failed"}.get(result.status, "error"))
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(cases.count("failed")))
        suite.set("errors", str(cases.count("error")))
        suite.set("skipped", str(cases.count("skipped")))
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
