"""Guest time: the published vcpu_time_info, and each vCPU's one-shot and periodic timers.

Owns the guest's notion of "now". The vCPU's TSC is its instruction count (xen/vcpu.py); a time base
publishes (system_time, tsc_timestamp, tsc_to_system_mul, tsc_shift) exactly as Xen does, and the
hypervisor extrapolates with the same fixed-point formula the guest uses, so both see the same "now".
Invariant: the time base changes only in `publish`, which runs only through the input funnel (a
recorded TIME or TIMER record carrying all of it); timers are armed only by guest hypercalls. Both are
therefore replayed exactly.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from xen import abi
from xen.vcpu import VCpu

_BASE = struct.Struct("<QIb")


@dataclass(frozen=True)
class TimeScale:
    """Xen's tick -> ns conversion: ns = ((ticks << shift) * mul) >> 32 (shift may be negative)."""
    mul: int
    shift: int

    @classmethod
    def from_ns_per_tick(cls, ns_per_tick: float) -> "TimeScale":
        shift = 0
        while ns_per_tick >= 1.0:
            ns_per_tick /= 2
            shift += 1
        while ns_per_tick < 0.5 and shift > -31:
            ns_per_tick *= 2
            shift -= 1
        return cls(min(int(ns_per_tick * 2**32), 2**32 - 1), shift)

    def ns(self, ticks: int) -> int:
        shifted = ticks << self.shift if self.shift >= 0 else ticks >> -self.shift
        return (shifted * self.mul) >> 32

    def ticks_until(self, ns: int) -> int:
        """The smallest tick count whose conversion reaches `ns` (ns >= 0)."""
        low, high = 0, 1
        while self.ns(high) < ns:
            high *= 2
        while low < high:
            middle = (low + high) // 2
            low, high = (middle + 1, high) if self.ns(middle) < ns else (low, middle)
        return low


ONE_NS_PER_TICK = TimeScale(1 << 31, 1)


@dataclass(frozen=True)
class TimeBase:
    """What one TIME/TIMER input publishes: system time (ns) at the injection's icount, and the scale."""
    SIZE: ClassVar[int] = _BASE.size
    system_time: int
    scale: TimeScale = ONE_NS_PER_TICK

    def to_bytes(self) -> bytes:
        return _BASE.pack(self.system_time, self.scale.mul, self.scale.shift)

    @classmethod
    def from_bytes(cls, data: bytes) -> "TimeBase":
        """ValueError unless `data` is exactly one TimeBase with a usable (non-zero) scale."""
        if len(data) != _BASE.size:
            raise ValueError(f"time base of {len(data)} bytes, expected {_BASE.size}")
        system_time, mul, shift = _BASE.unpack(data)
        if mul == 0:
            raise ValueError("time base with a zero scale multiplier")
        return cls(system_time, TimeScale(mul, shift))


@dataclass
class TimerState:
    """Armed deadlines in guest ns (None = not armed) and the periodic period."""
    singleshot: int | None = None
    periodic_next: int | None = None
    period: int = 0
    poll_timeout: int | None = None      # SCHEDOP_poll's timeout: wakes the poller, raises no VIRQ


