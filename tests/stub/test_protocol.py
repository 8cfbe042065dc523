"""The gdbstub's answers on the wire: a raw TCP client against a GdbServer serving a real recording.

Every byte of every reply is asserted here, including what happens on bad input: bad checksums,
malformed, oversized and unknown packets, interrupts, and clients that vanish mid-command. The
server runs in a thread of this process (the replay is built in that thread: the engine is bound to
the thread that made it), so its log records are captured; everything else is seen on the wire.
"""
from __future__ import annotations

import gc
import logging
import re
import socket
import threading
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dom0.cli import DEFAULT_MEMORY_MIB
from dom0.replay import ReplaySession
import stub.server
from stub.progress import parse_progress_line
from stub.rsp import PACKET_SIZE, encode_packet
from stub.server import GdbServer, ServerError, listen
from stub.agentexpr import OPCODES
from stub.target_xml import REGISTER_NUMBERS, REGISTERS
from xen.builder import build_domain
from stub.timeline import Timeline

KEYS = r"echo hi\rcalc 6*7\rhalt\r"
G_PACKET_BYTES = 552          # the amd64 description: GPRs, rip, eflags, segments, x87, SSE, fs/gs_base
READ_ONLY = b"E.a replay is read-only: registers and memory cannot be changed"


def checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) % 256)


class Client:
    """A GDB stand-in speaking raw RSP (ack mode) over TCP."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)     # as GDB does
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _byte(self) -> bytes:
        if not self.buffer:
            self.buffer = self.sock.recv(65536)
            assert self.buffer, "the server closed the connection"
        byte, self.buffer = self.buffer[:1], self.buffer[1:]
        return byte

    def read_packet(self, acknowledge: bool = True) -> bytes:
        """The next packet from the server (acks before it skipped), checked and acknowledged."""
        while (byte := self._byte()) != b"$":
            assert byte == b"+", f"unexpected {byte!r} between packets"
        raw = b""
        while (byte := self._byte()) != b"#":
            raw += byte
        assert self._byte() + self._byte() == checksum(raw)
        if acknowledge:
            self.send(b"+")
        payload, escaped = b"", False
        for value in raw:
            payload += bytes((value ^ 0x20,)) if escaped else (b"" if value == 0x7D else bytes((value,)))
            escaped = value == 0x7D and not escaped
        return payload

    def ask(self, payload: bytes) -> bytes:
        self.send(encode_packet(payload))
        return self.read_packet()

    def monitor(self, command: str) -> str:
        """A qRcmd's output (its `O` packets), once its final OK has come."""
        output, final = self.monitor_packets(b"qRcmd," + command.encode().hex().encode())
        assert final == b"OK", final
        return output.decode()

    def monitor_packets(self, payload: bytes) -> tuple[bytes, bytes]:
        """Send a qRcmd packet: the output its `O` packets carry, and the final reply."""
        self.send(encode_packet(payload))
        output = b""
        while (reply := self.read_packet()).startswith(b"O") and reply != b"OK":
            output += bytes.fromhex(reply[1:].decode())
        return output, reply

    def close(self) -> None:
        self.sock.close()


class Served:
    """A GdbServer on a fresh replay of the recording, serving in a thread until a client kills it."""

    def __init__(self, recording: Path):
        self.listener = listen(0)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, args=(recording,), daemon=True)
        self.thread.start()

    def _serve(self, recording: Path) -> None:
        with self.listener:
            self.timeline = Timeline(ReplaySession(recording))     # read by tests for its counters only
            GdbServer(self.timeline).serve(self.listener)
        del self.timeline
        gc.collect()              # the engine must be freed by the thread that made it

    def ended(self) -> bool:
        self.thread.join(timeout=20)
        return not self.thread.is_alive()


@pytest.fixture(scope="module")
def recording(recorder, kbdshell_elf) -> Path:
    return recorder(kbdshell_elf, "--clock", "virtual", "--keys", KEYS).path


