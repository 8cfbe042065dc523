"""A replay session: a domain rebuilt from a log's header and fed from the log's records.

Owns opening a recording for replay: checking the guest image against the recorded SHA-256,
rebuilding the domain with the recorded configuration, checking the initial state, numbering the
input events, and reporting damage. The log is parsed in place (mmap); the hypervisor's replayer
only sees records. Invariant: a session never replays a record from beyond the first damaged byte,
and never replays a different guest image than the one recorded.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dom0.logfile import LogFormatError, LogReader
from dom0.logschema import check_header
from dom0.toolstack import connect_xenstore
from xen.builder import build_domain
from xen.digest import Digest
from xen.domain import Domain
from xen.inject import describe_payload
from xen.logrecord import FIRST_INPUT_KIND, kind_name
from xen.replay import Replayer
from xen.smp import DEFAULT_QUANTUM


class ReplaySetupError(Exception):
    """The recording cannot be replayed at all (wrong image, unreadable log): one line."""


@dataclass(frozen=True)
class Event:
    """An input event of the recording, numbered from 1 in log order."""
    number: int
    seq: int
    icount: int
    rip: int
    kind: int
    payload: bytes

    @property
    def kind_name(self) -> str:
        return kind_name(self.kind)

    def describe(self) -> str:
        """The payload in words: the key typed, the time published, ..."""
        return describe_payload(self.kind, self.payload)


class ReplaySession:
    """One replay of one log file."""

    def __init__(self, log_path: Path, image: Path | None = None,
                 console_output: Callable[[bytes], None] = lambda data: None, jit: bool = True):
        self.log_path = log_path
        self.log = LogReader(log_path)          # LogFormatError / OSError propagate: the CLI reports them
        try:
            check_header(self.log.header)
        except LogFormatError:
            self.log.close()
            raise
        header = self.log.header
        config = header.config
        self.image_path = Path(image) if image is not None else Path(config["guest"])
        try:
            image_bytes = self.image_path.read_bytes()
        except OSError as error:
            if image is not None:
                raise ReplaySetupError(f"cannot read the guest image {self.image_path} given with --image: "
                                       f"{error.strerror}") from None
            raise ReplaySetupError(f"cannot read the recorded guest image {self.image_path}: {error.strerror} "
                                   "(give it with --image)") from None
        if hashlib.sha256(image_bytes).digest() != header.image_sha256:
            raise ReplaySetupError(
                f"guest image {self.image_path} is not the one recorded (sha256 "
                f"{hashlib.sha256(image_bytes).hexdigest()[:16]}..., recorded {header.image_sha256.hex()[:16]}...)")
        self.domain = Domain(build_domain(image_bytes, config["memory_bytes"], config.get("cmdline", "")),
                             jit=jit, vcpus=config.get("vcpus", 1), quantum=config.get("quantum", DEFAULT_QUANTUM),
                             console_output=console_output)
        if "xenstore" in config:
            connect_xenstore(self.domain, config["xenstore"])
        if header.start_state:
            self._load_start_state(header.start_state, header.start_icount)
        try:
            recorded = Digest.from_bytes(bytes.fromhex(header.initial_state["digest"]))
        except ValueError as error:
            raise ReplaySetupError(f"log header is malformed: initial_state/digest: {error}") from None
        differences = recorded.differences(self.domain.digest(with_memory=True, in_clear=recorded.in_clear))
        if differences:
            raise ReplaySetupError("the rebuilt domain does not start in the recorded state: " + "; ".join(differences))
        self.replayer = Replayer(self.domain, self.log.records())
        self._events: list[Event] | None = None

    def _load_start_state(self, data: bytes, icount: int) -> None:
        """A recording of a running domain: the freshly built domain becomes the domain at its start
        (the frames it lists written, then registers and hypervisor state, as a timeline restore does).
        The header's digest then checks the result like any start."""
        from dom0.snapshots import SnapshotDamaged, load_start_state    # only such recordings pay for it

        try:
            state = load_start_state(data, f"the start state of {self.log_path}")
        except SnapshotDamaged as error:
            self.log.close()
            raise ReplaySetupError(str(error)) from None
        if state.mark.icount != icount:
            self.log.close()
            raise ReplaySetupError(f"the start state of {self.log_path} is at instruction {state.mark.icount}, "
                                   f"its header says {icount}")
        vcpu = self.domain.vcpu
        try:
            for frame, page in state.pages.items():
                vcpu.write_frame(frame, page)
            vcpu.load_cpu(state.cpu)
            self.domain.load_state(state.domain)
        except Exception as error:      # state that passed its checksum but does not restore: never trusted
            self.log.close()
            raise ReplaySetupError(f"the start state of {self.log_path} does not restore: {error}") from None

    @property
    def start_icount(self) -> int:
        """Where the recording starts: 0, or the instruction count of a running domain it began with."""
        return self.log.header.start_icount

    @property
    def damage(self):
        return self.log.damage

    def loss(self) -> str | None:
        """For a damaged log, one line saying what was lost and where the replay ends; None if whole."""
        if self.damage is None:
            return None
        events = self.events()
        kept = f"after event {len(events)} (instruction {events[-1].icount})" if events else "from the start"
        return f"the log is damaged: what was recorded {kept} is lost ({self.damage})"

    def events(self) -> list[Event]:
        """Every input event in the log, numbered from 1 (built on first use, then kept)."""
        if self._events is None:
            events = []
            for record in self.log.records():
                if record.kind >= FIRST_INPUT_KIND:
                    events.append(Event(len(events) + 1, record.seq, record.icount, record.rip, record.kind,
                                        bytes(record.payload)))
            self._events = events
        return self._events

    def event(self, number: int) -> Event:
        events = self.events()
        if not 1 <= number <= len(events):
            raise ValueError(f"event {number} does not exist: the recording has events 1 to {len(events)}")
        return events[number - 1]

    @property
    def last_icount(self) -> int:
        """The instruction count of the last usable record: where the replay ends."""
        last = self.log.record_count - 1
        return next(self.log.records_from(last)).icount if last >= 0 else 0

    def close(self) -> None:
        self.log.close()
