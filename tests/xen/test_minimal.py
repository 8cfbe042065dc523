"""The minimal guest under `xenrr run`: its documented transcript and exit status, under both clocks.

The specification is guests/minimal/README.md. minimal uses the ABI differently from kbdshell (notes in
a section, C entry on the boot stack, one-shot timers, busy-polling with SCHEDOP_yield, a full output
ring), so its transcript passing means the hypervisor does not depend on kbdshell's particulars.
"""
from __future__ import annotations

import pytest

INPUT_MAX = 32
BULK_TAIL = " abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def expected_transcript(line: str) -> str:
    lines = (["minimal: hello from the console ring", "minimal: xen_version ok"]
             + [f"minimal: line {i:02d}{BULK_TAIL}" for i in range(48)]
             + ["minimal: one-shot timer fired while masked", "minimal: upcall frame ok",
                "minimal: type a line", f"minimal: read '{line}'", "minimal: bye"])
    assert len(lines) == 55
    return "".join(text + "\r\n" for text in lines)


@pytest.mark.parametrize("clock", ["virtual", "real"])
def test_transcript_and_power_off(minimal_elf, xenrr, clock):
    run = xenrr("run", minimal_elf, "--clock", clock, "--keys", r"hello world\r", timeout=60)
    assert run.stdout == expected_transcript("hello world")
    assert run.status == 0, run.stderr
    assert run.stderr.splitlines() == ["minimal: hello from console_io", "minimal: bye",
                                       f"xenrr: domain shut down (poweroff) after {run.instructions} instructions"]


def test_empty_lines_are_skipped_and_long_input_is_cut(minimal_elf, xenrr):
    typed = "0123456789" * 4
    run = xenrr("run", minimal_elf, "--clock", "virtual", "--keys", r"\r\n\r" + typed + r"\n", timeout=60)
    assert run.stdout == expected_transcript(typed[:INPUT_MAX])
    assert run.status == 0, run.stderr


def test_virtual_clock_run_is_reproducible(minimal_elf, xenrr):
    runs = [xenrr("run", minimal_elf, "--clock", "virtual", "--keys", r"again\r", timeout=60) for _ in range(2)]
    assert runs[0].instructions == runs[1].instructions
    assert runs[0].stdout == runs[1].stdout == expected_transcript("again")