@pytest.fixture(scope="module")
def symbols(kbdshell_elf) -> dict[str, int]:
    with kbdshell_elf.open("rb") as file:
        return {symbol.name: symbol["st_value"] for symbol in ELFFile(file).get_section_by_name(".symtab").iter_symbols()}


@pytest.fixture(scope="module")
def served(recording):
    server = Served(recording)
    yield server
    killer = Client(server.port)
    killer.send(encode_packet(b"k"))
    assert server.ended()
    killer.close()


@pytest.fixture
def client(served):
    """A connected client, the replay at its first instruction; the server must survive the test."""
    connection = Client(served.port)
    try:
        assert connection.monitor("goto 1").startswith("event 0 of ")
        yield connection
    finally:
        connection.close()
    assert served.thread.is_alive()


def stop_fields(reply: bytes) -> dict[str, str]:
    assert reply[:1] == b"T", reply
    fields = {}
    for part in reply[3:].decode().split(";"):
        if part:
            key, _, value = part.partition(":")
            fields[key] = value
    return fields


def rip_of(reply: bytes) -> int:
    return int.from_bytes(bytes.fromhex(stop_fields(reply)["10"]), "little")


def test_listens_on_loopback_only():
    with pytest.raises(ServerError, match="127.0.0.1 only"):
        listen(0, "0.0.0.0")
    with pytest.raises(ServerError, match="between 0 and 65535"):
        listen(70000)


def test_qsupported_advertises_what_the_stub_does(client):
    reply = client.ask(b"qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386")
    features = reply.split(b";")
    assert b"PacketSize=%x" % PACKET_SIZE in features
    for feature in (b"QStartNoAckMode+", b"qXfer:features:read+", b"ReverseStep+", b"ReverseContinue+",
                    b"swbreak+", b"hwbreak+", b"vContSupported+", b"ConditionalBreakpoints+"):
        assert feature in features
    assert client.ask(b"vCont?") == b"vCont;c;C;s;S"
    assert client.ask(b"qAttached") == b"1"


def test_stop_reason_at_the_start(client, symbols):
    reply = client.ask(b"?")
    assert reply.startswith(b"T05") and stop_fields(reply)["thread"] == "1"
    assert rip_of(reply) == symbols["_start"]


def test_registers_read_whole_and_one_by_one_agree(client, symbols):
    whole = bytes.fromhex(client.ask(b"g").decode())
    assert len(whole) == G_PACKET_BYTES
    offset = 0
    for number, register in enumerate(REGISTERS):
        size = register.bits // 8
        assert bytes.fromhex(client.ask(b"p%x" % number).decode()) == whole[offset:offset + size], register.name
        offset += size
    rip = 16 * 8
    assert int.from_bytes(whole[rip:rip + 8], "little") == symbols["_start"]
    assert client.ask(b"p%x" % len(REGISTERS)) == b"E01"


def test_target_description_read_in_small_pieces_matches_the_g_packet(client):
    document, offset = b"", 0
    while True:
        reply = client.ask(b"qXfer:features:read:target.xml:%x,%x" % (offset, 200))
        assert reply[:1] in (b"m", b"l")
        document += reply[1:]
        offset += len(reply) - 1
        if reply[:1] == b"l":
            break
    registers = ElementTree.fromstring(document).iter("reg")
    sizes = [(reg.get("name"), int(reg.get("bitsize"))) for reg in registers]
    assert [name for name, _ in sizes][:18] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                                                "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags"]
    assert {"cs", "ss", "ds", "es", "fs", "gs", "fs_base", "gs_base", "xmm15", "mxcsr"} <= {n for n, _ in sizes}
    assert sum(bits for _, bits in sizes) == G_PACKET_BYTES * 8
    assert client.ask(b"qXfer:features:read:other.xml:0,100") == b"E00"


