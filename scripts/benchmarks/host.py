"""The multi-domain host: a replay beside busy neighbours (pinned or not), credit fairness and caps,
and what idle domains cost a busy one.

Owns four measurements against a real `xenrr up` (2 pCPU worker processes) on this machine:
- replay isolation: one CPU-bound kbdshell recording (`bench N`, virtual clock) replayed in this
  process alone (neighbours paused), beside 3 busy spinpoll neighbours with the replay unpinned, and
  beside the same neighbours with the replay pinned (the host's `reserve-core`, and nice -20 where
  allowed: host/pinning.py), and pinned with the neighbours paused (what pinning alone gives on this
  machine, whose other processes the host does not control); median and stdev of the wall time over
  interleaved repetitions, the
  ratio of each to the replay alone, and the replaying thread's CPU time (wall time minus CPU time is
  time the replay waited for its core); the machine's load average before and after;
- fairness: two busy domains pinned to pCPU 0 with weights 256 and 512, their instructions over one
  window (credit promises 2:1);
- cap: on pCPU 1 a domain with cap = 25 beside an uncapped one, its share of the pCPU's instructions;
- idle overhead: a busy domain's instructions per second with N = 0, 4, 16 idle kbdshell domains on
  its pCPU, and the ratio to N = 0.
Invariant: every replay measured verifies to the end (a divergence aborts the benchmark).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dom0.replay import ReplaySession
from host.pinning import pinned_replay

ROOT = Path(__file__).resolve().parents[2]
GUESTS = ROOT / "guests"
BENCH_ITERATIONS = {False: 30_000_000, True: 2_000_000}
REPEATS = {False: 5, True: 1}
WINDOW_SECONDS = {False: 20.0, True: 3.0}
IDLE_COUNTS = (0, 4, 16)


def _xenrr(*args: str, env: dict | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "dom0.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"xenrr {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class _Host:
    """A `xenrr up --pcpus 2` for the benchmark, on a socket of its own."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.socket = directory / "control.sock"
        self.process = subprocess.Popen([sys.executable, "-m", "dom0.cli", "up", "--pcpus", "2", "--socket",
                                         str(self.socket)], cwd=ROOT, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        while not self.socket.exists():
            if self.process.poll() is not None:
                raise RuntimeError("xenrr up did not start")
            time.sleep(0.05)
        self("list")

    def __call__(self, *args: str) -> str:
        return _xenrr(*args, "--socket", str(self.socket))

    def create(self, name: str, guest: str, **keys) -> None:
        lines = [f'name = "{name}"', f'kernel = "{GUESTS / guest / (guest + ".elf")}"']
        lines += [f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}" for key, value in keys.items()]
        path = self.directory / f"{name}.cfg"
        path.write_text("\n".join(lines) + "\n")
        self("create", str(path))

    def instructions(self) -> dict[str, int]:
        return {domain["name"]: domain["instructions"] for domain in json.loads(self("list", "--json"))}

    def down(self) -> None:
        self("down")
        self.process.wait(timeout=120)


def _replay_seconds(log: Path, socket: Path | None) -> tuple[float, float]:
    """One replay to the end in this process, pinned through the host at `socket` (None: unpinned):
    its wall time and the CPU time the replaying thread got."""
    os.environ["XENRR_SOCKET"] = str(socket) if socket is not None else "/nonexistent/xenrr.sock"
    with pinned_replay():
        session = ReplaySession(log)
        started, started_cpu = time.perf_counter(), time.thread_time()
        session.replayer.run(None)
        seconds, cpu_seconds = time.perf_counter() - started, time.thread_time() - started_cpu
        complete = session.replayer.recorded_outcome is not None
        session.close()
    if not complete:
        raise RuntimeError("the replay did not reach the END record")
    return seconds, cpu_seconds


def _load_average() -> float:
    return round(os.getloadavg()[0], 1)


def _window(host: _Host, seconds: float) -> dict[str, int]:
    before = host.instructions()
    time.sleep(seconds)
    after = host.instructions()
    return {name: after[name] - before.get(name, 0) for name in after}


def run(quick: bool) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="xb", dir="/tmp"))
    log = directory / "bench.xrr"
    _xenrr("record", str(GUESTS / "kbdshell" / "kbdshell.elf"), "-o", str(log), "--clock", "virtual",
           "--keys", f"bench {BENCH_ITERATIONS[quick]}\\rhalt\\r")
    host = _Host(directory)
    results: dict = {}
    try:
        neighbours = [f"busy{i}" for i in range(3)]
        for name in neighbours:
            host.create(name, "spinpoll")
        samples: dict[str, list[tuple[float, float]]] = {"alone": [], "alone_pinned": [], "neighbours_unpinned": [],
                                                          "neighbours_pinned": []}
        load_before = _load_average()
        for _ in range(REPEATS[quick]):
            for name in neighbours:
                host("pause", name)
            samples["alone"].append(_replay_seconds(log, None))
            samples["alone_pinned"].append(_replay_seconds(log, host.socket))
            for name in neighbours:
                host("unpause", name)
            samples["neighbours_unpinned"].append(_replay_seconds(log, None))
            samples["neighbours_pinned"].append(_replay_seconds(log, host.socket))
        alone = statistics.median(wall for wall, _ in samples["alone"])
        results["replay"] = {}
        for scenario, values in samples.items():
            walls = [wall for wall, _ in values]
            results["replay"][scenario] = {
                "median_seconds": round(statistics.median(walls), 3),
                "stdev_seconds": round(statistics.stdev(walls), 3) if len(walls) > 1 else 0.0,
                "ratio_to_alone": round(statistics.median(walls) / alone, 3),
                "median_cpu_seconds": round(statistics.median(cpu for _, cpu in values), 3)}
        results["replay_bench_iterations"] = BENCH_ITERATIONS[quick]
        results["load_average"] = {"before": load_before, "after": _load_average()}
        results["replay_priority_raised"] = _may_raise_priority()
        for name in neighbours:
            host("destroy", name)

        host.create("light", "spinpoll", cpus="0")
        host.create("heavy", "spinpoll", cpus="0", cpu_weight=512)
        host.create("capped", "spinpoll", cpus="1", cap=25)
        host.create("free", "spinpoll", cpus="1")
        time.sleep(1)
        ran = _window(host, WINDOW_SECONDS[quick])
        results["fairness"] = {"weight_256": ran["light"], "weight_512": ran["heavy"],
                               "ratio": round(ran["heavy"] / max(1, ran["light"]), 3), "promised": 2.0}
        results["cap"] = {"cap_percent": 25, "share_percent": round(100 * ran["capped"] / max(1, ran["capped"] + ran["free"]), 1)}
        for name in ("light", "heavy", "capped", "free"):
            host("destroy", name)

        host.create("worker", "spinpoll", cpus="0")
        idle: list[dict] = []
        created = 0
        for count in IDLE_COUNTS:
            while created < count:
                host.create(f"idle{created}", "kbdshell", cpus="0", memory=4)
                created += 1
            time.sleep(1)
            rate = _window(host, WINDOW_SECONDS[quick])["worker"] / WINDOW_SECONDS[quick]
            idle.append({"idle_domains": count, "busy_instructions_per_second": round(rate)})
        for entry in idle:
            entry["ratio_to_none"] = round(entry["busy_instructions_per_second"] / max(1, idle[0]["busy_instructions_per_second"]), 3)
        results["idle_overhead"] = idle
    finally:
        host.down()
        shutil.rmtree(directory, ignore_errors=True)
    return results


