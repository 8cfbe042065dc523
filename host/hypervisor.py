"""The long-running host (`xenrr up`): physical-CPU workers, the domain table and the control socket.

Owns the domains' placement and the control protocol. The hypervisor process starts one worker
process per pCPU (host/pcpu.py), each pinned to a host core, and listens on a Unix socket for
JSON-lines requests (host/control.py). A pinned replay reserves a core (host/pinning.py): the
workers (every thread and process of theirs) and the host itself move off it for as long as the
replay's connection stays open. It places a new domain on the least loaded pCPU its hard affinity
(`cpus=`) allows and forwards each request to the worker that runs the domain. `xenrr console`
turns a connection into a byte stream: the domain's console output (what it wrote lately first),
and keys typed go to the guest.

The host's one xenstore: each domain's worker holds that domain's replica; the hypervisor holds dom0's
and routes every change a domain commits ("xenstore" messages) to the others (host/sharedstore.py), and
gives a new domain the store as it is (docs/architecture.md says what order the replicas agree on).

`vcpu-pin` to pCPUs without the domain's current one moves it to another worker (its whole state
handed over between two quanta). Invariant: a domain's name is unique, and it exists on exactly one
worker (outside a move, which no other request interleaves with); when the host stops
(`xenrr down`, SIGTERM, Ctrl-C in the foreground) every domain is destroyed, every worker has
exited and the socket is removed.
"""
from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import queue
import selectors
import signal
import socket
import threading
import uuid
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from host.control import CONSOLE_HISTORY_BYTES, ControlError, decode_config
from host.pcpu import pcpu_main
from host.sharedstore import SharedXenstore
from host.xlcfg import MAX_WEIGHT, DomainConfig, cap_limit, cap_range_error

WORKER_START_SECONDS = 120


class HostError(Exception):
    """The host cannot start (a host already runs at that socket, no such CPU...): one line."""


@dataclass
class Worker:
    """A pCPU worker as the hypervisor sees it. What is sent to it goes through its outbox and a sender
    thread, so the hypervisor never blocks on a full pipe: a worker mid-quantum may itself be blocked
    sending its console output or xenstore changes up, which only the hypervisor's reading frees."""
    index: int
    core: int
    process: multiprocessing.Process
    connection: object
    domains: set[str] = field(default_factory=set)
    outbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._send_in_order, name=f"xenrr-pcpu{self.index}-sender", daemon=True).start()

    def send(self, message: dict) -> None:
        """Queue `message` for the worker (sent in the order queued); never blocks."""
        self.outbox.put(message)

    def close_outbox(self) -> None:
        """Send what is queued, then end the sender thread."""
        self.outbox.put(None)

    def _send_in_order(self) -> None:
        while (message := self.outbox.get()) is not None:
            try:
                self.connection.send(message)
            except OSError:
                return                  # the worker died: reading its pipe says so (EOFError) to the serve loop


@dataclass
class DomainEntry:
    name: str
    domid: int
    pcpu: int
    config: DomainConfig
    moving: list | None = None                  # inter-domain actions and xenstore changes held while it changes pCPU
    history: deque = field(default_factory=lambda: deque())
    history_bytes: int = 0
    consoles: list = field(default_factory=list)        # attached client sockets
    gone: str | None = None
    recorder: socket.socket | None = None               # the `xenrr record NAME` waiting for its recording to end


