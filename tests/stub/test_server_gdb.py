"""Real GDB (driven through pygdbmi) debugging a real `xenrr serve` process, forwards and backwards.

The recording triggers the kbdshell long-line bug (guests/kbdshell/README.md): `echo ` + 59 x `x` +
`ABCD`, Enter, then `hist`, `halt`. Its last four characters land in `ed.hist_count`; a watchpoint
on it and reverse-continue from the end find the write in `line_insert`, called from `handle_key`.
"""
from __future__ import annotations

import json
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pygdbmi.gdbcontroller import GdbController

import xen.inject  # noqa: F401  (registers the input kinds)
from xen.logrecord import FIRST_INPUT_KIND, kind_names

ROOT = Path(__file__).resolve().parents[2]
EXTENSION = ROOT / "gdbext" / "xenrr_gdb.py"
LONG_LINE = "echo " + "x" * 59 + "ABCD"
BUG_KEYS = LONG_LINE + r"\rhist\rhalt\r"
CORRUPTED = int.from_bytes(b"ABCD", "little")        # what the four characters make of ed.hist_count
NO_HISTORY = "No more reverse-execution history."
MEMORY_MIB = 2
COMMAND_TIMEOUT = 60


class GdbCommandError(Exception):
    """GDB answered a command with ^error; the message is GDB's."""


@dataclass(frozen=True)
class Reply:
    text: str                    # console and target (monitor) output
    stopped: dict | None         # the *stopped record's payload, if the command ran the target
    log: str = ""                # GDB's log stream (what `set debug ...` prints)


class Gdb:
    """Real GDB over its machine interface, one CLI command at a time."""

    def __init__(self, *arguments: str):
        self.mi = GdbController(["gdb", "--nx", "--quiet", "--interpreter=mi3", *arguments],
                                time_to_check_for_additional_output_sec=0.01)
        self._token = 0
        for setting in ("pagination off", "confirm off", "width 0"):
            self.run(f"set {setting}")

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> Reply:
        """Run a CLI command; wait for its result and, if it resumed the target, for the stop."""
        self._token += 1
        token = self._token
        self.mi.write(f"{token}-interpreter-exec console {json.dumps(command)}", read_response=False)
        text, log, result, stopped = [], [], None, None
        deadline = time.monotonic() + timeout
        while result is None or (result["message"] == "running" and stopped is None):
            assert time.monotonic() < deadline, f"GDB did not finish {command!r}: {''.join(text)}"
            for record in self.mi.get_gdb_response(timeout_sec=0.5, raise_error_on_timeout=False):
                if record["type"] in ("console", "target"):
                    text.append(record["payload"])
                elif record["type"] == "log":
                    log.append(record["payload"])
                elif record["type"] == "result" and record["token"] == token:
                    result = record
                elif record["type"] == "notify" and record["message"] == "stopped":
                    stopped = record["payload"]
        if result["message"] == "error":
            raise GdbCommandError(result["payload"]["msg"])
        return Reply("".join(text), stopped, "".join(log))

    def value(self, expression: str) -> int:
        """An integer expression's value (`print/d`)."""
        text = self.run(f"print/d {expression}").text
        return int(re.search(r"= (-?\d+)", text).group(1))

    def function(self) -> str:
        return self.run("frame").text.split(" (")[0].split()[-1]

    def backtrace(self) -> list[str]:
        return re.findall(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\w+) ", self.run("bt").text, re.MULTILINE)

    def when(self) -> tuple[int, int]:
        found = re.search(r"event (\d+) of \d+, icount (\d+)", self.run("monitor when").text)
        return int(found.group(1)), int(found.group(2))

    def close(self) -> None:
        self.mi.exit()


class Server:
    """A `xenrr serve` process, listening once constructed."""

    def __init__(self, recording: Path):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dom0.cli", "serve", str(recording), "--port", "0"], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.process.stdout.readline().decode()
        found = re.fullmatch(r"listening on (127\.0\.0\.1:\d+)\n", line)
        assert found, f"xenrr serve said {line!r}, stderr: {self.process.stderr.read().decode()!r}"
        self.address = found.group(1)

    def finish(self) -> int:
        """Wait for the server to exit (it does once a client killed or detached); its status."""
        try:
            return self.process.wait(timeout=20)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def record_kbdshell(recorder, kbdshell_elf: Path, keys: str) -> Path:
    """A virtual-clock recording of kbdshell typing `keys`."""
    return recorder(kbdshell_elf, "--clock", "virtual", "--memory", str(MEMORY_MIB), "--keys", keys).path


