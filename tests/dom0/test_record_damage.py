"""Logs that are damaged, foreign or tampered with, and recordings that lose their log daemon or their disk.

Each case asserts the exact one-line message and exit status of the real `xenrr` CLI, and that whatever
is still valid replays: a damaged log's usable prefix replays as a prefix of the recorded console
(exit 3); a file that cannot be a log, or the wrong guest image, is one `xenrr: error:` line (exit 2); a
log whose inputs were changed diverges, naming the instruction count and what differed (exit 1). Faults
are real: SIGKILL of the log daemon process, a tmpfs that fills up.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import NamedTuple

import pytest

from dom0.logfile import LogFormatError, LogReader, count_phrase
from tests.conftest import write_log
from xen.logrecord import FIRST_INPUT_KIND, KIND_DIGEST, KIND_END

# Over a second of idling between keys: the log daemon flushes a block every half second, so several blocks.
SLOW_KEYS = r"echo one\r\p400echo two\r\p400echo three\r\p400halt\r"
ROOT = Path(__file__).resolve().parents[2]


def expected_incomplete_line(log: Path) -> str:
    """What `xenrr replay` says on stderr after replaying the usable part of a damaged log."""
    with LogReader(log) as reader:
        records = [(record.kind, record.icount) for record in reader.records()]
        damage = str(reader.damage)
    events = sum(kind >= FIRST_INPUT_KIND for kind, _ in records)
    digests = sum(kind in (KIND_DIGEST, KIND_END) for kind, _ in records)
    return (f"xenrr: log is incomplete: {damage}; everything before it: {events} event{'s' * (events != 1)}, "
            f"{records[-1][1]} instructions, {digests} state digest{'s' * (digests != 1)} verified\n")


def assert_prefix_replays(xenrr, log: Path, recorded_console: str, must_show: str, may_be_whole: bool = False):
    """The usable part of a damaged log replays: exit 3, the one-line report, a prefix of the recorded console
    (possibly all of it when the recorder stopped as soon as the log broke)."""
    replayed = xenrr("replay", log)
    assert replayed.status == 3
    assert replayed.stderr == expected_incomplete_line(log)
    assert recorded_console.startswith(replayed.stdout)
    assert may_be_whole or len(replayed.stdout) < len(recorded_console)
    assert must_show in replayed.stdout
    return replayed


@pytest.fixture(scope="module")
def slow_recording(recorder, kbdshell_elf):
    """A real-clock recording of over a second: several blocks."""
    recording = recorder(kbdshell_elf, "--keys", SLOW_KEYS)
    with LogReader(recording.path) as reader:
        assert len(reader.blocks) >= 3, "the recording should span several blocks"
    return recording


def damaged_block_index(log: Path) -> int:
    """The block the damage tests break: the last but one. Blocks are cut by time (a flush every half
    second), so on a loaded host the first ones may hold only the boot; the last two hold under a second
    of the end, and "one" was echoed over a second before it."""
    with LogReader(log) as reader:
        return len(reader.blocks) - 2


# --------------------------------------------------------------------------- damaged logs

def test_a_flipped_byte_is_reported_with_its_block_and_the_prefix_replays(xenrr, slow_recording, tmp_path):
    index = damaged_block_index(slow_recording.path)
    with LogReader(slow_recording.path) as reader:
        block, last = reader.blocks[index], reader.blocks[-1]
    blocks_end = last.payload_offset + last.payload_length          # the index footer follows
    data = bytearray(slow_recording.path.read_bytes())
    data[block.payload_offset + block.payload_length // 2] ^= 0xFF
    log = tmp_path / "flipped.xrr"
    log.write_bytes(data)

    replayed = assert_prefix_replays(xenrr, log, slow_recording.record.stdout, must_show="one\r\n")
    assert (f"xenrr: log is incomplete: block {index} at offset {block.offset} (first seq {block.first_seq}, first "
            f"icount {block.first_icount}) fails its CRC check: {count_phrase(block.first_seq, 'record')} in {count_phrase(index, 'block')} are usable, "
            f"{blocks_end - block.offset} bytes from offset {block.offset} are not; ") in replayed.stderr

    dumped = xenrr("dump", log, "--json")
    assert dumped.status == 0
    listing = json.loads(dumped.stdout)
    assert len(listing["records"]) == block.first_seq
    assert listing["damage"].startswith(f"block {index} at offset {block.offset} ")


def test_a_log_cut_inside_a_block_says_how_much_of_it_is_missing(xenrr, slow_recording, tmp_path):
    index = damaged_block_index(slow_recording.path)
    with LogReader(slow_recording.path) as reader:
        block, following = reader.blocks[index], reader.blocks[index + 1]
    size = following.offset - block.offset
    log = tmp_path / "cut.xrr"
    log.write_bytes(slow_recording.path.read_bytes()[:block.offset + size // 2])

    replayed = assert_prefix_replays(xenrr, log, slow_recording.record.stdout, must_show="one\r\n")
    assert (f"block {index} at offset {block.offset} (first seq {block.first_seq}, first icount {block.first_icount}) "
            f"is truncated ({size // 2} of its {size} bytes are present)") in replayed.stderr


def log_daemon_of(pid: int) -> int:
    """The pid of the log daemon of recorder `pid`: its forked child, which has the recorder's command line
    (its other child, multiprocessing's resource tracker, has one of its own)."""
    command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if Path(f"/proc/{child}/cmdline").read_bytes() == command_line:
            return int(child)
    raise AssertionError(f"process {pid} has no log daemon child")


def wait_for_first_block(log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with LogReader(log) as reader:
                if reader.blocks:
                    return
        except (OSError, LogFormatError):
            pass                                    # not created, or the header not written yet
        time.sleep(0.01)
    raise AssertionError(f"no block reached {log} within {timeout} s")


class KilledRecording(NamedTuple):
    log: Path
    status: int
    stdout: str
    stderr: str
    daemon_pid: int


@pytest.fixture(scope="module")
def killed_daemon_recording(tmp_path_factory, kbdshell_elf) -> KilledRecording:
    """A `xenrr record` whose log daemon was killed with SIGKILL after it had written its first block."""
    log = tmp_path_factory.mktemp("killed") / "killed.xrr"
    recorder = subprocess.Popen([sys.executable, "-m", "dom0.cli", "record", str(kbdshell_elf), "-o", str(log),
                                 "--keys", SLOW_KEYS], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_first_block(log)
        daemon = log_daemon_of(recorder.pid)
        os.kill(daemon, signal.SIGKILL)
        stdout, stderr = recorder.communicate(timeout=60)
    finally:
        recorder.kill()
        recorder.wait()
    return KilledRecording(log, recorder.returncode, stdout.decode(), stderr.decode(), daemon)


def test_sigkill_of_the_log_daemon_loses_nothing_the_recorder_writes_the_rest(xenrr, killed_daemon_recording):
    """The recorder still holds what the daemon had not written: it writes it, and the END record, itself.
    Every input the guest consumed is in the log, which replays to its end (before: up to 1,110 echoed keys
    were lost with the daemon's flush window)."""
    killed = killed_daemon_recording
    assert killed.status == 4
    found = re.fullmatch(rf"xenrr: error: recording stopped: the log daemon \(pid {killed.daemon_pid}\) was killed by "
                         r"SIGKILL; the recorder wrote the \d+ records the daemon had not; (\d+) records were logged, "
                         r"(\d+) reached the log file \(complete, with its END record\)\n", killed.stderr)
    assert found and found[1] == found[2], killed.stderr
    with LogReader(killed.log) as reader:
        assert reader.damage is None
        assert reader.record_count == int(found[1])
    replayed = xenrr("replay", killed.log)
    assert replayed.status == 0, replayed.stderr
    assert replayed.stdout == killed.stdout
    assert "one\r\n" in replayed.stdout


def test_an_interrupted_recording_leaves_a_log_that_replays_to_where_it_stopped(xenrr, kbdshell_elf, tmp_path):
    log = tmp_path / "interrupted.xrr"
    recorder = subprocess.Popen([sys.executable, "-m", "dom0.cli", "record", str(kbdshell_elf), "-o", str(log),
                                 "--keys", r"echo one\r\p5000halt\r"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    try:
        wait_for_first_block(log)
        recorder.send_signal(signal.SIGINT)
        stdout, stderr = recorder.communicate(timeout=60)
    finally:
        recorder.kill()
        recorder.wait()
    assert (recorder.returncode, stderr) == (130, b"xenrr: interrupted\n")
    with LogReader(log) as reader:
        assert reader.damage.problems == ("no END record (the recording did not finish)",)
    replayed = xenrr("replay", log)
    assert (replayed.status, replayed.stdout) == (3, stdout.decode())
    assert replayed.stderr == expected_incomplete_line(log)


@pytest.fixture
def full_disk(tmp_path):
    """A directory on a 256 KiB tmpfs with only 8 KiB left free."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        free = os.statvfs(mount_point).f_bavail * os.statvfs(mount_point).f_frsize
        (mount_point / "filler").write_bytes(bytes(free - 8192))
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def test_recording_onto_a_full_disk_stops_with_status_4_and_a_log_valid_to_that_point(xenrr, kbdshell_elf, full_disk):
    log = full_disk / "full.xrr"
    lines = [f"echo {index} " + "x" * 50 for index in range(250)]          # 15 KiB of keys: more than fits
    recorded = xenrr("record", kbdshell_elf, "-o", log, "--keys", r"echo first\r\p700" + r"\r".join(lines) + r"\rhalt\r")
    assert recorded.status == 4
    found = re.fullmatch(rf"xenrr: error: recording stopped: cannot write log file {re.escape(str(log))}: No space "
                         r"left on device; the log holds the first (\d+) records; \d+ records were logged, (\d+) "
                         r"reached the log file \(valid up to its last complete block\)\n", recorded.stderr)
    assert found, recorded.stderr
    with LogReader(log) as reader:
        assert reader.record_count == int(found[1]) == int(found[2])
        assert not reader.damage.has_end_record and reader.damage.unusable_bytes == 0
    assert_prefix_replays(xenrr, log, recorded.stdout, must_show="> echo first\r\nfirst\r\n", may_be_whole=True)


# --------------------------------------------------------------------------- files that are not usable logs

def with_version(log: bytes, version: int) -> bytes:
    """The log with another format version in its header, its CRC made right again."""
    body_length = int.from_bytes(log[12:16], "little")
    end = 16 + body_length
    prefix = log[:8] + version.to_bytes(2, "little") + log[10:16]
    return prefix + log[16:end] + zlib.crc32(log[16:end], zlib.crc32(prefix)).to_bytes(4, "little") + log[end + 4:]


def flipped_header_byte(log: bytes) -> bytes:
    return log[:20] + bytes([log[20] ^ 1]) + log[21:]


@pytest.mark.parametrize("command", ["replay", "dump"])
@pytest.mark.parametrize("make, message", [
    (lambda log, elf: b"", "empty file: not a xenrr log"),
    (lambda log, elf: b"hello, world\n", "not a xenrr log (no XENRRLOG magic at the start)"),
    (lambda log, elf: elf, "not a xenrr log (no XENRRLOG magic at the start)"),
    (lambda log, elf: with_version(log, 4), "log format version 4 is newer than this xenrr reads (up to 3)"),
    (lambda log, elf: with_version(log, 1), "log format version 1 was written by an older xenrr (its state digests "
                                            "are in a form this xenrr no longer checks): record the session again"),
    (lambda log, elf: flipped_header_byte(log), "log header fails its CRC check"),
    (lambda log, elf: log[:30], "log header is truncated"),
], ids=["empty", "text", "elf", "newer-version", "older-version", "header-crc", "cut-header"])
def test_a_file_that_is_not_a_usable_log_is_one_error_line_and_status_2(xenrr, virtual_recording, kbdshell_elf,
                                                                        tmp_path, command, make, message):
    path = tmp_path / "bad.xrr"
    path.write_bytes(make(virtual_recording.path.read_bytes(), kbdshell_elf.read_bytes()))
    result = xenrr(command, path)
    assert (result.status, result.stdout, result.stderr) == (2, "", f"xenrr: error: {message}\n")


def test_a_version_2_log_is_still_read(xenrr, virtual_recording, tmp_path):
    """Version 3 only added the start state of a recording that began with a running domain: a log of a
    freshly built domain has the version-2 layout, and a version-2 file replays and verifies as before."""
    path = tmp_path / "v2.xrr"
    path.write_bytes(with_version(virtual_recording.path.read_bytes(), 2))
    replayed = xenrr("replay", path, "--json")
    assert replayed.status == 0 and json.loads(replayed.stdout)["verified"], replayed.stderr


@pytest.mark.parametrize("command", ["replay", "dump"])
def test_a_missing_log_or_a_directory_is_one_error_line_and_status_2(xenrr, tmp_path, command):
    missing = xenrr(command, tmp_path / "missing.xrr")
    assert (missing.status, missing.stdout) == (2, "")
    assert missing.stderr == f"xenrr: error: cannot read {tmp_path / 'missing.xrr'}: No such file or directory\n"
    directory = xenrr(command, tmp_path)
    assert (directory.status, directory.stderr) == (2, f"xenrr: error: cannot read {tmp_path}: Is a directory\n")


def test_a_different_guest_image_is_refused_with_both_hashes(xenrr, virtual_recording, kbdshell_elf, minimal_elf,
                                                            tmp_path):
    recorded_hash = hashlib.sha256(kbdshell_elf.read_bytes()).hexdigest()
    patched = tmp_path / "kbdshell-patched.elf"
    image = bytearray(kbdshell_elf.read_bytes())
    image[-1] ^= 1
    patched.write_bytes(image)
    for other in (minimal_elf, patched):
        result = xenrr("replay", virtual_recording.path, "--image", other)
        other_hash = hashlib.sha256(other.read_bytes()).hexdigest()
        assert (result.status, result.stdout) == (2, "")
        assert result.stderr == (f"xenrr: error: guest image {other} is not the one recorded (sha256 "
                                 f"{other_hash[:16]}..., recorded {recorded_hash[:16]}...)\n")


def test_a_guest_image_moved_away_is_named_and_found_with_image(xenrr, kbdshell_elf, tmp_path):
    guest = tmp_path / "guest.elf"
    shutil.copy(kbdshell_elf, guest)
    log = tmp_path / "moved.xrr"
    recorded = xenrr("record", guest, "-o", log, "--clock", "virtual", "--keys", r"echo moved\rhalt\r")
    assert recorded.status == 0
    guest.unlink()
    missing = xenrr("replay", log)
    assert (missing.status, missing.stdout) == (2, "")
    assert missing.stderr == (f"xenrr: error: cannot read the recorded guest image {guest}: No such file or directory "
                              "(give it with --image)\n")
    found = xenrr("replay", log, "--image", kbdshell_elf)
    assert (found.status, found.stdout) == (0, recorded.stdout)


# --------------------------------------------------------------------------- tampered inputs: divergence

def rewritten_copy(log: Path, destination: Path, seq: int, **changes) -> None:
    """A valid log (CRCs, index and all) holding `log`'s records, with fields of record `seq` changed."""
    with LogReader(log) as reader:
        header = reader.header
        records = [record._replace(**{"payload": bytes(record.payload), **(changes if record.seq == seq else {})})
                   for record in reader.records()]
    write_log(destination, header, records)


def keystroke_records(log: Path) -> list:
    with LogReader(log) as reader:
        return [(record.seq, record.icount, record.rip, bytes(record.payload)) for record in reader.records()]


def test_a_changed_key_with_the_same_path_diverges_at_the_end_digest(xenrr, virtual_recording, tmp_path):
    records = keystroke_records(virtual_recording.path)
    seq = next(seq for seq, _, _, payload in records if payload == b"a")
    end_seq, end_icount = records[-1][0], records[-1][1]
    log = tmp_path / "tampered.xrr"
    rewritten_copy(virtual_recording.path, log, seq, payload=b"b")         # `echo bbc`: same instructions, other memory

    replayed = xenrr("replay", log)
    assert replayed.status == 1
    assert replayed.stdout == virtual_recording.record.stdout.replace("abc", "bbc")
    assert replayed.stderr == f"xenrr: replay diverged: state differs at icount {end_icount} (record {end_seq}): guest memory\n"
    summary = json.loads(xenrr("replay", log, "--json").stdout)
    assert (summary["verified"], summary["complete"]) == (False, False)
    assert summary["divergence"] == f"state differs at icount {end_icount} (record {end_seq}): guest memory"


def test_a_changed_key_with_another_path_diverges_at_the_next_input(xenrr, virtual_recording, tmp_path):
    records = keystroke_records(virtual_recording.path)
    index = next(index for index, (_, _, _, payload) in enumerate(records) if payload == b"a")
    _, next_icount, next_rip, _ = records[index + 1]
    log = tmp_path / "tampered.xrr"
    rewritten_copy(virtual_recording.path, log, records[index][0], payload=b"\r")      # runs `echo ` early

    replayed = xenrr("replay", log)
    assert replayed.status == 1
    found = re.fullmatch(rf"xenrr: replay diverged: input console-input logged at icount {next_icount} rip "
                         rf"{next_rip:#x}, but replay is at icount {next_icount} rip (0x[0-9a-f]+)\n", replayed.stderr)
    assert found and int(found[1], 16) != next_rip, replayed.stderr


def test_a_log_with_a_record_kind_this_xenrr_does_not_know_is_refused_as_unusable(xenrr, virtual_recording, tmp_path):
    log = tmp_path / "newer-kind.xrr"
    rewritten_copy(virtual_recording.path, log, 2, kind=99)        # a key, as a kind from a newer xenrr
    replayed = xenrr("replay", log)
    assert replayed.status == 2
    assert replayed.stderr.startswith("xenrr: error: ") and "kind 99" in replayed.stderr
    assert replayed.stderr.count("\n") == 1