class GuestTime:
    """The time base published in every vCPU's vcpu_info.time, and each vCPU's timers.

    Time is the domain's: the TSC is the domain's instruction count (all vCPUs share the one engine),
    so one base serves every vCPU. Timers are per vCPU; the calls that arm them act on `current`,
    the vCPU on the engine (the one making the hypercall), which the domain keeps up to date."""

    def __init__(self, vcpu: VCpu, time_info_address: int):
        self._vcpu = vcpu
        self._addresses = [time_info_address]
        self.base_ns = 0
        self.base_icount = 0
        self.scale = ONE_NS_PER_TICK
        self._timers = [TimerState()]
        self.current = 0

    def add_vcpu(self, time_info_address: int) -> None:
        """One more vCPU (the domain builds all of them before the guest runs): its time info address."""
        self._addresses.append(time_info_address)
        self._timers.append(TimerState())

    @property
    def timers(self) -> TimerState:
        """The current vCPU's timers."""
        return self._timers[self.current]

    def timers_of(self, vcpu_id: int) -> TimerState:
        return self._timers[vcpu_id]

    def now(self) -> int:
        """Guest system time (ns) at the domain's current instruction count."""
        return self.base_ns + self.scale.ns(self._vcpu.icount - self.base_icount)

    def icount_at(self, guest_ns: int) -> int:
        """The instruction count at which a running vCPU reaches `guest_ns` (never before now)."""
        return self.base_icount + self.scale.ticks_until(max(0, guest_ns - self.base_ns))

    def publish(self, base: TimeBase) -> None:
        """Write a new time base into every vCPU's vcpu_time_info, with Xen's odd/even version protocol."""
        self.base_ns = base.system_time
        self.base_icount = self._vcpu.icount
        self.scale = base.scale
        for address in self._addresses:
            self._write_time_info(address, base)

    def _write_time_info(self, address: int, base: TimeBase) -> None:
        fields = abi.VcpuTimeInfo
        version_address = address + fields.version.offset
        version = int.from_bytes(self._vcpu.machine.read(version_address, 4), "little")
        self._vcpu.machine.write(version_address, ((version + 1) | 1).to_bytes(4, "little"))
        info = fields(version=(version + 1) | 1, tsc_timestamp=self.base_icount, system_time=base.system_time,
                      tsc_to_system_mul=base.scale.mul, tsc_shift=base.scale.shift)
        self._vcpu.machine.write(address, bytes(info))
        self._vcpu.machine.write(version_address, (((version + 1) | 1) + 1).to_bytes(4, "little"))

    def move(self, time_info_address: int, vcpu_id: int) -> None:
        """A vCPU's vcpu_info moved (VCPUOP_register_vcpu_info): publish there from now on, at once as
        Xen's force_update_vcpu_system_time does."""
        self._addresses[vcpu_id] = time_info_address
        self.publish(TimeBase(self.now(), self.scale))

    def save_state(self) -> tuple:
        return (self.base_ns, self.base_icount, self.scale, tuple(TimerState(**vars(t)) for t in self._timers),
                tuple(self._addresses), self.current)

    def load_state(self, state: tuple) -> None:
        self.base_ns, self.base_icount, self.scale, timers, addresses, self.current = state
        self._timers = [TimerState(**vars(timer)) for timer in timers]
        self._addresses = list(addresses)

    def state_bytes(self) -> bytes:
        """The timers of every vCPU but the first, for digests (the first's are covered as before)."""
        return repr([vars(timer) for timer in self._timers[1:]]).encode()

    # ---------------------------------------------------------------- timers
    def next_deadline(self) -> int | None:
        armed = [d for timers in self._timers for d in (timers.singleshot, timers.periodic_next, timers.poll_timeout)
                 if d is not None]
        return min(armed) if armed else None

    def set_singleshot(self, deadline: int | None) -> None:
        self.timers.singleshot = deadline

    def set_periodic(self, period: int | None, vcpu_id: int | None = None) -> None:
        timers = self.timers if vcpu_id is None else self._timers[vcpu_id]
        if period is None:
            timers.period, timers.periodic_next = 0, None
        else:
            timers.period, timers.periodic_next = period, self.now() + period

    def set_poll_timeout(self, deadline: int | None, vcpu_id: int | None = None) -> None:
        (self.timers if vcpu_id is None else self._timers[vcpu_id]).poll_timeout = deadline

    def expire_poll(self, now: int) -> list[int]:
        """Retire the poll timeouts due at `now`; the vCPUs whose timeout fired (they then wake)."""
        fired = []
        for vcpu_id, timers in enumerate(self._timers):
            if timers.poll_timeout is not None and timers.poll_timeout <= now:
                timers.poll_timeout = None
                fired.append(vcpu_id)
        return fired

    def expire(self, now: int) -> list[int]:
        """Retire every timer due at `now`; the vCPUs any of whose timers fired (the caller raises
        their VIRQ_TIMER)."""
        return [vcpu_id for vcpu_id, timers in enumerate(self._timers) if _expire(timers, now)]


def _expire(timers: TimerState, now: int) -> bool:
    fired = False
    if timers.singleshot is not None and timers.singleshot <= now:
        timers.singleshot = None
        fired = True
    if timers.periodic_next is not None and timers.periodic_next <= now:
        next_deadline = timers.periodic_next + timers.period
        if next_deadline <= now:            # missed ticks are dropped, as Xen does
            next_deadline = now + timers.period
        timers.periodic_next = next_deadline
        fired = True
    return fired