@pytest.fixture(scope="module")
def recording(recorder, kbdshell_elf) -> Path:
    return record_kbdshell(recorder, kbdshell_elf, BUG_KEYS)


@pytest.fixture(scope="module")
def long_recording(recorder, kbdshell_elf) -> Path:
    """Billions of instructions of `bench` (a few seconds of replay): time enough for a Ctrl-C."""
    return record_kbdshell(recorder, kbdshell_elf, r"bench 300000000\rhalt\r")


@contextmanager
def debugging(recording: Path, elf: Path) -> Iterator[Gdb]:
    """GDB with the guest's symbols, connected to a fresh `xenrr serve` at the first instruction; the
    server must end with status 0 when GDB kills the replay."""
    server = Server(recording)
    debugger = Gdb(str(elf))
    try:
        debugger.run(f"target remote {server.address}")
        yield debugger
        debugger.run("kill")
        assert server.finish() == 0
    finally:
        debugger.close()
        server.finish()


@pytest.fixture
def gdb(recording, kbdshell_elf):
    with debugging(recording, kbdshell_elf) as debugger:
        yield debugger


def refresh(gdb: Gdb) -> None:
    """After a monitor goto, make GDB forget the registers and memory it cached."""
    gdb.run("maintenance flush register-cache")
    gdb.run("maintenance flush dcache")


MEMORY_DIGEST = f"""
import hashlib
def memory_digest():
    inferior, digest = gdb.selected_inferior(), hashlib.sha256()
    for page in range(0, {MEMORY_MIB << 20}, 4096):
        try:
            digest.update(bytes(inferior.read_memory(page, 4096)))
        except gdb.MemoryError:
            digest.update(b"unmapped")
    return digest.hexdigest()
"""


def machine_state(gdb: Gdb) -> tuple[str, str]:
    """Every register GDB knows, and a digest of all guest memory (read through GDB)."""
    gdb.run(f"python exec({json.dumps(MEMORY_DIGEST)})")
    registers, digest = gdb.run("info all-registers").text, gdb.run("python print(memory_digest())").text
    assert re.search(r"^rip\s+0x", registers, re.MULTILINE) and re.fullmatch(r"[0-9a-f]{64}\n", digest)
    return registers, digest


def test_connects_at_the_first_instruction_with_symbols_and_registers(gdb):
    assert gdb.function() == "_start"
    assert gdb.when() == (0, 0)
    registers = gdb.run("info registers").text
    for name in ("rax", "r15", "rip", "eflags", "cs", "ss", "fs_base", "gs_base"):
        assert re.search(rf"^{name}\s+0x[0-9a-f]+", registers, re.MULTILINE), name
    assert re.search(r"^cs\s+0xe033", registers, re.MULTILINE)          # Xen's FLAT_KERNEL_CS
    assert re.search(r"^eflags\s+0x[0-9a-f]+\s+\[.*IF.*\]", registers, re.MULTILINE)
    assert gdb.value("$pc") == gdb.value("&_start")
    assert "mxcsr" in gdb.run("info registers mxcsr").text
    assert re.search(r"^\* 1\s+Thread 1 \(vCPU 0 running\) _start ", gdb.run("info threads").text, re.MULTILINE)


def test_break_continue_backtrace_and_globals(gdb):
    gdb.run("break line_insert")
    stop = gdb.run("continue").stopped
    assert stop["reason"] == "breakpoint-hit" and stop["frame"]["func"] == "line_insert"
    assert gdb.backtrace()[:3] == ["line_insert", "handle_key", "guest_main"]
    assert gdb.value("c") == ord("e")                       # the first key of `echo ...`
    assert gdb.value("ed.len") == 0 and gdb.value("ed.hist_count") == 0
    gdb.run("continue")
    gdb.run("continue")
    assert gdb.value("c") == ord("h") and gdb.value("ed.len") == 2
    assert gdb.run("x/2c &ed.line").text.count("'") == 4      # 'e' and 'c'
    assert gdb.value("ed.line[1]") == ord("c")


