"""GDB remote serial protocol framing: the bytes on the wire, nothing about what packets mean.

Owns: packet framing `$data#cs` (checksum, `}` binary escapes, `*` run-length expansion on
input), `+`/`-` acknowledgments with bounded retransmission, the switch to no-ack mode, the
0x03 interrupt byte, a cap on incoming packet size, and the hex helpers the server uses to
encode and parse packet arguments. `stub/server.py` interprets the payloads.

Invariant: every byte received from the peer is exactly one of
  - part of a well-formed packet, whose payload is handed up exactly once, in order;
  - an interrupt (0x03 between packets), handed up as an `Interrupt`;
  - an acknowledgment (`+` or `-`), consumed by the send that waits for it, or stray;
  - discarded, with a reason passed to `on_discard` (garbage between packets, a packet
    cut short by a new `$` or by the peer closing, a bad checksum, an oversized or
    malformed packet).
The connection never raises on malformed input from the peer; the only exceptions it raises
are `ConnectionClosed` (the peer is gone and everything it sent has been handed up) and
`ReceiveTimeout` (the peer was silent for `timeout` seconds).

Decisions (the spec leaves them to the stub):
  - A packet with a bad checksum is answered `-` so the peer retransmits it; in no-ack mode
    it is discarded silently (it may be line noise, and an unsolicited reply would desync).
  - A packet with a good checksum that cannot be used - more than `max_packet_size` bytes
    between `$` and `#`, or a malformed `}`/`*` encoding - is acknowledged with `+`
    (retransmitting it would not fix it), discarded, and answered with `ERROR_REPLY` when
    `receive()` reaches it, so the peer's request gets a reply and the connection stays
    usable. Its bytes are never buffered past the cap.
  - A `$` inside a packet restarts framing: the cut-short packet is discarded unanswered.
  - After `#`, a byte that is not a hex digit marks the packet corrupt (`-`) and is then
    read again as if between packets.
  - Sent payloads always escape `$`, `#`, `}` and `*` (text replies contain none of them).
  - On `-` or silence the last packet is sent again, at most `max_resends` times; then the
    send gives up (logged) and the connection carries on. A packet from the peer arriving
    before the acknowledgment ends the wait: the peer has evidently moved on. So does the
    peer closing: the close is reported by the next receive() or poll_interrupt().
  - On TCP sockets Nagle's algorithm is turned off (TCP_NODELAY): an ack and the reply after
    it are two small writes, which would otherwise wait for the peer's delayed ACK (~40 ms).
"""

from __future__ import annotations

import collections
import logging
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

PACKET_SIZE = 0x4000
"""Largest packet (bytes between `$` and `#`) accepted by default; advertise it as PacketSize."""

INTERRUPT_BYTE = 0x03
ERROR_REPLY = b"E01"
"""The reply to a packet that arrived intact but could not be used (oversized or malformed)."""

_ESCAPE = 0x7D  # '}'
_NEEDS_ESCAPE = re.compile(rb"[$#}*]")
_RUN_LENGTH = 0x2A  # '*'
_RUN_LENGTH_BIAS = 29
_SIGNIFICANT_BETWEEN_PACKETS = re.compile(rb"[$\x03+\-]")
_PACKET_END = re.compile(rb"[#$]")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_HEX_TEXT = re.compile(rb"(?:[0-9a-fA-F]{2})*")
_HEX_NUMBER = re.compile(rb"[0-9a-fA-F]{1,16}")
_RECV_SIZE = 65536

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- errors


class RspError(Exception):
    """Base of the errors this module raises."""


class ConnectionClosed(RspError):
    """The peer closed the connection (or it broke); everything it sent has been handed up."""


class ReceiveTimeout(RspError):
    """The peer sent nothing for `timeout` seconds while a packet was awaited."""


class BadArgument(RspError, ValueError):
    """A packet argument (hex data, number, `addr,length`) is malformed; the message says how."""


# ----------------------------------------------------------------------------- decoder items


@dataclass(frozen=True)
class Packet:
    """A well-formed packet from the peer: its payload, unescaped and run-length expanded."""

    payload: bytes


@dataclass(frozen=True)
class Interrupt:
    """The peer sent the interrupt byte 0x03 between packets (GDB's Ctrl-C)."""


@dataclass(frozen=True)
class Ack:
    """The peer sent `+`."""


