"""The scheduler loop of a live (run or record) domain: vCPU slices, idling, timers and input.

Owns *when* outside inputs are injected. The vCPU runs in bounded instruction slices; at slice
boundaries and while the domain is blocked, due timers and due console input (or PV keyboard events,
as far as the keyboard ring has free slots) are injected through the funnel. Two clocks (docs/architecture.md, "Time"):
- virtual: guest time is the instruction count (1 ns per instruction) plus idle time skipped to the
  next timer; timers fire at exact instruction counts and scripted keys arrive one per idle period,
  so a run is reproducible without a log;
- real: guest time follows the host's monotonic clock; timers and keys are injected at the first
  slice boundary (or idle moment) after they are due, so instruction counts depend on the host, as
  real hardware does, and record mode logs them.

Idle: a guest idles when it blocks (SCHEDOP_block, hlt) or when it polls (docs/architecture.md,
"Idle"). A polling guest is idle at
- a quiet yield: a SCHEDOP_yield with nothing done since its previous yield, or
- a quiet ring poll: the console input ring stayed empty and nothing was done between two slice
  boundaries, and the guest then reads in_prod again (a read watch, armed only for that read),
where "done" means any hypercall other than SCHEDOP_yield or a move of the indices only the guest
moves (in_cons: it took input; out_prod: it gave output). Both are functions of the guest's state
and instruction counts, so a virtual-clock run stays reproducible without a log. At an idle moment
of a polling guest, the virtual clock skips to the next timer, key or linger end as it does for a
blocked guest (the guest keeps running); either clock ends the run there once the key script is
done and the linger time has passed.

Quanta (the multi-domain host, host/): `run()` may be called again after it returned at
`max_instructions` (raise it first) and goes on where it stopped; with `wait_for_host=False` a blocked
domain with nothing due returns `Outcome("idle", ..., wake_ns=...)` instead of sleeping, so the
caller can run other domains on the same host CPU until then.

Record mode: a state digest every DIGEST_INTERVAL instructions and, when the recorder asks for them,
full-state snapshots (`Snapshots`), both at slice boundaries.

Toolstack writes into the domain's xenstore (`xenrr run --xenstore-write`) are injected the first
time the domain idles, so under the virtual clock they too land at a reproducible instruction count.
Invariant: the scheduler changes guest-visible state only through `domain.funnel`; slice
boundaries that only bound how long the host waits are invisible to the guest, and so is the
ring-poll read watch (a watched access runs exactly once, at the same instruction count).
"""
from __future__ import annotations

import os
import random
import select
import time
from dataclasses import dataclass
from typing import Protocol, Sequence

from xen import abi
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
    """Host-side input: a key script or a terminal (implementations live in dom0/). For the console it
    gives bytes; for the PV keyboard (`Scheduler(keyboard=True)`) a list of 2-byte key events."""

    def take(self, now_ns: int, limit: int) -> bytes:
        """Bytes (or key events) due at `now_ns` (on the input's own timeline), at most `limit`."""

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


class Snapshots(Protocol):
    """Record mode: full-state snapshots taken at slice boundaries (dom0/snapshots.py implements it)."""

    def due(self) -> bool:
        """Whether a snapshot is due now."""

    def take(self) -> None:
        """Log a state digest and snapshot the state right after it."""


@dataclass(frozen=True)
class Outcome:
    """How a run ended."""
    reason: str                 # "shutdown", "crashed", "instruction-limit", "detached", "input-exhausted",
                                # "input-refused", "deadlock", "idle"
    icount: int
    detail: str = ""
    wake_ns: int | None = None  # "idle": when the domain next has something to do (time.monotonic_ns; None: on input)


