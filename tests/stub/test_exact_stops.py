"""Every breakpoint and watchpoint stop of the timeline, forwards and backwards, is the one a naive
replay finds.

The naive reference is the simplest possible debugger: the same recording single-stepped from the
start on the engine's interpreter (no JIT, no checkpoints, no watch traps), noting at every position
the pc and the memory accesses of the instruction there, decoded with capstone and computed from the
registers (memory operands, and the implicit stack accesses of push, pop, call, ret and leave).
Against it, hypothesis drives one JIT timeline through random sequences of commands:
- breakpoints on random instructions (every instruction of several functions, mid-block ones
  included, in guest code and in the event upcall path);
- watchpoints (write, read, access) of 1, 2, 4 and 8 bytes at random offsets around accessed data,
  unaligned ones and ones straddling a page boundary;
added and removed at random moments, with continue, reverse-continue, goto, step and reverse-step.
Every stop must be the first (continue) or last (reverse-continue) position of the reference whose
pc carries a breakpoint, or whose instruction touches a watched byte with an access of the watch's
kind, at that moment. The timelines are shared by all examples, so translations, checkpoints and kept
hits made in one example are still there when the next one changes the breakpoints and watchpoints.
"""
from __future__ import annotations

import bisect
import random
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

KEYS = r"echo ab\recho cd\rcalc ((6*7))-(1)\rhalt\r"
# Guest code and the event upcall path (hypervisor_callback -> do_event_upcall -> handlers).
FUNCTIONS = ("handle_key", "line_insert", "console_read", "console_write", "memcpy",
             "hypervisor_callback", "do_event_upcall")
EXAMPLES = 30
WATCH_EXAMPLES = 50


@pytest.fixture(scope="module")
def recording(recorder, kbdshell_elf) -> Path:
    return recorder(kbdshell_elf, "--memory", "2", "--clock", "virtual", "--keys", KEYS).path


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


Access = tuple[int, int, str]          # start, bytes, "r" or "w"

_DECODER = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_DECODER.detail = True
_NO_ACCESS = {capstone.x86.X86_INS_LEA, capstone.x86.X86_INS_NOP}
_STACK = {capstone.x86.X86_INS_PUSH: ("w", -8), capstone.x86.X86_INS_CALL: ("w", -8),
          capstone.x86.X86_INS_POP: ("r", 0), capstone.x86.X86_INS_RET: ("r", 0)}


def instruction_accesses(vcpu) -> tuple[Access, ...]:
    """The memory the instruction at pc reads and writes, from capstone's operands and the registers."""
    pc = vcpu.pc
    insn = next(_DECODER.disasm(vcpu.read(pc, 16), pc))
    accesses = []
    for operand in insn.operands:
        if operand.type != capstone.x86.X86_OP_MEM or insn.id in _NO_ACCESS:
            continue
        memory = operand.mem
        base = pc + insn.size if memory.base == capstone.x86.X86_REG_RIP else \
            vcpu.reg(insn.reg_name(memory.base)) if memory.base else 0
        index = vcpu.reg(insn.reg_name(memory.index)) * memory.scale if memory.index else 0
        start = (base + index + memory.disp) & (2**64 - 1)
        for flag, kind in ((capstone.CS_AC_READ, "r"), (capstone.CS_AC_WRITE, "w")):
            if operand.access & flag:
                accesses.append((start, operand.size, kind))
    if insn.id in _STACK:
        kind, offset = _STACK[insn.id]
        accesses.append((vcpu.reg("rsp") + offset, 8, kind))
    if insn.id == capstone.x86.X86_INS_LEAVE:
        accesses.append((vcpu.reg("rbp"), 8, "r"))
    return tuple(accesses)


def touches(accesses: tuple[Access, ...], watches: set[tuple[int, int, str]]) -> bool:
    return any(start < begin + length and begin < start + size and kind in ("a", access)
               for start, size, access in accesses for begin, length, kind in watches)


@dataclass(frozen=True)
class Reference:
    """The naive replay: every position (canonical mark) in order, the pc there and the accesses of
    the instruction executed from there."""
    marks: list[Mark]
    pcs: list[int]
    accesses: list[tuple[Access, ...]]

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

    def next_access(self, origin: Mark, watches: set[tuple[int, int, str]]) -> int | None:
        """The instruction count after the first instruction from `origin` on touching a watch."""
        start = max(bisect.bisect_left(self.marks, origin), 1)     # mark 0: before icount 0's records
        return next((self.marks[i].icount + 1 for i in range(start, len(self.marks) - 1)
                     if touches(self.accesses[i], watches)), None)

    def previous_access(self, origin: Mark, watches: set[tuple[int, int, str]]) -> int | None:
        """The instruction count before the last instruction before `origin` touching a watch."""
        end = bisect.bisect_left(self.marks, origin)
        return next((self.marks[i].icount for i in reversed(range(end))
                     if self.marks[i].icount < origin.icount and touches(self.accesses[i], watches)), None)


