"""Determinism whatever the neighbours do: a domain recorded on a pCPU shared with random neighbours
(busy or idle guests, random weights and caps, pauses, weight changes, and pin changes that move
them - and the recorded domain, its recording going along - between two pCPUs while they run, at random moments, and a peer domain signalling it over an
inter-domain event channel and writing a xenstore node it watches - moved too) replays alone from its log and verifies to the end, with the
same console output - also while, during the replay, other domains keep running and moving in the same
process and the replaying process itself is moved between host cores. The two pCPUs run in this
process (host/pcpu.py's PhysicalCpu driven step by step over real pipes, their inter-domain messages,
xenstore changes and moves routed as the hypervisor routes them); the guests are real."""
from __future__ import annotations

import os
import threading
import time
from multiprocessing import Pipe
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from dom0.replay import ReplaySession
from host.pcpu import PhysicalCpu
from host.xlcfg import DomainConfig
from tests.conftest import guest_path
from xen.replay import ALL_RECORDS, Mark

pytestmark = pytest.mark.slow
MAX_STEPS = 2000
PEER_DOMID = 9
PCPU_SLICE_SECONDS = 0.005    # host time each pCPU runs per round of the simulated host
REPLAY_CHUNK = 20_000        # instructions replayed between two moves of the neighbours and of this process

neighbour = st.fixed_dictionaries({"guest": st.sampled_from(["spinpoll", "kbdshell"]),
                                   "weight": st.integers(1, 65535), "cap": st.sampled_from([0, 0, 10, 50])})
action = st.tuples(st.integers(0, 30), st.sampled_from(["pause", "unpause", "sched-credit", "pin", "move", "type",
                                                        "signal", "xs"]),
                   st.integers(0, 3), st.integers(1, 65535))


class TwoPcpus:
    """Two PhysicalCpus in this process and the far ends of their pipes: requests and their replies,
    console output, and what the hypervisor routes (inter-domain messages to the pCPU of the domain
    they name, a moving domain's state from one pCPU to the other)."""

    def __init__(self) -> None:
        self.pipes, self.cpus = [], []
        for index in range(2):
            ours, theirs = Pipe()
            self.pipes.append(ours)
            self.cpus.append(PhysicalCpu(index, theirs))
        self.requests = iter(range(1, 10**6))
        self.seen: dict[str, bytearray] = {}
        self.gone: set[str] = set()
        self.where: dict[str, int] = {}
        self.configs: dict[str, tuple[DomainConfig, int]] = {}
        self.replies: dict[int, dict] = {}

    def ask(self, name: str, op: str, **fields) -> dict:
        """A request for domain `name` to the pCPU it is on; its reply. The pCPU answers in this thread
        (its engines belong to it) while a reader thread takes what it sends, up to the reply, as the
        hypervisor process would: a reply (a leaving domain's memory) may not fit in the pipe."""
        index, request_id = self.where[name], next(self.requests)
        received: list[tuple] = []

        def read() -> None:
            while not received or received[-1][:2] != ("reply", request_id):
                received.append(self.pipes[index].recv())
        reader = threading.Thread(target=read)
        reader.start()
        self.cpus[index].handle({"op": op, "id": request_id, "name": name, **fields})
        reader.join()
        for message in received:
            self._message(message)
        return self.replies.pop(request_id)

    def create(self, config: DomainConfig, domid: int, pcpu: int, **fields) -> None:
        self.where[config.name], self.configs[config.name] = pcpu, (config, domid)
        self.cpus[pcpu].handle({"op": "create", "id": next(self.requests), "config": config, "domid": domid, **fields})

    def move(self, name: str) -> None:
        """`vcpu-pin` to the other pCPU: the domain leaves one worker and arrives in the other."""
        left = self.ask(name, "leave")
        assert "moved" in left, left
        config, domid = self.configs[name]
        self.where[name] = 1 - self.where[name]
        arrived = self.ask(name, "arrive", config=config, domid=domid, moved=left["moved"])
        assert "error" not in arrived, arrived

    def _message(self, message: tuple) -> None:
        if message[0] == "reply":
            self.replies[message[1]] = message[2]
        elif message[0] == "console":
            self.seen.setdefault(message[1], bytearray()).extend(message[2])
        elif message[0] == "gone":
            self.gone.add(message[1])
        elif message[0] == "interdomain":
            change, domid, port, remote_dom, remote_port = message[1:]
            name = next((name for name, (_, known) in self.configs.items() if known == remote_dom), None)
            if name is not None and name not in self.gone:
                self.ask(name, "interdomain", change=change, port=remote_port, remote_dom=domid, remote_port=port)
        elif message[0] == "xenstore":      # to every other domain
            for name, (_, known) in list(self.configs.items()):
                if known != message[1] and name not in self.gone:
                    self.ask(name, "xenstore", payloads=message[2])

    def drain(self) -> None:
        for pipe in self.pipes:
            while pipe.poll(0):
                self._message(pipe.recv())

    def step(self, actions: list, step: int, names: list[str]) -> None:
        """Apply the actions due at `step` to the domains `names`, run one quantum on each pCPU."""
        while actions and actions[0][0] <= step:
            _, what, target, number = actions.pop(0)
            name = names[target % len(names)]
            if name in self.gone:
                continue
            if what == "sched-credit":
                self.ask(name, "sched-credit", weight=number, cap=number % 3 * 20)
            elif what == "pin":
                self.ask(name, "pin", cpus=frozenset({self.where[name]}) if number % 2 else None)
            elif what == "move":
                self.move(name)
                if number % 2 and "recorded" not in self.gone:      # the recorded domain too, its log going along
                    self.move("recorded")
            elif what == "type":
                self.ask(name, "console-in", data=b"ticks\r")
            elif what == "signal":          # the peer notifies the recorded domain (once it has bound its port)
                self.ask("peer", "console-in", data=b"evtchn send 4\r" if number % 3 else b"evtchn bind 1 4\r")
            elif what == "xs":              # the peer writes a node the recorded domain may read and watches
                self.ask("peer", "console-in", data=b"xs write data/n %d\r" % number)
            else:
                self.ask(name, what)
        for cpu in self.cpus:
            # Each pCPU runs for a slice of host time, as its own process would while the other runs: one
            # quantum may take longer than a tick, and a single step per round would then give each round
            # to the neighbour whose tick is due again, never to a domain over its credit.
            started = time.monotonic()
            while any(not hosted.paused for hosted in cpu.domains.values()):    # else it would wait for a request
                cpu.step()
                if time.monotonic() - started >= PCPU_SLICE_SECONDS:
                    break
        self.drain()


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(neighbours=[{"guest": "kbdshell", "weight": 243, "cap": 10}, {"guest": "spinpoll", "weight": 892, "cap": 0},
                     {"guest": "kbdshell", "weight": 27449, "cap": 50}],
         actions=[(16, "type", 3, 1100), (20, "type", 0, 202), (0, "pause", 0, 724), (1, "signal", 2, 249),
                  (2, "sched-credit", 0, 4311), (30, "move", 0, 11926)],
         replay_actions=[(4, "pin", 2, 110), (20, "unpause", 2, 884), (30, "pin", 0, 47935),
                         (26, "sched-credit", 0, 65534)],
         cores=[1, 4, 2])