def test_step_next_finish_stepi_until_and_tbreak(gdb):
    gdb.run("break handle_key")
    gdb.run("continue")
    pc = gdb.value("$pc")
    gdb.run("stepi")
    assert gdb.value("$pc") != pc and gdb.function() == "handle_key"
    for _ in range(10):                                  # step line by line into line_insert
        gdb.run("step")
        if gdb.function() == "line_insert":
            break
    assert gdb.function() == "line_insert" and gdb.value("c") == ord("e")
    finished = gdb.run("finish")
    assert finished.stopped["reason"] == "function-finished" and gdb.function() == "handle_key"
    assert finished.stopped["return-value"] == "1" and gdb.value("ed.len") == 1
    line = int(finished.stopped["frame"]["line"])
    assert int(gdb.run("next").stopped["frame"]["line"]) > line
    assert gdb.run("until").stopped["frame"]["func"] in ("handle_key", "guest_main")
    gdb.run("delete")
    gdb.run("tbreak line_insert")
    assert gdb.run("continue").stopped["frame"]["func"] == "line_insert"
    assert gdb.value("c") == ord("c")
    assert "No breakpoints" in gdb.run("info breakpoints").text


def test_reverse_continue_step_next_stepi_and_finish(gdb):
    gdb.run("break line_insert")
    gdb.run("continue")
    first = gdb.when()
    gdb.run("continue")
    second = gdb.when()
    assert gdb.value("c") == ord("c")
    stop = gdb.run("reverse-continue").stopped
    assert stop["reason"] == "breakpoint-hit" and gdb.when() == first and gdb.value("c") == ord("e")
    gdb.run("continue")
    assert gdb.when() == second

    gdb.run("delete")
    gdb.run("finish")                                    # line_insert stores 'c': ed.len 1 -> 2
    assert gdb.value("ed.len") == 2 and gdb.function() == "handle_key"
    _, icount = gdb.when()
    gdb.run("reverse-stepi")                             # back to line_insert's ret
    assert gdb.when()[1] == icount - 1 and gdb.function() == "line_insert"
    for _ in range(3):
        gdb.run("reverse-next")
        if gdb.value("ed.len") == 1:
            break
    assert gdb.value("ed.len") == 1 and gdb.function() == "line_insert"
    for _ in range(5):                                   # back out of line_insert into its caller
        gdb.run("reverse-step")
        if gdb.function() != "line_insert":
            break
    assert gdb.function() == "handle_key" and gdb.when()[0] == second[0]

    gdb.run("break line_insert")
    gdb.run("continue")
    gdb.run("delete")                                    # a breakpoint at the entry would stop it there
    gdb.run("next")
    finished = gdb.run("reverse-finish")                 # to the call of line_insert in handle_key
    assert finished.stopped["frame"]["func"] == "handle_key"
    assert "call" in gdb.run("x/i $pc").text


def test_watch_and_reverse_continue_from_the_end_find_the_corrupting_keystroke(gdb):
    end = gdb.run("continue")
    assert NO_HISTORY in end.text                         # forward to the end of the recording
    assert gdb.value("ed.hist_count") == CORRUPTED + 3    # the long line, hist and halt counted on top
    gdb.run("watch ed.hist_count")
    functions = []
    for _ in range(4):
        stop = gdb.run("reverse-continue")
        assert stop.stopped["reason"] == "watchpoint-trigger", stop.text
        functions.append(gdb.function())
        if functions[-1] == "line_insert":
            break
    # Backwards: halt's, hist's and the long line's increments in submit_line, then the fourth
    # out-of-bounds character 'D' written by line_insert.
    assert functions == ["submit_line", "submit_line", "submit_line", "line_insert"]
    assert gdb.backtrace()[:2] == ["line_insert", "handle_key"]
    assert gdb.value("c") == ord("D") and gdb.value("ed.len") == 67
    assert gdb.value("ed.hist_count") == CORRUPTED & 0xFFFFFF     # 'D' not yet written
    event, _ = gdb.when()
    listed = gdb.run(f"monitor events {event} {event}").text
    assert re.search(rf"^\s+{event}\s+\d+\s+console-input\s+keys 'D'$", listed, re.MULTILINE), listed


