"""`xenrr record NAME -o LOG` on a domain already running on the host: the log begins with the
domain's whole state at that instant (registers of every vCPU, Domain.save_state and every frame
written since it was built), so it replays and verifies from the log alone, history (reverse
execution, event numbers) begins where the recording began, and a damaged start state is one line.

The in-process tests drive the host's own per-domain code (host/pcpu.py's HostedDomain: the real
clock, quanta, a real log daemon); the end-to-end test runs `xenrr up` and the commands as processes,
and a real GDB against `xenrr serve`."""
from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import zstandard

from dom0.logfile import START_STATE_KEY, LogFormatError, LogHeader, LogReader
from dom0.replay import ReplaySession, ReplaySetupError
from dom0.snapshots import encode_entry, load_start_state
from host.pcpu import HostedDomain
from host.xlcfg import DomainConfig
from stub.timeline import Timeline
from xen.replay import Mark
from xen.sched import Outcome
from tests.conftest import ROOT, guest_path, run_xenrr

QUANTUM_BUDGET = 200_000


class Running:
    """A HostedDomain run in quanta in this process, its console output collected."""

    def __init__(self, name: str, vcpus: int = 1):
        self.output = bytearray()
        config = DomainConfig(name=name, kernel=guest_path("kbdshell"), memory_mib=4, vcpus=vcpus)
        self.hosted = HostedDomain(config, 1, lambda _name, data: self.output.extend(data),
                                   report_recording=lambda _name, summary: self.summaries.append(summary))
        self.summaries: list[dict] = []

    def run_until(self, text: bytes, count: int = 1, limit: int = 200_000_000) -> None:
        """Run quanta (waiting while the domain idles) until the console shows `text` `count` times."""
        hosted = self.hosted
        while self.output.count(text) < count:
            assert hosted.domain.vcpu.icount < limit and hosted.domain.alive, bytes(self.output)
            if hosted.idle and hosted.wake_ns is not None and time.monotonic_ns() >= hosted.wake_ns:
                hosted.idle = False                      # its timer is due (host/pcpu.py's loop wakes it so)
            if hosted.entity.runnable:
                hosted.run(QUANTUM_BUDGET)
            else:
                time.sleep(0.001)

    def type(self, keys: bytes, until: bytes, count: int = 1) -> None:
        self.hosted.type(keys)
        self.run_until(until, count)


def replay_to_end(log: Path) -> tuple[ReplaySession, bytes]:
    shown = bytearray()
    session = ReplaySession(log, console_output=shown.extend)
    session.replayer.run()
    return session, bytes(shown)


def test_a_domain_recorded_from_mid_run_replays_from_its_log_alone(tmp_path):
    """Two vCPUs racing (`par`) when the recording begins: the log's start state restores both and the
    replay verifies every digest to the END; the console replays only what came after the start;
    events are numbered from the start; the timeline cannot go before it."""
    running = Running("smp", vcpus=2)
    running.type(b"echo before\r", b"\r\nbefore")
    running.hosted.type(b"par 3000\r")
    running.hosted.run(QUANTUM_BUDGET)                     # both vCPUs up and racing (a quantum: 100k each)
    log = tmp_path / "smp.xrr"
    running.hosted.start_recording(log)
    start = running.hosted.recording_start
    assert start > 0 and running.hosted.domain.vcpus[1].status() != "down"
    running.run_until(b"> ", running.output.count(b"> ") + 1)
    running.type(b"echo after\r", b"\r\nafter")
    with pytest.raises(ValueError, match="already being recorded"):
        running.hosted.start_recording(tmp_path / "again.xrr")
    running.hosted.stop_recording(Outcome("destroyed", running.hosted.domain.vcpu.icount))
    assert running.summaries[-1]["from_icount"] == start and running.summaries[-1]["failure"] is None

    with LogReader(log) as reader:
        assert reader.header.start_icount == start and reader.header.initial_state[START_STATE_KEY]["bytes"] > 0
        state = load_start_state(reader.header.start_state, "start")
        assert state.mark == Mark(start, 0) and state.pages
    session, shown = replay_to_end(log)
    assert session.start_icount == start
    assert session.replayer.recorded_outcome.startswith("destroyed:") and session.replayer.digests_checked >= 1
    assert session.domain.vcpu.icount == running.hosted.domain.vcpu.icount
    assert session.domain.digest(with_memory=True) == running.hosted.domain.digest(with_memory=True)
    assert b"after" in shown and b"before" not in shown
    assert session.events()[0].number == 1 and session.events()[0].icount >= start

    timeline = Timeline(ReplaySession(log))
    assert timeline.start == Mark(start, 0)
    timeline.goto_icount(start + 1000)
    assert timeline.reverse_step().reason == "step"
    assert timeline.goto_icount(0).mark == Mark(start, 0)        # before the start: the start
    assert timeline.reverse_step().reason == "history-start" and timeline.position == Mark(start, 0)
    assert timeline.reverse_cont().reason == "history-start"
    running.hosted.close()


