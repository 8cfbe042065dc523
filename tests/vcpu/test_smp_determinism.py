"""Determinism of a two-vCPU domain under every way the host can slice execution (xen/smp.py).

kbdshell with two vCPUs runs `par`, whose workers race on a shared counter (the deliberate unlocked
read-modify-write, guests/kbdshell/par.c), while keys and timer interrupts are injected through the
funnel at fixed instruction counts. The vCPUs take turns on the one engine in quanta of QUANTUM
instructions. The same session is driven with different stop patterns - one big run per input,
random small limits, fixed slices, breakpoints on the race, single steps - and must produce the same
trace: (icount, vCPU, pc, rax, register hash) at every hypercall and injection, the same vCPU
switches, the same final registers of BOTH vCPUs, memory and console output (with the same lost
updates). A recording with a wrong total replays with the same wrong total, and the timeline
(checkpoints, reverse execution) lands on every vCPU's registers exactly as a fresh replay does.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from dom0.replay import ReplaySession
from stub.timeline import Timeline
from xen.builder import build_domain
from xen.domain import Domain, RunState
from xen.inject import Kind
from xen.timekeeping import TimeBase
from xen.vcpu import ExitReason
from tests.vcpu.test_determinism import _register_hash

ROOT = Path(__file__).resolve().parents[2]
SESSION = b"par 2000\recho between\rpar 500\r"
MEMORY = 4 * 1024 * 1024
QUANTUM = 3_000
END = 1_500_000


def _schedule() -> list[tuple[int, Kind, bytes]]:
    """Keys every ~4k-9k instructions from 20k on, a timer every 50k instructions."""
    rng = random.Random(3)
    inputs, icount = [], 20_000
    for key in SESSION:
        icount += rng.randint(4_000, 9_000)
        inputs.append((icount, Kind.CONSOLE_INPUT, bytes([key])))
    for tick in range(1, END // 50_000):
        inputs.append((tick * 50_000, Kind.TIMER, TimeBase(tick * 50_000).to_bytes()))
    return sorted(inputs, key=lambda item: item[0])


def _symbol(elf: Path, name: str) -> int:
    with elf.open("rb") as file:
        return next(symbol["st_value"] for symbol in ELFFile(file).get_section_by_name(".symtab").iter_symbols()
                    if symbol.name == name)


def run_session(kbdshell: bytes, pattern: str, seed: int = 1, race_address: int = 0) -> dict:
    output = bytearray()
    domain = Domain(build_domain(kbdshell, MEMORY), vcpus=2, quantum=QUANTUM, console_output=output.extend)
    vcpu = domain.vcpu
    rng = random.Random(seed)
    trace: list[tuple] = []
    inputs = _schedule()
    while domain.alive and (inputs or vcpu.icount < END):
        next_input = inputs[0][0] if inputs else END
        if inputs and (vcpu.icount >= next_input or domain.state == RunState.BLOCKED):
            _, kind, payload = inputs.pop(0)
            domain.funnel.inject(kind, payload)
            trace.append(("inject", vcpu.icount, domain.current, vcpu.pc, int(kind), _register_hash(vcpu)))
            continue
        if domain.state == RunState.BLOCKED:
            break
        if pattern == "big":
            exit = domain.run(next_input)
        elif pattern == "small":
            exit = domain.run(min(next_input, vcpu.icount + rng.randint(1, 2_500)))
        elif pattern == "slices":
            exit = domain.run(min(next_input, vcpu.icount + 1_000))
        elif pattern == "breakpoints":
            if race_address not in vcpu.breakpoints and vcpu.icount > 40_000:
                vcpu.add_breakpoint(race_address)
            exit = domain.run(next_input)
        else:  # "step" until the second vCPU has run a while, then big runs
            exit = domain.step() if domain.switches < 40 and vcpu.icount < next_input else domain.run(next_input)
        if exit.reason == ExitReason.HYPERCALL:
            trace.append(("hypercall", exit.icount, domain.current, exit.pc, vcpu.reg("rax"), _register_hash(vcpu)))
            domain.handle_exit(exit)
        elif exit.reason in (ExitReason.FAULT, ExitReason.IDLE):
            domain.handle_exit(exit)
    return {"trace": trace, "icount": vcpu.icount, "switches": domain.switches, "output": bytes(output),
            "registers": [domain.vcpu_registers(n).registers + (domain.vcpu_registers(n).pc,) for n in range(2)],
            "memory": hashlib.sha256(vcpu.memory_image()).hexdigest(), "state": domain.state,
            "device": domain.device_state()}


@pytest.fixture(scope="module")
def kbdshell(kbdshell_elf) -> bytes:
    return kbdshell_elf.read_bytes()


@pytest.fixture(scope="module")
def reference(kbdshell) -> dict:
    return run_session(kbdshell, "big")


def _totals(output: bytes) -> list[tuple[int, int]]:
    return [(int(total), int(of)) for total, of in re.findall(rb"par: (\d+) of (\d+) updates", output)]


def test_both_vcpus_ran_and_the_race_lost_updates(reference):
    totals = _totals(reference["output"])
    assert len(totals) == 2 and b"between" in reference["output"]
    assert totals[0][0] < totals[0][1] == 4000, "the race should lose updates at this quantum"
    assert reference["switches"] > 50
    assert reference["registers"][0] != reference["registers"][1]


@pytest.mark.parametrize("pattern,seed", [("small", 1), ("small", 2), ("slices", 1), ("breakpoints", 1)])
def test_stop_pattern_gives_identical_smp_run(kbdshell_elf, kbdshell, reference, pattern, seed):
    assert run_session(kbdshell, pattern, seed, _symbol(kbdshell_elf, "par_worker")) == reference


def test_single_stepping_gives_identical_smp_run(kbdshell, reference):
    assert run_session(kbdshell, "step") == reference


def test_a_smaller_quantum_is_another_interleaving(kbdshell, reference, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "QUANTUM", 1_000)
    finer = run_session(kbdshell, "big")
    assert finer["trace"] != reference["trace"] and finer["switches"] > reference["switches"]


# ------------------------------------------------------------------ a recording of the race


@pytest.fixture(scope="module")
def race_recording(tmp_path_factory, kbdshell_elf) -> tuple[Path, bytes]:
    log = tmp_path_factory.mktemp("smp") / "race.xrr"
    result = subprocess.run([sys.executable, "-m", "dom0.cli", "record", str(kbdshell_elf), "-o", str(log),
                             "--memory", "4", "--vcpus", "2", "--quantum", "4000", "--keys", r"par 3000\rhalt\r"],
                            capture_output=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    return log, result.stdout


def test_the_same_recording_always_gives_the_same_wrong_total(race_recording):
    log, recorded_output = race_recording
    recorded = _totals(recorded_output)
    assert recorded and recorded[0][0] < recorded[0][1], recorded_output
    for _ in range(2):
        replay = subprocess.run([sys.executable, "-m", "dom0.cli", "replay", str(log)], capture_output=True,
                                cwd=ROOT, timeout=120)
        assert replay.returncode == 0, replay.stderr
        assert _totals(replay.stdout) == recorded
        assert b"replayed to the end of the recording" in replay.stderr


def test_dump_shows_the_session_and_the_vcpu_of_every_record(race_recording):
    log, _ = race_recording
    text = subprocess.run([sys.executable, "-m", "dom0.cli", "dump", str(log)], capture_output=True, cwd=ROOT,
                          timeout=60).stdout.decode()
    listed = subprocess.run([sys.executable, "-m", "dom0.cli", "dump", "--json", str(log)], capture_output=True,
                            cwd=ROOT, timeout=60).stdout
    data = json.loads(listed)
    assert data["config"]["vcpus"] == 2 and data["config"]["quantum"] == 4000
    assert re.search(r"^quantum\s+4000$", text, re.M) and re.search(r"^vcpus\s+2$", text, re.M)
    rows = [line.split() for line in text.splitlines() if re.match(r"\s+\d+\s+(\d+|-)\s+\d+\s+\d+\s+0x", line)]
    assert [int(row[3]) for row in rows] == [record["vcpu"] for record in data["records"]]


def _all_vcpus(session: ReplaySession) -> tuple:
    domain = session.domain
    return (domain.current, domain.quantum_end, tuple(domain.vcpu_registers(n) for n in range(len(domain.vcpus))),
            hashlib.sha256(domain.vcpu.memory_image()).hexdigest())


def test_timeline_restores_every_vcpu(race_recording, kbdshell_elf):
    """Reverse execution and gotos over the race land on both vCPUs' registers (and memory) exactly
    where a naive forward replay from the start lands."""
    log, _ = race_recording
    session = ReplaySession(log)
    timeline = Timeline(session, checkpoint_interval=50_000)
    end = timeline.cont().mark
    rng = random.Random(14)
    visited = {}
    timeline.add_watchpoint(_symbol(kbdshell_elf, "par_counter"), 8, "w")
    for step in range(24):
        command = rng.choice(["reverse_cont", "reverse_step", "step", "goto_icount", "cont"])
        if command == "goto_icount":
            timeline.goto_icount(rng.randint(0, end.icount))
        else:
            getattr(timeline, command)()
        visited.setdefault(timeline.position, []).append((f"{step}: {command}", _all_vcpus(session)))
    naive = ReplaySession(log)
    for mark in sorted(visited):
        naive.replayer.run(until=mark)
        expected = _all_vcpus(naive)
        for label, state in visited[mark]:
            assert state == expected, f"{label} at {mark}"
    assert len({state[0] for states in visited.values() for _, state in states}) == 2, "both vCPUs were visited"