def _may_raise_priority() -> bool:
    """Whether a pinned replay here gets host/pinning.py's priority (CAP_SYS_NICE)."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice - 1)
    except PermissionError:
        return False
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    return True


def table(results: dict) -> str:
    lines = ["| replay of a CPU-bound kbdshell session | median (s) | stdev (s) | ratio to alone | CPU time (s) |",
             "|---|---:|---:|---:|---:|"]
    for scenario, entry in results["replay"].items():
        lines.append(f"| {scenario.replace('_', ' ')} | {entry['median_seconds']:.3f} | {entry['stdev_seconds']:.3f} | "
                     f"{entry['ratio_to_alone']:.3f} | {entry['median_cpu_seconds']:.3f} |")
    lines.append(f"\n(load average {results['load_average']['before']} before, {results['load_average']['after']} after; "
                 f"the pinned replay {'ran at nice -20' if results['replay_priority_raised'] else 'could not raise its priority'})")
    fair, cap = results["fairness"], results["cap"]
    lines += ["", "| credit scheduler | measured | promised |", "|---|---:|---:|",
              f"| instructions, weight 512 : weight 256 | {fair['ratio']:.3f} | 2.000 |",
              f"| share of a pCPU with cap = {cap['cap_percent']} | {cap['share_percent']:.1f} % | <= {cap['cap_percent']} % |",
              "", "| idle domains beside a busy one | busy instructions/s | ratio to none |", "|---:|---:|---:|"]
    lines += [f"| {entry['idle_domains']} | {entry['busy_instructions_per_second']} | {entry['ratio_to_none']:.3f} |"
              for entry in results["idle_overhead"]]
    return "\n".join(lines)