def _moved(running: Running) -> Running:
    """The domain leaves its HostedDomain and arrives in a new one, as between two pCPU workers (what
    goes across is pickled, as the pipes between processes do)."""
    handed = pickle.loads(pickle.dumps(running.hosted.leave()))
    running.hosted.close()
    config, domid = running.hosted.config, running.hosted.domid
    running.hosted = HostedDomain(config, domid, lambda _name, data: running.output.extend(data), moved=handed,
                                  report_recording=lambda _name, summary: running.summaries.append(summary))
    return running


def test_a_recording_moved_between_pcpus_continues_one_log_that_replays_and_verifies(tmp_path, monkeypatch):
    """A domain recorded from mid-run moves twice (leave/arrive, as `vcpu-pin` does between workers) with
    snapshots every 400k instructions, every third a key snapshot: one log, every record once and in order, every snapshot (taken
    before, between and after the moves) restores and matches the digest logged with it, and the replay
    from the log alone verifies to the END with the console of the whole recording."""
    monkeypatch.setattr("host.pcpu.DEFAULT_EVERY_INSTRUCTIONS", 400_000)
    monkeypatch.setattr("dom0.snapshots.KEY_EVERY", 3)    # key snapshots after the moves too
    running = Running("moving")
    running.type(b"echo before\r", b"\r\nbefore")
    log = tmp_path / "moving.xrr"
    running.hosted.start_recording(log)
    start = running.hosted.recording_start
    prompts = lambda more: running.output.count(b"\r\n> ") + more      # noqa: E731
    # Round 0 writes the xenstore ring page (which later rounds leave alone) before its snapshots and
    # again after the last of them: the snapshots after the moves must hold it (what was written before
    # the move, since the start and since the last snapshot).
    running.type(b"xs write data/x before-the-snapshots\recho round 0\rbench 100000\r", b"\r\n> ", prompts(3))
    running.type(b"xs write data/y after-the-last-one\r", b"\r\n> ", prompts(1))
    for round in (1, 2):
        _moved(running)
        assert running.hosted.recording is not None and running.hosted.recording_start == start
        running.type(f"echo round {round}\rbench 100000\r".encode(), b"\r\n> ", prompts(2))
    running.hosted.stop_recording(Outcome("destroyed", running.hosted.domain.vcpu.icount))
    running.hosted.close()
    assert len(running.summaries) == 1 and running.summaries[0]["failure"] is None

    with LogReader(log) as reader:
        assert reader.damage is None and [record.seq for record in reader.records()] == list(range(reader.record_count))
    session, shown = replay_to_end(log)
    assert session.replayer.recorded_outcome.startswith("destroyed:")
    assert session.domain.digest(with_memory=True) == running.hosted.domain.digest(with_memory=True)
    assert all(f"round {round}".encode() in shown for round in range(3)) and b"\r\nbefore" not in shown
    from dom0.segments import count_segments, verify_segment
    from dom0.snapshots import SnapshotFile
    problems: list[str] = []
    segments = count_segments(log, problems.append)
    assert segments >= 6 and not problems                  # snapshots before, between and after the moves
    stored = SnapshotFile.beside(log, problems.append)
    for segment in range(segments):
        checked = verify_segment(ReplaySession(log), stored, segment, segment, problems.append)
        assert checked["verified"] and not problems, (checked, problems)


def _log_with_start_state(log: Path, start_state: bytes, changed: Path) -> Path:
    """`log` with another start state (the header's length and CRC made right), blocks unchanged."""
    with LogReader(log) as reader:
        header = reader.header
        rest = Path(log).read_bytes()[reader._header_end:]
    initial = {**header.initial_state, START_STATE_KEY: {**header.initial_state[START_STATE_KEY],
                                                         "bytes": len(start_state)}}
    changed.write_bytes(LogHeader(header.image_sha256, header.config, initial, start_state).to_bytes() + rest)
    return changed


