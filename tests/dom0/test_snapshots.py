"""Stored snapshots (dom0/snapshots.py): a goto from the nearest snapshot reaches exactly the state a full
replay reaches; damaged or tampered snapshots are skipped with a message and never trusted; parallel
verification (`replay --jobs`, one segment per snapshot interval) finds a divergence planted in any segment.

The recording is kbdshell under the virtual clock running `bench` for ~2.4 x 10^8 instructions with a
snapshot every 4 x 10^7, so there are 6 snapshots and every segment holds state digests of its own.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import signal
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dom0 import cli
from dom0.logfile import LogReader
from dom0.replay import ReplaySession
from dom0.segments import SegmentWorkers, count_segments, segment_bounds, verify_segment
from dom0.snapshots import _ENTRY, SnapshotFile, _checksum, snapshot_path
from stub.timeline import Timeline
from tests.conftest import write_log
from xen.logrecord import KIND_DIGEST, KIND_END
from xen.replay import Mark
from xen.vcpu import CpuState

SNAPSHOT_EVERY = 40_000_000


@pytest.fixture(scope="module")
def recording(recorder, kbdshell_elf) -> Path:
    done = recorder(kbdshell_elf, "--clock", "virtual", "--keys", r"echo a\rbench 30000000\recho b\rhalt\r",
                    "--snapshot-every", f"{SNAPSHOT_EVERY:.0e}")
    assert "6 snapshots in" in done.record.stderr, done.record.stderr
    return done.path


@pytest.fixture(scope="module")
def reference(recording):
    """A timeline without stored snapshots: every goto replays from its own checkpoints (from the start)."""
    session = ReplaySession(recording)
    yield Timeline(session)
    session.close()


def state_of(timeline: Timeline) -> tuple:
    domain = timeline.session.domain
    return (timeline.position, domain.vcpu.save_cpu(), domain.save_state(), domain.digest(with_memory=True),
            timeline.replayer.save_state())


def cold_goto(log: Path, mark: Mark, warnings: list[str] | None = None) -> tuple[tuple, Timeline]:
    """A fresh session and timeline with the stored snapshots beside `log`, sent to `mark`."""
    warn = (warnings if warnings is not None else []).append
    timeline = Timeline(ReplaySession(log), stored=SnapshotFile.beside(log, warn), warn=warn)
    timeline.goto(mark)
    return state_of(timeline), timeline


def copy_recording(recording: Path, directory: Path) -> Path:
    directory.mkdir()
    log = directory / recording.name
    shutil.copy(recording, log)
    shutil.copy(snapshot_path(recording), snapshot_path(log))
    return log


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_goto_from_the_nearest_snapshot_equals_goto_by_full_replay(recording, reference, data):
    last = reference.session.last_icount
    if data.draw(st.booleans(), label="at an event"):
        event = reference.session.event(data.draw(st.integers(1, len(reference.events())), label="event"))
        mark = Mark(event.icount, event.seq)
    else:
        mark = Mark(data.draw(st.integers(0, last), label="icount"), 2**63)
    state, timeline = cold_goto(recording, mark)
    reference.goto(mark)
    assert state == state_of(reference)
    # Only the distance from the nearest snapshot was replayed.
    nearest = max((m for m in segment_bounds(timeline.stored) if m <= mark), default=Mark(0, 0))
    assert timeline.instructions_replayed == timeline.position.icount - nearest.icount
    assert timeline.stored_restores == (nearest != Mark(0, 0))


def _entries(log: Path) -> list:
    stored = SnapshotFile(snapshot_path(log))
    entries = list(stored.entries)
    stored.close()
    return entries


def _rewrite_entry(log: Path, index: int, edit_state) -> None:
    """Replace snapshot `index`'s state by edit_state(state) under a valid checksum (a buggy or hostile writer)."""
    path = snapshot_path(log)
    data = bytearray(path.read_bytes())
    entry = _entries(log)[index]
    header_at = entry.offset - _ENTRY.size
    raw = zstandard.ZstdDecompressor().decompress(bytes(data[entry.body_offset:entry.body_offset + entry.body_length]))
    stream = io.BytesIO(raw)
    pickle.load(stream)                       # the state, then the pages
    body = zstandard.ZstdCompressor().compress(edit_state(raw[:stream.tell()]) + raw[stream.tell():])
    magic, flags, icount, seq, count, _, _ = _ENTRY.unpack_from(data, header_at)
    header = _ENTRY.pack(magic, flags, icount, seq, count, len(body), bytes(16))
    frames = bytes(data[entry.offset:entry.body_offset])
    header = header[:-16] + _checksum(header, frames, body)
    rest = data[entry.body_offset + entry.body_length:]
    path.write_bytes(bytes(data[:header_at]) + header + frames + body + bytes(rest))


