"""The PV keyboard end to end: the real `xenrr` CLI, a hostile frontend guest, and the long-line hunt in GDB.

Fidelity: the handshake is io/xenbus.h's (XenbusState numbers in the transcript: 2 InitWait, 4 Connected,
5 Closing, 6 Closed); what the hostile frontend breaks is io/kbdif.h's contract (page-gref a grant for
the backend, event-channel a port allocated for it, in_prod the backend's index, in_cons within
XENKBD_IN_RING_LEN of it).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from dom0.logfile import LogHeader, LogReader
from gdbext.api import xenrr_debug
from tests.conftest import ROOT, guest_path, write_log
from tests.dom0.test_grub import TerminalSession
from tests.gdbext.test_shell import TmuxShell

EXTENSION = ROOT / "gdbext" / "xenrr_gdb.py"
LINE = "echo " + "x" * 59 + "ABCD"
ABCD = int.from_bytes(b"ABCD", "little")

HOSTILE_TRANSCRIPT = """kbdhostile ready
start: backend state 2, grant free, port unbound
wrong-order: backend state 5, grant free, port unbound
start-over: backend state 2, grant free, port unbound
not-a-state: backend state 5, grant free, port unbound
bad-gref: backend state 5, grant free, port unbound
ungranted: backend state 5, grant free, port unbound
bad-port: backend state 5, grant free, port unbound
no-ring: backend state 5, grant free, port unbound
legacy-page-ref: backend state 4, grant free, port bound
connected: backend state 4, grant in use, port bound
ring-indices: backend state 5, grant free, port unbound
in-prod: backend state 5, grant free, port unbound
connected: backend state 4, grant in use, port bound
closing: backend state 5, grant free, port unbound
closed: backend state 6, grant free, port unbound
kbdhostile done
""".replace("\n", "\r\n")
HOSTILE_REASONS = [
    "frontend Connected while the backend is InitWait (it never published Initialised)",
    "frontend state '9' is not a XenbusState",
    "page-gref 100000 does not map (GNTST -3: grant reference 100000 is beyond the table (512 entries))",
    "page-gref 9 does not map (GNTST -1: grant 9: bad flags 0x0 or domain 0 (expected d0))",
    "event-channel 1 is not a port the frontend allocated for dom0",
    "neither page-gref nor page-ref was published",
    "in_cons 1000 is out of range for in_prod 0 (ring of 51 events)",
    "in_prod was moved to 7 by the frontend (the backend left it at 0)",
]


@pytest.fixture(scope="module")
def keyboard_recording(recorder, kbdshell_elf) -> Path:
    recording = recorder(kbdshell_elf, "--keyboard", "pv", "--clock", "virtual", "--keys", LINE + r"\rhist\rhalt\r")
    run = recording.record
    assert "kbdshell ready (PV keyboard)" in run.stdout and f"\r\n{ABCD + 2}\r\n" in run.stdout
    return recording.path


def test_a_hostile_frontend_gets_the_device_closed_with_one_line_each_time(xenrr, tmp_path):
    """Each misbehaviour closes the device as xenbus_dev_fatal does (backend Closing, grant unmapped, port
    unbound, the reason in dom0's error/<backend>/error node) with one line on the hypervisor console; the
    domain runs on, starts the device over and finally connects properly. The session replays exactly."""
    log = tmp_path / "hostile.xrr"
    run = xenrr("record", guest_path("kbdhostile"), "-o", log, "--keyboard", "pv", "--clock", "virtual", "--keys", "")
    assert run.status == 0, run.stderr
    assert run.stdout == HOSTILE_TRANSCRIPT
    lines = run.stderr.splitlines()
    assert lines[:-1] == [f"vkbd: domain 1's keyboard frontend misbehaved: {reason}; device closed"
                          for reason in HOSTILE_REASONS]
    assert lines[-1].startswith("xenrr: domain shut down (poweroff)") and "Traceback" not in run.stderr
    replay = xenrr("replay", log)
    assert replay.status == 0 and replay.stdout == HOSTILE_TRANSCRIPT
    tree = xenrr("xenstore-ls", log).stdout
    message = f"vkbd: domain 1's keyboard frontend misbehaved: {HOSTILE_REASONS[-1]}; device closed"
    error_node = ['   error = ""', '    backend = ""', '     vkbd = ""', '      1 = ""', '       0 = ""',
                  f'        error = "{message}"']                      # /local/domain/0/error/backend/vkbd/1/0/error
    assert "\n".join(error_node) in tree


def test_record_dump_and_replay_show_key_events(keyboard_recording, xenrr):
    replay = xenrr("replay", keyboard_recording, "--quiet")
    assert replay.status == 0 and "replayed to the end of the recording" in replay.stderr
    dump = xenrr("dump", keyboard_recording, "--kind", "keyboard")
    rows = [line.split(None, 5) for line in dump.stdout.splitlines() if " keyboard " in line]
    details = [row[5] for row in rows]
    assert details[:4] == ["key-press KEY_E", "key-release KEY_E", "key-press KEY_C", "key-release KEY_C"]
    first_a = details.index("key-press KEY_A")
    assert details[first_a - 1:first_a + 3] == ["key-press KEY_LEFTSHIFT", "key-press KEY_A", "key-release KEY_A",
                                                "key-release KEY_LEFTSHIFT"]
    typed = len(LINE + "\rhist\rhalt\r")
    # a press and a release per key, Shift pressed and released around A-D; the guest powers off on the
    # last Enter's press, before its release is due
    assert len(rows) == 2 * typed + 2 * 4 - 1 and details[-1] == "key-press KEY_ENTER"
    ls = xenrr("xenstore-ls", keyboard_recording)
    assert 'page-gref = "8"' in ls.stdout and 'feature-disable-pointer = "1"' in ls.stdout


def test_rr_goto_a_key_press_then_watch_and_reverse_continue_find_the_long_line_writer(keyboard_recording):
    with xenrr_debug(keyboard_recording) as d:
        keys = d.events(kind="keyboard")
        enter = next(event for event in keys if event.detail == "key-press KEY_ENTER")
        d.gdb(f"source {EXTENSION}")
        d.gdb(f"rr-goto {enter.number}")
        assert d.when()[0] == enter.number - 1
        assert d.eval("ed.hist_count") == ABCD
        d.watch("ed.hist_count")
        stop = d.reverse_continue()
        assert stop.reason == "watchpoint" and stop.function == "line_insert"
        assert [frame.function for frame in d.backtrace()][:3] == ["line_insert", "handle_key", "guest_main"]
        assert d.event(stop.event).detail == "key-press KEY_D"
        assert d.eval("c") == "D"


def test_a_person_types_on_the_pv_keyboard_from_a_terminal(kbdshell_elf):
    """Interactive `xenrr run --keyboard pv` on a real pty: the terminal's raw bytes become key events
    (Shift for capitals and symbols, ESC [ A an arrow kbdshell ignores) and kbdshell echoes the line."""
    with TerminalSession("run", kbdshell_elf, "--keyboard", "pv") as session:
        session.wait_for("kbdshell ready (PV keyboard)")
        session.type(b"echo Typed On A Keyboard!\x1b[A\r")
        session.wait_for("\nTyped On A Keyboard!")
        session.type(b"halt\r")
        session.wait_for("domain shut down (poweroff)")
        assert session.close() == 0


def test_a_log_whose_header_lost_or_garbled_the_keyboard_is_refused_in_one_line(keyboard_recording, xenrr, tmp_path):
    with LogReader(keyboard_recording) as reader:
        header, records = reader.header, [record._replace(payload=bytes(record.payload)) for record in reader.records()]
    for name, store in (("lost", {"domid": 1, "name": "kbdshell"}), ("garbled", {"domid": 1, "name": "kbdshell",
                                                                              "keyboard": "usb"})):
        edited = write_log(tmp_path / f"{name}.xrr", LogHeader(header.image_sha256, {**header.config, "xenstore": store},
                                                               header.initial_state), records)
        run = xenrr("replay", edited, "--quiet")
        assert run.status == 2 and run.stderr.startswith("xenrr: error: ") and run.stderr.count("\n") == 1, run.stderr


def test_the_debugger_shell_lists_key_events_by_kind_and_goes_to_one(keyboard_recording, tmp_path):
    shell = TmuxShell(keyboard_recording, tmp_path / "state")
    try:
        listed = shell.run("events --kind keyboard 2 5")
        assert "key-press KEY_E" in listed and "key-release KEY_C" in listed
        enter = shell.run("events --kind keyboard 140 150")     # the long line's 144 key events end near 145
        number = next(line.split()[0] for line in enter.splitlines() if line.rstrip().endswith("key-press KEY_ENTER"))
        shell.run(f"goto {number}")
        shell.run("watch ed.hist_count")
        stopped = shell.run("rc")
        assert "line_insert at editor.c:33" in stopped, stopped
    finally:
        shell.close()


@pytest.mark.parametrize("clock", ["virtual", "real"])
def test_scripted_keys_for_a_guest_without_a_keyboard_frontend_end_the_run_after_lingering(xenrr, minimal_elf,
                                                                                          clock):
    """guests/minimal has no kbdfront: its keys are never taken, and the run stops (status 3, one line)
    instead of waiting for ever."""
    run = xenrr("run", minimal_elf, "--keyboard", "pv", "--clock", clock, "--keys", r"abc\r", "--linger", "0.2",
                timeout=60)
    assert run.status == 3, run.stderr
    assert "xenrr: stopped: key script not done: the guest took no PV keyboard events" in run.stderr

