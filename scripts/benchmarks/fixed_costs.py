"""Fixed costs (issue 15): what `xenrr run` costs before and around a trivial guest, what `record` adds,
and what state digests cost in log bytes per busy second.

Owns three measurements:
- Start-up, end to end, as a user sees it: wall time of real processes, interleaved, median of the
  repeats - `python -c pass` (the interpreter, the floor), the engine alone (`import icicle` and one
  x86-64 engine created from the patched spec, as xen/vcpu.py creates it), `xenrr run --help`, and
  `xenrr run` of guests/minimal (85,000 instructions, it types one line and powers off; --clock
  virtual, so it never waits for host time). Also in-process: the engine's creation apart.
- The same `xenrr run` and `xenrr record` as users start them (the `xenrr` console script) through a
  fork server of the benchmark's own (dom0/forkserver.py, started before and stopped after), side by
  side; their CPU time is the client's plus the server's child's (the server's status counts it).
- Record's fixed cost: `xenrr record` minus `xenrr run` of that same guest, both end to end and
  interleaved with the above (medians; the log goes to a fresh temporary directory each time), in-process
  and through the fork server; in wall time and in CPU time (the recorder's; its log daemon, left to
  exit once the log is finished, is not counted), which a busy machine disturbs less.
- Log bytes per busy second: kbdshell's `bench` recorded in-process (--clock virtual, so the log is
  the same on every machine); the digest records' bytes (re-encoded in order with
  xen.logrecord.Encoder, which reproduces the file's record bytes) over the instructions they cover,
  converted at the instruction rate of a plain run of the same workload measured here, and at the
  2.4 x 10^9 instructions per second docs/benchmarks.md measured for this workload on a quiet
  machine; the whole log's bytes too, and the digests' share of it. Before this work a periodic
  digest was 161 bytes with its record (docs/benchmarks.md, record_replay).
Invariant: a run that does not end with the guest powering off, or a recording whose replay does not
verify, aborts the benchmark.
"""
from __future__ import annotations

import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from benchmarks.record_replay import _median_time
from dom0.consoleinput import KeyScript, parse_key_script
from dom0.launch import receive_message, send_message
from dom0.logfile import LogReader
from dom0.record import record
from dom0.replay import ReplaySession
from xen.builder import build_domain
from xen.domain import Domain
from xen.logrecord import KIND_DIGEST, Encoder
from xen.sched import Scheduler
from xen.vcpu import new_engine

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = ROOT / "guests" / "minimal" / "minimal.elf"
KBDSHELL = ROOT / "guests" / "kbdshell" / "kbdshell.elf"
MINIMAL_KEYS = r"hello world\r"
REPEATS = {False: 9, True: 2}
BENCH_ITERATIONS = {False: 200_000_000, True: 20_000_000}     # about 1.6 x 10^9 instructions at full size
QUIET_INSTRUCTIONS_PER_SECOND = 2.4e9
BEFORE_DIGEST_RECORD_BYTES = 161          # a periodic digest and its record, before (docs/benchmarks.md)
DIGEST_INTERVAL_BEFORE = 1 << 24
TARGETS = {"start_up_seconds": 0.15, "record_fixed_seconds": 0.010, "digest_bytes_per_busy_second": 2048}


def _engine_alone() -> list[str]:
    return [sys.executable, "-c", "from xen.vcpu import new_engine; new_engine()"]


def _xenrr(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "dom0.cli", *arguments]


def served_command(*arguments: str) -> list[str]:
    """The `xenrr` program as users start it (the console script; its module where none is installed)."""
    script = Path(sys.executable).parent / "xenrr"
    return [str(script), *arguments] if script.exists() else [sys.executable, "-m", "dom0.launch", *arguments]


@contextmanager
def fork_server():
    """A fork server on a private socket of its own for the benchmark's served commands; their environment."""
    directory = Path(tempfile.mkdtemp(prefix="xenrr-bench-server-"))       # mode 0700
    environment = {**os.environ, "XENRR_SERVER": "manual", "XENRR_SERVER_SOCKET": str(directory / "server.sock")}
    subprocess.run(served_command("server", "start"), env=environment, check=True, capture_output=True)
    try:
        yield environment
    finally:
        subprocess.run(served_command("server", "stop"), env=environment, capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def server_cpu_seconds(environment: dict[str, str]) -> float:
    """CPU seconds of the commands the fork server at the environment's socket has run (its status)."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(environment["XENRR_SERVER_SOCKET"])
        send_message(connection, {"op": "status", "fingerprint": ""})
        return receive_message(connection)[0]["cpu_seconds"]
    finally:
        connection.close()


def _timed(command: list[str], environment: dict[str, str] | None = None, expect: int = 0) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of the process and every child it waited for; through a fork server
    (`environment` names it), the CPU of the server's child that ran the command too. A recorder's log
    daemon, which it leaves to exit once the log is finished, is counted in neither."""
    cpu_before = _cpu_of_children()
    served_before = server_cpu_seconds(environment) if environment else 0.0
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=environment)
    seconds = time.perf_counter() - started
    if done.returncode != expect:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.decode()[-300:]}")
    served = server_cpu_seconds(environment) - served_before if environment else 0.0
    return seconds, _cpu_of_children() - cpu_before + served