def test_memory_reads(client, kbdshell_elf, symbols):
    start = symbols["_start"]
    with kbdshell_elf.open("rb") as file:
        text = ELFFile(file).get_section_by_name(".text")
        code = text.data()[start - text["sh_addr"]:][:16]
    assert bytes.fromhex(client.ask(b"m%x,10" % start).decode()) == code
    end = build_domain(kbdshell_elf, DEFAULT_MEMORY_MIB << 20).layout.bootstrap_end   # Xen's initial mapping
    across_the_end = bytes.fromhex(client.ask(b"m%x,200" % (end - 0x100)).decode())
    assert len(across_the_end) == 0x100                  # the readable part, as GDB allows
    assert client.ask(b"m%x,4" % end) == b"E01"
    assert client.ask(b"m400000000000,4") == b"E01"       # canonical, never guest memory
    big = client.ask(b"m%x,100000" % start)
    assert 0 < len(big) <= PACKET_SIZE and len(big) % 2 == 0
    assert client.ask(b"m%x,0" % start) == b""


def test_writes_are_refused_and_change_nothing(client, symbols):
    address = symbols["ed"]
    before_memory = client.ask(b"m%x,8" % address)
    before_registers = client.ask(b"g")
    assert client.ask(b"P0=0100000000000000") == READ_ONLY
    assert client.ask(b"G" + b"00" * G_PACKET_BYTES) == READ_ONLY
    assert client.ask(b"M%x,4:01020304" % address) == READ_ONLY
    assert client.ask(b"X%x,4:abcd" % address) == READ_ONLY
    assert client.ask(b"g") == before_registers
    assert client.ask(b"m%x,8" % address) == before_memory


def test_vcpus_are_threads_numbered_from_one(client):
    assert client.ask(b"qfThreadInfo") == b"m1"
    assert client.ask(b"qsThreadInfo") == b"l"
    assert client.ask(b"qC") == b"QC1"
    assert client.ask(b"Hg1") == b"OK" and client.ask(b"Hc-1") == b"OK" and client.ask(b"Hg0") == b"OK"
    assert client.ask(b"Hg2") == b"E02"
    assert client.ask(b"T1") == b"OK" and client.ask(b"T2") == b"E02"
    assert bytes.fromhex(client.ask(b"qThreadExtraInfo,1").decode()) == b"vCPU 0 running"      # the vCPU and its state: running, runnable, blocked or down


def test_breakpoints_forward_and_reverse(client, symbols):
    client.ask(b"qSupported:swbreak+;hwbreak+")
    line_insert = symbols["line_insert"]
    assert client.ask(b"Z0,%x,1" % line_insert) == b"OK"
    first = client.ask(b"vCont;c")
    assert rip_of(first) == line_insert and "swbreak" in stop_fields(first)
    second = client.ask(b"c")
    assert rip_of(second) == line_insert
    back = client.ask(b"bc")
    assert rip_of(back) == line_insert and "swbreak" in stop_fields(back)
    assert stop_fields(client.ask(b"bc"))["replaylog"] == "begin"
    assert stop_fields(client.ask(b"bc"))["replaylog"] == "begin"
    assert client.ask(b"z0,%x,1" % line_insert) == b"OK"
    assert client.ask(b"Z1,%x,1" % line_insert) == b"OK"
    assert "hwbreak" in stop_fields(client.ask(b"c"))
    assert client.ask(b"z1,%x,1" % line_insert) == b"OK"
    assert stop_fields(client.ask(b"c"))["replaylog"] == "end"
    assert stop_fields(client.ask(b"vCont;s:1;c"))["replaylog"] == "end"


def key_is(*keys: str) -> bytes:
    """Z0 options: one condition per key, `(char) $rdi == key` (handle_key's argument) as GDB compiles it."""
    conditions = [bytes((OPCODES["reg"], 0, REGISTER_NUMBERS["rdi"], OPCODES["ext"], 8, OPCODES["const8"], ord(key),
                         OPCODES["equal"], OPCODES["end"])) for key in keys]
    return b"".join(b"X%x,%s" % (len(code), code.hex().encode()) for code in conditions)


