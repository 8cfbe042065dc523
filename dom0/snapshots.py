"""Stored snapshots: full-state snapshots of a recording, in a companion file beside its log.

Owns the companion file (`SESSION.snap`, docs/log-format.md "Snapshots"), `SnapshotWriter` (record
side: takes a snapshot every so many instructions or seconds, compresses and writes it on a thread of
its own) and `SnapshotFile` (replay side: the index of usable snapshots, and the state of one).

A snapshot holds what a timeline checkpoint holds (stub/timeline.py): the vCPU registers
(`VCpu.save_cpu`), the domain's hypervisor-side state (`Domain.save_state`: memory model, grants,
xenstore, event channels, timers, console, ...), the replayer's place in the log, and guest memory as
the frames written since the previous snapshot; every KEY_EVERY-th snapshot (the first included)
holds every frame written since the recording started, so that rebuilding memory reads at most
KEY_EVERY snapshots whatever the position. Bodies are compressed with zstandard.

A snapshot is taken right after the recorder logs a state digest with memory, at the same point; the
snapshot's position is (icount, seq of the record after that digest). Whoever restores one checks the
restored state against that logged digest (stub/timeline.py), and every entry carries a BLAKE2b
checksum of its bytes; the state inside is unpickled with only the project's own state classes allowed.

Invariant: the companion file is derived data. Its loss or damage never harms the log (which never
refers to it): a damaged entry, and every delta that builds on it up to the next key snapshot, is
skipped with a message and never trusted, and a replay without it is only slower.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import io
import mmap
import os
import pickle
import queue
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import zstandard

from xen.domain import Domain, DomainState
from xen.replay import Mark, ReplayerState
from xen.vcpu import PAGE_SIZE, CpuState

FILE_MAGIC = b"XRRSNAP1"
ENTRY_MAGIC = b"XRSN"
# magic, flags, icount, seq, frame count, body bytes, BLAKE2b-128 of (this header without it, frames, body)
_ENTRY = struct.Struct("<4sIQQII16s")
_KEY = 1                       # flags: a key snapshot (every frame written since the start)
KEY_EVERY = 64                 # every 64th snapshot is a key snapshot
ZSTD_LEVEL = 3
DEFAULT_EVERY_INSTRUCTIONS = 1 << 28        # about 1 % of a busy recording; at most ~0.15 s of replay to any goto
SUFFIX = ".snap"


def snapshot_path(log: Path) -> Path:
    """Where the snapshots of the log `log` are kept: beside it, `SESSION.snap`."""
    return log.with_name(log.name + SUFFIX)


@dataclass(frozen=True)
class Interval:
    """How often a recording takes a snapshot: every `instructions`, or every `seconds` of recording
    (host time); neither: never."""
    instructions: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str) -> "Interval":
        """`N` instructions (`_` and e-notation allowed: 1e9), `Ns` seconds (`0.5s`), `0`: none.
        ValueError in words otherwise."""
        text = text.strip()
        try:
            if text.endswith("s"):
                seconds = float(text[:-1])
                if not 0 < seconds < 1e6:
                    raise ValueError
                return cls(seconds=seconds)
            number = float(text.replace("_", ""))
            if number != int(number) or not 0 <= number <= 2**62:
                raise ValueError
            return cls(instructions=int(number) or None)
        except (ValueError, OverflowError):
            raise ValueError(f"--snapshot-every wants a number of instructions (e.g. 100000000 or 1e8), seconds "
                             f"(e.g. 2s) or 0 for none, not {text!r}") from None

    @property
    def enabled(self) -> bool:
        return self.instructions is not None or self.seconds is not None

    def __str__(self) -> str:
        if self.seconds is not None:
            return f"{self.seconds:g}s"
        return str(self.instructions or 0)


class SnapshotDamaged(Exception):
    """A stored snapshot cannot be used (one line saying why)."""


# ---------------------------------------------------------------------------------------------- writing

class SnapshotWriter:
    """Record side: takes snapshots of a live domain whose inputs `sink` logs (a dom0.record.RingSink).

    The scheduler asks `due()` at slice boundaries and calls `take()`; the state is captured at once
    (registers, `Domain.save_state`, the frames written since the last snapshot) and pickled, then
    compressed and written by a thread, so the guest waits only for the capture."""

    def __init__(self, path: Path, domain: Domain, sink: Any, every: Interval, handed: dict | None = None):
        """`handed`: go on with the file another process's writer handed over (`hand_off`), the domain
        moved here meanwhile."""
        self.path = path
        self.domain = domain
        self.sink = sink
        self.every = every
        self.taken = 0
        self.bytes_written = len(FILE_MAGIC)
        self.capture_seconds = 0.0          # the guest's wait: capture only (compression is on the thread)
        self.write_cpu_seconds = 0.0        # the thread's CPU time: compression and writing
        # Frames written in another process (before a move) since the start and since the last snapshot:
        # this process's dirty tracking began after them.
        self._written_before_start: set[int] = set()
        self._written_before_last: set[int] = set()
        self._last_icount = domain.vcpu.icount
        self._last_time = time.monotonic()
        if handed is None:
            self._file = open(path, "wb")
            self._file.write(FILE_MAGIC)
        else:
            self._file = open(path, "ab")
            vars(self).update(handed)
        self._start_generation = domain.vcpu.track_dirty_pages()
        self._generation = self._start_generation
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None     # started by the first snapshot (most runs are shorter)

    def due(self) -> bool:
        """Whether the interval has passed since the last snapshot (or the start)."""
        if self.every.instructions is not None:
            return self.domain.vcpu.icount - self._last_icount >= self.every.instructions
        return self.every.seconds is not None and time.monotonic() - self._last_time >= self.every.seconds

    def take(self) -> None:
        """Log a digest with memory and snapshot the state right after it (the digest checks the snapshot)."""
        if self._error is not None:
            return
        started = time.perf_counter()
        domain, vcpu = self.domain, self.domain.vcpu
        domain.funnel.log_digest(with_memory=True)
        key = self.taken % KEY_EVERY == 0
        written = vcpu.pages_written_since(self._start_generation if key else self._generation)
        frames = sorted(written | (self._written_before_start if key else self._written_before_last))
        self._written_before_last = set()
        self._generation = vcpu.new_generation()
        replayer = ReplayerState(self.sink.records, False, self.sink.digests, self.sink.inputs, None)
        state, pages = capture(domain, frames, replayer)       # copies: the domain runs on
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_loop, name="xenrr-snapshots", daemon=True)
            self._thread.start()
        self._queue.put((vcpu.icount, self.sink.records, key, frames, state, pages))
        self.taken += 1
        self._last_icount = vcpu.icount
        self._last_time = time.monotonic()
        self.capture_seconds += time.perf_counter() - started

    def _write_loop(self) -> None:
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                started = time.thread_time()
                self._write_entry(compressor, *item)
                self.write_cpu_seconds += time.thread_time() - started

    def _write_entry(self, compressor: zstandard.ZstdCompressor, icount: int, seq: int, key: bool,
                     frames: list[int], state: bytes, pages: bytes) -> None:
        entry = encode_entry(compressor, icount, seq, key, frames, state, pages)
        try:
            self._file.write(entry)
            self.bytes_written += len(entry)
        except OSError as error:
            self._error = error

    def hand_off(self) -> dict | None:
        """Close the file (what is queued written) for a writer in another process to go on with it
        (`SnapshotWriter(..., handed=...)`): what it needs to know. None when writing had failed."""
        vcpu = self.domain.vcpu
        handed = {"taken": self.taken, "bytes_written": self.bytes_written, "capture_seconds": self.capture_seconds,
                  "_written_before_start": self._written_before_start | vcpu.pages_written_since(self._start_generation),
                  "_written_before_last": self._written_before_last | vcpu.pages_written_since(self._generation),
                  "_last_icount": self._last_icount, "_last_time": self._last_time}
        if self.close() is not None:
            return None
        return {**handed, "write_cpu_seconds": self.write_cpu_seconds}

    def close(self) -> str | None:
        """Write what is queued and close the file; returns why snapshots stopped being written, if they did."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        try:
            self._file.close()
        except OSError as error:
            self._error = self._error or error
        if self._error is not None:
            return f"snapshots could not be written to {self.path}: {self._error.strerror} (the log is not affected)"
        return None


