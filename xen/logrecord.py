"""Log records: the compact, self-delimiting byte form of what the inject funnel logs.

Owns the record tuple, the record-kind numbers and their name registry, and the encoding:
`Encoder` (producer side, appends to a bytearray) and `Decoder` (parses in place from any
buffer, payloads returned as memoryview slices, never copied). The byte layout is
documented in docs/log-format.md ("Record encoding").

Invariant: a Decoder started from the state an Encoder had before a record yields exactly
the records the Encoder was given from that record on, in order, with seq = the record's
position in the stream (never stored); per vCPU, icount never decreases.
"""

from collections.abc import Iterator, Sequence
from typing import NamedTuple

# Any object with the buffer protocol works (mmap too); these are the ones named in signatures.
BytesLike = bytes | bytearray | memoryview

# Kinds 0..15 belong to the log file layer; input kinds are registered by the funnel.
KIND_END = 0  # last record of a finished recording; payload: the final state digest
KIND_DIGEST = 1  # periodic state digest; payload: opaque bytes from the hypervisor
FIRST_INPUT_KIND = 16
MAX_KIND = 0xFFFF
MAX_VCPU = 4095
MAX_PAYLOAD = 1 << 16
_U64 = (1 << 64) - 1
_VCPU_INLINE = 3  # vCPUs 0..2 live in the tag; 3 in the tag means "a varint vCPU - 3 follows"

# The one vocabulary of kinds users see (dump, events, --kind filters): lower case, words joined by '-'.
_kind_names: dict[int, str] = {KIND_END: "end", KIND_DIGEST: "digest"}


def register_kind(kind: int, name: str) -> int:
    """Name an input kind (>= FIRST_INPUT_KIND) so dumps, event lists and --kind filters use it; returns `kind`."""
    if not FIRST_INPUT_KIND <= kind <= MAX_KIND:
        raise ValueError(f"input record kinds are {FIRST_INPUT_KIND}..{MAX_KIND}, not {kind}")
    known = _kind_names.get(kind)
    if known is not None and known != name:
        raise ValueError(f"record kind {kind} is already registered as {known!r}")
    _kind_names[kind] = name
    return kind


def kind_name(kind: int) -> str:
    """The registered name of a kind, or 'kind-N' for one nobody registered."""
    return _kind_names.get(kind, f"kind-{kind}")


def kind_names(first: int = 0) -> list[str]:
    """The registered kind names in number order, from kind `first` on (FIRST_INPUT_KIND: the input kinds):
    what help texts list, so a newly registered kind needs no edit there."""
    return [name for kind, name in sorted(_kind_names.items()) if kind >= first]


def kinds_named(names: str) -> set[int]:
    """The kinds of a `--kind` filter: registered names separated by commas. ValueError naming the known
    kinds for a name nobody registered."""
    numbers = {name: kind for kind, name in _kind_names.items()}
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in numbers]
    if unknown or not wanted:
        raise ValueError(f"unknown record kind {', '.join(unknown) or repr(names)}: the kinds are "
                         f"{', '.join(sorted(numbers))}")
    return {numbers[name] for name in wanted}


class Record(NamedTuple):
    """One logged event. `payload` is a view into the decoded buffer: copy it to keep it."""

    seq: int
    kind: int
    vcpu: int
    icount: int
    rip: int
    payload: memoryview


class RecordError(ValueError):
    """Malformed record bytes; `offset` is where the bad record starts."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (record at offset {offset})")
        self.offset = offset


def _append_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    """Unsigned LEB128 at `pos` -> (value, next position). IndexError when truncated."""
    value = 0
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value > _U64:
                raise ValueError("varint exceeds 64 bits")
            return value, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")


class Encoder:
    """Appends records to a caller's bytearray, each as deltas from the previous record of its vCPU."""

    def __init__(self) -> None:
        self.next_seq = 0
        self._icounts: list[int] = []
        self._rips: list[int] = []

    def state(self) -> tuple[int, list[int], list[int]]:
        """What the next record is encoded against; `restore` it to take back records encoded since."""
        return self.next_seq, list(self._icounts), list(self._rips)

    def restore(self, state: tuple[int, list[int], list[int]]) -> None:
        self.next_seq, icounts, rips = state
        self._icounts, self._rips = list(icounts), list(rips)

    def encode(self, out: bytearray, kind: int, vcpu: int, icount: int, rip: int, payload: BytesLike = b"") -> int:
        """Append one record to `out`; returns its seq. ValueError (nothing appended) if out of range."""
        if not 0 <= kind <= MAX_KIND:
            raise ValueError(f"record kind {kind} is not in 0..{MAX_KIND}")
        if not 0 <= vcpu <= MAX_VCPU:
            raise ValueError(f"vCPU {vcpu} is not in 0..{MAX_VCPU}")
        if not 0 <= rip <= _U64:
            raise ValueError(f"rip {rip:#x} is not a 64-bit address")
        if vcpu >= len(self._icounts):
            grow = vcpu + 1 - len(self._icounts)
            self._icounts += [0] * grow
            self._rips += [0] * grow
        previous_icount = self._icounts[vcpu]
        if not previous_icount <= icount <= _U64:
            raise ValueError(f"icount {icount} goes back from {previous_icount} on vCPU {vcpu} (or exceeds 64 bits)")
        length = memoryview(payload).nbytes
        if length > MAX_PAYLOAD:
            raise ValueError(f"payload of {length} bytes exceeds {MAX_PAYLOAD}")

        if vcpu < _VCPU_INLINE:
            _append_varint(out, kind << 2 | vcpu)
        else:
            _append_varint(out, kind << 2 | _VCPU_INLINE)
            _append_varint(out, vcpu - _VCPU_INLINE)
        _append_varint(out, icount - previous_icount)
        delta = (rip - self._rips[vcpu]) & _U64
        _append_varint(out, delta << 1 if delta < 1 << 63 else ((1 << 64) - delta) * 2 - 1)  # zigzag
        _append_varint(out, length)
        out += payload
        self._icounts[vcpu] = icount
        self._rips[vcpu] = rip
        seq = self.next_seq
        self.next_seq = seq + 1
        return seq


