"""A physical CPU: a worker process pinned to one host core, running its domains' vCPUs one at a time.

Owns the domains placed on it (each lives entirely in this process: its guest memory, event channels,
console ring and its replica of the host's xenstore), their credit scheduler (host/credit.py) and the
loop that runs them: pick a vCPU, run it for its budget of instructions (xen/sched.py's Scheduler in
quanta, under the real clock), charge it, and between quanta answer the hypervisor's requests on the
control pipe. A blocked domain is not runnable until its next timer or an input for it
(`Outcome("idle", wake_ns=...)`): its wake time waits in a heap and the loop does nothing for it until
then (no per-quantum work scales with the blocked domains), so an idle domain costs only what its own
timers make it run. What a guest writes to its console goes up the pipe as it is written.

A domain moving to another pCPU leaves with its whole state (`leave`: registers, guest memory, the
hypervisor's and the scheduler's state) and arrives in the other worker (`arrive`), rebuilt from its
config and restored.

Requests (dicts with an "op" and an "id") get exactly one reply `("reply", id, result)`, result a dict
with "error" when the request failed; unprompted messages are `("console", name, bytes)` and
`("gone", name, why)` when a domain left (shut down or crashed with on_poweroff/on_crash=destroy,
or destroyed), and `("interdomain", change, domid, port, remote domid, remote port)`: an event-channel
action of one of our domains that another domain must learn (sent after the quantum it happened in;
the hypervisor routes it to the worker of the other domain as an "interdomain" request, which
injects it into that domain's funnel - so it is logged when that domain is recorded), and
`("xenstore", domid, payloads)`: a change one of our domains committed to its replica of the host's
xenstore (xen.xenstore.XenstoreChange record payloads), sent after its quantum in the same order as
its event-channel actions (a frontend's offer of a port arrives before the xenstore write that
names it); the hypervisor sends it to every other domain as a "xenstore" request, injected as a
`xenstore-change` input. A new domain's replica starts from the host's store (the create request's
"xenstore" payloads, injected before its first instruction); what the toolstack wrote for it goes up
to the others, and it is removed again when the domain goes.
Invariant: only this process touches its domains; the hypervisor process sees them
only through this pipe, so no guest state is shared between processes.
"""
from __future__ import annotations

import heapq
import itertools
import os
import signal
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path

from dom0.record import Recording, RecordingFailed, RecordingRefused
from dom0.snapshots import DEFAULT_EVERY_INSTRUCTIONS, Interval
from dom0.toolstack import connect_xenstore, toolstack_paths
from host.credit import CreditScheduler, Entity
from host.xlcfg import DomainConfig
from xen import abi
from xen.builder import BuildError, build_domain
from xen.domain import Domain, RunState
from xen.inject import InterdomainChange, Kind
from xen.logrecord import MAX_PAYLOAD
from xen.sched import Outcome, Scheduler
from xen.xenstore import XenstoreChange

MIB = 1024 * 1024
SHUTDOWN_REQUEST = b"control/shutdown"      # what `xl shutdown` writes under the domain's home


