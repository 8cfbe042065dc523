"""Record and replay: what recording costs and how fast replay runs on kbdshell's `bench`, the log's bytes per
event, and the highest sustained key rate recorded with nothing lost.

Owns one measurement, all in this process: no interpreter start-up is in any timing except the log
daemon's (the real log daemon process that `record` forks), which is part of what recording costs.
- Workload: kbdshell types `bench N` (about 2 s of guest computation at full size) while its 100 Hz
  periodic timer runs (--clock real) and keys arrive at 50/s: a key script with `\\p20` before every key,
  lasting about 80 % of the bench and ending with `halt`, so the session ends when the bench does.
- Sides, each timed with time.perf_counter on a domain built beforehand, interleaved, medians compared:
  plain = `Scheduler(...).run()` as `xenrr run`; record = `dom0.record.record(...)` as `xenrr record`
  (daemon start-up, initial and final full digests, footer and fsync included); replay =
  `ReplaySession(log).replayer.run()` on that run's own log, as `xenrr replay` (opening the log and
  building the domain timed apart).
- Record's fixed cost: the same sides on a script of just `halt`, record minus plain; the steady-state
  ratio is (record - fixed cost) / plain. Where record's time goes, measured apart: the log daemon's start
  and stop, a register digest and a full digest (all 16 MiB of memory hashed) of a domain inside `bench`.
- Log bytes per event: the last recording listed by the real `xenrr dump --json`, its records encoded
  again with xen.logrecord.Encoder in order - which gives the file's record bytes exactly (checked against
  the blocks' payload lengths); file header, block headers and footer are counted apart.
- Sustained key rate: keys with no pauses, as fast as the guest takes them, recorded under each clock
  (--clock real injects all keys due at once, up to the console ring's free space, as one event;
  --clock virtual types one key per event) and run plain for comparison; rates over the whole record()
  call. Nothing lost: the file holds every record the recorder logged, and its keystroke payloads are
  exactly the script's keys.
Invariant: a session that does not end with the guest powering off, a replay that does not reproduce its
recording's console output, or a log that lost a key aborts the benchmark.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from benchmarks.guest_speed import KBDSHELL, MEMORY_BYTES
from dom0.consoleinput import KeyScript, parse_key_script
from dom0.logd import start_log_daemon
from dom0.logfile import LogReader
from dom0.logring import RingProducer
from dom0.record import RING_BYTES, make_header, record
from dom0.replay import ReplaySession
from dom0.toolstack import connect_xenstore, xenstore_config
from xen.builder import DomainImage, build_domain
from xen.digest import Digest, take_digest
from xen.domain import Domain
from xen.inject import Kind
from xen.logrecord import KIND_DIGEST, KIND_END, Encoder, kind_name
from xen.sched import Outcome, Scheduler

ROOT = Path(__file__).resolve().parents[2]
ITERATIONS = {False: 600_000_000, True: 20_000_000}       # by `quick`
REPEATS = {False: 5, True: 2}
FLOOD_KEYS = {False: {"real": 100_000, "virtual": 20_000}, True: {"real": 5_000, "virtual": 2_000}}
KEY_INTERVAL_MS = 20                                      # 50 keys/s
KEYS_SHARE_OF_BENCH = 0.8
PACED_LINE = "echo abcdefghij\r"            # no digits: `\p20` + `0` would read as `\p200`
LINGER_NS = 10**9
KIND_NUMBERS = {kind_name(kind): int(kind) for kind in (KIND_END, KIND_DIGEST, *Kind)}


def paced_script(iterations: int, keys: int) -> str:
    """`bench N`, then `keys` keys KEY_INTERVAL_MS apart typing PACED_LINE over and over, the last six `\\rhalt\\r`."""
    text = (PACED_LINE * (keys // len(PACED_LINE) + 1))[:max(keys - 6, 0)] + "\rhalt\r"
    return rf"bench {iterations}\r" + "".join(rf"\p{KEY_INTERVAL_MS}" + key.replace("\r", r"\r") for key in text)


def flood_script(keys: int) -> str:
    """`keys` keys with no pauses: numbered echo lines, the last six `\\rhalt\\r`."""
    text = "".join(f"echo {index} {'x' * (index % 30)}\r" for index in range(keys))[:keys - 6] + "\rhalt\r"
    return text.replace("\r", r"\r")


def _check_shutdown(side: str, outcome: Outcome) -> None:
    if outcome.reason != "shutdown":
        raise RuntimeError(f"{side}: the session did not end with the guest powering off: {outcome}")


def _median(runs: list[dict], key: str = "seconds") -> float:
    return statistics.median(run[key] for run in runs)


def _median_time(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class Sides:
    """Plain run, record and replay of key scripts on one guest image, each timed; logs go to `directory`.
    `image_path` is the file the image was built from (named in the log's header)."""

    def __init__(self, image: DomainImage, directory: Path, image_path: Path = KBDSHELL):
        self.image = image
        self.directory = directory
        self.image_path = image_path
        self._logs = 0

    def _log_path(self) -> Path:
        self._logs += 1
        return self.directory / f"session{self._logs}.xrr"

    def _domain(self, console_output: Callable[[bytes], None] = lambda data: None) -> Domain:
        """A domain as `xenrr run` and `xenrr record` make it: with its xenstore."""
        domain = Domain(self.image, console_output=console_output)
        connect_xenstore(domain, xenstore_config(self.image_path))
        return domain

    def plain(self, script: str, clock: str = "real") -> dict:
        domain = self._domain()
        keys = KeyScript(parse_key_script(script))
        started = time.perf_counter()
        outcome = Scheduler(domain, keys, clock=clock, linger_ns=LINGER_NS).run()
        seconds = time.perf_counter() - started
        _check_shutdown("plain run", outcome)
        return {"seconds": seconds, "instructions": outcome.icount}

    def record(self, script: str, clock: str = "real") -> dict:
        console = bytearray()
        domain = self._domain(console.extend)
        keys = KeyScript(parse_key_script(script))
        path = self._log_path()
        started = time.perf_counter()
        result = record(domain, self.image_path, keys, path, clock=clock, max_instructions=None, linger_ns=LINGER_NS)
        seconds = time.perf_counter() - started
        _check_shutdown("record", result.outcome)
        return {"seconds": seconds, "instructions": result.outcome.icount, "records": result.records,
                "path": path, "console": bytes(console)}

    @staticmethod
    def replay(recorded: dict) -> dict:
        console = bytearray()
        started = time.perf_counter()
        session = ReplaySession(recorded["path"], console_output=console.extend)
        opened = time.perf_counter()
        session.replayer.run()
        seconds = time.perf_counter() - opened
        session.close()
        if session.replayer.recorded_outcome is None or bytes(console) != recorded["console"]:
            raise RuntimeError(f"replay of {recorded['path']} did not reproduce its recording")
        return {"seconds": seconds, "open_seconds": opened - started}

    def interleaved(self, script: str, repeats: int) -> dict[str, list[dict]]:
        samples: dict[str, list[dict]] = {"plain": [], "record": [], "replay": []}
        for _ in range(repeats):
            samples["plain"].append(self.plain(script))
            recorded = self.record(script)
            samples["record"].append(recorded)
            samples["replay"].append(self.replay(recorded))
        return samples

    def component_costs(self, iterations: int, repeats: int) -> dict:
        """Seconds for one log daemon start and stop, one register digest and one full digest (mid-bench)."""
        domain = Domain(self.image)
        Scheduler(domain, KeyScript(parse_key_script(rf"bench {iterations}\r")), clock="real",
                  max_instructions=iterations * 4).run()                       # stops inside bench_loop
        header = make_header(domain, KBDSHELL, "real")

        def daemon_start_and_stop() -> None:
            ring = RingProducer(RING_BYTES)
            daemon = start_log_daemon(ring, self._log_path(), header)
            ring.close()
            daemon.wait()
            ring.detach()

        return {"daemon_seconds": _median_time(daemon_start_and_stop, repeats),
                "register_digest_seconds": _median_time(lambda: take_digest(domain.vcpu, with_memory=False), 200),
                "full_digest_seconds": _median_time(lambda: take_digest(domain.vcpu, with_memory=True), repeats)}


def log_bytes(path: Path) -> dict:
    """Bytes per record kind in the log at `path`, from the records `xenrr dump --json` lists."""
    dumped = subprocess.run([sys.executable, "-m", "dom0.cli", "dump", str(path), "--json"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    encoder = Encoder()
    encoded = bytearray()
    kinds: dict[str, dict] = {}
    full_digests = 0
    single_keys = []                        # encoded sizes of keystroke events carrying one key
    for entry in json.loads(dumped.stdout)["records"]:
        payload = bytes.fromhex(entry["payload"])
        before = len(encoded)
        encoder.encode(encoded, KIND_NUMBERS[entry["kind"]], entry["vcpu"], entry["icount"], entry["rip"], payload)
        stats = kinds.setdefault(entry["kind"], {"records": 0, "bytes": 0, "payload_bytes": 0})
        stats["records"] += 1
        stats["bytes"] += len(encoded) - before
        stats["payload_bytes"] += len(payload)
        if entry["kind"] == "digest" and Digest.from_bytes(payload).memory_hash is not None:
            full_digests += 1
        if entry["kind"] == "console-input" and len(payload) == 1:
            single_keys.append(len(encoded) - before)
    with LogReader(path) as reader:
        if sum(block.payload_length for block in reader.blocks) != len(encoded):
            raise RuntimeError(f"the records dumped from {path} do not encode to the file's record bytes")
        blocks = len(reader.blocks)
    for stats in kinds.values():
        stats["mean_bytes"] = stats["bytes"] / stats["records"]
        stats["mean_payload_bytes"] = stats["payload_bytes"] / stats["records"]
    file_bytes = path.stat().st_size
    return {"file_bytes": file_bytes, "records": encoder.next_seq, "record_bytes": len(encoded), "blocks": blocks,
            "other_bytes": file_bytes - len(encoded), "full_digests": full_digests, "by_kind": kinds,
            "single_key_events": len(single_keys),
            "single_key_mean_bytes": statistics.mean(single_keys) if single_keys else None,
            "single_key_max_bytes": max(single_keys, default=None)}


def flood(sides: Sides, keys: int, clock: str) -> dict:
    """Record `keys` keys with no pauses under `clock`, check that nothing was lost, and run them plain."""
    script = flood_script(keys)
    recorded = sides.record(script, clock)
    with LogReader(recorded["path"]) as reader:
        records = [(record.kind, bytes(record.payload)) for record in reader.records()]
    typed = [payload for kind, payload in records if kind == Kind.CONSOLE_INPUT]
    if len(records) != recorded["records"] or b"".join(typed) != bytes(key for _, key in parse_key_script(script)):
        raise RuntimeError(f"the {clock}-clock flood lost records: {len(records)} of {recorded['records']} in the file")
    plain = sides.plain(script, clock)
    return {"clock": clock, "keys": keys, "keystroke_events": len(typed), "records": len(records),
            "record_seconds": recorded["seconds"], "plain_seconds": plain["seconds"],
            "keys_per_second": keys / recorded["seconds"],
            "keystroke_events_per_second": len(typed) / recorded["seconds"],
            "records_per_second": len(records) / recorded["seconds"],
            "plain_keys_per_second": keys / plain["seconds"]}


def run(quick: bool) -> dict:
    iterations, repeats = ITERATIONS[quick], REPEATS[quick]
    image = build_domain(KBDSHELL.read_bytes(), MEMORY_BYTES)
    with tempfile.TemporaryDirectory(prefix="xenrr-bench-") as directory:
        sides = Sides(image, Path(directory))
        bench_seconds = sides.plain(rf"bench {iterations}\rhalt\r")["seconds"]      # also a warm-up
        keys = max(6, int(bench_seconds * KEYS_SHARE_OF_BENCH * 1000 / KEY_INTERVAL_MS))
        fixed = sides.interleaved(r"halt\r", repeats)
        samples = sides.interleaved(paced_script(iterations, keys), repeats)
        costs = sides.component_costs(iterations, repeats)
        log = log_bytes(samples["record"][-1]["path"])
        floods = [flood(sides, FLOOD_KEYS[quick][clock], clock) for clock in ("real", "virtual")]
    plain, recorded, replayed = (_median(samples[side]) for side in ("plain", "record", "replay"))
    fixed_seconds = _median(fixed["record"]) - _median(fixed["plain"])
    digests = log["by_kind"].get("digest", {"records": 0})["records"]
    return {
        "iterations": iterations, "repeats": repeats, "keys": keys, "key_interval_ms": KEY_INTERVAL_MS,
        "timing": "in-process wall time (time.perf_counter) around Scheduler.run / record() / Replayer.run; "
                  "the log daemon's process start-up is inside record()",
        "plain_seconds": plain, "record_seconds": recorded, "replay_seconds": replayed,
        "record_ratio": recorded / plain, "replay_ratio": replayed / plain,
        "record_fixed_seconds": fixed_seconds, "record_steady_ratio": (recorded - fixed_seconds) / plain,
        "replay_open_seconds": _median(samples["replay"], "open_seconds"),
        "runs": {side: [run["seconds"] for run in runs] for side, runs in samples.items()},
        "fixed_runs": {side: [run["seconds"] for run in runs] for side, runs in fixed.items()},
        "costs": costs, "periodic_full_digests": log["full_digests"], "register_digests": digests - log["full_digests"],
        "timer_events_per_second": log["by_kind"].get("timer", {"records": 0})["records"] / plain,
        "log": log, "flood": floods,
    }


def table(results: dict) -> str:
    plain, costs = results["plain_seconds"], results["costs"]
    lines = [f"record and replay: kbdshell `bench {results['iterations']}`, 100 Hz timer, {results['keys']} keys "
             f"at {1000 // results['key_interval_ms']}/s; median of {results['repeats']} interleaved runs, "
             "in-process wall time",
             f"{'':34} {'seconds':>8} {'ratio':>6}",
             f"{'plain run (xenrr run)':34} {plain:>8.3f} {1:>6.3f}",
             f"{'record (xenrr record)':34} {results['record_seconds']:>8.3f} {results['record_ratio']:>6.3f}",
             f"{'  less its fixed cost':34} {results['record_seconds'] - results['record_fixed_seconds']:>8.3f} "
             f"{results['record_steady_ratio']:>6.3f}   (fixed cost per recording: "
             f"{results['record_fixed_seconds'] * 1000:.0f} ms)",
             f"{'replay (xenrr replay)':34} {results['replay_seconds']:>8.3f} {results['replay_ratio']:>6.3f}   "
             f"(+ {results['replay_open_seconds'] * 1000:.0f} ms to open the log and build the domain)",
             f"record's costs, measured apart: log daemon start+stop {costs['daemon_seconds'] * 1000:.0f} ms; full "
             f"digest {costs['full_digest_seconds'] * 1000:.0f} ms (x {results['periodic_full_digests']} periodic "
             f"+ initial + END); register digest {costs['register_digest_seconds'] * 1e6:.0f} us "
             f"(x {results['register_digests']})"]
    log = results["log"]
    lines.append(f"log of the last run: {log['file_bytes']} bytes, {log['records']} records in {log['blocks']} "
                 f"blocks ({log['other_bytes']} bytes of file header, block headers and footer); "
                 f"{results['timer_events_per_second']:.0f} timer events/s")
    for name, stats in sorted(log["by_kind"].items()):
        lines.append(f"  {name:14} {stats['records']:>6} records  {stats['mean_bytes']:>6.1f} bytes each "
                     f"({stats['mean_payload_bytes']:.1f} of payload)")
    if log["single_key_events"]:
        lines.append(f"  keystroke events of one key: {log['single_key_events']}, {log['single_key_mean_bytes']:.2f} "
                     f"bytes each on average, {log['single_key_max_bytes']} at most")
    lines.append("sustained key rate, nothing lost (whole record() call, fixed cost included):")
    for flood_result in results["flood"]:
        lines.append(f"  --clock {flood_result['clock']:7} {flood_result['keys']:>6} keys in "
                     f"{flood_result['keystroke_events']:>5} events: {flood_result['keys_per_second']:>6.0f} keys/s, "
                     f"{flood_result['keystroke_events_per_second']:>5.0f} events/s "
                     f"(plain run: {flood_result['plain_keys_per_second']:.0f} keys/s)")
    return "\n".join(lines)