def _start_up_and_record(repeats: int) -> dict:
    """The processes side by side, interleaved; medians in seconds."""
    directory = Path(tempfile.mkdtemp(prefix="xenrr-fixed-costs-"))
    minimal_run = ("run", str(MINIMAL), "--keys", MINIMAL_KEYS, "--clock", "virtual")
    try:
        sides = {
            "python -c pass": lambda index: [sys.executable, "-c", "pass"],
            "engine alone (import icicle, one engine)": lambda index: _engine_alone(),
            "xenrr run --help": lambda index: _xenrr("run", "--help"),
            "xenrr run (minimal)": lambda index: _xenrr("run", str(MINIMAL), "--keys", MINIMAL_KEYS,
                                                        "--clock", "virtual"),
            "xenrr record (minimal)": lambda index: _xenrr("record", str(MINIMAL), "-o", str(directory / f"{index}.xrr"),
                                                           "--keys", MINIMAL_KEYS, "--clock", "virtual"),
        }
        served_sides = {
            "xenrr run (minimal), fork server": lambda index: served_command(*minimal_run),
            "xenrr record (minimal), fork server": lambda index: served_command(
                "record", str(MINIMAL), "-o", str(directory / f"served-{index}.xrr"), "--keys", MINIMAL_KEYS,
                "--clock", "virtual"),
        }
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in [*sides, *served_sides]}
        with fork_server() as environment:
            for index in range(repeats):
                for name, command in sides.items():
                    samples[name].append(_timed(command(index)))
                for name, command in served_sides.items():
                    samples[name].append(_timed(command(index), environment))
        replayed = subprocess.run(_xenrr("replay", str(directory / "0.xrr"), "--quiet"), cwd=ROOT, capture_output=True)
        if replayed.returncode != 0:
            raise RuntimeError(f"the recorded minimal run does not replay: {replayed.stderr.decode()[-300:]}")
        record_sizes = {path.stat().st_size for path in directory.glob("*.xrr")}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    medians = {name: statistics.median(wall for wall, _ in values) for name, values in samples.items()}
    cpu = {name: statistics.median(cpu for _, cpu in values) for name, values in samples.items()}
    return {"medians": {name: round(value, 4) for name, value in medians.items()},
            "cpu_medians": {name: round(value, 4) for name, value in cpu.items()},
            "record_fixed_seconds": round(medians["xenrr record (minimal)"] - medians["xenrr run (minimal)"], 4),
            "record_fixed_cpu_seconds": round(cpu["xenrr record (minimal)"] - cpu["xenrr run (minimal)"], 4),
            "record_fixed_seconds_served": round(medians["xenrr record (minimal), fork server"]
                                                 - medians["xenrr run (minimal), fork server"], 4),
            "record_fixed_cpu_seconds_served": round(cpu["xenrr record (minimal), fork server"]
                                                     - cpu["xenrr run (minimal), fork server"], 4),
            "record_log_bytes": sorted(record_sizes)}


