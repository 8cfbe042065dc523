"""Record encoding and the log file: round trips, the index, and every kind of damage a reader must survive."""

import hashlib
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dom0.logfile import FORMAT_VERSION, LogFormatError, LogHeader, LogReader, LogWriter
from xen import logrecord
from xen.logrecord import (
    FIRST_INPUT_KIND,
    KIND_DIGEST,
    KIND_END,
    MAX_PAYLOAD,
    Decoder,
    Encoder,
    RecordError,
    kind_name,
    register_kind,
)

HEADER = LogHeader(hashlib.sha256(b"guest image").digest(), {"memory_mib": 4, "vcpus": 1}, {"rip": 4096, "rsp": 8192})
KEY = FIRST_INPUT_KIND  # stands for the funnel's console-input kind
TIMER = FIRST_INPUT_KIND + 1

# (kind, vcpu, icount step, rip, payload); the steps keep icount non-decreasing per vCPU
raw_records = st.lists(
    st.tuples(
        st.sampled_from([KEY, TIMER, KIND_DIGEST, FIRST_INPUT_KIND + 7, 300]),
        st.sampled_from([0, 0, 0, 1, 2, 3, 70]),
        st.one_of(st.integers(0, 300), st.integers(0, 1 << 40)),
        st.one_of(st.integers(0x1000, 0x9000), st.integers(0, (1 << 64) - 1)),
        st.binary(max_size=40),
    ),
    max_size=60,
)


def with_icounts(raw) -> list[tuple[int, int, int, int, bytes]]:
    """(kind, vcpu, icount, rip, payload) with per-vCPU non-decreasing icounts."""
    clock: dict[int, int] = {}
    records = []
    for kind, vcpu, step, rip, payload in raw:
        clock[vcpu] = clock.get(vcpu, 0) + step
        records.append((kind, vcpu, clock[vcpu], rip, payload))
    return records


def as_tuples(records) -> list[tuple]:
    return [(r.seq, r.kind, r.vcpu, r.icount, r.rip, bytes(r.payload)) for r in records]


def numbered(records) -> list[tuple]:
    return [(seq, *record) for seq, record in enumerate(records)]


def write_log(path: Path, records, block_sizes=(7,)) -> LogWriter:
    """Write `records` in blocks of the given sizes (cycled), each block as two segments like a wrapped ring."""
    writer = LogWriter(path, HEADER, sync_interval=3600)
    encoder = Encoder()
    position = block = 0
    while position < len(records):
        encoded = []
        for record in records[position : position + block_sizes[block % len(block_sizes)]]:
            one = bytearray()
            encoder.encode(one, *record)
            encoded.append(bytes(one))
        half = len(encoded) // 2
        writer.write_block([b"".join(encoded[:half]), b"".join(encoded[half:])])
        position += len(encoded)
        block += 1
    writer.close()
    return writer


def sample_records(count: int = 40) -> list[tuple[int, int, int, int, bytes]]:
    records = [(KEY if i % 3 else TIMER, 0, 1000 * i, 0x4000 + (i % 5) * 16, bytes([i % 256])) for i in range(count - 1)]
    return records + [(KIND_END, 0, 1000 * count, 0x4000, b"final digest")]


# ---- record encoding ----


@settings(max_examples=200, deadline=None)
@given(raw_records, st.data())
def test_records_decode_to_what_was_encoded_also_from_the_middle(raw, data):
    records = with_icounts(raw)
    encoder = Encoder()
    stream = bytearray()
    starts = []
    for record in records:
        starts.append(len(stream))
        assert encoder.encode(stream, *record) == len(starts) - 1
    assert as_tuples(Decoder().records(stream)) == numbered(records)

    # a decoder given the state before record k decodes the rest (what a block header carries)
    k = data.draw(st.integers(0, len(records)))
    head = Decoder()
    list(head.records(stream[: starts[k] if k < len(records) else len(stream)]))
    tail = Decoder(head.next_seq, head.state())
    assert as_tuples(tail.records(stream, starts[k] if k < len(records) else len(stream))) == numbered(records)[k:]


def test_keystroke_records_are_small():
    encoder, out = Encoder(), bytearray()
    encoder.encode(out, KEY, 0, 10_000_000, 0xFFFFFFFF80001234, b"a")  # first record: absolute values
    sizes = []
    for icount, rip in [
        (10_200_000, 0xFFFFFFFF80001234),  # typical: 200k instructions later, same idle-loop rip
        (10_400_000, 0xFFFFFFFF80001250),
        (10_400_000 + 10**12, 0xFFFFFFFF83FFF000),  # a very long pause, 64 MiB away in the kernel
    ]:
        before = len(out)
        encoder.encode(out, KEY, 0, icount, rip, b"b")
        sizes.append(len(out) - before)
    assert sizes[0] <= 7 and sizes[1] < 10 and sizes[2] <= 16


