"""The log daemon as a real process: records from the ring into a valid log, whatever stops it.

Faults are real: SIGKILL of the daemon, a full disk (a 64 KiB tmpfs when this runs as root
and may mount; skipped otherwise), a file-size limit (RLIMIT_FSIZE set on the running daemon
with prlimit -> EFBIG), a recorder process that dies without closing the stream.
"""

import hashlib
import multiprocessing
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dom0.logd import fork_log_daemon, start_log_daemon
from dom0.logfile import LogHeader, LogReader
from dom0.logring import LogDaemonDied, LogDaemonError, RingProducer, process_alive
from xen.logrecord import FIRST_INPUT_KIND, KIND_END, Encoder

HEADER = LogHeader(hashlib.sha256(b"guest image").digest(), {"memory_mib": 4}, {"rip": 4096})
KEY = FIRST_INPUT_KIND
FORK = multiprocessing.get_context("fork")


def key_record(i: int) -> tuple[int, int, int, int, bytes]:
    return (KEY, 0, 1000 * i, 0x4000 + 16 * (i % 3), bytes([i % 256]))


def put_records(ring: RingProducer, encoder: Encoder, records) -> None:
    buffer = bytearray()
    for record in records:
        buffer.clear()
        encoder.encode(buffer, *record)
        ring.put(buffer)


def read_back(path: Path) -> tuple[list[tuple], object]:
    with LogReader(path) as reader:
        return [(r.seq, r.kind, r.vcpu, r.icount, r.rip, bytes(r.payload)) for r in reader.records()], reader.damage


def numbered(records) -> list[tuple]:
    return [(seq, *record) for seq, record in enumerate(records)]


def test_records_reach_the_file_in_order_and_the_ring_leaves_nothing_behind(tmp_path):
    records = [key_record(i) for i in range(500)] + [(KIND_END, 0, 500_000, 0x4000, b"final digest")]
    ring = RingProducer(4096)
    daemon = start_log_daemon(ring, tmp_path / "run.xrr", HEADER, block_bytes=512)
    assert not os.path.exists(f"/dev/shm/{ring.name}")  # unlinked once the daemon attached
    put_records(ring, Encoder(), records)
    ring.close()
    daemon.wait(timeout=30)
    ring.detach()
    got, damage = read_back(tmp_path / "run.xrr")
    assert damage is None
    assert got == numbered(records)
    with LogReader(tmp_path / "run.xrr") as reader:
        assert reader.header == HEADER and len(reader.blocks) > 1


def test_a_flood_through_a_tiny_ring_loses_nothing(tmp_path):
    records = [key_record(i) for i in range(50_000)] + [(KIND_END, 0, 50_000_000, 0x4000, b"end")]
    ring = RingProducer(128)
    daemon = start_log_daemon(ring, tmp_path / "flood.xrr", HEADER)
    put_records(ring, Encoder(), records)
    ring.close()
    daemon.wait(timeout=120)
    ring.detach()
    got, damage = read_back(tmp_path / "flood.xrr")
    assert damage is None and got == numbered(records)


def wait_for_size(path: Path, size: int) -> None:
    for _ in range(2000):
        if path.exists() and path.stat().st_size >= size:
            return
        time.sleep(0.005)
    raise AssertionError(f"{path} never reached {size} bytes")


def test_sigkill_of_the_daemon_is_noticed_and_the_valid_prefix_reads_back(tmp_path):
    path = tmp_path / "killed.xrr"
    ring = RingProducer(1024)
    daemon = start_log_daemon(ring, path, HEADER, block_bytes=64, flush_seconds=0.01)
    encoder = Encoder()
    put_records(ring, encoder, [key_record(i) for i in range(200)])
    wait_for_size(path, 1000)
    os.kill(daemon.pid, signal.SIGKILL)
    put = 200
    with pytest.raises(LogDaemonDied, match=rf"log daemon \(pid {daemon.pid}\) died"):
        while put < 100_000:  # the ring fills up; waiting for room finds the daemon dead
            put_records(ring, encoder, [key_record(put)])
            put += 1
    with pytest.raises(LogDaemonError, match="killed by SIGKILL"):
        daemon.wait(timeout=10)
    ring.detach()
    got, damage = read_back(path)
    assert got and got == numbered(key_record(i) for i in range(len(got)))
    assert "no index footer" in damage.problems[-1]
    assert damage.usable_records == len(got) and f"{len(got)} records in {damage.usable_blocks} blocks" in str(damage)


@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def run_until_write_error(ring: RingProducer, daemon, limit: int = 1_000_000) -> str:
    encoder = Encoder()
    for i in range(limit):
        try:
            put_records(ring, encoder, [(KEY, 0, 1000 * i, 0x4000, bytes(200))])
        except LogDaemonError as error:
            message = str(error)
            break
    else:
        raise AssertionError("the daemon never failed")
    with pytest.raises(LogDaemonError) as waited:
        daemon.wait(timeout=30)
    assert str(waited.value) == message
    ring.detach()
    return message


