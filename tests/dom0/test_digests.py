"""State digests in the log: small, and as precise as before (issue 15, fixed costs).

One kbdshell recording (`bench` keeps the vCPU busy for about 3 x 10^8 instructions, so the log has
periodic digests every 2^24 instructions and a full one among them), made in-process with the real
log daemon. Its digest records are measured byte for byte (the bytes are deterministic: the budget
is asserted, never a time), and divergences planted into its replay between two digests must be
found at the very next digest record, named as precisely as the digest allows.
"""
from __future__ import annotations

import pytest

from dom0.consoleinput import KeyScript, parse_key_script
from dom0.logfile import LogReader
from dom0.record import record
from dom0.replay import ReplaySession
from xen.builder import build_domain
from xen.digest import Digest
from xen.domain import Domain
from xen.inject import ReplayDivergence
from xen.logrecord import KIND_DIGEST, KIND_END, Encoder
from xen.replay import Mark
from xen.sched import DIGEST_INTERVAL, FULL_DIGEST_EVERY
from xen.vcpu import CpuState

BENCH_ITERATIONS = 40_000_000           # about 3.2 x 10^8 instructions: 19 periodic digests, one of them full
BUSY_INSTRUCTIONS_PER_SECOND = 2.4e9    # kbdshell's bench on the JIT (docs/benchmarks.md, record_replay)
BUDGET_BYTES_PER_BUSY_SECOND = 2048


@pytest.fixture(scope="module")
def busy_recording(tmp_path_factory, kbdshell_elf):
    path = tmp_path_factory.mktemp("digests") / "busy.xrr"
    domain = Domain(build_domain(kbdshell_elf.read_bytes(), 16 << 20))
    result = record(domain, kbdshell_elf, KeyScript(parse_key_script(rf"bench {BENCH_ITERATIONS}\rhalt\r")), path,
                    clock="virtual", max_instructions=None, linger_ns=10**9)
    assert result.outcome.reason == "shutdown", result.outcome
    with LogReader(path) as log:
        records = [(record.seq, record.kind, record.vcpu, record.icount, record.rip, bytes(record.payload))
                   for record in log.records()]
    return path, records


def _digest_records(records):
    return [entry for entry in records if entry[1] == KIND_DIGEST]


def test_digests_of_a_busy_guest_cost_at_most_2_kb_per_busy_second(busy_recording):
    _, records = busy_recording
    encoder, sizes = Encoder(), {}
    for seq, kind, vcpu, icount, rip, payload in records:
        encoded = bytearray()
        encoder.encode(encoded, kind, vcpu, icount, rip, payload)
        sizes[seq] = len(encoded)
    digests = _digest_records(records)
    assert len(digests) >= FULL_DIGEST_EVERY
    full = [entry for entry in digests if Digest.from_bytes(entry[5]).memory_hash is not None]
    assert len(full) == len(digests) // FULL_DIGEST_EVERY
    assert all(len(entry[5]) == 4 for entry in digests if entry not in full)        # the state hash alone
    busy_instructions = digests[-1][3] - digests[0][3]
    digest_bytes = sum(sizes[entry[0]] for entry in digests[1:])
    per_busy_second = digest_bytes / busy_instructions * BUSY_INSTRUCTIONS_PER_SECOND
    assert per_busy_second <= BUDGET_BYTES_PER_BUSY_SECOND, f"{per_busy_second:.0f} bytes per busy second"
    # The periodic cadence is unchanged: a digest at the first slice boundary 2^24 instructions after the last.
    gaps = [later[3] - earlier[3] for earlier, later in zip(digests, digests[1:])]
    assert all(DIGEST_INTERVAL <= gap < DIGEST_INTERVAL + 2_000_000 for gap in gaps), gaps


def test_the_end_digest_carries_the_registers_in_the_clear(busy_recording):
    path, records = busy_recording
    end = records[-1]
    assert end[1] == KIND_END
    session = ReplaySession(path)
    try:
        session.replayer.run()
        assert session.replayer.digests_checked == len(_digest_records(records)) + 1
        final = session.domain.digest(with_memory=True, in_clear=True)
        assert final.registers is not None and final.registers[16] == end[4]        # rip as the record says
    finally:
        session.close()


def _replay_with_plant(path, plant_icount, plant):
    """Replay `path`, stop at `plant_icount`, apply `plant(domain)`, replay on: the divergence message."""
    session = ReplaySession(path)
    try:
        session.replayer.run(Mark(plant_icount, 0))
        assert session.domain.vcpu.icount == plant_icount
        plant(session.domain)
        with pytest.raises(ReplayDivergence) as raised:
            session.replayer.run()
        return str(raised.value)
    finally:
        session.close()


@pytest.mark.parametrize("which", [3, 10])
def test_a_register_changed_between_digests_is_found_at_the_next_digest(busy_recording, which):
    """The planted change (a bit of r15, which bench leaves alone) is found at the first digest after it."""
    path, records = busy_recording
    digests = _digest_records(records)
    before, after = digests[which - 1], digests[which]
    planted = (before[3] + after[3]) // 2

    def flip_r15(domain):
        domain.vcpu.set_reg("r15", domain.vcpu.reg("r15") ^ 1)

    message = _replay_with_plant(path, planted, flip_r15)
    assert message.startswith(f"state differs at icount {after[3]} (record {after[0]}): registers"), message
    assert "rip" not in message          # rip is the recorded one: the record's rip is checked and matches


def test_a_changed_rip_is_named_with_both_values(busy_recording):
    """Planted after the last input before a digest (an input's rip check would find it first)."""
    path, records = busy_recording
    after = _digest_records(records)[5]
    planted = max(entry[3] for entry in records if entry[0] < after[0]) + 1000

    def skip_an_instruction(domain):
        """One instruction more than the recording ran, with the instruction count kept back."""
        before_step = domain.vcpu.save_cpu()
        domain.vcpu.step()
        stepped = domain.vcpu.save_cpu()
        domain.vcpu.load_cpu(CpuState(stepped.registers, stepped.pc, before_step.icount))

    message = _replay_with_plant(path, planted, skip_an_instruction)
    assert message.startswith(f"state differs at icount {after[3]} (record {after[0]}): rip recorded "
                              f"{after[4]:#x} replayed "), message