@pytest.mark.parametrize(
    ("stream", "message", "offset"),
    [
        (bytes([KEY << 2]), "record truncated", 0),
        (bytes([KEY << 2, 0, 0, 5, 1, 2]), "record payload truncated", 0),
        (bytes([KEY << 2, 0, 0, 0]) + bytes([0xFF] * 11), "varint longer than 10 bytes", 4),
        (bytes([KEY << 2, 0, 0, 0, KEY << 2, 0, 0, 0x81, 0x80, 0x04]), f"payload length {MAX_PAYLOAD + 1} exceeds", 4),
        (bytes([KEY << 2 | 3, 0xFF, 0x7F, 0, 0, 0]), "vCPU 16386 exceeds", 0),
    ],
)
def test_malformed_records_raise_record_error_with_the_offset(stream, message, offset):
    with pytest.raises(RecordError, match=message) as error:
        list(Decoder().records(stream))
    assert error.value.offset == offset and f"offset {offset}" in str(error.value)


def test_encoder_refuses_what_it_cannot_encode_and_appends_nothing():
    encoder, out = Encoder(), bytearray()
    encoder.encode(out, KEY, 0, 100, 0, b"")
    size = len(out)
    for args, message in [
        ((KEY, 0, 99, 0, b""), "goes back from 100"),
        ((70000, 0, 200, 0, b""), "kind 70000"),
        ((KEY, 5000, 200, 0, b""), "vCPU 5000"),
        ((KEY, 0, 200, 1 << 64, b""), "not a 64-bit address"),
        ((KEY, 0, 200, 0, bytes(MAX_PAYLOAD + 1)), "exceeds"),
    ]:
        with pytest.raises(ValueError, match=message):
            encoder.encode(out, *args)
    assert len(out) == size and encoder.next_seq == 1


@pytest.fixture
def kind_registry():
    """The process-wide kind registry, restored afterwards: other tests list every registered kind."""
    saved = dict(logrecord._kind_names)
    yield
    logrecord._kind_names.clear()
    logrecord._kind_names.update(saved)


def test_kind_names_for_dumps(kind_registry):
    assert kind_name(KIND_END) == "end" and kind_name(KIND_DIGEST) == "digest"
    assert register_kind(FIRST_INPUT_KIND + 40, "test-kind") == FIRST_INPUT_KIND + 40
    assert kind_name(FIRST_INPUT_KIND + 40) == "test-kind"
    register_kind(FIRST_INPUT_KIND + 40, "test-kind")  # registering the same name again is fine
    with pytest.raises(ValueError, match="already registered"):
        register_kind(FIRST_INPUT_KIND + 40, "other")
    with pytest.raises(ValueError, match="input record kinds are 16"):
        register_kind(3, "reserved")
    assert kind_name(9999) == "kind-9999"


# ---- the log file ----


@settings(max_examples=100, deadline=None)
@given(raw_records, st.lists(st.integers(1, 9), min_size=1, max_size=4), st.data())
def test_log_file_round_trip_and_index(tmp_path_factory, raw, block_sizes, data):
    records = with_icounts(raw)
    end_icount = max((icount for _, vcpu, icount, _, _ in records if vcpu == 0), default=0)
    records.append((KIND_END, 0, end_icount, 0, b"final"))
    path = tmp_path_factory.mktemp("log") / "round.xrr"
    writer = write_log(path, records, tuple(block_sizes))
    assert writer.records_written == len(records)
    with LogReader(path) as reader:
        assert reader.damage is None
        assert reader.header == HEADER
        assert as_tuples(reader.records()) == numbered(records)
        seq = data.draw(st.integers(0, len(records) + 2))
        assert as_tuples(reader.records_from(seq)) == numbered(records)[seq:]
        for kind in {record[0] for record in records}:
            of_kind = [item for item in numbered(records) if item[1] == kind]
            assert reader.count(kind) == len(of_kind)
            n = data.draw(st.integers(0, len(of_kind) - 1))
            assert as_tuples([reader.find(kind, n)]) == [of_kind[n]]
        with pytest.raises(LookupError, match="there is no number"):
            reader.find(KEY, reader.count(KEY))