def _digest_bytes(quick: bool) -> dict:
    """A busy recording's digest bytes, and the plain run's instruction rate on this machine."""
    image = build_domain(KBDSHELL.read_bytes(), 16 << 20)
    script = rf"bench {BENCH_ITERATIONS[quick]}\rhalt\r"
    plain = Domain(image)
    started = time.perf_counter()
    outcome = Scheduler(plain, KeyScript(parse_key_script(script)), clock="virtual", linger_ns=10**9).run()
    plain_seconds = time.perf_counter() - started
    if outcome.reason != "shutdown":
        raise RuntimeError(f"plain run of bench did not power off: {outcome}")
    directory = Path(tempfile.mkdtemp(prefix="xenrr-digest-bytes-"))
    try:
        path = directory / "busy.xrr"
        result = record(Domain(image), KBDSHELL, KeyScript(parse_key_script(script)), path, clock="virtual",
                        max_instructions=None, linger_ns=10**9)
        if result.outcome.reason != "shutdown":
            raise RuntimeError(f"recording of bench did not power off: {result.outcome}")
        session = ReplaySession(path)
        session.replayer.run()
        session.close()
        file_bytes = path.stat().st_size
        encoder, digest_bytes, digests, all_record_bytes = Encoder(), 0, [], 0
        with LogReader(path) as log:
            for logged in log.records():
                encoded = bytearray()
                encoder.encode(encoded, logged.kind, logged.vcpu, logged.icount, logged.rip, logged.payload)
                all_record_bytes += len(encoded)
                if logged.kind == KIND_DIGEST:
                    digest_bytes += len(encoded)
                    digests.append(logged.icount)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    instructions = outcome.icount
    measured_rate = instructions / plain_seconds
    per_instruction = digest_bytes / instructions
    before_per_instruction = BEFORE_DIGEST_RECORD_BYTES / DIGEST_INTERVAL_BEFORE
    return {"instructions": instructions, "plain_seconds": round(plain_seconds, 3),
            "measured_instructions_per_second": round(measured_rate),
            "digest_records": len(digests), "digest_bytes": digest_bytes, "log_record_bytes": all_record_bytes,
            "log_file_bytes": file_bytes, "digest_share_of_log": round(digest_bytes / file_bytes, 3),
            "digest_bytes_per_busy_second_measured": round(per_instruction * measured_rate),
            "digest_bytes_per_busy_second_quiet": round(per_instruction * QUIET_INSTRUCTIONS_PER_SECOND),
            "log_bytes_per_busy_second_quiet": round(file_bytes / instructions * QUIET_INSTRUCTIONS_PER_SECOND),
            "before_digest_bytes_per_busy_second_quiet": round(before_per_instruction * QUIET_INSTRUCTIONS_PER_SECOND)}


def run(quick: bool) -> dict:
    repeats = REPEATS[quick]
    processes = _start_up_and_record(repeats)
    return {"repeats": repeats, "processes": processes, "engine_creation_seconds": round(_median_time(new_engine, repeats), 4),
            "digests": _digest_bytes(quick), "load_average": os.getloadavg()[0], "targets": TARGETS}


def table(results: dict) -> str:
    medians, cpu = results["processes"]["medians"], results["processes"]["cpu_medians"]
    floor = medians["python -c pass"]
    lines = [f"| process (median of {results['repeats']}, interleaved) | seconds | minus `python -c pass` | CPU seconds |",
             "|---|---:|---:|---:|"]
    lines += [f"| {name} | {value:.3f} | {value - floor:.3f} | {cpu[name]:.3f} |" for name, value in medians.items()]
    digests = results["digests"]
    lines += ["", "| fixed cost | measured | target |", "|---|---:|---:|",
              f"| `xenrr run` of minimal, end to end, through the fork server | "
              f"{medians['xenrr run (minimal), fork server']:.3f} s | <= {TARGETS['start_up_seconds']} s |",
              f"| `xenrr run` of minimal, end to end, in-process (XENRR_SERVER=off) | "
              f"{medians['xenrr run (minimal)']:.3f} s | - |",
              f"| engine creation (in-process, median) | {results['engine_creation_seconds']:.3f} s | - |",
              f"| record's added fixed cost (record - run) | {results['processes']['record_fixed_seconds'] * 1000:.1f} ms | "
              f"<= {TARGETS['record_fixed_seconds'] * 1000:.0f} ms |",
              f"| record's added fixed cost through the fork server | "
              f"{results['processes']['record_fixed_seconds_served'] * 1000:.1f} ms | "
              f"<= {TARGETS['record_fixed_seconds'] * 1000:.0f} ms |",
              f"| the same in CPU time through the fork server (client and the server's child) | "
              f"{results['processes']['record_fixed_cpu_seconds_served'] * 1000:.1f} ms | - |",
              f"| the same in CPU time, in-process (the recorder) | "
              f"{results['processes']['record_fixed_cpu_seconds'] * 1000:.1f} ms | - |",
              f"| digest bytes per busy second (at {QUIET_INSTRUCTIONS_PER_SECOND:.1e} instr/s) | "
              f"{digests['digest_bytes_per_busy_second_quiet']} | <= {TARGETS['digest_bytes_per_busy_second']} |",
              f"| digest bytes per busy second (at this run's {digests['measured_instructions_per_second']:.3g} instr/s) | "
              f"{digests['digest_bytes_per_busy_second_measured']} | - |",
              f"| digest bytes per busy second before (161 bytes every 2^24) | "
              f"{digests['before_digest_bytes_per_busy_second_quiet']} | - |",
              f"| whole log per busy second / digests' share of it | {digests['log_bytes_per_busy_second_quiet']} / "
              f"{digests['digest_share_of_log']:.0%} | - |",
              f"| load average at the end | {results['load_average']:.1f} | - |"]
    return "\n".join(lines)
