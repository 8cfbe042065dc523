"""What xenrr writes to the user's terminal: the guest's console, xenrr's own messages, progress bars.

Owns keeping them out of each other's way. It follows where the guest's output left the cursor
(mid-line after a prompt, or at a line start): xenrr's own messages then start on a fresh line, and
a progress bar (tqdm, on stderr) is drawn on a line of its own, cleared before the guest writes and
drawn again at the next progress report. A bar appears only after PROGRESS_DELAY_SECONDS, so short
work stays silent.
Invariant: the guest's output reaches stdout byte for byte; what xenrr adds around it (a line
break, a bar) goes to stderr, and only when both stdout and stderr are terminals.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from tqdm import tqdm

PROGRESS_DELAY_SECONDS = 0.5


class Terminal:
    """stdout and stderr as the user sees them."""

    def __init__(self) -> None:
        self.mid_line = False                 # the guest's output left the cursor after some text
        self._bar: tqdm | None = None
        self._bar_shown = False

    @staticmethod
    def interactive() -> bool:
        return sys.stdout.isatty() and sys.stderr.isatty()

    def _write(self, stream: BinaryIO, data: bytes) -> None:
        if self._bar is not None and self._bar_shown:
            self._bar.clear()
            self._bar_shown = False
        stream.write(data)
        stream.flush()
        if data:
            self.mid_line = not data.endswith(b"\n")

    def write_console(self, data: bytes) -> None:
        """The guest's PV console output (stdout)."""
        self._write(sys.stdout.buffer, data)

    def write_hypervisor_console(self, data: bytes) -> None:
        """The guest's CONSOLEIO_write text (stderr)."""
        self._write(sys.stderr.buffer, data)

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
        print(text, file=sys.stderr, flush=True)

    @contextmanager
    def progress(self, total: int, description: str, unit: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
        """A progress bar for work of `total` units: yields `report(done)`. Nothing is drawn unless
        `enabled` and both outputs are terminals, nor before PROGRESS_DELAY_SECONDS have passed."""
        started = time.monotonic()
        shown = enabled and self.interactive()

        def report(done: int) -> None:
            if not shown or time.monotonic() - started < PROGRESS_DELAY_SECONDS:
                return
            if not self._bar_shown:
                self._fresh_line()
            if self._bar is None:
                # Drawn only here (refresh): never by tqdm on its own, so never over the guest's text.
                self._bar = tqdm(total=total, initial=min(done, total), desc=description, unit=unit,
                                 unit_scale=True, file=sys.stderr, leave=False, mininterval=float("inf"),
                                 dynamic_ncols=True)
            self._bar.n = min(done, total)
            self._bar.refresh()
            self._bar_shown = True

        try:
            yield report
        finally:
            if self._bar is not None:
                self._bar.close()             # leave=False: the bar's line is cleared
                self._bar, self._bar_shown = None, False
