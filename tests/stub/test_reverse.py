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
def recording(recorder, kbdshell_elf) -> Path:
    return recorder(kbdshell_elf, "--clock", "virtual", "--memory", "2", "--keys", KEYS).path


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


# ---------------------------------------------------------------- across page-table changes

PAGES_KEYS = r"pages\rcalc 1+1\rpages\rhalt\r"
MEMORY_HYPERCALLS = {1: "mmu_update", 14: "update_va_mapping", 26: "mmuext_op"}


@pytest.fixture(scope="module")
def pages_recording(recorder, kbdshell_elf) -> Path:
    """kbdshell's `pages`: update_va_mapping, PIN_L4_TABLE, NEW_BASEPTR (there and back),
    MMU_NORMAL_PT_UPDATE and UNPIN_TABLE, twice."""
    recording = recorder(kbdshell_elf, "--clock", "virtual", "--memory", "2", "--keys", PAGES_KEYS)
    assert recording.record.stdout.count(" ok\r\n") == 2, recording.record.stdout
    return recording.path


def full_state(timeline: Timeline) -> tuple:
    """state() plus the guest-virtual map the vCPU runs on."""
    return state(timeline) + (timeline.vcpu.mappings(),)


def test_reverse_step_across_page_table_changes_and_cr3_switches(pages_recording):
    """Reverse-stepping over update_va_mapping, mmu_update and mmuext_op (a CR3 switch among them)
    lands exactly where a forward replay is: registers, memory, page types and pins, and the mapping."""
    reference = Timeline(ReplaySession(pages_recording), checkpoint_interval=10**12)   # forward only
    after_calls: list[int] = []           # icount right after each memory-management hypercall
    previous = None
    while not reference.at_end:
        vcpu = reference.vcpu
        pc, rax = vcpu.pc, vcpu.reg("rax")
        if reference.step().reason != "step":
            break
        if previous is not None and vcpu.pc == pc + 2 and bytes(vcpu.read(pc, 2)) == b"\x0f\x05" \
                and rax in MEMORY_HYPERCALLS:
            after_calls.append(vcpu.icount)
        previous = pc
    calls_per_pages = 1 + 1 + 2 + 1 + 1 + 1 + 2    # the identity unmap, window x2, pin+baseptr, mmu x2, back+unpin
    assert len(after_calls) >= 2 * (calls_per_pages - 2), after_calls
    expected = {}
    replay = Timeline(ReplaySession(pages_recording), checkpoint_interval=10**12)
    for icount in after_calls:
        replay.goto_icount(icount - 1)
        expected[icount - 1] = full_state(replay)
        replay.step()
        expected[icount] = full_state(replay)
    timeline = Timeline(ReplaySession(pages_recording), checkpoint_interval=3_000, max_checkpoints=5)
    for icount in reversed(after_calls):                   # backwards, each from a later position
        timeline.goto_icount(icount)
        assert full_state(timeline) == expected[icount], f"goto icount {icount}"
        stop = timeline.reverse_step()
        assert stop.mark.icount == icount - 1
        assert full_state(timeline) == expected[icount - 1], f"reverse-step over the hypercall at {icount}"


GRUB = Path("/usr/lib/grub-xen/grub-x86_64-xen.bin")


@pytest.mark.slow
@pytest.mark.skipif(not GRUB.exists(), reason="GRUB's Xen image is missing: run `make` (grub-xen-host)")
def test_reverse_continue_over_grub_finds_every_hit_a_forward_replay_finds(tmp_path, xenrr):
    """GRUB remaps all of memory at boot and runs module code it loaded: a checkpoint restored
    after that must run on (the engine once kept a translation made before a page was executable,
    and the scan from a restored checkpoint crashed the domain)."""
    path = tmp_path / "grub.xrr"
    done = xenrr("record", GRUB, "-o", path, "--memory", "32", "--clock", "virtual",
                 "--keys", r"echo one\recho two\rhalt\r", timeout=300)
    assert done.status == 0, done.stderr
    dispatcher = 0x41ff          # grub_extcmd_dispatcher in Debian's image (`xenrr grub-symbols`)
    forward = Timeline(ReplaySession(path), checkpoint_interval=10**12)
    forward.add_breakpoint(dispatcher)
    hits = []
    while (stop := forward.cont()).reason != "history-end":
        hits.append(stop.mark)
    timeline = Timeline(ReplaySession(path))
    timeline.add_breakpoint(dispatcher)
    timeline.goto(hits[-1])
    found = []
    while (stop := timeline.reverse_cont()).reason == "breakpoint":
        found.append(stop.mark)
    assert stop.reason == "history-start" and found == hits[-2::-1]