class HostConsoleInput:
    """Console input a client typed (`xenrr console`), handed over by the hypervisor: the
    xen.sched.ConsoleInput of a hosted domain. Never exhausted, never detached: a hosted domain runs
    until it shuts down or is destroyed, whoever is attached."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self._wakeup_read, self._wakeup_write = os.pipe()
        os.set_blocking(self._wakeup_read, False)
        os.set_blocking(self._wakeup_write, False)

    def feed(self, data: bytes) -> None:
        self._pending += data
        try:
            os.write(self._wakeup_write, b"k")
        except BlockingIOError:             # already readable: keys wait that the guest has not taken
            pass

    def __len__(self) -> int:
        return len(self._pending)

    def take(self, now_ns: int, limit: int) -> bytes:
        data = bytes(self._pending[:limit])
        if data:
            del self._pending[:limit]
            try:
                os.read(self._wakeup_read, 4096)
            except BlockingIOError:
                pass
        return data

    def next_due_ns(self, now_ns: int) -> int | None:
        return now_ns if self._pending else None

    def fileno(self) -> int | None:
        return self._wakeup_read

    @property
    def exhausted(self) -> bool:
        return False

    @property
    def detached(self) -> bool:
        return False

    def close(self) -> None:
        os.close(self._wakeup_read)
        os.close(self._wakeup_write)


class HostedDomain:
    """One domain on this pCPU: its Domain, its live Scheduler run in quanta, its credit entity."""

    def __init__(self, config: DomainConfig, domid: int, send_console, record: Path | None = None,
                 moved: dict | None = None, shared_store: Sequence[bytes] = (), vm_uuid: str | None = None,
                 report_recording=lambda name, summary: None) -> None:
        """`report_recording(name, summary)` is told when a recording of this domain ends."""
        self.config = config
        self.domid = domid
        self._report_recording = report_recording
        self.input = HostConsoleInput()
        try:
            image_bytes = Path(config.kernel).read_bytes()
        except OSError as error:
            raise BuildError(f"cannot read kernel {config.kernel}: {error.strerror}") from None
        image = build_domain(image_bytes, config.memory_mib * MIB, config.cmdline)

        def output(data: bytes) -> None:
            send_console(config.name, data)
        self.domain = Domain(image, vcpus=config.vcpus, console_output=output, hypervisor_console=output)
        self.vm_uuid = moved["uuid"] if moved is not None else vm_uuid
        self.xenstore = {"domid": domid, "name": config.name, **({"uuid": self.vm_uuid} if self.vm_uuid else {})}
        self.store = connect_xenstore(self.domain, self.xenstore)
        # Frames written from here on are those that may differ from the freshly built domain's: what a
        # recording that starts later must carry (`start_recording`).
        self._built_generation = self.domain.vcpu.new_generation()
        # For other domains, in order: event-channel actions (change, port, remote domid, remote port) and
        # ("xenstore", XenstoreChange) changes of the shared store.
        self.outbox: list[tuple] = []
        self.domain.interdomain_out = self._to_other_domain
        self.recording: Recording | None = None
        self.recording_start = 0
        self.scheduler = Scheduler(self.domain, self.input, clock="real", wait_for_host=False)
        if record is not None:
            self._record(record, start_frames=None)
        self.entity = Entity(config.name, weight=config.weight, cap=config.cap)
        self._paused = False
        self._idle = False
        self.wake_ns: int | None = None         # while idle: when its next timer is due (None: none armed)
        self.affinity = config.cpus[0]
        self.recording_failure: str | None = None
        if moved is not None:
            self._arrive(moved)
        else:
            self.outbox.append(("xenstore", self.store.snapshot()))     # what the toolstack wrote for us
            for payload in shared_store:          # the host's store as it is: before our first instruction
                self.domain.funnel.inject(Kind.XENSTORE_CHANGE, payload)
        self.store.changes_out = self._xenstore_out

    def _record(self, path: Path, start_frames: set[int] | None) -> None:
        """Attach a recording (its log daemon, ring and snapshots) to the domain as it is now."""
        try:
            self.recording = Recording(self.domain, Path(self.config.kernel), path, clock="real",
                                       xenstore=self.xenstore, start_frames=start_frames,
                                       snapshot_every=Interval(instructions=DEFAULT_EVERY_INSTRUCTIONS))
        except (RecordingRefused, RecordingFailed) as error:
            raise ValueError(f"cannot record {self.config.name}: {error}") from None
        self.recording_start = self.domain.vcpu.icount
        self.scheduler.snapshots = self.recording.snapshots

    def start_recording(self, path: Path) -> None:
        """`xenrr record NAME -o LOG`: record the running domain from here (between two of its quanta);
        the log begins with the domain's whole state now (registers, hypervisor state, and every frame
        written since it was built)."""
        if self.recording is not None:
            raise ValueError(f"{self.config.name} is already being recorded into {self.recording.path}")
        if not self.domain.alive:
            raise ValueError(f"{self.config.name} has {self.state}: there is nothing left to record")
        self._record(path, start_frames=self.domain.vcpu.pages_written_since(self._built_generation))

    def leave(self) -> dict:
        """Everything this domain is between two quanta - registers, all of guest memory, the
        hypervisor-side state, where its run stands, keys not yet delivered, its scheduling, and its
        recording - for it to go on in another pCPU worker (`HostedDomain(..., moved=...)`). A recording
        is handed over with its log complete up to here (`Recording.hand_off`: this worker's log daemon
        wrote every record and the index footer), so the other worker's daemon continues the same file."""
        recording = None
        if self.recording is not None:
            try:
                recording = {**self.recording.hand_off(), "start": self.recording_start}
            except RecordingFailed as error:           # the log ends here, as far as it goes; the domain moves on
                ended, self.recording = self.recording, None
                self._recording_ended(None, str(error), str(ended.path), ended.sink.records)
        vcpu = self.domain.vcpu
        return {"cpu": vcpu.save_cpu(), "memory": vcpu.memory_image(), "domain": self.domain.save_state(),
                "scheduler": self.scheduler.save_state(), "keys": self.input.take(0, len(self.input)),
                "paused": self.paused, "idle": self.idle, "wake_ns": self.wake_ns, "affinity": self.affinity,
                "weight": self.entity.weight, "cap": self.entity.cap, "uuid": self.vm_uuid, "recording": recording}

    def _arrive(self, moved: dict) -> None:
        """Become the domain another worker's `leave` described (this one is freshly built from the
        same config, so only the frames that differ are written)."""
        vcpu = self.domain.vcpu
        memory = moved["memory"]
        for frame in range(vcpu.frame_count):
            page = memory[frame * abi.PAGE_SIZE:(frame + 1) * abi.PAGE_SIZE]
            if vcpu.read_frame(frame) != page:
                vcpu.write_frame(frame, page)
        vcpu.load_cpu(moved["cpu"])
        self.domain.load_state(moved["domain"])
        self.scheduler.load_state(moved["scheduler"])
        self.paused, self.idle, self.wake_ns = moved["paused"], moved["idle"], moved["wake_ns"]
        if moved["keys"]:
            self.type(moved["keys"])
        self.affinity = moved["affinity"]
        self.entity.weight, self.entity.cap = moved["weight"], moved["cap"]
        handed = moved["recording"]
        if handed is not None:
            self.recording_start = handed["start"]
            try:
                self.recording = Recording.resume(self.domain, handed)
            except RecordingFailed as error:      # the log stays as it was handed over (valid, without END)
                self.recording = None
                self._recording_ended(None, str(error), path=handed["path"], records=handed["sink"]["records"])
                return
            self.scheduler.snapshots = self.recording.snapshots

    def _to_other_domain(self, change: str, port: int, remote_dom: int, remote_port: int) -> None:
        """Kept until the quantum ends; a port notified again before then is one notification (an
        event is one pending bit, however often it is sent), so a flooding guest sends at most one
        per port and quantum."""
        message = (change, port, remote_dom, remote_port)
        if change != "notify" or message not in self.outbox:
            self.outbox.append(message)

    def _xenstore_out(self, change: XenstoreChange) -> None:
        """A change our guest (or dom0, e.g. `xenrr shutdown`) committed, kept until the quantum ends; a
        write of the node the previous change wrote alone replaces it (a guest writing one node in a loop
        sends its last value once per quantum, and the other domains' watches fire once)."""
        last = self.outbox[-1] if self.outbox else None
        if last is not None and last[0] == "xenstore" and len(last[1].ops) == 1 and len(change.ops) == 1 \
                and last[1].domid == change.domid and last[1].ops[0].op == change.ops[0].op == "write" \
                and last[1].ops[0].path == change.ops[0].path:
            self.outbox[-1] = ("xenstore", change)
        else:
            self.outbox.append(("xenstore", change))

    def shared_store(self) -> list[bytes]:
        """The host's store as this replica has it, as record payloads (for this domain built again)."""
        return self.store.snapshot().to_payloads(MAX_PAYLOAD)

    def release_xenstore(self) -> None:
        """The domain goes: the toolstack removes its nodes (its home, /vm, /libxl, its backends), as
        libxl does on destroy - in every replica, through ours."""
        for path in toolstack_paths(self.store, self.domid):
            self.store.remove(path)

    def remote_xenstore(self, payloads: list[bytes]) -> None:
        """Another domain's committed change of the shared store, as an input of this domain (logged
        when it is recorded)."""
        if self.domain.alive:
            for payload in payloads:
                self.domain.funnel.inject(Kind.XENSTORE_CHANGE, payload)
            self.idle = False

    def disconnect(self) -> None:
        """The domain goes: its channels with other domains close and its offers are withdrawn, as
        Xen's domain destruction closes every port (the other ends become unbound)."""
        for port, binding in self.domain.events.ports().items():
            if binding.kind == "interdomain" and binding.target != self.domid:
                self._to_other_domain("closed", port, int(binding.target), binding.remote_port)
            elif binding.kind == "unbound" and binding.target != self.domid:
                self._to_other_domain("withdraw", port, int(binding.target), 0)

    def remote_change(self, change: InterdomainChange) -> str | None:
        """Another domain's action on a channel with us, as an input of this domain (logged when it is
        recorded) if it still fits our ports; when it does not (we closed the port they bound
        meanwhile), what to answer them ("closed"), else None."""
        events = self.domain.events
        if not self.domain.alive or not events.remote_change_applies(change.change, change.port, change.remote_dom,
                                                                     change.remote_port):
            return "closed" if change.change == "bound" else None
        self.domain.funnel.inject(Kind.INTERDOMAIN, change.to_bytes())
        self.idle = False
        if change.change == "closed":          # our end is unbound again, for them to bind (Xen's evtchn_close)
            self._to_other_domain("offer", change.port, change.remote_dom, 0)
        return None

    @property
    def state(self) -> str:
        if self.domain.state == RunState.SHUTDOWN:
            return "shutdown"
        if self.domain.state == RunState.CRASHED:
            return "crashed"
        if self.paused:
            return "paused"
        return "blocked" if self.idle else "running"

    @property
    def idle(self) -> bool:
        """Blocked with nothing due before `wake_ns` (set on an "idle" outcome; cleared by its timer,
        or by an input for it - keys, another domain's action, a toolstack write)."""
        return self._idle

    @idle.setter
    def idle(self, idle: bool) -> None:
        self._idle = idle
        self._update_runnable()

    @property
    def paused(self) -> bool:
        return self._paused

    @paused.setter
    def paused(self, paused: bool) -> None:
        self._paused = paused
        self._update_runnable()

    def _update_runnable(self) -> None:
        """The credit scheduler's view, kept as each of its inputs changes (not polled per quantum)."""
        self.entity.runnable = self.domain.alive and not self._paused and not self._idle

    def type(self, keys: bytes) -> None:
        """Console input for the guest (`xenrr console`): a blocked domain wakes to take it."""
        self.input.feed(keys)
        self.idle = False

    def run(self, budget: int) -> int:
        """Run up to `budget` instructions; the number run."""
        vcpu = self.domain.vcpu
        before = vcpu.icount
        self.scheduler.max_instructions = before + budget
        try:
            outcome = self.scheduler.run()
        except RecordingFailed as error:
            self.stop_recording(None, str(error))
            self.domain.crash(f"recording stopped: {self.recording_failure}")
            return vcpu.icount - before
        if outcome.reason == "idle":
            self.wake_ns = outcome.wake_ns
            self.idle = True
        else:
            self._update_runnable()           # it may have shut down or crashed
        return vcpu.icount - before

    def outcome(self) -> Outcome:
        """How the domain ended (or "destroyed", while it still runs), as a recording's END says it."""
        domain = self.domain
        if domain.alive:
            return Outcome("destroyed", domain.vcpu.icount)
        if domain.state == RunState.CRASHED:
            return Outcome("crashed", domain.vcpu.icount, str(domain.crash_report))
        return Outcome("shutdown", domain.vcpu.icount, domain.shutdown_name or "")

    def stop_recording(self, outcome: Outcome | None, failure: str | None = None) -> None:
        """End this domain's log (if it is recorded): its END record says how the domain ended (or that
        the recording was stopped while it runs on). Whoever waits for the recording is told."""
        recording = self.recording
        if recording is None:
            return
        self.recording = None
        failure = recording.finish(outcome, failure)
        self._recording_ended(outcome, failure, str(recording.path), recording.sink.records)

    def _recording_ended(self, outcome: Outcome | None, failure: str | None, path: str, records: int) -> None:
        """Tell whoever waits for the recording how it ended."""
        self.recording_failure = failure
        self.scheduler.snapshots = None
        self._report_recording(self.config.name, {
            "log": path, "records": records, "from_icount": self.recording_start, "to_icount": self.domain.vcpu.icount,
            "outcome": None if outcome is None else f"{outcome.reason}:{outcome.detail}", "failure": failure})

    def info(self, pcpu: int) -> dict:
        return {"name": self.config.name, "domid": self.domid, "state": self.state, "vcpus": self.config.vcpus,
                "pcpu": pcpu, "pinning": _cpu_list(self.affinity), "weight": self.entity.weight,
                "cap": self.entity.cap, "instructions": self.domain.vcpu.icount,
                "memory": self.config.memory_mib,
                "recording": None if self.recording is None else str(self.recording.path)}

    def close(self) -> None:
        self.input.close()


