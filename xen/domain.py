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
from xen.timekeeping import GuestTime
from xen.traps import VECTOR_GENERAL_PROTECTION, VECTOR_PAGE_FAULT, TrapTable, bounce_exception, describe
from xen.upcall import GuestFault, deliver_if_pending
from xen.vcpu import AliasError, Exit, ExitReason, GuestMemoryError, VCpu
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


@dataclass(frozen=True)
class Poll:
    """A vCPU blocked in SCHEDOP_poll: `port` is the one port polled (Xen's poll_evtchn), None when
    several (or none) were: then any port that becomes pending wakes it, as in Xen."""
    port: int | None


def deep_copy(value: Any) -> Any:
    """A deep copy of checkpointed state (plain data and the state classes): a pickle round trip, several
    times faster than copy.deepcopy on this state, and what a stored snapshot holds is exactly that pickle."""
    return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


@dataclass(frozen=True)
class DomainState:
    """Everything about a domain that is not in its vCPU registers or guest memory (for checkpoints)."""
    fields: dict[str, Any]


_SAVED_FIELDS = ("event_callback", "failsafe_callback", "state", "shutdown_reason", "crash_report", "yielded",
                 "vm_assist", "gs_base_user", "poll", "runstate", "_free_extra_frames", "iopl", "io_bitmap",
                 "pirq_eoi_frame", "pirq_auto_unmask", "pirqs")


class Domain:
    """One guest domain built from a DomainImage, with a single vCPU."""

    def __init__(self, image: DomainImage, *, jit: bool = True,
                 console_output: Callable[[bytes], None] = lambda data: None,
                 hypervisor_console: Callable[[bytes], None] = lambda data: None):
        self.image = image
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
        self.time = GuestTime(self.vcpu, self.events.vcpu_info_address() + abi.VcpuInfo.time.offset)
        self.time.set_periodic(DEFAULT_TIMER_PERIOD_NS)     # Xen starts every PV vCPU with a 100 Hz tick
        self.yielded = False
        self.funnel = Funnel(self)
        self.console_output = console_output
        self.hypervisor_console = hypervisor_console
        self.event_callback = 0
        self.failsafe_callback = 0
        self.traps = TrapTable()
        self.vm_assist = 0                  # enabled VMASST_TYPE_* bits
        self.gs_base_user = 0               # the inactive (guest user mode) GS base, SEGBASE_GS_USER
        self.iopl = 0                       # PHYSDEVOP_set_iopl: kept; port I/O is not emulated
        self.io_bitmap = (0, 0)             # PHYSDEVOP_set_iobitmap: (guest address, nr_ports), kept
        self.pirq_eoi_frame: int | None = None   # PHYSDEVOP_pirq_eoi_gmfn: holds a writable type reference
        self.pirq_auto_unmask = False       # registered with the v1 call
        self.pirqs: tuple[int, ...] = ()    # pirqs handed out by PHYSDEVOP_get_free_pirq
        self.state = RunState.RUNNING
        self.poll: Poll | None = None       # set while blocked in SCHEDOP_poll
        self.runstate = Runstate()
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
        fields["traps"] = self.traps.save_state()
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
        self.traps.load_state(fields.pop("traps"))
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
        """A canonical encoding of the device state outside guest memory (for digests)."""
        return b"gs_base_user:" + self.gs_base_user.to_bytes(8, "little") + \
            b"poll:" + repr(self.poll).encode() + b"runstate:" + self.runstate.state_bytes() + \
            b"vcpu_info:" + repr(self.events.vcpu_info_override).encode() + \
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
    def alive(self) -> bool:
        return self.state in (RunState.RUNNING, RunState.BLOCKED)

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

    def _end_poll(self) -> None:
        self.poll = None
        self.time.set_poll_timeout(None)
        if self.state == RunState.BLOCKED:
            self._set_blocked(False)

    def _set_blocked(self, blocked: bool) -> None:
        """Block or wake the vCPU; its runstate follows, as on Xen's context switch out and in."""
        self.state = RunState.BLOCKED if blocked else RunState.RUNNING
        self.runstate.change(abi.RUNSTATE_blocked if blocked else abi.RUNSTATE_running, self.time.now(),
                             self.copy_runstate)

    def copy_runstate(self, address: int, data: bytes) -> None:
        """Xen's __copy_to_guest of the runstate area: with the guest's permissions, failures ignored."""
        try:
            self.vcpu.write_for_guest(address, data)
        except GuestMemoryError:
            pass

    def move_vcpu_info(self, address: int) -> None:
        """VCPUOP_register_vcpu_info (common/domain.c map_vcpu_info): the vcpu_info is copied to the
        machine address `address` and lives there from now on; every pending selector bit and the
        upcall flag are set ("so nothing gets lost"), and time is published there at once."""
        old = self.events.vcpu_info_address()
        self.vcpu.machine.write(address, self.vcpu.machine.read(old, ctypes.sizeof(abi.VcpuInfo)))
        self.events.vcpu_info_override = address
        self.vcpu.machine.write_u64(address + abi.VcpuInfo.evtchn_pending_sel.offset, 2**64 - 1)
        self.vcpu.machine.write(address + abi.VcpuInfo.evtchn_upcall_pending.offset, b"\1")
        self.time.move(address + abi.VcpuInfo.time.offset)

    def shutdown(self, reason: int) -> None:
        self.state = RunState.SHUTDOWN
        self.shutdown_reason = reason

    def crash(self, reason: str, address: int | None = None) -> None:
        self.state = RunState.CRASHED
        self.crash_report = CrashReport(reason, self.vcpu.pc, self.vcpu.icount, address)

    @property
    def shutdown_name(self) -> str | None:
        if self.shutdown_reason is None:
            return None
        return SHUTDOWN_REASONS.get(self.shutdown_reason, str(self.shutdown_reason))

    # ---------------------------------------------------------------- events
    def notify_guest(self, port: int) -> None:
        """Raise an event on `port` towards the guest (from a backend or a timer)."""
        newly_pending = not self.events.is_pending(port)
        raised_upcall = self.events.set_pending(port)
        if self.poll is not None and (raised_upcall or newly_pending and self.poll.port in (None, port)):
            self._end_poll()

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

    def raise_virq(self, virq: int) -> None:
        port = self.events.port_for_virq(virq)
        if port is not None:
            self.notify_guest(port)

    def guest_notified(self, port: int) -> None:
        """EVTCHNOP_send from the guest: service the backend behind the port, synchronously."""
        binding = self.events.binding(port)
        if binding is not None and binding.kind == "backend" and binding.target == "console":
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
        if self.time.expire(now):
            self.raise_virq(abi.VIRQ_TIMER)
        if self.poll is not None and self.time.expire_poll(now):
            self._end_poll()

    def return_to_guest(self) -> None:
        """Wake on a pending upcall and deliver it if unmasked, as Xen does on every return to the guest."""
        if not self.alive:
            return
        if self.state == RunState.BLOCKED:
            if self.poll is not None or not self.events.upcall_pending():   # a poller wakes in _end_poll
                return
            self._set_blocked(False)
        try:
            deliver_if_pending(self.vcpu, self.events, self.event_callback)
        except GuestFault as fault:
            self.crash(str(fault))

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
        elif exit.reason == ExitReason.FAULT:
            self.guest_exception(exit)
        else:
            raise ValueError(f"{exit.reason} is not a guest exit")
