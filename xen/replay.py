"""Replay: drive a domain from its logged inputs, instruction for instruction.

Owns the replay loop. The vCPU is run to exactly the instruction count of the next logged record;
guest hypercalls on the way are executed as in the live run (they are deterministic); then the
record is applied through the funnel's replay mode (which checks rip), or, for a digest, the state
is compared. The log itself is opened by dom0: this module only sees an iterable of records.

Invariant: after `run` returns, the domain is exactly in the state the recorded domain had at the
same instruction count with the same inputs applied; a point in the replay is named by
(icount, next_seq), the instruction count and the first record not yet applied.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from xen.digest import Digest, parse_end_payload, take_digest
from xen.domain import Domain, RunState
from xen.inject import Injection, Kind, ReplayDivergence
from xen.logrecord import KIND_DIGEST, KIND_END, Record
from xen.vcpu import Exit, ExitReason


@dataclass(frozen=True)
class ReplayStop:
    """Why `Replayer.run` returned."""
    reason: str                 # "target" (icount reached), "end" (the log is done), "debug" (breakpoint/watchpoint)
    icount: int
    exit: Exit | None = None


class Replayer:
    """Feeds one domain from a stream of logged records."""

    def __init__(self, domain: Domain, records: Iterable[Record], first_seq: int = 0):
        self.domain = domain
        self._records: Iterator[Record] = iter(records)
        self._next: Record | None = next(self._records, None)
        self.next_seq = first_seq
        self.digests_checked = 0
        self.inputs_applied = 0
        self.finished = False
        self.recorded_outcome: str | None = None

    @property
    def next_record(self) -> Record | None:
        return self._next

    def _advance(self) -> None:
        self._next = next(self._records, None)
        self.next_seq += 1

    def run(self, until_icount: int | None = None, until_seq: int | None = None,
            stop_for_debug: bool = False) -> ReplayStop:
        """Replay forward until the vCPU reaches `until_icount` (records logged at that count are not
        applied yet), until record `until_seq` is next, the end of the log, or - with
        `stop_for_debug` - a breakpoint or watchpoint."""
        domain, vcpu = self.domain, self.domain.vcpu
        while True:
            record = self._next
            if until_seq is not None and self.next_seq >= until_seq:
                return ReplayStop("target", vcpu.icount)
            if until_icount is not None and vcpu.icount >= until_icount:
                return ReplayStop("target", vcpu.icount)
            if self.finished or record is None:
                self.finished = True
                return ReplayStop("end", vcpu.icount)
            if vcpu.icount == record.icount:
                self._apply(record)
                continue
            if vcpu.icount > record.icount:
                raise ReplayDivergence(f"replay passed icount {record.icount} of logged "
                                       f"{self._kind_text(record.kind)} (now at {vcpu.icount})")
            if domain.state != RunState.RUNNING:
                raise ReplayDivergence(
                    f"domain {domain.state.value} at icount {vcpu.icount} but the log has "
                    f"{self._kind_text(record.kind)} at icount {record.icount}")
            exit = vcpu.run(record.icount if until_icount is None else min(record.icount, until_icount))
            if exit.reason == ExitReason.LIMIT:
                continue
            if exit.reason in (ExitReason.BREAKPOINT, ExitReason.WATCHPOINT):
                if stop_for_debug:
                    return ReplayStop("debug", vcpu.icount, exit)
                continue
            if exit.reason == ExitReason.RANDOM:
                # The rdrand has retired: its logged value is applied at once, whatever the target.
                if record.kind != Kind.RANDOM or record.icount != vcpu.icount:
                    raise ReplayDivergence(f"rdrand at icount {vcpu.icount} has no logged value")
                self._apply(record)
                continue
            domain.handle_exit(exit)

    def _apply(self, record: Record) -> None:
        vcpu = self.domain.vcpu
        if record.kind == KIND_DIGEST:
            self._check_digest(Digest.from_bytes(bytes(record.payload)), record)
        elif record.kind == KIND_END:
            recorded, outcome = parse_end_payload(bytes(record.payload))
            self._check_digest(recorded, record)
            self.recorded_outcome = outcome
            self.finished = True
        else:
            self.domain.funnel.replay(Injection(record.kind, record.vcpu, record.icount, record.rip,
                                                bytes(record.payload)))
            self.inputs_applied += 1
        self._advance()
        if not self.finished and not self.domain.alive and self._next is not None \
                and self._next.kind != KIND_END:
            raise ReplayDivergence(f"domain stopped at icount {vcpu.icount} before the end of the log")

    def _check_digest(self, recorded: Digest, record: Record) -> None:
        actual = take_digest(self.domain.vcpu, with_memory=recorded.memory_hash is not None)
        differences = recorded.differences(actual)
        if differences:
            raise ReplayDivergence(f"state differs at icount {record.icount} (record {self.next_seq}): "
                                   + "; ".join(differences))
        self.digests_checked += 1

    @staticmethod
    def _kind_text(kind: int) -> str:
        names = {KIND_DIGEST: "state digest", KIND_END: "end of recording"}
        if kind in names:
            return names[kind]
        return Kind(kind).name if kind in Kind._value2member_map_ else f"input kind {kind}"
