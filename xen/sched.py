"""The scheduler loop of a live (run or record) domain: vCPU slices, idling, timers and input.

Owns *when* outside inputs are injected. The vCPU runs in bounded instruction slices; at slice
boundaries and while the domain is blocked, due timers and due console input are injected through
the funnel. Two clocks (docs/architecture.md, "Time"):
- virtual: guest time is the instruction count (1 ns per instruction) plus idle time skipped to the
  next timer; timers fire at exact instruction counts and scripted keys arrive one per idle period,
  so a run is reproducible without a log;
- real: guest time follows the host's monotonic clock; timers and keys are injected at the first
  slice boundary (or idle moment) after they are due, so instruction counts depend on the host, as
  real hardware does, and record mode logs them.
Invariant: the scheduler changes guest-visible state only through `domain.funnel`; slice
boundaries that only bound how long the host waits are invisible to the guest.
"""
from __future__ import annotations

import os
import random
import select
import time
from dataclasses import dataclass
from typing import Protocol

from xen.domain import Domain, RunState
from xen.inject import Kind
from xen.timekeeping import ONE_NS_PER_TICK, TimeBase, TimeScale
from xen.vcpu import ExitReason

SLICE_INSTRUCTIONS = 1_000_000
NS_PER_SECOND = 1_000_000_000
DEFAULT_LINGER_NS = NS_PER_SECOND
VIRTUAL_RANDOM_SEED = 0x5EED
# Real clock: the published instruction rate is measured over at least this many instructions of
# uninterrupted running, clamped to a sane range, starting from a typical JIT speed.
RATE_SAMPLE_INSTRUCTIONS = 1_000_000
INITIAL_NS_PER_INSTRUCTION = 0.5
MIN_NS_PER_INSTRUCTION = 1 / 64
MAX_NS_PER_INSTRUCTION = 64.0
CATCH_UP_NS = 20_000_000
# Record mode: a register digest every DIGEST_INTERVAL instructions; every FULL_DIGEST_EVERY-th one also
# hashes guest memory (incrementally: only pages written since the last one); the END record always does.
DIGEST_INTERVAL = 1 << 24
FULL_DIGEST_EVERY = 16
# After Ctrl-], the guest may run this much longer to take in the keys typed before it.
DETACH_GRACE_INSTRUCTIONS = 50_000_000


class ConsoleInput(Protocol):
    """Host-side console input: a key script or a terminal (implementations live in dom0/)."""

    def take(self, now_ns: int, limit: int) -> bytes:
        """Bytes due at `now_ns` (on the input's own timeline), at most `limit`."""

    def next_due_ns(self, now_ns: int) -> int | None:
        """When the next byte becomes due (None: nothing scheduled, e.g. waiting on a terminal)."""

    def fileno(self) -> int | None:
        """A file descriptor to wait on for unscheduled input (a terminal), or None."""

    @property
    def exhausted(self) -> bool:
        """No more input will ever come."""

    @property
    def detached(self) -> bool:
        """The user asked to leave the console (Ctrl-])."""


@dataclass(frozen=True)
class Outcome:
    """How a run ended."""
    reason: str                 # "shutdown", "crashed", "instruction-limit", "detached", "input-exhausted", "deadlock"
    icount: int
    detail: str = ""


