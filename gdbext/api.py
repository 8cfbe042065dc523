"""The scripted debugging API: real GDB, connected to `xenrr serve`, driven from Python.

Owns one debugging session of one recording: a `xenrr serve` process listening on a loopback port,
a GDB process (`gdb --interpreter=mi3`, through pygdbmi) connected to it with the guest's symbols,
and the translation of GDB/MI records into Python values. GDB's symbol and expression engine does
all the work; the replay is reached only through the remote protocol, and its events and positions
through the stub's `monitor` commands (`events`, `goto`, `goto-icount`, `when`, `bookmark`,
`damage`, ...). Expression values come back as Python values: GDB converts them inside itself
(gdbext/gdbvalues.py, sourced at start).

    with xenrr_debug("session.xrr") as d:
        d.goto_event(70)
        d.watch("ed.hist_count")
        stop = d.reverse_continue()
        assert stop.function == "line_insert"

Every motion (cont, step, goto_event, ...) returns a `Stop`; every error GDB reports raises a
`DebugError` carrying GDB's one-line message. Ctrl-C (SIGINT) during a motion interrupts it and the
motion returns a Stop with reason "interrupt".

Invariant: between calls GDB has no command in flight and the target is stopped, so each call starts
from a quiet GDB and `last_stop` describes where the replay stands.
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from pygdbmi.gdbcontroller import GdbController

from gdbext.locate import GdbNotFound, find_gdb
from stub.progress import Progress, parse_progress_line

COMMAND_TIMEOUT = 60.0        # seconds GDB may take to answer a command that does not run the target
SERVER_START_TIMEOUT = 60.0   # seconds `xenrr serve` may take to open its port
REMOTE_TIMEOUT = 120          # GDB's `remotetimeout`: a `monitor goto` far away may take a while
NO_HISTORY_TEXT = "No more reverse-execution history"
GDB_VALUES = Path(__file__).with_name("gdbvalues.py")    # sourced into GDB: C values as JSON, for eval()
_EXEC_IN_NEW_SESSION = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"

# GDB/MI stop reasons -> the reasons a Stop reports.
_REASONS = {
    "breakpoint-hit": "breakpoint",
    "watchpoint-trigger": "watchpoint",
    "read-watchpoint-trigger": "watchpoint",
    "access-watchpoint-trigger": "watchpoint",
    "watchpoint-scope": "watchpoint-scope",
    "end-stepping-range": "step",
    "function-finished": "finish",
    "location-reached": "location",
    "signal-received": "signal",
    "exited": "exited",
    "exited-normally": "exited",
    "exited-signalled": "exited",
}


class DebugError(Exception):
    """GDB or the replay server refused or failed: the message is one readable line."""


@dataclass(frozen=True)
class Event:
    """An input event of the recording, as the stub's `monitor events` lists it (numbered from 1)."""
    number: int
    icount: int
    kind: str
    detail: str


@dataclass(frozen=True)
class Thread:
    """One vCPU of the replayed domain, as GDB lists it (GDB thread id = vCPU + 1)."""
    vcpu: int
    status: str          # "running" (on the engine), "runnable", "blocked" or "down": the stub's word
    function: str | None
    pc: int
    selected: bool


@dataclass(frozen=True)
class Frame:
    """One frame of a backtrace (level 0 is the innermost)."""
    level: int
    function: str | None
    file: str | None
    line: int | None
    pc: int

    @property
    def location(self) -> str:
        """`file:line`, or the pc in hex when GDB knows no source line."""
        return _location(self.file, self.line, self.pc)


@dataclass(frozen=True)
class Stop:
    """Where a motion left the replay, and why.

    reason: "breakpoint", "watchpoint", "step" (a step/next/stepi ended), "finish", "goto",
    "history-start"/"history-end" (no more history in that direction), "interrupt", "signal",
    "here" (from `where()`), or another GDB/MI stop reason verbatim. `event` is the number of the
    last input event applied (0 before the first), `icount` the guest instructions retired.
    For a watchpoint, `old_value`/`new_value` are GDB's "Old value"/"New value": the value where
    the motion started and the value now (so after a reverse motion, `new_value` is the value before
    the write).
    """
    reason: str
    function: str | None
    file: str | None
    line: int | None
    pc: int
    icount: int
    event: int
    fullname: str | None = None
    old_value: str | None = None
    new_value: str | None = None
    vcpu: int = 0           # the vCPU the stop names: the one that hit or stepped (GDB's thread - 1)

    @property
    def location(self) -> str:
        """`file:line`, or the pc in hex when GDB knows no source line."""
        return _location(self.file, self.line, self.pc)

    def describe(self) -> str:
        """One line: why, where, and the position in the recording."""
        where = f"{self.function or '??'} at {self.location}"
        change = f" ({self.old_value} -> {self.new_value})" if self.new_value is not None else ""
        return f"{self.reason}{change}: {where}, event {self.event}, instruction {self.icount}"