def test_read_and_access_watchpoints_forwards_and_backwards(gdb):
    gdb.run("rwatch ed.hist_count")
    stop = gdb.run("continue").stopped                    # the long line is copied out with its 68 bytes
    assert stop["reason"] == "read-watchpoint-trigger" and stop["value"]["value"] == str(CORRUPTED)
    assert gdb.backtrace()[:2] == ["memcpy", "submit_line"] and gdb.value("n") == 3
    gdb.run("delete")
    gdb.run("awatch ed.hist_count")
    assert gdb.run("continue").stopped["reason"] == "access-watchpoint-trigger" and gdb.value("n") == 2
    back = gdb.run("reverse-continue").stopped            # back to just before that same read
    assert back["reason"] == "access-watchpoint-trigger" and gdb.value("n") == 2
    assert gdb.run("reverse-continue").stopped["reason"] == "access-watchpoint-trigger" and gdb.value("n") == 3


@pytest.fixture(scope="module")
def echo_recording(recorder, kbdshell_elf) -> Path:
    """Issue 9's recipe: two short lines typed, then halt."""
    return record_kbdshell(recorder, kbdshell_elf, r"echo a\recho b\rhalt\r")


def test_a_line_breakpoint_set_after_its_code_ran_is_hit_both_ways(echo_recording, kbdshell_elf):
    """Issue 9, section 1, exactly: `break editor.c:34` (mid-function, mid-block) once line_insert has
    run for several keys; continue and reverse-continue must stop there, not at the ends of history."""
    with debugging(echo_recording, kbdshell_elf) as gdb:
        gdb.run("break handle_key")
        gdb.run("continue")
        gdb.run("continue")
        assert gdb.value("c") == ord("c")                 # 'e' was inserted: line_insert has run
        gdb.run("delete")
        gdb.run("break editor.c:34")
        stop = gdb.run("continue")
        assert stop.stopped["reason"] == "breakpoint-hit", stop.text
        assert stop.stopped["frame"]["line"] == "34" and gdb.value("c") == ord("c")
        back = gdb.run("reverse-continue")
        assert back.stopped["reason"] == "breakpoint-hit", back.text
        assert back.stopped["frame"]["line"] == "34" and gdb.value("c") == ord("e")


def test_a_breakpoint_at_a_watchpoint_stop_is_hit_by_reverse_continue(echo_recording, kbdshell_elf):
    """The store's next instruction (where a watchpoint stops) is mid-block: `break *$pc` there, then
    reverse-continue finds the previous key's pass through it."""
    with debugging(echo_recording, kbdshell_elf) as gdb:
        gdb.run("break handle_key")
        for _ in range(3):
            gdb.run("continue")
        gdb.run("delete")
        gdb.run("watch ed.len")
        stop = gdb.run("continue")
        assert stop.stopped["reason"] == "watchpoint-trigger" and gdb.function() == "line_insert"
        length, pc = gdb.value("ed.len"), gdb.value("$pc")
        gdb.run("delete")
        gdb.run("break *$pc")
        back = gdb.run("reverse-continue")
        assert back.stopped["reason"] == "breakpoint-hit", back.text
        assert gdb.value("$pc") == pc and gdb.value("ed.len") == length - 1
        forward = gdb.run("continue")
        assert forward.stopped["reason"] == "breakpoint-hit" and gdb.value("ed.len") == length


def test_ends_of_history_are_reported(gdb):
    stop = gdb.run("reverse-stepi")
    assert NO_HISTORY in stop.text and gdb.when() == (0, 0)
    assert NO_HISTORY in gdb.run("reverse-continue").text
    end = gdb.run("continue")
    assert NO_HISTORY in end.text
    _, icount = gdb.when()
    assert NO_HISTORY in gdb.run("stepi").text and gdb.when()[1] == icount
    gdb.run("reverse-stepi")
    assert gdb.when()[1] == icount - 1


def test_writes_to_registers_and_memory_are_refused_and_change_nothing(gdb):
    gdb.run("break line_insert")
    gdb.run("continue")
    rax, length = gdb.value("$rax"), gdb.value("ed.len")
    with pytest.raises(GdbCommandError, match=r"Could not write register \"rax\".*read-only"):
        gdb.run("set $rax = 1234")
    with pytest.raises(GdbCommandError, match="Cannot access memory"):
        gdb.run("set var ed.len = 42")
    assert gdb.value("$rax") == rax and gdb.value("ed.len") == length
    gdb.run("continue")
    assert gdb.value("ed.len") == length + 1


