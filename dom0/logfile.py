"""The xenrr log file: a header, CRC-checked blocks of encoded records, an index footer.

Owns the byte layout (docs/log-format.md), LogWriter (appends whole blocks, writes the
footer and trailer on close, truncates a partly written block away on a write error) and
LogReader (mmaps the file, parses it in place, reports damage).

Invariant: a log file is the header, then blocks whose records continue one stream in seq
order (each block carries the decoder state it starts from), then - if the writer closed
cleanly - the footer and the trailer. A reader reports anything else as damage and keeps
everything before the first damaged byte readable.
"""

import bisect
import json
import mmap
import os
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from xen.logrecord import KIND_END, BytesLike, Decoder, Record, RecordError, kind_name

FILE_MAGIC = b"XENRRLOG"
# 2: compact state digests (xen/digest.py). A version-1 log's digests cannot be checked by this xenrr,
# so it is refused in one line rather than replayed unverified.
# 3: a log may start with a running domain: its start state follows the header (read as version 2 else).
FORMAT_VERSION = 3
START_STATE_KEY = "start_state"     # in initial_state: {"icount": N, "bytes": L} when a start state follows
BLOCK_MAGIC = b"XRBK"
FOOTER_MAGIC = b"XRIX"
TRAILER_MAGIC = b"XRRTRAIL"

_FILE_PREFIX = struct.Struct("<8sHHI")  # magic, format version, reserved, body length
_CRC = struct.Struct("<I")
_BLOCK_FIXED = struct.Struct("<4sIIHHQQ")  # magic, payload bytes, records, vCPU states, reserved, first seq, first icount
_VCPU_STATE = struct.Struct("<QQ")  # icount, rip of the vCPU's last record before the block
_FOOTER_FIXED = struct.Struct("<4sIIIQ")  # magic, blocks, kinds, reserved, records
_TRAILER = struct.Struct("<Q8s")  # footer offset, magic
_SHA256_BYTES = 32
MAX_HEADER_BYTES = 1 << 20   # a recorder writes a few hundred bytes; anything near this is not a header
MAX_HEADER_DEPTH = 16        # JSON nesting a header may have (a recorder's is 2 deep)


class LogFormatError(Exception):
    """The file cannot be read as a xenrr log at all (one-line message)."""