def capture(domain: Domain, frames: list[int], replayer: ReplayerState) -> tuple[bytes, bytes]:
    """The state a snapshot holds, as bytes the domain no longer shares: the pickled (CpuState,
    DomainState, ReplayerState) and the contents of `frames`, one after the other."""
    vcpu = domain.vcpu
    pages = b"".join(vcpu.read_frame(frame) for frame in frames)
    state = pickle.dumps((vcpu.save_cpu(), domain.save_state(copied=False), replayer), protocol=pickle.HIGHEST_PROTOCOL)
    return state, pages


def encode_entry(compressor: zstandard.ZstdCompressor, icount: int, seq: int, key: bool, frames: list[int],
                 state: bytes, pages: bytes) -> bytes:
    """One entry: its header with the checksum, the frame numbers, the compressed state and pages."""
    frame_bytes = struct.pack(f"<{len(frames)}I", *frames)
    body = compressor.compress(state + pages)
    header = _ENTRY.pack(ENTRY_MAGIC, _KEY if key else 0, icount, seq, len(frames), len(body), bytes(16))
    return header[:-16] + _checksum(header, frame_bytes, body) + frame_bytes + body


def start_state_entry(domain: Domain, frames: set[int]) -> bytes:
    """The state a log that starts with a running domain carries (docs/log-format.md, "Start state"):
    one key snapshot entry at (the domain's instruction count, record 0) holding `frames` - every frame
    that may differ from the freshly built domain's."""
    ordered = sorted(frames)
    state, pages = capture(domain, ordered, ReplayerState(0, False, 0, 0, None))
    return encode_entry(zstandard.ZstdCompressor(level=ZSTD_LEVEL), domain.vcpu.icount, 0, True, ordered, state, pages)