def test_monitor_goto_and_events(gdb):
    events = gdb.run("monitor events 1 3").text
    assert re.search(r"^=>\s+1\s+0\s+\S+", events, re.MULTILINE), events
    assert gdb.run("monitor goto 3").text.startswith("event 2 of ")
    gdb.run("maintenance flush register-cache")
    assert gdb.value("$pc") == int(re.search(r"pc (0x[0-9a-f]+)", gdb.run("monitor when").text).group(1), 16)
    error = gdb.run("monitor goto 100000").text
    assert error.startswith("error: event 100000 does not exist") and error.count("\n") == 1
    assert gdb.run("monitor frobnicate").text.startswith("error: unknown monitor command")
    assert "goto-icount" in gdb.run("monitor help").text


def test_after_goto_the_backtrace_reaches_the_blocked_caller_and_finish_returns_to_it(gdb):
    """`goto` before a key lands in the hypercall page, just after `syscall` (the guest blocks there
    for input): GDB unwinds through the page with the CFI of the symbol file the stub offers
    (stub/hypercall_frames.py) instead of showing `#1 0x0 in ?? ()`, and `finish` gets back to the
    guest's caller as soon as the key has arrived."""
    assert "hypercall-page" in gdb.run("info sharedlibrary").text
    gdb.run("monitor goto 3")
    refresh(gdb)
    event, icount = gdb.when()
    frames = gdb.backtrace()
    assert frames[:4] == ["hypercall_page", "HYPERVISOR_sched_op", "events_block", "console_read_wait"], frames
    assert frames[-1] == "_start" and "??" not in gdb.run("bt").text
    return_address = int(re.search(r"^#1\s+(0x[0-9a-f]+) in ", gdb.run("bt").text, re.MULTILINE).group(1), 16)

    assert "Run till exit" in gdb.run("finish").text
    assert gdb.function() == "events_block" and gdb.value("$pc") == return_address
    assert gdb.when()[0] == event + 1 and gdb.when()[1] > icount       # the key was injected on the way
    assert gdb.backtrace()[:2] == ["events_block", "console_read_wait"]


def test_monitor_events_filter_by_kind_in_the_log_vocabulary(gdb):
    keys = gdb.run("monitor events --kind console-input 1 5").text.splitlines()      # event 1 is the boot time
    assert [line.split()[0] for line in keys[1:-1]] == ["2", "3", "4", "5"]
    assert all(" console-input " in line for line in keys[1:-1])
    assert keys[-1] == "4 shown of 80 events; => marks the next one to be injected"
    times = gdb.run("monitor events --kind=time,timer").text.splitlines()
    assert re.fullmatch(r"=>\s+1\s+0\s+time\s+guest time 0\.000000000 s", times[1]), times
    error = gdb.run("monitor events --kind tick").text
    assert error == f"error: unknown record kind tick: the kinds are {', '.join(sorted(kind_names()))}\n"


def test_monitor_help_names_every_input_kind_of_the_log(gdb):
    """The kinds come from the log's registry: a kind added later is listed without an edit."""
    listed = " ".join(gdb.run("monitor help").text.split())
    assert f"KIND is one of {', '.join(kind_names(FIRST_INPUT_KIND))}" in listed
    assert "xenstore-write" in listed


def test_monitor_bookmarks_return_to_a_named_position(gdb):
    gdb.run("break line_insert")
    gdb.run("continue")
    here = gdb.when()
    assert gdb.run("monitor bookmark first-key").text.startswith(f"bookmark first-key: event {here[0]} of 80")
    gdb.run("continue")
    gdb.run("continue")
    assert gdb.run("monitor bookmarks").text == f"first-key        icount {here[1]}\n"
    assert gdb.run("monitor goto-bookmark first-key").text.startswith(f"event {here[0]} of 80, icount {here[1]}")
    gdb.run("maintenance flush register-cache")
    assert gdb.when() == here and gdb.function() == "line_insert" and gdb.value("ed.len") == 0
    error = gdb.run("monitor goto-bookmark nowhere").text
    assert error == "error: no bookmark named 'nowhere' (bookmarks: first-key)\n"


@pytest.fixture
def xenrr_command(monkeypatch):
    """rr-replay starts `xenrr serve` as $XENRR says: this interpreter and project."""
    monkeypatch.setenv("XENRR", f"{sys.executable} -m dom0.cli")


