"""A PV domain: its vCPU and memory, event channels, console and xenstore rings, grant table, time, run state.

Owns the state machine of one guest (running / blocked / shut down / crashed) and the glue between
its parts: a hypercall exit goes to xen/hypercalls.py, outside inputs come in through the funnel
(`self.funnel`, xen/inject.py), and every return to the guest delivers a pending, unmasked upcall.
Invariant: everything guest-visible here changes either in a hypercall (deterministic) or in a
funnel injection (recorded); nothing here reads the host clock or host input.
"""
from __future__ import annotations

import ctypes
import enum
import pickle
from dataclasses import dataclass
from typing import Any, Callable

from xen import abi, hypercalls, privop
from xen.builder import DomainImage
from xen.console import ConsoleRing
from xen.digest import Digest, start_memory_digests, take_digest
from xen.evtchn import Binding, EventChannels
from xen.grant import GrantTable
from xen.inject import Funnel, InterdomainChange
from xen.kbdif import KeyboardDevice
from xen.mm import L4, MemoryModel
from xen.runstate import Runstate
from xen.smp import DEFAULT_QUANTUM, MAX_VCPUS, Poll, VcpuContext, next_vcpu, others_runnable
from xen.timekeeping import GuestTime
from xen.traps import VECTOR_GENERAL_PROTECTION, VECTOR_PAGE_FAULT, bounce_exception, describe
from xen.upcall import GuestFault, deliver_if_pending
from xen.vcpu import AliasError, CpuState, Exit, ExitReason, GuestMemoryError, VCpu
from xen.xenstore import XenstoreRing, XenstoreServer

INITIAL_RFLAGS = 0x202
DEFAULT_TIMER_PERIOD_NS = 10_000_000
CONSOLE_PORT = 1
STORE_PORT = 2
DOMID = 1                  # the id the toolstack gives the domain (the first domU, as `xl create` does)


class RunState(enum.Enum):
    RUNNING = "running"
    BLOCKED = "blocked"
    SHUTDOWN = "shutdown"
    CRASHED = "crashed"


SHUTDOWN_REASONS = {abi.SHUTDOWN_poweroff: "poweroff", abi.SHUTDOWN_reboot: "reboot",
                    abi.SHUTDOWN_suspend: "suspend", abi.SHUTDOWN_crash: "crash",
                    abi.SHUTDOWN_watchdog: "watchdog", abi.SHUTDOWN_soft_reset: "soft_reset"}


@dataclass(frozen=True)
class CrashReport:
    """Why a domain crashed and exactly where."""
    reason: str
    rip: int
    icount: int
    address: int | None = None

    def __str__(self) -> str:
        where = f"rip {self.rip:#x}, instruction {self.icount}"
        if self.address is not None:
            where += f", address {self.address:#x}"
        return f"domain crashed: {self.reason} ({where})"


def deep_copy(value: Any) -> Any:
    """A deep copy of checkpointed state (plain data and the state classes): a pickle round trip, several
    times faster than copy.deepcopy on this state, and what a stored snapshot holds is exactly that pickle."""
    return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


@dataclass(frozen=True)
class DomainState:
    """Everything about a domain that is not in its vCPU registers or guest memory (for checkpoints)."""
    fields: dict[str, Any]


_SAVED_FIELDS = ("_ended", "shutdown_reason", "crash_report", "vm_assist", "_free_extra_frames", "iopl",
                 "io_bitmap", "pirq_eoi_frame", "pirq_auto_unmask", "pirqs", "vcpus", "current", "quantum_end",
                 "_preempted", "switches", "yielded", "ran")


def _current_vcpus(name: str, doc: str) -> property:
    """A Domain attribute that is the current vCPU's (the one on the engine, making the hypercall)."""
    return property(lambda self: getattr(self.vcpus[self.current], name),
                    lambda self, value: setattr(self.vcpus[self.current], name, value), doc=doc)


