"""The stub under hostile clients: a second debugger, a silent one, one that leaves mid-reply, and a
seeded RSP fuzz campaign against the real `xenrr serve` process with a stderr free of tracebacks.

Before: a client that left in the middle of a `monitor` reply made the stub print a traceback, and one
silent connection blocked every other debugger for ever (one client at a time, no idle timeout).
"""
from __future__ import annotations

import gc
import logging
import random
import socket
import subprocess
import sys
import time

import pytest

from stub.rsp import encode_packet
from stub.server import BUSY_LINE, GdbServer
from stub.timeline import Timeline
from dom0.replay import ReplaySession
from dom0.logfile import LogReader
from tests.conftest import ROOT, campaign_size, write_log
from xen.inject import Kind
from tests.stub.test_protocol import Client, Served


class QuicklyIdle(Served):
    """A Served whose clients are disconnected after half a second of silence."""

    def _serve(self, recording) -> None:
        with self.listener:
            self.timeline = Timeline(ReplaySession(recording))
            GdbServer(self.timeline, idle_timeout=0.5).serve(self.listener)
        del self.timeline
        gc.collect()              # the engine must be freed by the thread that made it


@pytest.fixture(scope="module")
def recording(virtual_recording):
    return virtual_recording.path


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def served_client(port: int, within: float = 20) -> Client:
    """A client the server serves (it answers `?`), retrying while it says busy."""
    deadline = time.monotonic() + within
    while True:
        client = Client(port)
        client.send(encode_packet(b"?"))
        try:
            if client.read_packet().startswith(b"T"):
                return client
        except AssertionError:                            # told busy, then closed
            assert time.monotonic() < deadline, "the server stayed busy"
            time.sleep(0.1)
        client.close()


def test_a_second_client_is_told_busy_in_one_line(recording):
    server = Served(recording)
    first = Client(server.port)
    assert first.ask(b"?").startswith(b"T")
    second = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    assert _read_all(second) == BUSY_LINE and BUSY_LINE.count(b"\n") == 1
    second.close()
    assert first.ask(b"?").startswith(b"T")            # the first is still served
    first.send(encode_packet(b"k"))
    assert server.ended()


def test_a_silent_client_is_timed_out_and_the_next_one_served(recording):
    server = QuicklyIdle(recording)
    silent = Client(server.port)
    other = served_client(server.port)                    # once the silent one was timed out
    assert _read_all(silent.sock) == b""                  # the silent one was disconnected
    other.send(encode_packet(b"k"))
    assert server.ended()


def test_a_client_leaving_in_the_middle_of_a_monitor_reply_is_no_error(recording, caplog):
    caplog.set_level(logging.INFO, logger="stub")
    server = Served(recording)
    leaving = Client(server.port)
    leaving.send(encode_packet(b"qRcmd," + b"events".hex().encode()))
    leaving.read_packet(acknowledge=False)                # the first `O` packet, never acknowledged
    leaving.close()
    client = served_client(server.port)
    client.send(encode_packet(b"k"))
    assert server.ended()
    assert not [record for record in caplog.records if record.exc_info or record.levelno >= logging.WARNING]


def test_a_malformed_record_met_while_running_is_an_error_reply_not_a_traceback(recording, tmp_path, caplog):
    """A log edited under a valid CRC (a time payload one byte short) fails `c` with `E.` and one log line."""
    with LogReader(recording) as reader:
        header = reader.header
        records = [record._replace(payload=bytes(record.payload)) for record in reader.records()]
    index = max(index for index, record in enumerate(records) if record.kind in (Kind.TIMER, Kind.TIME))
    records[index] = records[index]._replace(payload=records[index].payload[:-1])
    caplog.set_level(logging.INFO, logger="stub")
    server = Served(write_log(tmp_path / "bad.xrr", header, records))
    client = served_client(server.port)
    reply = client.ask(b"c")
    assert reply.startswith(b"E.") and b"time" in reply, reply
    client.send(encode_packet(b"k"))
    assert server.ended()
    assert not [record for record in caplog.records if record.exc_info]


_PACKETS = [b"?", b"g", b"qSupported:multiprocess+", b"QStartNoAckMode", b"vCont?", b"qC", b"qfThreadInfo",
            b"qXfer:features:read:target.xml:0,fff", b"c", b"s", b"bc", b"bs", b"Hg0", b"Hc-1", b"T1", b"T9",
            b"vMustReplyEmpty", b"D1", b"z0,0,1", b"Z5,0,1", b"X0,0:", b"M0,1:00", b"G00", b"P0=00"]
_MONITOR = ["events", "events 1 3", "when", "goto 1", "goto 99999", "goto-icount 1000", "bookmark a",
            "goto-bookmark a", "damage", "image", "help", "nonsense", "goto -1", "events x"]


def _fuzz_packet(rng: random.Random) -> bytes:
    choice = rng.randrange(6)
    if choice == 0:
        return encode_packet(rng.choice(_PACKETS))
    if choice == 1:
        return encode_packet(b"qRcmd," + rng.choice(_MONITOR).encode().hex().encode())
    if choice == 2:
        return encode_packet(b"m%x,%x" % (rng.randrange(2**64), rng.randrange(1 << 20)))
    if choice == 3:
        return encode_packet(b"Z%d,%x,%d" % (rng.randrange(6), rng.randrange(2**48), rng.randrange(9)))
    if choice == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    return b"\x03"


@pytest.mark.slow
def test_rsp_fuzz_against_xenrr_serve_leaves_no_traceback(recording):
    server = subprocess.Popen([sys.executable, "-m", "dom0.cli", "serve", str(recording)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().rsplit(":", 1)[1])
        rng = random.Random(3)
        for _ in range(campaign_size(15, 500)):
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            sock.settimeout(2)
            for _ in range(rng.randint(1, 12)):
                packet = _fuzz_packet(rng)
                if packet in (encode_packet(b"D1"),):
                    continue                          # detaching would end the server
                try:
                    sock.sendall(packet)
                    if rng.randrange(3):
                        sock.recv(rng.choice([1, 64, 4096]))
                except OSError:
                    break
            sock.close()                              # often in the middle of a reply
        killer = served_client(port, within=60)
        killer.send(encode_packet(b"k"))
        _, stderr = server.communicate(timeout=60)
    finally:
        server.kill()
        server.wait()
    assert server.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
