"""Reverse execution is exact: `reverse_step` from any position lands on exactly the state a plain forward
replay has one instruction earlier - every register, the domain's hypervisor-side state, all of guest
memory.

The timeline under test keeps few, closely spaced checkpoints (so they are thinned and reverse steps
restore from all sorts of distances); the reference replays forward only, never restoring anything.
(Through GDB, the same check is made by test_server_gdb.py.)
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from dom0.replay import ReplaySession
from stub.timeline import Timeline

KEYS = r"echo " + "x" * 59 + r"ABCD\rcalc (2+4)*7\rbench 3000\rhist\rhalt\r"
POSITIONS = 30


@pytest.fixture(scope="module")
def recording(tmp_path_factory, xenrr, kbdshell_elf) -> Path:
    path = tmp_path_factory.mktemp("reverse") / "session.xrr"
    done = xenrr("record", kbdshell_elf, "-o", path, "--clock", "virtual", "--memory", "2", "--keys", KEYS)
    assert done.status == 0, done.stderr
    return path


def state(timeline: Timeline) -> tuple:
    """Everything a position determines: mark, registers, hypervisor-side state, memory digest."""
    vcpu = timeline.vcpu
    return (timeline.position, vcpu.save_cpu(), timeline.session.domain.save_state(),
            hashlib.sha256(vcpu.memory_image()).hexdigest())


def test_reverse_step_lands_exactly_where_a_forward_replay_is_one_instruction_earlier(recording):
    timeline = Timeline(ReplaySession(recording), checkpoint_interval=5_000, max_checkpoints=6)
    end = timeline.cont().mark.icount
    rng = random.Random(5)
    positions = sorted(rng.sample(range(1, end), POSITIONS) + [1, end])
    expected = {}
    reference = Timeline(ReplaySession(recording), checkpoint_interval=10**12)   # forward only
    for icount in positions:
        reference.goto_icount(icount - 1)
        expected[icount] = state(reference)
    rng.shuffle(positions)                     # visit them in any order: forwards and backwards
    for icount in positions:
        timeline.goto_icount(icount)
        stop = timeline.reverse_step()
        assert stop.reason == "step" and stop.mark.icount == icount - 1
        assert state(timeline) == expected[icount], f"reverse-step from icount {icount}"


def test_repeated_reverse_steps_walk_back_one_instruction_at_a_time(recording):
    timeline = Timeline(ReplaySession(recording), checkpoint_interval=2_000, max_checkpoints=4)
    reference = Timeline(ReplaySession(recording), checkpoint_interval=10**12)
    start = 20_000                              # inside the long line's keystrokes
    walk = 12
    expected = []
    reference.goto_icount(start - walk)
    for _ in range(walk):
        expected.append(state(reference))
        reference.step()
    timeline.goto_icount(start)
    for back in range(1, walk + 1):
        timeline.reverse_step()
        assert state(timeline) == expected[walk - back], f"{back} reverse steps from icount {start}"


def test_reverse_steps_back_to_the_start_then_report_the_start_of_history(recording):
    timeline = Timeline(ReplaySession(recording))
    start = state(timeline)
    assert timeline.reverse_step().reason == "history-start" and state(timeline) == start
    timeline.step()
    timeline.step()
    assert timeline.reverse_step().mark.icount == 1
    assert timeline.reverse_step().mark.icount == 0      # the inputs logged at icount 0 applied
    assert timeline.reverse_step().reason == "history-start" and state(timeline) == start