def test_the_gdb_extension_connects_and_moves_through_events(recording, xenrr_command):
    debugger = Gdb("-x", str(EXTENSION))           # no symbols: rr-replay loads the recorded image's
    try:
        debugger.run(f"rr-replay {recording}")
        assert debugger.function() == "_start"
        listing = debugger.run("rr-events 69 70").text
        assert re.search(r"^\s+69\s+\d+\s+console-input\s+keys 'D'$", listing, re.MULTILINE), listing
        assert re.search(r"^\s+70\s+\d+\s+console-input\s+keys '\\r'$", listing, re.MULTILINE), listing
        moved = debugger.run("rr-goto 71")                                  # the long line was entered
        assert "event 70 of 80" in moved.text
        assert debugger.when() == (70, int(re.search(r"icount (\d+)", moved.text).group(1)))
        assert debugger.value("ed.hist_count") == CORRUPTED + 1
        assert re.search(r"^#0\s+\S", moved.text, re.MULTILINE)             # the frame was shown
        debugger.run("rr-goto 2")                                           # backwards
        assert debugger.value("ed.hist_count") == 0 and debugger.value("ed.len") == 0
        assert "event 1 of 80" in debugger.run("rr-when").text
        with pytest.raises(GdbCommandError, match=r"^event 999 does not exist"):
            debugger.run("rr-goto 999")
        with pytest.raises(GdbCommandError, match=r"^usage: rr-goto EVENT"):
            debugger.run("rr-goto")
        with pytest.raises(GdbCommandError, match=r"^usage: rr-events \[FROM\] \[TO\]"):
            debugger.run("rr-events x")
        assert "rr-goto EVENT" in debugger.run("help rr-goto").text
        debugger.run("kill")
    finally:
        debugger.close()


def test_after_rr_goto_the_backtrace_reaches_the_blocked_caller(recording, xenrr_command):
    """rr-replay loads the guest's symbols after connecting: the hypercall page's symbol file must still
    be read, so a stop in a blocking hypercall unwinds to the guest's code."""
    debugger = Gdb("-x", str(EXTENSION))
    try:
        debugger.run(f"rr-replay {recording}")
        debugger.run("rr-goto 3")
        frames = debugger.backtrace()
        assert frames[:3] == ["hypercall_page", "HYPERVISOR_sched_op", "events_block"], frames
        assert "??" not in debugger.run("bt").text
        debugger.run("finish")
        assert debugger.function() == "events_block"
        debugger.run("kill")
    finally:
        debugger.close()


def test_the_gdb_extension_filters_events_and_keeps_bookmarks(recording, xenrr_command):
    debugger = Gdb("-x", str(EXTENSION))
    try:
        debugger.run(f"rr-replay {recording}")
        listing = debugger.run("rr-events --kind console-input 66 69").text
        assert [line.split()[-1] for line in listing.splitlines()[1:-1]] == ["'A'", "'B'", "'C'", "'D'"]
        assert debugger.run("rr-events 66 69 --kind console-input").text == listing      # options anywhere
        assert debugger.run("rr-events 66 --kind=console-input 69").text == listing
        with pytest.raises(GdbCommandError, match=r"^usage: rr-events .*unknown option --kinds"):
            debugger.run("rr-events 66 --kinds time")
        assert "shown of 80 events" in debugger.run("rr-events --kind time").text
        debugger.run("rr-goto 71")
        assert "bookmark entered: event 70 of 80" in debugger.run("rr-bookmark entered").text
        debugger.run("rr-goto 2")
        assert "entered " in debugger.run("rr-bookmark").text
        moved = debugger.run("rr-goto entered")                             # back to the bookmark, with the frame
        assert "event 70 of 80" in moved.text and re.search(r"^#0\s+\S", moved.text, re.MULTILINE)
        assert debugger.value("ed.hist_count") == CORRUPTED + 1
        with pytest.raises(GdbCommandError, match=r"^no bookmark named 'elsewhere'"):
            debugger.run("rr-goto elsewhere")
        debugger.run("kill")
    finally:
        debugger.close()