def naive_replay(recording: Path) -> Reference:
    timeline = Timeline(ReplaySession(recording, jit=False))
    marks, pcs, accesses = [], [], []

    def note() -> None:
        marks.append(timeline.position)
        pcs.append(timeline.vcpu.pc)
        accesses.append(instruction_accesses(timeline.vcpu))

    note()                                  # the start, before the records logged at icount 0
    timeline.goto_icount(0)
    note()
    while timeline.step().reason != "history-end":
        note()
    return Reference(marks, pcs, accesses)


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


def test_breakpoint_stops_match_a_naive_single_step_replay(timeline, reference, candidates, kbdshell_elf):
    assert len(candidates) > 150 and len(set(candidates) & set(reference.pcs)) > 100
    upcall_path = function_instructions(kbdshell_elf, ("hypervisor_callback", "do_event_upcall"))
    assert len(set(upcall_path) & set(reference.pcs)) > 20, "the recording delivers no event upcalls"

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


@pytest.fixture(scope="module")
def watch_pool(reference) -> list[tuple[int, int]]:
    """Watched ranges around data the guest really accesses: overlapping, just before, just after, of
    1, 2, 4 and 8 bytes at any alignment, and straddling every page boundary the guest touches."""
    rng = random.Random(9)
    every = [(start, size) for accesses in reference.accesses for start, size, _ in accesses]
    data = sorted(set(every))
    pool = set()
    for start, size in rng.sample(every, 40):          # weighted by how often the guest accesses them
        for length in (1, 2, 4, 8):
            pool.add((start + rng.randint(1 - length, size - 1), length))
        pool.add((start + size, rng.choice((1, 2, 4, 8))))
        pool.add((start - 2, 2))
    boundaries = {(start + size - 1) & ~0xFFF for start, size in data if (start + size + 8) & ~0xFFF != start & ~0xFFF}
    for boundary in boundaries - {0}:
        pool.update({(boundary - 3, 8), (boundary - 1, 2), (boundary - 4, 4), (boundary, 1)})
    return sorted(pool)


@pytest.fixture(scope="module")
def watch_timeline(recording) -> Timeline:
    timeline = Timeline(ReplaySession(recording), checkpoint_interval=2_000)
    timeline.cont()
    return timeline


def watch_commands(pool_size: int):
    watch = st.tuples(st.integers(0, pool_size - 1), st.sampled_from("wra"))
    return st.lists(st.one_of(
        st.tuples(st.just("watch"), watch), st.tuples(st.just("unwatch"), watch), st.tuples(st.just("watch"), watch),
        st.tuples(st.just("cont")), st.tuples(st.just("reverse-cont")),
        st.tuples(st.just("cont")), st.tuples(st.just("reverse-cont")), st.tuples(st.just("step")),
        st.tuples(st.just("reverse-step")), st.tuples(st.just("goto"), st.floats(0, 1))), min_size=1, max_size=12)


def test_watchpoint_stops_match_a_naive_single_step_replay(watch_timeline, reference, watch_pool):
    timeline = watch_timeline
    positions = set(reference.marks)
    seen = {"cont": 0, "reverse-cont": 0}
    assert any(start & 0xFFF > 0xFF8 for start, _ in watch_pool), "no watch straddles a page"

    @settings(max_examples=WATCH_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.floats(0, 1), watch_commands(len(watch_pool)))
    def walk(start: float, script):
        for watch in list(timeline._watches):
            timeline.remove_watchpoint(*watch)
        watches: set[tuple[int, int, str]] = set()
        timeline.goto_icount(int(start * reference.marks[-1].icount))
        for command, *argument in script:
            origin = timeline.position
            if command in ("watch", "unwatch"):
                (index, kind), = argument
                watch = (*watch_pool[index], kind)
                if command == "watch" and watch not in watches:
                    watches.add(watch)
                    timeline.add_watchpoint(*watch)
                elif command == "unwatch" and watch in watches:
                    watches.discard(watch)
                    timeline.remove_watchpoint(*watch)
                continue
            if command == "cont":
                stop = timeline.cont()
                expected = reference.next_access(origin, watches)
                assert (stop.reason, stop.mark.icount) == (("watchpoint", expected) if expected
                                                           else ("history-end", reference.marks[-1].icount)), \
                    (origin, script)
            elif command == "reverse-cont":
                stop = timeline.reverse_cont()
                expected = reference.previous_access(origin, watches)
                assert (stop.reason, stop.mark.icount) == (("watchpoint", expected) if expected is not None
                                                           else ("history-start", 0)), (origin, script)
            elif command == "step":
                stop = timeline.step()
            elif command == "reverse-step":
                stop = timeline.reverse_step()
            else:
                stop = timeline.goto_icount(int(argument[0] * reference.marks[-1].icount))
            if stop.reason == "watchpoint":
                seen[command] = seen.get(command, 0) + 1
                assert any(begin <= stop.watch_address < begin + length and kind in ("a", stop.watch_access)
                           for begin, length, kind in watches), (stop, script)
            if timeline.position in positions:
                assert timeline.vcpu.pc == reference.pc_at(timeline.position), (command, script)

    walk()
    assert seen["cont"] > 5 and seen["reverse-cont"] > 5, seen     # the walks did hit watches both ways
