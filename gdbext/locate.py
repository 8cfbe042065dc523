"""Finding the GDB executable, and the one message every command gives when it is missing.

Owns the lookup `xenrr debug`, `xenrr shell`, `xenrr check` and the scripted API (gdbext.api) do
before they start GDB. Invariant: a missing GDB is reported in exactly one way, `GDB_MISSING`, before
any process is started.
"""
from __future__ import annotations

import shutil

GDB_MISSING = "gdb is not installed (Debian: apt-get install gdb)"


class GdbNotFound(Exception):
    """No `gdb` on PATH; the message says how to install it."""


def find_gdb() -> str:
    """The path of the `gdb` on PATH; GdbNotFound(GDB_MISSING) if there is none."""
    gdb = shutil.which("gdb")
    if gdb is None:
        raise GdbNotFound(GDB_MISSING)
    return gdb
