"""Property tests of the RSP packet layer: whatever a peer sends, the connection hands up every
well-formed packet intact, in order, exactly once, reports every interrupt, answers with the
right acknowledgments, and raises nothing but ConnectionClosed.

The peer's bytes are replayed by ScriptedStream in chunks hypothesis chooses: TCP decides chunk
boundaries itself, so a real socket cannot be made to split a stream at every point we need.
Expected results come from an oracle built here (its own escaping, run-length encoding and
checksums), not from stub.rsp.
"""

import collections
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stub.rsp import (
    ERROR_REPLY,
    ConnectionClosed,
    Interrupt,
    Packet,
    PacketDecoder,
    RspConnection,
    encode_packet,
)

MAX_PACKET_SIZE = 48  # small, so that oversized packets are common
SPECIAL = b"$#}*"
HEX_DIGITS = b"0123456789abcdefABCDEF"


class ScriptedStream:
    """A transport that replays the peer's bytes chunk by chunk; None is a moment with nothing
    to read. What the connection sends is kept in `sent`."""

    def __init__(self, chunks: list[bytes | None]) -> None:
        self.chunks = collections.deque(chunks)
        self.sent = bytearray()
        self.timeout: float | None = None

    def settimeout(self, value: float | None) -> None:
        self.timeout = value

    def recv(self, bufsize: int) -> bytes:
        while self.chunks:
            chunk = self.chunks.popleft()
            if chunk is None:
                if self.timeout == 0:
                    raise BlockingIOError
                continue  # a blocking read just waits for the next bytes
            if len(chunk) > bufsize:
                self.chunks.appendleft(chunk[bufsize:])
            return chunk[:bufsize]
        return b""

    def sendall(self, data: bytes) -> None:
        self.sent += data


# ----------------------------------------------------------------------------- the oracle


@dataclass
class Expected:
    events: list = field(default_factory=list)  # Packet / Interrupt, in order
    acks: int = 0  # '+' the connection must send
    nacks: int = 0  # '-' the connection must send
    refusals: int = 0  # packets answered with ERROR_REPLY


def escaped(data: bytes) -> bytes:
    return b"".join(b"}" + bytes([byte ^ 0x20]) if byte in SPECIAL else bytes([byte]) for byte in data)


def checksum(raw: bytes, uppercase: bool) -> bytes:
    digits = b"%02x" % (sum(raw) % 256)
    return digits.upper() if uppercase else digits


literal_pieces = st.binary(max_size=12).map(lambda data: (escaped(data), data))
run_pieces = st.builds(
    lambda byte, extra: (bytes([byte]) + b"*" + bytes([extra + 29]), bytes([byte]) * (extra + 1)),
    st.integers(0, 255).filter(lambda byte: byte not in SPECIAL),
    st.integers(3, 97).filter(lambda extra: extra + 29 not in b"#$"),
)
# (wire bytes between '$' and '#', the payload they decode to)
encoded_payloads = st.lists(st.one_of(literal_pieces, run_pieces), max_size=4).map(
    lambda pieces: (b"".join(wire for wire, _ in pieces), b"".join(data for _, data in pieces))
)
junk_in_packet = st.binary(max_size=20).map(lambda data: bytes(byte for byte in data if byte not in b"$#"))
garbage = st.binary(min_size=1, max_size=20).map(lambda data: bytes(byte for byte in data if byte not in b"$\x03"))


@st.composite
def good_frame(draw, expected: Expected) -> bytes:
    raw, payload = draw(encoded_payloads)
    if len(raw) > MAX_PACKET_SIZE:
        expected.acks += 1
        expected.refusals += 1
    else:
        expected.events.append(Packet(payload))
        expected.acks += 1
    return b"$" + raw + b"#" + checksum(raw, draw(st.booleans()))


@st.composite
def segment(draw, expected: Expected) -> bytes:
    """Bytes of one thing a peer may send, with its expected outcome added to `expected`."""
    kinds = ["good", "good", "bad sum", "bad digits", "garbage", "interrupt", "cut short", "malformed"]
    kind = draw(st.sampled_from(kinds))
    if kind == "good":
        return draw(good_frame(expected))
    if kind == "bad sum":
        raw, _ = draw(encoded_payloads)
        wrong = (sum(raw) + draw(st.integers(1, 255))) % 256
        expected.nacks += 1
        return b"$" + raw + b"#" + b"%02x" % wrong
    if kind == "bad digits":  # the byte that is not a hex digit is read again after the packet
        raw, _ = draw(encoded_payloads)
        start = b"$" + raw + b"#" + draw(st.sampled_from([b"", b"a", b"F"]))
        expected.nacks += 1
        then = draw(st.sampled_from(["garbage", "interrupt", "packet"]))
        if then == "interrupt":
            expected.events.append(Interrupt())
            return start + b"\x03"
        if then == "packet":
            return start + draw(good_frame(expected))
        return start + bytes([draw(st.integers(0, 255).filter(lambda byte: byte not in HEX_DIGITS + b"$\x03"))])
    if kind == "garbage":
        return draw(garbage)
    if kind == "interrupt":
        expected.events.append(Interrupt())
        return b"\x03"
    if kind == "cut short":
        return b"$" + draw(junk_in_packet) + draw(good_frame(expected))
    raw, _ = draw(encoded_payloads)
    raw = draw(st.sampled_from([b"*" + raw, raw + b"}", raw + b"a*\x01"]))
    expected.acks += 1
    expected.refusals += 1
    return b"$" + raw + b"#" + checksum(raw, False)