def walk(client: Client, resume: bytes) -> list[tuple[str, str]]:
    """(the key in rdi, `monitor when`) at every stop of `resume` repeated up to an end of history."""
    stops = []
    while "replaylog" not in stop_fields(client.ask(resume)):
        rdi = int.from_bytes(bytes.fromhex(client.ask(b"p%x" % REGISTER_NUMBERS["rdi"]).decode()), "little")
        stops.append((chr(rdi & 0xFF), client.monitor("when")))
    return stops


@pytest.fixture(scope="module")
def every_key(served, symbols) -> list[tuple[str, str]]:
    """Every handle_key hit of the recording, from an unconditional breakpoint."""
    client = Client(served.port)
    client.monitor("goto 1")
    assert client.ask(b"Z0,%x,1" % symbols["handle_key"]) == b"OK"
    hits = walk(client, b"c")
    client.close()
    assert "".join(key for key, _ in hits) == "echo hi\rcalc 6*7\rhalt\r"
    return hits


def test_a_conditional_breakpoint_stops_only_where_its_condition_holds(client, symbols, every_key):
    # GDB manual, Packets: `Z0,addr,kind;cond_list`, each condition `X len,expr` in agent-expression bytecode
    assert client.ask(b"Z0,%x,1;%s" % (symbols["handle_key"], key_is("c"))) == b"OK"
    expected = [hit for hit in every_key if hit[0] == "c"]
    assert len(expected) == 3
    assert walk(client, b"c") == expected
    assert walk(client, b"bc") == expected[::-1]


def test_any_of_several_conditions_stops_the_breakpoint(client, symbols, every_key):
    expected = [hit for hit in every_key if hit[0] in "h7"]
    handle_key = symbols["handle_key"]
    assert client.ask(b"Z0,%x,1;%s" % (handle_key, key_is("h", "7"))) == b"OK"          # as GDB writes them
    assert walk(client, b"c") == expected
    assert client.ask(b"Z0,%x,1;%s;%s" % (handle_key, key_is("7"), key_is("h"))) == b"OK"  # `;` between
    assert walk(client, b"bc") == expected[::-1]


def test_conditions_are_replaced_by_a_new_z0_and_an_unconditional_kind_always_stops(client, symbols, every_key):
    handle_key = symbols["handle_key"]
    assert client.ask(b"Z0,%x,1;%s" % (handle_key, key_is("c"))) == b"OK"
    assert client.ask(b"Z0,%x,1;%s" % (handle_key, key_is("7"))) == b"OK"     # GDB re-sends Z0 on a change
    assert walk(client, b"c") == [hit for hit in every_key if hit[0] == "7"]
    assert client.ask(b"Z1,%x,1" % handle_key) == b"OK"                        # an unconditional kind as well
    assert walk(client, b"bc") == every_key[::-1]
    assert client.ask(b"z1,%x,1" % handle_key) == b"OK"
    assert walk(client, b"c") == [hit for hit in every_key if hit[0] == "7"]
    assert client.ask(b"Z0,%x,1" % handle_key) == b"OK"                        # no conditions: unconditional
    assert walk(client, b"bc") == every_key[::-1]
    assert client.ask(b"z0,%x,1" % handle_key) == b"OK"
    assert walk(client, b"c") == []


def test_reverse_continues_reuse_the_hits_of_one_scan_while_gdb_reinserts_the_same_conditions(
        client, served, symbols, every_key):
    """GDB removes every breakpoint at a stop and inserts it again before resuming: with the same
    conditions, the hits of the last backward scan are kept and no scan is replayed again."""
    handle_key = symbols["handle_key"]
    expected = [hit for hit in every_key if hit[0] == "c"][::-1]
    assert "replaylog" in stop_fields(client.ask(b"c"))          # to the end of the recording
    assert client.ask(b"Z0,%x,1;%s" % (handle_key, key_is("c"))) == b"OK"
    stops = []
    for _ in expected:
        stop_fields(client.ask(b"bc"))
        stops.append(client.monitor("when"))
        if len(stops) == 1:
            scanned = served.timeline.instructions_scanned
        assert client.ask(b"z0,%x,1" % handle_key) == b"OK"
        assert client.ask(b"Z0,%x,1;%s" % (handle_key, key_is("c"))) == b"OK"
    assert stops == [when for _, when in expected]
    assert served.timeline.instructions_scanned == scanned > 0