def load_start_state(entry: bytes | memoryview, where: str) -> SnapshotState:
    """The state of a start-state entry (`start_state_entry`); SnapshotDamaged, one line beginning with
    `where`, when its checksum fails, it does not decode, or it is not one key snapshot at record 0."""
    stored = SnapshotFile.of_entries(entry, where)
    try:
        found = stored.entries
        if len(found) != 1 or not found[0].key or found[0].mark.seq != 0 or len(stored.problems) > 1:
            raise SnapshotDamaged(f"{where} is damaged: it is not one full snapshot")
        if not found[0].checksum_ok:
            raise SnapshotDamaged(f"{where} is damaged: it fails its BLAKE2b checksum")
        try:
            return stored.load(found[0])
        except SnapshotDamaged as error:
            raise SnapshotDamaged(f"{where} is damaged: {error}") from None
    finally:
        stored.close()


def _checksum(header: bytes, frame_bytes: bytes, body: bytes) -> bytes:
    digest = hashlib.blake2b(header[:-16], digest_size=16)
    digest.update(frame_bytes)
    digest.update(body)
    return digest.digest()


# ---------------------------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class StoredSnapshot:
    """One entry of the companion file, as indexed (its state is read by `SnapshotFile.load`)."""
    index: int
    mark: Mark
    key: bool
    offset: int           # of the frame list
    frames: tuple[int, ...]
    body_offset: int
    body_length: int
    checksum_ok: bool


@dataclass(frozen=True)
class SnapshotState:
    """The state a stored snapshot restores: memory as the frames that differ from the freshly built domain."""
    mark: Mark
    cpu: CpuState
    domain: DomainState
    replayer: ReplayerState
    pages: dict[int, bytes]


