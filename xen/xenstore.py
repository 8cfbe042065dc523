"""The xenstore ring, hypervisor side: struct xenstore_domain_interface in the domain's store page.

Owns moving bytes between the domain's ring (io/xs_wire.h: req[] and rsp[], XENSTORE_RING_SIZE each,
free-running 32-bit indices masked with MASK_XENSTORE_IDX) and a `XenstoreServer` - the xenstored,
which lives in dom0/ and is connected here through this narrow protocol (xen/ never imports dom0/).
Invariant: the ring is serviced only when the guest notifies the store port (a hypercall, so
deterministic) or after a funnel injection changed the store (recorded); a guest that corrupts the
indices or breaks the protocol gets the interface's `error` field set, as xenstored does, never a
hypervisor failure.

Also owns the wire form of a `XenstoreChange`: what one domain (or dom0) committed to the host's one
xenstore, as another domain's replica of it receives it - a funnel input (record kind
`xenstore-change`, docs/log-format.md).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Protocol

from xen import abi
from xen.ringpage import RingFields, ring_distance
from xen.vcpu import MachineMemory

_RING_SIZE = abi.XENSTORE_RING_SIZE
# Requests stay in the guest's ring while more than this of its replies wait for room in rsp[]: a guest
# that never consumes its replies cannot grow them without bound. C xenstored does the same with its
# outstanding-request quota (quota_req_outstanding): it stops reading a domain's requests until the
# domain has taken its replies. An honest guest only waits: its next notification, once it has
# consumed replies, lets the rest in.
REQUESTS_WAIT_ABOVE = 64 * 1024


class XenstoreProtocolError(Exception):
    """The guest broke the xs_wire protocol (e.g. a payload over XENSTORE_PAYLOAD_MAX); one line."""


XENSTORE_OPS = ("write", "mkdir", "rm", "set-perms")


@dataclass(frozen=True)
class XenstoreOp:
    """One committed change: `op` one of XENSTORE_OPS on the absolute `path`; `data` is the value of a
    write, or a set-perms' permission strings each ending in a nul ("n1\\0r2\\0", as XS_SET_PERMS
    carries them)."""
    op: str
    path: str
    data: bytes = b""


@dataclass(frozen=True)
class XenstoreChange:
    """What domain `domid` (0: the toolstack) committed to the shared store at once - one request, or
    one transaction's changes in the order it made them.

    Wire form: u16 domid, then per op u8 op number (its index in XENSTORE_OPS), the path (relative to
    /local/domain/<domid>/ when it lies below it, as xenstore's relative paths are), a nul, u16 data
    length, the data. A change too long for one record is split into several (`to_payloads`), applied
    one after the other at the same instruction."""
    domid: int
    ops: tuple[XenstoreOp, ...]
    DOMID: ClassVar[struct.Struct] = struct.Struct("<H")
    LENGTH: ClassVar[struct.Struct] = struct.Struct("<H")

    def _home(self) -> str:
        return f"/local/domain/{self.domid}/"

    def _op_bytes(self, op: XenstoreOp) -> bytes:
        path = op.path[len(self._home()):] if op.path.startswith(self._home()) else op.path
        return bytes([XENSTORE_OPS.index(op.op)]) + path.encode("latin-1") + b"\0" + \
            self.LENGTH.pack(len(op.data)) + op.data

    def to_payloads(self, limit: int) -> list[bytes]:
        """The change as record payloads of at most `limit` bytes each (ops are never split)."""
        payloads: list[bytes] = []
        current = bytearray()
        for op in self.ops:
            if len(op.data) > 0xFFFF or self.DOMID.size + len(op.path) + len(op.data) + 4 > limit:
                raise ValueError(f"a xenstore {op.op} of {op.path} with {len(op.data)} bytes does not fit a record")
            encoded = self._op_bytes(op)
            if current and self.DOMID.size + len(current) + len(encoded) > limit:
                payloads.append(self.DOMID.pack(self.domid) + bytes(current))
                current.clear()
            current += encoded
        if current:
            payloads.append(self.DOMID.pack(self.domid) + bytes(current))
        return payloads

    @classmethod
    def from_bytes(cls, payload: bytes) -> "XenstoreChange":
        """ValueError naming what is wrong for a payload that is not a change."""
        if len(payload) < cls.DOMID.size + 1:
            raise ValueError(f"a xenstore change of {len(payload)} bytes")
        (domid,) = cls.DOMID.unpack_from(payload)
        home = f"/local/domain/{domid}/"
        ops: list[XenstoreOp] = []
        at = cls.DOMID.size
        while at < len(payload):
            number = payload[at]
            end = payload.find(b"\0", at + 1)
            if number >= len(XENSTORE_OPS) or end < 0 or end + 1 + cls.LENGTH.size > len(payload):
                raise ValueError(f"a malformed xenstore change operation at byte {at}")
            path = payload[at + 1:end].decode("latin-1")
            (length,) = cls.LENGTH.unpack_from(payload, end + 1)
            data_at = end + 1 + cls.LENGTH.size
            if not path or data_at + length > len(payload):
                raise ValueError(f"a malformed xenstore change operation at byte {at}")
            ops.append(XenstoreOp(XENSTORE_OPS[number], path if path.startswith("/") else home + path,
                                  bytes(payload[data_at:data_at + length])))
            at = data_at + length
        return cls(domid, tuple(ops))

    def __str__(self) -> str:
        def words(op: XenstoreOp) -> str:
            if op.op == "write":
                return f"write {op.path} = {op.data.decode('latin-1')!r}"
            if op.op == "set-perms":
                return f"set-perms {op.path} {op.data.decode('latin-1').rstrip(chr(0)).replace(chr(0), ',')}"
            return f"{op.op} {op.path}"
        return f"d{self.domid} " + "; ".join(words(op) for op in self.ops)


class XenstoreServer(Protocol):
    """A xenstored serving one domain's connection (implemented in dom0/xenstored.py)."""

    def receive(self, data: bytes) -> None:
        """Request bytes the guest put on the ring, in order; complete messages are answered at once.
        Raises XenstoreProtocolError on a protocol violation (the connection is then dead)."""

    def take_output(self, limit: int) -> bytes:
        """Up to `limit` bytes of replies and watch events, removed from the server's queue."""

    def backlog(self) -> int:
        """Bytes of replies and watch events queued that no `take_output` has taken yet."""

    def write(self, path: str, value: bytes) -> None:
        """A write by dom0 (the toolstack), e.g. while the guest runs: fires the guest's watches."""

    def apply_change(self, change: XenstoreChange) -> None:
        """Another domain's (or dom0's) committed change to the host's shared store: applied to this
        replica as that domain made it, firing the guest's watches on what it may read."""

    def save_state(self) -> object:
        """Everything the server holds (tree, watches, transactions, queued bytes), for checkpoints."""

    def load_state(self, state: object) -> None: ...

    def state_bytes(self) -> bytes:
        """A canonical encoding of the server's state (for digests): equal states, equal bytes."""


def _offset(name: str) -> int:
    return getattr(abi.XenstoreDomainInterface, name).offset


class XenstoreRing:
    """The hypervisor's view of one domain's xenstore page."""

    def __init__(self, memory: MachineMemory, address: int):
        self._memory = memory          # Xen reaches the ring by its machine address
        self.address = address
        self._fields = RingFields(memory, address, abi.XenstoreDomainInterface)

    def _used(self, consumer_name: str, producer_name: str) -> tuple[int, int | None]:
        """(consumer index, bytes between it and the producer); None bytes - and the interface's error
        set to XENSTORE_ERROR_RINGIDX - when the indices are further apart than the ring is long."""
        consumer, producer = self._fields.read(consumer_name), self._fields.read(producer_name)
        used = ring_distance(consumer, producer)
        if used > _RING_SIZE:
            self._fields.write("error", abi.XENSTORE_ERROR_RINGIDX)
            return consumer, None
        return consumer, used

    def connect(self) -> None:
        """Introduce the domain: advertise the server's features (xenstored does this on INTRODUCE)."""
        self._fields.write("server_features", abi.XENSTORE_SERVER_FEATURE_ERROR)
        self._fields.write("connection", 0)
        self._fields.write("error", abi.XENSTORE_ERROR_NONE)

    @property
    def error(self) -> int:
        return self._fields.read("error")

    def serve(self, server: XenstoreServer) -> bool:
        """Consume the guest's requests, answer them, write what fits of the replies. Returns whether
        anything moved (the guest is then notified on the store port)."""
        if self.error != abi.XENSTORE_ERROR_NONE:
            return False
        moved = self.flush(server)
        consumer, available = self._used("req_cons", "req_prod")
        if available is None:
            return True
        if server.backlog() >= REQUESTS_WAIT_ABOVE:
            return moved
        data = self._read_ring(_offset("req"), consumer, available)
        self._fields.write("req_cons", consumer + available)
        try:
            server.receive(data)
        except XenstoreProtocolError:
            self._fields.write("error", abi.XENSTORE_ERROR_PROTO)
            return True
        return self.flush(server) or moved or available > 0

    def flush(self, server: XenstoreServer) -> bool:
        """Write queued replies and events into rsp[] as far as the guest has consumed it."""
        if self.error != abi.XENSTORE_ERROR_NONE:
            return False
        consumer, used = self._used("rsp_cons", "rsp_prod")
        if used is None:
            return True
        producer = consumer + used
        data = server.take_output(_RING_SIZE - used)
        if not data:
            return False
        base = self.address + _offset("rsp")
        written = 0
        while written < len(data):
            offset = (producer + written) % _RING_SIZE
            chunk = data[written:written + _RING_SIZE - offset]
            self._memory.write(base + offset, chunk)
            written += len(chunk)
        self._fields.write("rsp_prod", producer + len(data))
        return True

    def _read_ring(self, array_offset: int, consumer: int, count: int) -> bytes:
        base = self.address + array_offset
        data = bytearray()
        while count:
            offset = consumer % _RING_SIZE
            chunk = min(count, _RING_SIZE - offset)
            data += self._memory.read(base + offset, chunk)
            consumer += chunk
            count -= chunk
        return bytes(data)