@dataclass(frozen=True)
class Nack:
    """The peer sent `-`: it wants the last packet again."""


@dataclass(frozen=True)
class CorruptPacket:
    """A framed packet whose checksum is wrong or unreadable: to be answered with `-`."""

    reason: str
    data: bytes


@dataclass(frozen=True)
class RejectedPacket:
    """A packet that arrived intact but cannot be used: to be answered with ERROR_REPLY."""

    reason: str
    data: bytes


@dataclass(frozen=True)
class Noise:
    """Bytes that never became a packet (garbage, a packet cut short): discarded."""

    reason: str
    data: bytes


DecodedItem = Packet | Interrupt | Ack | Nack | CorruptPacket | RejectedPacket | Noise


class _MalformedPayload(ValueError):
    pass


# ----------------------------------------------------------------------------- encoding


def _escape(payload: bytes) -> bytes:
    return _NEEDS_ESCAPE.sub(lambda match: bytes((_ESCAPE, match[0][0] ^ 0x20)), payload)


def _checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) & 0xFF)


def encode_packet(payload: bytes) -> bytes:
    """The frame `$<escaped payload>#<checksum>` for `payload`."""
    escaped = _escape(payload)
    return b"$" + escaped + b"#" + _checksum(escaped)


def _expand_run_lengths(raw: bytes) -> bytes:
    """`X*c` stands for X repeated 1 + (c - 29) times; done on wire bytes, before unescaping."""
    if _RUN_LENGTH not in raw:
        return raw
    out = bytearray()
    position = 0
    while (star := raw.find(b"*", position)) != -1:
        out += raw[position:star]
        if not out:
            raise _MalformedPayload("run-length '*' with no character before it")
        if star + 1 == len(raw):
            raise _MalformedPayload("run-length '*' without a repeat count")
        count_byte = raw[star + 1]
        if not 0x20 <= count_byte <= 0x7E:
            raise _MalformedPayload(f"run-length count byte 0x{count_byte:02x} is not printable")
        out += bytes((out[-1],)) * (count_byte - _RUN_LENGTH_BIAS)
        position = star + 2
    out += raw[position:]
    return bytes(out)


def _unescape(data: bytes) -> bytes:
    if _ESCAPE not in data:
        return data
    out = bytearray()
    position = 0
    while (escape := data.find(b"}", position)) != -1:
        if escape + 1 == len(data):
            raise _MalformedPayload("escape '}' at the end of the packet")
        out += data[position:escape]
        out.append(data[escape + 1] ^ 0x20)
        position = escape + 2
    out += data[position:]
    return bytes(out)


# ----------------------------------------------------------------------------- decoder


class _State(Enum):
    BETWEEN_PACKETS = 1
    IN_PACKET = 2
    IN_CHECKSUM = 3


