"""The ABI probe guest under `xenrr run`: the trap table, exception delivery and the newer hypercalls
give what real Xen gives.

The specification is guests/abiprobe/README.md: its transcript block lists the value real Xen 4.17
returns for each probe (read from the README here, so the document and the test cannot drift) and
its table cites the Xen source behind each. Among them are the error codes xenrr used to get wrong:
set_trap_table with a bad pointer (was 0, Xen -EFAULT), vm_assist with an unknown type (was 0,
-EINVAL), XENVER_get_features submap 7 (was 0, -EINVAL), EVTCHNOP_unmask of port 0 (was -EINVAL, 0),
CALLBACKOP_register of the NMI callback (was -EINVAL, 0); and guest faults, which crashed the domain
instead of entering the guest's handlers.
"""
from __future__ import annotations

from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "guests" / "abiprobe" / "README.md"


def documented_transcript() -> list[str]:
    section = README.read_text().split("## The transcript", 1)[1].split("## Why Xen answers so", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.startswith("    ")]
    assert lines[0] == "abiprobe" and lines[-1] == "abiprobe done" and len(lines) > 40, lines
    return lines


TRANSCRIPT = documented_transcript()
PROBES = TRANSCRIPT[1:-1]


@pytest.fixture(scope="module")
def probe_run(abiprobe_elf, xenrr):
    return xenrr("run", abiprobe_elf, "--clock", "virtual")


@pytest.mark.parametrize("expected", PROBES, ids=[line.split("=")[0] for line in PROBES])
def test_probe_result_is_xens(probe_run, expected):
    name = expected.split("=")[0]
    got = [line for line in probe_run.stdout.split("\r\n") if line.split("=")[0] == name]
    assert got == [expected]


def test_transcript_is_complete_and_the_guest_powers_off(probe_run):
    assert probe_run.stdout.split("\r\n")[:-1] == TRANSCRIPT
    assert probe_run.status == 0, probe_run.stderr
    assert "Traceback" not in probe_run.stderr


def test_a_fault_without_a_handler_still_crashes_with_its_vector(hostile_elf, xenrr):
    run = xenrr("run", hostile_elf, "--clock", "virtual", "--keys", "u")
    assert run.status == 1
    assert "invalid instruction (#UD, no handler in the trap table)" in run.stderr
