"""Batch checks on Dask: `xenrr check` of 64 recordings on 1 and on 2 local worker processes.

Owns one measurement, side by side in one process: the same corpus (one kbdshell recording typing
examples/short_lines.keys, copied 64 times) checked with one script of two checks through
`dom0.batch.run_batch`, the code `xenrr check RECORDING... SCRIPT...` runs, on a new LocalCluster of
1 and then of 2 workers. It reports each wall time (cluster start-up included), the speed-up ratio and
the cost per recording (the wall time on one worker over the number of recordings, and the median
time of one work unit: the `xenrr check` child of a worker). On 2 cores shared with other work the
ratio says how much of a second core the batch got, not what the runner can do.
Invariant: every unit of every run is checked to have passed.
"""
from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dom0.batch import run_batch

ROOT = Path(__file__).resolve().parents[2]
KBDSHELL = ROOT / "guests" / "kbdshell" / "kbdshell.elf"
RECORDINGS = {False: 64, True: 4}
WORKERS = (1, 2)
SCRIPT = '''\
def test_every_key_is_an_event(d):
    assert len(d.events(kind="console-input")) > 10


def test_the_shell_reaches_hist(d):
    assert d.eval("ed.hist_count") >= 0
'''


def _corpus(directory: Path, count: int) -> list[Path]:
    first = directory / "r000.xrr"
    subprocess.run([sys.executable, "-m", "dom0.cli", "record", str(KBDSHELL), "-o", str(first), "--clock",
                    "virtual", "--keys-file", str(ROOT / "examples" / "short_lines.keys")],
                   check=True, capture_output=True, cwd=ROOT)
    for number in range(1, count):
        shutil.copy(first, directory / f"r{number:03}.xrr")
    return sorted(directory.glob("r*.xrr"))


def run(quick: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="xenrr-bench-batch-") as temporary:
        directory = Path(temporary)
        recordings = _corpus(directory, RECORDINGS[quick])
        script = directory / "test_bench.py"
        script.write_text(SCRIPT)
        walls, unit_seconds = {}, {}
        for workers in WORKERS:
            started = time.perf_counter()
            results = run_batch("check", recordings, [script], workers=workers)
            walls[workers] = time.perf_counter() - started
            failed = [result for result in results if result.status != "passed"]
            if failed:
                raise RuntimeError(f"{len(failed)} units did not pass: {failed[0].detail}")
            unit_seconds[workers] = statistics.median(result.seconds for result in results)
    count = len(recordings)
    return {"recordings": count, "checks_per_recording": 2,
            "runs": [{"workers": workers, "wall_seconds": round(walls[workers], 2),
                      "median_unit_seconds": round(unit_seconds[workers], 3)} for workers in WORKERS],
            "speedup_2_vs_1": round(walls[1] / walls[2], 2),
            "seconds_per_recording_1_worker": round(walls[1] / count, 3)}


def table(results: dict) -> str:
    lines = [f"{results['recordings']} recordings x {results['checks_per_recording']} checks",
             "| workers | wall (s) | median unit (s) |", "|---:|---:|---:|"]
    lines += [f"| {run['workers']} | {run['wall_seconds']:.2f} | {run['median_unit_seconds']:.3f} |"
              for run in results["runs"]]
    lines.append(f"speed-up 2 vs 1 worker: {results['speedup_2_vs_1']:.2f}x; "
                 f"{results['seconds_per_recording_1_worker']:.3f} s per recording on 1 worker")
    return "\n".join(lines)