class Scheduler:
    """Runs one live domain to its end under a virtual or a real clock."""

    def __init__(self, domain: Domain, console_input: ConsoleInput, clock: str = "real",
                 max_instructions: int | None = None, linger_ns: int = DEFAULT_LINGER_NS,
                 slice_instructions: int = SLICE_INSTRUCTIONS, xenstore_writes: Sequence[tuple[str, bytes]] = (),
                 wait_for_host: bool = True, keyboard: bool = False, snapshots: Snapshots | None = None):
        if clock not in ("real", "virtual"):
            raise ValueError("clock must be 'real' or 'virtual'")
        self.domain = domain
        self.input = console_input
        if keyboard and domain.keyboard is None:
            raise ValueError("input for the PV keyboard needs a domain with a keyboard device")
        self.keyboard = keyboard    # input goes to the PV keyboard (events) rather than the console ring (bytes)
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
        self._hypercalls = 0                            # hypercalls other than SCHEDOP_yield so far
        self._yield_activity: tuple[int, ...] | None = None   # _activity() at the previous yield
        self._slice_activity: tuple[int, ...] | None = None   # _activity() at the previous slice boundary
        self._poll_watch_activity: tuple[int, ...] | None = None   # set while the in_prod read watch is armed
        self._xenstore_writes = list(xenstore_writes)
        self.wait_for_host = wait_for_host
        self.snapshots = snapshots
        self._started = False
        self._poll_watch_addresses: tuple[int, ...] = ()

    def save_state(self) -> dict:
        """Where a run in quanta stands, for the host to go on with it in another process (a domain
        moved to another pCPU): every field but the domain, its input and the recorder's snapshots (a
        recording moves on its own). The read watch for polling is disarmed first (the next quiet slice
        arms it again); the host's monotonic clock is the same in every process, so the real clock's
        origin stays valid."""
        self._disarm_poll_watch()
        return {name: value for name, value in vars(self).items() if name not in ("domain", "input", "snapshots")}

    def load_state(self, state: dict) -> None:
        """Go on from `save_state`'s point (the domain already restored to the same instant)."""
        vars(self).update(state)

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
        if not self._started:
            self._started = True
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
            exit = domain.run(self._slice_target())
            ended = None
            if exit.reason == ExitReason.RANDOM:
                value = self._random.getrandbits(64) if self.virtual else int.from_bytes(os.urandom(8), "little")
                domain.funnel.inject(Kind.RANDOM, value.to_bytes(8, "little"))
            elif exit.reason == ExitReason.WATCHPOINT:
                ended = self._ring_polled()
            elif exit.reason != ExitReason.LIMIT:
                domain.handle_exit(exit)
                if exit.reason == ExitReason.HYPERCALL and not domain.yielded:
                    self._hypercalls += 1
            if not domain.alive:
                break
            if domain.yielded:
                domain.yielded = False
                ended = self._yield_point()
            if ended is not None:
                self._disarm_poll_watch()
                return ended
            if exit.reason == ExitReason.LIMIT or vcpu.icount >= self._slice_end:
                self._slice_boundary()
                self._watch_for_polling()
        self._disarm_poll_watch()
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
        if domain.funnel.sink is not None and self.snapshots is not None and self.snapshots.due():
            self.snapshots.take()
        deadline = domain.time.next_deadline()
        now = domain.time.now() if self.virtual else self._publishable_time()
        if deadline is not None and now >= deadline:
            self._publish(Kind.TIMER, now)
        if not self.virtual or self.input.fileno() is not None:
            self._inject_input(limit=self._input_space())

    def _input_space(self) -> int:
        """How much input the device takes now: bytes of the console ring, or PV keyboard events."""
        if self.keyboard:
            return self.domain.keyboard.free_slots()
        return self.domain.console.input_space()

    # ---------------------------------------------------------------- polling guests
    def _activity(self) -> tuple[int, ...]:
        """What a polling guest changes when it does something: its hypercall count (yields aside),
        the ring indices only it moves, and its vCPU switches (another vCPU ran: not idle)."""
        return (self._hypercalls, self.domain.switches, *self.domain.console.guest_indices())

    def _yield_point(self) -> Outcome | None:
        """SCHEDOP_yield: idle when nothing was done since the previous yield; otherwise the real
        clock (or a terminal) still injects what is due, as at a slice boundary."""
        activity = self._activity()
        quiet = activity == self._yield_activity
        self._yield_activity = activity
        if quiet:
            return self._polling_idle()
        if not self.virtual or self.input.fileno() is not None:
            self._slice_boundary()
        return None

    def _watch_for_polling(self) -> None:
        """At a slice boundary: after a quiet slice with the input ring empty, watch for the guest's
        next read of in_prod (that read is the idle moment); after any activity, stop watching."""
        activity = self._activity()
        quiet = activity == self._slice_activity and self.domain.console.input_empty()
        self._slice_activity = activity
        if not quiet:
            self._disarm_poll_watch()
        elif self._poll_watch_activity is None:
            self._poll_watch_addresses = self._in_prod_addresses()
            for address in self._poll_watch_addresses:
                self.domain.vcpu.add_watch(address, 4, "r")
            self._poll_watch_activity = activity

    def _in_prod_addresses(self) -> tuple[int, ...]:
        """Where the guest reads the console ring's in_prod: the ring is a machine frame the guest
        maps where it likes (nowhere yet: nothing to watch)."""
        machine = self.domain.console.in_prod_address
        offset = machine % abi.PAGE_SIZE
        return tuple(page + offset for page in self.domain.vcpu.pages_mapping(machine // abi.PAGE_SIZE))

    def _disarm_poll_watch(self) -> None:
        if self._poll_watch_activity is not None:
            for address in self._poll_watch_addresses:
                self.domain.vcpu.remove_watch(address, 4, "r")
            self._poll_watch_activity = None

    def _ring_polled(self) -> Outcome | None:
        """The armed read of in_prod happened: an idle moment if still nothing was done since."""
        quiet = self._activity() == self._poll_watch_activity
        self._disarm_poll_watch()
        return self._polling_idle() if quiet else None

    def _polling_idle(self) -> Outcome | None:
        """An idle moment of a guest that polls instead of blocking: as `_idle`, without stopping it."""
        domain = self.domain
        if self.input.detached:
            return Outcome("detached", domain.vcpu.icount)
        if self._xenstore_writes:
            self._inject_xenstore_writes()
            return None
        ended = self._linger_over()
        if ended is not None:
            return ended
        if self.virtual and self.input.fileno() is None:
            wake = self._next_wake(self._input_clock())
            if not self._skip_time_to(wake):
                self._inject_input(limit=min(1, self._input_space()))
        else:
            self._slice_boundary()
        return None

    def _inject_xenstore_writes(self) -> None:
        """The guest's first idle moment: the toolstack's xenstore writes go in, one input each."""
        for path, value in self._xenstore_writes:
            self.domain.funnel.inject(Kind.XENSTORE_WRITE, path.encode() + b"\0" + value)
        self._xenstore_writes.clear()

    def _inject_input(self, limit: int) -> bool:
        if limit <= 0:
            return False
        data = self.input.take(self._input_clock(), limit)
        self._deliver(data)
        return bool(data)

    def _deliver(self, data) -> None:
        """Input taken from the host: console bytes as one input, PV keyboard events one input each."""
        if self.keyboard:
            for event in data:
                self.domain.funnel.inject(Kind.KEYBOARD, event)
        elif data:
            self.domain.funnel.inject(Kind.CONSOLE_INPUT, data)

    def _linger_over(self) -> Outcome | None:
        """At an idle moment: the run ends once the input is exhausted and the guest idled on for the
        linger time (guest time under the virtual clock, host time under the real one). Scripted keys
        for a PV keyboard that takes none (no frontend connected, or its ring full) count the same
        lingering, from the first idle moment they wait at, so that such a run ends too."""
        refused = self._keys_refused()
        if self.input.exhausted or refused:
            if self._exhausted_at is None:
                self._exhausted_at = self._input_clock()
        else:
            self._exhausted_at = None            # the keyboard took keys again: they are not stuck
        if self._exhausted_at is not None and self._input_clock() - self._exhausted_at >= self.linger_ns:
            if refused:
                return Outcome("input-refused", self.domain.vcpu.icount,
                               "the guest took no PV keyboard events (no frontend connected, or its ring stayed "
                               "full) and stayed idle")
            return Outcome("input-exhausted", self.domain.vcpu.icount)
        return None

    def _keys_refused(self) -> bool:
        """Scripted keys wait for a PV keyboard that takes no events, at an idle moment."""
        return (self.keyboard and self.input.fileno() is None and not self.input.exhausted
                and self._input_space() == 0)

    def _next_wake(self, now: int) -> int | None:
        """When the idle guest next has something to do: a timer, a due key or the end of lingering."""
        domain = self.domain
        wakes = [domain.time.next_deadline()]
        due = self.input.next_due_ns(now)
        if due is not None and self._input_space():         # the device's space only when input waits
            wakes.append(due)
        if self._exhausted_at is not None:
            wakes.append(self._exhausted_at + self.linger_ns)
        return min((wake for wake in wakes if wake is not None), default=None)

    def _idle(self) -> Outcome | None:
        """The domain is blocked: wait (real) or skip (virtual) to the next input or timer."""
        domain = self.domain
        self._rate_origin = None         # idle time says nothing about the vCPU's speed
        if self._xenstore_writes:
            self._inject_xenstore_writes()
            return None
        ended = self._linger_over()
        if ended is not None:
            return ended
        wake = self._next_wake(self._input_clock())
        if wake is None and self.input.fileno() is None:
            return Outcome("deadlock", domain.vcpu.icount, "the domain is blocked with no timer armed and no input")
        if not self.wait_for_host and not self.virtual and (wake is None or wake > self._input_clock()):
            return Outcome("idle", domain.vcpu.icount, wake_ns=None if wake is None else self._host_start + wake)
        if self.virtual and self.input.fileno() is None:
            self._skip_time_to(wake)
            if domain.state == RunState.BLOCKED:
                self._inject_input(limit=min(1, self._input_space()))
        else:
            self._wait_until(wake)
        return None

    def _skip_time_to(self, wake: int | None) -> bool:
        """Virtual clock: jump guest time to `wake` (a TIMER input when a timer is due there, else TIME).
        Returns whether a timer fired."""
        domain = self.domain
        if wake is None or wake <= domain.time.now():
            return False
        deadline = domain.time.next_deadline()
        fired = deadline is not None and deadline <= wake
        self._publish(Kind.TIMER if fired else Kind.TIME, wake)
        return fired

    def _wait_until(self, wake: int | None) -> None:
        """Real clock (or a terminal): sleep until `wake` or terminal input, then inject what is due."""
        domain = self.domain
        now = self._input_clock()
        timeout = None if wake is None else max(0.0, (wake - now) / NS_PER_SECOND)
        descriptor = self.input.fileno()
        if descriptor is not None and timeout != 0:         # (a wake already due waits for nothing)
            select.select([descriptor], [], [], timeout)
        elif timeout:
            time.sleep(timeout)
        if self.virtual:
            deadline = domain.time.next_deadline()
            if not self._inject_input(limit=self._input_space()) and deadline is not None:
                self._publish(Kind.TIMER, max(deadline, domain.time.now()))
            return
        now = self._publishable_time()
        deadline = domain.time.next_deadline()
        data = self.input.take(self._host_ns(), self._input_space())
        if deadline is not None and now >= deadline:
            self._publish(Kind.TIMER, now)
        elif data:
            self._publish(Kind.TIME, now)
        self._deliver(data)
