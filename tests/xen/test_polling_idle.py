"""Guests that wait by polling instead of blocking: idle is detected, keys reach them, runs end.

Two real guests: minimal waits for its input line with SCHEDOP_yield (events masked), spinpoll
waits as GRUB's Xen port does, reading the console ring and the TSC in a loop without ever making
a hypercall. xen/sched.py defines their idle moments (a quiet yield; a quiet slice with an empty
input ring followed by a read of in_prod); these tests hold it to what a user relies on: scripted
keys arrive under both clocks, `--linger` ends the run once the script is done (exit status 3), a
virtual-clock run is reproducible and a recording replays exactly.
"""
from __future__ import annotations

import pytest

LINGER = "0.1"


@pytest.mark.parametrize("clock", ["virtual", "real"])
def test_a_yielding_guest_left_waiting_for_a_line_ends_after_the_linger_time(minimal_elf, xenrr, clock):
    """The issue's case: `--keys x` never completes minimal's input line; the run used to never end."""
    run = xenrr("run", minimal_elf, "--clock", clock, "--linger", LINGER, "--keys", "x", timeout=60)
    assert run.status == 3, run.stderr
    assert run.stdout.endswith("minimal: type a line\r\n")
    assert "key script done and the guest stayed idle" in run.stderr.splitlines()[-1]


@pytest.mark.parametrize("clock", ["virtual", "real"])
def test_scripted_keys_reach_a_guest_that_polls_the_ring(spinpoll_elf, xenrr, clock):
    run = xenrr("run", spinpoll_elf, "--clock", clock, "--keys", r"hi\r\p50\recho it\rhalt\r", timeout=60)
    assert run.status == 0, run.stderr
    assert run.stdout == "spinpoll ready\r\n> hi\r\nhi\r\n> \r\n> echo it\r\necho it\r\n> halt\r\n"


@pytest.mark.parametrize("clock", ["virtual", "real"])
def test_a_ring_polling_guest_ends_after_the_linger_time(spinpoll_elf, xenrr, clock):
    run = xenrr("run", spinpoll_elf, "--clock", clock, "--linger", LINGER, "--keys", "x", timeout=60)
    assert run.status == 3, run.stderr
    assert run.stdout == "spinpoll ready\r\n> x"
    assert "key script done and the guest stayed idle" in run.stderr


def test_a_ring_polling_guest_ends_when_its_input_ends(spinpoll_elf, xenrr):
    run = xenrr("run", spinpoll_elf, stdin=b"hi\r", timeout=60)
    assert (run.status, run.stdout) == (3, "spinpoll ready\r\n> hi\r\nhi\r\n> ")


def test_ctrl_close_bracket_detaches_from_a_ring_polling_guest(spinpoll_elf, xenrr):
    run = xenrr("run", spinpoll_elf, stdin=b"hi\r\x1d", timeout=60)
    assert run.status == 3 and "detached" in run.stderr
    assert run.stdout.endswith("> hi\r\nhi\r\n> ")


@pytest.mark.parametrize("guest", ["minimal", "spinpoll"])
def test_a_virtual_clock_run_of_a_polling_guest_is_reproducible(request, xenrr, guest):
    elf = request.getfixturevalue(f"{guest}_elf")
    runs = [xenrr("run", elf, "--clock", "virtual", "--linger", LINGER, "--keys", r"ab\r\p20cd", timeout=60)
            for _ in range(2)]
    assert (runs[0].status, runs[0].stdout, runs[0].instructions) == (runs[1].status, runs[1].stdout, runs[1].instructions)


@pytest.mark.parametrize("clock", ["virtual", "real"])
def test_a_recording_of_a_ring_polling_guest_replays_exactly(spinpoll_elf, xenrr, tmp_path, clock):
    log = tmp_path / "spinpoll.xrr"
    recorded = xenrr("record", spinpoll_elf, "-o", log, "--clock", clock, "--linger", LINGER,
                     "--keys", r"one\r\p30two\r", timeout=60)
    assert recorded.status == 3, recorded.stderr
    assert recorded.stdout == "spinpoll ready\r\n> one\r\none\r\n> two\r\ntwo\r\n> "
    replayed = xenrr("replay", log, timeout=60)
    assert (replayed.status, replayed.stdout) == (0, recorded.stdout), replayed.stderr
    assert f"{recorded.instructions} instructions" in replayed.stderr
