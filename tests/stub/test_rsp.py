"""The RSP framing layer over real sockets: what GDB sends is received, what we send GDB reads.

The peer is either a raw socket (so every byte on the wire is asserted) or real GDB.
"""

import signal
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from stub.rsp import (
    ERROR_REPLY,
    PACKET_SIZE,
    BadArgument,
    ConnectionClosed,
    Interrupt,
    Packet,
    ReceiveTimeout,
    RspConnection,
    decode_register,
    encode_register,
    hex_decode,
    hex_encode,
    parse_addr_length,
    parse_hex_number,
)


def wire_frame(raw: bytes) -> bytes:
    """A frame with exactly these wire bytes between '$' and '#' (escaping done by the caller)."""
    return b"$" + raw + b"#" + b"%02x" % (sum(raw) % 256)


class Peer:
    """The GDB end of a socketpair, speaking raw bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            assert chunk, f"stub closed the connection after {data!r}"
            data += chunk
        return data

    def expect(self, expected: bytes) -> None:
        assert self.read_exactly(len(expected)) == expected

    def pending(self) -> bytes:
        """Whatever the stub has sent and the peer not yet read."""
        self.sock.setblocking(False)
        try:
            return self.sock.recv(65536)
        except BlockingIOError:
            return b""
        finally:
            self.sock.settimeout(10)


@pytest.fixture
def discards():
    return []


@pytest.fixture
def pair(discards):
    stub_sock, peer_sock = socket.socketpair()
    conn = RspConnection(stub_sock, timeout=10, on_discard=lambda reason, data: discards.append((reason, data)))
    yield conn, Peer(peer_sock)
    stub_sock.close()
    peer_sock.close()


# ----------------------------------------------------------------------------- receiving


def test_packet_is_received_and_acknowledged(pair):
    conn, peer = pair
    peer.send(b"$qSupported:multiprocess+#c6")
    assert conn.receive() == Packet(b"qSupported:multiprocess+")
    peer.expect(b"+")


def test_packets_split_across_many_writes_are_reassembled(pair):
    conn, peer = pair
    for byte in wire_frame(b"m401000,40"):
        peer.send(bytes([byte]))
    assert conn.receive() == Packet(b"m401000,40")


def test_escaped_bytes_are_unescaped(pair):
    conn, peer = pair
    peer.send(wire_frame(b"X1000,4:}\x04}\x03}]}\x0a"))
    assert conn.receive() == Packet(b"X1000,4:$#}*")


def test_run_length_encoding_is_expanded(pair):
    conn, peer = pair
    peer.send(wire_frame(b"0* 1*!2"))  # '0' plus 3 more, '1' plus 4 more
    assert conn.receive() == Packet(b"0000" + b"11111" + b"2")


def test_interrupt_byte_inside_a_packet_is_data(pair):
    conn, peer = pair
    peer.send(wire_frame(b"X0,1:\x03") + wire_frame(b"g"))
    assert conn.receive() == Packet(b"X0,1:\x03")
    assert conn.receive() == Packet(b"g")


def test_bad_checksum_is_nacked_and_the_retransmission_accepted(pair, discards):
    conn, peer = pair
    peer.send(b"$g#00" + b"$g#67")
    assert conn.receive() == Packet(b"g")
    peer.expect(b"-+")
    assert discards == [("checksum mismatch: sent 00, computed 67", b"$g#00")]


def test_garbage_before_a_packet_is_skipped(pair, discards):
    conn, peer = pair
    peer.send(b"junk\x00\xff#%" + b"$g#67")
    assert conn.receive() == Packet(b"g")
    peer.expect(b"+")
    assert discards == [("garbage between packets", b"junk\x00\xff#%")]


def test_packet_cut_short_by_a_new_packet_is_dropped_unanswered(pair):
    conn, peer = pair
    peer.send(b"$m10,4" + b"$g#67")
    assert conn.receive() == Packet(b"g")
    peer.expect(b"+")
    assert peer.pending() == b""


def test_oversized_packet_is_refused_and_the_connection_stays_usable(pair, discards):
    conn, peer = pair
    with ThreadPoolExecutor(1) as stub:
        received = stub.submit(conn.receive)
        peer.send(wire_frame(b"X0,0:" + b"a" * PACKET_SIZE) + wire_frame(b"g"))
        peer.expect(b"+" + b"+" + wire_frame(ERROR_REPLY))  # acknowledged, then refused
        peer.send(b"+")
        assert received.result(10) == Packet(b"g")
    assert [reason for reason, _ in discards] == [f"packet of {PACKET_SIZE + 5} bytes exceeds the 16384-byte limit"]


def test_malformed_encoding_with_good_checksum_gets_an_error_reply(pair, discards):
    conn, peer = pair
    with ThreadPoolExecutor(1) as stub:
        received = stub.submit(conn.receive)
        peer.send(wire_frame(b"X0,1:}") + wire_frame(b"*x") + wire_frame(b"?"))
        peer.expect(b"+++" + wire_frame(ERROR_REPLY))
        peer.send(b"+")
        peer.expect(wire_frame(ERROR_REPLY))
        peer.send(b"+")
        assert received.result(10) == Packet(b"?")
    assert [reason for reason, _ in discards] == [
        "malformed packet: escape '}' at the end of the packet",
        "malformed packet: run-length '*' with no character before it",
    ]


def test_interrupt_between_packets_is_an_event(pair):
    conn, peer = pair
    peer.send(b"\x03" + wire_frame(b"g"))
    assert conn.receive() == Interrupt()
    assert conn.receive() == Packet(b"g")


def test_poll_interrupt_takes_the_interrupt_and_keeps_the_arriving_packet(pair):
    conn, peer = pair
    assert conn.poll_interrupt() is False
    peer.send(b"\x03$m40")
    assert conn.poll_interrupt() is True
    assert conn.poll_interrupt() is False
    peer.send(b"1000,4#" + b"%02x" % (sum(b"m401000,4") % 256))
    assert conn.receive() == Packet(b"m401000,4")


def test_poll_interrupt_keeps_a_complete_packet_for_receive(pair):
    conn, peer = pair
    peer.send(wire_frame(b"g") + b"\x03\x03")
    assert conn.poll_interrupt() is True
    peer.expect(b"+")
    assert conn.receive() == Packet(b"g")


def test_peer_disconnecting_mid_packet_closes_cleanly(pair, discards):
    conn, peer = pair
    peer.send(wire_frame(b"?") + b"$m10,4")
    peer.sock.close()
    assert conn.receive() == Packet(b"?")
    with pytest.raises(ConnectionClosed):
        conn.receive()
    assert discards == [("connection closed in the middle of a packet", b"$m10,4")]
    with pytest.raises(ConnectionClosed):
        conn.poll_interrupt()
    with pytest.raises(ConnectionClosed):
        conn.send_packet(b"OK")


def test_interrupt_before_disconnect_is_still_reported(pair):
    conn, peer = pair
    peer.send(b"\x03")
    peer.sock.close()
    assert conn.poll_interrupt() is True
    with pytest.raises(ConnectionClosed):
        conn.poll_interrupt()


def test_silent_peer_times_out_and_a_partial_packet_is_kept():
    stub_sock, peer_sock = socket.socketpair()
    with stub_sock, peer_sock:
        conn = RspConnection(stub_sock, timeout=0.05)
        peer_sock.sendall(b"$m10")
        with pytest.raises(ReceiveTimeout):
            conn.receive()
        peer_sock.sendall(b",4#" + b"%02x" % (sum(b"m10,4") % 256))
        assert conn.receive() == Packet(b"m10,4")


# ----------------------------------------------------------------------------- sending


def test_sent_packet_escapes_every_special_byte(pair):
    conn, peer = pair
    peer.send(b"+")
    conn.send_packet(b"a$b#c}d*e")
    peer.expect(wire_frame(b"a}\x04b}\x03c}]d}\x0ae"))


def test_nack_makes_the_packet_go_again(pair):
    conn, peer = pair
    peer.send(b"-+")
    conn.send_packet(b"OK")
    peer.expect(wire_frame(b"OK") * 2)
    assert peer.pending() == b""


def test_resends_are_bounded_and_the_connection_carries_on():
    stub_sock, peer_sock = socket.socketpair()
    with stub_sock, peer_sock:
        conn = RspConnection(stub_sock, timeout=10, max_resends=2)
        peer = Peer(peer_sock)
        peer.send(b"-----")
        conn.send_packet(b"S05")
        peer.expect(wire_frame(b"S05") * 3)
        peer.send(wire_frame(b"g"))
        assert conn.receive() == Packet(b"g")


def test_a_peer_moving_on_to_a_new_packet_ends_the_wait_for_an_ack(pair):
    conn, peer = pair
    peer.send(wire_frame(b"g"))
    conn.send_packet(b"S05")
    assert conn.receive() == Packet(b"g")
    peer.expect(wire_frame(b"S05") + b"+")


def test_interrupt_while_waiting_for_an_ack_is_kept(pair):
    conn, peer = pair
    peer.send(b"\x03+")
    conn.send_packet(b"S05")
    assert conn.poll_interrupt() is True


def test_round_trip_of_every_byte_value_between_two_connections():
    left_sock, right_sock = socket.socketpair()
    with left_sock, right_sock:
        left = RspConnection(left_sock, timeout=10)
        right = RspConnection(right_sock, timeout=10)
        payloads = [bytes(range(256)), b"", b"$#}*" * 100, b"\x03"]
        received = []
        receiver = threading.Thread(target=lambda: received.extend(right.receive() for _ in payloads))
        receiver.start()
        for payload in payloads:
            left.send_packet(payload)
        receiver.join(10)
        assert received == [Packet(payload) for payload in payloads]


def test_no_ack_mode_starts_after_the_ok_is_acknowledged(pair):
    conn, peer = pair
    peer.send(wire_frame(b"QStartNoAckMode"))
    assert conn.receive() == Packet(b"QStartNoAckMode")
    peer.expect(b"+")
    peer.send(b"+")  # GDB acknowledges the OK
    conn.start_no_ack_mode()
    assert conn.no_ack_mode
    peer.expect(wire_frame(b"OK"))
    peer.send(wire_frame(b"g") + b"$g#00" + wire_frame(b"?"))
    assert conn.receive() == Packet(b"g")
    assert conn.receive() == Packet(b"?")  # the corrupt packet is dropped, not nacked
    peer.send(b"-")  # a nack means nothing now: no resend
    conn.send_packet(b"S05")
    peer.expect(wire_frame(b"S05"))
    assert peer.pending() == b""


def test_tcp_connection_disables_nagle_so_acks_do_not_stall_replies():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with client, server:
            RspConnection(server)
            assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


# ----------------------------------------------------------------------------- hex helpers


def test_hex_helpers_round_trip():
    assert hex_encode(b"\x00\xff\x10") == b"00ff10"
    assert hex_decode(b"00FF10") == b"\x00\xff\x10"
    assert encode_register(0x401234, 8) == b"3412400000000000"
    assert decode_register(b"3412400000000000") == 0x401234
    assert parse_addr_length(b"ffffffff80001000,40") == (0xFFFFFFFF80001000, 0x40)


@pytest.mark.parametrize(
    "args, message",
    [
        (b"1000", "expected 'addr,length', got b'1000'"),
        (b"1000,4,5", "expected 'addr,length'"),
        (b",4", "address is missing"),
        (b"10z0,4", "address b'10z0' is not a hex number of at most 64 bits"),
        (b"1000,", "length is missing"),
        (b"1" * 17 + b",4", "is not a hex number of at most 64 bits"),
    ],
)
def test_bad_addr_length_gets_a_clear_error(args, message):
    with pytest.raises(BadArgument) as error:
        parse_addr_length(args)
    assert message in str(error.value)


@pytest.mark.parametrize("text", [b"abc", b"zz", b"0 1", b"+1"])
def test_bad_hex_data_gets_a_clear_error(text):
    with pytest.raises(BadArgument, match="is not an even number of hex digits"):
        hex_decode(text)
    with pytest.raises(BadArgument, match="register value"):
        decode_register(text)


def test_parse_hex_number_names_what_was_wrong():
    assert parse_hex_number(b"7fff", "thread id") == 0x7FFF
    with pytest.raises(BadArgument, match="thread id b'-1' is not a hex number"):
        parse_hex_number(b"-1", "thread id")


# ----------------------------------------------------------------------------- real GDB

RIP = 0x401234
# GDB's i386:x86-64 registers without target features: 16 general, rip, eflags, 6 segment
# selectors, 8 x87 registers, 8 x87 control registers, 16 xmm, mxcsr.
G_PACKET_SIZE = 16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 16 * 16 + 4
# A target description that only names the architecture; its comment makes the reply carry
# every byte that must be escaped, so GDB only gets x86-64 if our escaping is right.
TARGET_XML = b'<?xml version="1.0"?><!-- $#}* --><target><architecture>i386:x86-64</architecture></target>'


class TinyStub:
    """Answers the packets GDB sends at connect with minimal valid replies, through RspConnection."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.memory: dict[int, int] = {}
        self.received: list[bytes] = []
        self.failure: BaseException | None = None
        self.running = threading.Event()  # set while the pretend target runs
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            sock, _ = self.listener.accept()
            with sock:
                conn = RspConnection(sock, timeout=30)
                while True:
                    event = conn.receive()
                    if isinstance(event, Packet):
                        self.received.append(event.payload)
                        self._answer(conn, event.payload)
        except ConnectionClosed:
            pass
        except BaseException as error:  # reported by the test, not lost in the thread
            self.failure = error
        finally:
            self.listener.close()

    def _answer(self, conn: RspConnection, payload: bytes) -> None:
        registers = bytearray(G_PACKET_SIZE)
        registers[16 * 8 : 17 * 8] = RIP.to_bytes(8, "little")
        if payload.startswith(b"qSupported"):
            conn.send_packet(b"PacketSize=%x;QStartNoAckMode+;qXfer:features:read+" % PACKET_SIZE)
        elif payload == b"QStartNoAckMode":
            conn.start_no_ack_mode()
        elif payload.startswith(b"qXfer:features:read:target.xml:"):
            conn.send_packet(b"l" + TARGET_XML)
        elif payload == b"?":
            conn.send_packet(b"S05")
        elif payload == b"g":
            conn.send_packet(hex_encode(bytes(registers)))
        elif payload == b"qAttached":
            conn.send_packet(b"1")
        elif payload.startswith(b"m"):
            address, length = parse_addr_length(payload[1:])
            conn.send_packet(hex_encode(bytes(self.memory.get(address + i, 0) for i in range(length))))
        elif payload.startswith(b"X"):
            arguments, data = payload[1:].split(b":", 1)
            address, _ = parse_addr_length(arguments)
            self.memory.update((address + i, byte) for i, byte in enumerate(data))
            conn.send_packet(b"OK")
        elif payload == b"c":
            self.running.set()
            while not conn.poll_interrupt():
                self.running.wait(0.005)  # the target would run a slice of instructions here
            self.running.clear()
            conn.send_packet(b"S02")
        elif payload == b"D":
            conn.send_packet(b"OK")
        else:
            conn.send_packet(b"")


