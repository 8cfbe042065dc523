"""The PV keyboard: kbdif backend (dom0/vkbd.py), its record kind, `--keyboard pv`, kbdshell's kbdfront.

Fidelity: the device's xenstore nodes, features and ring layout are io/kbdif.h's (feature-*, page-gref,
page-ref, event-channel, XENKBD_IN_RING_LEN events of XENKBD_IN_EVENT_SIZE bytes from
XENKBD_IN_RING_OFFS, XENKBD_TYPE_KEY with a Linux keycode); the handshake is io/xenbus.h's XenbusState
sequence Initialising -> InitWait -> Initialised -> Connected -> Closing -> Closed. The frontend is
kbdshell's own kbdfront (guests/common/kbdfront.c), built by gcc, run on the real engine.
"""
from __future__ import annotations

import os
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from dom0.consoleinput import KeyScriptError, TerminalInput
from dom0.keyboard import KEY_MAP, KeyboardTerminal, KeyEventScript
from dom0.logfile import LogReader
from dom0.record import record
from dom0.replay import ReplaySession
from dom0.toolstack import connect_xenstore, xenstore_config
from dom0.vkbd import backend_path, frontend_path
from stub.timeline import Timeline
from xen import abi
from xen.builder import build_domain
from xen.domain import DOMID, Domain
from xen.inject import Kind
from xen.kbdif import decode_key_event, encode_key_event
from xen.keycodes import keycode
from xen.sched import Scheduler

MEMORY_BYTES = 4 * 1024 * 1024
LINE = "echo " + "x" * 59 + "ABCD"


def keyboard_domain(elf: Path, output: bytearray | None = None) -> Domain:
    domain = Domain(build_domain(elf.read_bytes(), MEMORY_BYTES),
                    console_output=(output if output is not None else bytearray()).extend)
    connect_xenstore(domain, xenstore_config(elf, keyboard="pv"))
    return domain


def test_the_device_is_in_xenstore_as_libxl_writes_it_with_the_backend_waiting(kbdshell_elf):
    domain = keyboard_domain(kbdshell_elf)
    store = domain.xenstore
    frontend, backend = frontend_path(DOMID), backend_path(DOMID)
    assert (frontend, backend) == ("/local/domain/1/device/vkbd/0", "/local/domain/0/backend/vkbd/1/0")
    assert store.read(f"{frontend}/backend") == backend.encode()
    assert store.read(f"{frontend}/state") == str(abi.XenbusStateInitialising).encode()
    assert store.read(f"{backend}/frontend") == frontend.encode()
    assert store.read(f"{backend}/state") == str(abi.XenbusStateInitWait).encode()    # features written, waiting
    # kbdif.h: a backend advertises what it supports with 1, what it does not with 0; a keyboard only
    assert {key: store.read(f"{backend}/{key}") for key in ("feature-disable-keyboard", "feature-disable-pointer",
                                                            "feature-abs-pointer", "feature-multi-touch",
                                                            "feature-raw-pointer")} == {
        "feature-disable-keyboard": b"0", "feature-disable-pointer": b"1", "feature-abs-pointer": b"0",
        "feature-multi-touch": b"0", "feature-raw-pointer": b"0"}


def test_kbdshell_connects_and_every_key_of_the_map_types_its_character(kbdshell_elf):
    """Every printable character goes host -> KEY_MAP -> keycodes (with Shift) -> the ring -> kbdshell's C
    keymap -> the same character echoed: the two tables are each other's inverse."""
    printable = "".join(chr(byte) for byte in range(0x20, 0x7F))
    lines = [printable[:47], printable[47:]]
    script = "".join("echo " + line.replace("\\", "\\\\") + r"\r" for line in lines) + r"halt\r"
    output = bytearray()
    domain = keyboard_domain(kbdshell_elf, output)
    outcome = Scheduler(domain, KeyEventScript(script), clock="virtual", keyboard=True).run()
    assert outcome.reason == "shutdown", outcome
    text = output.decode()
    assert text.startswith("kbdshell ready (PV keyboard)\r\n")
    for line in lines:
        assert f"\r\n{line}\r\n" in text
    store, frontend, backend = domain.xenstore, frontend_path(DOMID), backend_path(DOMID)
    assert store.read(f"{frontend}/state") == store.read(f"{backend}/state") == str(abi.XenbusStateConnected).encode()
    gref = int(store.read(f"{frontend}/page-gref"))
    port = int(store.read(f"{frontend}/event-channel"))
    assert domain.events.binding(port).kind == "interdomain"
    assert gref in domain.grants.state.active            # mapped by the backend: GTF_reading | GTF_writing