def test_a_condition_that_cannot_be_evaluated_stops_and_is_reported_once(client, symbols, every_key):
    unreadable = bytes((OPCODES["const64"],)) + (0xFFFF_8000_0000_0000).to_bytes(8, "big") + \
        bytes((OPCODES["ref32"], OPCODES["end"]))
    handle_key = symbols["handle_key"]
    assert client.ask(b"Z0,%x,1;X%x,%s" % (handle_key, len(unreadable), unreadable.hex().encode())) == b"OK"
    console, stop = client.monitor_packets(b"c")
    assert rip_of(stop) == handle_key and client.monitor("when") == every_key[0][1]
    assert console.decode() == (f"xenrr: the stub cannot evaluate the condition of the breakpoint at {handle_key:#x}: "
                                f"cannot read 4 bytes of memory at 0xffff800000000000 (ref32 at offset 9)\n")
    console, stop = client.monitor_packets(b"c")                 # stops again (as gdbserver), says nothing
    assert console == b"" and client.monitor("when") == every_key[1][1]
    console, stop = client.monitor_packets(b"bc")
    assert console == b"" and client.monitor("when") == every_key[0][1]


@pytest.mark.parametrize("options", [b"X", b"X2,27", b"X1,2", b"Xzz,27", b"X1,27Y", b"X1,27;garbage"])
def test_a_malformed_condition_list_is_refused_and_sets_nothing(client, symbols, options):
    assert client.ask(b"Z0,%x,1;%s" % (symbols["handle_key"], options)) == b"E01"
    assert stop_fields(client.ask(b"c"))["replaylog"] == "end"


def test_breakpoint_commands_are_refused(client, symbols):
    # The stub does not offer BreakpointCommands, so a `cmds:` list cannot be carried out.
    reply = client.ask(b"Z0,%x,1;%s;cmds:0,X1,27" % (symbols["handle_key"], key_is("c")))
    assert reply.startswith(b"E.breakpoint commands cannot run")
    assert stop_fields(client.ask(b"c"))["replaylog"] == "end"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bytecode=st.binary(max_size=48) | st.lists(st.sampled_from(sorted(OPCODES.values())), max_size=24).map(bytes))
def test_random_condition_bytecode_never_breaks_the_stub(served, symbols, caplog, bytecode):
    client = Client(served.port)
    try:
        client.monitor("goto 1")
        with caplog.at_level(logging.ERROR, logger="stub.server"):
            assert client.ask(b"Z0,%x,1;X%x,%s" % (symbols["handle_key"], len(bytecode), bytecode.hex().encode())) \
                == b"OK"
            for resume in (b"c", b"bc"):
                _, stop = client.monitor_packets(resume)
                assert stop.startswith(b"T05"), stop
            assert client.ask(b"qC") == b"QC1"
        assert not caplog.records, caplog.records[0].getMessage()
    finally:
        client.close()


def test_steps_forward_and_back_by_one_instruction(client, symbols):
    start = client.ask(b"?")
    step = client.ask(b"s")
    assert step.startswith(b"T05") and rip_of(step) != rip_of(start)
    assert rip_of(client.ask(b"vCont;s:1")) != rip_of(step)
    assert client.monitor("when").startswith("event 1 of ") and ", icount 2," in client.monitor("when")
    assert rip_of(client.ask(b"bs")) == rip_of(step)
    assert rip_of(client.ask(b"bs")) == rip_of(start)
    assert stop_fields(client.ask(b"bs"))["replaylog"] == "begin"
    assert client.ask(b"c 1234") == b"E03" and client.ask(b"s 1234") == b"E03"   # cannot resume elsewhere
    assert client.ask(b"C05;1234") == b"E03"
    assert client.ask(b"S05").startswith(b"T05")           # the signal is dropped


