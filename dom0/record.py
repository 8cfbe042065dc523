"""Recording: connect a live domain's input funnel to the log daemon through the shared-memory ring.

Owns the record session: the log header (image hash, domain config, initial state), the sink that
encodes each injection into the ring, and shutting the stream down so the log ends with an END
record and an index. Invariant: every injection is handed to the ring before it is applied to the
guest (the funnel's order), so a record that reached the guest is in the log or the recording
stops with an error; records already in the ring always reach the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from dom0.logd import start_log_daemon
from dom0.logfile import LogFormatError, LogHeader, LogReader
from dom0.logring import LogDaemonError, RingError, RingProducer
from dom0.toolstack import xenstore_config
from xen.domain import Domain
from xen.inject import Injection
from xen.logrecord import Encoder
from xen.sched import SLICE_INSTRUCTIONS, ConsoleInput, Outcome, Scheduler

RING_BYTES = 1 << 20
# The ring takes chunks of at most half its size; the largest record is a console input that fills the
# guest's 1 KiB input ring, plus its framing.
MIN_RING_BYTES = 4096


class RecordingFailed(Exception):
    """The log could not be written; the file is valid up to the last complete block."""


class RecordingRefused(Exception):
    """Recording cannot start with these arguments (nothing was written): one line."""


class RingSink:
    """Encodes injections straight into the log ring (the funnel's InjectionSink)."""

    def __init__(self, ring: RingProducer):
        self._ring = ring
        self._encoder = Encoder()
        self._buffer = bytearray()
        self.records = 0

    def append(self, injection: Injection) -> None:
        self._buffer.clear()
        self._encoder.encode(self._buffer, injection.kind, injection.vcpu, injection.icount, injection.rip,
                             injection.payload)
        try:
            self._ring.check_consumer()        # a dead daemon stops the recording now, not when the ring fills
            self._ring.put(self._buffer)
        except LogDaemonError as error:
            raise RecordingFailed(str(error)) from None
        self.records += 1


def make_header(domain: Domain, guest: Path, clock: str) -> LogHeader:
    image = domain.image
    initial = domain.digest(with_memory=True)
    config = {"guest": str(guest.resolve()), "memory_bytes": image.memory_bytes, "cmdline": image.cmdline,
              "clock": clock, "vcpus": 1}
    if domain.xenstore is not None:
        config["xenstore"] = xenstore_config(guest)
    return LogHeader(
        image_sha256=bytes.fromhex(image.image_sha256),
        config=config,
        initial_state={"entry": image.entry, "rsp": image.initial_rsp, "rsi": image.initial_rsi,
                       "digest": initial.to_bytes().hex()})


@dataclass(frozen=True)
class RecordResult:
    outcome: Outcome
    records: int
    path: Path


def record(domain: Domain, guest: Path, console_input: ConsoleInput, path: Path, *, clock: str,
           max_instructions: int | None, linger_ns: int, ring_bytes: int = RING_BYTES,
           slice_instructions: int = SLICE_INSTRUCTIONS, overwrite: bool = False,
           xenstore_writes: Sequence[tuple[str, bytes]] = ()) -> RecordResult:
    """Run `domain` live under the scheduler, logging every input into `path`. An existing `path` is
    replaced only with `overwrite` (as rr, a recording is never lost by accident), never the guest."""
    if ring_bytes < MIN_RING_BYTES or ring_bytes & (ring_bytes - 1):
        raise ValueError(f"the log ring must be a power of two of at least {MIN_RING_BYTES} bytes")
    if path.exists() and path.samefile(guest):
        raise RecordingRefused(f"the log {path} would overwrite the guest image")
    if path.exists() and not overwrite:
        raise RecordingRefused(f"{path} already exists (a recording is never replaced: give another -o "
                               f"or add --force)")
    try:
        ring = RingProducer(ring_bytes)
    except RingError as error:
        raise RecordingFailed(str(error)) from None
    try:
        daemon = start_log_daemon(ring, path, make_header(domain, guest, clock))
    except LogDaemonError as error:
        ring.detach()
        raise RecordingFailed(f"cannot start the log daemon: {error}") from None
    sink = RingSink(ring)
    domain.funnel.sink = sink
    failure: str | None = None
    try:
        outcome = Scheduler(domain, console_input, clock=clock, max_instructions=max_instructions,
                            linger_ns=linger_ns, slice_instructions=slice_instructions,
                            xenstore_writes=xenstore_writes).run()
        domain.funnel.log_end(f"{outcome.reason}:{outcome.detail}")
    except RecordingFailed as error:
        failure = str(error)
    finally:
        domain.funnel.sink = None
        ring.close()
        try:
            daemon.wait()
        except LogDaemonError as error:
            failure = str(error)           # the daemon's own account (how it died, what it could not write)
        ring.detach()
    if failure is not None:
        raise RecordingFailed(f"{failure}; {sink.records} records were logged, {_records_in_file(path)}")
    return RecordResult(outcome, sink.records, path)


def _records_in_file(path: Path) -> str:
    """What a failed recording left: the valid prefix of the log, in words."""
    try:
        with LogReader(path) as reader:
            return f"{reader.record_count} reached the log file (valid up to its last complete block)"
    except (OSError, LogFormatError) as error:
        return f"the log is unreadable ({error})"
