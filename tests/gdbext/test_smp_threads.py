"""vCPUs as GDB threads, through real GDB (pygdbmi) and `xenrr serve` on a recording of kbdshell's race.

The recording: `xenrr record --vcpus 2 --quantum 4000`, typing `par 3000` (both vCPUs run par_worker
on a shared counter; the unlocked read-modify-write loses updates) and `halt`. GDB lists the two vCPUs
as threads with the stub's extra info ("vCPU n running/blocked/..."), a stop names the vCPU that hit,
registers and expressions follow `thread N`, and watch + reverse-continue on the counter stops at a
store made by whichever vCPU stored last - the same one a naive forward replay finds.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from dom0.replay import ReplaySession
from gdbext.api import Debugger, xenrr_debug
from gdbext.shell import DebugShell
from stub.timeline import Timeline


@pytest.fixture(scope="module")
def race(recorder, kbdshell_elf) -> Path:
    return recorder(kbdshell_elf, "--memory", "4", "--vcpus", "2", "--quantum", "4000",
                    "--keys", r"par 3000\rhalt\r").path


@pytest.fixture(scope="module")
def d(race) -> Debugger:
    with xenrr_debug(race) as debugger:
        yield debugger


def test_vcpus_are_threads_and_stops_name_the_vcpu_that_hit(d, race, kbdshell_elf):
    threads = d.threads()
    assert [thread.vcpu for thread in threads] == [0, 1]
    assert threads[0].status == "running" and threads[1].status == "down"     # before par brings vCPU 1 up
    assert d.vcpu_count == 2

    d.break_at("par_worker")
    first = d.cont()
    assert (first.reason, first.function, first.vcpu) == ("breakpoint", "par_worker", 1), \
        "vCPU 1 is woken by the IPI and runs first"
    second = d.cont()
    assert (second.reason, second.function, second.vcpu) == ("breakpoint", "par_worker", 0)
    threads = d.threads()
    assert [(thread.status, thread.function) for thread in threads] == [("running", "par_worker"),
                                                                        ("runnable", "par_worker")]
    d.gdb("delete")

    # registers per vCPU: each is inside par_worker with its own stack
    stop = d.select_thread(1)
    assert stop.vcpu == 1
    rsp1 = d.registers()["rsp"]
    d.select_thread(0)
    assert d.registers()["rsp"] != rsp1

    # the race: the last store to par_counter before the end, found backwards and forwards
    d.gdb("continue")
    d.watch("par_counter")
    hit = d.reverse_continue()
    assert hit.reason == "watchpoint" and hit.function == "par_worker"
    naive_vcpu, naive_icount = _last_store(race, kbdshell_elf, hit.icount + 1)   # reverse stops before the store
    assert (hit.vcpu, hit.icount + 1) == (naive_vcpu, naive_icount)


def _last_store(log: Path, elf: Path, upto: int) -> tuple[int, int]:
    """A naive forward replay: the last write to par_counter at or before icount `upto`, and its vCPU."""
    from elftools.elf.elffile import ELFFile
    with elf.open("rb") as file:
        address = next(symbol["st_value"] for symbol in ELFFile(file).get_section_by_name(".symtab").iter_symbols()
                       if symbol.name == "par_counter")
    timeline = Timeline(ReplaySession(log))
    timeline.add_watchpoint(address, 8, "w")
    last = None
    while True:
        stop = timeline.cont()
        if stop.reason != "watchpoint" or stop.mark.icount > upto:
            return last
        last = (timeline.session.domain.ran, stop.mark.icount)


def test_shell_threads_and_thread(d, capsys):
    d.reset()
    shell = DebugShell(d, [])
    d.gdb("delete")
    d.break_at("par_worker")
    shell.execute("continue")
    shell.execute("threads")
    shell.execute("thread 0")
    out = capsys.readouterr().out
    assert "breakpoint" in out and "vCPU 1]" in out, out            # the stop line names the vCPU
    assert "* vCPU 1  running   par_worker" in out and "  vCPU 0  " in out, out
    assert "  vCPU 0  runnable  hypercall_page" in out, out        # it just sent vCPU 1 the IPI
    assert out.count("vCPU 0]") == 1, "`thread 0` shows where vCPU 0 stands"
    d.gdb("delete")


def test_stepi_moves_the_selected_vcpu_and_reverse_steps_per_vcpu(d, race):
    """On vCPU 0's stop, `thread 2` + stepi (GDB sends vCont;s:2;c) runs the domain until vCPU 1 has
    executed one instruction; the timeline steps any vCPU back to its previous instruction. Both land
    where a naive instruction-by-instruction replay says."""
    d.reset()
    d.gdb("delete")
    d.break_at("par_worker")
    d.cont()
    here = d.cont()
    assert here.vcpu == 0
    d.gdb("delete")
    runners = _runners(race, here.icount + 10_000)
    d.select_thread(1)
    forward = d.stepi()
    following = min(i for i in range(here.icount, len(runners)) if runners[i] == 1)
    assert (forward.vcpu, forward.icount) == (1, following + 1)

    d.select_thread(1)
    back = d.reverse_stepi()                 # GDB: Hc0 + bs; the stub steps the selected vCPU back
    assert (back.vcpu, back.icount) == (1, following)
    d.select_thread(0)
    back0 = d.reverse_stepi()
    assert (back0.vcpu, back0.icount) == (0, max(i for i in range(following) if runners[i] == 0))

    timeline = Timeline(ReplaySession(race))
    timeline.goto_icount(here.icount)
    back = timeline.reverse_step_vcpu(1)
    previous = max(i for i in range(here.icount) if runners[i] == 1)
    assert (back.vcpu, back.mark.icount, timeline.session.domain.current) == (1, previous, 1)
    back0 = timeline.reverse_step_vcpu(0)
    assert back0.mark.icount == max(i for i in range(previous) if runners[i] == 0)
    step = timeline.step_vcpu(1)
    assert (step.vcpu, step.mark.icount) == (1, min(i for i in range(back0.mark.icount, len(runners))
                                                    if runners[i] == 1) + 1)


def test_watch_and_reverse_continue_find_the_losing_store_and_the_other_vcpus_store(d):
    """The race, debugged backwards: from the end, reverse-continue on `par_counter` until a store that
    made the counter smaller - the stale write of the unlocked read-modify-write. The store before it
    (the increments it overwrote) was the other vCPU's."""
    d.reset()
    d.gdb("delete")
    d.gdb("continue")                                   # to the end: the wrong total is printed
    d.watch("par_counter")
    for _ in range(2_000):
        stop = d.reverse_continue()
        assert stop.reason == "watchpoint", stop
        written, before = int(stop.old_value), int(stop.new_value)    # backwards: "new" is the value before
        if written < before:
            break
    else:
        raise AssertionError("no store made the counter smaller")
    losing = stop
    overwritten = d.reverse_continue()
    assert overwritten.reason == "watchpoint" and overwritten.vcpu != losing.vcpu
    assert int(overwritten.old_value) == before, "the store just before set the value the stale one undid"
    d.gdb("delete")


def _runners(log: Path, count: int) -> list[int]:
    """A naive replay one instruction at a time: the vCPU that executed each instruction."""
    timeline = Timeline(ReplaySession(log))
    runners = []
    while timeline.position.icount < count and not timeline.at_end:
        before = timeline.position.icount
        timeline.step()
        runners.extend([timeline.session.domain.ran] * (timeline.position.icount - before))
    return runners
