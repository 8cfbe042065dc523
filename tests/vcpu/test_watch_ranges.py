"""Watchpoints of any length and alignment: an access hits a watch when any byte of it is watched.

The engine reports a trapped access by its first address only, on whichever page trapped; the vCPU
works out the page and the access's width. Each case stores or loads 1-8 bytes next to, across or
inside a watched range (including ranges and accesses straddling a page boundary), on the JIT and on
the interpreter, with and without dirty-page tracking, and checks the exit: a hit reports the first
watched byte touched, a miss runs on, and nothing ever faults.
"""
from __future__ import annotations

import pytest

from xen.vcpu import PAGE_SIZE, ExitReason, VCpu

CODE = 0x1000
PAGE = 0x4000          # the page boundary the cases cluster around
STORES = {1: "880b", 2: "66890b", 4: "890b", 8: "48890b"}     # mov [rbx], cl / cx / ecx / rcx
LOADS = {1: "8a0b", 2: "668b0b", 4: "8b0b", 8: "488b0b"}      # mov cl / cx / ecx / rcx, [rbx]
SPIN = "ebfe"                                                  # jmp $

# (access start, access width, watch start, watch length): expected first watched byte touched or None
CASES = [
    (PAGE - 16, 8, PAGE - 13, 1, PAGE - 13),      # watch inside the access, not at its start
    (PAGE - 16, 1, PAGE - 15, 1, None),           # the byte after
    (PAGE - 15, 2, PAGE - 16, 2, PAGE - 15),      # unaligned overlap of one byte
    (PAGE - 4, 8, PAGE + 1, 1, PAGE + 1),         # access straddles into the watched page
    (PAGE - 4, 8, PAGE - 1, 2, PAGE - 1),         # watch straddles the boundary too
    (PAGE - 4, 4, PAGE, 4, None),                 # ends just before the watch on the next page
    (PAGE - 2, 4, PAGE - 6, 4, None),             # starts just after the watch
    (PAGE + 8, 8, PAGE - 4, 8, None),             # other page, no overlap
    (PAGE - 8, 8, PAGE - 8, 8, PAGE - 8),         # exact
]


# Each instruction (then a spin) in a slot of its own: code is written once, never overwritten.
SLOTS = {instruction: CODE + 16 * index for index, instruction in enumerate([*STORES.values(), *LOADS.values()])}


@pytest.fixture(scope="module")
def vcpus() -> dict[tuple[bool, bool], VCpu]:
    """One vCPU per (jit, dirty tracking), reused by every case (each starts a new generation)."""
    made = {}
    for jit in (True, False):
        for tracking in (False, True):
            vcpu = made[jit, tracking] = VCpu.flat(0x10000, jit=jit)
            for instruction, address in SLOTS.items():
                vcpu.write(address, bytes.fromhex(instruction + SPIN))
            if tracking:
                vcpu.track_dirty_pages()
    return made


def _prepare(vcpu: VCpu, instruction: str, base: int) -> None:
    vcpu.set_reg("rbx", base)
    vcpu.set_reg("rcx", 0x1122334455667788)
    vcpu.pc = SLOTS[instruction]


@pytest.mark.parametrize("tracking", [False, True], ids=["plain", "dirty-tracking"])
@pytest.mark.parametrize("jit", [True, False], ids=["jit", "interpreter"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0] - PAGE:+d}x{c[1]}-watch{c[2] - PAGE:+d}x{c[3]}" for c in CASES])
def test_stores_and_loads_hit_exactly_the_watches_they_touch(vcpus, case, jit, tracking):
    start, width, watch_start, watch_length, expected = case
    vcpu = vcpus[jit, tracking]
    for kind, table, access in (("w", STORES, "w"), ("r", LOADS, "r"), ("a", STORES, "w"), ("a", LOADS, "r")):
        _prepare(vcpu, table[width], start)
        generation = vcpu.new_generation()
        vcpu.add_watch(watch_start, watch_length, kind)
        stop = vcpu.run(vcpu.icount + 3)
        vcpu.remove_watch(watch_start, watch_length, kind)
        if expected is None:
            assert stop.reason == ExitReason.LIMIT, (kind, stop)
        else:
            assert (stop.reason, stop.pc, stop.address, stop.access) == \
                (ExitReason.WATCHPOINT, SLOTS[table[width]] + len(table[width]) // 2, expected, access), kind
        if table is STORES:
            assert vcpu.read(start, width) == (0x1122334455667788).to_bytes(8, "little")[:width]
        if tracking and table is STORES:
            written = {page * PAGE_SIZE for page in vcpu.pages_written_since(generation)}
            assert {start & ~0xFFF, (start + width - 1) & ~0xFFF} <= written


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "interpreter"])
def test_a_store_straddling_into_a_clean_page_is_noted_not_a_fault(vcpus, jit):
    """Dirty tracking write-protects clean pages: an unaligned store whose first page is already
    dirty and whose second is clean must mark the second and retire, as it does untracked."""
    vcpu = vcpus[jit, True]
    _prepare(vcpu, STORES[8], PAGE - 4)
    generation = vcpu.new_generation()               # every page clean
    vcpu.write(PAGE - 16, b"\0")                      # the first page is dirty (writable) now
    start = vcpu.icount
    stop = vcpu.run(start + 2)
    assert (stop.reason, stop.icount) == (ExitReason.LIMIT, start + 2)
    assert {(PAGE - PAGE_SIZE) // PAGE_SIZE, PAGE // PAGE_SIZE} <= vcpu.pages_written_since(generation)
