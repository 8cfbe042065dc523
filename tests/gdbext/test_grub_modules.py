"""rr-grub-modules reads GRUB's module list with fixed offsets of struct grub_dl and grub_dl_segment:
they must be the ones in the DWARF of the installed grub-xen-dbg modules (stock GDB's `ptype/o`)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

MODULE = Path("/usr/lib/grub/x86_64-xen/normal.module")
EXTENSION = Path(__file__).resolve().parents[2] / "gdbext" / "xenrr_gdb.py"
pytestmark = pytest.mark.skipif(not MODULE.exists(), reason="grub-xen-dbg is missing: run `make`")


def _offsets(type_name: str) -> dict[str, int]:
    out = subprocess.run(["gdb", "-nx", "-batch", "-ex", f"ptype/o {type_name}", str(MODULE)],
                         capture_output=True, text=True, timeout=60).stdout
    return {match[2]: int(match[1]) for match in re.finditer(r"/\*\s+(\d+)\s+\|\s+\d+ \*/.*?\**(\w+);", out)}


def _extension_constants() -> dict[str, int]:
    out = subprocess.run(["gdb", "-nx", "-batch", "-ex", f"source {EXTENSION}", "-ex",
                          "python print(GRUB_DL_NAME, GRUB_DL_SEGMENT, GRUB_DL_NEXT, GRUB_SEGMENT_NEXT, "
                          "GRUB_SEGMENT_ADDR, GRUB_SEGMENT_SECTION)"], capture_output=True, text=True, timeout=60)
    values = [int(word) for word in out.stdout.split()]
    names = ("dl.name", "dl.segment", "dl.next", "segment.next", "segment.addr", "segment.section")
    return dict(zip(names, values))


def test_struct_offsets_match_grubs_dwarf():
    dl, segment = _offsets("struct grub_dl"), _offsets("struct grub_dl_segment")
    assert _extension_constants() == {"dl.name": dl["name"], "dl.segment": dl["segment"], "dl.next": dl["next"],
                                      "segment.next": segment["next"], "segment.addr": segment["addr"],
                                      "segment.section": segment["section"]}
