"""Guest time: the published vcpu_time_info, and the vCPU's one-shot and periodic timers.

Owns the guest's notion of "now". The vCPU's TSC is its instruction count (xen/vcpu.py), published
at 1 ns per tick (tsc_to_system_mul = 2^31, tsc_shift = 1), so the guest and the hypervisor compute
the same time: now(icount) = system_time + (icount - tsc_timestamp). Invariant: system_time and
tsc_timestamp change only in `publish`, which runs only through the input funnel (a recorded TIME or
TIMER record); timers are armed only by guest hypercalls. Both are therefore replayed exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

from xen import abi
from xen.vcpu import VCpu

NS_PER_TICK = 1
TSC_TO_SYSTEM_MUL = 1 << 31
TSC_SHIFT = 1


@dataclass
class TimerState:
    """Armed deadlines in guest ns (None = not armed) and the periodic period."""
    singleshot: int | None = None
    periodic_next: int | None = None
    period: int = 0


class GuestTime:
    """The time base published in vcpu_info.time, and the timers that run on it."""

    def __init__(self, vcpu: VCpu, time_info_address: int):
        self._vcpu = vcpu
        self._address = time_info_address
        self.base_ns = 0
        self.base_icount = 0
        self.timers = TimerState()

    def now(self) -> int:
        """Guest system time (ns) at the vCPU's current instruction count."""
        return self.base_ns + (self._vcpu.icount - self.base_icount) * NS_PER_TICK

    def icount_at(self, guest_ns: int) -> int:
        """The instruction count at which a running vCPU reaches `guest_ns` (never before now)."""
        return self.base_icount + max(0, guest_ns - self.base_ns) // NS_PER_TICK

    def publish(self, system_time: int) -> None:
        """Write a new time base into vcpu_time_info, with Xen's odd/even version protocol."""
        fields = abi.VcpuTimeInfo
        version_address = self._address + fields.version.offset
        version = int.from_bytes(self._vcpu.read(version_address, 4), "little")
        self._vcpu.write(version_address, ((version + 1) | 1).to_bytes(4, "little"))
        self.base_ns = system_time
        self.base_icount = self._vcpu.icount
        info = fields(version=(version + 1) | 1, tsc_timestamp=self.base_icount, system_time=system_time,
                      tsc_to_system_mul=TSC_TO_SYSTEM_MUL, tsc_shift=TSC_SHIFT)
        self._vcpu.write(self._address, bytes(info))
        self._vcpu.write(version_address, (((version + 1) | 1) + 1).to_bytes(4, "little"))

    # ---------------------------------------------------------------- timers
    def next_deadline(self) -> int | None:
        armed = [d for d in (self.timers.singleshot, self.timers.periodic_next) if d is not None]
        return min(armed) if armed else None

    def set_singleshot(self, deadline: int | None) -> None:
        self.timers.singleshot = deadline

    def set_periodic(self, period: int | None) -> None:
        if period is None:
            self.timers.period, self.timers.periodic_next = 0, None
        else:
            self.timers.period, self.timers.periodic_next = period, self.now() + period

    def expire(self, now: int) -> bool:
        """Retire every timer due at `now`; True when any fired (VIRQ_TIMER is then raised by the caller)."""
        fired = False
        if self.timers.singleshot is not None and self.timers.singleshot <= now:
            self.timers.singleshot = None
            fired = True
        if self.timers.periodic_next is not None and self.timers.periodic_next <= now:
            next_deadline = self.timers.periodic_next + self.timers.period
            if next_deadline <= now:            # missed ticks are dropped, as Xen does
                next_deadline = now + self.timers.period
            self.timers.periodic_next = next_deadline
            fired = True
        return fired