def _with_rax(state_bytes: bytes, delta: int) -> bytes:
    cpu, domain, replayer = pickle.loads(state_bytes)
    registers = list(cpu.registers)
    registers[0] ^= delta
    return pickle.dumps((CpuState(tuple(registers), cpu.pc, cpu.icount), domain, replayer))


class _Evil:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-xenrr-test",))


def test_damaged_and_tampered_snapshots_are_skipped_with_a_message_never_trusted(recording, reference, tmp_path):
    entries = _entries(recording)
    target = Mark(entries[3].mark.icount + 1000, 2**63)       # snapshot 3 is the nearest one before it
    cases = {
        "flipped byte": (lambda log: _flip(snapshot_path(log), entries[3].body_offset + 7), "fails its checksum"),
        "tampered register": (lambda log: _rewrite_entry(log, 3, lambda s: _with_rax(s, 1)), "differs from the log"),
        "foreign code": (lambda log: _rewrite_entry(log, 3, lambda s: pickle.dumps(_Evil())), "cannot be decoded"),
        "cut short": (lambda log: _cut(snapshot_path(log), entries[3].body_offset + 5), "is cut short"),
        "not snapshots": (lambda log: snapshot_path(log).write_bytes(b"junk" * 10), "not a xenrr snapshot file"),
    }
    reference.goto(target)
    expected = state_of(reference)
    for name, (damage, message) in cases.items():
        log = copy_recording(recording, tmp_path / name.replace(" ", "-"))
        damage(log)
        warnings: list[str] = []
        state, timeline = cold_goto(log, target, warnings)
        assert state == expected, name
        assert any(message in warning for warning in warnings), (name, warnings)
        assert all("\n" not in warning for warning in warnings)
        if name != "not snapshots":      # the snapshot before the damaged one is used instead
            assert timeline.stored_restores == 1 and timeline.instructions_replayed == target.icount - \
                entries[2].mark.icount, name


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def test_replay_from_an_event_starts_at_the_snapshot_and_a_bad_one_is_one_warning_line(recording, kbdshell_elf, tmp_path,
                                                                                       capsys):
    log = copy_recording(recording, tmp_path / "flipped-byte")
    events = ReplaySession(log).events()
    status = cli.main(["replay", "--quiet", "--from", str(len(events) - 1), str(log)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "replayed to the end of the recording from event" in captured.err
    status = cli.main(["replay", "--json", "--from", str(len(events) - 1), str(log)])
    summary = json.loads(capsys.readouterr().out)
    with LogReader(log) as reader:        # what this replay checked: from the event on, not from the start
        checks = sum(record.kind in (KIND_DIGEST, KIND_END) for record in reader.records_from(events[-2].seq))
    assert status == 0 and summary["events"] == 2 and summary["digests_checked"] == checks, summary
    for bad in (["--from", "0"], ["--from", str(len(events) + 1)], ["--from", "x"], ["--from", "3", "--jobs", "2"],
                ["--jobs", "0"], ["--segment", "2-1"], ["--segment", "99"]):
        status = cli.main(["replay", "--quiet", *bad, str(log)])
        captured = capsys.readouterr()
        assert status == 2 and captured.err.count("\n") == 1 and "error" in captured.err, (bad, captured.err)
    _flip(snapshot_path(log), _entries(log)[-1].body_offset + 3)
    status = cli.main(["replay", "--quiet", "--from", str(len(events) - 1), str(log)])
    captured = capsys.readouterr()
    assert status == 0
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "fails its checksum" in warnings[0], captured.err
    for bad in ("abc", "-5", "1.5", "0s", "nan", "1e400", ""):
        status = cli.main(["record", str(kbdshell_elf), "-o", str(tmp_path / "x.xrr"), "--snapshot-every", bad])
        captured = capsys.readouterr()
        assert status == 2 and captured.err.count("\n") == 1 and "--snapshot-every" in captured.err, (bad, captured.err)


def test_snapshots_of_another_recording_are_not_used_and_said_in_one_line(recording, recorder, kbdshell_elf,
                                                                          tmp_path, capsys):
    """A .snap left or copied beside another log (here: the same session with one more key typed, so its
    snapshots sit elsewhere in the log) is refused as a whole, in one warning line: goto replays from the
    start, and `replay --jobs` sees one segment instead of segments starting at positions of another log."""
    other = recorder(kbdshell_elf, "--clock", "virtual", "--keys", r"echo ab\rbench 30000000\recho b\rhalt\r",
                     "--snapshot-every", f"{SNAPSHOT_EVERY:.0e}")
    log = tmp_path / "mixed" / recording.name
    log.parent.mkdir()
    shutil.copy(recording, log)
    shutil.copy(snapshot_path(other.path), snapshot_path(log))
    events = ReplaySession(log).events()
    status = cli.main(["replay", "--quiet", "--from", str(len(events) - 1), str(log)])
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert status == 0 and len(warnings) == 1 and "snapshots of another recording" in warnings[0], captured.err
    assert count_segments(log) == 1
    warned: list[str] = []
    _, timeline = cold_goto(log, Mark(events[-1].icount, events[-1].seq), warned)
    assert timeline.stored is None and timeline.stored_restores == 0 and len(warned) == 1


def _checks_inside(log: Path, start: Mark, end: Mark | None) -> list[int]:
    """The seqs of the digest and END records a segment checks, but not the digest its snapshot is checked
    against (the one logged just before the snapshot's position)."""
    with LogReader(log) as reader:
        return [record.seq for record in reader.records() if record.kind in (KIND_DIGEST, KIND_END)
                and start.seq <= record.seq and (end is None or record.seq < end.seq - 1)]


def test_parallel_verification_finds_a_divergence_planted_in_any_segment(recording, tmp_path, capsys):
    stored = SnapshotFile(snapshot_path(recording))
    bounds = segment_bounds(stored)
    stored.close()
    with LogReader(recording) as reader:
        header = reader.header
        records = [record._replace(payload=bytes(record.payload)) for record in reader.records()]
    log = copy_recording(recording, tmp_path / "planted")
    for segment, start in enumerate(bounds):
        end = bounds[segment + 1] if segment + 1 < len(bounds) else None
        inside = _checks_inside(recording, start, end)
        assert inside, f"segment {segment} checks no digest of its own"
        planted = list(records)
        target = planted[inside[len(inside) // 2]]
        payload = bytearray(target.payload)
        payload[1 if target.kind == KIND_DIGEST else 3] ^= 0x01    # a byte of the digest's state hash (END: after its length)
        planted[target.seq] = target._replace(payload=bytes(payload))
        write_log(log, header, planted)
        stored = SnapshotFile(snapshot_path(log))
        session = ReplaySession(log)
        summary = verify_segment(session, stored, segment, segment, lambda message: None)
        session.close()
        stored.close()
        assert not summary["verified"], summary
        assert f"state differs at icount {target.icount}" in summary["divergence"], summary


def test_replay_jobs_runs_no_more_processes_than_segments(virtual_recording, capsys):
    """A short recording has no stored snapshot: one segment, so `--jobs 4` is one process, and says so."""
    status = cli.main(["replay", "--jobs", "4", "--json", str(virtual_recording.path)])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert status == 0 and summary["verified"] and summary["segments"] == 1, captured.err
    assert summary["units"] == 1 and summary["jobs"] == 1
    assert "in 1 segment, 1 at a time" in captured.err, captured.err


def test_a_killed_segment_worker_is_reported_and_the_other_units_verify(recording):
    """`replay --jobs` forks its workers: one killed outright is its unit's failure (saying how it ended),
    and the other unit is verified all the same."""
    workers = SegmentWorkers(recording, count_segments(recording), 2, None)
    os.kill(workers.pids[0], signal.SIGKILL)
    killed, other = workers.results()
    assert not killed["verified"] and killed["divergence"] == ("segment 0-2 could not be verified: its worker "
                                                               "process ended (killed by signal 9)")
    assert other["verified"] and other["segment"] == "3-6" and other["complete"]


@pytest.mark.slow
def test_replay_jobs_verifies_in_child_processes_and_reports_a_planted_divergence(recording, tmp_path, capsys):
    """End to end: `replay --jobs 2` (two child processes, each a run of segments) on a log with a digest
    edited in its middle, then on the log as recorded: every digest checked once, all verified."""
    with LogReader(recording) as reader:
        header = reader.header
        records = [record._replace(payload=bytes(record.payload)) for record in reader.records()]
    log = copy_recording(recording, tmp_path / "planted")
    planted = list(records)
    digests = [record for record in records if record.kind == KIND_DIGEST]
    middle = digests[len(digests) // 2]
    payload = bytearray(middle.payload)
    payload[1] ^= 0x01
    planted[middle.seq] = middle._replace(payload=bytes(payload))
    write_log(log, header, planted)
    status = cli.main(["replay", "--jobs", "2", str(log)])
    captured = capsys.readouterr()
    assert status == 1 and f"replay diverged: state differs at icount {middle.icount}" in captured.err, captured.err
    write_log(log, header, records)
    status = cli.main(["replay", "--jobs", "2", "--json", str(log)])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert status == 0 and summary["verified"] and summary["complete"], captured.err
    assert summary["digests_checked"] == sum(record.kind in (KIND_DIGEST, KIND_END) for record in records)
    assert summary["instructions"] == records[-1].icount and summary["segments"] == 7 and summary["units"] == 2


@pytest.mark.slow
def test_verify_segments_runs_one_dask_unit_per_segment_and_finds_the_planted_divergence(recording, xenrr, tmp_path):
    """`xenrr verify --segments` on a local Dask cluster: the recording as recorded passes with all its
    segments, a copy with a digest edited in one segment fails, naming what differed."""
    with LogReader(recording) as reader:
        header = reader.header
        records = [record._replace(payload=bytes(record.payload)) for record in reader.records()]
    planted_log = copy_recording(recording, tmp_path / "planted")
    digests = [record for record in records if record.kind == KIND_DIGEST]
    target = digests[len(digests) // 2]
    payload = bytearray(target.payload)
    payload[1] ^= 0x01
    write_log(planted_log, header, [record if record is not target else target._replace(payload=bytes(payload))
                                    for record in records])
    done = xenrr("verify", "--segments", "--workers", "2", "--json", recording, planted_log, timeout=600)
    assert done.status == 1, done.stderr
    results = {Path(entry["recording"]).parent.name: entry for entry in json.loads(done.stdout)["recordings"]}
    assert results["planted"]["status"] == "failed" and f"state differs at icount {target.icount}" in \
        results["planted"]["detail"]
    passed = results[recording.parent.name]
    assert passed["status"] == "passed" and "(7 segments)" in passed["detail"], passed


@pytest.mark.slow
def test_snapshots_every_so_many_seconds_of_a_two_vcpu_domain_restore_every_vcpu(recorder, kbdshell_elf):
    """`--snapshot-every 0.05s` (host time) on a domain with two vCPUs (kbdshell `par`: both run, sharing
    memory): every vCPU's registers and PV state come back from a stored snapshot as a full replay has them."""
    done = recorder(kbdshell_elf, "--vcpus", "2", "--clock", "virtual", "--keys", r"par 2000000\rbench 2000000\rhalt\r",
                    "--snapshot-every", "0.05s")
    stored = SnapshotFile(snapshot_path(done.path))
    assert len(stored.usable) >= 2, done.record.stderr
    marks = [entry.mark for entry in stored.usable]
    stored.close()
    reference = Timeline(ReplaySession(done.path))
    for mark in (Mark(marks[0].icount + 12345, 2**63), Mark(marks[-1].icount + 777, 2**63)):
        state, timeline = cold_goto(done.path, mark)
        reference.goto(mark)
        assert timeline.stored_restores == 1
        assert state == state_of(reference)
        assert len(timeline.session.domain.vcpus) == 2
    # Reverse-stepping one vCPU from just past a snapshot: its previous instruction may lie in the stretch the
    # snapshot jumped over, whose switches only a replay of it shows; the same place as a full replay's.
    mark = Mark(marks[-1].icount + 777, 2**63)
    for vcpu in (0, 1):
        _, timeline = cold_goto(done.path, mark)
        reference.goto(mark)
        stepped, expected = timeline.reverse_step_vcpu(vcpu), reference.reverse_step_vcpu(vcpu)
        assert (stepped.mark, stepped.vcpu) == (expected.mark, expected.vcpu)
        assert state_of(timeline) == state_of(reference)
