"""Recording: connect a live domain's input funnel to the log daemon through the shared-memory ring.

Owns the record session: the log header (image hash, domain config, initial state), the sink that
encodes each injection into the ring, and shutting the stream down so the log ends with an END
record and an index. Invariant: every injection is handed to the ring before it is applied to the
guest (the funnel's order), so a record that reached the guest is in the log or the recording
stops with an error; records already in the ring always reach the file.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from dom0.logd import LogDaemon, fork_log_daemon
from dom0.logfile import START_STATE_KEY, LogFormatError, LogHeader, LogReader, LogWriter
from dom0.snapshots import Interval, SnapshotWriter, snapshot_path, start_state_entry
from dom0.logring import CONSUMER_FAILED, LogDaemonDied, LogDaemonError, RingError, RingProducer
from dom0.toolstack import xenstore_config
from xen.domain import Domain
from xen.inject import Injection
from xen.logrecord import FIRST_INPUT_KIND, KIND_DIGEST, Encoder
from xen.sched import SLICE_INSTRUCTIONS, ConsoleInput, Outcome, Scheduler

RING_BYTES = 1 << 20
# The ring takes chunks of at most half its size; the largest record is a console input that fills the
# guest's 1 KiB input ring, plus its framing.
MIN_RING_BYTES = 4096


class RecordingFailed(Exception):
    """The log could not be written; the file is valid up to the last complete block."""


class RecordingRefused(Exception):
    """Recording cannot start with these arguments (nothing was written): one line."""


class EarlyDaemon:
    """A log ring and its daemon, forked before the domain is built: `xenrr record` starts it first, so
    the fork copies a small process and nothing waits for the daemon later. `Recording` begins it (hands
    it the log's path and header); `abandon` ends it if no recording began."""

    def __init__(self, ring_bytes: int = RING_BYTES):
        if ring_bytes < MIN_RING_BYTES or ring_bytes & (ring_bytes - 1):
            raise ValueError(f"the log ring must be a power of two of at least {MIN_RING_BYTES} bytes")
        try:
            self.ring = RingProducer(ring_bytes)
        except RingError as error:
            raise RecordingFailed(str(error)) from None
        self.daemon: LogDaemon = fork_log_daemon(self.ring)
        self.begun = False

    def begin(self, path: Path, header: LogHeader) -> None:
        self.begun = True
        try:
            self.daemon.begin(path, header)
        except LogDaemonError as error:
            self.ring.detach()
            raise RecordingFailed(f"cannot start the log daemon: {error}") from None

    def abandon(self) -> None:
        """End a daemon that was never begun (the domain could not be built, the log was refused)."""
        if not self.begun:
            self.begun = True
            self.daemon.abandon()
            self.ring.detach()


class RingSink:
    """Encodes injections straight into the log ring (the funnel's InjectionSink).

    Until the log daemon has released a record from the ring (it is then in the log file), the sink
    keeps its encoded bytes too: when the daemon dies, `salvage` writes them into the log itself, so
    no input the guest consumed is lost. After a daemon death the sink takes records into that
    backlog only (the recording stops at once, its END record included)."""

    def __init__(self, ring: RingProducer, handed: dict | None = None):
        """`handed`: the stream goes on where another process's sink left it (`save`)."""
        self._ring = ring
        self._encoder = Encoder()
        self._buffer = bytearray()
        self.records = 0
        self.digests = 0             # of the records: state digests, and inputs (what a snapshot's replayer counts)
        self.inputs = 0
        if handed is not None:
            self._encoder.restore(handed["encoder"])
            self.records, self.digests, self.inputs = handed["records"], handed["digests"], handed["inputs"]
        self._unreleased: deque[tuple[int, int, bytes]] = deque()    # (seq, ring position after it, bytes)
        self.daemon_died = False

    def append(self, injection: Injection) -> None:
        self._buffer.clear()
        before = self._encoder.state()
        seq = self._encoder.encode(self._buffer, injection.kind, injection.vcpu, injection.icount, injection.rip,
                                   injection.payload)
        if self.daemon_died:
            self._unreleased.append((seq, 0, bytes(self._buffer)))
            self._count(injection.kind)
            return
        try:
            self._ring.check_consumer()        # a dead daemon stops the recording now, not when the ring fills
            self._ring.put(self._buffer)
        except LogDaemonDied as error:
            self.daemon_died = True
            self._encoder.restore(before)     # the input is not applied (the guest never sees it) nor logged
            raise RecordingFailed(str(error)) from None
        except LogDaemonError as error:
            raise RecordingFailed(str(error)) from None
        released = self._ring.released()
        while self._unreleased and self._unreleased[0][1] <= released:
            self._unreleased.popleft()
        self._unreleased.append((seq, self._ring.published, bytes(self._buffer)))
        self._count(injection.kind)

    def save(self) -> dict:
        """Where the stream stands (the encoder's state, the counts), for a sink in another process."""
        return {"encoder": self._encoder.state(), "records": self.records, "digests": self.digests,
                "inputs": self.inputs}

    def _count(self, kind: int) -> None:
        self.records += 1
        self.digests += kind == KIND_DIGEST
        self.inputs += kind >= FIRST_INPUT_KIND

    def salvage(self, path: Path) -> int:
        """Write into the log every record the dead daemon did not, and close it. Returns how many."""
        writer = LogWriter.reopen(path)
        try:
            missing = [encoded for seq, _, encoded in self._unreleased if seq >= writer.records_written]
            if len(missing) + writer.records_written != self.records:
                raise RecordingFailed(f"the log file holds {writer.records_written} records, the recorder "
                                      f"{self.records}: the log cannot be completed")
            if missing:
                writer.write_block(missing)
        finally:
            writer.close()
        return len(missing)


def make_header(domain: Domain, guest: Path, clock: str, xenstore: dict | None = None,
                start_frames: set[int] | None = None) -> LogHeader:
    """The log header; `xenstore` is the domain's xenstore config (default: a lone domain named after
    the guest file, as `xenrr record` runs it). `start_frames`: the domain has already run (a host's
    running domain), so the log carries its state now - registers, `Domain.save_state` and these
    frames, every one that may differ from the freshly built domain's (dom0/snapshots.py)."""
    image = domain.image
    initial = domain.digest(with_memory=True, in_clear=True)
    config = {"guest": str(guest.resolve()), "memory_bytes": image.memory_bytes, "cmdline": image.cmdline,
              "clock": clock, "vcpus": len(domain.vcpus)}
    if len(domain.vcpus) > 1:
        config["quantum"] = domain.quantum      # how the vCPUs interleave: part of the session
    if domain.xenstore is not None:
        config["xenstore"] = xenstore if xenstore is not None else xenstore_config(guest)
    initial_state = {"entry": image.entry, "rsp": image.initial_rsp, "rsi": image.initial_rsi,
                     "digest": initial.to_bytes().hex()}
    start_state = b""
    if start_frames is not None:
        start_state = start_state_entry(domain, start_frames)
        initial_state[START_STATE_KEY] = {"icount": domain.vcpu.icount, "bytes": len(start_state)}
    return LogHeader(image_sha256=bytes.fromhex(image.image_sha256), config=config, initial_state=initial_state,
                     start_state=start_state)


@dataclass(frozen=True)
class RecordResult:
    outcome: Outcome
    records: int
    path: Path
    snapshots: int = 0
    snapshot_bytes: int = 0
    snapshot_problem: str | None = None      # why snapshots stopped being written (the log is whole)
    snapshot_capture_seconds: float = 0.0    # what the guest waited for snapshots (their capture)
    snapshot_write_cpu_seconds: float = 0.0  # CPU time of the snapshot thread (compressing, writing)


class Recording:
    """A recording in progress: the log daemon, its ring, and the sink on the domain's funnel. Whoever
    runs the domain (`record` below, or a host's pCPU running it in quanta) calls `finish` with how
    the run ended, also when it ended with an error."""

    def __init__(self, domain: Domain, guest: Path, path: Path, *, clock: str, ring_bytes: int = RING_BYTES,
                 overwrite: bool = False, xenstore: dict | None = None, early: EarlyDaemon | None = None,
                 snapshot_every: Interval = Interval(), start_frames: set[int] | None = None):
        """`early`: the daemon `xenrr record` forked before building the domain (else one is forked now);
        `snapshot_every`: how often to store a full-state snapshot beside the log (dom0/snapshots.py);
        `start_frames`: the domain is already running (between two quanta) and these frames may differ
        from its freshly built memory: the log begins with its state now (`make_header`)."""
        if path.exists() and path.samefile(guest):
            raise RecordingRefused(f"the log {path} would overwrite the guest image")
        if path.exists() and not overwrite:
            raise RecordingRefused(f"{path} already exists (a recording is never replaced: give another -o "
                                   f"or add --force)")
        started = early if early is not None else EarlyDaemon(ring_bytes)
        try:
            started.begin(path, make_header(domain, guest, clock, xenstore, start_frames))
        finally:
            started.abandon()          # only if begin was never reached (make_header failed)
        self._attach(started, domain, path, RingSink(started.ring))
        if not snapshot_every.enabled and overwrite:
            snapshot_path(path).unlink(missing_ok=True)      # a replaced recording's snapshots are not this one's
        elif snapshot_every.enabled:
            try:
                self.snapshots = SnapshotWriter(snapshot_path(path), domain, self.sink, snapshot_every)
            except OSError as error:          # the log does not need them: it is recorded without
                self.snapshot_problem = f"cannot create {snapshot_path(path)}: {error.strerror} (recorded without snapshots)"

    def _attach(self, started: EarlyDaemon, domain: Domain, path: Path, sink: RingSink) -> None:
        self._ring, self._daemon = started.ring, started.daemon
        self.domain = domain
        self.path = path
        self.sink = sink
        domain.funnel.sink = sink
        self.snapshots: SnapshotWriter | None = None
        self.snapshot_problem: str | None = None

    def hand_off(self) -> dict:
        """End this process's part of the recording without ending the log - the domain moves to another
        process (a host's pCPU worker), which goes on with it (`resume`): snapshots written, the ring
        closed, and the daemon, having written every record and the index footer, gone. Returns what the
        other process needs. RecordingFailed when the daemon did not write everything: the log is then
        completed as far as it goes, as `finish` does, and the recording ends."""
        snapshots = self.snapshots.hand_off() if self.snapshots is not None else None
        every = self.snapshots.every if self.snapshots is not None else None
        self.snapshots = None
        failure = self.finish(None)
        if failure is not None:
            raise RecordingFailed(failure)
        return {"path": str(self.path), "sink": self.sink.save(), "snapshots": snapshots, "every": every}

    @classmethod
    def resume(cls, domain: Domain, handed: dict, ring_bytes: int = RING_BYTES) -> "Recording":
        """Go on with a recording another process handed over (`hand_off`) for `domain`, restored here to
        the same instant: a new daemon continues the same log file, whose records must be exactly those
        handed over, and the next record continues their stream - nothing lost, nothing twice."""
        path = Path(handed["path"])
        expected = handed["sink"]["records"]
        try:
            with LogReader(path) as reader:
                held, ended = reader.record_count, reader.damage is None or reader.damage.has_end_record
        except (OSError, LogFormatError) as error:
            raise RecordingFailed(f"cannot continue the log {path}: {error}") from None
        if ended or held != expected:
            raise RecordingFailed(f"cannot continue the log {path}: it holds {held} records"
                                  f"{' and its END' if ended else ''}, the recording handed over {expected}")
        recording = cls.__new__(cls)
        started = EarlyDaemon(ring_bytes)
        try:
            started.begin(path, None)
        finally:
            started.abandon()
        recording._attach(started, domain, path, RingSink(started.ring, handed["sink"]))
        if handed["snapshots"] is not None:
            try:
                recording.snapshots = SnapshotWriter(snapshot_path(path), domain, recording.sink, handed["every"],
                                                     handed=handed["snapshots"])
            except OSError as error:
                recording.snapshot_problem = f"cannot reopen {snapshot_path(path)}: {error.strerror} (no more snapshots)"
        return recording

    def finish(self, outcome: Outcome | None, failure: str | None = None) -> str | None:
        """End the log: the END record (`outcome`; None when the run was interrupted), the ring closed,
        the daemon waited for. Returns why the log is incomplete (None: it is whole)."""
        domain, sink = self.domain, self.sink
        try:
            if failure is None and outcome is not None:
                domain.funnel.log_end(f"{outcome.reason}:{outcome.detail}")
            elif failure is not None and sink.daemon_died:
                domain.funnel.log_end(f"stopped:{failure}")    # the END goes to the sink's backlog
        except RecordingFailed as error:
            failure = str(error)
            if sink.daemon_died:
                domain.funnel.log_end(f"stopped:{failure}")
        finally:
            domain.funnel.sink = None
            if self.snapshots is not None:
                self.snapshot_problem = self.snapshots.close()
            self._ring.close()
            try:
                self._daemon.wait()
            except LogDaemonError as error:
                failure = str(error)           # the daemon's own account (how it died, what it could not write)
                sink.daemon_died |= self._ring.consumer_state() != CONSUMER_FAILED
            self._ring.detach()
        if failure is None:
            return None
        salvaged = ""
        if sink.daemon_died:
            try:
                salvaged = f"; the recorder wrote the {sink.salvage(self.path)} records the daemon had not"
            except (OSError, LogFormatError, RecordingFailed) as error:
                salvaged = f"; the recorder could not write the rest itself ({error})"
        return f"{failure}{salvaged}; {sink.records} records were logged, {_records_in_file(self.path)}"


def record(domain: Domain, guest: Path, console_input: ConsoleInput, path: Path, *, clock: str,
           max_instructions: int | None, linger_ns: int, ring_bytes: int = RING_BYTES,
           slice_instructions: int = SLICE_INSTRUCTIONS, overwrite: bool = False,
           xenstore_writes: Sequence[tuple[str, bytes]] = (), xenstore: dict | None = None,
           keyboard: bool = False, early: EarlyDaemon | None = None,
           snapshot_every: Interval = Interval()) -> RecordResult:
    """Run `domain` live under the scheduler, logging every input into `path` (and, `snapshot_every`
    so often, full-state snapshots into its companion file). An existing `path` is replaced only with
    `overwrite` (as rr, a recording is never lost by accident), never the guest.
    `xenstore`: the domain's xenstore config for the header (default: xenstore_config(guest));
    `keyboard`: the input goes to the domain's PV keyboard; `early`: a daemon forked before the domain
    was built (`xenrr record`), else one is forked now."""
    recording = Recording(domain, guest, path, clock=clock, ring_bytes=ring_bytes, overwrite=overwrite,
                          xenstore=xenstore, early=early, snapshot_every=snapshot_every)
    outcome: Outcome | None = None
    failure: str | None = None
    try:
        outcome = Scheduler(domain, console_input, clock=clock, max_instructions=max_instructions,
                            linger_ns=linger_ns, slice_instructions=slice_instructions,
                            xenstore_writes=xenstore_writes, keyboard=keyboard, snapshots=recording.snapshots).run()
    except RecordingFailed as error:
        failure = str(error)
    finally:
        failure = recording.finish(outcome, failure)
    if failure is not None:
        raise RecordingFailed(failure)
    snapshots = recording.snapshots
    return RecordResult(outcome, recording.sink.records, path, 0 if snapshots is None else snapshots.taken,
                        0 if snapshots is None else snapshots.bytes_written, recording.snapshot_problem,
                        0.0 if snapshots is None else snapshots.capture_seconds,
                        0.0 if snapshots is None else snapshots.write_cpu_seconds)


def _records_in_file(path: Path) -> str:
    """What a failed recording left: the valid prefix of the log, in words."""
    try:
        with LogReader(path) as reader:
            if reader.damage is None:
                return f"{reader.record_count} reached the log file (complete, with its END record)"
            return f"{reader.record_count} reached the log file (valid up to its last complete block)"
    except (OSError, LogFormatError) as error:
        return f"the log is unreadable ({error})"