def test_the_gdb_extension_reports_a_bad_recording_in_one_line(tmp_path, xenrr_command):
    debugger = Gdb("-x", str(EXTENSION))
    try:
        with pytest.raises(GdbCommandError, match=r"^cannot read .*missing\.xrr: no such file$"):
            debugger.run(f"rr-replay {tmp_path / 'missing.xrr'}")
        garbage = tmp_path / "garbage.xrr"
        garbage.write_bytes(b"not a log")
        with pytest.raises(GdbCommandError) as error:
            debugger.run(f"rr-replay {garbage}")
        assert "\n" not in str(error.value) and "Traceback" not in str(error.value)
        with pytest.raises(GdbCommandError, match="not connected to a replay"):
            debugger.run("rr-when")
    finally:
        debugger.close()


def test_reverse_stepi_lands_where_a_fresh_forward_replay_is_one_instruction_earlier(gdb, recording,
                                                                                     kbdshell_elf):
    gdb.run("continue")
    _, end = gdb.when()
    positions = sorted(random.Random(7).sample(range(1, end), 4))
    expected = {}
    with debugging(recording, kbdshell_elf) as fresh:       # moves forwards only
        for icount in positions:
            fresh.run(f"monitor goto-icount {icount - 1}")
            refresh(fresh)
            expected[icount] = machine_state(fresh)
    for icount in reversed(positions):                       # from the end backwards
        gdb.run(f"monitor goto-icount {icount}")
        refresh(gdb)
        gdb.run("reverse-stepi")
        assert gdb.when()[1] == icount - 1
        assert machine_state(gdb) == expected[icount], f"reverse-stepi from icount {icount}"


def test_ctrl_c_interrupts_a_long_continue(long_recording, kbdshell_elf):
    with debugging(long_recording, kbdshell_elf) as gdb:
        gdb.mi.write('-interpreter-exec console "continue"', read_response=False)
        records: list[dict] = []
        while not any(record["message"] == "running" for record in records):
            records += gdb.mi.get_gdb_response(timeout_sec=5, raise_error_on_timeout=False)
        gdb.mi.gdb_process.send_signal(signal.SIGINT)          # what Ctrl-C at GDB's terminal does
        while not any(record["message"] == "stopped" for record in records):
            records += gdb.mi.get_gdb_response(timeout_sec=5, raise_error_on_timeout=False)
        stopped = next(record for record in records if record["message"] == "stopped")["payload"]
        assert stopped.get("signal-name") == "SIGINT", records
        _, icount = gdb.when()
        assert icount > 0
        assert NO_HISTORY in gdb.run("continue").text and gdb.when()[1] > icount


def test_serve_refuses_bad_input_in_one_line(xenrr, recording, tmp_path):
    missing = xenrr("serve", tmp_path / "missing.xrr")
    assert missing.status == 2 and missing.stderr.startswith("xenrr: error: cannot read ")
    bad_port = xenrr("serve", recording, "--port", "70000")
    assert bad_port.status == 2 and "--port must be between 0 and 65535" in bad_port.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = xenrr("serve", recording, "--port", str(taken.getsockname()[1]))
    assert busy.status == 2 and "cannot listen on 127.0.0.1:" in busy.stderr
    for run in (missing, bad_port, busy):
        assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr


def _serve_processes(recording: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in command and str(recording).encode() in command:
            found.append(int(entry.name))
    return found


def test_xenrr_debug_starts_gdb_connected_with_symbols_and_leaves_nothing_behind(xenrr, recording):
    debug = xenrr("debug", recording, stdin=b"rr-when\nprint ed.hist_count\nrr-goto 71\nprint ed.hist_count\n")
    assert debug.status == 0, debug.stderr
    assert "event 0 of 80, icount 0" in debug.stdout
    assert "$1 = 0" in debug.stdout and f"$2 = {CORRUPTED + 1}" in debug.stdout
    assert _serve_processes(recording) == []
    refused = xenrr("debug", recording.with_name("missing.xrr"))
    assert refused.status == 2 and refused.stderr.startswith("xenrr: error: cannot read ")


def test_xenrr_debug_goto_and_gdb_arguments_after_the_double_dash(xenrr, recording):
    debug = xenrr("debug", recording, "--goto", "71", "--", "-batch", "-ex", "rr-when", "-ex", "print ed.hist_count")
    assert debug.status == 0, debug.stderr
    assert "event 70 of 80" in debug.stdout and f"$1 = {CORRUPTED + 1}" in debug.stdout
    assert _serve_processes(recording) == []
    beyond = xenrr("debug", recording, "--goto", "81")
    assert (beyond.status, beyond.stderr) == (
        2, "xenrr: error: --goto: event 81 does not exist: the recording has events 1 to 80\n")


def test_xenrr_serve_goto_starts_at_the_event(recording):
    server = subprocess.Popen([sys.executable, "-m", "dom0.cli", "serve", str(recording), "--goto", "71"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        port = int(re.search(r":(\d+)$", server.stdout.readline().strip()).group(1))
        gdb = Gdb()
        try:
            gdb.run(f"target remote 127.0.0.1:{port}")
            assert gdb.run("monitor when").text.startswith("event 70 of 80, ")
            gdb.run("kill")
        finally:
            gdb.close()
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


# The 'A' of the long line and the first keys of `hist` and `halt`. GDB 13 compiles this one to bytecode;
# `c` itself it cannot (a location list), so with `c` it keeps evaluating the condition itself.
CONDITION = "(char)$rdi == 65 || (char)$rdi == 104 && ed.len == 0"
UNCOMPILED = "c == 65 || c == 104 && ed.len == 0"


def conditional_walk(recording: Path, elf: Path, evaluation: str, condition: str = CONDITION) -> tuple[list, list, int]:
    """With `break handle_key if CONDITION` evaluated by `evaluation` (host or target): the stops of
    `continue` from the start to the end, of `reverse-continue` back, and how many stop replies the
    stub sent for all of them."""
    with debugging(recording, elf) as gdb:
        # GDB's default, auto, uses the stub's evaluation once the stub offers it
        assert "mode is auto (currently target)" in gdb.run("show breakpoint condition-evaluation").text
        gdb.run(f"set breakpoint condition-evaluation {evaluation}")
        gdb.run(f"break handle_key if {condition}")
        gdb.run("set debug remote 1")
        walks, replies = [], 0
        for command in ("continue", "reverse-continue"):
            stops = []
            while (reply := gdb.run(command)).stopped.get("reason") == "breakpoint-hit":
                replies += reply.log.count("Packet received: T05")
                stops.append((gdb.when(), chr(gdb.value("c")), gdb.value("ed.len")))
            replies += reply.log.count("Packet received: T05")
            walks.append(stops)
        gdb.run("set debug remote 0")
    return walks[0], walks[1], replies


@pytest.mark.slow
def test_conditions_evaluated_by_the_stub_stop_where_gdb_would_without_the_false_hits(recording, kbdshell_elf):
    forward, backward, replies = conditional_walk(recording, kbdshell_elf, "target")
    assert [(key, length) for _, key, length in forward] == [("A", 64), ("h", 0), ("h", 0)]
    assert backward == forward[::-1]
    host_forward, host_backward, host_replies = conditional_walk(recording, kbdshell_elf, "host")
    assert (host_forward, host_backward) == (forward, backward)
    # Each stop costs one stop reply, and one more for GDB's step off the breakpoint as it resumes;
    # evaluated by the stub a false hit costs none, evaluated by GDB each of the 80 keys costs two.
    keys = len(BUG_KEYS.replace("\\r", "\r"))
    assert replies <= 2 * (len(forward) + len(backward)) + 2
    assert host_replies >= 2 * keys
    # where GDB cannot compile the condition it evaluates it itself, with the same stops
    assert conditional_walk(recording, kbdshell_elf, "target", UNCOMPILED)[:2] == (forward, backward)


def test_a_condition_the_stub_cannot_evaluate_stops_at_every_hit_and_the_stub_says_why_once(gdb):
    gdb.run("break handle_key if *(int *) 0xffff800000000000 == 5")     # not canonical: never readable
    stub_says = "xenrr: the stub cannot evaluate the condition of the breakpoint at "
    gdb_says = "Cannot access memory at address 0xffff800000000000"      # GDB checks it again itself
    first = gdb.run("continue")
    assert first.stopped["reason"] == "breakpoint-hit" and gdb.value("c") == ord("e")
    assert first.text.count(stub_says) == 1 and gdb_says in first.log
    second = gdb.run("continue")
    assert second.stopped["reason"] == "breakpoint-hit" and gdb.value("c") == ord("c")
    assert stub_says not in second.text and gdb_says in second.log
    back = gdb.run("reverse-continue")
    assert back.stopped["reason"] == "breakpoint-hit" and gdb.value("c") == ord("e")
    assert stub_says not in back.text