def test_a_key_flood_fills_the_ring_and_loses_nothing(kbdshell_elf, tmp_path):
    """Under the real clock every due key goes in at once, up to the ring's XENKBD_IN_RING_LEN free slots
    (kbdif.h): the rest waits for the guest to consume (back-pressure), nothing is dropped, all in order."""
    rng = random.Random(12)
    lines = ["echo " + "".join(rng.choice("abcXYZ019 !?") for _ in range(rng.randint(1, 40))) for _ in range(12)]
    script = "".join(line + r"\r" for line in lines) + r"halt\r"
    output = bytearray()
    domain = keyboard_domain(kbdshell_elf, output)
    log = tmp_path / "flood.xrr"
    result = record(domain, kbdshell_elf, KeyEventScript(script), log, clock="real", max_instructions=None,
                    linger_ns=10**9, xenstore=xenstore_config(kbdshell_elf, "pv"), keyboard=True)
    assert result.outcome.reason == "shutdown", result.outcome
    for line in lines:
        assert f"> {line}\r\n{line[5:]}\r\n".encode() in output
    with LogReader(log) as reader:
        events = [(record.icount, bytes(record.payload)) for record in reader.records() if record.kind == Kind.KEYBOARD]
    expected = KeyEventScript(script).take(0, 10**6)
    assert [payload for _, payload in events] == expected
    assert max(Counter(icount for icount, _ in events).values()) == abi.XENKBD_IN_RING_LEN
    session = ReplaySession(log)
    session.replayer.run()                       # every digest and the END state verified
    assert session.replayer.recorded_outcome == "shutdown:poweroff"
    session.close()


def test_the_record_kind_is_two_bytes_and_reads_as_the_key(tmp_path):
    payload = encode_key_event(keycode("A"), True)
    assert len(payload) == 2
    assert decode_key_event(payload) == (abi.XENKBD_TYPE_KEY, 30, True)
    assert decode_key_event(encode_key_event(0x2FF, False)) == (abi.XENKBD_TYPE_KEY, 0x2FF, False)   # KEY_MAX
    assert KEY_MAP[ord("A")] == ("A", ("LEFTSHIFT",)) and KEY_MAP[0x03] == ("C", ("LEFTCTRL",))
    assert KEY_MAP[ord("\t")] == ("TAB", ())


def test_scripts_press_hold_and_release_keys_by_name():
    events = KeyEventScript(r"\d{LEFTSHIFT}a\u{LEFTSHIFT}A\k{UP}\e[D").take(0, 100)
    shift, a, up, left = keycode("LEFTSHIFT"), keycode("A"), keycode("UP"), keycode("LEFT")
    assert [tuple(decode_key_event(event))[1:] for event in events] == [
        (shift, True), (a, True), (a, False), (shift, False),              # Shift held by hand: not pressed again
        (shift, True), (a, True), (a, False), (shift, False),              # 'A': Shift around the key
        (up, True), (up, False), (left, True), (left, False)]              # \k{UP}, and ESC [ D from a terminal
    for script, message in ((r"\q", r"use \r \n \t \\ \e \xNN \pN \d{NAME} \u{NAME} \k{NAME}"),
                            (r"\d{LEFTSHIFT", r"\d needs a key name in braces"), (r"\k{NOSUCHKEY}", "unknown key name")):
        with pytest.raises(KeyScriptError, match=re.escape(message)):
            KeyEventScript(script)


def test_a_keyboard_recording_walks_backwards_and_forwards_exactly(kbdshell_elf, tmp_path):
    """Checkpoints and reverse execution across key events: random timeline commands land in the state
    (registers, memory, device state - the backend's state and ring) a naive forward replay reaches."""
    log = tmp_path / "walk.xrr"
    domain = keyboard_domain(kbdshell_elf)
    record(domain, kbdshell_elf, KeyEventScript(LINE + r"\rhist\rhalt\r"), log, clock="virtual",
           max_instructions=None, linger_ns=10**9, xenstore=xenstore_config(kbdshell_elf, "pv"), keyboard=True)
    session = ReplaySession(log)
    timeline = Timeline(session, checkpoint_interval=20_000)
    end = timeline.cont().mark
    rng = random.Random(7)
    moves = {"step": timeline.step, "reverse_step": timeline.reverse_step, "reverse_cont": timeline.reverse_cont,
             "goto_event": lambda: timeline.goto_event(rng.randint(1, len(timeline.events()))),
             "goto_icount": lambda: timeline.goto_icount(rng.randint(0, end.icount))}
    visited = {}
    for _ in range(40):
        moves[rng.choice(sorted(moves))]()
        visited.setdefault(timeline.position, session.domain.digest(with_memory=True))
    naive = ReplaySession(log)
    for mark in sorted(visited):
        naive.replayer.run(mark)
        assert naive.domain.digest(with_memory=True) == visited[mark], f"state differs at {mark}"
    assert len(visited) > 15


def test_the_terminal_types_on_the_keyboard_arrows_included_and_ctrl_bracket_detaches():
    reader, writer = os.pipe()
    try:
        os.write(writer, b"hI\x1b[A\x03\xff\x1dignored")
        keys = KeyboardTerminal(TerminalInput(reader))
        events = keys.take(0, 100)
        shift, ctrl = keycode("LEFTSHIFT"), keycode("LEFTCTRL")
        assert [tuple(decode_key_event(event))[1:] for event in events] == [
            (keycode("H"), True), (keycode("H"), False),
            (shift, True), (keycode("I"), True), (keycode("I"), False), (shift, False),
            (keycode("UP"), True), (keycode("UP"), False),
            (ctrl, True), (keycode("C"), True), (keycode("C"), False), (ctrl, False)]     # 0xff: no key, dropped
        assert keys.detached and keys.take(0, 100) == []
    finally:
        os.close(reader)
        os.close(writer)
