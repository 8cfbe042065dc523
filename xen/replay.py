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

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from xen.digest import Digest, parse_end_payload
from xen.domain import Domain, RunState
from xen.inject import Injection, Kind, ReplayDivergence, UnusableRecord
from xen.logrecord import KIND_DIGEST, KIND_END, Record, kind_name
from xen.vcpu import Exit, ExitReason


@dataclass(frozen=True, order=True)
class Mark:
    """A point in a replay: `icount` instructions retired and records before `seq` applied.

    Marks are totally ordered in execution order. A *canonical* mark has every record logged at its
    instruction count applied (the state just before the next instruction executes).
    """
    icount: int
    seq: int


ALL_RECORDS = 2**63   # a seq beyond any log: Mark(i, ALL_RECORDS) targets the canonical mark at icount i


@dataclass(frozen=True)
class ReplayStop:
    """Why `Replayer.run` returned."""
    reason: str                 # "target" (mark reached), "end" (the log is done), "debug" (breakpoint/watchpoint),
                                # "interrupted"
    mark: Mark
    exit: Exit | None = None


@dataclass(frozen=True)
class ReplayerState:
    next_seq: int
    finished: bool
    digests_checked: int
    inputs_applied: int
    recorded_outcome: str | None


DEBUG_CHUNK = 5_000_000       # while debugging, look for an interrupt request this often (instructions)


class Replayer:
    """Feeds one domain from a stream of logged records."""

    def __init__(self, domain: Domain, records: Iterable[Record], first_seq: int = 0):
        self.domain = domain
        self.digests_checked = 0
        self.inputs_applied = 0
        self.finished = False
        self.recorded_outcome: str | None = None
        self._reposition(records, first_seq)

    def _reposition(self, records: Iterable[Record], first_seq: int) -> None:
        self._records: Iterator[Record] = iter(records)
        self._next: Record | None = next(self._records, None)
        self.next_seq = first_seq

    @property
    def mark(self) -> Mark:
        return Mark(self.domain.vcpu.icount, self.next_seq)

    @property
    def next_record(self) -> Record | None:
        return self._next

    def save_state(self) -> ReplayerState:
        return ReplayerState(self.next_seq, self.finished, self.digests_checked, self.inputs_applied,
                             self.recorded_outcome)

    def load_state(self, state: ReplayerState, records_from_seq: Iterable[Record]) -> None:
        """Continue from a saved state; `records_from_seq` yields the log's records from state.next_seq on."""
        self._reposition(records_from_seq, state.next_seq)
        self.finished = state.finished
        self.digests_checked = state.digests_checked
        self.inputs_applied = state.inputs_applied
        self.recorded_outcome = state.recorded_outcome

    def _advance(self) -> None:
        self._next = next(self._records, None)
        self.next_seq += 1

    def run(self, until: Mark | None = None, stop_for_debug: bool = False,
            interrupted: Callable[[], bool] | None = None) -> ReplayStop:
        """Replay forward until the mark `until`, the end of the log, or - with `stop_for_debug` - a
        breakpoint (reported at a canonical mark, never at the mark this call started from) or a
        watchpoint (reported right after the access). `interrupted` is polled between chunks."""
        domain, vcpu = self.domain, self.domain.vcpu
        start = self.mark
        while True:
            record = self._next
            at_target = until is not None and vcpu.icount == until.icount and self.next_seq >= until.seq
            if at_target:
                return ReplayStop("target", self.mark)
            if record is not None and not self.finished and record.icount == vcpu.icount:
                # An interrupt is taken before an input is applied (or when a run slice ends): it then
                # stops in the guest's own code, not at the entry of the upcall the input delivers.
                if stop_for_debug and interrupted is not None and interrupted():
                    return ReplayStop("interrupted", self.mark)
                self._apply(record)
                continue
            if until is not None and vcpu.icount >= until.icount:
                return ReplayStop("target", self.mark)
            if self.finished or record is None:
                self.finished = True
                return ReplayStop("end", self.mark)
            if vcpu.icount > record.icount:
                raise ReplayDivergence(f"replay passed icount {record.icount} of logged "
                                       f"{self._kind_text(record.kind)} (now at {vcpu.icount})")
            if domain.state != RunState.RUNNING:
                raise ReplayDivergence(
                    f"domain {domain.state.value} at icount {vcpu.icount} but the log has "
                    f"{self._kind_text(record.kind)} at icount {record.icount}")
            target = record.icount if until is None else min(record.icount, until.icount)
            if stop_for_debug:
                if vcpu.pc in vcpu.breakpoints and self.mark != start:
                    return ReplayStop("debug", self.mark, Exit(ExitReason.BREAKPOINT, vcpu.icount, vcpu.pc))
                target = min(target, vcpu.icount + DEBUG_CHUNK)
            exit = domain.run(target)
            if exit.reason == ExitReason.LIMIT and vcpu.icount < record.icount and interrupted is not None \
                    and interrupted():
                return ReplayStop("interrupted", self.mark)
            if exit.reason in (ExitReason.LIMIT, ExitReason.BREAKPOINT):
                continue          # a breakpoint is judged at the top, once this count's inputs are in
            if exit.reason == ExitReason.WATCHPOINT:
                if stop_for_debug:
                    return ReplayStop("debug", self.mark, exit)
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
        if record.kind in (KIND_DIGEST, KIND_END):
            recorded, outcome = self._parse_check(record)
            self._check_digest(recorded, record)
            if record.kind == KIND_END:
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

    def _parse_check(self, record: Record) -> tuple[Digest, str | None]:
        """A DIGEST or END record's digest (and END's outcome); UnusableRecord when malformed."""
        try:
            if record.kind == KIND_DIGEST:
                return Digest.from_bytes(bytes(record.payload)), None
            return parse_end_payload(bytes(record.payload))
        except ValueError as error:
            raise UnusableRecord(f"record {record.seq} ({self._kind_text(record.kind)}) is malformed: "
                                 f"{error}") from None

    def _check_digest(self, recorded: Digest, record: Record) -> None:
        actual = self.domain.digest(with_memory=recorded.memory_hash is not None, in_clear=recorded.in_clear)
        differences = recorded.differences(actual)
        pc = self.domain.vcpu.pc
        if differences and not recorded.in_clear and record.rip != pc:     # the record names rip itself
            differences.insert(0, f"rip recorded {record.rip:#x} replayed {pc:#x}")
        if differences:
            raise ReplayDivergence(f"state differs at icount {record.icount} (record {self.next_seq}): "
                                   + "; ".join(differences))
        self.digests_checked += 1

    @staticmethod
    def _kind_text(kind: int) -> str:
        names = {KIND_DIGEST: "state digest", KIND_END: "end of recording"}
        if kind in names:
            return names[kind]
        return kind_name(kind)
