"""`xenrr shell` driven as a person would: keys typed into a real terminal (tmux), the screen read back.

Each test starts the shell in a tmux window of its own (a private tmux server, history in a temporary
XDG_STATE_HOME) on a recording of kbdshell's long-line bug, where the n-th key typed is event n + 1.
"""
from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dom0.logfile import LogReader
import xen.inject  # noqa: F401  (registers the input kinds)
from xen.logrecord import FIRST_INPUT_KIND, kind_names

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "(xenrr) "
PROMPT_SHOWN = PROMPT.rstrip()            # tmux does not show trailing spaces
SCREEN_TIMEOUT = 30.0
_names = itertools.count()


class TmuxShell:
    """`xenrr shell SESSION` running in a 120x40 tmux window."""

    def __init__(self, session: Path, state_home: Path, *options: str):
        self.server = f"xenrr-test-{os.getpid()}-{next(_names)}"
        command = shlex.join([sys.executable, "-m", "dom0.cli", "shell", str(session), *options])
        self._tmux("new-session", "-d", "-x", "120", "-y", "40", "-c", str(ROOT),
                   "-e", f"XDG_STATE_HOME={state_home}", f"{command}; echo SHELL-EXITED-$?; sleep 600")
        try:
            self.wait_for(PROMPT_SHOWN)
        except AssertionError:
            self.close()
            raise

    def _tmux(self, *arguments: str) -> str:
        done = subprocess.run(["tmux", "-L", self.server, *arguments], capture_output=True, text=True, check=True)
        return done.stdout

    def type(self, text: str, enter: bool = True) -> None:
        self._tmux("send-keys", "-l", text)
        if enter:
            self.press("Enter")

    def press(self, key: str) -> None:
        self._tmux("send-keys", key)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-S", "-200")

    def toolbar(self) -> str:
        """The bottom toolbar once prompt_toolkit has drawn it (it is drawn after the prompt: until then the
        bottom line is the prompt itself)."""
        deadline = time.monotonic() + SCREEN_TIMEOUT
        while True:
            bottom = self._tmux("capture-pane", "-p").rstrip("\n").splitlines()[-1]
            if not bottom.startswith(PROMPT_SHOWN) or time.monotonic() > deadline:
                return bottom
            time.sleep(0.05)

    def wait_for(self, text: str, count: int = 1) -> str:
        """The screen once `text` shows on it `count` times (a new prompt: pass one more than before)."""
        deadline = time.monotonic() + SCREEN_TIMEOUT
        while time.monotonic() < deadline:
            screen = self.screen()
            if screen.count(text) >= count:
                return screen
            time.sleep(0.05)
        raise AssertionError(f"{text!r} x{count} never showed; the screen:\n{self.screen()}")

    def run(self, command: str) -> str:
        """Type a command and wait for the next prompt; the screen output since the command."""
        prompts = self.screen().count(PROMPT_SHOWN)
        self.type(command)
        screen = self.wait_for(PROMPT_SHOWN, prompts + 1)
        return screen[screen.rindex(PROMPT + command):]

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True)


@pytest.fixture(scope="module")
def long_line(long_line_recording) -> Path:
    return long_line_recording


@pytest.fixture
def shell(long_line, tmp_path):
    shell = TmuxShell(long_line, tmp_path / "state")
    yield shell
    shell.close()


def test_tab_completes_guest_symbols_and_struct_members(shell):
    shell.type("break line_ins", enter=False)
    shell.press("Tab")
    shell.wait_for(PROMPT + "break line_insert")
    shell.press("C-u")
    shell.type("print ed.hist_c", enter=False)
    shell.press("Tab")
    shell.wait_for(PROMPT + "print ed.hist_count")
    shell.press("Enter")
    shell.wait_for("ed.hist_count = 0")


def test_reverse_continue_after_watch_stops_at_the_writer(shell):
    output = shell.run("goto 70")
    assert "event 69/80, instruction" in output
    assert "event 69/80 | instruction" in shell.toolbar()
    assert "watchpoint 1: ed.hist_count" in shell.run("watch ed.hist_count")
    output = shell.run("rc")
    assert "line_insert at editor.c:33" in output
    assert "=>   33      ed.line[ed.len++] = c;" in output
    assert "line_insert | editor.c:33" in shell.toolbar()
    output = shell.run("bt")
    assert output.index("#0  line_insert") < output.index("#1  handle_key")
    assert "c = 68 'D'" in shell.run("p c")
    assert "  69  instruction" in shell.run("events 69 69")


def test_function_keys_move_the_replay(shell):
    shell.run("break handle_key")
    prompts = shell.screen().count(PROMPT_SHOWN)
    shell.press("F5")                                  # continue: the first key, event 2
    shell.wait_for(PROMPT_SHOWN, prompts + 1)
    assert "handle_key | editor.c" in shell.toolbar() and "event 2/80" in shell.toolbar()
    shell.press("F10")                                 # next
    shell.wait_for(PROMPT_SHOWN, prompts + 2)
    assert "event 2/80" in shell.toolbar() and "handle_key | editor.c:85" not in shell.toolbar()
    shell.press("S-F5")                                # reverse-continue: back to the breakpoint
    shell.wait_for(PROMPT_SHOWN, prompts + 3)
    assert [PROMPT + "continue", PROMPT + "next", PROMPT + "rc"] == \
        [line.rstrip() for line in shell.screen().splitlines() if line.startswith(PROMPT)][-3:]
    assert "handle_key | editor.c:85" in shell.toolbar()