def test_watchpoints_report_their_kind_and_address(client, symbols):
    hist_count = symbols["ed"] + 64
    assert client.ask(b"Z2,%x,4" % hist_count) == b"OK"
    stop = stop_fields(client.ask(b"c"))
    assert int(stop["watch"], 16) == hist_count               # submit_line's ed.hist_count++
    assert client.ask(b"z2,%x,4" % hist_count) == b"OK"
    assert client.ask(b"Z3,%x,4" % hist_count) == b"OK"
    assert int(stop_fields(client.ask(b"c"))["rwatch"], 16) == hist_count
    assert client.ask(b"z3,%x,4" % hist_count) == b"OK"
    assert client.ask(b"Z4,%x,4" % hist_count) == b"OK"
    back = stop_fields(client.ask(b"bc"))
    assert int(back["awatch"], 16) == hist_count
    assert client.ask(b"z4,%x,4" % hist_count) == b"OK"
    assert client.ask(b"Z2,0,4") == b"E03"                    # not guest memory
    assert client.ask(b"Z9,0,4") == b""                        # unknown kind


def test_monitor_commands(client):
    assert "goto-icount N" in client.monitor("help")
    listing = client.monitor("events")
    events = [(int(number), int(icount)) for number, icount in re.findall(r"^(?:=>|  )\s*(\d+)\s+(\d+)\s", listing,
                                                                         re.MULTILINE)]
    assert listing.splitlines()[1].startswith("=>") and f"\n{len(events)} events;" in listing
    assert [number for number, _ in events] == list(range(1, len(events) + 1))
    assert len(client.monitor("events 2 3").splitlines()) == 4
    assert client.monitor("goto 3").startswith("event 2 of ")
    when = client.monitor("when")
    assert f"icount {events[2][1]}," in when
    assert rip_of(client.ask(b"?")) == int(re.search(r"pc (0x[0-9a-f]+)", when).group(1), 16)
    assert client.monitor("goto 1").startswith("event 0 of ")
    assert client.monitor("goto-icount 500").startswith("event ")
    assert ", icount 500," in client.monitor("when")
    assert client.monitor("goto-icount 99999999999").startswith("at the end of the recording; ")
    for bad, message in (("goto", "expected EVENT"), ("goto x", "not a number"), ("goto 0", "does not exist"),
                         ("goto 1 2", "expected EVENT"), ("events 3 2", "no events in 3..2"),
                         ("goto-icount -1", "cannot be negative"), ("when 1", "expected"),
                         ("", "unknown monitor command"), ("jump 3", "unknown monitor command")):
        output = client.monitor(bad)
        assert output.startswith("error: ") and message in output and output.count("\n") == 1, (bad, output)
    assert client.monitor("image").strip().endswith("kbdshell.elf")


def resume_collecting_output(client: Client, resume: bytes) -> tuple[list[bytes], bytes]:
    """Send a resume packet: the `O` packets that came before its stop reply, and the stop reply."""
    client.send(encode_packet(resume))
    output = []
    while (reply := client.read_packet()).startswith(b"O"):
        output.append(reply)
    return output, reply


@pytest.fixture
def progress_at_once(monkeypatch):
    """Progress reported at every poll (the recording is short; the first report comes after
    `set progress on`'s DELAY)."""
    monkeypatch.setattr(stub.server, "PROGRESS_INTERVAL_SECONDS", 0.0)