def test_a_log_without_footer_is_readable_and_says_so(tmp_path):
    records = sample_records(40)
    path = tmp_path / "cut.xrr"
    writer = write_log(path, records, (6,))
    with LogReader(path) as reader:
        footer_offset = reader.blocks[-1].payload_offset + reader.blocks[-1].payload_length
    os.truncate(path, footer_offset)  # what a killed daemon leaves: blocks, no footer
    with LogReader(path) as reader:
        assert as_tuples(reader.records()) == numbered(records)
        assert reader.count(KEY) == sum(1 for r in records if r[0] == KEY)  # index rebuilt by scanning
        assert as_tuples([reader.find(TIMER, 5)]) == [[r for r in numbered(records) if r[1] == TIMER][5]]
        damage = reader.damage
        assert damage.problems == ("no index footer (the log daemon did not finish, or the file was cut short)",)
        assert (damage.usable_blocks, damage.usable_records, damage.unusable_bytes) == (writer.blocks_written, 40, 0)
        assert str(damage).endswith("all 40 records in 7 blocks are usable")


def test_a_flipped_byte_is_reported_with_its_block_and_the_prefix_stays_usable(tmp_path):
    records = sample_records(40)
    path = tmp_path / "flip.xrr"
    write_log(path, records, (10,))
    with LogReader(path) as reader:
        block = reader.blocks[2]
    raw = bytearray(path.read_bytes())
    raw[block.payload_offset + 3] ^= 0x10
    path.write_bytes(raw)
    with LogReader(path) as reader:
        damage = reader.damage
        assert damage.bad_block == (2, block.offset, 20, records[20][2])
        assert damage.problems[0] == f"block 2 at offset {block.offset} (first seq 20, first icount {records[20][2]}) fails its CRC check"
        assert (damage.usable_blocks, damage.usable_records, damage.valid_end) == (2, 20, block.offset)
        assert damage.has_footer and not damage.has_end_record
        assert as_tuples(reader.records()) == numbered(records)[:20]
        assert reader.count(KEY) == sum(1 for r in records[:20] if r[0] == KEY)


def test_truncation_at_every_offset_gives_a_format_error_or_a_usable_prefix(tmp_path):
    records = sample_records(12)
    path = tmp_path / "whole.xrr"
    write_log(path, records, (3,))
    whole = path.read_bytes()
    cut = tmp_path / "cut.xrr"
    outcomes = set()
    for size in range(len(whole) + 1):
        cut.write_bytes(whole[:size])
        try:
            reader = LogReader(cut)
        except LogFormatError as error:
            assert "\n" not in str(error)
            outcomes.add("format error")
            continue
        with reader:
            got = as_tuples(reader.records())
            assert got == numbered(records)[: len(got)]
            assert (reader.damage is None) == (size == len(whole))
            if reader.damage:
                assert reader.damage.usable_records == len(got) and "\n" not in str(reader.damage)
                reader.count(KEY)
                outcomes.add("damaged")
    assert outcomes == {"format error", "damaged"}


def test_every_flipped_byte_is_detected(tmp_path):
    records = sample_records(8)
    path = tmp_path / "whole.xrr"
    write_log(path, records, (3,))
    whole = path.read_bytes()
    bad = tmp_path / "bad.xrr"
    for offset in range(len(whole)):
        flipped = bytearray(whole)
        flipped[offset] ^= 0x01
        bad.write_bytes(flipped)
        try:
            reader = LogReader(bad)
        except LogFormatError:
            continue
        with reader:
            assert reader.damage is not None, f"flipped byte at offset {offset} went unnoticed"
            got = as_tuples(reader.records())
            assert got == numbered(records)[: len(got)]


def header_bytes(version: int = FORMAT_VERSION) -> bytes:
    raw = bytearray(HEADER.to_bytes())
    struct.pack_into("<H", raw, 8, version)
    return bytes(raw)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file: not a xenrr log"),
        (b"\x7fELF\x02\x01\x01" + bytes(100), "not a xenrr log"),
        (b"XENRRLOG\x01", "log header is truncated"),
        (header_bytes(FORMAT_VERSION + 1), f"log format version {FORMAT_VERSION + 1} is newer than this xenrr reads"),
        (header_bytes(1), "log format version 1 was written by an older xenrr .*: record the session again"),
        (header_bytes()[:-1] + bytes([header_bytes()[-1] ^ 1]), "log header fails its CRC check"),
    ],
)
def test_files_that_are_not_readable_logs_get_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.xrr"
    path.write_bytes(content)
    with pytest.raises(LogFormatError, match=message) as error:
        LogReader(path)
    assert "\n" not in str(error.value)


def test_header_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(ValueError, match="32 bytes"):
        LogHeader(b"short", {}, {}).to_bytes()
    with pytest.raises(ValueError, match="not JSON-serializable"):
        LogHeader(bytes(32), {"x": object()}, {}).to_bytes()
