"""The vCPUs of one domain: their PV state outside the engine, and the fixed order they run in.

All vCPUs of a domain run on ONE engine (xen/vcpu.py), which holds the domain's memory; only one
vCPU's registers are on it at a time, the others' wait here (`VcpuContext.registers`). The engine's
instruction count counts every vCPU's instructions together: it is the domain's clock (the TSC,
guest time) and the position of every record in the log.

The schedule (`next_vcpu`, applied by `Domain`): the current vCPU runs for a quantum of `quantum`
instructions; at its end the next runnable vCPU in cyclic id order after it takes the engine. A
quantum ends early when the current vCPU blocks, goes down or yields, or when any vCPU is woken or
brought up (a *preemption*). While only one vCPU is runnable there is no quantum
limit at all, so a one-vCPU domain runs exactly as if there were no schedule.

Invariant: every switch happens at a point that is a function of the instruction count and of
what the guest and the logged inputs did (a quantum end, a hypercall, an injection), so the
interleaving of the vCPUs' memory accesses is the same in every replay of a recording: nothing
about it is logged beyond the session's quantum and vCPU count (the log header).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from xen import abi
from xen.runstate import Runstate
from xen.traps import TrapTable
from xen.vcpu import CpuState

DEFAULT_QUANTUM = 100_000        # instructions; `--quantum` records another one in the session
MAX_QUANTUM = 2**62
MAX_VCPUS = abi.XEN_LEGACY_MAX_VCPUS     # every vCPU's vcpu_info has its slot in shared_info


@dataclass(frozen=True)
class Poll:
    """A vCPU blocked in SCHEDOP_poll: `port` is the one port polled (Xen's poll_evtchn), None when
    several (or none) were: then any port that becomes pending wakes it, as in Xen."""
    port: int | None


@dataclass
class VcpuContext:
    """One vCPU's state that is not guest memory. `registers` is None while the vCPU is on the engine."""
    id: int
    initialised: bool = False          # VCPUOP_initialise done (vCPU 0: by the domain builder)
    up: bool = False                   # VCPUOP_up (and not VCPUOP_down since)
    blocked: bool = False              # in SCHEDOP_block, SCHEDOP_poll or hlt
    registers: CpuState | None = None
    poll: Poll | None = None           # set while blocked in SCHEDOP_poll
    event_callback: int = 0
    failsafe_callback: int = 0
    traps: TrapTable = field(default_factory=TrapTable)
    gs_base_user: int = 0              # the inactive (guest user mode) GS base, SEGBASE_GS_USER
    kernel_stack: tuple[int, int] = (0, 0)   # (kernel_ss, kernel_sp) from vcpu_guest_context
    runstate: Runstate = field(default_factory=Runstate)

    @property
    def runnable(self) -> bool:
        return self.up and not self.blocked

    def status(self) -> str:
        """In words, for debuggers: running, runnable, blocked or down."""
        if not self.up:
            return "down"
        if self.blocked:
            return "blocked"
        return "running" if self.registers is None else "runnable"

    def state_bytes(self) -> bytes:
        """A canonical encoding for digests (the registers of a vCPU on the engine are the engine's)."""
        registers = None if self.registers is None else (self.registers.registers, self.registers.pc)
        return repr((self.id, self.initialised, self.up, self.blocked, registers, self.poll, self.event_callback,
                     self.failsafe_callback, self.traps.save_state(), self.gs_base_user, self.kernel_stack,
                     self.runstate.state_bytes())).encode()


def next_vcpu(vcpus: list[VcpuContext], current: int) -> int | None:
    """The vCPU to run next: the first runnable one in cyclic id order after `current`, `current`
    itself last. None when none is runnable."""
    count = len(vcpus)
    for offset in range(1, count + 1):
        candidate = (current + offset) % count
        if vcpus[candidate].runnable:
            return candidate
    return None


def others_runnable(vcpus: list[VcpuContext], current: int) -> bool:
    return any(context.runnable for context in vcpus if context.id != current)