class Scheduler:
    """Runs one live domain to its end under a virtual or a real clock."""

    def __init__(self, domain: Domain, console_input: ConsoleInput, clock: str = "real",
                 max_instructions: int | None = None, linger_ns: int = DEFAULT_LINGER_NS,
                 slice_instructions: int = SLICE_INSTRUCTIONS):
        if clock not in ("real", "virtual"):
            raise ValueError("clock must be 'real' or 'virtual'")
        self.domain = domain
        self.input = console_input
        self.virtual = clock == "virtual"
        self.max_instructions = max_instructions
        self.linger_ns = linger_ns
        self.slice = slice_instructions
        self._host_start = time.monotonic_ns()
        self._random = random.Random(VIRTUAL_RANDOM_SEED)
        self._exhausted_at: int | None = None
        self._slice_end = 0
        self._detached_at: int | None = None
        self._ns_per_instruction = INITIAL_NS_PER_INSTRUCTION
        self._scale = ONE_NS_PER_TICK
        self._rate_origin: tuple[int, int] | None = None
        self._next_digest = DIGEST_INTERVAL
        self._digests = 0

    # ---------------------------------------------------------------- clocks
    def _host_ns(self) -> int:
        return time.monotonic_ns() - self._host_start

    def _input_clock(self) -> int:
        """The timeline key pauses are measured on: guest time (virtual) or host time (real)."""
        return self.domain.time.now() if self.virtual else self._host_ns()

    def _publishable_time(self) -> int:
        """Real clock: host time, never behind the time the guest already sees (time is monotonic)."""
        return max(self._host_ns(), self.domain.time.now())

    def _publish(self, kind: Kind, system_time: int) -> None:
        """Inject a TIME or TIMER input. Under the real clock the published tick rate follows how fast
        the vCPU has actually been running, so the guest's own extrapolation tracks the host clock."""
        if not self.virtual:
            host, icount = self._host_ns(), self.domain.vcpu.icount
            if self._rate_origin is not None and icount - self._rate_origin[1] >= RATE_SAMPLE_INSTRUCTIONS:
                self._ns_per_instruction = (host - self._rate_origin[0]) / (icount - self._rate_origin[1])
            if self._rate_origin is None or icount - self._rate_origin[1] >= RATE_SAMPLE_INSTRUCTIONS:
                self._rate_origin = (host, icount)
            # A guest clock that got ahead of the host runs slower until the host catches up.
            ahead = max(0, system_time - host)
            rate = self._ns_per_instruction * max(0.25, 1 - ahead / CATCH_UP_NS)
            self._scale = TimeScale.from_ns_per_tick(min(max(rate, MIN_NS_PER_INSTRUCTION), MAX_NS_PER_INSTRUCTION))
        self.domain.funnel.inject(kind, TimeBase(system_time, self._scale).to_bytes())

    # ---------------------------------------------------------------- main loop
    def run(self) -> Outcome:
        domain, vcpu = self.domain, self.domain.vcpu
        self._publish(Kind.TIME, 0 if self.virtual else self._host_ns())
        while domain.alive:
            if self.input.detached:
                if self._detached_at is None:
                    self._detached_at = vcpu.icount
                if domain.state == RunState.BLOCKED or \
                        vcpu.icount - self._detached_at >= DETACH_GRACE_INSTRUCTIONS:
                    return Outcome("detached", vcpu.icount)
            if self.max_instructions is not None and vcpu.icount >= self.max_instructions:
                return Outcome("instruction-limit", vcpu.icount)
            if domain.state == RunState.BLOCKED:
                ended = self._idle()
                if ended is not None:
                    return ended
                continue
            exit = vcpu.run(self._slice_target())
            if exit.reason == ExitReason.RANDOM:
                value = self._random.getrandbits(64) if self.virtual else int.from_bytes(os.urandom(8), "little")
                domain.funnel.inject(Kind.RANDOM, value.to_bytes(8, "little"))
            elif exit.reason != ExitReason.LIMIT:
                domain.handle_exit(exit)
            if not domain.alive:
                break
            if domain.yielded:
                domain.yielded = False
                self._yield_point()
            if exit.reason == ExitReason.LIMIT or vcpu.icount >= self._slice_end:
                self._slice_boundary()
        if domain.state == RunState.CRASHED:
            return Outcome("crashed", vcpu.icount, str(domain.crash_report))
        return Outcome("shutdown", vcpu.icount, domain.shutdown_name or "")

    def _slice_target(self) -> int:
        """The next stop: the end of the current slice (kept across exits), a virtual-clock timer
        deadline, or the instruction limit."""
        vcpu = self.domain.vcpu
        if vcpu.icount >= self._slice_end:
            self._slice_end = vcpu.icount + self.slice
        target = self._slice_end
        if self.virtual:
            deadline = self.domain.time.next_deadline()
            if deadline is not None:
                target = min(target, max(self.domain.time.icount_at(deadline), vcpu.icount + 1))
        if self.max_instructions is not None:
            target = min(target, self.max_instructions)
        return target

    # ---------------------------------------------------------------- injection points
    def _slice_boundary(self) -> None:
        """The vCPU is running and stopped between two instructions: inject what is due."""
        domain = self.domain
        if domain.funnel.sink is not None and domain.vcpu.icount >= self._next_digest:
            self._digests += 1
            domain.funnel.log_digest(with_memory=self._digests % FULL_DIGEST_EVERY == 0)
            self._next_digest = domain.vcpu.icount + DIGEST_INTERVAL
        deadline = domain.time.next_deadline()
        now = domain.time.now() if self.virtual else self._publishable_time()
        if deadline is not None and now >= deadline:
            self._publish(Kind.TIMER, now)
        if not self.virtual or self.input.fileno() is not None:
            self._inject_input(limit=domain.console.input_space())

    def _yield_point(self) -> None:
        """SCHEDOP_yield: the guest says it is waiting; scripted keys may arrive as when idle."""
        if self.virtual and self.input.fileno() is None:
            self._inject_input(limit=min(1, self.domain.console.input_space()))
        else:
            self._slice_boundary()

    def _inject_input(self, limit: int) -> bool:
        if limit <= 0:
            return False
        data = self.input.take(self._input_clock(), limit)
        if data:
            self.domain.funnel.inject(Kind.CONSOLE_INPUT, data)
        return bool(data)

    def _idle(self) -> Outcome | None:
        """The domain is blocked: wait (real) or skip (virtual) to the next input or timer."""
        domain = self.domain
        self._rate_origin = None         # idle time says nothing about the vCPU's speed
        if self.input.exhausted and self._exhausted_at is None:
            self._exhausted_at = self._input_clock()
        now = self._input_clock()
        if self._exhausted_at is not None and now - self._exhausted_at >= self.linger_ns:
            return Outcome("input-exhausted", domain.vcpu.icount)
        deadline = domain.time.next_deadline()
        due = self.input.next_due_ns(now) if domain.console.input_space() else None
        if self._exhausted_at is not None:
            linger_end = self._exhausted_at + self.linger_ns
            deadline = linger_end if deadline is None else min(deadline, linger_end)
        if deadline is None and due is None and self.input.fileno() is None:
            return Outcome("deadlock", domain.vcpu.icount, "the domain is blocked with no timer armed and no input")
        wake = min((t for t in (deadline, due) if t is not None), default=None)
        if self.virtual and self.input.fileno() is None:
            self._skip_to(wake)
        else:
            self._wait_until(wake)
        return None

    def _skip_to(self, wake: int) -> None:
        """Virtual clock: jump guest time to `wake` and inject what is due there."""
        domain = self.domain
        if wake > domain.time.now():
            deadline = domain.time.next_deadline()
            kind = Kind.TIMER if deadline is not None and deadline <= wake else Kind.TIME
            self._publish(kind, wake)
        if domain.state == RunState.BLOCKED:
            self._inject_input(limit=min(1, domain.console.input_space()))

    def _wait_until(self, wake: int | None) -> None:
        """Real clock (or a terminal): sleep until `wake` or terminal input, then inject what is due."""
        domain = self.domain
        now = self._input_clock()
        timeout = None if wake is None else max(0.0, (wake - now) / NS_PER_SECOND)
        descriptor = self.input.fileno()
        if descriptor is not None:
            select.select([descriptor], [], [], timeout)
        elif timeout:
            time.sleep(timeout)
        if self.virtual:
            deadline = domain.time.next_deadline()
            if not self._inject_input(limit=domain.console.input_space()) and deadline is not None:
                self._publish(Kind.TIMER, max(deadline, domain.time.now()))
            return
        now = self._publishable_time()
        deadline = domain.time.next_deadline()
        data = self.input.take(self._host_ns(), domain.console.input_space())
        if deadline is not None and now >= deadline:
            self._publish(Kind.TIMER, now)
        elif data:
            self._publish(Kind.TIME, now)
        if data:
            domain.funnel.inject(Kind.CONSOLE_INPUT, data)
