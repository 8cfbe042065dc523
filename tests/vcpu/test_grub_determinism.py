"""GRUB under every way the host can slice execution gives the same run (the stop patterns of
tests/vcpu/test_determinism.py, scaled to GRUB's ~2.5 x 10^7 instructions to its prompt).

GRUB boots, types `echo same\\r` and `halt\\r` (keys injected through the funnel at fixed instruction
counts, early: they wait in the console ring) and powers off. Each pattern - one big run per input, random
small limits, fixed 10k slices, a breakpoint on GRUB's hot polling code, dirty-page tracking checked
against memory snapshots, and single steps over a window around the first key read - must give the
same trace: (icount, pc, rax, register hash) at every hypercall and injection, the same console output
and the same final memory. GRUB reads the TSC ~every 130 instructions, so this also covers RDTSC under
every slicing.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from dom0.toolstack import connect_xenstore, xenstore_config
from xen.builder import build_domain
from xen.domain import Domain, RunState
from xen.inject import Kind
from tests.vcpu.test_determinism import _register_hash, final_state, handle_traced_exit

GRUB = Path("/usr/lib/grub-xen/grub-x86_64-xen.bin")
MEMORY = 32 * 1024 * 1024
KEYS = b"echo same\rhalt\r"
FIRST_KEY_ICOUNT = 1_000_000
KEY_SPACING = 100_000
STEP_WINDOW = 20_000
DIRTY_CHECK_EVERY = 2_000_000
MAX_INSTRUCTIONS = 300_000_000         # a session that has not powered off by then has gone wrong
pytestmark = [
    pytest.mark.skipif(not GRUB.exists(), reason="GRUB's Xen image is missing: run `make` (grub-xen-host)"),
    pytest.mark.slow,
]


def run_session(pattern: str, seed: int = 1, step_from: int | None = None) -> dict:
    output = bytearray()
    domain = Domain(build_domain(GRUB.read_bytes(), MEMORY), console_output=output.extend)
    connect_xenstore(domain, xenstore_config(GRUB))             # GRUB asks xenstore once at boot
    vcpu = domain.vcpu
    rng = random.Random(seed)
    inputs = [(FIRST_KEY_ICOUNT + index * KEY_SPACING, bytes([key])) for index, key in enumerate(KEYS)]
    trace: list[tuple] = []
    if pattern == "dirty-tracking":
        generation = vcpu.track_dirty_pages()
        image, checked_at = vcpu.memory_image(), 0
    breakpoint_set = False
    while domain.alive and vcpu.icount < MAX_INSTRUCTIONS:
        next_input = inputs[0][0] if inputs else 1 << 62
        if inputs and vcpu.icount >= next_input:
            domain.funnel.inject(Kind.CONSOLE_INPUT, inputs.pop(0)[1])
            trace.append(("inject", vcpu.icount, vcpu.pc, _register_hash(vcpu)))
            continue
        if pattern == "big":
            exit = vcpu.run(next_input)
        elif pattern == "small":
            exit = vcpu.run(min(next_input, vcpu.icount + rng.randint(1, 200_000)))
        elif pattern == "slices":
            exit = vcpu.run(min(next_input, vcpu.icount + 10_000))
        elif pattern == "breakpoints":
            if not breakpoint_set and vcpu.icount > 5_000_000:
                vcpu.add_breakpoint(vcpu.pc)            # somewhere in GRUB's polling loop: hit again and again
                breakpoint_set = True
            exit = vcpu.run(next_input)
        elif pattern == "dirty-tracking":
            exit = vcpu.run(min(next_input, vcpu.icount + rng.randint(1, 500_000)))
            if vcpu.icount - checked_at >= DIRTY_CHECK_EVERY or not domain.alive:
                dirty, new_image = vcpu.pages_written_since(generation), vcpu.memory_image()
                generation, checked_at = vcpu.new_generation(), vcpu.icount
                assert set(vcpu.changed_pages(image)) <= dirty, "a written page was not noted as dirty"
                image = new_image
        elif vcpu.icount < step_from:  # "step": single steps over [step_from, step_from + STEP_WINDOW)
            exit = vcpu.run(min(next_input, step_from))
        elif vcpu.icount < step_from + STEP_WINDOW:
            exit = vcpu.step()
        else:
            exit = vcpu.run(next_input)
        handle_traced_exit(domain, exit, trace)
    return final_state(domain, trace, output)


@pytest.fixture(scope="module")
def reference() -> dict:
    return run_session("big")


def test_reference_session_reached_the_prompt_and_powered_off(reference):
    assert b"grub> " in reference["output"] and b"same" in reference["output"]
    assert reference["state"] == RunState.SHUTDOWN


@pytest.mark.parametrize("pattern,seed", [("small", 1), ("slices", 1), ("breakpoints", 1), ("dirty-tracking", 1)])
def test_stop_pattern_gives_identical_run(reference, pattern, seed):
    assert run_session(pattern, seed) == reference


def test_single_steps_around_the_first_key_give_identical_run(reference):
    first_key = next(entry for entry in reference["trace"] if entry[0] == "inject")
    assert run_session("step", step_from=first_key[1] - STEP_WINDOW // 2) == reference
