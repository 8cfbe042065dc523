"""Every breakpoint stop of the timeline, forwards and backwards, is the one a naive replay finds.

The naive reference is the simplest possible debugger: the same recording single-stepped from the
start on the engine's interpreter (no JIT, no checkpoints), noting the pc at every position. Against
it, hypothesis drives one JIT timeline through random sequences of commands: breakpoints on random
instructions (every instruction of several functions, mid-block ones included, in guest code and in
the event upcall path) added and removed at random moments, continue, reverse-continue, goto, step
and reverse-step. Every stop must be the first (continue) or last (reverse-continue) position of the
reference whose pc carries a breakpoint set at that moment. The timeline is shared by all examples,
so translations made in one example are still there when the next one adds its breakpoints.
"""
from __future__ import annotations

import bisect
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import capstone
import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dom0.replay import ReplaySession
from stub.timeline import Timeline
from xen.replay import Mark

ROOT = Path(__file__).resolve().parents[2]
KEYS = r"echo ab\recho cd\rcalc 6*7\rhalt\r"
# Guest code and the event upcall path (hypervisor_callback -> do_event_upcall -> handlers).
FUNCTIONS = ("handle_key", "line_insert", "console_read", "console_write", "memcpy",
             "hypervisor_callback", "do_event_upcall")
EXAMPLES = 30


@pytest.fixture(scope="module")
def recording(tmp_path_factory, kbdshell_elf) -> Path:
    log = tmp_path_factory.mktemp("exact") / "exact.xrr"
    subprocess.run([sys.executable, "-m", "dom0.cli", "record", str(kbdshell_elf), "-o", str(log), "--memory", "2",
                    "--clock", "virtual", "--keys", KEYS], check=True, capture_output=True, cwd=ROOT)
    return log


def function_instructions(elf: Path, names: tuple[str, ...]) -> list[int]:
    """The address of every instruction of the named functions (capstone over the ELF's bytes)."""
    disassembler = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    addresses = []
    with elf.open("rb") as file:
        image = ELFFile(file)
        text = image.get_section_by_name(".text")
        code, base = text.data(), text["sh_addr"]
        symbols = {s.name: s for s in image.get_section_by_name(".symtab").iter_symbols()}
        for name in names:
            start, size = symbols[name]["st_value"], symbols[name]["st_size"]
            assert size, f"{name} has no size"
            chunk = code[start - base:start - base + size]
            addresses += [insn.address for insn in disassembler.disasm(chunk, start)]
    return addresses


@dataclass(frozen=True)
class Reference:
    """The naive replay: every position (canonical mark) in order and the pc there."""
    marks: list[Mark]
    pcs: list[int]

    def pc_at(self, mark: Mark) -> int:
        index = bisect.bisect_left(self.marks, mark)
        assert self.marks[index] == mark, f"{mark} is not a position of the naive replay"
        return self.pcs[index]

    def next_hit(self, origin: Mark, breakpoints: set[int]) -> Mark | None:
        start = bisect.bisect_right(self.marks, origin)
        return next((self.marks[i] for i in range(start, len(self.marks)) if self.pcs[i] in breakpoints), None)

    def previous_hit(self, origin: Mark, breakpoints: set[int]) -> Mark | None:
        end = bisect.bisect_left(self.marks, origin)
        return next((self.marks[i] for i in reversed(range(end)) if self.pcs[i] in breakpoints), None)


def naive_replay(recording: Path) -> Reference:
    timeline = Timeline(ReplaySession(recording, jit=False))
    marks, pcs = [timeline.position], [timeline.vcpu.pc]         # the start, before the first records
    timeline.goto_icount(0)
    marks.append(timeline.position)
    pcs.append(timeline.vcpu.pc)
    while timeline.step().reason != "history-end":
        marks.append(timeline.position)
        pcs.append(timeline.vcpu.pc)
    return Reference(marks, pcs)


@pytest.fixture(scope="module")
def reference(recording) -> Reference:
    return naive_replay(recording)


@pytest.fixture(scope="module")
def candidates(kbdshell_elf) -> list[int]:
    return function_instructions(kbdshell_elf, FUNCTIONS)


@pytest.fixture(scope="module")
def timeline(recording) -> Timeline:
    timeline = Timeline(ReplaySession(recording), checkpoint_interval=2_000)
    timeline.cont()
    return timeline


def commands(candidate_count: int):
    address = st.integers(0, candidate_count - 1)
    return st.lists(st.one_of(
        st.tuples(st.just("add"), address), st.tuples(st.just("remove"), address),
        st.tuples(st.just("cont")), st.tuples(st.just("reverse-cont")), st.tuples(st.just("step")),
        st.tuples(st.just("reverse-step")), st.tuples(st.just("goto"), st.floats(0, 1))), min_size=1, max_size=12)


def test_breakpoint_stops_match_a_naive_single_step_replay(timeline, reference, candidates):
    assert len(candidates) > 150 and len(set(candidates) & set(reference.pcs)) > 100

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.floats(0, 1), commands(len(candidates)))
    def walk(start: float, script):
        for address in timeline.vcpu.breakpoints:
            timeline.remove_breakpoint(address)
        breakpoints: set[int] = set()
        timeline.goto_icount(int(start * reference.marks[-1].icount))
        for command, *argument in script:
            origin = timeline.position
            if command == "add":
                breakpoints.add(candidates[argument[0]])
                timeline.add_breakpoint(candidates[argument[0]])
            elif command == "remove":
                breakpoints.discard(candidates[argument[0]])
                timeline.remove_breakpoint(candidates[argument[0]])
            elif command == "cont":
                stop = timeline.cont()
                expected = reference.next_hit(origin, breakpoints)
                assert (stop.reason, stop.mark) == (("breakpoint", expected) if expected
                                                    else ("history-end", reference.marks[-1])), (origin, script)
            elif command == "reverse-cont":
                stop = timeline.reverse_cont()
                expected = reference.previous_hit(origin, breakpoints)
                assert (stop.reason, stop.mark) == (("breakpoint", expected) if expected
                                                    else ("history-start", reference.marks[0])), (origin, script)
            elif command == "step":
                timeline.step()
            elif command == "reverse-step":
                timeline.reverse_step()
            else:
                timeline.goto_icount(int(argument[0] * reference.marks[-1].icount))
            assert timeline.vcpu.pc == reference.pc_at(timeline.position), (command, script)

    walk()
