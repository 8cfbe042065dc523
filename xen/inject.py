"""The input funnel: the one path by which anything from outside the vCPU enters a domain.

Every nondeterministic input - console bytes written into the ring, PV keyboard events put on its
ring, timer interrupts, the time values in vcpu_time_info, rdrand values, what other domains do to
event channels with this one - is an `Injection` (kind, vcpu, icount, rip, payload: `vcpu` is the vCPU
on the engine when it arrived, whose rip it names) applied by
`Funnel.inject` (live and record) or `Funnel.replay` (from a log). A new device or event
type adds a `Kind` and one handler in `Funnel._handlers`, never a second path.

Invariant: an injection changes guest-visible state only here, at the instruction count stamped
on it, and is handed to the sink (the recorder) before it is applied; replay applies the same
injection at the same count and first checks that the vCPU is where the record says it was.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Protocol

from xen import abi
from xen.digest import Digest, end_payload, parse_end_payload
from xen.kbdif import EVENT_PAYLOAD_BYTES, decode_key_event
from xen.keycodes import KEY_MAX, keycode_name
from xen.logrecord import FIRST_INPUT_KIND, KIND_DIGEST, KIND_END, kind_name, kind_names, register_kind
from xen.timekeeping import TimeBase
from xen.xenstore import XenstoreChange

if TYPE_CHECKING:
    from xen.domain import Domain


class Kind(enum.IntEnum):
    """Record kinds of the inputs. Numbers are part of the log format: never reuse one."""
    CONSOLE_INPUT = 16   # payload: the bytes written into the console ring's in[]
    TIMER = 17           # payload: a TimeBase; publishes time, expires due timers, raises VIRQ_TIMER
    TIME = 18            # payload: a TimeBase; publishes time only (e.g. on waking from idle)
    RANDOM = 19          # payload: 8 bytes little-endian, the rdrand/rdseed value
    XENSTORE_WRITE = 20  # payload: path, a nul, the value; a dom0 write into the domain's xenstore
    KEYBOARD = 21        # payload: one PV keyboard event, 2 bytes (xen/kbdif.py: type, pressed, keycode)
    INTERDOMAIN = 24     # payload: an InterdomainChange; another domain acted on an event channel with this one
    XENSTORE_CHANGE = 25  # payload: a xen.xenstore.XenstoreChange; another domain changed the host's xenstore


for _kind in Kind:
    register_kind(_kind, _kind.name.lower().replace("_", "-"))     # console-input, timer, time, random, ...


def input_kinds_text() -> str:
    """The input kinds' names for a help text, in number order: 'console-input, timer, ..., xenstore-write'."""
    return ", ".join(kind_names(FIRST_INPUT_KIND))


def describe_payload(kind: int, payload: bytes) -> str:
    """A record's payload in words (the key typed, the time published, ...): how `xenrr dump`, the
    stub's `monitor events` and the debuggers show every record. Hex for a kind or payload it cannot read."""
    try:
        if kind == Kind.CONSOLE_INPUT:
            return "keys " + repr(payload.decode("latin-1"))
        if kind in (Kind.TIMER, Kind.TIME):
            return f"guest time {TimeBase.from_bytes(payload).system_time / 1e9:.9f} s"
        if kind == Kind.RANDOM and len(payload) == 8:
            return f"value {int.from_bytes(payload, 'little'):#018x}"
        if kind == Kind.XENSTORE_WRITE:
            path, _, value = payload.partition(b"\0")
            return f"xenstore write {path.decode('latin-1')} = {value.decode('latin-1')!r}"
        if kind == Kind.INTERDOMAIN:
            return f"inter-domain event channel: {InterdomainChange.from_bytes(payload)}"
        if kind == Kind.XENSTORE_CHANGE:
            return f"xenstore change by {XenstoreChange.from_bytes(payload)}"
        if kind == Kind.KEYBOARD:
            event = decode_key_event(payload)
            if event.type == abi.XENKBD_TYPE_KEY:
                return f"key-{'press' if event.pressed else 'release'} {keycode_name(event.keycode)}"
        if kind == KIND_DIGEST:
            return _describe_digest(Digest.from_bytes(payload))
        if kind == KIND_END:
            digest, outcome = parse_end_payload(payload)
            return f"recording ended: {outcome}; final {_describe_digest(digest)}"
    except (ValueError, struct.error):
        pass
    return payload.hex()


