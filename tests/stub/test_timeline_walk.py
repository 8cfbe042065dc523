"""Random walks over the timeline: forward and reverse commands in any order land exactly where a naive
replay from the start lands.

A recording of kbdshell (keys, timer ticks, a bench loop) is walked with random sequences of cont,
step, reverse_step, reverse_cont, goto_event and goto_icount, with random breakpoints and a watchpoint.
After every command all registers (and, regularly, a memory checksum) must equal those of a naive
replay run forward from the start to the same mark - the timeline's invariant.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from dom0.replay import ReplaySession
from stub.timeline import Timeline

WALKS = 200
COMMANDS_PER_WALK = 10
MEMORY_CHECK_EVERY = 25


@pytest.fixture(scope="module")
def recording(recorder, kbdshell_elf) -> Path:
    keys = r"echo one\rcalc 6*7\rbench 300000\r\p30hash walk\recho " + "y" * 70 + r"\rhist\rhalt\r"
    return recorder(kbdshell_elf, "--memory", "4", "--clock", "virtual", "--keys", keys).path


@pytest.fixture(scope="module")
def symbols(kbdshell_elf) -> dict[str, int]:
    with kbdshell_elf.open("rb") as file:
        table = ELFFile(file).get_section_by_name(".symtab")
        return {symbol.name: symbol["st_value"] for symbol in table.iter_symbols()
                if symbol["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT")}


def _state(session: ReplaySession, with_memory: bool) -> tuple:
    vcpu = session.domain.vcpu
    memory = hashlib.sha256(vcpu.memory_image()).hexdigest() if with_memory else None
    return vcpu.save_cpu(), memory


def test_random_walks_match_a_fresh_replay(recording, symbols):
    """WALKS walks of COMMANDS_PER_WALK random commands, each walk with its own breakpoints/watchpoint;
    every state reached is then compared with one naive forward replay from the start."""
    rng = random.Random(2026)
    session = ReplaySession(recording)
    timeline = Timeline(session, checkpoint_interval=200_000)
    end = timeline.cont().mark
    candidates = [symbols[name] for name in ("handle_key", "line_insert", "calc_term", "on_timer", "console_write")]
    visited: dict = {}
    for walk in range(WALKS):
        breakpoints = rng.sample(candidates, k=rng.randint(0, 2))
        watch = rng.random() < 0.3
        for address in breakpoints:
            timeline.add_breakpoint(address)
        if watch:
            timeline.add_watchpoint(symbols["ed"] + 64, 4, "w")
        for step in range(COMMANDS_PER_WALK):
            command = rng.choice(["cont", "step", "reverse_step", "reverse_cont", "goto_event", "goto_icount"])
            if command == "goto_event":
                timeline.goto_event(rng.randint(1, len(timeline.events())))
            elif command == "goto_icount":
                timeline.goto_icount(rng.randint(0, end.icount))
            else:
                getattr(timeline, command)()
            with_memory = (walk * COMMANDS_PER_WALK + step) % MEMORY_CHECK_EVERY == 0
            state = _state(session, with_memory)
            visited.setdefault(timeline.position, []).append((f"walk {walk} step {step}: {command}", state))
        for address in breakpoints:
            timeline.remove_breakpoint(address)
        if watch:
            timeline.remove_watchpoint(symbols["ed"] + 64, 4, "w")
    naive = ReplaySession(recording)
    for mark in sorted(visited):
        naive.replayer.run(mark)
        assert naive.replayer.mark == mark
        for where, (cpu, memory) in visited[mark]:
            expected_cpu, expected_memory = _state(naive, memory is not None)
            assert cpu == expected_cpu, f"registers differ at {mark} ({where})"
            assert memory == expected_memory, f"memory differs at {mark} ({where})"
    assert len(visited) > WALKS            # the walks really went to many places


def test_reverse_continue_finds_the_last_write_before_the_position(recording, symbols):
    timeline = Timeline(ReplaySession(recording))
    timeline.cont()
    timeline.add_watchpoint(symbols["ed"] + 64, 4, "w")
    writes = []
    stop = timeline.reverse_cont()
    while stop.reason == "watchpoint":
        writes.append(stop.mark)
        stop = timeline.reverse_cont()
    assert stop.reason == "history-start"
    assert writes == sorted(writes, reverse=True) and len(writes) >= 3
    # forward from the start meets the same writes, in order, one instruction later each
    timeline.goto_icount(0)
    forward = []
    stop = timeline.cont()
    while stop.reason == "watchpoint":
        forward.append(stop.mark.icount - 1)
        stop = timeline.cont()
    assert forward == [mark.icount for mark in reversed(writes)]