def test_progress_lines_come_only_when_asked_for_and_decode(client, progress_at_once):
    output, stop = resume_collecting_output(client, b"c")           # to the end, progress off
    assert output == [] and "replaylog" in stop_fields(stop)
    end = int(re.search(r"icount (\d+)", client.monitor("when")).group(1))
    assert client.monitor("set progress on 0") == "progress reports on, after 0 s\n"
    output, stop = resume_collecting_output(client, b"bc")          # back to the start
    assert stop_fields(stop)["replaylog"] == "begin" and output
    reports = [parse_progress_line(bytes.fromhex(packet[1:].decode()).decode()) for packet in output]
    assert all(report is not None and report.command == "reverse-continue" and report.total == end
               for report in reports), reports
    assert [report.done for report in reports] == sorted(report.done for report in reports)
    assert all(0 <= report.done <= end for report in reports)
    output, stop = resume_collecting_output(client, b"vCont;c")      # forwards again: what is left to the end
    reports = [parse_progress_line(bytes.fromhex(packet[1:].decode()).decode()) for packet in output]
    assert reports and {(report.command, report.total) for report in reports} == {("continue", end)}
    assert "replaylog" in stop_fields(stop)
    output, stop = resume_collecting_output(client, b"s")           # a step reports nothing
    assert output == []
    assert client.monitor("set progress off") == "progress reports off\n"
    output, stop = resume_collecting_output(client, b"bc")
    assert output == [] and stop_fields(stop)["replaylog"] == "begin"
    for bad in ("set progress", "set progress maybe", "set colour on", "set progress on soon", "set progress off 1"):
        assert client.monitor(bad).startswith("error: expected `set progress on [DELAY]`"), bad
    assert client.monitor("set progress on -1") == "error: a progress delay is 0 to 3600 seconds, not -1\n"
    assert client.monitor("set progress on 3600") == "progress reports on, after 3600 s\n"
    output, stop = resume_collecting_output(client, b"c")           # shorter than the delay: silent
    assert output == [] and "replaylog" in stop_fields(stop)


def test_interrupt_stops_a_continue_that_reports_progress(client, progress_at_once):
    client.monitor("set progress on 0")
    client.send(encode_packet(b"vCont;c") + b"\x03")
    while (reply := client.read_packet()).startswith(b"O"):
        assert parse_progress_line(bytes.fromhex(reply[1:].decode()).decode()) is not None
    assert reply.startswith(b"T02") and "replaylog" not in stop_fields(reply)


def test_interrupt_stops_a_continue(client):
    client.send(encode_packet(b"vCont;c") + b"\x03")            # Ctrl-C right behind the continue
    reply = client.read_packet()
    assert reply.startswith(b"T02") and "replaylog" not in stop_fields(reply)


def test_interrupt_while_stopped_stops_the_next_resume_at_once(client):
    # GDB sends Ctrl-C between a stop and the next resume while it steps or tests a breakpoint
    # condition: the interrupt must not be lost, and nothing else may run first.
    where = client.ask(b"?")
    client.send(b"\x03")
    assert client.ask(b"?") == where                          # queries are still answered
    assert client.ask(b"c").startswith(b"T02")
    assert rip_of(client.ask(b"?")) == rip_of(where)
    assert client.ask(b"vCont;c").startswith(b"T05")          # only once: the next continue runs


def test_bad_checksum_is_nacked_and_the_retransmission_answered(client):
    client.send(b"$qC#00")
    assert client._byte() == b"-"
    assert client.ask(b"qC") == b"QC1"


@pytest.mark.parametrize("payload", [b"m zz,4", b"mzz", b"m1000", b"p", b"pzz", b"Z0,zz,1", b"Z0", b"z2,1",
                                     b"vCont;x", b"vCont;", b"vCont;c:zz", b"Hgzz", b"Tzz", b"qRcmd,zzz",
                                     b"qXfer:features:read:target.xml:zz", b"C", b"Sxx", b"qThreadExtraInfo,q"])
def test_malformed_packets_get_an_error_reply(client, payload):
    assert client.ask(payload) == b"E01"
    assert client.ask(b"qC") == b"QC1"


