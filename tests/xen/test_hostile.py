"""The hostile guest under `xenrr run`: Xen's error codes for bad hypercalls, crash reports for faults.

The specification is guests/hostile/README.md: its battery block lists the result real Xen returns
for each bad hypercall (read from the README here, so the document and the test cannot drift), and
its command table says how each faulting command must crash the domain. A guest never crashes the
hypervisor: the battery ends in a normal power-off, and a fault ends the run with exit status 1 and
a one-line crash report on stderr, never a Python traceback.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

README = Path(__file__).resolve().parents[2] / "guests" / "hostile" / "README.md"
CRASH_REPORT = re.compile(r"xenrr: domain crashed: (?P<reason>.+) \(rip (?P<rip>0x[0-9a-f]+), "
                          r"instruction (?P<icount>\d+)(?:, address (?P<address>0x[0-9a-f]+))?\)")


def documented_battery() -> list[str]:
    """The `name=value` lines of the README's battery block, in order, then `battery done`."""
    section = README.read_text().split("## The battery", 1)[1].split("Then the guest powers off", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.startswith("    ")]
    assert lines[-1] == "battery done" and len(lines) > 30, lines
    return lines


BATTERY = documented_battery()


def console_lines(stdout: str) -> list[str]:
    assert stdout.endswith("\r\n"), stdout
    return stdout[:-2].split("\r\n")


@pytest.fixture(scope="module")
def battery_run(hostile_elf, xenrr):
    return xenrr("run", hostile_elf, "--clock", "virtual", "--keys", "a")


@pytest.mark.parametrize("expected", BATTERY[:-1], ids=[line.split("=")[0] for line in BATTERY[:-1]])
def test_battery_result_is_xens(battery_run, expected):
    name = expected.split("=")[0]
    got = [line for line in console_lines(battery_run.stdout) if line.split("=")[0] == name]
    assert got == [expected]


def test_battery_transcript_is_complete_and_the_guest_powers_off(battery_run):
    assert console_lines(battery_run.stdout) == ["hostile ready", "hostile: hypercall battery", *BATTERY]
    assert battery_run.status == 0, battery_run.stderr
    assert "Traceback" not in battery_run.stderr
    assert battery_run.stderr.splitlines() == ["hostile: console_io with a truncated count",
                                               f"xenrr: domain shut down (poweroff) after "
                                               f"{battery_run.instructions} instructions"]


def test_unknown_command_is_reported_and_the_guest_reads_on(hostile_elf, xenrr):
    run = xenrr("run", hostile_elf, "--clock", "virtual", "--keys", r"x\r s")
    assert console_lines(run.stdout)[:3] == ["hostile ready", "hostile: unknown command x",
                                             "hostile: shutdown with an unknown reason"]


def test_shutdown_with_an_unknown_reason_shuts_down_as_xen_does(hostile_elf, xenrr):
    """Xen does not validate the reason: the domain shuts down with code 99 and the hypercall never returns."""
    run = xenrr("run", hostile_elf, "--clock", "virtual", "--keys", "s")
    assert console_lines(run.stdout) == ["hostile ready", "hostile: shutdown with an unknown reason"]
    assert "domain shut down (99)" in run.stderr
    assert run.status == 0, run.stderr


# --------------------------------------------------------------------------- faults

def _symbols(elf_path: Path) -> dict[str, tuple[int, int]]:
    """Function name -> [start, end) from the guest's symbol table."""
    with elf_path.open("rb") as file:
        table = ELFFile(file).get_section_by_name(".symtab")
        return {symbol.name: (symbol["st_value"], symbol["st_value"] + symbol["st_size"])
                for symbol in table.iter_symbols() if symbol["st_info"]["type"] == "STT_FUNC"}


def _code_bytes(elf_path: Path, address: int, length: int) -> bytes:
    with elf_path.open("rb") as file:
        for segment in ELFFile(file).iter_segments():
            start = segment["p_vaddr"]
            if segment["p_type"] == "PT_LOAD" and start <= address < start + segment["p_filesz"]:
                return segment.data()[address - start:address - start + length]
    raise AssertionError(f"{address:#x} is not in a loaded segment")


# letter, description line, words the reason must contain, function holding RIP (None: RIP 0), address
FAULTS = [
    ("u", "ud2", ("invalid instruction",), "ud2", None),
    ("w", "write to unmapped address", ("write",), "write_unmapped", 0x400000000000),
    ("r", "read from unmapped address", ("read",), "read_unmapped", 0x400000001000),
    ("c", "store to own code", ("write",), "store_to_code", "code_store_target"),
    ("i", "fault inside the event upcall", ("read",), "faulting_timer_handler", 0x400000002000),
    ("d", "divide by zero", ("divide",), "divide_by_zero", None),
    ("z", "jump to address 0", ("execute",), None, 0),
]


@pytest.mark.parametrize("letter,description,reason_words,function,address", FAULTS,
                         ids=[fault[1] for fault in FAULTS])
def test_fault_crashes_the_domain_with_a_one_line_report(hostile_elf, xenrr, letter, description,
                                                          reason_words, function, address):
    run = xenrr("run", hostile_elf, "--clock", "virtual", "--keys", letter)
    assert console_lines(run.stdout) == ["hostile ready", f"hostile: {description}"]
    assert run.status == 1, run.stderr
    assert "Traceback" not in run.stderr
    [line] = run.stderr.splitlines()
    report = CRASH_REPORT.fullmatch(line)
    assert report, line
    assert all(word in report["reason"] for word in reason_words), line
    assert int(report["icount"]) > 0
    symbols = _symbols(hostile_elf)
    rip = int(report["rip"], 16)
    if function is None:
        assert rip == 0, line
    else:
        start, end = symbols[function]
        assert start <= rip < end, f"{line}: RIP is not in {function} [{start:#x}, {end:#x})"
    if isinstance(address, str):
        address = symbols[address][0]
    if address is None:
        assert report["address"] is None, line
    else:
        assert report["address"] is not None and int(report["address"], 16) == address, line


def test_divide_error_is_reported_on_the_idiv(hostile_elf, xenrr):
    run = xenrr("run", hostile_elf, "--clock", "virtual", "--keys", "d")
    rip = int(CRASH_REPORT.fullmatch(run.stderr.strip())["rip"], 16)
    rex, opcode, modrm = _code_bytes(hostile_elf, rip, 3)
    assert rex & 0xF8 == 0x48 and opcode == 0xF7 and (modrm >> 3) & 7 == 7, "RIP is not on an idiv r/m64"


def test_battery_is_the_same_in_run_record_and_replay(hostile_elf, xenrr, battery_run, tmp_path):
    """A hypercall writing into a read-only guest page answers -EFAULT in every mode: `record` used to
    write into the code page (dirty tracking had relaxed the protection) while `run` failed with a
    usage error; now both print the same battery and the replay verifies it."""
    log = tmp_path / "battery.xrr"
    record = xenrr("record", hostile_elf, "-o", log, "--clock", "virtual", "--keys", "a")
    assert (record.status, record.stdout) == (battery_run.status, battery_run.stdout) == (0, battery_run.stdout)
    replay = xenrr("replay", log)
    assert replay.status == 0, replay.stderr
