"""Determinism whatever the neighbours do: a domain recorded on a pCPU shared with random neighbours
(busy or idle guests, random weights and caps, pauses, weight changes and pins at random moments,
and a peer domain signalling it over an inter-domain event channel at random moments) replays alone
from its log and verifies to the end, with the same console output - also while, during the replay,
other domains keep running in the same process under random pin and pause changes and the replaying
process itself is moved between host cores. The pCPU runs in this process (host/pcpu.py's
PhysicalCpu driven step by step over a real pipe, its inter-domain messages routed as the hypervisor
routes them); its guests are real."""
from __future__ import annotations

import os
from multiprocessing import Pipe
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from dom0.replay import ReplaySession
from host.pcpu import PhysicalCpu
from host.xlcfg import DomainConfig
from tests.conftest import guest_path
from xen.replay import ALL_RECORDS, Mark

pytestmark = pytest.mark.slow
MAX_STEPS = 2000
PEER_DOMID = 9
REPLAY_CHUNK = 20_000        # instructions replayed between two moves of the neighbours and of this process

neighbour = st.fixed_dictionaries({"guest": st.sampled_from(["spinpoll", "kbdshell"]),
                                   "weight": st.integers(1, 65535), "cap": st.sampled_from([0, 0, 10, 50])})
action = st.tuples(st.integers(0, 30), st.sampled_from(["pause", "unpause", "sched-credit", "pin", "type", "signal"]),
                   st.integers(0, 2), st.integers(1, 65535))


class Pcpu:
    """A PhysicalCpu in this process and the far end of its pipe: requests, console output, and the
    inter-domain messages routed back to the domain they name (as host/hypervisor.py does)."""

    def __init__(self) -> None:
        self.ours, theirs = Pipe()
        self.cpu = PhysicalCpu(0, theirs)
        self.requests = iter(range(1, 10**6))
        self.seen: dict[str, bytearray] = {}
        self.gone: set[str] = set()
        self.names: dict[int, str] = {}

    def ask(self, op: str, **fields) -> None:
        self.cpu.handle({"op": op, "id": next(self.requests), **fields})

    def create(self, config: DomainConfig, domid: int, **fields) -> None:
        self.names[domid] = config.name
        self.ask("create", config=config, domid=domid, **fields)

    def drain(self) -> None:
        while self.ours.poll(0):
            message = self.ours.recv()
            if message[0] == "console":
                self.seen.setdefault(message[1], bytearray()).extend(message[2])
            elif message[0] == "gone":
                self.gone.add(message[1])
            elif message[0] == "interdomain":
                change, domid, port, remote_dom, remote_port = message[1:]
                if self.names.get(remote_dom) in self.cpu.domains:
                    self.ask("interdomain", name=self.names[remote_dom], change=change, port=remote_port,
                             remote_dom=domid, remote_port=port)

    def step(self, actions: list, step: int, names: list[str]) -> None:
        """Apply the actions due at `step` to the domains `names`, run one quantum, collect the output."""
        while actions and actions[0][0] <= step:
            _, what, target, number = actions.pop(0)
            name = names[target % len(names)]
            if what == "sched-credit":
                self.ask("sched-credit", name=name, weight=number, cap=number % 3 * 20)
            elif what == "pin":
                self.ask("pin", name=name, cpus=frozenset({0}) if number % 2 else None)
            elif what == "type":
                self.ask("console-in", name=name, data=b"ticks\r")
            elif what == "signal":          # the peer notifies the recorded domain (once it has bound its port)
                self.ask("console-in", name="peer", data=b"evtchn send 4\r" if number % 3 else b"evtchn bind 1 4\r")
            else:
                self.ask(what, name=name)
        self.cpu.step()
        self.drain()


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(neighbours=st.lists(neighbour, min_size=1, max_size=3), actions=st.lists(action, max_size=8),
       replay_actions=st.lists(action, max_size=8), cores=st.lists(st.integers(0, 7), min_size=1, max_size=6))
def test_a_recording_replays_whatever_its_neighbours_do(tmp_path_factory, neighbours, actions, replay_actions, cores):
    log = tmp_path_factory.mktemp("neighbours") / "recorded.xrr"
    host = Pcpu()
    kbdshell = guest_path("kbdshell")
    host.create(DomainConfig("recorded", kbdshell, memory_mib=4), 1, record=str(log))
    host.create(DomainConfig("peer", kbdshell, memory_mib=4), PEER_DOMID)
    names = []
    for index, spec in enumerate(neighbours):
        names.append(f"n{index}")
        host.create(DomainConfig(f"n{index}", guest_path(spec["guest"]), memory_mib=4, weight=spec["weight"],
                                 cap=spec["cap"]), index + 2)
    schedule = sorted(actions)
    typed = [b"evtchn alloc 9\r", b"echo one\r", b"evtchn count 4\r", b"evtchn status 4\r", b"halt\r"]
    for step in range(MAX_STEPS):
        if typed and step % 40 == 5:
            host.ask("console-in", name="recorded", data=typed.pop(0))
        if step in (25, 50):               # the peer binds the port offered to it, and notifies
            host.ask("console-in", name="peer", data=b"evtchn bind 1 4\r" if step == 25 else b"evtchn send 4\r")
        host.step(schedule, step, names)
        if "recorded" in host.gone:
            break
    assert "recorded" in host.gone, "the recorded domain did not power off"
    recorded_output = bytes(host.seen["recorded"])

    replayed = bytearray()
    session = ReplaySession(Path(log), console_output=lambda data: replayed.extend(data))
    schedule, allowed, steps = sorted(replay_actions), sorted(os.sched_getaffinity(0)), iter(range(10**6))
    try:
        while not session.replayer.finished:
            os.sched_setaffinity(0, {allowed[cores[next(steps) % len(cores)] % len(allowed)]})
            session.replayer.run(Mark(session.domain.vcpu.icount + REPLAY_CHUNK, ALL_RECORDS))
            host.step(schedule, next(steps) % 31, names + ["peer"])
    finally:
        os.sched_setaffinity(0, allowed)
    host.ask("quit")
    host.drain()
    assert session.replayer.recorded_outcome == "shutdown:poweroff"
    assert bytes(replayed) == recorded_output
    assert b"one" in replayed and b"halt" in replayed
    session.close()
