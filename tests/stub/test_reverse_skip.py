"""Reverse-continue does no more replay than it must, and stays exact.

- With only write watchpoints, segments of the replay that wrote none of the watched pages are
  skipped without replaying them: the instructions scanned depend on where the last write is, not on
  how far back it is. The recording computes a deeply nested `calc` (the only code that writes the
  deep stack page watched), then runs `bench` for millions of instructions.
- The hits a backward scan finds are kept, with the state at the last few: successive
  reverse-continues within one interval replay nothing again, until the breakpoints, their conditions
  or the watchpoints change.
Every stop is checked against forward continues from the start, which never skip anything.
"""
from __future__ import annotations

import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from dom0.replay import ReplaySession
from stub.timeline import SEGMENTS_PER_CHECKPOINT, Timeline
from xen.replay import Mark
from xen.vcpu import PAGE_SIZE

# calc nested as deep as a line allows (64 characters): its deepest frames reach below the page that holds the
# top of the stack (which every call writes) whatever the stack top's offset in its page.
KEYS = "calc " + "(" * 27 + "1+2" + ")" * 27 + r"*3\rbench 300000\recho done\rhalt\r"
INTERVAL = 50_000


@pytest.fixture(scope="module")
def recording(recorder, kbdshell_elf) -> Path:
    return recorder(kbdshell_elf, "--clock", "virtual", "--memory", "2", "--keys", KEYS).path


def _symbol(elf: Path, name: str) -> int:
    with elf.open("rb") as file:
        [symbol] = ELFFile(file).get_section_by_name(".symtab").get_symbol_by_name(name)
        return symbol["st_value"]


@pytest.fixture(scope="module")
def stack_bottom(kbdshell_elf) -> int:
    return _symbol(kbdshell_elf, "boot_stack")