def test_a_damaged_start_state_is_one_line_never_trusted(tmp_path):
    """A flipped byte (checksum), a cut file, and a start state that decodes but is not the recorded
    one (the header's digest) are each refused in one line, by the session and by the CLI."""
    running = Running("one")
    running.type(b"echo before\r", b"\r\nbefore")
    log = tmp_path / "one.xrr"
    running.hosted.start_recording(log)
    running.type(b"echo after\r", b"\r\nafter")
    running.hosted.stop_recording(Outcome("destroyed", running.hosted.domain.vcpu.icount))
    running.hosted.close()
    with LogReader(log) as reader:
        header_end, start_state = reader._header_end, reader.header.start_state
    data = log.read_bytes()
    flipped = tmp_path / "flipped.xrr"
    flipped.write_bytes(data[:header_end - 100] + bytes([data[header_end - 100] ^ 1]) + data[header_end - 99:])
    cut = tmp_path / "cut.xrr"
    cut.write_bytes(data[:header_end - len(start_state) // 2])

    # Start states that pass their checksum but are not the recorded state: another instant's (the
    # same domain later), and the recorded one with one frame's contents changed (the header's digest).
    other = Running("one")
    other.type(b"echo other\r", b"\r\nother")
    other.hosted.start_recording(tmp_path / "other.xrr")
    other.hosted.stop_recording(Outcome("destroyed", other.hosted.domain.vcpu.icount))
    other.hosted.close()
    with LogReader(tmp_path / "other.xrr") as reader:
        swapped = _log_with_start_state(log, reader.header.start_state, tmp_path / "swapped.xrr")
    state = load_start_state(start_state, "start")
    pages = dict(state.pages)
    frame = min(pages)
    pages[frame] = bytes(4096) if pages[frame] != bytes(4096) else b"\1" * 4096
    body = pickle.dumps((state.cpu, state.domain, state.replayer))
    edited = encode_entry(zstandard.ZstdCompressor(), state.mark.icount, 0, True, sorted(pages), body,
                          b"".join(pages[number] for number in sorted(pages)))
    tampered = _log_with_start_state(log, edited, tmp_path / "tampered.xrr")

    expected = [(flipped, "start state of .* is damaged: it fails its BLAKE2b checksum"),
                (cut, "the log's start state is truncated"),
                (swapped, "start state of .* is at instruction .*, its header says"),
                (tampered, "does not start in the recorded state: guest memory")]
    for path, message in expected:
        with pytest.raises((ReplaySetupError, LogFormatError), match=message):
            ReplaySession(path)
        replayed = run_xenrr("replay", path)
        assert replayed.status == 2 and "Traceback" not in replayed.stderr, replayed.stderr
        assert len(replayed.stderr.strip().splitlines()) == 1 and message.split(" .*")[-1][:12] in replayed.stderr
    assert run_xenrr("replay", log, "--quiet").status == 0


def _start_recording(host, name: str, log: Path) -> tuple[subprocess.Popen, int]:
    """`xenrr record NAME -o LOG` as a process; returns it and the instruction count it started at."""
    process = subprocess.Popen([sys.executable, "-m", "dom0.cli", "record", name, "-o", str(log),
                                "--socket", str(host.socket)], cwd=ROOT, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = process.stderr.readline().decode()
    found = re.search(rf"recording {name} from instruction (\d+) into {re.escape(str(log))}", line)
    assert found, line + process.stderr.read().decode()
    return process, int(found.group(1))


def _ended(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr.decode()


def test_record_a_running_domain_then_replay_and_debug_its_log_alone(host, tmp_path):
    """On a real host: bad requests are one line; a first recording stopped with Ctrl-C leaves the
    domain running, a second goes along when the domain moves to the other pCPU and back (`vcpu-pin`)
    and ends when the domain is destroyed; both logs replay and verify without
    the host (the console from the recording's start on), a third ends when `xenrr shutdown` powers
    the guest off (exit 0) and verifies too, and a real GDB's reverse-continue stops
    at the start with "No more reverse-execution history"."""
    assert host.xenrr("create", host.config("sh", guest="kbdshell", memory=4)).status == 0
    host.console_until("sh", b"\nbefore\r", 1, typed=b"echo before\r")
    kept = tmp_path / "kept.xrr"
    kept.write_bytes(b"not to be replaced")
    for args, message in [(("nosuch", "-o", tmp_path / "n.xrr"), "cannot record nosuch: no domain named 'nosuch'"),
                          (("sh", "-o", kept), f"{kept} already exists (a recording is never replaced"),
                          (("sh", "-o", tmp_path / "n.xrr", "--force"), "is never replaced")]:
        refused = host.xenrr("record", *args)
        assert refused.status == 2 and message in refused.stderr and len(refused.stderr.splitlines()) == 1
    nohost = run_xenrr("record", "sh", "-o", tmp_path / "n.xrr", "--socket", tmp_path / "none.sock")
    assert nohost.status == 2 and "no host is running at" in nohost.stderr and "Traceback" not in nohost.stderr
    assert kept.read_bytes() == b"not to be replaced" and not (tmp_path / "n.xrr").exists()

    first_log, second_log = tmp_path / "first.xrr", tmp_path / "second.xrr"
    first, first_start = _start_recording(host, "sh", first_log)
    host.console_until("sh", b"\nfirst\r", 1, typed=b"echo first\r")
    first.send_signal(signal.SIGINT)
    status, said = _ended(first)
    assert status == 130 and "recording stopped; sh runs on" in said, said
    assert host.domains()["sh"]["recording"] is None
    second, second_start = _start_recording(host, "sh", second_log)
    assert second_start > first_start
    again = host.xenrr("record", "sh", "-o", tmp_path / "again.xrr")
    assert again.status == 2 and f"sh is already being recorded into {second_log}" in again.stderr
    for pcpu in (1, 0):                                # the recording goes along, twice
        assert host.xenrr("vcpu-pin", "sh", "0", str(pcpu)).status == 0 and host.domains()["sh"]["pcpu"] == pcpu
        assert host.domains()["sh"]["recording"] == str(second_log)
        host.console_until("sh", f"\non {pcpu}\r".encode(), 1, typed=f"echo on {pcpu}\r".encode())
    host.console_until("sh", b"\nsecond\r", 1, typed=b"echo second\r")
    assert host.xenrr("destroy", "sh").status == 0
    status, said = _ended(second)
    assert status == 3 and "domain sh destroyed" in said and f"(instructions {second_start} to" in said, said

    # A third ends when the guest powers off at `xenrr shutdown` (xsprobe watches control/shutdown).
    probe_log = tmp_path / "probe.xrr"
    assert host.xenrr("create", host.config("probe", guest="xsprobe", memory=4)).status == 0
    host.wait_for(lambda: host.domains()["probe"]["state"] == "blocked", "xsprobe to wait for control/shutdown")
    probe, _ = _start_recording(host, "probe", probe_log)
    assert host.xenrr("shutdown", "probe").status == 0
    status, said = _ended(probe)
    assert status == 0 and "domain probe shut down (poweroff)" in said, said

    host.process.send_signal(signal.SIGTERM)            # no host from here on: the logs alone
    host.process.wait(timeout=60)
    for log, shown, hidden, outcome in [(first_log, "first", "before", "recording-stopped:"),
                                        (second_log, "on 1\r\n> echo on 0\r\non 0\r\n> echo second\r\nsecond",
                                         "first", "destroyed:"),
                                        (probe_log, "", "xsprobe ready", "shutdown:poweroff")]:
        replay = run_xenrr("replay", log, "--json")
        summary = json.loads(replay.stdout)
        assert replay.status == 0 and summary["verified"] and summary["complete"], replay.stderr
        assert summary["recorded_outcome"].startswith(outcome) and summary["digests_checked"] >= 1
        console = run_xenrr("replay", log).stdout
        assert (not shown or f"\n{shown}\r" in console) and hidden not in console

    from gdbext.api import NO_HISTORY_TEXT, xenrr_debug
    with xenrr_debug(second_log) as d:
        assert d.when() == (0, second_start)
        assert d.cont().reason == "history-end"
        back = d.reverse_continue()
        assert (back.reason, back.icount, back.event) == ("history-start", second_start, 0)
        assert NO_HISTORY_TEXT in d.gdb("reverse-stepi") and d.when() == (0, second_start)
        assert d.goto_event(1).icount >= second_start