def _cpu_list(cpus: frozenset[int] | None) -> str:
    """A pCPU set as xl prints it ("all", "0-1", "0,2")."""
    if cpus is None:
        return "all"
    parts, numbers = [], sorted(cpus)
    start = previous = numbers[0]
    for number in numbers[1:] + [None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if number is not None:
            start = previous = number
    return ",".join(parts)


class PhysicalCpu:
    """The worker's state and loop."""

    def __init__(self, index: int, connection: Connection):
        self.index = index
        self.connection = connection
        self.credit = CreditScheduler()
        self.domains: dict[str, HostedDomain] = {}
        self.running = True
        self._busy_ns = 0                   # host time spent running guest instructions
        self._busy_instructions = 0
        self._sleepers: list[tuple[int, int, str]] = []     # heap of (wake_ns, tie, name) of idle domains
        self._ties = itertools.count()

    def send_console(self, name: str, data: bytes) -> None:
        self.connection.send(("console", name, bytes(data)))

    def report_recording(self, name: str, summary: dict) -> None:
        self.connection.send(("recorded", name, summary))

    # ---------------------------------------------------------------- requests
    def handle(self, request: dict) -> None:
        try:
            result = getattr(self, "op_" + request["op"].replace("-", "_"))(request)
        except (BuildError, ValueError, KeyError, OSError) as error:
            result = {"error": str(error)}
        except Exception as error:          # a request never takes the pCPU (and its other domains) down
            result = {"error": f"internal error: {error!r}: {traceback.format_exc(limit=2)}"}
        self.connection.send(("reply", request["id"], result))

    def _domain(self, request: dict) -> HostedDomain:
        try:
            return self.domains[request["name"]]
        except KeyError:
            raise ValueError(f"no domain {request['name']!r} on pCPU {self.index}") from None

    def op_create(self, request: dict) -> dict:
        config: DomainConfig = request["config"]
        record = request.get("record")
        hosted = HostedDomain(config, request["domid"], self.send_console, None if record is None else Path(record),
                              shared_store=request.get("xenstore", ()), vm_uuid=request.get("uuid"),
                              report_recording=self.report_recording)
        self.domains[config.name] = hosted
        self.credit.add(hosted.entity)
        self._send_outbox(hosted)
        return {}

    def op_leave(self, request: dict) -> dict:
        """The domain moves to another pCPU: its state for the other worker, and it is gone from here
        (without a "gone": it lives on, channels with other domains included)."""
        hosted = self._domain(request)
        moved = hosted.leave()
        self._take_off(hosted)
        return {"moved": moved}

    def op_arrive(self, request: dict) -> dict:
        config: DomainConfig = request["config"]
        hosted = HostedDomain(config, request["domid"], self.send_console, moved=request["moved"],
                              report_recording=self.report_recording)
        self.domains[config.name] = hosted
        self.credit.add(hosted.entity)
        self._sleep(hosted)
        return {}

    def op_destroy(self, request: dict) -> dict:
        self._remove(self._domain(request), "destroyed")
        return {}

    def op_shutdown(self, request: dict) -> dict:
        """As `xl shutdown`: ask the guest to power off through xenstore (control/shutdown = poweroff);
        a guest that does not watch it goes on running (use destroy)."""
        hosted = self._domain(request)
        home = f"/local/domain/{hosted.domid}/".encode()
        hosted.domain.funnel.inject(Kind.XENSTORE_WRITE, home + SHUTDOWN_REQUEST + b"\0poweroff")
        hosted.idle = False
        return {}

    def op_record(self, request: dict) -> dict:
        """`xenrr record NAME -o LOG`: the domain is recorded from its current instruction count on."""
        hosted = self._domain(request)
        hosted.start_recording(Path(request["log"]))
        return {"icount": hosted.recording_start}

    def op_record_stop(self, request: dict) -> dict:
        """The recording ends (its END record says so) and the domain runs on, no longer recorded."""
        hosted = self._domain(request)
        hosted.stop_recording(Outcome("recording-stopped", hosted.domain.vcpu.icount, "the domain ran on"))
        return {}

    def op_pause(self, request: dict) -> dict:
        self._domain(request).paused = True
        return {}

    def op_unpause(self, request: dict) -> dict:
        self._domain(request).paused = False
        return {}

    def op_sched_credit(self, request: dict) -> dict:
        hosted = self._domain(request)
        if request.get("weight") is not None:
            hosted.entity.weight = request["weight"]
        if request.get("cap") is not None:
            hosted.entity.cap = request["cap"]
        return {}

    def op_pin(self, request: dict) -> dict:
        self._domain(request).affinity = request["cpus"]
        return {}

    def op_interdomain(self, request: dict) -> dict:
        """Another domain's event-channel action towards one of ours (the hypervisor routes them)."""
        hosted = self._domain(request)
        change = InterdomainChange(request["change"], request["port"], request["remote_dom"], request["remote_port"])
        answer = hosted.remote_change(change)
        if answer is not None:
            hosted.outbox.append((answer, change.port, change.remote_dom, change.remote_port))
        self._send_outbox(hosted)
        return {}

    def op_xenstore(self, request: dict) -> dict:
        """Another domain's change of the shared xenstore, for one of ours (the hypervisor routes them)."""
        hosted = self._domain(request)
        hosted.remote_xenstore(request["payloads"])
        self._send_outbox(hosted)
        return {}

    def _send_outbox(self, hosted: HostedDomain) -> None:
        for message in hosted.outbox:
            if message[0] == "xenstore":
                self.connection.send(("xenstore", hosted.domid, message[1].to_payloads(MAX_PAYLOAD)))
            else:
                change, port, remote_dom, remote_port = message
                self.connection.send(("interdomain", change, hosted.domid, port, remote_dom, remote_port))
        hosted.outbox.clear()

    def op_console_in(self, request: dict) -> dict:
        self._domain(request).type(request["data"])
        return {}

    def op_list(self, request: dict) -> dict:
        return {"domains": [hosted.info(self.index) for hosted in self.domains.values()]}

    def op_quit(self, request: dict) -> dict:
        for hosted in list(self.domains.values()):
            self._remove(hosted, "destroyed")
        self.running = False
        return {}

    def _remove(self, hosted: HostedDomain, why: str, tell: bool = True) -> None:
        """Take a domain off this pCPU (its log ended); `tell` the hypervisor it is gone."""
        hosted.stop_recording(hosted.outcome())
        if hosted.recording_failure is not None:
            why += f"; its log is incomplete: {hosted.recording_failure}"
        hosted.release_xenstore()
        hosted.disconnect()
        self._take_off(hosted)
        if tell:
            self.connection.send(("gone", hosted.config.name, why))

    def _take_off(self, hosted: HostedDomain) -> None:
        """Its last event-channel actions sent, the domain is no longer on this pCPU (nor its scheduler)."""
        self._send_outbox(hosted)
        del self.domains[hosted.config.name]
        self.credit.remove(hosted.entity)
        hosted.close()

    # ---------------------------------------------------------------- the loop
    def _ended(self, hosted: HostedDomain) -> None:
        """The guest shut down or crashed: on_poweroff / on_crash (destroy, preserve or restart)."""
        crashed = hosted.domain.state == RunState.CRASHED or hosted.domain.shutdown_name == "crash"
        action = hosted.config.on_crash if crashed else hosted.config.on_poweroff
        why = str(hosted.domain.crash_report) if hosted.domain.crash_report else \
            f"shut down ({hosted.domain.shutdown_name})"
        if action == "preserve":
            hosted.stop_recording(hosted.outcome())
            return
        self._remove(hosted, why, tell=action == "destroy")
        if action == "restart":           # the same name and domid, built again (not recorded again)
            self.op_create({"config": hosted.config, "domid": hosted.domid, "xenstore": hosted.shared_store(),
                            "uuid": hosted.vm_uuid})

    def _wait(self, timeout: float | None) -> None:
        """Nothing to run: wait for a request (console input comes as one) or `timeout` seconds."""
        self.connection.poll(timeout)

    def _sleep(self, hosted: HostedDomain) -> None:
        """An idle domain with a timer armed waits in the heap until it is due."""
        if hosted.idle and hosted.wake_ns is not None:
            heapq.heappush(self._sleepers, (hosted.wake_ns, next(self._ties), hosted.config.name))

    def _next_sleeper(self) -> int | None:
        """When the first idle domain's timer is due (entries of domains gone, or woken and idle again
        with another wake time, are dropped on the way)."""
        while self._sleepers:
            wake_ns, _, name = self._sleepers[0]
            hosted = self.domains.get(name)
            if hosted is not None and hosted.idle and hosted.wake_ns == wake_ns:
                return wake_ns
            heapq.heappop(self._sleepers)
        return None

    def _wake_due(self, now: int) -> None:
        """Idle domains whose timer is due become runnable; nothing is done for the others."""
        while (wake_ns := self._next_sleeper()) is not None and wake_ns <= now:
            _, _, name = heapq.heappop(self._sleepers)
            self.domains[name].idle = False

    def loop(self) -> None:
        while self.running:
            self.step()

    def step(self) -> None:
        """Answer the requests waiting, then run one quantum (or wait, when no vCPU may run)."""
        while self.connection.poll(0):
            self.handle(self.connection.recv())
            if not self.running:
                return
        now = time.monotonic_ns()
        self._wake_due(now)
        entity = self.credit.pick()
        if entity is None:
            self._idle(now)
            return
        hosted = self.domains[entity.name]
        started = time.monotonic_ns()
        ran = hosted.run(self.credit.budget(entity))
        self._sleep(hosted)
        self._send_outbox(hosted)
        self._busy_ns += time.monotonic_ns() - started
        self._busy_instructions += ran
        self.credit.charge(entity, ran)
        if not hosted.domain.alive:
            self._ended(hosted)

    def _idle(self, now: int) -> None:
        """No vCPU may run: all are blocked, paused, or parked at their cap. Wait for the first wake-up;
        a capped vCPU waits out the rest of the accounting period (in host time at this pCPU's speed)."""
        wake_ns = self._next_sleeper()
        timeout = None if wake_ns is None else max(0.0, (wake_ns - now) / 1e9)
        if any(entity.runnable for entity in self.credit.entities):        # parked at a cap
            ns_per_instruction = self._busy_ns / self._busy_instructions if self._busy_instructions else 50.0
            rest = (self.credit.period - self.credit.period_used) * ns_per_instruction / 1e9
            timeout = rest if timeout is None else min(timeout, rest)
        self._wait(timeout)
        self.credit.idle_period()


def pcpu_main(index: int, core: int, connection: Connection) -> None:
    """The worker process: pin to `core`, then run until told to quit (or the hypervisor goes away)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C on `xenrr up` stops the host, which stops us
    os.sched_setaffinity(0, {core})
    cpu = PhysicalCpu(index, connection)
    try:
        cpu.loop()
    except (EOFError, BrokenPipeError, ConnectionResetError, KeyboardInterrupt):
        pass