class Decoder:
    """Parses records in place, carrying (seq, per-vCPU icount and rip) across calls."""

    def __init__(self, first_seq: int = 0, state: Sequence[tuple[int, int]] = ()) -> None:
        """`state`: (icount, rip) of the last record of vCPU i before `first_seq`, at index i."""
        self.next_seq = first_seq
        self.offset = 0  # just past the last record yielded, in the buffer given to records()
        self._icounts = [icount for icount, _ in state]
        self._rips = [rip for _, rip in state]

    def state(self) -> list[tuple[int, int]]:
        """(icount, rip) of the last decoded record of each vCPU, vCPU i at index i."""
        return list(zip(self._icounts, self._rips))

    def records(self, data: BytesLike, start: int = 0, end: int | None = None, offset_base: int = 0) -> Iterator[Record]:
        """Yield the records in data[start:end]; RecordError (offsets + offset_base) on bad bytes.

        The range must hold whole records. State advances with each record yielded, so a
        caller that stops early can continue with another call at the next record.
        """
        view = memoryview(data)
        if view.format != "B":
            view = view.cast("B")
        view = view[: len(view) if end is None else end]
        icounts = self._icounts
        rips = self._rips
        new_record = tuple.__new__  # skips NamedTuple's Python-level __new__: ~15% of the time per record
        pos = start
        limit = len(view)
        while pos < limit:
            record_start = pos
            try:
                tag = view[pos]
                pos += 1
                if tag >= 0x80:
                    tag, pos = _read_varint(view, pos - 1)
                vcpu = tag & 3
                if vcpu == _VCPU_INLINE:
                    extra, pos = _read_varint(view, pos)
                    vcpu += extra
                    if vcpu > MAX_VCPU:
                        raise ValueError(f"vCPU {vcpu} exceeds {MAX_VCPU}")
                kind = tag >> 2
                if kind > MAX_KIND:
                    raise ValueError(f"record kind {kind} exceeds {MAX_KIND}")
                delta = view[pos]
                pos += 1
                if delta >= 0x80:
                    delta, pos = _read_varint(view, pos - 1)
                zigzag = view[pos]
                pos += 1
                if zigzag >= 0x80:
                    zigzag, pos = _read_varint(view, pos - 1)
                length = view[pos]
                pos += 1
                if length >= 0x80:
                    length, pos = _read_varint(view, pos - 1)
            except IndexError:
                raise RecordError("record truncated", offset_base + record_start) from None
            except ValueError as error:
                raise RecordError(str(error), offset_base + record_start) from None
            if length > MAX_PAYLOAD:
                raise RecordError(f"payload length {length} exceeds {MAX_PAYLOAD}", offset_base + record_start)
            payload_end = pos + length
            if payload_end > limit:
                raise RecordError("record payload truncated", offset_base + record_start)
            if vcpu >= len(icounts):
                grow = vcpu + 1 - len(icounts)
                icounts += [0] * grow
                rips += [0] * grow
            icount = icounts[vcpu] + delta
            if icount > _U64:
                raise RecordError("icount exceeds 64 bits", offset_base + record_start)
            rip = (rips[vcpu] + (zigzag >> 1 if not zigzag & 1 else -(zigzag >> 1) - 1)) & _U64
            icounts[vcpu] = icount
            rips[vcpu] = rip
            seq = self.next_seq
            self.next_seq = seq + 1
            self.offset = payload_end
            yield new_record(Record, (seq, kind, vcpu, icount, rip, view[pos:payload_end]))
            pos = payload_end
