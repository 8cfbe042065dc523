"""Determinism whatever the neighbours do: a domain recorded on a pCPU shared with random neighbours
(busy or idle guests, random weights and caps, pauses, weight changes and pins at random moments)
replays alone from its log and verifies to the end, with the same console output. The pCPU runs in
this process (host/pcpu.py's PhysicalCpu driven step by step over a real pipe); its guests are real."""
from __future__ import annotations

from multiprocessing import Pipe
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from dom0.replay import ReplaySession
from host.pcpu import PhysicalCpu
from host.xlcfg import DomainConfig
from tests.conftest import guest_path

pytestmark = pytest.mark.slow
MAX_STEPS = 2000

neighbour = st.fixed_dictionaries({"guest": st.sampled_from(["spinpoll", "kbdshell"]),
                                   "weight": st.integers(1, 65535), "cap": st.sampled_from([0, 0, 10, 50])})
action = st.tuples(st.integers(0, 30), st.sampled_from(["pause", "unpause", "sched-credit", "pin", "type"]),
                   st.integers(0, 2), st.integers(1, 65535))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(neighbours=st.lists(neighbour, min_size=1, max_size=3), actions=st.lists(action, max_size=8))
def test_a_recording_replays_whatever_its_neighbours_do(tmp_path_factory, neighbours, actions):
    log = tmp_path_factory.mktemp("neighbours") / "recorded.xrr"
    ours, theirs = Pipe()
    cpu = PhysicalCpu(0, theirs)
    requests = iter(range(1, 10**6))
    seen: dict[str, bytearray] = {}

    def ask(op: str, **fields) -> None:
        cpu.handle({"op": op, "id": next(requests), **fields})

    def drain() -> set[str]:
        gone = set()
        while ours.poll(0):
            message = ours.recv()
            if message[0] == "console":
                seen.setdefault(message[1], bytearray()).extend(message[2])
            elif message[0] == "gone":
                gone.add(message[1])
        return gone

    kbdshell = guest_path("kbdshell")
    ask("create", config=DomainConfig("recorded", kbdshell, memory_mib=4), domid=1, record=str(log))
    for index, spec in enumerate(neighbours):
        ask("create", config=DomainConfig(f"n{index}", guest_path(spec["guest"]), memory_mib=4, weight=spec["weight"],
                                          cap=spec["cap"]), domid=index + 2)
    schedule = sorted(actions)
    typed = [b"echo one\r", b"hash neighbours\r", b"halt\r"]
    gone: set[str] = set()
    for step in range(MAX_STEPS):
        while schedule and schedule[0][0] <= step:
            _, what, target, number = schedule.pop(0)
            name = f"n{target % len(neighbours)}"
            if what == "sched-credit":
                ask("sched-credit", name=name, weight=number, cap=number % 3 * 20)
            elif what == "pin":
                ask("pin", name=name, cpus=frozenset({0}) if number % 2 else None)
            elif what == "type":
                ask("console-in", name=name, data=b"ticks\r")
            else:
                ask(what, name=name)
        if step in (5, 40) or (step > 40 and typed and step % 40 == 0):
            if typed:
                ask("console-in", name="recorded", data=typed.pop(0))
        cpu.step()
        gone |= drain()
        if "recorded" in gone:
            break
    assert "recorded" in gone, "the recorded domain did not power off"
    ask("quit")
    drain()
    session = ReplaySession(Path(log), console_output=lambda data: replayed.extend(data))
    replayed = bytearray()
    session.replayer.run(None)
    assert session.replayer.recorded_outcome == "shutdown:poweroff"
    assert bytes(replayed) == bytes(seen["recorded"])
    assert b"one" in replayed and b"halt" in replayed
    session.close()