@dataclass(frozen=True)
class LogHeader:
    """What a replay needs before the first record: which image, which domain, which start.

    `start_state`: for a recording that began with a domain already running (version 3), the bytes of
    its state then (one snapshot entry, dom0/snapshots.py), stored right after the header; the header's
    `initial_state[START_STATE_KEY]` gives their length and instruction count. Empty: the domain starts
    freshly built."""

    image_sha256: bytes
    config: dict[str, Any]
    initial_state: dict[str, Any]
    start_state: bytes = b""

    def to_bytes(self) -> bytes:
        """The header as it is stored at the start of the file, its start state after it (ValueError if
        not storable)."""
        if len(self.image_sha256) != _SHA256_BYTES:
            raise ValueError(f"image_sha256 must be {_SHA256_BYTES} bytes, not {len(self.image_sha256)}")
        described = self.initial_state.get(START_STATE_KEY, {}).get("bytes", 0)
        if described != len(self.start_state):
            raise ValueError(f"initial_state/{START_STATE_KEY} says {described} bytes of start state, "
                             f"there are {len(self.start_state)}")
        try:
            text = json.dumps({"config": self.config, "initial_state": self.initial_state}, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as error:
            raise ValueError(f"log header is not JSON-serializable: {error}") from None
        body = bytes(self.image_sha256) + text.encode("utf-8")
        prefix = _FILE_PREFIX.pack(FILE_MAGIC, FORMAT_VERSION, 0, len(body))
        return prefix + body + _CRC.pack(zlib.crc32(body, zlib.crc32(prefix))) + self.start_state

    @property
    def start_icount(self) -> int:
        """The instruction count the recording starts at (0: a freshly built domain)."""
        return int(self.initial_state.get(START_STATE_KEY, {}).get("icount", 0))

    @classmethod
    def from_bytes(cls, data: BytesLike) -> "LogHeader":
        """Parse a header (the start of a log file) and its start state; LogFormatError if it is not one."""
        header, _ = _parse_header(memoryview(data))
        return header


def _parse_header(view: memoryview) -> tuple[LogHeader, int]:
    """The header at the start of `view`, with its start state, and the offset just after them."""
    size = len(view)
    if size == 0:
        raise LogFormatError("empty file: not a xenrr log")
    if size < len(FILE_MAGIC) or bytes(view[: len(FILE_MAGIC)]) != FILE_MAGIC:
        raise LogFormatError("not a xenrr log (no XENRRLOG magic at the start)")
    if size < _FILE_PREFIX.size:
        raise LogFormatError("log header is truncated")
    _, version, _, body_length = _FILE_PREFIX.unpack_from(view)
    if version > FORMAT_VERSION:
        raise LogFormatError(f"log format version {version} is newer than this xenrr reads (up to {FORMAT_VERSION})")
    if version == 0:
        raise LogFormatError("log format version 0 is not a valid version")
    if version < 2:
        raise LogFormatError(f"log format version {version} was written by an older xenrr (its state digests are "
                             f"in a form this xenrr no longer checks): record the session again")
    end = _FILE_PREFIX.size + body_length + _CRC.size
    if end > size:
        raise LogFormatError("log header is truncated")
    (stored_crc,) = _CRC.unpack_from(view, end - _CRC.size)
    if zlib.crc32(view[: end - _CRC.size]) != stored_crc:
        raise LogFormatError("log header fails its CRC check")
    body = bytes(view[_FILE_PREFIX.size : end - _CRC.size])
    if len(body) > MAX_HEADER_BYTES:
        raise LogFormatError(f"log header is malformed: {len(body)} bytes, more than {MAX_HEADER_BYTES}")
    if _json_depth(body[_SHA256_BYTES:]) > MAX_HEADER_DEPTH:
        raise LogFormatError(f"log header is malformed: JSON nested deeper than {MAX_HEADER_DEPTH} levels")
    try:
        fields = json.loads(body[_SHA256_BYTES:].decode("utf-8"))
        header = LogHeader(body[:_SHA256_BYTES], fields["config"], fields["initial_state"])
    except (ValueError, KeyError, TypeError) as error:
        raise LogFormatError(f"log header is malformed: {error}") from None
    if len(header.image_sha256) != _SHA256_BYTES or not isinstance(header.config, dict) or not isinstance(header.initial_state, dict):
        raise LogFormatError("log header is malformed: wrong field types")
    start = header.initial_state.get(START_STATE_KEY) if version >= 3 else None
    if start is None:
        return header, end
    length = start.get("bytes") if isinstance(start, dict) else None
    if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
        raise LogFormatError(f"log header is malformed: initial_state/{START_STATE_KEY} has no valid length")
    if end + length > size:
        raise LogFormatError(f"the log's start state is truncated ({size - end} of its {length} bytes are present)")
    return LogHeader(header.image_sha256, header.config, header.initial_state, bytes(view[end:end + length])), end + length


def _json_depth(text: bytes) -> int:
    """How deeply JSON arrays and objects nest in `text` (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:              # backslash
                escaped = True
            elif byte == 0x22:              # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):          # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _block_header(payload_length: int, record_count: int, first_seq: int, first_icount: int, state: Sequence[tuple[int, int]]) -> bytes:
    """The block header without its CRC."""
    fixed = _BLOCK_FIXED.pack(BLOCK_MAGIC, payload_length, record_count, len(state), 0, first_seq, first_icount)
    return fixed + b"".join(_VCPU_STATE.pack(icount, rip) for icount, rip in state)


def _pwrite_all(fd: int, buffers: list[BytesLike], offset: int) -> None:
    """Write all of `buffers` at `offset`, continuing after short writes."""
    pending = [memoryview(buffer).cast("B") for buffer in buffers if memoryview(buffer).nbytes]
    while pending:
        written = os.pwritev(fd, pending, offset)
        offset += written
        while written:
            if written >= len(pending[0]):
                written -= len(pending.pop(0))
            else:
                pending[0] = pending[0][written:]
                written = 0


class LogWriter:
    """Writes one log file: the header at creation, whole blocks, the footer at close.

    Sync policy: fdatasync after a block when `sync_interval` seconds passed since the last
    sync (0: after every block), fsync at close.
    """

    def __init__(self, path: str | os.PathLike[str], header: LogHeader, *, sync_interval: float = 1.0) -> None:
        header_bytes = header.to_bytes()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _pwrite_all(self._fd, [header_bytes], 0)
        except OSError:
            os.close(self._fd)
            os.unlink(path)
            raise
        self._end = len(header_bytes)  # end of the last complete block
        self._sync_interval = sync_interval
        self._last_sync = time.monotonic()
        self._decoder = Decoder()
        self._stream_bytes = 0
        self._index: list[tuple[int, int, int, dict[int, int]]] = []  # offset, first seq, first icount, kind counts before
        self._kind_counts: dict[int, int] = {}
        self._closed = False

    @classmethod
    def reopen(cls, path: str | os.PathLike[str], *, sync_interval: float = 1.0, closed: bool = False) -> "LogWriter":
        """Continue a log another writer left unfinished (a log daemon that died), or with `closed` one
        whose writer closed it, footer and all, before its END record (a recording handed over to another
        process): the file is cut back to its last complete block and later blocks continue its stream.
        LogFormatError if it is no such log."""
        with LogReader(path) as reader:
            damage = reader.damage
            valid_end = damage.valid_end if damage else None
            if closed:          # whole, footer included, only without END
                resumable = damage is not None and damage.has_footer and damage.bad_block is None \
                    and not damage.has_end_record
            else:               # cut back to its last complete block, whatever follows it
                resumable = damage is not None and not damage.has_footer
            if not resumable:
                raise LogFormatError(f"{os.fspath(path)} is not an unfinished log")
            blocks = reader.blocks
            decoder = Decoder(blocks[-1].first_seq, blocks[-1].state) if blocks else Decoder()
            if blocks:
                for _ in decoder.records(reader._view, blocks[-1].payload_offset,
                                         blocks[-1].payload_offset + blocks[-1].payload_length):
                    pass
            index, counts = [], {}
            for block in blocks:
                index.append((block.offset, block.first_seq, block.first_icount, dict(counts)))
                for record in reader._block_records(block):
                    counts[record.kind] = counts.get(record.kind, 0) + 1
            stream_bytes = sum(block.payload_length for block in blocks)
        writer = cls.__new__(cls)
        writer._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        os.ftruncate(writer._fd, valid_end)
        writer._end = valid_end
        writer._sync_interval = sync_interval
        writer._last_sync = time.monotonic()
        writer._decoder = decoder
        writer._stream_bytes = stream_bytes
        writer._index = index
        writer._kind_counts = counts
        writer._closed = False
        return writer

    @property
    def records_written(self) -> int:
        return self._decoder.next_seq

    @property
    def blocks_written(self) -> int:
        return len(self._index)

    def write_block(self, segments: Sequence[BytesLike], max_bytes: int | None = None) -> int:
        """Append records from `segments` (whole encoded records continuing the stream) as one block.

        With `max_bytes`, the block ends after the first record that brings it to max_bytes;
        returns the number of segment bytes the block took (0 if the segments are empty).
        RecordError: the bytes are not whole records (nothing written). OSError: the write
        failed; the file is truncated back to its last complete block.
        """
        first_seq = self._decoder.next_seq
        state = self._decoder.state()
        counts: dict[int, int] = {}
        first_icount = -1
        payload: list[memoryview] = []
        payload_length = 0
        try:
            for segment in segments:
                segment_length = 0
                for record in self._decoder.records(segment, offset_base=self._stream_bytes + payload_length):
                    counts[record.kind] = counts.get(record.kind, 0) + 1
                    if first_icount < 0:
                        first_icount = record.icount
                    segment_length = self._decoder.offset
                    if max_bytes is not None and payload_length + segment_length >= max_bytes:
                        break
                payload.append(memoryview(segment)[:segment_length])
                payload_length += segment_length
                if max_bytes is not None and payload_length >= max_bytes:
                    break
        except RecordError:
            self._decoder = Decoder(first_seq, state)
            raise
        if first_icount < 0:
            return 0
        header = _block_header(payload_length, self._decoder.next_seq - first_seq, first_seq, first_icount, state)
        crc = zlib.crc32(header)
        for part in payload:
            crc = zlib.crc32(part, crc)
        try:
            _pwrite_all(self._fd, [header + _CRC.pack(crc), *payload], self._end)
            if time.monotonic() - self._last_sync >= self._sync_interval:
                os.fdatasync(self._fd)
                self._last_sync = time.monotonic()
        except OSError:
            self._decoder = Decoder(first_seq, state)
            self._truncate_to_last_block()
            raise
        self._index.append((self._end, first_seq, first_icount, dict(self._kind_counts)))
        for kind, count in counts.items():
            self._kind_counts[kind] = self._kind_counts.get(kind, 0) + count
        self._end += len(header) + _CRC.size + payload_length
        self._stream_bytes += payload_length
        return payload_length

    def close(self) -> None:
        """Write footer and trailer, fsync, close. On OSError the file ends at its last block."""
        if self._closed:
            return
        self._closed = True
        kinds = sorted(self._kind_counts)
        counts_format = f"<{len(kinds)}Q"
        parts = [
            _FOOTER_FIXED.pack(FOOTER_MAGIC, len(self._index), len(kinds), 0, self._decoder.next_seq),
            struct.pack(f"<{len(kinds)}I", *kinds),
            struct.pack(counts_format, *(self._kind_counts[kind] for kind in kinds)),
        ]
        for offset, first_seq, first_icount, before in self._index:
            parts.append(struct.pack(f"<3Q{len(kinds)}Q", offset, first_seq, first_icount, *(before.get(kind, 0) for kind in kinds)))
        footer = b"".join(parts)
        try:
            _pwrite_all(self._fd, [footer, _CRC.pack(zlib.crc32(footer)), _TRAILER.pack(self._end, TRAILER_MAGIC)], self._end)
            os.fsync(self._fd)
        except OSError:
            self._truncate_to_last_block()
            raise
        finally:
            os.close(self._fd)

    def _truncate_to_last_block(self) -> None:
        try:
            os.ftruncate(self._fd, self._end)
        except OSError:
            pass  # the reader reports the partial block; the write error is what the caller hears about


class BlockInfo(NamedTuple):
    """Where a block is and what it starts with."""

    index: int
    offset: int
    payload_offset: int
    payload_length: int
    record_count: int
    first_seq: int
    first_icount: int
    state: tuple[tuple[int, int], ...]


class BadBlock(NamedTuple):
    """The first damaged block; first_seq/first_icount are None when its header is unreadable."""

    index: int
    offset: int
    first_seq: int | None
    first_icount: int | None


def count_phrase(number: int, noun: str) -> str:
    """'1 block', '2 blocks': a count with its noun in the right number, as every report about a log says it."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


@dataclass(frozen=True)
class Damage:
    """What is wrong with a log and how much of it is still usable (a usable prefix of blocks)."""

    problems: tuple[str, ...]
    usable_blocks: int
    usable_records: int
    valid_end: int  # file offset where the usable prefix of blocks ends
    unusable_bytes: int  # bytes from valid_end on that are neither usable blocks nor a valid footer
    bad_block: BadBlock | None
    has_footer: bool
    has_end_record: bool

    def __str__(self) -> str:
        if self.unusable_bytes:
            usable = (
                f"{count_phrase(self.usable_records, 'record')} in {count_phrase(self.usable_blocks, 'block')} are usable, "
                f"{self.unusable_bytes} bytes from offset {self.valid_end} are not"
            )
        else:
            usable = (f"all {count_phrase(self.usable_records, 'record')} in {count_phrase(self.usable_blocks, 'block')} "
                      f"are usable")
        return f"{'; '.join(self.problems)}: {usable}"


class LogReader:
    """A log file mapped read-only and parsed in place.

    Opening reads the header, the footer and every block header and checks every block's
    CRC (zlib over the mapping: no per-record work); records are decoded as they are
    iterated. Payloads are memoryviews into the mapping, valid while the reader is open.
    Raises LogFormatError when the file is not a readable log; `damage` describes anything
    short of that.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        with open(self.path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size == 0:
                raise LogFormatError("empty file: not a xenrr log")
            self._mmap = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        self._view = memoryview(self._mmap)
        try:
            self.header, self._header_end = _parse_header(self._view)
            footer, footer_damaged = self._find_footer()
            region_end = footer[0] if footer else size
            problems: list[str] = []
            self.blocks, bad_block, valid_end = self._scan_blocks(region_end, problems)
            footer_usable = footer is not None and bad_block is None and self._footer_matches(footer)
            if footer_damaged:
                problems.append("index footer is damaged")
            elif footer is None:
                problems.append("no index footer (the log daemon did not finish, or the file was cut short)")
            elif bad_block is None and not footer_usable:
                problems.append("index footer does not match the blocks")
            has_end = bool(self.blocks) and self._last_record(self.blocks[-1]).kind == KIND_END
            if not has_end and not problems:
                problems.append("no END record (the recording did not finish)")
        except BaseException:
            self.close()
            raise
        self._index_footer = footer if footer_usable else None  # per-kind counts cover exactly the usable blocks
        self._seq_starts = [block.first_seq for block in self.blocks]
        self._kind_index: dict[int, list[int]] | None = None  # kind -> records of that kind before each block
        self._kind_totals: dict[int, int] = {}
        self.record_count = sum(block.record_count for block in self.blocks)
        self.damage = (
            Damage(tuple(problems), len(self.blocks), self.record_count, valid_end, region_end - valid_end, bad_block, footer is not None, has_end)
            if problems
            else None
        )

    def _find_footer(self) -> tuple[tuple[int, int, int] | None, bool]:
        """((footer offset, block count, kind count) or None, whether a trailer points at a bad footer)."""
        view = self._view
        size = len(view)
        if size - self._header_end < _TRAILER.size:
            return None, False
        footer_offset, magic = _TRAILER.unpack_from(view, size - _TRAILER.size)
        if magic != TRAILER_MAGIC:
            return None, False
        if self._header_end <= footer_offset <= size - _TRAILER.size - _FOOTER_FIXED.size - _CRC.size:
            magic, blocks, kinds, _, _ = _FOOTER_FIXED.unpack_from(view, footer_offset)
            length = _FOOTER_FIXED.size + 12 * kinds + blocks * (24 + 8 * kinds)
            if magic == FOOTER_MAGIC and footer_offset + length + _CRC.size + _TRAILER.size == size:
                (stored_crc,) = _CRC.unpack_from(view, footer_offset + length)
                if zlib.crc32(view[footer_offset : footer_offset + length]) == stored_crc:
                    return (footer_offset, blocks, kinds), False
        return None, True

    def _scan_blocks(self, region_end: int, problems: list[str]) -> tuple[tuple[BlockInfo, ...], BadBlock | None, int]:
        """Walk the blocks in [header end, region_end): (usable blocks, first bad block, end of usable blocks)."""
        view = self._view
        blocks: list[BlockInfo] = []
        position = self._header_end
        next_seq = 0
        while position < region_end:
            index = len(blocks)
            remaining = region_end - position
            magic = bytes(view[position : position + min(remaining, len(BLOCK_MAGIC))])
            if magic != BLOCK_MAGIC[: len(magic)]:
                partial_footer = " (an incomplete index footer)" if magic == FOOTER_MAGIC[: len(magic)] else ""
                problems.append(f"bytes at offset {position} are not a block{partial_footer}")
                return tuple(blocks), BadBlock(index, position, None, None), position
            if remaining < _BLOCK_FIXED.size:
                problems.append(f"block {index} at offset {position} is truncated (header incomplete)")
                return tuple(blocks), BadBlock(index, position, None, None), position
            _, payload_length, record_count, states, _, first_seq, first_icount = _BLOCK_FIXED.unpack_from(view, position)
            where = f"block {index} at offset {position} (first seq {first_seq}, first icount {first_icount})"
            bad = BadBlock(index, position, first_seq, first_icount)
            header_length = _BLOCK_FIXED.size + _VCPU_STATE.size * states
            total = header_length + _CRC.size + payload_length
            if total > remaining:
                problems.append(f"{where} is truncated ({remaining} of its {total} bytes are present)")
                return tuple(blocks), bad, position
            (stored_crc,) = _CRC.unpack_from(view, position + header_length)
            payload_offset = position + header_length + _CRC.size
            crc = zlib.crc32(view[payload_offset : payload_offset + payload_length], zlib.crc32(view[position : position + header_length]))
            if crc != stored_crc:
                problems.append(f"{where} fails its CRC check")
                return tuple(blocks), bad, position
            if record_count == 0 or first_seq != next_seq:
                problems.append(f"{where} does not continue the log (expected first seq {next_seq})")
                return tuple(blocks), bad, position
            state = tuple(_VCPU_STATE.unpack_from(view, position + _BLOCK_FIXED.size + _VCPU_STATE.size * i) for i in range(states))
            blocks.append(BlockInfo(index, position, payload_offset, payload_length, record_count, first_seq, first_icount, state))
            next_seq += record_count
            position += total
        return tuple(blocks), None, position

    def _footer_matches(self, footer: tuple[int, int, int]) -> bool:
        footer_offset, block_count, kinds = footer
        if block_count != len(self.blocks):
            return False
        entry = struct.Struct(f"<3Q{kinds}Q")
        first_entry = footer_offset + _FOOTER_FIXED.size + 12 * kinds
        for block in self.blocks:
            offset, first_seq, first_icount = entry.unpack_from(self._view, first_entry + entry.size * block.index)[:3]
            if (offset, first_seq, first_icount) != (block.offset, block.first_seq, block.first_icount):
                return False
        return True

    def _block_records(self, block: BlockInfo) -> Iterator[Record]:
        start = block.payload_offset
        try:
            yield from Decoder(block.first_seq, block.state).records(self._view, start, start + block.payload_length)
        except RecordError as error:
            raise LogFormatError(f"block {block.index} at offset {block.offset} holds a malformed record: {error}") from None

    def _last_record(self, block: BlockInfo) -> Record:
        record = None
        for record in self._block_records(block):
            pass
        if record is None or record.seq != block.first_seq + block.record_count - 1:
            raise LogFormatError(f"block {block.index} at offset {block.offset} does not hold the records it claims")
        return record

    def records(self) -> Iterator[Record]:
        """Every usable record, in seq order."""
        for block in self.blocks:
            yield from self._block_records(block)

    def records_from(self, seq: int) -> Iterator[Record]:
        """The usable records from `seq` on (nothing if seq is past the end)."""
        if seq < 0:
            raise ValueError(f"record numbers start at 0, not {seq}")
        first = max(bisect.bisect_right(self._seq_starts, seq) - 1, 0)
        for block in self.blocks[first:]:
            for record in self._block_records(block):
                if record.seq >= seq:
                    yield record

    def count(self, kind: int) -> int:
        """How many usable records of `kind` the log holds."""
        self._load_kind_index()
        return self._kind_totals.get(kind, 0)

    def find(self, kind: int, n: int) -> Record:
        """The n-th (0-based) record of `kind`: a binary search in the index and one block scan."""
        total = self.count(kind)
        if not 0 <= n < total:
            raise LookupError(f"the log holds {total} {kind_name(kind)} records; there is no number {n}")
        before = self._kind_index[kind]
        block = self.blocks[bisect.bisect_right(before, n) - 1]
        seen = before[block.index]
        for record in self._block_records(block):
            if record.kind == kind:
                if seen == n:
                    return record
                seen += 1
        raise LogFormatError(f"block {block.index} at offset {block.offset} disagrees with the index")

    def _load_kind_index(self) -> None:
        """Per-kind counts before each usable block: from the footer, or by decoding every block once."""
        if self._kind_index is not None:
            return
        index: dict[int, list[int]] = {}
        totals: dict[int, int] = {}
        if self._index_footer is not None:
            footer_offset, block_count, kind_count = self._index_footer
            position = footer_offset + _FOOTER_FIXED.size
            kinds = struct.unpack_from(f"<{kind_count}I", self._view, position)
            totals = dict(zip(kinds, struct.unpack_from(f"<{kind_count}Q", self._view, position + 4 * kind_count)))
            entry = struct.Struct(f"<3Q{kind_count}Q")
            entries = [entry.unpack_from(self._view, position + 12 * kind_count + entry.size * i)[3:] for i in range(block_count)]
            index = {kind: [counts[j] for counts in entries] for j, kind in enumerate(kinds)}
        else:
            for block in self.blocks:
                for kind in totals:
                    index[kind].append(totals[kind])
                for record in self._block_records(block):
                    if record.kind not in totals:
                        totals[record.kind] = 0
                        index[record.kind] = [0] * (block.index + 1)
                    totals[record.kind] += 1
        self._kind_index, self._kind_totals = index, totals

    def close(self) -> None:
        """Unmap the file (deferred while payload views are still alive)."""
        self._view.release()
        try:
            self._mmap.close()
        except BufferError:
            pass  # payload views still reference the mapping; it goes away with the last of them

    def __enter__(self) -> "LogReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
