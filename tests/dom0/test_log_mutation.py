"""The log-mutation campaign: damaged logs and logs whose CRCs were recomputed over edited content.

Plain damage (a bit flip, a cut, appended junk, anywhere in the file, including after the END record)
must never replay as a success: exit 3 with the usable part replayed, or 2 when the header itself is
gone. Logs re-written with valid CRCs over edited content - what a buggy writer or a hostile producer
makes - must give exit 0/1/2/3 with one line on stderr: never a traceback, never a hang. The named
cases are the defects the campaign found; the seeded campaign runs in-process (`dom0.cli.main`) to stay
bounded, and `make soak` runs more mutants.
"""
from __future__ import annotations

import json
import random
import signal
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest

from dom0 import cli
from dom0.logfile import FORMAT_VERSION, LogHeader, LogReader
from tests.conftest import campaign_size, write_log
from xen.inject import Kind
from xen.logrecord import KIND_DIGEST, KIND_END


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts whatever runs."""
    def expire(*_):
        raise TimeoutError(f"no answer within {seconds} s: a hang")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(capsys, *args) -> tuple[int, str]:
    """`xenrr ARGS` in this process: (exit status, stderr). Tracebacks surface as test errors."""
    with deadline(60):
        status = cli.main([str(arg) for arg in args])
    return status, capsys.readouterr().err


def records_of(log: Path) -> tuple[LogHeader, list]:
    with LogReader(log) as reader:
        return reader.header, [record._replace(payload=bytes(record.payload)) for record in reader.records()]


def raw_header_log(path: Path, sha256: bytes, body_json: bytes) -> Path:
    """A file whose header has a valid CRC over any JSON text (the rest of the log is left out)."""
    body = sha256 + body_json
    prefix = struct.pack("<8sHHI", b"XENRRLOG", FORMAT_VERSION, 0, len(body))
    path.write_bytes(prefix + body + struct.pack("<I", zlib.crc32(body, zlib.crc32(prefix))))
    return path


def one_error_line(status: int, stderr: str, *fragments: str) -> None:
    assert status == 2, stderr
    assert stderr.startswith("xenrr: error: ") and stderr.count("\n") == 1, stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


# --------------------------------------------------------------------------- header content

def _without(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


HEADER_EDITS = {
    "no guest": (lambda c, s: (_without(c, "guest"), s), "guest"),
    "no memory_bytes": (lambda c, s: (_without(c, "memory_bytes"), s), "memory_bytes"),
    "no digest": (lambda c, s: (c, _without(s, "digest")), "digest"),
    "guest is a number": (lambda c, s: ({**c, "guest": 7}, s), "config/guest"),
    "memory_bytes is text": (lambda c, s: ({**c, "memory_bytes": "16M"}, s), "config/memory_bytes"),
    "memory_bytes 2^36": (lambda c, s: ({**c, "memory_bytes": 2**36}, s), "config/memory_bytes"),
    "memory_bytes 2^64": (lambda c, s: ({**c, "memory_bytes": 2**64}, s), "config/memory_bytes"),
    "memory_bytes not whole pages": (lambda c, s: ({**c, "memory_bytes": 4097}, s), "config/memory_bytes"),
    "digest not hex": (lambda c, s: (c, {**s, "digest": "zz" * 8}), "initial_state/digest"),
    "digest too short": (lambda c, s: (c, {**s, "digest": "00" * 8}), "digest"),
    "NUL in the guest path": (lambda c, s: ({**c, "guest": "/tmp/a\0b"}, s), "config/guest"),
    "cmdline is a list": (lambda c, s: ({**c, "cmdline": ["x"]}, s), "config/cmdline"),
    "entry is negative": (lambda c, s: (c, {**s, "entry": -1}), "initial_state/entry"),
}


@pytest.mark.parametrize("edit", sorted(HEADER_EDITS))
def test_a_header_edited_under_a_valid_crc_is_one_error_line(xenrr, virtual_recording, tmp_path, edit):
    change, fragment = HEADER_EDITS[edit]
    header, records = records_of(virtual_recording.path)
    config, state = change(dict(header.config), dict(header.initial_state))
    log = write_log(tmp_path / "edited.xrr", LogHeader(header.image_sha256, config, state), records)
    replayed = xenrr("replay", log, timeout=60)
    one_error_line(replayed.status, replayed.stderr, "log header is malformed", fragment)


@pytest.mark.parametrize("command", ["replay", "dump"])
def test_json_nested_100k_deep_is_one_error_line(xenrr, virtual_recording, tmp_path, command):
    header, _ = records_of(virtual_recording.path)
    deep = b'{"config":' + b"[" * 100_000 + b"]" * 100_000 + b',"initial_state":{}}'
    log = raw_header_log(tmp_path / "deep.xrr", header.image_sha256, deep)
    result = xenrr(command, log, timeout=60)
    one_error_line(result.status, result.stderr, "nested deeper than")


# --------------------------------------------------------------------------- record payloads by kind

def _first(records, kind) -> int:
    """The index of the first record of `kind`; a DIGEST is added (the END's digest, just before it)
    when the recording has none."""
    if kind == KIND_DIGEST and all(record.kind != KIND_DIGEST for record in records):
        end = records[-1]
        size = int.from_bytes(end.payload[:2], "little")
        records.insert(-1, end._replace(kind=KIND_DIGEST, payload=end.payload[2:2 + size]))
    return next(index for index, record in enumerate(records) if record.kind == kind)


PAYLOAD_EDITS = {
    "TIMER one byte short": (Kind.TIMER, lambda p: p[:-1], "timer"),
    "TIMER one byte long": (Kind.TIMER, lambda p: p + b"\0", "timer"),
    "TIMER zero scale": (Kind.TIMER, lambda p: p[:8] + b"\0\0\0\0" + p[12:], "zero scale"),
    "DIGEST cut short": (KIND_DIGEST, lambda p: p[:10], "state digest"),
    "DIGEST with junk after": (KIND_DIGEST, lambda p: p + b"junk", "state digest"),
    "END empty": (KIND_END, lambda p: b"", "end of recording"),
    "END one byte": (KIND_END, lambda p: p[:1], "end of recording"),
    "END digest cut": (KIND_END, lambda p: p[:40], "end of recording"),
    "CONSOLE_INPUT empty": (Kind.CONSOLE_INPUT, lambda p: b"", "console-input"),
}


@pytest.mark.parametrize("edit", sorted(PAYLOAD_EDITS))
def test_a_payload_of_the_wrong_length_for_its_kind_is_one_error_line(capsys, timer_recording, tmp_path, edit):
    kind, change, fragment = PAYLOAD_EDITS[edit]
    header, records = records_of(timer_recording)
    index = _first(records, kind)
    records[index] = records[index]._replace(payload=change(records[index].payload))
    status, stderr = run_cli(capsys, "replay", "--quiet", write_log(tmp_path / "edited.xrr", header, records))
    one_error_line(status, stderr, fragment)


KEYBOARD_EDITS = {
    "one byte long": (lambda p: p + b"\0", "3-byte payload"),
    "a pointer event": (lambda p: (int.from_bytes(p, "little") & 0x0FFF | 5 << 12).to_bytes(2, "little"), "type 5"),
    "keycode past KEY_MAX": (lambda p: (int.from_bytes(p, "little") & ~0x7FF | 0x300).to_bytes(2, "little"),
                             "keycode 0x300"),
}


@pytest.fixture(scope="module")
def keyboard_recording(recorder, kbdshell_elf) -> Path:
    return recorder(kbdshell_elf, "--clock", "virtual", "--keyboard", "pv", "--keys", r"halt\r").path


@pytest.mark.parametrize("edit", sorted(KEYBOARD_EDITS))
def test_a_keyboard_event_no_backend_puts_on_the_ring_is_one_error_line(capsys, keyboard_recording, tmp_path, edit):
    """docs/log-format.md: a keyboard record is 2 bytes, XENKBD_TYPE_KEY with a keycode <= KEY_MAX (0x2ff)."""
    change, fragment = KEYBOARD_EDITS[edit]
    header, records = records_of(keyboard_recording)
    index = _first(records, Kind.KEYBOARD)
    records[index] = records[index]._replace(payload=change(records[index].payload))
    status, stderr = run_cli(capsys, "replay", "--quiet", write_log(tmp_path / "edited.xrr", header, records))
    one_error_line(status, stderr, fragment)


@pytest.fixture(scope="module")
def timer_recording(recorder, kbdshell_elf) -> Path:
    """kbdshell with a pause (timer inputs), a digest and an END: every kind of record."""
    return recorder(kbdshell_elf, "--clock", "virtual", "--keys", r"echo hi\r\p30halt\r").path


# --------------------------------------------------------------------------- damage after the END record

def test_damage_after_the_end_record_is_exit_3_and_said(xenrr, virtual_recording, tmp_path):
    """The README promises exit 3 for a damaged log: junk after the footer used to replay as a success."""
    log = tmp_path / "junk.xrr"
    log.write_bytes(virtual_recording.path.read_bytes() + b"junk")
    replayed = xenrr("replay", log)
    assert replayed.status == 3, replayed.stderr
    assert "replayed to the end of the recording, but the log is damaged after its END record" in replayed.stderr
    assert replayed.stdout == virtual_recording.record.stdout


# --------------------------------------------------------------------------- the seeded campaigns

def _mutants(original: bytes, rng: random.Random, count: int):
    """Plain damage: bit flips anywhere, cuts, appended junk, a duplicated tail."""
    for number in range(count):
        data = bytearray(original)
        choice = number % 4
        if choice == 0:
            position = rng.randrange(len(data))
            data[position] ^= 1 << rng.randrange(8)
        elif choice == 1:
            data = data[:rng.randrange(len(data))]
        elif choice == 2:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        else:
            data += data[-rng.randint(1, 200):]
        yield bytes(data)


def test_plain_damage_anywhere_is_never_a_success(capsys, timer_recording, tmp_path):
    original = timer_recording.read_bytes()
    rng = random.Random(10)
    log = tmp_path / "mutant.xrr"
    for mutant in _mutants(original, rng, campaign_size(40, 2000)):
        log.write_bytes(mutant)
        status, stderr = run_cli(capsys, "replay", "--quiet", log)
        assert status in (2, 3), stderr
        assert stderr.count("\n") == 1, stderr


def _edit_record(record, rng: random.Random):
    field = rng.randrange(5)
    if field == 0:
        payload = bytearray(record.payload)
        if payload:
            payload[rng.randrange(len(payload))] ^= 1 << rng.randrange(8)
        return record._replace(payload=bytes(payload))
    if field == 1:
        return record._replace(payload=record.payload[:rng.randrange(len(record.payload) + 1)])
    if field == 2:
        return record._replace(payload=record.payload + bytes(rng.randrange(256) for _ in range(rng.randint(1, 9))))
    if field == 3:
        return record._replace(kind=rng.choice([KIND_END, KIND_DIGEST, *list(Kind), 2, 15, 77]))
    return record._replace(rip=rng.randrange(2**64))


def test_recomputed_crc_campaign_gives_a_status_and_one_line(capsys, timer_recording, tmp_path):
    header, records = records_of(timer_recording)
    rng = random.Random(11)
    log = tmp_path / "edited.xrr"
    for _ in range(campaign_size(25, 1000)):
        edited = list(records)
        for _ in range(rng.randint(1, 3)):
            index = rng.randrange(len(edited))
            edited[index] = _edit_record(edited[index], rng)
        status, stderr = run_cli(capsys, "replay", "--quiet", write_log(log, header, edited))
        assert status in (0, 1, 2, 3), stderr
        assert stderr.count("\n") == 1 and stderr.startswith("xenrr: "), stderr


def test_recomputed_crc_header_campaign_gives_a_status_and_one_line(capsys, timer_recording, tmp_path):
    header, records = records_of(timer_recording)
    rng = random.Random(12)
    values = [None, True, -1, 0, 4096, 2**63, 2**64, 1.5, "", "x", "\0", [], {}, [[[]]], "00" * 200]
    log = tmp_path / "edited.xrr"
    for _ in range(campaign_size(25, 1000)):
        fields = {"config": dict(header.config), "initial_state": dict(header.initial_state)}
        part = fields[rng.choice(["config", "initial_state"])]
        key = rng.choice(sorted(part) + ["extra"])
        if rng.randrange(4) == 0:
            part.pop(key, None)
        else:
            part[key] = rng.choice(values)
        body = json.dumps(fields).encode()
        raw = raw_header_log(tmp_path / "header.bin", header.image_sha256, body).read_bytes()
        good = write_log(log, header, records).read_bytes()
        old_header_length = len(header.to_bytes())
        log.write_bytes(raw + good[old_header_length:])
        status, stderr = run_cli(capsys, "replay", "--quiet", log)
        assert status in (0, 1, 2, 3), stderr
        assert stderr.count("\n") == 1 and stderr.startswith("xenrr: "), stderr