@dataclass(frozen=True)
class _Reply:
    """The answer to one MI command: its result payload, the console text, and the stop it caused."""
    payload: dict[str, Any]
    console: str
    stopped: dict[str, Any] | None


def _location(file: str | None, line: int | None, pc: int) -> str:
    return f"{Path(file).name}:{line}" if file and line else f"{pc:#x}"


def _mi_quote(text: str) -> str:
    """An MI c-string argument."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _int(text: str | None) -> int | None:
    return int(text, 0) if text is not None else None


class _Gdb:
    """One GDB process speaking MI3: numbered commands in, parsed records out, SIGINT forwarded."""

    def __init__(self, argv: list[str]):
        # A session of its own (os.setsid before exec, done by this interpreter: no `setsid` program
        # needed): a Ctrl-C typed at the terminal reaches only us, and we forward it to GDB only while
        # the target runs (a SIGINT at any other moment would abort GDB's wait for the stub and drop
        # the connection).
        self._controller = GdbController([sys.executable, "-c", _EXEC_IN_NEW_SESSION, *argv])
        self._process = self._controller.gdb_process
        self._token = 0
        self._running = False
        self.on_progress: Callable[[Progress], None] | None = None    # given the stub's progress lines

    def command(self, mi_command: str, timeout: float | None = COMMAND_TIMEOUT) -> _Reply:
        """Send one MI command; wait for its result and, if it ran the target, for the stop."""
        self._token += 1
        token = self._token
        self._controller.write(f"{token}{mi_command}", read_response=False)
        console: list[str] = []
        payload: dict[str, Any] | None = None
        with self._forward_interrupts():
            while payload is None or self._running:
                deadline = None if self._running or timeout is None else time.monotonic() + timeout
                for record in self._read(deadline, f"`{mi_command}` in {timeout} s"):
                    kind, message = record["type"], record["message"]
                    progress = parse_progress_line(record["payload"]) if kind == "target" and \
                        isinstance(record["payload"], str) else None
                    if progress is not None:            # never part of a command's output
                        if self.on_progress is not None:
                            self.on_progress(progress)
                    elif kind in ("console", "target") and record["payload"]:
                        console.append(record["payload"])
                    elif kind == "result" and record["token"] == token:
                        if message == "error":
                            raise DebugError(_one_line((record["payload"] or {}).get("msg", "GDB error")))
                        payload = record["payload"] or {}
                        self._running = message == "running"
                    elif kind == "notify" and message == "stopped" and payload is not None:
                        self._running = False
                        return _Reply(payload, "".join(console), record["payload"] or {})
        return _Reply(payload, "".join(console), None)

    def _read(self, deadline: float | None, awaited: str) -> list[dict]:
        """The next records GDB writes, waiting at most until `deadline` (None: as long as it takes)."""
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DebugError(f"GDB did not answer {awaited}")
            try:
                ready, _, _ = select.select([self._process.stdout], [], [], remaining)
            except InterruptedError:
                continue
            records = self._controller.get_gdb_response(timeout_sec=0, raise_error_on_timeout=False)
            if records:
                return records
            if ready and self._process.poll() is not None:
                raise DebugError(f"GDB exited unexpectedly (status {self._process.returncode})")

    @contextmanager
    def _forward_interrupts(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, lambda number, frame: self.interrupt())
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def interrupt(self) -> None:
        """Stop a running target (as Ctrl-C in GDB does); ignored when nothing runs."""
        if self._running and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGINT)

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._controller.write("-gdb-exit", read_response=False)
                self._process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
        self._controller.exit()


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Server:
    """A `xenrr serve SESSION` process on a free loopback port. Its output goes to a temporary file
    (never a pipe nobody drains); the port is read from its `listening on 127.0.0.1:PORT` line."""

    def __init__(self, session: Path, image: Path | None):
        self.session = session
        argv = [sys.executable, "-m", "dom0.cli", "serve", str(session), "--port", "0"]   # 0: any free port
        if image is not None:
            argv += ["--image", str(image)]
        self._output = tempfile.TemporaryFile()
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._output,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.port = self._wait_listening()

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            found = re.search(rb"listening on 127\.0\.0\.1:(\d+)", self.output())
            if found:
                return int(found.group(1))
            if self._process.poll() is not None:
                lines = self.output().decode(errors="replace").strip().splitlines()
                self.close()
                raise DebugError(lines[-1].removeprefix("xenrr: error: ") if lines
                                 else f"xenrr serve exited with status {self._process.returncode}")
            time.sleep(0.02)
        self.close()
        raise DebugError(f"xenrr serve did not start listening in {SERVER_START_TIMEOUT:.0f} s")

    def output(self) -> bytes:
        self._output.seek(0)
        return self._output.read()

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._output.close()


class Debugger:
    """A GDB connected to a replay. Use `xenrr_debug()` to make one; close it (or use `with`) when done."""

    def __init__(self, gdb: _Gdb, server: _Server):
        self._gdb = gdb
        self._server = server
        self._events: list[Event] | None = None
        self._register_names: list[str] | None = None
        self._vcpu_count: int | None = None
        self.last_stop: Stop | None = None
        self.event_count = 0          # input events in the recording (known after the first stop)
        self.start_icount = 0         # where the recording starts (a running domain's: later than 0)
        self.image: Path | None = None  # the guest ELF whose symbols GDB has

    # ------------------------------------------------------------------ life cycle
    def __repr__(self) -> str:             # shown in the values of a failed assert
        return f"<Debugger on {self._server.session}>"

    def __enter__(self) -> Debugger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop GDB and the server."""
        self._gdb.close()
        self._server.close()

    def reset(self) -> None:
        """Delete every breakpoint and watchpoint and go back to the start of the recording: the first
        instruction, before any input event (as a new Debugger starts)."""
        self.delete()
        if self.goto_icount(0).event > 0:      # inputs logged at instruction 0 were applied: undo them
            self.goto_event(1)

    # ------------------------------------------------------------------ the recording
    def events(self, first: int | None = None, last: int | None = None, kind: str | None = None) -> list[Event]:
        """Input events `first`..`last` (inclusive, numbered from 1; all by default); with `kind` only
        those of that kind (a name of the log's vocabulary, e.g. "console-input"; several: comma-separated;
        `monitor help` lists them all)."""
        if self._events is None:
            self._events = _parse_events(self._monitor("events"))
        events = self._events
        if kind is not None:
            events = _parse_events(self._monitor(f"events --kind {''.join(kind.split())}"))
        return [event for event in events
                if (first is None or event.number >= first) and (last is None or event.number <= last)]

    def event(self, number: int) -> Event:
        """Input event `number`; DebugError if the recording has no such event."""
        events = self.events()
        if not 1 <= number <= len(events):
            raise DebugError(f"event {number} does not exist: the recording has events 1 to {len(events)}")
        return events[number - 1]

    def damage(self) -> str | None:
        """None for a whole log; for a damaged one, one line saying what was lost (the replay ends where
        the usable part of the log does)."""
        output = self._monitor("damage").strip()
        return None if output == "the log is whole" else output

    def when(self) -> tuple[int, int]:
        """(event number, instruction count) of the current position: the last input event applied
        (0 before the first) and the guest instructions retired."""
        return self._when()

    def where(self) -> Stop:
        """The current position as a Stop with reason "here"."""
        return self._here("here")

    def bookmark(self, name: str) -> None:
        """Name the current position; `goto_bookmark(name)` comes back to it (as long as this Debugger lives)."""
        self._monitor(f"bookmark {_bookmark_name(name)}")

    def bookmarks(self) -> dict[str, int]:
        """The bookmarks: name -> instruction count."""
        output = self._monitor("bookmarks")
        return {found.group(1): int(found.group(2))
                for found in re.finditer(r"^(\S+)\s+icount (\d+)$", output, re.MULTILINE)}

    # ------------------------------------------------------------------ motion
    def goto_event(self, number: int) -> Stop:
        """Go to just before input event `number` is injected (forwards or backwards): the Stop's
        `event` is then number - 1."""
        return self._goto(f"goto {int(number)}")

    def goto_icount(self, icount: int) -> Stop:
        """Go to the point where exactly `icount` guest instructions have retired."""
        return self._goto(f"goto-icount {int(icount)}")

    def goto_bookmark(self, name: str) -> Stop:
        """Go to the position `bookmark(name)` named, forwards or backwards (reason "goto")."""
        return self._goto(f"goto-bookmark {_bookmark_name(name)}")

    def cont(self) -> Stop:
        return self._motion("-exec-continue")

    def reverse_continue(self) -> Stop:
        return self._motion("-exec-continue --reverse")

    def step(self) -> Stop:
        return self._motion("-exec-step")

    def reverse_step(self) -> Stop:
        return self._motion("-exec-step --reverse")

    def next(self) -> Stop:
        return self._motion("-exec-next")

    def reverse_next(self) -> Stop:
        return self._motion("-exec-next --reverse")

    def finish(self) -> Stop:
        return self._motion("-exec-finish")

    def reverse_finish(self) -> Stop:
        return self._motion("-exec-finish --reverse")

    def stepi(self) -> Stop:
        return self._motion("-exec-step-instruction")

    def reverse_stepi(self) -> Stop:
        return self._motion("-exec-step-instruction --reverse")

    # ------------------------------------------------------------------ breakpoints
    def break_at(self, location: str) -> int:
        """Set a breakpoint at a GDB location (`handle_key`, `editor.c:35`, `*0x100123`), with a
        condition as GDB's `break` takes one (`handle_key if ed.len == 0`; the stub evaluates it
        where GDB can compile it); its number."""
        where, *condition = re.split(r"\s+if\s+", location.strip(), maxsplit=1)
        options = f"-c {_mi_quote(condition[0])} " if condition else ""
        reply = self._gdb.command(f"-break-insert {options}{_mi_quote(where)}")
        return int(reply.payload["bkpt"]["number"])

    def watch(self, expression: str, access: str = "write") -> int:
        """Set a watchpoint on a GDB expression; access is "write", "read" or "access". Its number."""
        flags = {"write": "", "read": "-r ", "access": "-a "}
        if access not in flags:
            raise DebugError(f"watch access must be write, read or access, not {access!r}")
        reply = self._gdb.command(f"-break-watch {flags[access]}{_mi_quote(expression)}")
        watchpoint = next(value for key, value in reply.payload.items() if key.endswith("wpt"))
        return int(watchpoint["number"])

    def delete(self, number: int | None = None) -> None:
        """Delete breakpoint/watchpoint `number`, or all of them."""
        if number is None:
            self._gdb.command('-interpreter-exec console "delete"')
        else:
            self._gdb.command(f"-break-delete {int(number)}")

    # ------------------------------------------------------------------ state
    def eval(self, expression: str) -> Any:
        """The value of a C expression as a Python value: int (integers, pointers), bool, float, str (a
        plain char, a char array or char pointer up to its NUL, an enumerator's name), list (arrays),
        dict (structs and unions); the rule is gdbext/gdbvalues.py's (see the README)."""
        command = f"python xenrr_value({json.dumps(expression)})"
        reply = self._gdb.command(f"-interpreter-exec console {_mi_quote(command)}")
        lines = reply.console.strip().splitlines()
        try:
            answer = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise DebugError(f"GDB did not evaluate {expression!r}: {_one_line(reply.console)!r}") from None
        if "error" in answer:
            raise DebugError(answer["error"])
        return answer["value"]

    def eval_text(self, expression: str) -> str:
        """GDB's text for the value of an expression, as `print` shows it (`65 'A'`, `0x44434241`, `{...}`)."""
        return self._gdb.command(f"-data-evaluate-expression {_mi_quote(expression)}").payload["value"]

    def read_memory(self, address: int | str, length: int) -> bytes:
        """`length` bytes of guest memory at an address (or an address expression such as `&ed`)."""
        where = _mi_quote(address if isinstance(address, str) else hex(address))
        reply = self._gdb.command(f"-data-read-memory-bytes {where} {int(length)}")
        return b"".join(bytes.fromhex(block["contents"]) for block in reply.payload["memory"])

    def registers(self) -> dict[str, int]:
        """The vCPU's integer registers by GDB's names (rax, rip, eflags, ...)."""
        if self._register_names is None:
            self._register_names = self._gdb.command("-data-list-register-names").payload["register-names"]
        values = self._gdb.command("-data-list-register-values --skip-unavailable x").payload["register-values"]
        registers = {}
        for entry in values:
            name = self._register_names[int(entry["number"])]
            if name and re.fullmatch(r"-?0x[0-9a-fA-F]+|-?\d+", entry["value"]):
                registers[name] = int(entry["value"], 0)
        return registers

    def threads(self) -> list[Thread]:
        """The domain's vCPUs, as GDB's `info threads` has them from the stub."""
        info = self._gdb.command("-thread-info").payload
        threads = []
        for entry in info["threads"]:
            words = entry.get("details", "").split()
            frame = entry.get("frame") or {}
            threads.append(Thread(int(entry["id"]) - 1, words[-1] if words else "", frame.get("func"),
                                  int(frame.get("addr", "0"), 16), entry["id"] == info.get("current-thread-id")))
        return threads

    @property
    def vcpu_count(self) -> int:
        """How many vCPUs the replayed domain has (fixed for a recording)."""
        if self._vcpu_count is None:
            self._vcpu_count = len(self._gdb.command("-thread-info").payload["threads"])
        return self._vcpu_count

    def select_thread(self, vcpu: int) -> Stop:
        """Make `vcpu` the one registers, backtraces and expressions are about (GDB's `thread N+1`)."""
        reply = self._gdb.command(f"-thread-select {int(vcpu) + 1}")
        return self._position("here", reply.payload.get("frame") or {})

    def backtrace(self) -> list[Frame]:
        """The call stack, innermost frame first."""
        frames = self._gdb.command("-stack-list-frames").payload["stack"]
        return [Frame(int(frame["level"]), frame.get("func"), frame.get("file"), _int(frame.get("line")),
                      int(frame["addr"], 16)) for frame in frames]

    def gdb(self, command: str) -> str:
        """Run any GDB command, as typed at GDB's prompt; its output. A command that runs the target
        (`reverse-continue`, `until 40`, ...) waits for the stop and updates `last_stop`."""
        reply = self._gdb.command(f"-interpreter-exec console {_mi_quote(command)}", timeout=None)
        if reply.stopped is not None:
            self.last_stop = self._stop_from(reply)
        return reply.console

    def complete(self, text: str) -> list[str]:
        """GDB's completions of a command line (e.g. `print ed.hi` -> [`print ed.hist_count`])."""
        return self._gdb.command(f"-complete {_mi_quote(text)}").payload.get("matches", [])

    def interrupt(self) -> None:
        """Interrupt a running motion from another thread (a SIGINT does the same in the main thread)."""
        self._gdb.interrupt()

    def report_progress(self, report: Callable[[Progress], None] | None, after: float = 0.5) -> None:
        """Call `report(Progress(command, done, total))` a few times a second while a continue or
        reverse-continue runs, once it has run `after` seconds (the stub's `monitor set progress`);
        None: no more reports."""
        self._monitor(f"set progress on {after:g}" if report is not None else "set progress off")
        self._gdb.on_progress = report

    # ------------------------------------------------------------------ internals
    def _monitor(self, command: str) -> str:
        """A stub `monitor` command's output; the stub reports failures as text `error: ...`."""
        output = self._gdb.command(f"-interpreter-exec console {_mi_quote('monitor ' + command)}").console
        if output.startswith("error: "):
            raise DebugError(_one_line(output.removeprefix("error: ")))
        return output

    def _goto(self, monitor_command: str) -> Stop:
        output = self._monitor(monitor_command)     # `[at the end of the recording; ]event K of N, icount I`
        reason = "history-end" if output.startswith("at the end") else "goto"
        self.last_stop = self._here(reason, output)
        return self.last_stop

    def _motion(self, mi_command: str) -> Stop:
        reply = self._gdb.command(mi_command, timeout=None)
        self.last_stop = self._stop_from(reply)
        return self.last_stop

    def _stop_from(self, reply: _Reply) -> Stop:
        stopped = reply.stopped or {}
        reason = stopped.get("reason")
        if reason == "signal-received" and stopped.get("signal-name") == "SIGINT":
            reason = "interrupt"
        value = stopped.get("value") or {}
        stop = self._position(_REASONS.get(reason, reason or "signal"), stopped.get("frame") or {},
                              value.get("old"), value.get("new"))
        if reason == "no-history" or (reason is None and NO_HISTORY_TEXT in reply.console):
            # GDB 13 leaves the reason out of *stopped for `replaylog`; the position tells which end.
            stop = replace(stop, reason="history-start" if stop.icount <= self.start_icount else "history-end")
        return stop

    def _when(self, when_text: str | None = None) -> tuple[int, int]:
        """Parse the stub's `monitor when` answer (asking for it unless one is at hand)."""
        text = when_text or self._monitor("when")
        event, self.event_count, icount = _parse_when(text)
        start = re.search(r"the recording starts at icount (\d+)", text)
        self.start_icount = int(start.group(1)) if start else 0
        return event, icount

    def _here(self, reason: str, when_text: str | None = None) -> Stop:
        # A monitor command may have moved the target behind GDB's back: make GDB re-read registers.
        self._gdb.command('-interpreter-exec console "maintenance flush register-cache"')
        return self._position(reason, self._gdb.command("-stack-info-frame").payload["frame"], when_text=when_text)

    def _position(self, reason: str, frame: dict[str, Any], old: str | None = None, new: str | None = None,
                  when_text: str | None = None) -> Stop:
        event, icount = self._when(when_text)
        thread = self._gdb.command("-thread-list-ids").payload.get("current-thread-id", "1")
        return Stop(reason, frame.get("func"), frame.get("file"), _int(frame.get("line")),
                    int(frame.get("addr", "0"), 16), icount, event, frame.get("fullname"), old, new,
                    int(thread) - 1)