class Domain:
    """One guest domain built from a DomainImage, with `vcpus` vCPUs sharing one engine (xen/smp.py)."""

    poll = _current_vcpus("poll", "set while the current vCPU is blocked in SCHEDOP_poll")
    runstate = _current_vcpus("runstate", "the current vCPU's runstate")
    event_callback = _current_vcpus("event_callback", "the current vCPU's event callback")
    failsafe_callback = _current_vcpus("failsafe_callback", "the current vCPU's failsafe callback")
    traps = _current_vcpus("traps", "the current vCPU's virtual IDT")
    gs_base_user = _current_vcpus("gs_base_user", "the current vCPU's inactive GS base (SEGBASE_GS_USER)")

    def __init__(self, image: DomainImage, *, jit: bool = True, vcpus: int = 1, quantum: int = DEFAULT_QUANTUM,
                 console_output: Callable[[bytes], None] = lambda data: None,
                 hypervisor_console: Callable[[bytes], None] = lambda data: None):
        if not 1 <= vcpus <= MAX_VCPUS:
            raise ValueError(f"a domain has 1 to {MAX_VCPUS} vCPUs, not {vcpus}")
        if quantum < 1:
            raise ValueError(f"the quantum is at least 1 instruction, not {quantum}")
        self.image = image
        self.quantum = quantum
        # vCPU 0 is initialised and up from the start (the builder's context); the others wait for
        # VCPUOP_initialise and VCPUOP_up, as in Xen.
        self.vcpus = [VcpuContext(0, initialised=True, up=True)] + \
            [VcpuContext(n, runstate=Runstate(state=abi.RUNSTATE_offline)) for n in range(1, vcpus)]
        self.current = 0                        # the vCPU whose registers are on the engine
        self.quantum_end: int | None = None     # the instruction count its quantum ends at (None: no limit)
        self._preempted = False                 # a vCPU blocked, woke, went up or down: the quantum is over
        self.switches = 0                       # context switches so far
        self.yielded = False                    # SCHEDOP_yield since the scheduler last looked
        self.ran = 0                            # the vCPU that executed the last instructions `run` ran
        self.switch_observer: Callable[[int, int], None] | None = None   # (icount, vCPU) at each switch
        self.vcpu = VCpu(image.frame_count, jit=jit)
        start_memory_digests(self.vcpu)
        for address, data in image.memory_writes(console_evtchn=CONSOLE_PORT, store_evtchn=STORE_PORT):
            self.vcpu.machine.write(address, data)
        self.vcpu.set_read_only(image.read_only_frames())
        self.memory = MemoryModel(self.vcpu, guest_frames=range(image.m2p_frames.start),
                                  m2p_frames=image.m2p_frames)
        self.memory.pin(image.l4_frame, L4)          # as the toolstack pins the bootstrap L4
        self.memory.new_baseptr(image.l4_frame)
        self.domid = DOMID
        # Where this domain's event-channel actions towards other domains go (the host's pCPU worker):
        # called with (change, our port, remote domid, remote port); None alone (a replay): they go nowhere,
        # which changes nothing in this domain.
        self.interdomain_out: Callable[[str, int, int, int], None] | None = None
        self._free_extra_frames = list(image.extra_frames)
        self.grants = GrantTable(self.vcpu.machine, DOMID, frame_address=lambda frame: frame * abi.PAGE_SIZE,
                                 allocate_frame=self.allocate_extra_frame, is_domain_frame=self._is_domain_frame)
        self.events = EventChannels(self.vcpu.machine, image.shared_info_frame * abi.PAGE_SIZE)
        self.events.allocate(Binding("backend", "console"), port=CONSOLE_PORT)
        self.events.allocate(Binding("backend", "xenstore"), port=STORE_PORT)
        self.events.set_upcall_mask(True)
        self.console_port = CONSOLE_PORT
        self.console = ConsoleRing(self.vcpu.machine, image.console_frame * abi.PAGE_SIZE)
        self.store_port = STORE_PORT
        self.store_ring = XenstoreRing(self.vcpu.machine, image.store_frame * abi.PAGE_SIZE)
        self.xenstore: XenstoreServer | None = None       # connect_xenstore(); without one nobody answers
        self.keyboard: KeyboardDevice | None = None       # connect_keyboard(): a PV keyboard backend
        self.time = GuestTime(self.vcpu, self.events.vcpu_info_address(0) + abi.VcpuInfo.time.offset)
        for context in self.vcpus[1:]:
            self.events.set_upcall_mask(True, context.id)
            self.time.add_vcpu(self.events.vcpu_info_address(context.id) + abi.VcpuInfo.time.offset)
        self.time.set_periodic(DEFAULT_TIMER_PERIOD_NS)     # Xen starts every PV vCPU with a 100 Hz tick
        self.funnel = Funnel(self)
        self.console_output = console_output
        self.hypervisor_console = hypervisor_console
        self.vm_assist = 0                  # enabled VMASST_TYPE_* bits
        self.iopl = 0                       # PHYSDEVOP_set_iopl: kept; port I/O is not emulated
        self.io_bitmap = (0, 0)             # PHYSDEVOP_set_iobitmap: (guest address, nr_ports), kept
        self.pirq_eoi_frame: int | None = None   # PHYSDEVOP_pirq_eoi_gmfn: holds a writable type reference
        self.pirq_auto_unmask = False       # registered with the v1 call
        self.pirqs: tuple[int, ...] = ()    # pirqs handed out by PHYSDEVOP_get_free_pirq
        self._ended: RunState | None = None     # SHUTDOWN or CRASHED once the domain is over
        self.shutdown_reason: int | None = None
        self.crash_report: CrashReport | None = None
        self.vcpu.set_reg("rsp", image.initial_rsp)
        self.vcpu.set_reg("rsi", image.initial_rsi)
        self.vcpu.set_rflags(INITIAL_RFLAGS)
        self.vcpu.pc = image.entry

    # ---------------------------------------------------------------- state
    def save_state(self, copied: bool = True) -> DomainState:
        """The hypervisor-side state; with vCPU registers and memory it is the whole domain. With
        `copied=False` its fields may be the domain's own live objects: only for a caller that
        serializes the state at once (a stored snapshot pickles it), which copies it anyway."""
        fields = {name: getattr(self, name) for name in _SAVED_FIELDS}
        fields["events"] = self.events.save_state()
        fields["time"] = self.time.save_state()
        fields["xenstore"] = None if self.xenstore is None else self.xenstore.save_state()
        fields["grants"] = self.grants.save_state()
        fields["keyboard"] = None if self.keyboard is None else self.keyboard.save_state()
        memory = self.memory.save_state()          # immutable: shared, not copied
        state = deep_copy(fields) if copied else fields
        state["memory"] = memory
        return DomainState(state)

    def load_state(self, state: DomainState) -> None:
        """Restore the hypervisor-side state; guest memory must already be restored (the page
        tables in it define the address space the memory model rebuilds)."""
        fields = dict(state.fields)
        self.memory.load_state(fields.pop("memory"))
        fields = deep_copy(fields)
        self.events.load_state(fields.pop("events"))
        self.time.load_state(fields.pop("time"))
        self.grants.load_state(fields.pop("grants"))
        xenstore = fields.pop("xenstore")
        keyboard = fields.pop("keyboard")
        if self.keyboard is not None:
            self.keyboard.load_state(keyboard)
        if self.xenstore is not None:
            self.xenstore.load_state(xenstore)
        for name, value in fields.items():
            setattr(self, name, value)

    def device_state(self) -> bytes:
        """A canonical encoding of the device state outside guest memory (for digests). A domain of
        several vCPUs adds every vCPU's context (the registers of those off the engine too), the
        schedule's position and the other vCPUs' timers."""
        first = self.vcpus[0]
        smp = b""
        if len(self.vcpus) > 1:
            smp = b"smp:" + b"".join(context.state_bytes() for context in self.vcpus) + \
                repr((self.current, self.quantum_end, self._preempted)).encode() + \
                self.time.state_bytes() + self.events.overrides_bytes()
        return b"gs_base_user:" + first.gs_base_user.to_bytes(8, "little") + \
            b"poll:" + repr(first.poll).encode() + b"runstate:" + first.runstate.state_bytes() + \
            b"vcpu_info:" + repr(self.events.vcpu_info_override(0)).encode() + smp + \
            b"grants:" + self.grants.state_bytes() + \
            b"gdt:" + repr((self.memory.gdt, self.memory.gdt_entries)).encode() + \
            b"physdev:" + repr((self.iopl, self.io_bitmap, self.pirq_eoi_frame, self.pirq_auto_unmask,
                                self.pirqs)).encode() + \
            b"xenstore:" + (b"-" if self.xenstore is None else self.xenstore.state_bytes()) + \
            b"keyboard:" + (b"-" if self.keyboard is None else self.keyboard.state_bytes()) + \
            (b"interdomain:" + interdomain if (interdomain := self.events.interdomain_state()) else b"")

    def allocate_extra_frame(self) -> int | None:
        """A frame outside the domain's pages for the hypervisor to hand to the guest (a grant-table
        frame). None when the pool is used up. Frames go out in order; the pool is checkpointed."""
        return self._free_extra_frames.pop(0) if self._free_extra_frames else None

    def _is_domain_frame(self, frame: int) -> bool:
        return 0 <= frame < self.image.nr_pages

    def digest(self, with_memory: bool, in_clear: bool = False) -> Digest:
        """The state digest of the whole domain: vCPU and device state; `with_memory` a full digest
        (memory and device state hashed apart), `in_clear` with the named registers (xen/digest.py)."""
        return take_digest(self.vcpu, with_memory, self.device_state(), in_clear)

    def connect_xenstore(self, server: XenstoreServer) -> None:
        """Introduce the domain to a xenstored (before it runs): the store ring is served from now on."""
        self.xenstore = server
        self.store_ring.connect()

    def connect_keyboard(self, device: KeyboardDevice) -> None:
        """Attach a PV keyboard backend (before the domain runs; it connects through xenstore)."""
        self.keyboard = device

    def xenstore_changed(self) -> None:
        """dom0 changed the store (a funnel input): send the guest any watch events it caused."""
        if self.xenstore is not None and self.store_ring.flush(self.xenstore):
            self.notify_guest(self.store_port)

    @property
    def state(self) -> RunState:
        """SHUTDOWN or CRASHED once over; else RUNNING while any vCPU may run, BLOCKED when none may."""
        if self._ended is not None:
            return self._ended
        return RunState.RUNNING if any(context.runnable for context in self.vcpus) else RunState.BLOCKED

    @property
    def alive(self) -> bool:
        return self._ended is None

    def yield_vcpu(self) -> None:
        """SCHEDOP_yield: the quantum ends here when another vCPU may run."""
        self.yielded = True
        if others_runnable(self.vcpus, self.current):
            self._preempted = True

    def block(self) -> None:
        """SCHEDOP_block: unmask events; block unless an upcall is already pending."""
        self.events.set_upcall_mask(False)
        if not self.events.upcall_pending():
            self._set_blocked(True)

    def start_poll(self, port: int | None, timeout: int) -> None:
        """SCHEDOP_poll found nothing pending: block (events stay as masked as they are) until a
        polled port becomes pending, an upcall is newly raised, or guest time reaches `timeout`
        (0: none) - xen/common/sched/core.c do_poll, evtchn_check_pollers, poll_timer_fn."""
        self._set_blocked(True)
        self.poll = Poll(port)
        if timeout:
            self.time.set_poll_timeout(timeout)
            self.expire_timers()

    def _end_poll(self, context: VcpuContext) -> None:
        context.poll = None
        self.time.set_poll_timeout(None, context.id)
        if context.blocked:
            self._wake(context)

    def _set_blocked(self, blocked: bool) -> None:
        """Block or wake the current vCPU; its runstate follows, as on Xen's context switch out and in."""
        if blocked:
            context = self.vcpus[self.current]
            context.blocked = True
            self._preempted = True
            self._change_runstate(context, abi.RUNSTATE_blocked)
        else:
            self._wake(self.vcpus[self.current])

    def _wake(self, context: VcpuContext) -> None:
        """A blocked vCPU may run again: the current quantum ends (xen/smp.py)."""
        context.blocked = False
        self._preempted = True
        self._change_runstate(context, abi.RUNSTATE_running if context.id == self.current else abi.RUNSTATE_runnable)

    def _change_runstate(self, context: VcpuContext, state: int) -> None:
        context.runstate.change(state, self.time.now(), self.copy_runstate)

    def copy_runstate(self, address: int, data: bytes) -> None:
        """Xen's __copy_to_guest of the runstate area: with the guest's permissions, failures ignored."""
        try:
            self.vcpu.write_for_guest(address, data)
        except GuestMemoryError:
            pass

    def move_vcpu_info(self, vcpu_id: int, address: int) -> None:
        """VCPUOP_register_vcpu_info (common/domain.c map_vcpu_info): the vCPU's vcpu_info is copied to
        the machine address `address` and lives there from now on; every pending selector bit and the
        upcall flag are set ("so nothing gets lost"), and time is published there at once."""
        old = self.events.vcpu_info_address(vcpu_id)
        self.vcpu.machine.write(address, self.vcpu.machine.read(old, ctypes.sizeof(abi.VcpuInfo)))
        self.events.register_vcpu_info(vcpu_id, address)
        self.vcpu.machine.write_u64(address + abi.VcpuInfo.evtchn_pending_sel.offset, 2**64 - 1)
        self.vcpu.machine.write(address + abi.VcpuInfo.evtchn_upcall_pending.offset, b"\1")
        self.time.move(address + abi.VcpuInfo.time.offset, vcpu_id)

    def shutdown(self, reason: int) -> None:
        self._ended = RunState.SHUTDOWN
        self.shutdown_reason = reason

    def crash(self, reason: str, address: int | None = None) -> None:
        self._ended = RunState.CRASHED
        self.crash_report = CrashReport(reason, self.vcpu.pc, self.vcpu.icount, address)

    @property
    def shutdown_name(self) -> str | None:
        if self.shutdown_reason is None:
            return None
        return SHUTDOWN_REASONS.get(self.shutdown_reason, str(self.shutdown_reason))

    # ---------------------------------------------------------------- vCPUs (VCPUOP_initialise, up, down)
    def initialise_vcpu(self, vcpu_id: int, registers: CpuState, *, event_callback: int, failsafe_callback: int,
                        traps: list, gs_base_user: int, kernel_stack: tuple[int, int]) -> None:
        """VCPUOP_initialise: the vCPU's first registers and PV state (hypercalls.py checked the context)."""
        context = self.vcpus[vcpu_id]
        context.registers = registers
        context.event_callback, context.failsafe_callback = event_callback, failsafe_callback
        for entry in traps:
            context.traps.set(entry)
        context.gs_base_user, context.kernel_stack = gs_base_user, kernel_stack
        context.initialised = True

    def vcpu_up(self, vcpu_id: int) -> None:
        """VCPUOP_up of an initialised vCPU: it may run, with Xen's 100 Hz tick from now on."""
        context = self.vcpus[vcpu_id]
        if context.up:
            return
        context.up = True
        context.blocked = False
        self._preempted = True
        self.time.set_periodic(DEFAULT_TIMER_PERIOD_NS, vcpu_id)
        self._change_runstate(context, abi.RUNSTATE_runnable)

    def vcpu_down(self, vcpu_id: int) -> None:
        """VCPUOP_down: the vCPU stops running (at once when it is the caller); the last one going down
        shuts the domain down (poweroff), as Xen's common_vcpu_op does."""
        if not any(context.up for context in self.vcpus if context.id != vcpu_id):
            self.shutdown(abi.SHUTDOWN_poweroff)
            return
        context = self.vcpus[vcpu_id]
        if not context.up:
            return
        context.up = False
        context.poll = None
        self.time.set_poll_timeout(None, vcpu_id)
        self.time.set_periodic(None, vcpu_id)
        self._preempted = True
        self._change_runstate(context, abi.RUNSTATE_offline)

    # ---------------------------------------------------------------- the schedule (xen/smp.py)
    def run(self, until_icount: int) -> Exit:
        """Run the domain's vCPUs in their fixed order until the instruction count reaches `until_icount`
        or a vCPU exits (`VCpu.run`'s contract; `ran` says which vCPU). A quantum that ends on the way
        switches vCPUs there, before anything else happens at that count, whoever called."""
        vcpu = self.vcpu
        while True:
            self._switch_if_due()
            self.ran = self.current
            end = until_icount if self.quantum_end is None else min(until_icount, self.quantum_end)
            exit = vcpu.run(end)
            if exit.reason in (ExitReason.LIMIT, ExitReason.WATCHPOINT) and self.quantum_end is not None \
                    and vcpu.icount >= self.quantum_end:
                self._switch_if_due()
                if exit.reason == ExitReason.LIMIT and vcpu.icount < until_icount:
                    continue
            return exit

    def step(self) -> Exit:
        """Execute exactly one instruction of the vCPU whose turn it is (`VCpu.step`'s contract)."""
        self._switch_if_due()
        self.ran = self.current
        exit = self.vcpu.step()
        if exit.reason in (ExitReason.LIMIT, ExitReason.WATCHPOINT):
            self._switch_if_due()
        return exit

    def _switch_if_due(self) -> None:
        if self._reschedule():
            self._deliver()

    def _reschedule(self) -> bool:
        """At a scheduling point: when the quantum is over (its end reached, or a preemption), give the
        engine to the next runnable vCPU in the fixed order. True when the vCPU changed."""
        if not self.alive:
            return False
        due = self._preempted or not self.vcpus[self.current].runnable or \
            (self.quantum_end is not None and self.vcpu.icount >= self.quantum_end)
        if not due:
            return False
        self._preempted = False
        chosen = next_vcpu(self.vcpus, self.current)
        if chosen is None:                       # every vCPU is blocked or down: the domain is blocked
            self.quantum_end = None
            return False
        switched = chosen != self.current
        if switched:
            self._switch_to(chosen)
        self.quantum_end = self.vcpu.icount + self.quantum if others_runnable(self.vcpus, self.current) else None
        return switched

    def _switch_to(self, vcpu_id: int) -> None:
        """The context switch: registers on and off the engine, the per-vCPU views, the runstates."""
        outgoing, incoming = self.vcpus[self.current], self.vcpus[vcpu_id]
        outgoing.registers = self.vcpu.switch_registers(incoming.registers)
        incoming.registers = None
        self.current = self.events.current = self.time.current = vcpu_id
        self.switches += 1
        if self.switch_observer is not None:
            self.switch_observer(self.vcpu.icount, vcpu_id)
        if outgoing.runnable:
            self._change_runstate(outgoing, abi.RUNSTATE_runnable)
        self._change_runstate(incoming, abi.RUNSTATE_running)

    def _deliver(self) -> None:
        """Deliver the current vCPU's pending, unmasked upcall (on every return to it)."""
        try:
            deliver_if_pending(self.vcpu, self.events, self.event_callback)
        except GuestFault as fault:
            self.crash(str(fault))

    # ---------------------------------------------------------------- a vCPU's registers (debuggers)
    def vcpu_registers(self, vcpu_id: int) -> CpuState:
        """All registers of one vCPU, whether on the engine or waiting."""
        context = self.vcpus[vcpu_id]
        return self.vcpu.save_cpu() if context.registers is None else context.registers

    # ---------------------------------------------------------------- events
    def notify_guest(self, port: int) -> None:
        """Raise an event on `port` towards the guest (from a backend, a timer or another vCPU): the
        vCPU it notifies gets the upcall; every vCPU polling it wakes (evtchn_check_pollers)."""
        target = self.events.notify_vcpu(port)
        newly_pending = not self.events.is_pending(port)
        raised_upcall = self.events.set_pending(port)
        for context in self.vcpus:
            if context.poll is not None and (raised_upcall and context.id == target or
                                             newly_pending and context.poll.port in (None, port)):
                self._end_poll(context)

    def tell_remote(self, change: str, port: int, remote_dom: int, remote_port: int) -> None:
        """An event-channel action of ours that another domain must learn (offer, withdraw, bound,
        closed, notify), handed to the host; nothing happens here."""
        if self.interdomain_out is not None:
            self.interdomain_out(change, port, remote_dom, remote_port)

    def remote_event(self, change: InterdomainChange) -> None:
        """Another domain's action on a channel with us (a funnel input): the port table changes, or
        for a notification the port is raised as Xen's evtchn_send raises the remote end."""
        self.events.apply_remote_change(change.change, change.port, change.remote_dom, change.remote_port)
        if change.change == "notify":
            self.notify_guest(change.port)

    def raise_virq(self, virq: int, vcpu_id: int = 0) -> None:
        port = self.events.port_for_virq(virq, vcpu_id)
        if port is not None:
            self.notify_guest(port)

    def guest_notified(self, port: int) -> None:
        """EVTCHNOP_send from the guest: an IPI port is raised towards its vCPU; the backend behind
        a device port is serviced, synchronously."""
        binding = self.events.binding(port)
        if binding is not None and binding.kind == "ipi":
            self.notify_guest(port)
        elif binding is not None and binding.kind == "backend" and binding.target == "console":
            output = self.console.drain_output()
            if output:
                self.console_output(output)
        elif binding is not None and binding.kind == "backend" and binding.target == "xenstore" \
                and self.xenstore is not None:
            if self.store_ring.serve(self.xenstore):
                self.notify_guest(self.store_port)
        elif binding is not None and binding.kind == "interdomain" and self.dom0_backend_port(port):
            self.keyboard.notified()

    def dom0_backend_port(self, port: int) -> bool:
        """Whether `port` is connected to a dom0 backend running in this process (the PV keyboard's):
        the guest's sends go to it directly, not to another domain through the host."""
        return self.keyboard is not None and self.keyboard.owns_port(port)

    def expire_timers(self) -> None:
        """Fire timers due at the current guest time (a guest armed one in the past, or time moved)."""
        now = self.time.now()
        for vcpu_id in self.time.expire(now):
            self.raise_virq(abi.VIRQ_TIMER, vcpu_id)
        for vcpu_id in self.time.expire_poll(now):
            self._end_poll(self.vcpus[vcpu_id])

    def return_to_guest(self) -> None:
        """Wake blocked vCPUs with a pending upcall, let the schedule switch if the quantum is over, and
        deliver the current vCPU's upcall if unmasked, as Xen does on every return to the guest."""
        if not self.alive:
            return
        for context in self.vcpus:      # a poller wakes in _end_poll
            if context.blocked and context.up and context.poll is None and self.events.upcall_pending(context.id):
                self._wake(context)
        self._reschedule()
        if self.vcpus[self.current].runnable:
            self._deliver()

    def guest_exception(self, exit: Exit) -> None:
        """A guest fault: bounce it to the handler the guest registered for its vector, as Xen does;
        without one (or for a fault no x86 exception describes) the domain crashes with the report."""
        if exit.vector == VECTOR_GENERAL_PROTECTION:
            move = self.vcpu.control_move_at_pc()
            if move is not None and privop.emulate(self, move):
                self.vcpu.retire_emulated(move.length)
                self.return_to_guest()
                return
        entry = self.traps.handler(exit.vector) if exit.vector is not None else None
        if entry is None:
            detail = exit.detail
            if exit.vector is not None:
                detail += f" ({describe(exit.vector)}, no handler in the trap table)"
            self.crash(detail, exit.address)
            return
        if exit.length:
            self.vcpu.retire_emulated(exit.length)     # `int n` is a trap: the handler returns past it
        try:
            bounce_exception(self.vcpu, self.events, entry, exit.error_code,
                             exit.address if exit.vector == VECTOR_PAGE_FAULT else None)
        except GuestFault as fault:
            self.crash(str(fault))
            return
        self.return_to_guest()

    # ---------------------------------------------------------------- exits
    def handle_exit(self, exit: Exit) -> None:
        """React to a vCPU exit that is the guest's business: hypercalls, hlt, faults."""
        if exit.reason == ExitReason.HYPERCALL:
            vcpu = self.vcpu
            number = vcpu.reg("rax")
            arguments = tuple(vcpu.reg(name) for name in ("rdi", "rsi", "rdx", "r10", "r8"))
            try:
                result = hypercalls.dispatch(self, number, arguments)
            except GuestFault as fault:
                self.crash(str(fault))
                return
            except AliasError as error:             # a mapping the engine cannot realise: refuse loudly
                self.crash(str(error))
                return
            if self.alive:
                vcpu.set_reg("rax", result & (2**64 - 1))
                self.return_to_guest()
        elif exit.reason == ExitReason.IDLE:
            self.block()
            self._switch_if_due()
        elif exit.reason == ExitReason.FAULT:
            self.guest_exception(exit)
        else:
            raise ValueError(f"{exit.reason} is not a guest exit")