class PacketDecoder:
    """Incremental, I/O-free decoder of what a peer sends: feed bytes, get `DecodedItem`s.

    Chunk boundaries never matter: feeding a stream in any split yields the same items,
    except that a garbage run split across chunks is reported as several `Noise` items.
    """

    def __init__(self, max_packet_size: int = PACKET_SIZE) -> None:
        self._max_packet_size = max_packet_size
        self._state = _State.BETWEEN_PACKETS
        self._raw = bytearray()  # the packet's wire bytes, at most max_packet_size of them
        self._raw_size = 0  # all of its wire bytes, counted even past the cap
        self._sum = 0
        self._checksum_digits = bytearray()
        self._garbage = bytearray()

    def feed(self, data: bytes) -> list[DecodedItem]:
        """Decode `data`, the next bytes from the peer; return the items completed by them."""
        items: list[DecodedItem] = []
        position = 0
        while position < len(data):
            if self._state is _State.BETWEEN_PACKETS:
                position = self._between_packets(data, position, items)
            elif self._state is _State.IN_PACKET:
                position = self._in_packet(data, position, items)
            else:
                position = self._in_checksum(data, position, items)
        self._flush_garbage(items)
        return items

    def close(self) -> list[DecodedItem]:
        """End of stream: report a packet left unfinished, and reset."""
        items: list[DecodedItem] = []
        if self._state is not _State.BETWEEN_PACKETS:
            items.append(Noise("connection closed in the middle of a packet", self._received()))
            self._state = _State.BETWEEN_PACKETS
        self._flush_garbage(items)
        return items

    def _between_packets(self, data: bytes, position: int, items: list[DecodedItem]) -> int:
        special = _SIGNIFICANT_BETWEEN_PACKETS.search(data, position)
        end = special.start() if special else len(data)
        self._garbage += data[position:end]
        if special is None:
            return end
        self._flush_garbage(items)
        byte = data[end]
        if byte == ord("$"):
            self._start_packet()
        elif byte == INTERRUPT_BYTE:
            items.append(Interrupt())
        elif byte == ord("+"):
            items.append(Ack())
        else:
            items.append(Nack())
        return end + 1

    def _in_packet(self, data: bytes, position: int, items: list[DecodedItem]) -> int:
        terminator = _PACKET_END.search(data, position)
        end = terminator.start() if terminator else len(data)
        chunk = data[position:end]
        self._sum += sum(chunk)
        self._raw_size += len(chunk)
        room = self._max_packet_size - len(self._raw)
        self._raw += chunk[:room]
        if terminator is None:
            return end
        if data[end] == ord("#"):
            self._state = _State.IN_CHECKSUM
        else:
            items.append(Noise("packet cut short by a new '$' before its '#'", self._received()))
            self._start_packet()
        return end + 1

    def _in_checksum(self, data: bytes, position: int, items: list[DecodedItem]) -> int:
        byte = data[position]
        if byte not in _HEX_DIGITS:
            # Not consumed: it is read again as if between packets (it may be a '$' or 0x03).
            items.append(CorruptPacket("checksum is not two hex digits", self._received()))
            self._state = _State.BETWEEN_PACKETS
            return position
        self._checksum_digits.append(byte)
        if len(self._checksum_digits) == 2:
            items.append(self._finish_packet())
            self._state = _State.BETWEEN_PACKETS
        return position + 1

    def _finish_packet(self) -> DecodedItem:
        sent = int(self._checksum_digits, 16)
        computed = self._sum & 0xFF
        if sent != computed:
            reason = f"checksum mismatch: sent {sent:02x}, computed {computed:02x}"
            return CorruptPacket(reason, self._received())
        if self._raw_size > self._max_packet_size:
            reason = f"packet of {self._raw_size} bytes exceeds the {self._max_packet_size}-byte limit"
            return RejectedPacket(reason, self._received())
        try:
            return Packet(_unescape(_expand_run_lengths(bytes(self._raw))))
        except _MalformedPayload as error:
            return RejectedPacket(f"malformed packet: {error}", self._received())

    def _start_packet(self) -> None:
        self._state = _State.IN_PACKET
        self._raw = bytearray()
        self._raw_size = 0
        self._sum = 0
        self._checksum_digits = bytearray()

    def _received(self) -> bytes:
        """The current packet's wire bytes (those past the size cap are not kept)."""
        tail = b"#" + bytes(self._checksum_digits) if self._state is _State.IN_CHECKSUM else b""
        return b"$" + bytes(self._raw) + tail

    def _flush_garbage(self, items: list[DecodedItem]) -> None:
        if self._garbage:
            items.append(Noise("garbage between packets", bytes(self._garbage)))
            self._garbage = bytearray()


# ----------------------------------------------------------------------------- connection


