"""The PV keyboard's shared ring (io/kbdif.h), hypervisor side, and its logged event form.

Owns three things the hypervisor needs of the virtual keyboard device:
- `KeyboardRing`: the backend's view of a frontend's `struct xenkbd_page` at a machine address: key
  events written into the in ring (XENKBD_IN_RING_LEN slots of XENKBD_IN_EVENT_SIZE bytes from
  XENKBD_IN_RING_OFFS, free-running 32-bit indices taken modulo the ring length as the header's
  XENKBD_IN_RING_REF does), the out ring consumed. The backend keeps its own copy of in_prod (the
  index only it moves): a page whose indices disagree with it, or lie further apart than the ring is
  long, is a misbehaving frontend (`RingIndexError`), never a hypervisor failure.
- the payload of a KEYBOARD log record: one event in two bytes (`encode_key_event`), little-endian
  u16 = type << 12 | pressed << 11 | keycode (keycodes fit in 11 bits: KEY_MAX is 0x2ff).
- `KeyboardDevice`: what the funnel, the scheduler and the domain need of the backend (which lives in
  dom0/vkbd.py, as the xenstore server does): free slots, pushing an event, the frontend's
  notifications, and its state for checkpoints and digests.
Invariant: events enter the ring only through the funnel (a recorded input); the ring is otherwise
read only at the guest's notification (a hypercall) or to answer how much room it has (no side effect).
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

from xen import abi
from xen.ringpage import INDEX_MASK, RingFields, ring_distance
from xen.vcpu import MachineMemory

_KEYCODE_BITS = 11
_PRESSED_BIT = 1 << _KEYCODE_BITS
_TYPE_SHIFT = 12
EVENT_PAYLOAD_BYTES = 2


class KeyEvent(NamedTuple):
    """One event the backend puts on the ring: a XENKBD_TYPE_* type, a Linux keycode, pressed or released."""
    type: int
    keycode: int
    pressed: bool


def encode_key_event(keycode: int, pressed: bool, event_type: int = abi.XENKBD_TYPE_KEY) -> bytes:
    """The 2-byte payload of a KEYBOARD record. ValueError for a keycode or type that does not fit."""
    if not 0 <= keycode < 1 << _KEYCODE_BITS or not 0 <= event_type < 16:
        raise ValueError(f"keyboard event type {event_type} keycode {keycode} does not fit a record")
    value = event_type << _TYPE_SHIFT | (_PRESSED_BIT if pressed else 0) | keycode
    return value.to_bytes(EVENT_PAYLOAD_BYTES, "little")


def decode_key_event(payload: bytes) -> KeyEvent:
    """A KEYBOARD record's payload as an event. ValueError unless it is 2 bytes."""
    if len(payload) != EVENT_PAYLOAD_BYTES:
        raise ValueError(f"a keyboard event is {EVENT_PAYLOAD_BYTES} bytes, not {len(payload)}")
    value = int.from_bytes(payload, "little")
    return KeyEvent(value >> _TYPE_SHIFT, value & (_PRESSED_BIT - 1), bool(value & _PRESSED_BIT))


class RingIndexError(Exception):
    """The frontend's ring indices are out of range or were moved where only the backend may move them."""


class KeyboardRing:
    """The backend's view of one xenkbd_page; `in_prod` is the backend's own copy of the index it moves."""

    def __init__(self, memory: MachineMemory, address: int, in_prod: int | None = None):
        """`in_prod`: the backend's copy of the index; None when connecting (taken from the page)."""
        self._memory = memory
        self.address = address
        self._fields = RingFields(memory, address, abi.XenkbdPage)
        self.in_prod = self._fields.read("in_prod") if in_prod is None else in_prod

    def check(self) -> None:
        """RingIndexError unless both rings' indices are in range and in_prod is where the backend left it."""
        in_cons, in_prod = self._fields.read("in_cons"), self._fields.read("in_prod")
        if in_prod != self.in_prod:
            raise RingIndexError(f"in_prod was moved to {in_prod} by the frontend (the backend left it at "
                                 f"{self.in_prod})")
        if ring_distance(in_cons, in_prod) > abi.XENKBD_IN_RING_LEN:
            raise RingIndexError(f"in_cons {in_cons} is out of range for in_prod {in_prod} "
                                 f"(ring of {abi.XENKBD_IN_RING_LEN} events)")
        out_cons, out_prod = self._fields.read("out_cons"), self._fields.read("out_prod")
        if ring_distance(out_cons, out_prod) > abi.XENKBD_OUT_RING_LEN:
            raise RingIndexError(f"out_prod {out_prod} is out of range for out_cons {out_cons} "
                                 f"(ring of {abi.XENKBD_OUT_RING_LEN} events)")

    def free_slots(self) -> int:
        """Events the in ring takes now; 0 when its indices are bad (no side effect: see `check`)."""
        try:
            self.check()
        except RingIndexError:
            return 0
        return abi.XENKBD_IN_RING_LEN - ring_distance(self._fields.read("in_cons"), self.in_prod)

    def push(self, event: KeyEvent) -> None:
        """Write one event at in_prod and publish it (the caller has checked there is a free slot)."""
        key = abi.XenkbdKey(type=event.type, pressed=int(event.pressed), keycode=event.keycode)
        slot = self.in_prod % abi.XENKBD_IN_RING_LEN
        data = bytes(key).ljust(abi.XENKBD_IN_EVENT_SIZE, b"\0")
        self._memory.write(self.address + abi.XENKBD_IN_RING_OFFS + slot * abi.XENKBD_IN_EVENT_SIZE, data)
        self.in_prod = (self.in_prod + 1) & INDEX_MASK
        self._fields.write("in_prod", self.in_prod)

    def consume_output(self) -> int:
        """Take the frontend's out events (kbdif.h defines none the backend acts on); returns how many."""
        out_cons, out_prod = self._fields.read("out_cons"), self._fields.read("out_prod")
        self._fields.write("out_cons", out_prod)
        return ring_distance(out_cons, out_prod)



class KeyboardDevice(Protocol):
    """The PV keyboard backend serving one domain (implemented in dom0/vkbd.py)."""

    def free_slots(self) -> int:
        """Events the device can take now (0 while no frontend is connected). Never changes any state."""

    def push(self, event: KeyEvent) -> None:
        """Deliver one logged event (a funnel input) and notify the frontend; a device that is not
        connected, or whose frontend broke the ring, drops it (the same in replay)."""

    def notified(self) -> None:
        """The frontend sent an event on the device's channel: look at the ring."""

    def owns_port(self, port: int) -> bool:
        """Whether `port` is the device's event channel."""

    def save_state(self) -> object: ...

    def load_state(self, state: object) -> None: ...

    def state_bytes(self) -> bytes:
        """A canonical encoding of the device's state (for digests)."""