class _StateUnpickler(pickle.Unpickler):
    """Unpickles plain data and the project's own state classes (dataclasses and enums of xen/ and dom0/)
    only: a snapshot is input, not code, and building one of those runs nothing but storing fields."""

    _BUILTINS = {"set", "frozenset", "dict", "list", "tuple", "bytes", "bytearray", "int", "str", "bool",
                 "float", "complex"}

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in self._BUILTINS:
            return super().find_class(module, name)
        if module.startswith(("xen.", "dom0.")) and "." not in name:
            value = super().find_class(module, name)
            if isinstance(value, type) and (dataclasses.is_dataclass(value) or issubclass(value, enum.Enum)):
                return value
        raise pickle.UnpicklingError(f"{module}.{name} is not a state class")


class SnapshotFile:
    """The snapshots of one recording, indexed on opening (headers only; bodies are read on use).

    `problems` says in words what could not be used (damaged entries, a cut file); `usable` are the
    snapshots whose own bytes and chain (back to their key snapshot) are intact, in position order."""

    def __init__(self, path: Path):
        self.path = path
        self.problems: list[str] = []
        self._mmap: mmap.mmap | None = None
        self._view: Any = None              # the mapping, or the bytes of `of_entries`
        self.entries: list[StoredSnapshot] = []
        self._decompressor = zstandard.ZstdDecompressor()
        try:
            with open(path, "rb") as file:
                if os.fstat(file.fileno()).st_size > 0:
                    self._mmap = self._view = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as error:
            if not isinstance(error, FileNotFoundError):
                self.problems.append(f"snapshots {path} cannot be read: {error.strerror}")
            return
        if self._mmap is None:
            return               # empty: the recording stopped before its first snapshot was written
        view = self._mmap
        if view[:len(FILE_MAGIC)] != FILE_MAGIC:
            self.problems.append(f"{path} is not a xenrr snapshot file")
            return
        self._scan(view, len(FILE_MAGIC))

    @classmethod
    def of_entries(cls, data: bytes | memoryview, where: str) -> "SnapshotFile":
        """Entries held elsewhere than in a companion file (a log's start state): `data` is entries
        only, without the file magic; `where` names them in messages."""
        stored = cls.__new__(cls)
        stored.path, stored.problems, stored._mmap, stored._view = where, [], None, data
        stored.entries, stored._decompressor = [], zstandard.ZstdDecompressor()
        stored._scan(data, 0)
        return stored

    def _scan(self, view, offset: int) -> None:
        size = len(view)
        while offset < size:
            index = len(self.entries)
            if size - offset < _ENTRY.size or view[offset:offset + 4] != ENTRY_MAGIC:
                self.problems.append(f"snapshot {index} at offset {offset} of {self.path} is unreadable; "
                                     "it and the snapshots after it are skipped")
                return
            magic, flags, icount, seq, count, length, checksum = _ENTRY.unpack_from(view, offset)
            frames_at = offset + _ENTRY.size
            body_at = frames_at + 4 * count
            if body_at + length > size or count > 1 << 28:
                self.problems.append(f"snapshot {index} at offset {offset} of {self.path} is cut short; "
                                     "it and the snapshots after it are skipped")
                return
            ok = _checksum(bytes(view[offset:offset + _ENTRY.size]), view[frames_at:body_at],
                           view[body_at:body_at + length]) == checksum
            frames = struct.unpack_from(f"<{count}I", view, frames_at) if ok else ()
            self.entries.append(StoredSnapshot(index, Mark(icount, seq), bool(flags & _KEY), frames_at, frames,
                                               body_at, length, ok))
            if not ok:
                self.problems.append(f"snapshot {index} (instruction {icount}) fails its checksum: skipped")
            offset = body_at + length

    @classmethod
    def beside(cls, log: Path, warn: Callable[[str], None]) -> "SnapshotFile | None":
        """The snapshots of the log `log` (None if it has none, or if they are another recording's), after
        telling `warn` what is damaged."""
        stored = cls(snapshot_path(log))
        if stored.entries:
            stored._keep_those_of(log)
        for problem in stored.problems:
            warn(problem)
        if not stored.entries:
            stored.close()
            return None
        return stored

    def _keep_those_of(self, log: Path) -> None:
        """Keep only snapshots that can be `log`'s: each was taken right after a state digest the recorder
        logged at its instruction count. A checksummed entry whose position, inside the log's usable
        records, holds no such digest means the file is another recording's (copied or left beside this
        log): none of it is used, said in one line. Entries past the log's usable end (a log cut short or
        damaged) are dropped; whoever opens the log reports its damage."""
        from dom0.logfile import LogFormatError, LogReader     # only the commands that use snapshots pay it
        from xen.logrecord import KIND_DIGEST

        try:
            reader = LogReader(log)
        except (OSError, LogFormatError):
            return                     # the log itself is unreadable: its reader says why
        with reader:
            for entry in self.entries:
                if not entry.checksum_ok:
                    continue
                record = next(reader.records_from(entry.mark.seq - 1), None) if entry.mark.seq > 0 else None
                if record is None and entry.mark.seq > 0:
                    del self.entries[entry.index:]
                    return
                if record is None or record.kind != KIND_DIGEST or record.icount != entry.mark.icount:
                    self.problems.append(f"{self.path} holds snapshots of another recording (snapshot {entry.index} "
                                         f"at instruction {entry.mark.icount} has no state digest logged at its "
                                         f"position in {log}): none of them is used")
                    self.entries = []
                    return

    @property
    def usable(self) -> list[StoredSnapshot]:
        """The snapshots whose bytes and chain back to their key snapshot pass their checksums."""
        found, chain_ok = [], False
        for entry in self.entries:
            chain_ok = entry.checksum_ok and (entry.key or chain_ok)
            if chain_ok and (not found or entry.mark > found[-1].mark):
                found.append(entry)
        return found

    def before(self, mark: Mark, strictly: bool = False) -> list[StoredSnapshot]:
        """The usable snapshots at or before `mark` (strictly before with `strictly`), latest first."""
        return [entry for entry in reversed(self.usable) if entry.mark < mark or (not strictly and entry.mark == mark)]

    def load(self, entry: StoredSnapshot) -> SnapshotState:
        """The state of `entry`: its own body, memory from its key snapshot and the deltas up to it.
        SnapshotDamaged (one line) when any of them cannot be decoded."""
        chain = []
        for index in range(entry.index, -1, -1):
            chain.append(self.entries[index])
            if self.entries[index].key:
                break
        pages: dict[int, bytes] = {}
        state = None
        for link in reversed(chain):
            decoded, data = self._decode(link)
            if link is entry:
                state = decoded
            for position, frame in enumerate(link.frames):
                pages[frame] = data[position * PAGE_SIZE:(position + 1) * PAGE_SIZE]
        cpu, domain, replayer = state
        if not (isinstance(cpu, CpuState) and isinstance(domain, DomainState) and isinstance(replayer, ReplayerState)) \
                or cpu.icount != entry.mark.icount or replayer.next_seq != entry.mark.seq:
            raise SnapshotDamaged(f"snapshot {entry.index} (instruction {entry.mark.icount}) holds no valid state")
        return SnapshotState(entry.mark, cpu, domain, replayer, pages)

    def _decode(self, entry: StoredSnapshot) -> tuple[tuple, bytes]:
        where = f"snapshot {entry.index} (instruction {entry.mark.icount})"
        if not entry.checksum_ok:
            raise SnapshotDamaged(f"{where} fails its checksum")
        try:
            raw = self._decompressor.decompress(self._view[entry.body_offset:entry.body_offset + entry.body_length])
            stream = io.BytesIO(raw)
            state = _StateUnpickler(stream).load()
        except (zstandard.ZstdError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                ImportError, IndexError, KeyError) as error:
            raise SnapshotDamaged(f"{where} cannot be decoded: {error}") from None
        pages = raw[stream.tell():]
        if len(pages) != PAGE_SIZE * len(entry.frames) or not isinstance(state, tuple) or len(state) != 3:
            raise SnapshotDamaged(f"{where} holds {len(pages)} bytes of memory for {len(entry.frames)} frames")
        return state, pages

    def close(self) -> None:
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None
        self._view = None
