"""The progress lines the stub sends as console output (`O` packets) while a long motion runs.

Owns their one format, written by the stub (stub/server.py, after `monitor set progress on`) and read
back by clients (gdbext/api.py), so that the two never drift apart. A line is plain text a person can
read in stock GDB too: `xenrr progress: reverse-continue 1200000 of 40000000 instructions`.
Invariant: `parse_progress_line(progress_line(c, d, t)) == Progress(c, d, t)`, and no other text the
stub or GDB prints parses as a progress line.
"""
from __future__ import annotations

import re
from typing import NamedTuple

_PREFIX = "xenrr progress: "
_LINE = re.compile(re.escape(_PREFIX) + r"(?P<command>[a-z-]+) (?P<done>\d+) of (?P<total>\d+) instructions\n?")


class Progress(NamedTuple):
    """How far a running motion has got: `done` of `total` instructions to replay or scan."""
    command: str      # "continue" or "reverse-continue"
    done: int
    total: int


def progress_line(command: str, done: int, total: int) -> str:
    """The console line that reports `done` of `total` instructions of `command`."""
    return f"{_PREFIX}{command} {done} of {total} instructions\n"


def parse_progress_line(text: str) -> Progress | None:
    """The progress a console line reports, or None if it is any other text."""
    found = _LINE.fullmatch(text)
    if found is None:
        return None
    return Progress(found.group("command"), int(found.group("done")), int(found.group("total")))
