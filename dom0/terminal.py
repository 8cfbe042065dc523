"""What xenrr writes to the user's terminal: the guest's console, xenrr's own messages, progress bars.

Owns keeping them out of each other's way. It follows where the guest's output left the cursor
(mid-line after a prompt, or at a line start): xenrr's own messages then start on a fresh line, and
a progress bar (tqdm, on stderr) is drawn on a line of its own, cleared before the guest writes and
drawn again at the next progress report. A bar appears only after PROGRESS_DELAY_SECONDS, so short
work stays silent.
A reader that goes away (a closed pipe) never ends the work: that stream is dropped, and said so.
Invariant: the guest's output reaches stdout byte for byte; what xenrr adds around it (a line
break, a bar) goes to stderr, and only when both stdout and stderr are terminals.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

PROGRESS_DELAY_SECONDS = 0.5
ECHO_ROOM = 2                  # columns a progress bar leaves free at the end of its line


class Terminal:
    """stdout and stderr as the user sees them."""

    def __init__(self) -> None:
        self.mid_line = False                 # the guest's output left the cursor after some text
        self._gone: set[str] = set()          # "stdout"/"stderr" once their reader went away (now /dev/null)
        self._bar: tqdm | None = None
        self._bar_shown = False

    @staticmethod
    def interactive() -> bool:
        return sys.stdout.isatty() and sys.stderr.isatty()

    def _write(self, stream: TextIO, data: bytes) -> None:
        if self._bar is not None and self._bar_shown:
            self._bar.clear()
            self._bar_shown = False
        if self._write_unless_gone(stream, data) and data:
            self.mid_line = not data.endswith(b"\n")

    def _write_unless_gone(self, stream: TextIO, data: bytes) -> bool:
        """Write and flush; False once the stream's reader has gone (`xenrr record ... | head`). A closed
        pipe never ends a run or a verification: the stream is pointed at /dev/null (nothing more fails
        on it, at exit included), the work goes on, and stderr (while it is there) says so once."""
        name = "stdout" if stream is sys.stdout else "stderr"
        if name in self._gone:
            return False
        try:
            stream.flush()
            stream.buffer.write(data)
            stream.buffer.flush()
            return True
        except BrokenPipeError:
            self._gone.add(name)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
            if stream is sys.stdout:
                self.say("xenrr: stdout was closed: going on without showing it")
            return False

    def write_console(self, data: bytes) -> None:
        """The guest's PV console output (stdout)."""
        self._write(sys.stdout, data)

    def write_output(self, data: bytes) -> None:
        """xenrr's own output on stdout (a JSON summary)."""
        self._write_unless_gone(sys.stdout, data)

    def write_hypervisor_console(self, data: bytes) -> None:
        """The guest's CONSOLEIO_write text (stderr)."""
        self._write(sys.stderr, data)

    def _fresh_line(self) -> None:
        if self.mid_line and self.interactive():
            sys.stderr.write("\n")
        self.mid_line = False

    def say(self, text: str) -> None:
        """One message of xenrr's own on stderr, on a line of its own."""
        if self._bar is not None and self._bar_shown:
            self._bar.clear()
            self._bar_shown = False
        self._fresh_line()
        self._write_unless_gone(sys.stderr, (text + "\n").encode(errors="surrogateescape"))   # a file name as it was given

    @contextmanager
    def progress(self, total: int, description: str, unit: str, enabled: bool = True,
                 delay: float = PROGRESS_DELAY_SECONDS) -> Iterator[Callable[[int], None]]:
        """A progress bar for work of `total` units: yields `report(done)`. Nothing is drawn unless
        `enabled` and both outputs are terminals, nor before `delay` seconds have passed (0 for work
        known to be long already: the debugger shell's motions, reported only after a while)."""
        started = time.monotonic()
        shown = enabled and self.interactive()

        def report(done: int) -> None:
            if not shown or time.monotonic() - started < delay:
                return
            if not self._bar_shown:
                self._fresh_line()
            if self._bar is None:
                # Drawn only here (refresh): never by tqdm on its own, so never over the guest's text.
                # Two columns short of the width: a `^C` the terminal echoes after the bar stays on its
                # line, which closing the bar then clears (a wrapped line would keep the bar on screen).
                from tqdm import tqdm      # here: a command that draws no bar starts without it
                width = shutil.get_terminal_size().columns - ECHO_ROOM
                self._bar = tqdm(total=total, initial=min(done, total), desc=description, unit=unit,
                                 unit_scale=True, file=sys.stderr, leave=False, mininterval=float("inf"),
                                 ncols=max(width, 20))
            self._bar.n = min(done, total)
            self._bar.refresh()
            self._bar_shown = True

        try:
            yield report
        finally:
            if self._bar is not None:
                self._bar.close()             # leave=False: the bar's line is cleared
                self._bar, self._bar_shown = None, False
