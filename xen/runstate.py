"""The vCPU's runstate accounting (vcpu.h struct vcpu_runstate_info) and the guest's copy of it.

Owns the runstate (running / blocked), the guest time it was entered and the time spent in each
state, and the guest address registered with VCPUOP_register_runstate_memory_area. Xen changes the
runstate when the scheduler switches the vCPU out (it blocks) and in (it wakes) and then copies it to
the registered area; here the domain calls `change` at exactly those points. Invariant: every value is
guest system time (xen/timekeeping.py), so the runstate is a pure function of the guest's execution
and its recorded inputs, and replays identically.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Callable

from xen import abi


@dataclass
class Runstate:
    """One vCPU's runstate; `area` is the guest virtual address of its copy (0: none registered)."""
    state: int = abi.RUNSTATE_running
    entry_time: int = 0
    time: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    area: int = 0

    def info(self, now: int) -> abi.VcpuRunstateInfo:
        """What VCPUOP_get_runstate_info returns at guest time `now`: the current state's time so far
        is counted, as Xen's vcpu_runstate_get does."""
        times = list(self.time)
        times[self.state] += now - self.entry_time
        return abi.VcpuRunstateInfo(state=self.state, state_entry_time=self.entry_time,
                                    time=(ctypes.c_uint64 * 4)(*times))

    def change(self, new_state: int, now: int, copy_to_guest: Callable[[int, bytes], None]) -> None:
        """vcpu_runstate_change, then update_runstate_area: account the time and copy it out."""
        if new_state == self.state:
            return
        self.time[self.state] += now - self.entry_time
        self.state, self.entry_time = new_state, now
        self.publish(now, copy_to_guest)

    def publish(self, now: int, copy_to_guest: Callable[[int, bytes], None]) -> None:
        """Copy the runstate to the registered area (a failed copy is ignored, as Xen ignores it)."""
        if self.area:
            copy_to_guest(self.area, bytes(self.info(now)))

    def state_bytes(self) -> bytes:
        """A canonical encoding for digests."""
        return repr((self.state, self.entry_time, tuple(self.time), self.area)).encode()