def _describe_digest(digest: Digest) -> str:
    return f"state digest {digest.state_hash.hex()}" + (" with memory" if digest.memory_hash is not None else "")


INTERDOMAIN_CHANGES = ("offer", "withdraw", "bound", "closed", "notify")


@dataclass(frozen=True)
class InterdomainChange:
    """What another domain did to an event channel with this domain, as the host delivers it: offered
    us its unbound port (`remote_port`) or withdrew the offer, bound our unbound `port` to its
    `remote_port`, closed its end of our connected `port`, or notified us on it (EVTCHNOP_send)."""
    change: str
    port: int
    remote_dom: int
    remote_port: int
    FORMAT: ClassVar[struct.Struct] = struct.Struct("<BHII")

    def to_bytes(self) -> bytes:
        return self.FORMAT.pack(INTERDOMAIN_CHANGES.index(self.change), self.remote_dom, self.remote_port, self.port)

    @classmethod
    def from_bytes(cls, payload: bytes) -> "InterdomainChange":
        code, remote_dom, remote_port, port = cls.FORMAT.unpack(payload)
        if code >= len(INTERDOMAIN_CHANGES):
            raise ValueError(f"unknown inter-domain change {code}")
        return cls(INTERDOMAIN_CHANGES[code], port, remote_dom, remote_port)

    def __str__(self) -> str:
        return f"d{self.remote_dom} port {self.remote_port}: {self.change} " + \
            ("(an offer to us)" if self.change in ("offer", "withdraw") else f"our port {self.port}")


@dataclass(frozen=True)
class Injection:
    kind: int
    vcpu: int
    icount: int
    rip: int
    payload: bytes


class InjectionSink(Protocol):
    """Where record mode sends each injection before it is applied (the log)."""

    def append(self, injection: Injection) -> None: ...


class ReplayDivergence(Exception):
    """The replayed vCPU is not where the log says an input arrived."""


class UnusableRecord(Exception):
    """A logged record that cannot be applied at all: the log is unusable from there (not a divergence)."""


class UnknownInputKind(UnusableRecord):
    """A logged input of a kind this hypervisor has no handler for (a log from a newer xenrr)."""


# The payload size of each fixed-size input kind (CONSOLE_INPUT: one byte or more).
PAYLOAD_BYTES = {Kind.TIMER: TimeBase.SIZE, Kind.TIME: TimeBase.SIZE, Kind.RANDOM: 8,
                 Kind.INTERDOMAIN: InterdomainChange.FORMAT.size, Kind.KEYBOARD: EVENT_PAYLOAD_BYTES}