class Hypervisor:
    """The host: workers, domains, and the control socket's request handlers."""

    def __init__(self, socket_path: Path, pcpus: int):
        cores = sorted(os.sched_getaffinity(0))
        self.cores = cores
        self.reserved: dict[socket.socket, int] = {}      # cores kept for pinned replays, by their connection
        if pcpus < 1:
            raise HostError(f"--pcpus must be at least 1, not {pcpus}")
        self.socket_path = socket_path
        self.listener = _listen(socket_path)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, ("listen", None))
        context = multiprocessing.get_context("spawn")
        self.workers: list[Worker] = []
        for index in range(pcpus):
            parent, child = context.Pipe()
            core = cores[index % len(cores)]
            process = context.Process(target=pcpu_main, args=(index, core, child), name=f"xenrr-pcpu{index}",
                                      daemon=True)
            process.start()
            child.close()
            self.workers.append(Worker(index, core, process, parent))
            self.selector.register(parent, selectors.EVENT_READ, ("worker", index))
        self.domains: dict[str, DomainEntry] = {}
        self.offers: dict[int, set[tuple[int, int]]] = {}    # domid -> (domid, port) unbound ports offered to it
        self.xenstore = SharedXenstore(self._send_xenstore)
        self._domids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self.running = True

    # ---------------------------------------------------------------- workers
    def _call(self, worker: Worker, request: dict) -> dict:
        """Send a request to a worker and wait for its reply (console output meanwhile is passed on)."""
        request_id = next(self._request_ids)
        try:
            worker.send({**request, "id": request_id})
            while True:
                message = worker.connection.recv()
                if message[0] == "reply" and message[1] == request_id:
                    return message[2]
                self._worker_message(message)
        except (EOFError, OSError):
            raise HostError(f"pCPU {worker.index} worker died (exit status {worker.process.exitcode}); "
                            "the host stops") from None

    def _worker_message(self, message: tuple) -> None:
        if message[0] == "console":
            entry = self.domains.get(message[1])
            if entry is not None:
                self._console_output(entry, message[2])
        elif message[0] == "interdomain":
            self._interdomain(*message[1:])
        elif message[0] == "xenstore":
            self.xenstore.committed(message[1], message[2], [entry.domid for entry in self.domains.values()])
        elif message[0] == "reply":                  # of a request we did not wait for
            self.xenstore.applied(message[1])
        elif message[0] == "recorded":
            entry = self.domains.get(message[1])
            if entry is not None and entry.recorder is not None:
                client, entry.recorder = entry.recorder, None
                try:
                    client.sendall(json.dumps({"recorded": message[2]}).encode() + b"\n")
                except OSError:
                    pass
                self._drop(client)
        elif message[0] == "gone":
            entry = self.domains.pop(message[1], None)
            if entry is not None:
                self.offers.pop(entry.domid, None)
                self.xenstore.gone(entry.domid)
                self.workers[entry.pcpu].domains.discard(entry.name)
                for client in entry.consoles:
                    self._drop(client)

    def _interdomain(self, change: str, domid: int, port: int, remote_dom: int, remote_port: int) -> None:
        """Route a domain's event-channel action to the domain it concerns; offers to a domain not
        created yet wait for it (domids are never reused)."""
        if change == "offer":
            self.offers.setdefault(remote_dom, set()).add((domid, port))
        elif change == "withdraw":
            self.offers.get(remote_dom, set()).discard((domid, port))
        elif change == "bound":
            self.offers.get(domid, set()).discard((remote_dom, remote_port))
        entry = self._domain_of(remote_dom)
        if entry is not None:
            self._tell(entry, {"op": "interdomain", "change": change, "port": remote_port, "remote_dom": domid,
                               "remote_port": port})

    def _send_xenstore(self, domid: int, payloads: list[bytes]) -> int:
        """A xenstore change for domain `domid` (which exists); the request's id."""
        return self._tell(self._domain_of(domid), {"op": "xenstore", "payloads": payloads})

    def _domain_of(self, domid: int) -> DomainEntry | None:
        return next((entry for entry in self.domains.values() if entry.domid == domid), None)

    def _tell(self, entry: DomainEntry, fields: dict) -> int:
        """An inter-domain action or xenstore change (`fields`, with its "op") for `entry`'s worker; its
        reply is not waited for. While the domain changes pCPU it is held, and told to the new worker
        once the domain is there. The request's id."""
        fields = {"id": next(self._request_ids), **fields} if "id" not in fields else fields
        if entry.moving is not None:
            entry.moving.append(fields)
            return fields["id"]
        self.workers[entry.pcpu].send({"name": entry.name, **fields})
        return fields["id"]

    def _console_output(self, entry: DomainEntry, data: bytes) -> None:
        entry.history.append(data)
        entry.history_bytes += len(data)
        while entry.history_bytes > CONSOLE_HISTORY_BYTES and len(entry.history) > 1:
            entry.history_bytes -= len(entry.history.popleft())
        for client in list(entry.consoles):
            try:
                client.sendall(data)
            except OSError:
                self._drop(client)

    # ---------------------------------------------------------------- requests
    def request(self, request: dict, client: socket.socket) -> dict:
        command = request.get("cmd")
        handler = getattr(self, "cmd_" + str(command).replace("-", "_"), None)
        if handler is None:
            raise ControlError(f"unknown command {command!r}")
        return handler(request, client)

    def _entry(self, request: dict) -> DomainEntry:
        name = request.get("name")
        if name not in self.domains:
            raise ControlError(f"no domain named {name!r} (see `xenrr list`)")
        return self.domains[name]

    def _forward(self, request: dict, op: str, **fields) -> dict:
        entry = self._entry(request)
        result = self._call(self.workers[entry.pcpu], {"op": op, "name": entry.name, **fields})
        if "error" in result:
            raise ControlError(result["error"])
        return result

    def _allowed(self, cpus: frozenset[int] | None) -> list[int]:
        return [w.index for w in self.workers] if cpus is None else sorted(c for c in cpus if c < len(self.workers))

    def _least_loaded(self, allowed: list[int]) -> Worker:
        """Of the pCPUs `allowed`, the worker with the fewest domains (the lowest index among equals)."""
        return min((self.workers[index] for index in allowed), key=lambda w: (len(w.domains), w.index))

    def cmd_create(self, request: dict, client) -> dict:
        config = decode_config(request.get("config"))
        if config.name in self.domains:
            raise ControlError(f"a domain named {config.name!r} already exists")
        allowed = self._allowed(config.cpus[0])
        if not allowed:
            raise ControlError(f"{config.source}: cpus names no pCPU of this host (it has pCPUs 0-{len(self.workers) - 1})")
        worker = self._least_loaded(allowed)
        domid = next(self._domids)
        entry = DomainEntry(config.name, domid, worker.index, config)
        self.domains[config.name] = entry
        record = request.get("record")
        if record is not None and not isinstance(record, str):
            raise ControlError("record wants the path of the log to write")
        result = self._call(worker, {"op": "create", "config": config, "domid": domid, "record": record,
                                     "uuid": str(uuid.uuid4()),      # /vm/<uuid>: each domain its own, as libxl
                                     "xenstore": self.xenstore.snapshot()})
        if "error" in result:
            del self.domains[config.name]
            raise ControlError(result["error"])
        worker.domains.add(config.name)
        for offerer, port in sorted(self.offers.get(domid, ())):
            self._tell(entry, {"op": "interdomain", "change": "offer", "port": 0, "remote_dom": offerer,
                               "remote_port": port})
        return {"name": config.name, "domid": domid, "pcpu": worker.index}

    def cmd_list(self, request: dict, client) -> dict:
        domains = []
        for worker in self.workers:
            if worker.domains:
                domains += self._call(worker, {"op": "list"})["domains"]
        return {"domains": sorted(domains, key=lambda d: d["domid"]), "pcpus": len(self.workers)}

    def cmd_destroy(self, request: dict, client) -> dict:
        self._forward(request, "destroy")
        return {}

    def cmd_shutdown(self, request: dict, client) -> dict:
        self._forward(request, "shutdown")
        return {}

    def cmd_record(self, request: dict, client) -> dict:
        """`xenrr record NAME -o LOG`: record a running domain from now on. The connection stays open:
        when the recording ends (the domain shut down or was destroyed, the host went down) it gets one
        more line, {"recorded": summary}; when the client closes its side first (Ctrl-C), the recording
        stops and the domain runs on."""
        entry = self._entry(request)
        log = request.get("log")
        if not isinstance(log, str) or not os.path.isabs(log):
            raise ControlError("record wants the absolute path of the log to write")
        started = self._forward(request, "record", log=log)
        entry.recorder = client
        return {"icount": started["icount"], "pcpu": entry.pcpu}

    def cmd_pause(self, request: dict, client) -> dict:
        self._forward(request, "pause")
        return {}

    def cmd_unpause(self, request: dict, client) -> dict:
        self._forward(request, "unpause")
        return {}

    def cmd_sched_credit(self, request: dict, client) -> dict:
        weight, cap = request.get("weight"), request.get("cap")
        vcpus = self._entry(request).config.vcpus
        if weight is not None and not (isinstance(weight, int) and 1 <= weight <= MAX_WEIGHT):
            raise ControlError(f"weight must be between 1 and {MAX_WEIGHT}, not {weight!r}")
        if cap is not None and not (isinstance(cap, int) and 0 <= cap <= cap_limit(vcpus)):
            raise ControlError(cap_range_error(cap, vcpus))
        self._forward(request, "sched-credit", weight=weight, cap=cap)
        return {}

    def cmd_vcpu_pin(self, request: dict, client) -> dict:
        entry = self._entry(request)
        if request.get("vcpu") not in (0, "all"):
            raise ControlError(f"{entry.name} has vCPU 0 only, not {request.get('vcpu')!r}")
        cpus = None if request.get("cpus") is None else frozenset(request["cpus"])
        allowed = self._allowed(cpus)
        if not allowed:
            raise ControlError(f"that names no pCPU of this host (it has pCPUs 0-{len(self.workers) - 1})")
        if entry.pcpu not in allowed:
            self._move(entry, self._least_loaded(allowed), cpus)
        else:
            self._forward(request, "pin", cpus=cpus)
        return {"pcpu": entry.pcpu}

    def _move(self, entry: DomainEntry, worker: Worker, cpus: frozenset[int] | None) -> None:
        """Move a running domain to another pCPU worker between two of its quanta: the old worker hands
        over its whole state (and forgets it), the new one rebuilds it and goes on. Inter-domain actions
        for it meanwhile wait and follow it."""
        source = self.workers[entry.pcpu]
        entry.moving = []
        try:
            left = self._call(source, {"op": "leave", "name": entry.name})
            if "error" in left:
                raise ControlError(left["error"])
            source.domains.discard(entry.name)
            moved = {**left["moved"], "affinity": cpus}
            arrived = self._call(worker, {"op": "arrive", "config": entry.config, "domid": entry.domid, "moved": moved})
            if "error" in arrived:         # it cannot run there: back where it was
                self._call(source, {"op": "arrive", "config": entry.config, "domid": entry.domid,
                                    "moved": left["moved"]})
                source.domains.add(entry.name)
                raise ControlError(f"{entry.name} could not move to pCPU {worker.index}: {arrived['error']}")
            worker.domains.add(entry.name)
            entry.pcpu = worker.index
        finally:
            held, entry.moving = entry.moving, None
            for fields in held:
                self._tell(entry, fields)

    def cmd_console(self, request: dict, client) -> dict:
        entry = self._entry(request)
        return {"attach": entry}

    def cmd_console_in(self, entry: DomainEntry, data: bytes) -> None:
        self._call(self.workers[entry.pcpu], {"op": "console-in", "name": entry.name, "data": data})

    def cmd_reserve_core(self, request: dict, client) -> dict:
        """A pinned replay: one core for the asking process alone, every pCPU worker moved off it, until
        the connection closes."""
        if client in self.reserved:
            raise ControlError(f"this connection already holds core {self.reserved[client]}")
        free = [core for core in self.cores if core not in self.reserved.values()]
        if len(free) < 2:
            raise ControlError(f"the host has no core to spare (cores {self.cores}, "
                               f"{len(self.reserved)} reserved for replays; the domains keep one)")
        self.reserved[client] = free[-1]
        self._pin_workers()
        return {"core": free[-1]}

    def _pin_workers(self) -> None:
        """Each worker on its own core, or on the unreserved cores when its core is reserved; this process
        and its other helpers (multiprocessing's resource tracker) on the unreserved cores. A worker
        counts with every thread and process of its own (a recorded domain's snapshot writer thread and
        log daemon process): sched_setaffinity moves one thread, and what is created later inherits
        its creator's cores."""
        unreserved = {core for core in self.cores if core not in self.reserved.values()}
        placed: set[int] = set()
        for worker in self.workers:
            if worker.process.is_alive():
                cores = unreserved if worker.core not in unreserved else {worker.core}
                placed |= _set_tree_affinity(psutil.Process(worker.process.pid), cores)
        host = psutil.Process()
        _set_tree_affinity(host, unreserved, skip=placed)

    def cmd_down(self, request: dict, client) -> dict:
        self.running = False
        return {}

    # ---------------------------------------------------------------- the socket
    def serve(self) -> None:
        """Answer requests until `down` (or a signal: SIGTERM and SIGINT end the loop cleanly)."""
        def stop(signum, frame):
            self.running = False
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            while self.running:
                for key, _ in self.selector.select(timeout=0.5):
                    kind, data = key.data
                    if kind == "listen":
                        self._accept()
                    elif kind == "worker":
                        worker = self.workers[data]
                        try:
                            while self.running and worker.connection.poll(0):
                                self._worker_message(worker.connection.recv())
                        except (EOFError, OSError):
                            raise HostError(f"pCPU {worker.index} worker died (exit status "
                                            f"{worker.process.join(5) or worker.process.exitcode}); the host stops") from None
                    elif kind == "client":
                        self._client_readable(key.fileobj, data)
                    elif kind == "console":
                        self._console_readable(key.fileobj, data)
                    if not self.running:
                        break
                for worker in self.workers:
                    if not worker.process.is_alive():
                        raise HostError(f"pCPU {worker.index} worker died (exit status {worker.process.exitcode}); "
                                        "the host stops")
        finally:
            self.stop()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        self.selector.register(client, selectors.EVENT_READ, ("client", bytearray()))

    def _client_readable(self, client: socket.socket, buffer: bytearray) -> None:
        try:
            data = client.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._stop_recording_of(client)
            self._drop(client)
            return
        buffer += data
        while b"\n" in buffer and self.running:
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
                reply = self.request(request, client)
            except (ValueError, ControlError) as error:
                reply = {"error": str(error).split("\n")[0]}
            attach = reply.pop("attach", None)
            try:
                client.sendall(json.dumps({"ok": "error" not in reply, **reply}).encode() + b"\n")
            except OSError:
                self._drop(client)
                return
            if attach is not None:
                self._attach(client, attach)
                return

    def _attach(self, client: socket.socket, entry: DomainEntry) -> None:
        """The connection is now the domain's console: recent output first, then as it comes."""
        self.selector.modify(client, selectors.EVENT_READ, ("console", entry))
        entry.consoles.append(client)
        try:
            client.sendall(b"".join(entry.history))
        except OSError:
            self._drop(client)

    def _console_readable(self, client: socket.socket, entry: DomainEntry) -> None:
        try:
            data = client.recv(4096)
        except OSError:
            data = b""
        if not data:
            self._drop(client)
        elif entry.name in self.domains:
            self.cmd_console_in(entry, data)

    def _stop_recording_of(self, client: socket.socket) -> None:
        """A `xenrr record NAME` that hung up (Ctrl-C, or it died): its recording ends, the domain runs
        on; the summary goes back on the half-closed connection when it can still be read."""
        entry = next((entry for entry in self.domains.values() if entry.recorder is client), None)
        if entry is not None:
            self._call(self.workers[entry.pcpu], {"op": "record-stop", "name": entry.name})

    def _drop(self, client: socket.socket) -> None:
        if self.reserved.pop(client, None) is not None:
            self._pin_workers()
        for entry in self.domains.values():
            if client in entry.consoles:
                entry.consoles.remove(client)
        try:
            self.selector.unregister(client)
        except (KeyError, ValueError):
            pass
        client.close()

    def stop(self) -> None:
        """Destroy every domain, stop the workers, remove the socket."""
        for worker in self.workers:
            try:
                if worker.process.is_alive():
                    self._call(worker, {"op": "quit"})
            except HostError:
                pass
        for worker in self.workers:
            worker.close_outbox()
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        for key in list(self.selector.get_map().values()):
            if key.data[0] in ("client", "console"):
                key.fileobj.close()
        self.listener.close()
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass


def _set_tree_affinity(process: psutil.Process, cores: set[int], skip: Collection[int] = ()) -> set[int]:
    """Pin every thread of `process` and of its descendants (but the processes in `skip`) to `cores`;
    the pids of the processes it went through. One that ends meanwhile is passed over."""
    try:
        tree = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    for member in tree:
        if member.pid in skip:
            continue
        try:
            for thread in member.threads():
                os.sched_setaffinity(thread.id, cores)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    return {member.pid for member in tree}


def _listen(path: Path) -> socket.socket:
    """The control socket at `path`; refuses when a host already answers there (a stale one is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            raise HostError(f"a host is already running at {path} (`xenrr down` stops it)")
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
    except OSError as error:
        listener.close()
        raise HostError(f"cannot listen on {path}: {error.strerror}") from None
    os.chmod(path, 0o600)
    listener.listen(16)
    return listener