def assert_valid_prefix(path: Path) -> None:
    got, damage = read_back(path)
    assert got, "some records made it"
    assert [(r[1], r[3]) for r in got] == [(KEY, 1000 * i) for i in range(len(got))]
    assert damage is not None and not damage.has_end_record and damage.unusable_bytes == 0


def test_a_full_disk_stops_the_daemon_cleanly_with_a_valid_log(small_tmpfs):
    path = small_tmpfs / "full.xrr"
    ring = RingProducer(4096)
    daemon = start_log_daemon(ring, path, HEADER, block_bytes=1024)
    message = run_until_write_error(ring, daemon)
    assert message.startswith(f"cannot write log file {path}: No space left on device; the log holds the first ")
    assert_valid_prefix(path)


def test_a_file_size_limit_stops_the_daemon_cleanly_with_a_valid_log(tmp_path):
    path = tmp_path / "limited.xrr"
    ring = RingProducer(4096)
    daemon = start_log_daemon(ring, path, HEADER, block_bytes=1024)
    resource.prlimit(daemon.pid, resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
    message = run_until_write_error(ring, daemon)
    assert message.startswith(f"cannot write log file {path}: File too large; the log holds the first ")
    assert_valid_prefix(path)


def test_a_log_file_that_cannot_be_created_is_a_clear_error(tmp_path):
    ring = RingProducer(4096)
    with pytest.raises(LogDaemonError, match=f"cannot create log file {tmp_path}/missing/x.xrr: No such file or directory"):
        start_log_daemon(ring, tmp_path / "missing" / "x.xrr", HEADER)
    assert not os.path.exists(f"/dev/shm/{ring.name}")
    ring.detach()


def test_malformed_records_from_the_recorder_stop_the_daemon_with_a_reason(tmp_path):
    ring = RingProducer(4096)
    daemon = start_log_daemon(ring, tmp_path / "bad.xrr", HEADER, flush_seconds=0.01)
    put_records(ring, Encoder(), [key_record(0)])
    ring.put(bytes([KEY << 2, 0, 0, 9]))  # a payload length with no payload
    ring.close()
    with pytest.raises(LogDaemonError, match="the recorder put malformed records: record payload truncated"):
        daemon.wait(timeout=30)
    ring.detach()


def vanishing_recorder(path: Path, pids) -> None:
    """A recorder that starts a daemon, puts records and dies without closing the stream."""
    ring = RingProducer(4096)
    daemon = start_log_daemon(ring, path, HEADER, flush_seconds=0.01)
    put_records(ring, Encoder(), [key_record(i) for i in range(300)])
    pids.send(daemon.pid)
    os._exit(0)


def test_a_recorder_that_vanishes_leaves_a_closed_log_without_end_record(tmp_path):
    path = tmp_path / "orphan.xrr"
    receive, send = FORK.Pipe(duplex=False)
    recorder = FORK.Process(target=vanishing_recorder, args=(path, send))
    recorder.start()
    daemon_pid = receive.recv()
    recorder.join()
    for _ in range(2000):
        if not process_alive(daemon_pid):
            break
        time.sleep(0.005)
    else:
        raise AssertionError("the orphaned daemon did not finish")
    got, damage = read_back(path)
    assert got == numbered(key_record(i) for i in range(300))
    assert damage.has_footer and damage.problems == ("no END record (the recording did not finish)",)


def test_the_daemon_is_a_fork_of_the_recorder_and_writes_once_begun(tmp_path):
    """Forked before the header is known (as `xenrr record` forks it before building the domain): it is
    the recorder's own program, not a new interpreter, and writes nothing until `begin`."""
    ring = RingProducer(4096)
    daemon = fork_log_daemon(ring)
    assert Path(f"/proc/{daemon.pid}/cmdline").read_bytes() == Path("/proc/self/cmdline").read_bytes()
    assert daemon.alive() and not (tmp_path / "late.xrr").exists()
    daemon.begin(tmp_path / "late.xrr", HEADER)
    assert not os.path.exists(f"/dev/shm/{ring.name}")
    put_records(ring, Encoder(), [key_record(i) for i in range(10)])
    ring.close()
    daemon.wait(timeout=30)
    ring.detach()
    assert read_back(tmp_path / "late.xrr")[0] == numbered([key_record(i) for i in range(10)])


def test_a_daemon_never_begun_exits_when_abandoned_and_leaves_no_ring(tmp_path):
    """`xenrr record` whose domain cannot be built (or whose log is refused) ends its early daemon."""
    ring = RingProducer(4096)
    daemon = fork_log_daemon(ring)
    daemon.abandon()
    assert not daemon.alive()
    assert not os.path.exists(f"/dev/shm/{ring.name}")
    assert not list(tmp_path.iterdir())
    ring.detach()