def _parse_events(text: str) -> list[Event]:
    """`monitor events` output: one event per line, `[=>] NUMBER ICOUNT KIND DETAIL...`."""
    events = []
    for line in text.splitlines():
        found = re.match(r"(?:=>|\s)\s*(\d+)\s+(\d+)\s+(\S+)\s+(.*)$", line)
        if found:
            events.append(Event(int(found.group(1)), int(found.group(2)), found.group(3), found.group(4).strip()))
    return events


def _bookmark_name(name: str) -> str:
    if not name or len(name.split()) != 1:
        raise DebugError(f"a bookmark name is one word, not {name!r}")
    return name


def _parse_when(text: str) -> tuple[int, int, int]:
    """`monitor when` output, `event K of N, icount I, ...`: (K, N, I)."""
    found = re.search(r"event (\d+) of (\d+), icount (\d+)", text)
    if not found:
        raise DebugError(f"unexpected answer to `monitor when`: {_one_line(text)!r}")
    return int(found.group(1)), int(found.group(2)), int(found.group(3))


def xenrr_debug(session: str | os.PathLike, image: str | os.PathLike | None = None) -> Debugger:
    """Start `xenrr serve SESSION` and a GDB connected to it; returns a Debugger (a context manager).

    `image` is the guest ELF when it is no longer where it was recorded (by default the stub names
    the image it replays, and GDB loads its symbols). GDB starts at the first instruction."""
    session = Path(session)
    if not session.is_file():
        raise DebugError(f"cannot read {session}: no such file")
    try:
        gdb_path = find_gdb()
    except GdbNotFound as error:
        raise DebugError(str(error)) from None
    server = _Server(session, Path(image) if image is not None else None)
    try:
        gdb = _Gdb([gdb_path, "--interpreter=mi3", "-nx", "-q"] + ([str(image)] if image is not None else []))
    except BaseException:
        server.close()
        raise
    debugger = Debugger(gdb, server)
    try:
        for setting in ("pagination off", "confirm off", "width 0", "height 0", f"remotetimeout {REMOTE_TIMEOUT}"):
            gdb.command(f"-gdb-set {setting}")
        gdb.command(f"-interpreter-exec console {_mi_quote('source ' + str(GDB_VALUES))}")
        gdb.command(f"-target-select remote 127.0.0.1:{server.port}")
        debugger.image = Path(image) if image is not None else Path(debugger._monitor("image").strip())
        if image is None:
            gdb.command(f"-file-exec-and-symbols {_mi_quote(str(debugger.image))}")
            # A new executable drops the libraries' symbols: read the stub's hypercall-page symbol file
            # again (stub/hypercall_frames.py), or GDB cannot unwind from a stop in a hypercall.
            gdb.command('-interpreter-exec console "sharedlibrary"')
        debugger.last_stop = debugger.where()
    except BaseException:
        debugger.close()
        raise
    return debugger
