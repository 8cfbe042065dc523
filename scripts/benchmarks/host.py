"""The multi-domain host: a replay beside busy neighbours (pinned or not), credit fairness and caps,
and what idle domains cost a busy one.

Owns four measurements against a real `xenrr up` (2 pCPU worker processes) on this machine:
- replay isolation: one CPU-bound kbdshell recording (`bench N`, virtual clock) replayed in this
  process alone (neighbours paused), alone but pinned (the host's `reserve-core`, and nice -20 where
  allowed: host/pinning.py), beside 3 busy spinpoll neighbours unpinned, and beside them pinned; the
  four interleaved in every repeat (after one warm-up replay), their order rotated from one repeat to
  the next; median and stdev of the wall time, the ratio of each to the replay alone, and the
  replaying thread's CPU time (wall minus CPU time is time the replay waited for its core); the
  like-for-like ratio the issue's 5 % is read against (pinned beside the neighbours to pinned alone,
  wall and CPU time); the load average before and after;
- fairness: two busy domains pinned to pCPU 0 with weights 256 and 512, their instructions over one
  window (credit promises 2:1);
- cap: on pCPU 1 a domain with cap = 25 beside an uncapped one, its share of the pCPU's instructions;
- idle overhead: a busy spinpoll domain on pCPU 0 beside N = 0, 4, 16 idle kbdshell domains (blocked
  between the ticks of a 100 Hz periodic timer), measured in rounds that go up and down (0 4 16, 16 4 0,
  ...) so that a drift of the machine's load weighs on every N alike: the busy domain's instructions
  per second of wall time and per second of the pCPU worker's own CPU time (what other processes on the
  core take out of the wall rate drops out of the latter), the idle domains' instructions per second;
  medians and stdev over the rounds, ratios to N = 0.
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

import psutil

from dom0.replay import ReplaySession
from host.pinning import pinned_replay

ROOT = Path(__file__).resolve().parents[2]
GUESTS = ROOT / "guests"
BENCH_ITERATIONS = {False: 100_000_000, True: 2_000_000}
REPEATS = {False: 6, True: 1}
WINDOW_SECONDS = {False: 20.0, True: 3.0}
IDLE_WINDOW_SECONDS = {False: 5.0, True: 1.0}
IDLE_ROUNDS = {False: 3, True: 1}
IDLE_COUNTS = (0, 4, 16)
SETTLE_SECONDS = 1.0
SCENARIOS = ("alone", "alone_pinned", "neighbours_unpinned", "neighbours_pinned")


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

    def worker(self, core: int) -> psutil.Process:
        """The pCPU worker process pinned to `core` (pCPU i runs on core i here, no core reserved)."""
        for child in psutil.Process(self.process.pid).children():
            if "spawn_main" in " ".join(child.cmdline()) and child.cpu_affinity() == [core]:
                return child
        raise RuntimeError(f"no pCPU worker on core {core}")

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


def _window(host: _Host, seconds: float, worker: psutil.Process | None = None) -> tuple[dict[str, int], float, float]:
    """The instructions each domain ran over about `seconds`, the seconds between the two snapshots, and
    the CPU time `worker` got meanwhile (each taken right after a snapshot, so that `xenrr list`'s own
    start-up is outside the interval)."""
    def cpu() -> float:
        return 0.0 if worker is None else sum(worker.cpu_times()[:2])
    before = host.instructions()
    started, cpu_started = time.perf_counter(), cpu()
    time.sleep(seconds)
    after = host.instructions()
    elapsed, cpu_seconds = time.perf_counter() - started, cpu() - cpu_started
    return {name: after[name] - before.get(name, 0) for name in after}, elapsed, cpu_seconds


def _spread(values: list[float], digits: int = 3) -> dict:
    return {"median": round(statistics.median(values), digits),
            "stdev": round(statistics.stdev(values), digits) if len(values) > 1 else 0.0}


def _replay_isolation(host: _Host, log: Path, quick: bool) -> dict:
    neighbours = [f"busy{i}" for i in range(3)]
    for name in neighbours:
        host.create(name, "spinpoll")
    samples: dict[str, list[tuple[float, float]]] = {scenario: [] for scenario in SCENARIOS}
    load_before = _load_average()
    _replay_seconds(log, None)              # warm-up: what the first replay in a process pays once
    for repeat in range(REPEATS[quick]):
        # the neighbours paused for the first two, running for the last two; which pair comes first and
        # which of a pair is pinned first turn from one repeat to the next
        pairs = [("alone", "alone_pinned"), ("neighbours_unpinned", "neighbours_pinned")]
        for pair in pairs if repeat % 2 == 0 else pairs[::-1]:
            for name in neighbours:
                host("pause" if pair[0] == "alone" else "unpause", name)
            for scenario in pair if repeat % 4 < 2 else pair[::-1]:
                samples[scenario].append(_replay_seconds(log, host.socket if scenario.endswith("_pinned") else None))
    alone = statistics.median(wall for wall, _ in samples["alone"])
    scenarios = {}
    for scenario, values in samples.items():
        walls = [wall for wall, _ in values]
        scenarios[scenario] = {
            "median_seconds": round(statistics.median(walls), 3),
            "stdev_seconds": round(statistics.stdev(walls), 3) if len(walls) > 1 else 0.0,
            "ratio_to_alone": round(statistics.median(walls) / alone, 3),
            "median_cpu_seconds": round(statistics.median(cpu for _, cpu in values), 3),
            "median_wait_seconds": round(statistics.median(wall - cpu for wall, cpu in values), 3)}
    pinned, pinned_alone = samples["neighbours_pinned"], samples["alone_pinned"]
    for name in neighbours:
        host("destroy", name)
    return {"replay": scenarios,
            "pinned_with_neighbours_to_pinned_alone": {
                "wall": round(statistics.median(w for w, _ in pinned) / statistics.median(w for w, _ in pinned_alone), 3),
                "cpu": round(statistics.median(c for _, c in pinned) / statistics.median(c for _, c in pinned_alone), 3)},
            "replay_bench_iterations": BENCH_ITERATIONS[quick], "replay_repeats": REPEATS[quick],
            "load_average": {"before": load_before, "after": _load_average()},
            "replay_priority_raised": _may_raise_priority()}


def _credit(host: _Host, quick: bool) -> dict:
    host.create("light", "spinpoll", cpus="0")
    host.create("heavy", "spinpoll", cpus="0", cpu_weight=512)
    host.create("capped", "spinpoll", cpus="1", cap=25)
    host.create("free", "spinpoll", cpus="1")
    time.sleep(SETTLE_SECONDS)
    ran, _, _ = _window(host, WINDOW_SECONDS[quick])
    for name in ("light", "heavy", "capped", "free"):
        host("destroy", name)
    return {"fairness": {"weight_256": ran["light"], "weight_512": ran["heavy"],
                         "ratio": round(ran["heavy"] / max(1, ran["light"]), 3), "promised": 2.0},
            "cap": {"cap_percent": 25,
                    "share_percent": round(100 * ran["capped"] / max(1, ran["capped"] + ran["free"]), 1)}}


def _idle_overhead(host: _Host, quick: bool) -> dict:
    host.create("worker", "spinpoll", cpus="0")
    worker = host.worker(0)
    seconds = IDLE_WINDOW_SECONDS[quick]
    samples: dict[int, list[dict]] = {count: [] for count in IDLE_COUNTS}
    idle: list[str] = []
    load_before = _load_average()
    for round_number in range(IDLE_ROUNDS[quick]):
        for count in IDLE_COUNTS if round_number % 2 == 0 else IDLE_COUNTS[::-1]:
            while len(idle) < count:
                idle.append(f"idle{len(idle)}")
                host.create(idle[-1], "kbdshell", cpus="0", memory=4)
            while len(idle) > count:
                host("destroy", idle.pop())
            time.sleep(SETTLE_SECONDS)
            ran, elapsed, cpu_seconds = _window(host, seconds, worker)
            samples[count].append({"wall": ran["worker"] / elapsed, "cpu": ran["worker"] / max(cpu_seconds, 1e-9),
                                   "worker_cpu_share": cpu_seconds / elapsed,
                                   "idle": sum(ran[name] for name in idle) / elapsed})
    entries = []
    for count in IDLE_COUNTS:
        values = samples[count]
        entries.append({"idle_domains": count,
                        "busy_instructions_per_second": _spread([v["wall"] for v in values], 0),
                        "busy_instructions_per_cpu_second": _spread([v["cpu"] for v in values], 0),
                        "worker_cpu_share": round(statistics.median(v["worker_cpu_share"] for v in values), 3),
                        "idle_instructions_per_second": round(statistics.median(v["idle"] for v in values))})
    none = entries[0]
    for entry in entries:
        for key in ("busy_instructions_per_second", "busy_instructions_per_cpu_second"):
            entry[key]["ratio_to_none"] = round(entry[key]["median"] / max(1, none[key]["median"]), 3)
    return {"idle_overhead": entries, "idle_rounds": IDLE_ROUNDS[quick], "idle_window_seconds": seconds,
            "idle_load_average": {"before": load_before, "after": _load_average()}}


def run(quick: bool) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="xb", dir="/tmp"))
    log = directory / "bench.xrr"
    _xenrr("record", str(GUESTS / "kbdshell" / "kbdshell.elf"), "-o", str(log), "--clock", "virtual",
           "--keys", f"bench {BENCH_ITERATIONS[quick]}\\rhalt\\r")
    host = _Host(directory)
    try:
        return {**_replay_isolation(host, log, quick), **_credit(host, quick), **_idle_overhead(host, quick)}
    finally:
        host.down()
        shutil.rmtree(directory, ignore_errors=True)


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
    lines = ["| replay of a CPU-bound kbdshell session | median (s) | stdev (s) | ratio to alone | CPU time (s) | "
             "waiting for the core (s) |", "|---|---:|---:|---:|---:|---:|"]
    for scenario, entry in results["replay"].items():
        lines.append(f"| {scenario.replace('_', ' ')} | {entry['median_seconds']:.3f} | {entry['stdev_seconds']:.3f} | "
                     f"{entry['ratio_to_alone']:.3f} | {entry['median_cpu_seconds']:.3f} | "
                     f"{entry['median_wait_seconds']:.3f} |")
    like = results["pinned_with_neighbours_to_pinned_alone"]
    lines.append(f"\npinned beside the neighbours / pinned alone: {like['wall']:.3f} (wall), {like['cpu']:.3f} (CPU time); "
                 f"{results['replay_repeats']} repeats; load average {results['load_average']['before']} before, "
                 f"{results['load_average']['after']} after; the pinned replay "
                 f"{'ran at nice -20' if results['replay_priority_raised'] else 'could not raise its priority'}")
    fair, cap = results["fairness"], results["cap"]
    lines += ["", "| credit scheduler | measured | promised |", "|---|---:|---:|",
              f"| instructions, weight 512 : weight 256 | {fair['ratio']:.3f} | 2.000 |",
              f"| share of a pCPU with cap = {cap['cap_percent']} | {cap['share_percent']:.1f} % | <= {cap['cap_percent']} % |",
              "", "| idle domains beside a busy one | busy instr/s (stdev) | ratio to none | busy instr per worker CPU s "
              "(stdev) | ratio to none | worker's CPU share | idle domains' instr/s |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for entry in results["idle_overhead"]:
        wall, cpu = entry["busy_instructions_per_second"], entry["busy_instructions_per_cpu_second"]
        lines.append(f"| {entry['idle_domains']} | {wall['median']:,.0f} ({wall['stdev']:,.0f}) | {wall['ratio_to_none']:.3f} | "
                     f"{cpu['median']:,.0f} ({cpu['stdev']:,.0f}) | {cpu['ratio_to_none']:.3f} | "
                     f"{entry['worker_cpu_share']:.2f} | {entry['idle_instructions_per_second']:,} |")
    load = results["idle_load_average"]
    lines.append(f"\n({results['idle_rounds']} rounds of {results['idle_window_seconds']:.0f} s windows; load average "
                 f"{load['before']} before, {load['after']} after)")
    return "\n".join(lines)
