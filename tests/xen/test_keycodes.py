"""xen/keycodes.py against the kernel's own table, linux/input-event-codes.h (the keycodes a PV
keyboard event carries: io/kbdif.h's struct xenkbd_key.keycode is a Linux input keycode)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from xen.keycodes import KEY_MAX, KEYCODES, keycode, keycode_name

HEADER = Path("/usr/include/linux/input-event-codes.h")


@pytest.mark.skipif(not HEADER.exists(), reason="needs the kernel headers (linux-libc-dev)")
def test_every_keycode_is_the_kernel_headers():
    defined = {match.group(1): int(match.group(2), 0)
               for match in re.finditer(r"^#define\s+KEY_(\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", HEADER.read_text(), re.M)}
    assert {name: defined.get(name) for name in KEYCODES} == KEYCODES
    assert defined["MAX"] == KEY_MAX
    # the table names every key of a PC keyboard up to KEY_DELETE, and nothing past it
    assert sorted(set(KEYCODES.values())) == sorted({code for name, code in defined.items()
                                                     if 1 <= code <= defined["DELETE"] and name != "RESERVED"})


def test_names_and_numbers_go_both_ways():
    assert keycode("KEY_A") == keycode("a") == 30
    assert keycode_name(30) == "KEY_A" and keycode_name(0x2FF) == "keycode 767"
    with pytest.raises(KeyError):
        keycode("NOSUCHKEY")