def deepest_stack_word(timeline: Timeline, stack_bottom: int) -> int:
    """The lowest non-zero stack word at the end of the recording (written by calc's deepest frame)."""
    first_page = (stack_bottom + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    for page in range(first_page, first_page + 4 * PAGE_SIZE, PAGE_SIZE):
        words = struct.unpack("<512Q", timeline.vcpu.read(page, PAGE_SIZE))
        for index, word in enumerate(words):
            if word:
                return page + 8 * index
    raise AssertionError("no stack word written below the top page")


def forward_hits(recording: Path, watch: tuple[int, int, str] | None = None,
                 breakpoint: int | None = None) -> list[Mark]:
    """Every hit as reverse execution reports it, found by continuing forwards from the start."""
    timeline = Timeline(ReplaySession(recording), checkpoint_interval=10**12)
    if watch:
        timeline.add_watchpoint(*watch)
    if breakpoint is not None:
        timeline.add_breakpoint(breakpoint)
    hits = []
    while (stop := timeline.cont()).reason != "history-end":
        hits.append(Mark(stop.mark.icount - 1, stop.mark.seq) if stop.reason == "watchpoint" else stop.mark)
    return hits


def test_write_watch_reverse_continue_skips_segments_that_did_not_write_its_page(recording, stack_bottom,
                                                                                kbdshell_elf):
    timeline = Timeline(ReplaySession(recording), checkpoint_interval=INTERVAL, max_checkpoints=8)
    end = timeline.cont().mark
    watch = (deepest_stack_word(timeline, stack_bottom), 8, "w")
    expected = forward_hits(recording, watch=watch)
    assert expected and end.icount - expected[-1].icount > 2_000_000      # bench ran long after calc
    top_page = (_symbol(kbdshell_elf, "boot_stack_top") - 1) // PAGE_SIZE
    assert watch[0] // PAGE_SIZE < top_page, "calc's frames stayed in the page of the stack's top (every call writes it)"
    timeline.add_watchpoint(*watch)
    scanned = timeline.instructions_scanned
    stop = timeline.reverse_cont()
    assert (stop.reason, stop.mark, stop.watch_address) == ("watchpoint", expected[-1], watch[0])
    # Only the stretch from a checkpoint before the write to the end of its segment was replayed.
    assert timeline.instructions_scanned - scanned <= expected[-1].icount + INTERVAL // SEGMENTS_PER_CHECKPOINT
    found = [stop.mark]
    while (stop := timeline.reverse_cont()).reason == "watchpoint":
        found.append(stop.mark)
    assert stop.reason == "history-start" and found == expected[::-1]


def test_write_watch_reverse_continue_after_a_goto_scans_the_same_at_any_distance(recording, stack_bottom):
    """The benchmark's pattern: find the write, go far after it, reverse-continue. The replay from the
    restored start crosses the guest's boot-time remap, which must not count as a remap after the write."""
    timeline = Timeline(ReplaySession(recording), checkpoint_interval=INTERVAL, max_checkpoints=8)
    timeline.cont()
    timeline.add_watchpoint(deepest_stack_word(timeline, stack_bottom), 8, "w")
    write = timeline.reverse_cont()
    assert write.reason == "watchpoint"
    scanned = {}
    for distance in (100_000, 2_000_000):
        timeline.goto_icount(write.mark.icount + distance)
        timeline.drop_kept_hits()
        before = timeline.instructions_scanned
        stop = timeline.reverse_cont()
        assert (stop.reason, stop.mark) == ("watchpoint", write.mark)
        scanned[distance] = timeline.instructions_scanned - before
    assert scanned[100_000] == scanned[2_000_000] <= write.mark.icount + INTERVAL // SEGMENTS_PER_CHECKPOINT


def test_segments_keep_the_pages_they_wrote_when_checkpoints_are_thinned(recording):
    timeline = Timeline(ReplaySession(recording), checkpoint_interval=INTERVAL, max_checkpoints=8)
    start_memory = timeline.vcpu.memory_image()
    end = timeline.cont().mark
    assert len(timeline.checkpoints) <= 8
    assert len(timeline.segments) == end.icount // (INTERVAL // SEGMENTS_PER_CHECKPOINT)
    written = set().union(*(segment.pages for segment in timeline.segments))
    timeline.goto(timeline.segments[-1].end)
    changed = set(timeline.vcpu.changed_pages(start_memory))
    assert changed and changed <= written
    quiet = [segment for segment in timeline.segments if not segment.pages]
    assert len(quiet) > len(timeline.segments) // 2       # bench writes no memory between timer ticks


def test_hits_of_a_scanned_interval_are_kept_until_the_debug_settings_change(recording, kbdshell_elf):
    with kbdshell_elf.open("rb") as file:
        symbols = ELFFile(file).get_section_by_name(".symtab")
        [handle_key] = symbols.get_symbol_by_name("handle_key")
        [line_insert] = symbols.get_symbol_by_name("line_insert")
    handle_key, line_insert = handle_key["st_value"], line_insert["st_value"]
    expected = forward_hits(recording, breakpoint=handle_key)      # the calc keys come first
    # One checkpoint interval covers the whole recording; segments (a tenth of it) cover the calc keys.
    timeline = Timeline(ReplaySession(recording), checkpoint_interval=10**7)
    timeline.cont()
    assert len(timeline.checkpoints) == 1 and timeline.segments[-1].end > expected[20]
    timeline.goto(expected[20])
    timeline.add_breakpoint(handle_key)
    assert timeline.reverse_cont().mark == expected[19]
    scanned = timeline.instructions_scanned
    assert scanned > 0
    assert timeline.reverse_cont().mark == expected[18]       # from the kept hits: no scan
    replayed = timeline.instructions_replayed
    for hit in reversed(expected[12:18]):             # GDB removes and re-inserts breakpoints at each stop
        timeline.remove_breakpoint(handle_key)
        timeline.add_breakpoint(handle_key)
        assert timeline.reverse_cont().mark == hit
    assert timeline.instructions_scanned == scanned   # no scan replayed again
    assert timeline.instructions_replayed == replayed  # nor anything else: the states at the hits were kept
    timeline.add_breakpoint(line_insert)              # a new breakpoint: the kept hits are dropped
    stop = timeline.reverse_cont()
    assert timeline.instructions_scanned > scanned and stop.pc == line_insert
    timeline.remove_breakpoint(line_insert)
    scanned = timeline.instructions_scanned
    timeline.add_breakpoint(handle_key, lambda vcpu: False)   # a condition: dropped again
    assert timeline.reverse_cont().reason == "history-start"
    assert timeline.instructions_scanned > scanned


def test_a_watched_address_whose_frame_changes_is_found_wherever_it_was_mapped(recorder, kbdshell_elf):
    """kbdshell's `pages` writes its window page while other frames are mapped there (the L4 copy,
    then the window's own frame again): segments are skipped by the frames mapped at the watched
    address, and never across a change of the address space, so every write is found."""
    keys = r"pages\rbench 100000\rpages\rbench 100000\rhalt\r"
    path = recorder(kbdshell_elf, "--clock", "virtual", "--memory", "2", "--keys", keys).path
    with kbdshell_elf.open("rb") as file:
        [window] = ELFFile(file).get_section_by_name(".symtab").get_symbol_by_name("pages_window")
    watch = (window["st_value"], 8, "w")
    expected = forward_hits(path, watch=watch)
    assert len(expected) >= 4, expected
    timeline = Timeline(ReplaySession(path), checkpoint_interval=20_000, max_checkpoints=8)
    timeline.cont()
    timeline.add_watchpoint(*watch)
    found = []
    while (stop := timeline.reverse_cont()).reason == "watchpoint":
        found.append(stop.mark)
    assert stop.reason == "history-start" and found == expected[::-1]