class Funnel:
    """Stamps, hands to the sink, and applies every input of one domain."""

    def __init__(self, domain: "Domain", sink: InjectionSink | None = None):
        self._domain = domain
        self.sink = sink
        self._handlers: dict[int, Callable[[bytes], None]] = {
            Kind.CONSOLE_INPUT: self._console_input,
            Kind.TIMER: self._timer,
            Kind.TIME: self._time,
            Kind.RANDOM: self._random,
            Kind.XENSTORE_WRITE: self._xenstore_write,
            Kind.INTERDOMAIN: self._interdomain,
            Kind.XENSTORE_CHANGE: self._xenstore_change,
            Kind.KEYBOARD: self._keyboard,
        }

    def inject(self, kind: Kind, payload: bytes) -> Injection:
        """Live/record: apply an input now, at the domain's current instruction count, stamped with the
        vCPU on the engine (whose rip it names: replay checks both)."""
        vcpu = self._domain.vcpu
        injection = Injection(int(kind), self._domain.current, vcpu.icount, vcpu.pc, bytes(payload))
        if self.sink is not None:
            self.sink.append(injection)
        self._apply(injection)
        return injection

    def log_digest(self, with_memory: bool) -> None:
        """Record mode: log a state digest at the current point (never applied; replay compares it)."""
        if self.sink is not None:
            vcpu = self._domain.vcpu
            digest = self._domain.digest(with_memory)
            self.sink.append(Injection(KIND_DIGEST, self._domain.current, vcpu.icount, vcpu.pc, digest.to_bytes()))

    def log_end(self, outcome: str) -> None:
        """Record mode: the last record - the final full digest and how the run ended."""
        if self.sink is not None:
            vcpu = self._domain.vcpu
            payload = end_payload(self._domain.digest(with_memory=True, in_clear=True), outcome)
            self.sink.append(Injection(KIND_END, self._domain.current, vcpu.icount, vcpu.pc, payload))

    def replay(self, injection: Injection) -> None:
        """Replay: apply a logged input; the vCPU must have been run to exactly its icount."""
        vcpu, current = self._domain.vcpu, self._domain.current
        if vcpu.icount != injection.icount or vcpu.pc != injection.rip or current != injection.vcpu:
            on = f" on vCPU {injection.vcpu}" if len(self._domain.vcpus) > 1 else ""
            now_on = f" on vCPU {current}" if len(self._domain.vcpus) > 1 else ""
            raise ReplayDivergence(
                f"input {kind_name(injection.kind)}"
                f" logged at icount {injection.icount} rip {injection.rip:#x}{on}, "
                f"but replay is at icount {vcpu.icount} rip {vcpu.pc:#x}{now_on}")
        self._apply(injection)

    def _apply(self, injection: Injection) -> None:
        handler = self._handlers.get(injection.kind)
        if handler is None:
            raise UnknownInputKind(f"the log has an input of kind {injection.kind} (at icount {injection.icount}) "
                                   "that this xenrr does not know: it was written by a newer version")
        size = PAYLOAD_BYTES.get(injection.kind)
        if (len(injection.payload) != size) if size is not None else not injection.payload:
            raise UnusableRecord(f"the log's {kind_name(injection.kind)} input at icount {injection.icount} has a "
                                 f"{len(injection.payload)}-byte payload"
                                 + (f" (it is {size} bytes)" if size is not None else " (it is never empty)"))
        handler(injection.payload)
        self._domain.return_to_guest()

    # ---------------------------------------------------------------- handlers
    def _console_input(self, payload: bytes) -> None:
        domain = self._domain
        domain.console.push_input(payload)
        domain.notify_guest(domain.console_port)

    @staticmethod
    def _time_base(payload: bytes) -> TimeBase:
        try:
            return TimeBase.from_bytes(payload)
        except ValueError as error:
            raise UnusableRecord(f"the log holds a malformed time input: {error}") from None

    def _time(self, payload: bytes) -> None:
        self._domain.time.publish(self._time_base(payload))

    def _timer(self, payload: bytes) -> None:
        base = self._time_base(payload)
        domain = self._domain
        domain.time.publish(base)
        domain.expire_timers()

    def _random(self, payload: bytes) -> None:
        self._domain.vcpu.finish_random(int.from_bytes(payload, "little"))

    def _xenstore_write(self, payload: bytes) -> None:
        domain = self._domain
        if domain.xenstore is None:
            raise UnknownInputKind("the log has a xenstore write but the domain has no xenstore")
        path, _, value = payload.partition(b"\0")
        domain.xenstore.write(path.decode("latin-1"), value)
        domain.xenstore_changed()

    def _xenstore_change(self, payload: bytes) -> None:
        domain = self._domain
        if domain.xenstore is None:
            raise UnknownInputKind("the log has a xenstore change but the domain has no xenstore")
        try:
            change = XenstoreChange.from_bytes(payload)
        except ValueError as error:
            raise UnusableRecord(f"the log holds a malformed xenstore change: {error}") from None
        domain.xenstore.apply_change(change)
        domain.xenstore_changed()

    def _interdomain(self, payload: bytes) -> None:
        try:
            change = InterdomainChange.from_bytes(payload)
        except ValueError as error:
            raise UnusableRecord(f"the log holds a malformed inter-domain input: {error}") from None
        if not self._domain.events.remote_change_applies(change.change, change.port, change.remote_dom,
                                                         change.remote_port):
            raise UnusableRecord(f"the log's inter-domain input ({change}) does not fit the domain's event channels")
        self._domain.remote_event(change)

    def _keyboard(self, payload: bytes) -> None:
        keyboard = self._domain.keyboard
        if keyboard is None:
            raise UnknownInputKind("the log has a keyboard event but the domain has no PV keyboard")
        event = decode_key_event(payload)
        if event.type != abi.XENKBD_TYPE_KEY:
            raise UnusableRecord(f"the log has a keyboard event of type {event.type}: only key events "
                                 f"(XENKBD_TYPE_KEY) are recorded")
        if event.keycode > KEY_MAX:
            raise UnusableRecord(f"the log has a keyboard event with keycode {event.keycode:#x}: Linux keycodes end "
                                 f"at KEY_MAX {KEY_MAX:#x}")
        keyboard.push(event)
