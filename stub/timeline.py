"""The replay timeline: checkpoints keyed by position, and exact reverse execution.

Model: rr's ReplayTimeline. A position is a `Mark` (instructions retired, records applied).
Checkpoints are taken as the replay moves forward; each holds the registers, the domain's
hypervisor-side state (the memory model's page types, pins and base pointer included), the
replayer's place in the log, and machine memory (page tables included) as a tuple of frames in
which frames unchanged since the previous checkpoint are the *same* bytes objects (so memory held
is one copy of each distinct frame). Restoring writes memory first, then the domain state, from
which the memory model rebuilds the guest's address space. They are thinned out with distance so their number stays bounded.

Reverse execution is always exact, never approximate: reverse-continue restores the checkpoint
before the current position, replays forward to it noting every breakpoint and watchpoint hit, and
goes to the last hit (or searches the previous interval); reverse-step goes to icount-1 exactly.
A breakpoint may carry a condition (a predicate on the vCPU at the hit, e.g. GDB's bytecode run by
the stub): forwards and backwards alike, a hit counts only where its condition holds (`_hit_counts`).

Two things make reverse-continue cheaper without making it less exact:
- The hits a backward scan of one interval finds are kept (with the breakpoints, conditions and
  watchpoints they were found with): a following reverse-continue within that interval takes its hit
  from them without scanning, and keeps the state at the next few hits on its way there (a state costs
  a domain save, so only once reverse-continues follow each other), so that the ones after it restore
  that state and replay nothing. A change to what is watched or broken on drops the hits (the states
  stay true).
- Every stretch of forward replay of a tenth of a checkpoint interval (a *segment*) leaves the set of
  pages written in it (the vCPU's dirty-page generations, hypervisor writes included), kept when the
  checkpoints themselves are thinned. With only write watchpoints, reverse-continue skips every
  segment that wrote none of the watched pages without replaying it, and scans only up to the end of
  the last segment that did: its cost depends on the distance to the checkpoint before that write,
  not on the distance travelled. Breakpoints and read/access watchpoints still scan every interval.
Stored snapshots (dom0/snapshots.py, the recording's companion file) are checkpoints taken while
recording: wherever a motion would restore a checkpoint, or replay from where it is, a stored
snapshot later than both is restored instead, so a goto costs the distance to the nearest snapshot,
not to the start. A stored snapshot is trusted only once the restored state equals the state digest
logged at its position; one that does not (or cannot be decoded) is skipped, said once through
`warn`, and the motion goes on from the next earlier state. Replay from a stored snapshot knows
nothing of the pages written between the last segment and it: that gap is one segment marked
MAPPING_CHANGED (it may have written anything).
A running `cont` or `reverse_cont` says how far it has got (`progress()`, read by the stub's poll
for its progress lines).
Invariant: whatever sequence of commands moved it there, the state at a mark is the state a fresh
replay from the start has at that mark.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable

from dom0.replay import Event, ReplaySession
from dom0.snapshots import SnapshotDamaged, SnapshotFile, StoredSnapshot
from stub.progress import Progress
from xen.domain import DomainState
from xen.digest import Digest
from xen.logrecord import KIND_DIGEST
from xen.replay import ALL_RECORDS, Mark, ReplayerState, ReplayStop
from xen.vcpu import PAGE_SIZE, CpuState, ExitReason, VCpu

CHECKPOINT_INTERVAL = 20_000_000      # instructions between checkpoints as the replay moves forward
MAX_CHECKPOINTS = 48
KEPT_SNAPSHOTS = 8                    # states kept at the last hits found by backward scans
SEGMENTS_PER_CHECKPOINT = 10          # pages written are noted per tenth of a checkpoint interval


@dataclass(frozen=True)
class Stop:
    """Where a timeline command stopped, and why."""
    reason: str        # "breakpoint", "watchpoint", "step", "interrupt", "history-end", "history-start", "target"
    mark: Mark
    pc: int
    watch_address: int | None = None
    watch_access: str | None = None
    vcpu: int = 0      # the vCPU it names: at a breakpoint the one about to run there, at a watchpoint the
                       # one whose access it was, after a step the one that stepped, else the one on the engine


@dataclass(frozen=True)
class Checkpoint:
    mark: Mark
    cpu: CpuState
    pages: tuple[bytes, ...]
    domain: DomainState
    replayer: ReplayerState


MAPPING_CHANGED = -1       # in a segment's pages: the guest's address space changed in it


@dataclass(frozen=True)
class Segment:
    """A stretch of forward replay (a tenth of a checkpoint interval) and the machine frames it wrote
    (a superset: every write noted since the segment began or since a checkpoint restored before it,
    hypervisor writes included), with MAPPING_CHANGED when the guest's address space changed in it."""
    end: Mark
    pages: frozenset[int]