@pytest.mark.parametrize("acks", ["no-ack mode", "ack mode"])
def test_real_gdb_connects_reads_registers_and_writes_binary_memory(acks):
    stub = TinyStub()
    noack_setting = "on" if acks == "no-ack mode" else "off"
    result = subprocess.run(
        [
            "gdb", "-batch", "-nx",
            "-ex", f"set remote noack-packet {noack_setting}",
            "-ex", f"target remote 127.0.0.1:{stub.port}",
            "-ex", "info registers rip",
            "-ex", "set {unsigned char[4]}0x1000 = {0x24, 0x23, 0x7d, 0x2a}",
            "-ex", "x/4xb 0x1000",
        ],
        capture_output=True, text=True, timeout=60,
    )
    stub.thread.join(30)
    assert stub.failure is None
    assert f"rip            {RIP:#x}" in result.stdout, result.stdout + result.stderr
    assert "0x1000:\t0x24\t0x23\t0x7d\t0x2a" in result.stdout
    assert b"X1000,4:$#}*" in stub.received  # GDB escaped it, we unescaped it
    assert (b"QStartNoAckMode" in stub.received) == (acks == "no-ack mode")



def test_ctrl_c_in_real_gdb_interrupts_a_continue():
    stub = TinyStub()
    gdb = subprocess.Popen(
        ["gdb", "-batch", "-nx", "-ex", f"target remote 127.0.0.1:{stub.port}", "-ex", "continue"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert stub.running.wait(30), "gdb never resumed the target"
        gdb.send_signal(signal.SIGINT)  # what Ctrl-C at GDB's terminal does
        output, errors = gdb.communicate(timeout=30)
    finally:
        gdb.kill()
    stub.thread.join(30)
    assert stub.failure is None
    assert "Program received signal SIGINT, Interrupt." in output, output + errors