@st.composite
def peer_streams(draw) -> tuple[bytes, Expected]:
    expected = Expected()
    stream = b"".join(draw(segment(expected)) for _ in range(draw(st.integers(0, 12))))
    ending = draw(st.sampled_from([b"", b"", b"$", b"$m10,4", b"$g#", b"$g#6"]))  # closed mid-packet
    return stream + ending, expected


@st.composite
def chunked(draw, stream: bytes) -> list[bytes | None]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=10)))
    pieces = [stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)])]
    chunks: list[bytes | None] = []
    for piece in pieces:
        if draw(st.booleans()):
            chunks.append(None)
        chunks.append(piece)
    return chunks


# ----------------------------------------------------------------------------- properties


def split_sent(sent: bytes, no_ack: bool) -> tuple[int, int, int]:
    """(acks, nacks, error replies) in what the connection sent."""
    if no_ack:
        assert sent.startswith(encode_packet(b"OK"))
        sent = sent[len(encode_packet(b"OK")) :]
    refusals = sent.count(encode_packet(ERROR_REPLY))
    acks_only = sent.replace(encode_packet(ERROR_REPLY), b"")
    assert set(acks_only) <= set(b"+-"), sent
    return acks_only.count(b"+"), acks_only.count(b"-"), refusals


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), peer_streams(), st.booleans(), st.lists(st.integers(0, 3), min_size=1, max_size=5))
def test_any_byte_stream_delivers_exactly_the_good_packets(data, stream_and_expected, no_ack, polls_before_receive):
    stream, expected = stream_and_expected
    chunks = data.draw(chunked(stream))
    if no_ack:
        chunks.insert(0, b"+")  # the peer's acknowledgment of our OK to QStartNoAckMode
    transport = ScriptedStream(chunks)
    conn = RspConnection(transport, max_packet_size=MAX_PACKET_SIZE)
    if no_ack:
        conn.start_no_ack_mode()

    events, polls_that_saw_interrupts = [], 0
    step = 0
    try:
        while True:
            for _ in range(polls_before_receive[step % len(polls_before_receive)]):
                polls_that_saw_interrupts += conn.poll_interrupt()
            step += 1
            events.append(conn.receive())
    except ConnectionClosed:
        pass

    packets = [event for event in events if isinstance(event, Packet)]
    assert packets == [event for event in expected.events if isinstance(event, Packet)]
    # Every interrupt is handed up once, by receive() or by a poll that returned True (one
    # poll takes all the interrupts pending at the time).
    interrupts_polled = expected.events.count(Interrupt()) - events.count(Interrupt())
    assert interrupts_polled >= polls_that_saw_interrupts
    assert (interrupts_polled > 0) == (polls_that_saw_interrupts > 0)
    if not any(polls_before_receive):
        assert events == expected.events
    acks, nacks, refusals = split_sent(bytes(transport.sent), no_ack)
    # A refused packet is answered when receive() reaches it, unless the peer has gone by then;
    # in ack mode the answer goes again if the stream holds a '-' where its ack is awaited.
    if no_ack:
        assert (acks, nacks) == (0, 0)
        assert refusals <= expected.refusals
    else:
        assert (acks, nacks) == (expected.acks, expected.nacks)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.data())
def test_encoding_then_decoding_is_the_identity(payload, data):
    frame = encode_packet(payload)
    assert frame[:1] == b"$" and frame[-3:-2] == b"#"
    assert not any(byte in SPECIAL for byte in frame[1:-3].replace(b"}", b""))
    decoder = PacketDecoder(max_packet_size=len(frame))
    cuts = sorted(data.draw(st.sets(st.integers(0, len(frame)), max_size=6)))
    items = []
    for start, end in zip([0, *cuts], [*cuts, len(frame)]):
        items += decoder.feed(frame[start:end])
    assert items == [Packet(payload)]