def test_errors_are_one_line_and_the_shell_goes_on(shell):
    assert 'error: No symbol "no_such_symbol" in current context.' in shell.run("print no_such_symbol")
    assert "error: event 500 does not exist" in shell.run("goto 500")
    assert "unknown command 'frobnicate'" in shell.run("frobnicate")
    assert "usage error: goto EVENT" in shell.run("goto")
    assert "Traceback" not in shell.screen()
    assert "sizeof(ed.line) = 64" in shell.run("p sizeof(ed.line)")


def _input_icounts(session: Path) -> list[int]:
    """The instruction count of each input event of a recording: element n - 1 is event n's."""
    with LogReader(session) as reader:
        return [record.icount for record in reader.records() if record.kind >= FIRST_INPUT_KIND]


def test_events_by_kind_goto_icount_when_and_bookmarks(shell, long_line):
    keys = shell.run("events --kind console-input 66 69")
    assert [line.split()[-1] for line in keys.splitlines()[1:5]] == ["'A'", "'B'", "'C'", "'D'"]
    after = shell.run("events 66 69 --kind console-input")                  # options anywhere
    helped = " ".join(shell.run("help events").split())                      # the kinds of the log's registry
    assert f"--kind one or more of {', '.join(kind_names(FIRST_INPUT_KIND))}" in helped, helped
    assert [line.split()[-1] for line in after.splitlines()[1:5]] == ["'A'", "'B'", "'C'", "'D'"]
    assert "guest time 0.000000000 s" in shell.run("events --kind time")
    icounts = _input_icounts(long_line)
    between = (icounts[68] + icounts[69]) // 2                   # after event 69 ('D'), before event 70
    assert icounts[68] < between < icounts[69]
    output = shell.run(f"goto-icount {between}")
    assert f"instruction {between}" in output
    shell.wait_for(f"event 69/80 | instruction {between}")       # the toolbar follows
    assert f"event 69/80 applied, instruction {between}" in shell.run("when")
    assert f"bookmark here: event 69/80, instruction {between}" in shell.run("bookmark here")
    shell.run("goto 2")
    assert f"here             instruction {between}" in shell.run("bookmark")
    assert f"[event 69/80, instruction {between}" in shell.run("goto here")
    assert "error: no bookmark named 'there'" in shell.run("goto there")


def test_a_damaged_log_opens_saying_what_was_lost(recorder, kbdshell_elf, tmp_path):
    recording = recorder(kbdshell_elf, "--keys", r"echo one\r\p400echo two\r\p400echo three\r\p400halt\r")
    with LogReader(recording.path) as reader:
        cut_at = reader.blocks[2].offset + 10                  # blocks 0 and 1 whole, block 2 cut short
    damaged = tmp_path / "damaged.xrr"
    damaged.write_bytes(recording.path.read_bytes()[:cut_at])
    with LogReader(damaged) as reader:
        kept = [record.icount for record in reader.records() if record.kind >= FIRST_INPUT_KIND]
    shell = TmuxShell(damaged, tmp_path / "state")
    try:
        warning = next(line for line in shell.screen().splitlines() if line.startswith("warning: "))
        assert warning.startswith(f"warning: the log is damaged: what was recorded after event {len(kept)} "
                                  f"(instruction {kept[-1]}) is lost (block 2 at offset ")
    finally:
        shell.close()


def test_goto_option_opens_the_shell_at_an_event(long_line, tmp_path):
    shell = TmuxShell(long_line, tmp_path / "state", "--goto", "70")
    try:
        event_70 = _input_icounts(long_line)[69]                     # goto N stops just before event N
        shell.wait_for(f"event 69/80 | instruction {event_70}")      # the toolbar, drawn with the first prompt
        assert f"[event 69/80, instruction {event_70}" in shell.screen()
    finally:
        shell.close()


def test_history_persists_across_shells(long_line, tmp_path):
    first = TmuxShell(long_line, tmp_path / "state")
    try:
        first.run("print ed.len + 1")
        first.type("quit")
        first.wait_for("SHELL-EXITED-0")
    finally:
        first.close()
    second = TmuxShell(long_line, tmp_path / "state")
    try:
        second.press("Up")
        second.wait_for(PROMPT + "quit")
        second.press("Up")
        second.wait_for(PROMPT + "print ed.len + 1")
    finally:
        second.close()


def interrupt_once_its_bar_shows(shell: TmuxShell, command: str, bar: str, total: str) -> None:
    """Type a long motion, wait for its progress bar (`BAR: NN%|...| DONE/TOTAL [`), press Ctrl-C: the
    motion stops and the bar is cleared."""
    prompts = shell.screen().count(PROMPT_SHOWN)
    shell.type(command)
    shown = shell.wait_for(f"/{total} [")
    assert re.search(rf"^{bar}: +\d+%\|.*\| [\d.]+[kMG]?/{re.escape(total)} \[", shown, re.MULTILINE), shown
    shell.press("C-c")
    shell.wait_for(PROMPT_SHOWN, prompts + 1)
    assert "interrupted" in shell.screen() and f"/{total} [" not in shell.screen()


def test_ctrl_c_interrupts_a_long_continue(kbdshell_elf, xenrr, tmp_path):
    session = tmp_path / "bench.xrr"
    run = xenrr("record", kbdshell_elf, "-o", session, "--clock", "virtual", "--keys", r"bench 500000000\rhalt\r")
    assert run.status == 0, run.stderr
    shell = TmuxShell(session, tmp_path / "state")
    try:
        # A long motion shows a progress bar (after half a second): instructions to the end of the history.
        interrupt_once_its_bar_shows(shell, "continue", "continue", "4.00G")
        assert "bench_loop" in shell.toolbar()
        assert "print 1 + 1" in shell.run("print 1 + 1")
        # Backwards: the total is the distance back to the start of the recording (the most a scan covers).
        shell.run("goto-icount 2000000000")
        interrupt_once_its_bar_shows(shell, "rc", "reverse-continue", "2.00G")
    finally:
        shell.close()