class ByteStream(Protocol):
    """What the connection needs of its transport; a connected socket is one."""

    def recv(self, bufsize: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> None: ...

    def settimeout(self, value: float | None, /) -> None: ...


DiscardHandler = Callable[[str, bytes], None]


def _log_discard(reason: str, data: bytes) -> None:
    _log.debug("discarded %d bytes from the peer (%s): %r", len(data), reason, data[:64])


class RspConnection:
    """One GDB remote protocol connection over a stream (blocking, with an optional timeout).

    Typical server loop:
        while True:
            event = conn.receive()          # Packet or Interrupt; ConnectionClosed ends it
            ... conn.send_packet(reply) ...
    and while the target runs, `conn.poll_interrupt()` between slices of execution.
    One thread uses a connection at a time.
    """

    def __init__(
        self,
        stream: ByteStream,
        *,
        timeout: float | None = None,
        max_packet_size: int = PACKET_SIZE,
        max_resends: int = 3,
        on_discard: DiscardHandler = _log_discard,
    ) -> None:
        """`timeout`: seconds of silence from the peer after which a blocking wait gives up
        (None: wait for ever). `on_discard(reason, data)` hears about every discarded input."""
        self._stream = stream
        if isinstance(stream, socket.socket) and stream.type == socket.SOCK_STREAM and stream.family in (
            socket.AF_INET,
            socket.AF_INET6,
        ):
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._timeout = timeout
        self._max_resends = max_resends
        self._on_discard = on_discard
        self._decoder = PacketDecoder(max_packet_size)
        self._events: collections.deque[Packet | Interrupt | RejectedPacket] = collections.deque()
        self._no_ack = False
        self._entering_no_ack = False     # QStartNoAckMode's OK is out: no-ack mode starts at its `+`
        self._awaiting_ack = False
        # While a send waits: b"+" / b"-" as they arrive, b"$" when a packet came instead.
        self._ack_queue: collections.deque[bytes] = collections.deque()
        self._closed_reason: str | None = None

    @property
    def no_ack_mode(self) -> bool:
        """True once QStartNoAckMode took effect: no `+`/`-` are sent or expected."""
        return self._no_ack

    def receive(self) -> Packet | Interrupt:
        """Block until the peer's next packet or interrupt and return it.

        An Interrupt arriving while the target is stopped means nothing; the server ignores it.

        Raises ConnectionClosed once the peer is gone and everything it sent has been
        returned; ReceiveTimeout if the peer is silent for `timeout` seconds (whatever part of
        a packet arrived is kept for the next call)."""
        while True:
            while self._events:
                event = self._events.popleft()
                if isinstance(event, RejectedPacket):
                    self._refuse()
                    continue
                return event
            if self._closed_reason is not None:
                raise ConnectionClosed(self._closed_reason)
            if not self._read(blocking=True):
                raise ReceiveTimeout(f"the peer sent nothing for {self._timeout} s")

    def poll_interrupt(self) -> bool:
        """Without blocking, consume every pending interrupt byte; True if there was one.

        For use while the target runs. Packets that arrive meanwhile, complete or partial,
        are kept for `receive()`. Raises ConnectionClosed if the peer is gone and nothing it
        sent is left to hand up."""
        if self._closed_reason is None:
            self._read(blocking=False)
        interrupted = any(isinstance(event, Interrupt) for event in self._events)
        if interrupted:
            self._events = collections.deque(e for e in self._events if not isinstance(e, Interrupt))
        elif self._closed_reason is not None and not self._events:
            raise ConnectionClosed(self._closed_reason)
        return interrupted

    def send_packet(self, payload: bytes) -> None:
        """Send `payload` as one packet; in ack mode, wait for `+` and resend on `-` or silence.

        Raises ConnectionClosed if the packet cannot be sent because the peer is gone. If the
        peer leaves after the packet went out, the send is over and the next receive() or
        poll_interrupt() reports the close."""
        frame = encode_packet(payload)
        transmissions = 1 + self._max_resends
        self._awaiting_ack = not self._no_ack
        try:
            for _ in range(transmissions):
                self._write(frame)
                if self._no_ack or self._await_ack():
                    return
            _log.warning("no acknowledgment of %r after %d transmissions; giving up", frame[:64], transmissions)
        finally:
            self._awaiting_ack = False
            while self._ack_queue:
                self._discard_stray_ack(self._ack_queue.popleft())

    def start_no_ack_mode(self, reply: bytes = b"OK") -> None:
        """Answer the peer's QStartNoAckMode with `reply`; once the peer has acknowledged that
        reply, stop sending and expecting acknowledgments (GDB's final `+` is then ignored)."""
        self._entering_no_ack = True
        try:
            self.send_packet(reply)
        finally:
            self._entering_no_ack = False
        self._no_ack = True

    def _refuse(self) -> None:
        """Answer a packet that arrived intact but cannot be used."""
        if self._closed_reason is not None:
            return
        try:
            self.send_packet(ERROR_REPLY)
        except ConnectionClosed:
            pass  # raised by receive() once what was received has been handed up

    def _await_ack(self) -> bool:
        """True on `+` (or the peer moving on to a new packet, or leaving), False on `-` or silence."""
        while not self._ack_queue:
            if self._closed_reason is not None:
                return True  # nothing left to wait for; the next receive() reports the close
            if not self._read(blocking=True):
                return False
        response = self._ack_queue.popleft()
        if response == b"$":
            _log.debug("the peer sent a packet instead of acknowledging ours")
        return response != b"-"

    def _read(self, *, blocking: bool) -> bool:
        """Read what the peer sent and act on it; False if nothing came (timeout, would block)."""
        self._stream.settimeout(self._timeout if blocking else 0.0)
        try:
            data = self._stream.recv(_RECV_SIZE)
        except (BlockingIOError, TimeoutError):
            return False
        except OSError as error:
            self._peer_gone(f"connection broken: {error}")
            return True
        if not data:
            self._peer_gone("the peer closed the connection")
            return True
        self._dispatch(self._decoder.feed(data))
        return True

    def _dispatch(self, items: list[DecodedItem]) -> None:
        for item in items:
            if isinstance(item, Packet | RejectedPacket):
                self._send_ack(b"+")
                if isinstance(item, RejectedPacket):
                    self._on_discard(item.reason, item.data)
                self._events.append(item)
                if self._awaiting_ack:
                    self._ack_queue.append(b"$")
            elif isinstance(item, Interrupt):
                self._events.append(item)
            elif isinstance(item, Ack | Nack):
                ack = b"+" if isinstance(item, Ack) else b"-"
                if self._awaiting_ack:
                    self._ack_queue.append(ack)
                    if ack == b"+" and self._entering_no_ack:
                        self._no_ack = True      # packets later in this same read get no `+`
                else:
                    self._discard_stray_ack(ack)
            elif isinstance(item, CorruptPacket):
                self._send_ack(b"-")
                self._on_discard(item.reason, item.data)
            else:
                self._on_discard(item.reason, item.data)

    def _discard_stray_ack(self, response: bytes) -> None:
        if response != b"$":
            self._on_discard("acknowledgment nobody waits for", response)

    def _send_ack(self, ack: bytes) -> None:
        if self._no_ack:
            return
        try:
            self._write(ack)
        except ConnectionClosed:
            pass  # recorded by _write; raised once what was received has been handed up

    def _write(self, data: bytes) -> None:
        if self._closed_reason is not None:
            raise ConnectionClosed(self._closed_reason)
        self._stream.settimeout(self._timeout)
        try:
            self._stream.sendall(data)
        except OSError as error:  # includes a timeout: a partly sent frame cannot be taken back
            self._peer_gone(f"cannot send to the peer: {error}")
            raise ConnectionClosed(self._closed_reason) from None

    def _peer_gone(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
            self._dispatch(self._decoder.close())


# ----------------------------------------------------------------------------- hex helpers


def hex_encode(data: bytes) -> bytes:
    """Two lowercase hex digits per byte, as packets carry binary data in text form."""
    return data.hex().encode()


def hex_decode(text: bytes, what: str = "hex data") -> bytes:
    """The bytes that `text` (pairs of hex digits) encodes; BadArgument if it is not that."""
    if _HEX_TEXT.fullmatch(text) is None:
        raise BadArgument(f"{what} {text[:40]!r} is not an even number of hex digits")
    return bytes.fromhex(text.decode())


def encode_register(value: int, size: int) -> bytes:
    """A register value as GDB's `g`/`p` packets carry it: `size` bytes, little-endian, in hex."""
    return hex_encode(value.to_bytes(size, "little"))


def decode_register(text: bytes) -> int:
    """The value of a register sent as little-endian hex bytes (the `P`/`G` packet form)."""
    return int.from_bytes(hex_decode(text, "register value"), "little")


def parse_hex_number(text: bytes, what: str) -> int:
    """A hex number of at most 64 bits, e.g. an address; BadArgument names `what` was wrong."""
    if _HEX_NUMBER.fullmatch(text) is None:
        if not text:
            raise BadArgument(f"{what} is missing")
        raise BadArgument(f"{what} {text[:40]!r} is not a hex number of at most 64 bits")
    return int(text, 16)


def parse_addr_length(args: bytes) -> tuple[int, int]:
    """The `addr,length` argument of `m`, `M`, `X` and Z packets, as (address, length)."""
    parts = args.split(b",")
    if len(parts) != 2:
        raise BadArgument(f"expected 'addr,length', got {args[:40]!r}")
    return parse_hex_number(parts[0], "address"), parse_hex_number(parts[1], "length")