@given(neighbours=st.lists(neighbour, min_size=1, max_size=3), actions=st.lists(action, max_size=8),
       replay_actions=st.lists(action, max_size=8), cores=st.lists(st.integers(0, 7), min_size=1, max_size=6))
def test_a_recording_replays_whatever_its_neighbours_do(tmp_path_factory, neighbours, actions, replay_actions, cores):
    log = tmp_path_factory.mktemp("neighbours") / "recorded.xrr"
    host = TwoPcpus()
    kbdshell = guest_path("kbdshell")
    host.create(DomainConfig("recorded", kbdshell, memory_mib=4), 1, 0, record=str(log))
    host.create(DomainConfig("peer", kbdshell, memory_mib=4), PEER_DOMID, 1)
    names = ["peer"]
    for index, spec in enumerate(neighbours):
        names.append(f"n{index}")
        host.create(DomainConfig(f"n{index}", guest_path(spec["guest"]), memory_mib=4, weight=spec["weight"],
                                 cap=spec["cap"]), index + 2, index % 2)
    schedule = sorted(actions)
    typed = [b"evtchn alloc 9\r", b"xs watch /local/domain/9/data/n\r", b"echo one\r", b"evtchn count 4\r",
             b"evtchn status 4\r", b"xs read /local/domain/9/data/n\r", b"xs events\r", b"halt\r"]
    for step in range(MAX_STEPS):
        if typed and step % 40 == 5:
            host.ask("recorded", "console-in", data=typed.pop(0))
        if step in (25, 50):               # the peer binds the port offered to it, and notifies
            host.ask("peer", "console-in", data=b"evtchn bind 1 4\r" if step == 25 else b"evtchn send 4\r")
        if step == 30:                     # the peer shares a node with the recorded domain (domid 1)
            host.ask("peer", "console-in", data=b"xs write data/n 0\rxs perms data/n n9 r1\r")
        if step in (60, 140) and "recorded" not in host.gone:     # at least two moves of the recorded domain
            host.move("recorded")
        host.step(schedule, step, names)
        if "recorded" in host.gone:
            break
    assert "recorded" in host.gone, ("the recorded domain did not power off", bytes(host.seen.get("recorded", b""))[-300:],
                                     host.where, {name: (hosted.state, hosted.idle, hosted.wake_ns, hosted.entity.runnable)
                                                  for cpu in host.cpus for name, hosted in cpu.domains.items()})
    recorded_output = bytes(host.seen["recorded"])

    replayed = bytearray()
    session = ReplaySession(Path(log), console_output=lambda data: replayed.extend(data))
    schedule, allowed, steps = sorted(replay_actions), sorted(os.sched_getaffinity(0)), iter(range(10**6))
    try:
        while not session.replayer.finished:
            os.sched_setaffinity(0, {allowed[cores[next(steps) % len(cores)] % len(allowed)]})
            session.replayer.run(Mark(session.domain.vcpu.icount + REPLAY_CHUNK, ALL_RECORDS))
            host.step(schedule, next(steps) % 31, names)
    finally:
        os.sched_setaffinity(0, allowed)
    for cpu in host.cpus:
        cpu.handle({"op": "quit", "id": 0})
    host.drain()
    assert session.replayer.recorded_outcome == "shutdown:poweroff"
    assert bytes(replayed) == recorded_output
    assert b"one" in replayed and b"halt" in replayed
    session.close()
