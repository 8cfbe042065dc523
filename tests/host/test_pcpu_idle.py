"""What idle domains cost a pCPU: a blocked domain is run only when its timer is due (at most once per
timer period, never between), whatever its busy neighbour does, and the loop keeps no per-quantum work
for it. host/pcpu.py's PhysicalCpu runs in this process over a real pipe; the guests are real: kbdshell
blocks between the ticks of its 100 Hz periodic timer, spinpoll never blocks."""
from __future__ import annotations

import threading
import time
from multiprocessing import Pipe

from host.credit import QUANTUM_INSTRUCTIONS
from host.pcpu import HostedDomain, PhysicalCpu
from host.xlcfg import DomainConfig
from tests.conftest import guest_path

IDLE_DOMAINS = 4
TICK_NS = 10_000_000              # kbdshell's VCPUOP_set_periodic_timer period
BUSY_QUANTA = 40


def test_idle_domains_run_only_when_their_timer_is_due(monkeypatch):
    ours, theirs = Pipe()
    cpu = PhysicalCpu(0, theirs)
    stop = threading.Event()

    def drain() -> None:                  # the hypervisor's end: replies and console output
        while not stop.is_set():
            if ours.poll(0.05):
                ours.recv()
    reader = threading.Thread(target=drain)
    reader.start()
    runs: dict[str, list[tuple[int, int | None, bool]]] = {}
    real_run = HostedDomain.run

    def run(hosted: HostedDomain, budget: int) -> int:
        runs.setdefault(hosted.config.name, []).append((time.monotonic_ns(), hosted.wake_ns, hosted.idle))
        return real_run(hosted, budget)
    monkeypatch.setattr(HostedDomain, "run", run)
    try:
        cpu.handle({"op": "create", "id": 1, "domid": 1,
                    "config": DomainConfig(name="busy", kernel=guest_path("spinpoll"), memory_mib=4)})
        for index in range(IDLE_DOMAINS):
            cpu.handle({"op": "create", "id": 2 + index, "domid": 2 + index,
                        "config": DomainConfig(name=f"idle{index}", kernel=guest_path("kbdshell"), memory_mib=4)})
        started = time.monotonic_ns()
        while len(runs.get("busy", ())) < BUSY_QUANTA:
            cpu.step()
        elapsed = time.monotonic_ns() - started
    finally:
        stop.set()
        reader.join()
    busy = cpu.domains["busy"].entity.instructions
    assert busy >= (BUSY_QUANTA - 1) * QUANTUM_INSTRUCTIONS // 2
    for index in range(IDLE_DOMAINS):
        name = f"idle{index}"
        hosted = cpu.domains[name]
        # Blocked until its next tick - or that tick came due and woke it in the last step, which then
        # ran the busy domain (on a loaded host a step can outlast a tick): it is never runnable before.
        assert hosted.wake_ns is not None and (hosted.idle or hosted.wake_ns <= time.monotonic_ns()), name
        boot, *woken = runs[name]
        assert boot[1] is None                                   # the first run boots it until it blocks
        assert woken, name                                       # its timer ticked meanwhile
        for at, wake_ns, idle in woken:                          # never run before its timer was due
            assert wake_ns is not None and wake_ns <= at, (name, at, wake_ns)
            assert not idle                                      # woken by the loop, not run while blocked
        assert len(woken) <= elapsed // TICK_NS + 1              # at most once per tick
        assert hosted.entity.instructions * 100 < busy           # its ticks are a small part of the work