@dataclass(frozen=True)
class _ScannedInterval:
    """The hits of one backward scan: every hit in [start, end), found with the debug settings `key`."""
    key: tuple
    start: Mark
    end: Mark
    hits: tuple[_Hit, ...]


@dataclass(frozen=True)
class _Hit:
    """A breakpoint or watchpoint hit seen while scanning forward, as reverse execution reports it."""
    mark: Mark
    reason: str
    address: int | None = None
    access: str | None = None
    vcpu: int = 0


class Timeline:
    """Forward and reverse execution over one replay session."""

    def __init__(self, session: ReplaySession, checkpoint_interval: int = CHECKPOINT_INTERVAL,
                 max_checkpoints: int = MAX_CHECKPOINTS, stored: SnapshotFile | None = None,
                 warn: Callable[[str], None] = lambda message: None):
        self.session = session
        self.start = Mark(session.start_icount, 0)   # where the recording starts: history begins there
        self.stored = stored
        self._warn = warn
        self._stored_skipped: set[int] = set()     # stored snapshots found unusable (said once)
        self.stored_restores = 0                   # stored snapshots restored (instrumentation)
        self.replayer = session.replayer
        self.checkpoint_interval = checkpoint_interval
        self.max_checkpoints = max_checkpoints
        self._watches: list[tuple[int, int, str]] = []
        self._conditions: dict[int, Callable[[VCpu], bool]] = {}
        self._checkpoints: list[Checkpoint] = []
        self._segments: list[Segment] = []
        self._segment_ends: list[Mark] = []      # the segments' ends, for bisection
        self._scanned: _ScannedInterval | None = None
        self._snapshots: dict[Mark, Checkpoint] = {}    # states at recent hits (oldest first), not thinned
        self._switches: dict[int, int] = {}      # SMP: icount -> the vCPU that took the engine there (as replayed)
        self._unobserved: list[tuple[int, int]] = []    # icount ranges a stored snapshot jumped: switches unknown
        session.domain.switch_observer = self._switches.__setitem__
        # Instrumentation for tests and benchmarks: instructions replayed by backward scans, and in all.
        self.instructions_scanned = 0
        self.instructions_replayed = 0
        self._progress: Callable[[], Progress] | None = None     # how far the running motion has got
        # Guest memory as last synchronised (a checkpoint taken or restored), page by page; the vCPU
        # notes which pages are written after that, so neither needs a full read of memory.
        self._memory = [self.vcpu.read_frame(frame) for frame in range(self.vcpu.frame_count)]
        self._generation = self.vcpu.track_dirty_pages()
        self._segment_generation = self._generation     # the current segment's writes are noted since it
        self._segment_mapping_changes = self.vcpu.mapping_changes   # the address space changes before the segment
        self._take_checkpoint()

    # ---------------------------------------------------------------- state access
    @property
    def vcpu(self) -> VCpu:
        return self.session.domain.vcpu

    @property
    def position(self) -> Mark:
        return self.replayer.mark

    @property
    def at_end(self) -> bool:
        return self.replayer.finished or self.replayer.next_record is None

    def progress(self) -> Progress | None:
        """How far the running `cont` or `reverse_cont` has got (for its `interrupted` poll to report);
        None between motions. A forward continue's total is what is left to the end of the history, a
        reverse-continue's the distance back to the start (the most its scan can cover)."""
        return self._progress() if self._progress is not None else None

    def events(self) -> list[Event]:
        return self.session.events()

    def current_event(self) -> int:
        """The number of the last input event applied at this position (0 before the first)."""
        seqs = [event.seq for event in self.events()]
        return bisect.bisect_left(seqs, self.replayer.next_seq)

    @property
    def checkpoints(self) -> tuple[Checkpoint, ...]:
        return tuple(self._checkpoints)

    def checkpoint_bytes(self) -> int:
        """Guest memory held by checkpoints: each distinct page once."""
        return len({id(page) for checkpoint in self._checkpoints for page in checkpoint.pages}) * PAGE_SIZE

    # ---------------------------------------------------------------- breakpoints and watchpoints
    def add_breakpoint(self, address: int, condition: Callable[[VCpu], bool] | None = None) -> None:
        """Break at `address`; with a `condition`, only where it holds (again: replaces the condition)."""
        self.vcpu.add_breakpoint(address)
        if condition is None:
            self._conditions.pop(address, None)
        else:
            self._conditions[address] = condition

    def remove_breakpoint(self, address: int) -> None:
        self.vcpu.remove_breakpoint(address)
        self._conditions.pop(address, None)

    def _hit_counts(self) -> bool:
        """Whether the breakpoint at the current pc stops here: unconditional, or its condition holds."""
        condition = self._conditions.get(self.vcpu.pc)
        return condition is None or condition(self.vcpu)

    def add_watchpoint(self, address: int, length: int, access: str) -> None:
        self.vcpu.add_watch(address, length, access)
        self._watches.append((address, length, access))

    def remove_watchpoint(self, address: int, length: int, access: str) -> None:
        if (address, length, access) in self._watches:
            self._watches.remove((address, length, access))
            self.vcpu.remove_watch(address, length, access)

    # ---------------------------------------------------------------- checkpoints
    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(self._segments)

    def _take_checkpoint(self) -> None:
        mark = self.position
        if self._checkpoints and self._checkpoints[-1].mark >= mark:
            return
        pages = self._segment_pages() if self._checkpoints else set()
        self._sync_memory()
        self._segment_generation = self._generation
        self._segment_mapping_changes = self.vcpu.mapping_changes
        if self._checkpoints:
            self._add_segment(Segment(mark, frozenset(pages)))
        checkpoint = Checkpoint(mark, self.vcpu.save_cpu(), tuple(self._memory), self.session.domain.save_state(),
                                self.replayer.save_state())
        index = bisect.bisect([c.mark for c in self._checkpoints], mark)
        self._checkpoints.insert(index, checkpoint)
        self._thin()

    def _thin(self) -> None:
        """Keep the first checkpoint and the newest ones dense; drop every other one further back."""
        while len(self._checkpoints) > self.max_checkpoints:
            del self._checkpoints[1:len(self._checkpoints) // 2:2]

    def _sync_memory(self) -> None:
        """Bring the page list up to date with the pages written since the last synchronisation."""
        vcpu = self.vcpu
        written = vcpu.pages_written_since(self._generation)
        self._generation = vcpu.new_generation()
        for number in written:
            page = vcpu.read_frame(number)
            if page != self._memory[number]:
                self._memory[number] = page

    def _restore(self, checkpoint: Checkpoint) -> None:
        vcpu = self.vcpu
        written = vcpu.pages_written_since(self._generation)
        for number, page in enumerate(checkpoint.pages):
            if page is not self._memory[number] or number in written:
                vcpu.write_frame(number, page)
        self._generation = vcpu.new_generation()   # the writes above only brought memory to the checkpoint
        self._segment_generation = self._generation
        self._memory = list(checkpoint.pages)
        vcpu.load_cpu(checkpoint.cpu)
        self.session.domain.load_state(checkpoint.domain)
        self._segment_mapping_changes = vcpu.mapping_changes
        self.replayer.load_state(checkpoint.replayer, self.session.log.records_from(checkpoint.replayer.next_seq))

    def _checkpoint_before(self, mark: Mark, strictly: bool, beyond: Mark | None = None) -> Checkpoint | None:
        """The latest checkpoint before `mark` (at it too unless `strictly`). A stored snapshot later than
        it and than `beyond` is restored, checked and kept as a checkpoint, and returned instead."""
        marks = [c.mark for c in self._checkpoints]
        index = (bisect.bisect_left(marks, mark) if strictly else bisect.bisect_right(marks, mark)) - 1
        checkpoint = self._checkpoints[index] if index >= 0 else None
        if self.stored is None:
            return checkpoint
        floor = max(filter(None, (beyond, checkpoint.mark if checkpoint else None)), default=None)
        for entry in self.stored.before(mark, strictly):
            if floor is not None and entry.mark <= floor:
                break
            if entry.index not in self._stored_skipped:
                restored = self._restore_stored(entry, fallback=checkpoint)
                if restored is not None:
                    return restored
        return checkpoint

    def _restore_stored(self, entry: StoredSnapshot, fallback: Checkpoint | None) -> Checkpoint | None:
        """Restore a stored snapshot and check it against the digest logged at its position; kept as a
        checkpoint when it holds. When it does not, it is skipped (said once) and `fallback` (or the
        start) is restored in its place; None."""
        try:
            state = self.stored.load(entry)
            pages = list(self._checkpoints[0].pages)        # the recording's start (frames a snapshot leaves out)
            for frame, page in state.pages.items():
                pages[frame] = page
            checkpoint = Checkpoint(state.mark, state.cpu, tuple(pages), state.domain, state.replayer)
            self._restore(checkpoint)
            problem = self._differs_from_log(entry.mark)
        except SnapshotDamaged as error:
            problem = str(error)
        except Exception as error:         # state that passed its checksum but does not restore: never trusted
            problem = f"snapshot {entry.index} (instruction {entry.mark.icount}) does not restore: {error}"
        if problem is not None:
            self._stored_skipped.add(entry.index)
            self._warn(f"{problem}: skipped")
            self._restore(fallback if fallback is not None else self._checkpoints[0])
            return None
        self.stored_restores += 1
        if checkpoint.mark > self._frontier():
            self._unobserved.append((self._frontier().icount, checkpoint.mark.icount))
            self._switches[checkpoint.mark.icount] = self.session.domain.current
            self._add_segment(Segment(checkpoint.mark, frozenset({MAPPING_CHANGED})))   # not replayed: anything
            self._segment_generation = self._generation
            self._segment_mapping_changes = self.vcpu.mapping_changes
        index = bisect.bisect([c.mark for c in self._checkpoints], checkpoint.mark)
        self._checkpoints.insert(index, checkpoint)
        self._thin()
        return checkpoint

    def _differs_from_log(self, mark: Mark) -> str | None:
        """Why the state here is not the one the digest logged just before `mark` (None: it is)."""
        where = f"stored snapshot at instruction {mark.icount}"
        record = next(self.session.log.records_from(mark.seq - 1), None) if mark.seq > 0 else None
        if record is None or record.kind != KIND_DIGEST or record.icount != mark.icount:
            return f"{where} has no state digest logged at its position"
        try:
            logged = Digest.from_bytes(bytes(record.payload))
        except ValueError as error:
            return f"{where}: the digest logged there is malformed ({error})"
        if logged.memory_hash is None:
            return f"{where}: the digest logged there does not cover memory"
        differences = logged.differences(self.session.domain.digest(with_memory=True, in_clear=logged.in_clear))
        return f"{where} differs from the log: {'; '.join(differences)}" if differences else None

    def _is_canonical(self) -> bool:
        record = self.replayer.next_record
        return record is None or record.icount != self.vcpu.icount

    # ---------------------------------------------------------------- forward
    def _forward(self, until: Mark | None, debug: bool,
                 interrupted: Callable[[], bool] | None = None) -> ReplayStop:
        """Run forward until `until`, the end, or a debug stop; beyond the last segment, ending segments
        and taking checkpoints on the way."""
        started = self.vcpu.icount
        try:
            return self._run_forward(until, debug, interrupted)
        finally:
            self.instructions_replayed += self.vcpu.icount - started

    def _run_forward(self, until: Mark | None, debug: bool, interrupted: Callable[[], bool] | None) -> ReplayStop:
        while True:
            frontier = self._frontier()
            boundary = Mark(frontier.icount + max(self.checkpoint_interval // SEGMENTS_PER_CHECKPOINT, 1), ALL_RECORDS)
            if self.position < frontier or (until is not None and until <= boundary):
                return self.replayer.run(until, stop_for_debug=debug, interrupted=interrupted)
            if self.position < boundary:
                stop = self.replayer.run(boundary, stop_for_debug=debug, interrupted=interrupted)
                if stop.reason != "target":
                    return stop
            self._end_segment()

    def _frontier(self) -> Mark:
        """Where the last segment ends (the first checkpoint before any segment)."""
        return self._segments[-1].end if self._segments else self._checkpoints[0].mark

    def _end_segment(self) -> None:
        """End a segment here, with a checkpoint when the last one is an interval back."""
        if self.position.icount >= self._checkpoints[-1].mark.icount + self.checkpoint_interval:
            self._take_checkpoint()
            return
        pages = self._segment_pages()
        self._segment_generation = self.vcpu.new_generation()
        self._segment_mapping_changes = self.vcpu.mapping_changes
        self._add_segment(Segment(self.position, frozenset(pages)))

    def _add_segment(self, segment: Segment) -> None:
        self._segments.append(segment)
        self._segment_ends.append(segment.end)

    def _stop_from(self, replay_stop: ReplayStop, default: str) -> Stop:
        pc, domain = self.vcpu.pc, self.session.domain
        if replay_stop.reason == "end":
            return Stop("history-end", replay_stop.mark, pc, vcpu=domain.current)
        if replay_stop.reason == "interrupted":
            return Stop("interrupt", replay_stop.mark, pc, vcpu=domain.current)
        if replay_stop.reason == "debug":
            exit = replay_stop.exit
            if exit.reason == ExitReason.WATCHPOINT:     # the access may have ended its vCPU's quantum
                return Stop("watchpoint", replay_stop.mark, domain.vcpu_registers(domain.ran).pc, exit.address,
                            exit.access, domain.ran)
            return Stop("breakpoint", replay_stop.mark, pc, vcpu=domain.current)
        if default == "step":
            return Stop(default, replay_stop.mark, pc, vcpu=domain.ran)
        return Stop(default, replay_stop.mark, pc, vcpu=domain.current)

    def cont(self, interrupted: Callable[[], bool] | None = None) -> Stop:
        """Continue forward to the next breakpoint or watchpoint hit, or the end of history."""
        origin, total = self.vcpu.icount, max(self.session.last_icount - self.vcpu.icount, 0)
        self._progress = lambda: Progress("continue", min(self.vcpu.icount - origin, total), total)
        try:
            while True:
                stop = self._stop_from(self._forward(None, debug=True, interrupted=interrupted), "target")
                if stop.reason != "breakpoint" or self._hit_counts():
                    return stop
        finally:
            self._progress = None

    def step(self) -> Stop:
        """Execute one instruction (then apply the inputs logged at the new count)."""
        if self.at_end:
            return Stop("history-end", self.position, self.vcpu.pc, vcpu=self.session.domain.current)
        target = Mark(self.vcpu.icount + 1, ALL_RECORDS)
        return self._stop_from(self._forward(target, debug=True), "step")

    def goto(self, mark: Mark) -> Stop:
        """Go to exactly `mark`, forwards or backwards (restoring a hit's snapshot if one is kept there);
        a mark before the recording's start goes to the start."""
        mark = max(mark, self.start)
        if mark in self._snapshots and mark != self.position:
            self._restore(self._snapshots[mark])
        elif mark < self.position:
            self._restore(self._checkpoint_before(mark, strictly=False))
        elif self.stored is not None and mark != self.position:
            self._checkpoint_before(mark, strictly=False, beyond=self.position)   # a stored snapshot on the way
        stop = self._forward(mark, debug=False)
        return self._stop_from(stop, "target")

    def goto_icount(self, icount: int) -> Stop:
        return self.goto(Mark(icount, ALL_RECORDS))

    def goto_event(self, number: int) -> Stop:
        """Go to just before input event `number` (1-based) is injected."""
        event = self.session.event(number)
        return self.goto(Mark(event.icount, event.seq))

    # ---------------------------------------------------------------- reverse
    def reverse_step(self) -> Stop:
        """Go back exactly one instruction (to the state before the current one retired)."""
        icount = self.vcpu.icount
        if self.position <= self.start or icount <= self.start.icount:
            self.goto(self.start)
            return Stop("history-start", self.position, self.vcpu.pc, vcpu=self.session.domain.current)
        stop = self.goto(Mark(icount - 1, ALL_RECORDS))
        return Stop("step", stop.mark, stop.pc, vcpu=self.session.domain.current)   # the one whose instruction it undid

    def step_vcpu(self, vcpu: int) -> Stop:
        """Execute one instruction of `vcpu` (the others run as the schedule has them until its turn;
        a breakpoint or watchpoint on the way stops there)."""
        domain = self.session.domain
        for _ in range(len(domain.vcpus)):       # quantum by quantum to its turn
            if domain.current == vcpu or domain.quantum_end is None or self.at_end:
                break
            stop = self._stop_from(self._forward(Mark(domain.quantum_end, ALL_RECORDS), debug=True), "target")
            if stop.reason != "target":
                return stop
        while True:                              # it runs next, or waits blocked: instruction by instruction
            stop = self.step()
            if stop.vcpu == vcpu or stop.reason != "step":
                return stop

    def reverse_step_vcpu(self, vcpu: int) -> Stop:
        """Go back to just before `vcpu`'s previous instruction; the other vCPUs go back to where they
        were then. Uses the switch points seen while replaying; a stretch a stored snapshot jumped over
        is replayed first to see them. One instruction of the domain when `vcpu` never ran before."""
        icount = self.vcpu.icount
        if self.position <= self.start or icount <= self.start.icount:
            return self.reverse_step()
        origin = self.position
        target = self._last_instruction_of(vcpu, icount - 1)
        while target is None and any(low < icount for low, _ in self._unobserved):
            self._observe(max(gap for gap in self._unobserved if gap[0] < icount))
            target = self._last_instruction_of(vcpu, icount - 1)
        if target is None:
            self.goto(origin)
            return self.reverse_step()
        stop = self.goto(Mark(target, ALL_RECORDS))
        return Stop("step", stop.mark, stop.pc, vcpu=vcpu)

    def _observe(self, gap: tuple[int, int]) -> None:
        """Replay the stretch `gap` that a stored snapshot jumped over, instruction counts and switches
        seen on the way (the stored snapshots are not used for it)."""
        low, high = gap
        self.goto(Mark(low, ALL_RECORDS))
        stored, self.stored = self.stored, None
        try:
            self._forward(Mark(high, ALL_RECORDS), debug=False)
        finally:
            self.stored = stored
        self._unobserved.remove(gap)

    def _last_instruction_of(self, vcpu: int, last: int) -> int | None:
        """The count at which `vcpu` executed its last instruction at or before count `last` (the
        vCPU that executes instruction i is the one the last switch at or before i gave the engine to;
        vCPU 0 before any); None when it is not known (it never ran, or a stretch on the way back was
        jumped over by a stored snapshot)."""
        points = sorted(point for point in self._switches if point <= last)
        runs = [(0, 0)] + [(point, self._switches[point]) for point in points]
        end = last
        for start, runner in reversed(runs):
            if start > end:
                continue
            if any(low < end + 1 and high > start for low, high in self._unobserved):
                return None
            if runner == vcpu:
                return end
            end = start - 1
            if end < 0:
                return None
        return None

    def reverse_cont(self, interrupted: Callable[[], bool] | None = None) -> Stop:
        """Go back to the last breakpoint or watchpoint hit before the current position, or the start."""
        try:
            return self._reverse_cont(interrupted)
        finally:
            self._progress = None

    def _reverse_cont(self, interrupted: Callable[[], bool] | None) -> Stop:
        bound = self.position            # no hit at or after `bound` is left to find
        origin_mark = bound
        origin = bound.icount
        written_only = self._watched_pages_if_write_watches_only()
        # What replay wrote past the last segment up to here: later rounds restore and scan, after
        # which the vCPU's notes no longer describe that stretch.
        beyond_segments = frozenset(self._segment_pages()) if bound > self._frontier() else frozenset()
        while True:
            upper = bound
            if written_only is not None:
                upper = self._end_of_last_write(bound, origin_mark, written_only, beyond_segments)
            checkpoint = self._checkpoint_before(upper, strictly=True) if upper is not None else None
            if checkpoint is None:
                self.goto(self.start)
                return Stop("history-start", self.position, self.vcpu.pc, vcpu=self.session.domain.current)
            # Covered so far: everything from `upper` to the origin, and the scan from the checkpoint on.
            self._progress = lambda start=checkpoint.mark.icount, end=upper.icount: Progress(
                "reverse-continue", origin - end + max(self.vcpu.icount - start, 0), origin)
            kept = self._kept_hits(checkpoint, upper)
            hits = kept if kept is not None else self._scan_from(checkpoint, upper, interrupted)
            if hits is None:
                return Stop("interrupt", self.position, self.vcpu.pc, vcpu=self.session.domain.current)
            if hits:
                if kept is not None:
                    self._go_to_last(hits)       # successive reverse-continues: keep states on the way
                else:
                    self.goto(hits[-1].mark)
                hit = hits[-1]
                return Stop(hit.reason, hit.mark, self.vcpu.pc, hit.address, hit.access, hit.vcpu)
            bound = checkpoint.mark

    def _go_to_last(self, hits: tuple[_Hit, ...]) -> None:
        """Go to the last hit, keeping the state at it and at the few hits before it on the way, so that
        the following reverse-continues restore those instead of replaying up to them. Only within the
        segments: past the last one, what was written since its end is known only by replaying it."""
        frontier = self._frontier()
        for hit in hits[-KEPT_SNAPSHOTS:] if hits[-1].mark not in self._snapshots else ():
            if hit.mark not in self._snapshots and hit.mark <= frontier:
                self.goto(hit.mark)
                self._sync_memory()
                self._snapshots[hit.mark] = Checkpoint(self.position, self.vcpu.save_cpu(), tuple(self._memory),
                                                       self.session.domain.save_state(), self.replayer.save_state())
        while len(self._snapshots) > KEPT_SNAPSHOTS:
            del self._snapshots[next(iter(self._snapshots))]
        self.goto(hits[-1].mark)

    def drop_kept_hits(self) -> None:
        """Forget the hits of the last backward scan and the states kept at hits (the next
        reverse-continue scans and replays again): for measurements of the scan itself."""
        self._scanned = None
        self._snapshots.clear()

    def _debug_settings(self) -> tuple:
        """What decides which positions are hits: breakpoints, their conditions, watchpoints."""
        return frozenset(self.vcpu.breakpoints), frozenset(self._conditions.items()), tuple(self._watches)

    def _kept_hits(self, checkpoint: Checkpoint, upper: Mark) -> tuple[_Hit, ...] | None:
        """Every hit in [checkpoint, upper) if the last scan covered them with the same debug settings."""
        kept = self._scanned
        if kept is not None and kept.key == self._debug_settings() and kept.start == checkpoint.mark \
                and upper <= kept.end:
            return tuple(hit for hit in kept.hits if hit.mark < upper)
        return None

    def _scan_from(self, checkpoint: Checkpoint, upper: Mark,
                   interrupted: Callable[[], bool] | None) -> tuple[_Hit, ...] | None:
        """Every hit in [checkpoint, upper), scanned and kept (None if interrupted)."""
        key = self._debug_settings()
        self._restore(checkpoint)
        hits = self._scan(upper, interrupted)
        if hits is not None:
            self._scanned = _ScannedInterval(key, checkpoint.mark, upper, hits)
        return hits

    def _scan(self, upper: Mark, interrupted: Callable[[], bool] | None) -> tuple[_Hit, ...] | None:
        """Replay forward from the current position to `upper`, collecting the hits before it."""
        started = self.vcpu.icount
        hits: list[_Hit] = []
        if self._is_canonical() and self.vcpu.pc in self.vcpu.breakpoints and self.position < upper \
                and self._hit_counts():
            hits.append(_Hit(self.position, "breakpoint", vcpu=self.session.domain.current))   # run never stops where it starts
        try:
            while self.position < upper:
                stop = self.replayer.run(upper, stop_for_debug=True, interrupted=interrupted)
                if stop.reason == "interrupted":
                    return None
                if stop.reason != "debug":
                    break
                if stop.exit.reason == ExitReason.WATCHPOINT:
                    # Reverse execution stops before the access: the canonical mark one instruction back.
                    hit = _Hit(Mark(stop.mark.icount - 1, stop.mark.seq), "watchpoint", stop.exit.address,
                               stop.exit.access, self.session.domain.ran)
                else:
                    hit = _Hit(stop.mark, "breakpoint", vcpu=self.session.domain.current)
                if hit.mark < upper and (hit.reason == "watchpoint" or self._hit_counts()):
                    hits.append(hit)
        finally:
            self.instructions_scanned += self.vcpu.icount - started
            self.instructions_replayed += self.vcpu.icount - started
        return tuple(hits)

    def _watched_pages_if_write_watches_only(self) -> frozenset[int] | None:
        """The pages of the watchpoints when only write watchpoints are set (no breakpoints, no
        read or access watchpoints): then only a segment that wrote one of them can hold a hit."""
        if not self._watches or self.vcpu.breakpoints or any(access != "w" for _, _, access in self._watches):
            return None
        vcpu = self.vcpu
        frames = {MAPPING_CHANGED}
        for address, length, _ in self._watches:
            for page in range(address & ~(PAGE_SIZE - 1), address + length, PAGE_SIZE):
                mapping = vcpu.mapping(page)
                if mapping is None:
                    return None
                frames.add(mapping.frame)
        return frozenset(frames)

    def _end_of_last_write(self, bound: Mark, origin: Mark, pages: frozenset[int],
                           beyond_segments: frozenset[int]) -> Mark | None:
        """The end (capped at `bound`) of the latest stretch of replay before `bound` that may have
        written one of `pages`, the frames mapped at the watched addresses at `origin` (where the
        reverse-continue started); None if none did. `beyond_segments` holds the frames written from
        the last segment's end (or earlier) up to `origin` when `origin` is past the last segment."""
        if bound > self._frontier() and pages & beyond_segments:
            return bound
        # Before a change of the mapping other frames may have been at the watched addresses, so from a
        # change between a segment and `origin` on back every segment may hold a write. Changes after
        # `origin` do not matter: `pages` are the frames mapped there.
        remapped_later = MAPPING_CHANGED in beyond_segments
        last = bisect.bisect_left(self._segment_ends, bound)     # the segment holding `bound`, or past the end
        latest = min(bisect.bisect_left(self._segment_ends, origin), len(self._segments) - 1)
        for index in range(latest, -1, -1):
            segment = self._segments[index]
            if index <= last and (remapped_later or pages & segment.pages):
                return min(segment.end, bound)
            remapped_later |= MAPPING_CHANGED in segment.pages
        return None

    def _segment_pages(self) -> set[int]:
        """The frames written in the current segment, and MAPPING_CHANGED if the guest's address space
        changed in it."""
        written = set(self.vcpu.pages_written_since(self._segment_generation))
        if self.vcpu.mapping_changes != self._segment_mapping_changes:    # a change undone is one too
            written.add(MAPPING_CHANGED)
        return written