@pytest.mark.parametrize("payload", [b"qFooBar", b"vMustReplyEmpty", b"vFile:open:6a", b"!", b"R00", b"i",
                                     b"_", b"QNonStop:1", b"qTStatus", b"bx", b"Hx1", b""])
def test_unknown_packets_get_an_empty_reply(client, payload):
    assert client.ask(payload) == b""


def test_oversized_and_undecodable_packets_are_refused_and_the_connection_goes_on(client):
    body = b"m" + b"1" * (PACKET_SIZE + 10)
    client.send(b"$" + body + b"#" + checksum(body))
    assert client.read_packet() == b"E01"
    client.send(b"$m1*#" + checksum(b"m1*"))                    # run-length marker without a count
    assert client.read_packet() == b"E01"
    assert client.ask(b"qC") == b"QC1"


def test_no_ack_mode(client):
    client.ask(b"qSupported")
    assert client.ask(b"QStartNoAckMode") == b"OK"
    client.ask(b"qC")
    client.send(encode_packet(b"qC"))
    assert client.sock.recv(100) == b"$QC1#" + checksum(b"QC1")      # no '+' before it


def test_no_ack_mode_starts_as_soon_as_the_ok_is_acknowledged(client):
    client.ask(b"qSupported")
    client.send(encode_packet(b"QStartNoAckMode"))
    assert client.read_packet(acknowledge=False) == b"OK"
    client.send(b"+" + encode_packet(b"qC"))                         # the ack and the next packet together
    assert client.sock.recv(100) == b"$QC1#" + checksum(b"QC1")


def test_a_client_vanishing_mid_command_leaves_the_server_ready_for_the_next(served, symbols):
    first = Client(served.port)
    first.monitor("goto 1")
    assert first.ask(b"Z0,%x,1" % symbols["line_insert"]) == b"OK"
    assert first.ask(b"Z2,%x,4" % (symbols["ed"] + 64)) == b"OK"
    first.send(encode_packet(b"vCont;c"))                       # and leaves before the stop reply
    first.close()
    half = Client(served.port)
    half.send(b"$qSupp")                                        # leaves in the middle of a packet
    half.close()
    second = Client(served.port)
    assert second.ask(b"qC") == b"QC1"
    second.monitor("goto 1")
    assert stop_fields(second.ask(b"c"))["replaylog"] == "end"  # the first client's points are gone
    second.close()
    assert served.thread.is_alive()


@pytest.mark.parametrize("ending, reply", [(b"D", b"OK"), (b"vKill;1", b"OK"), (b"k", None)])
def test_kill_or_detach_ends_the_session(recording, ending, reply):
    served = Served(recording)
    client = Client(served.port)
    client.send(encode_packet(ending))
    if reply is not None:
        assert client.read_packet() == reply
    assert served.ended()
    client.close()


_FUZZ_PREFIXES = [b"m", b"p", b"g", b"Z0,", b"z0,", b"Z2,", b"H", b"T", b"q", b"qXfer:features:read:", b"qRcmd,",
                  b"v", b"vCont;", b"b", b"?", b"s", b"c", b"C", b"S", b"P", b"G", b"M", b"X", b"Q"]
_SESSION_ENDING = (b"k", b"D", b"vKill", b"QStartNoAckMode")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from(_FUZZ_PREFIXES + [b""]), tail=st.binary(max_size=40))
def test_any_packet_gets_one_reply_and_no_internal_error(served, caplog, prefix, tail):
    payload = prefix + tail
    if payload.startswith(_SESSION_ENDING):
        return
    client = Client(served.port)
    try:
        with caplog.at_level(logging.ERROR, logger="stub.server"):
            if payload.startswith(b"qRcmd,"):
                client.monitor_packets(payload)
            else:
                client.ask(payload)
            assert client.ask(b"qC") == b"QC1"
        assert not caplog.records, caplog.records[0].getMessage()
    finally:
        client.close()
