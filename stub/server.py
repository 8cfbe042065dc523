"""The gdbstub: GDB remote protocol commands served from one replay `Timeline`.

Model: rr's GdbServer. `stub/rsp.py` frames the bytes; this module decides what each packet means:
registers and memory of the replayed domain (read only: a replay cannot be written), break- and
watchpoints, forward and reverse execution, vCPUs as threads (thread id = vCPU number + 1), the
target description, and `monitor` commands (events, goto, goto-icount, when, bookmark, bookmarks,
goto-bookmark, damage, image, set progress, help; bookmarks live as long as the server).
Breakpoint conditions that GDB sends as agent-expression bytecode in Z0/Z1 packets (offered as
`ConditionalBreakpoints`, used with `set breakpoint condition-evaluation target`) are evaluated
here (stub/agentexpr.py) at each hit, forwards and in reverse scans: a false hit costs no stop.

Invariants:
  - Every packet gets exactly the reply the protocol requires (an empty reply for packets it does
    not know, `E..` for ones it cannot carry out); no input from a client can end the server,
    only `k`, `vKill` or `D` end the session.
  - The server listens on the loopback address only. It serves one client at a time: another one is
    told BUSY_LINE (one line) and closed unless the served one leaves within BUSY_GRACE_SECONDS; a client silent for `idle_timeout` seconds (900 by default)
    while a packet is awaited is disconnected, so a forgotten connection cannot block the replay.
  - A breakpoint location stops where any of its conditions holds (GDB's semantics), or always if
    it has none. A condition that cannot be evaluated (unreadable memory, a bad stack, ...) counts
    as true, as in gdbserver: the target stops there and GDB, which evaluates the condition again
    itself, shows the user its own error. The stub's error goes to the console once (`O`).
  - Breakpoints and watchpoints belong to the connection that set them: when a client goes away
    (for any reason) they are removed, and the next client finds the timeline where the last one
    left it, with none of its breakpoints.
  - While the target runs, the client's interrupt (Ctrl-C) and its disconnection are noticed
    between slices of execution (the timeline polls `RspConnection.poll_interrupt`).
  - Console output (`O`) goes out only in reply to `monitor` commands and, while a continue or
    reverse-continue runs, as progress lines (stub/progress.py) to a client that asked for them with
    `monitor set progress on`: a plain GDB session sees none.
"""
from __future__ import annotations

import logging
import select
import socket
import threading
import time
from dataclasses import dataclass, field

from stub.agentexpr import AgentExprError, evaluate, parse_condition
from stub.hypercall_frames import library_list, symbol_file
from stub.progress import progress_line
from stub.rsp import (
    PACKET_SIZE,
    BadArgument,
    ConnectionClosed,
    Interrupt,
    ReceiveTimeout,
    RspConnection,
    hex_decode,
    hex_encode,
    parse_addr_length,
    parse_hex_number,
)
from stub.target_xml import REGISTER_NUMBERS, REGISTERS, TARGET_XML, all_registers, register_bytes
from stub.timeline import Stop, Timeline
from xen.inject import UnusableRecord, input_kinds_text
from xen.logrecord import kinds_named
from xen.replay import Mark
from xen.vcpu import PAGE_SIZE, GuestMemoryError, SavedCpu, VCpu

LOOPBACK = "127.0.0.1"
SIGINT, SIGTRAP = 2, 5
READ_ONLY_REPLY = b"E.a replay is read-only: registers and memory cannot be changed"
BAD_REQUEST = b"E01"
NO_SUCH_THREAD = b"E02"
NOT_POSSIBLE = b"E03"
NO_TARGET_COMMANDS = b"E.breakpoint commands cannot run in this stub (it does not offer BreakpointCommands)"
MAX_MEMORY_READ = (PACKET_SIZE - 4) // 2
IDLE_TIMEOUT_SECONDS = 900.0           # a client silent this long while a packet is awaited is disconnected
BUSY_GRACE_SECONDS = 2.0               # how long a new client may wait for the served one to leave
BUSY_LINE = b"xenrr serve: busy: another debugger is connected to this replay; try again when it leaves\n"
MONITOR_OUTPUT_CHUNK = 1024           # characters of monitor output per `O` packet
PROGRESS_DELAY_SECONDS = 0.5           # by default a motion this long starts reporting its progress (when asked) ...
PROGRESS_INTERVAL_SECONDS = 0.25       # ... and then reports it this often at most
WATCH_ACCESS = {2: "w", 3: "r", 4: "a"}    # Z2 write, Z3 read, Z4 access watchpoints
EXPEDITED = ("rbp", "rsp", "rip")      # registers sent with every stop reply (saves GDB a `g`)
SUPPORTED = (b"PacketSize=%x;QStartNoAckMode+;qXfer:features:read+;qXfer:libraries:read+;ReverseStep+;ReverseContinue+;"
             b"swbreak+;hwbreak+;vContSupported+;ConditionalBreakpoints+" % PACKET_SIZE)
MONITOR_HELP = f"""\
monitor commands of the xenrr replay stub:
  events [--kind KIND[,KIND...]] [FROM [TO]]
                      list input events (number, instruction count, kind, payload); KIND is
                      one of {input_kinds_text()}
  goto EVENT          go to just before input event EVENT is injected (forwards or backwards)
  goto-icount N       go to instruction count N
  when                the current event number and instruction count
  bookmark NAME       name the current position (a bookmark lasts as long as this server)
  bookmarks           list the bookmarks
  goto-bookmark NAME  go back (or forward) to a bookmark
  image               the guest image the replay runs (for its symbols)
  damage              what a damaged log lost (or that the log is whole)
  set progress on [DELAY] | off
                      report how far a continue or reverse-continue running longer than DELAY
                      seconds ({PROGRESS_DELAY_SECONDS:g} by default) has got, as console lines (off at first)
  help                this text
After `goto`, plain GDB must re-read the target: `maintenance flush register-cache` then `frame`
(gdbext's rr-goto does it).
"""

_log = logging.getLogger(__name__)


class ServerError(Exception):
    """The server cannot start (address refused, port taken): one line."""


class _SessionOver(Exception):
    """The client killed or detached: the session ends after the reply (if any) is sent."""

    def __init__(self, reply: bytes | None):
        super().__init__()
        self.reply = reply


class _MonitorError(Exception):
    """A monitor command failed; the message is shown to the user as `error: ...`."""


def _turn_away(listener: socket.socket, served: threading.Event, waiting: list[socket.socket]) -> None:
    """While a client is served: answer every other connection with BUSY_LINE and close it - unless the
    served client leaves within BUSY_GRACE_SECONDS (a debugger reconnecting): that one is served next."""
    while not served.is_set():
        if not select.select([listener], [], [], 0.05)[0]:
            continue
        try:
            other, _ = listener.accept()
        except OSError:
            continue
        if served.wait(BUSY_GRACE_SECONDS):
            waiting.append(other)
            return
        with other:
            try:
                other.sendall(BUSY_LINE)
            except OSError:
                pass


def listen(port: int = 0, host: str = LOOPBACK) -> socket.socket:
    """A listening TCP socket on 127.0.0.1:`port` (0: any free port). Other addresses are refused."""
    if host != LOOPBACK:
        raise ServerError(f"the gdbstub listens on {LOOPBACK} only, not on {host!r}")
    if not 0 <= port <= 65535:
        raise ServerError(f"port {port} is not between 0 and 65535")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(1)
    except OSError as error:
        listener.close()
        raise ServerError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return listener


@dataclass
class _ClientState:
    """What one connection has asked for; undone when the connection ends."""
    # address -> {"sw" or "hw": the conditions (agent-expression bytecode) of that kind; () for none}
    breakpoints: dict[int, dict[str, tuple[bytes, ...]]] = field(default_factory=dict)
    reported_errors: set[tuple[int, bytes]] = field(default_factory=set)   # (address, condition) told once
    watchpoints: list[tuple[int, int, str]] = field(default_factory=list)
    swbreak: bool = False            # the client understands `swbreak:` / `hwbreak:` stop reasons
    register_thread: int = 1         # Hg: whose registers g/p read
    continue_thread: int = -1        # Hc: the thread a step (bs, s) is for; -1 or 0: any
    interrupt_pending: bool = False  # Ctrl-C arrived while stopped: the next resume stops at once
    progress: bool = False           # `monitor set progress on`: report long motions as console lines
    progress_delay: float = 0.0      # seconds a motion runs before its first report
    progress_due: float = 0.0        # when the running motion may next report its progress


def _is_resume(payload: bytes) -> bool:
    """Packets that set the target running: c, C, s, S, bc, bs, and vCont with an action."""
    return payload[:1] in (b"c", b"C", b"s", b"S") or payload in (b"bc", b"bs") or \
        (payload.startswith(b"vCont;"))


@dataclass(frozen=True)
class BreakpointCondition:
    """The conditions of one breakpoint location (GDB's bytecode), as the predicate the timeline asks
    at each hit. It depends on its bytecode alone, so it is equal to another exactly when it judges
    the same: GDB removes and re-inserts every breakpoint at each stop, and the timeline keeps the hits
    of its last backward scan across those re-insertions."""
    bytecodes: tuple[bytes, ...]

    def __call__(self, vcpu: VCpu) -> bool:
        return self.judge(vcpu)[0]

    def judge(self, vcpu: VCpu) -> tuple[bool, tuple[bytes, str] | None]:
        """Whether any condition holds, `vcpu` being at the hit; and the first condition that could
        not be evaluated (it counts as true, as in gdbserver), with its error."""
        def read_register(number: int) -> int | None:
            return int.from_bytes(register_bytes(vcpu, number), "little") if number < len(REGISTERS) else None

        def read_memory(start: int, length: int) -> bytes | None:
            try:
                return vcpu.read(start, length)
            except GuestMemoryError:
                return None

        for bytecode in self.bytecodes:
            try:
                if evaluate(bytecode, read_register, read_memory):
                    return True, None
            except AgentExprError as error:
                return True, (bytecode, str(error))
        return False, None


class GdbServer:
    """Serves GDB clients, one at a time, on one replay timeline."""

    def __init__(self, timeline: Timeline, idle_timeout: float = IDLE_TIMEOUT_SECONDS):
        self.timeline = timeline
        self.idle_timeout = idle_timeout
        self._last_stop = b"T%02xthread:1;" % SIGTRAP
        self._conn: RspConnection | None = None
        self._client = _ClientState()
        self._bookmarks: dict[str, Mark] = {}
        self._libraries = self._library_list()
        self._handlers = {b"?": self._stop_reason, b"g": self._read_registers, b"p": self._read_register,
                          b"m": self._read_memory, b"H": self._set_thread, b"T": self._thread_alive,
                          b"Z": self._insert_point, b"z": self._remove_point, b"c": self._continue,
                          b"C": self._continue_with_signal, b"s": self._step, b"S": self._step_with_signal}

    # ---------------------------------------------------------------- connections
    def serve(self, listener: socket.socket) -> None:
        """Accept clients one after the other until one of them kills or detaches. While one is served,
        any other is told BUSY_LINE and closed at once."""
        waiting: list[socket.socket] = []        # a client that came as the previous one left
        while True:
            sock = waiting.pop() if waiting else listener.accept()[0]
            served = threading.Event()
            turner = threading.Thread(target=_turn_away, args=(listener, served, waiting), daemon=True)
            turner.start()
            try:
                with sock:
                    if self.serve_connection(sock):
                        return
            finally:
                served.set()
                turner.join()

    def serve_connection(self, sock: socket.socket) -> bool:
        """Serve one client to its end: True if it ended the session (k, vKill, D), False if it went away
        or stayed silent for `idle_timeout` seconds while a packet was awaited."""
        self._conn = RspConnection(sock, timeout=self.idle_timeout)
        self._client = _ClientState()
        try:
            while True:
                event = self._conn.receive()
                if isinstance(event, Interrupt):
                    # GDB sends Ctrl-C between a stop and its next resume when it is stepping or
                    # evaluating a breakpoint condition: keep it for that resume.
                    self._client.interrupt_pending = True
                    continue
                try:
                    reply = self._reply(event.payload)
                except _SessionOver as over:
                    if over.reply is not None:
                        self._conn.send_packet(over.reply)
                    return True
                if reply is not None:
                    self._conn.send_packet(reply)
        except ConnectionClosed as closed:
            _log.info("client went away: %s", str(closed))   # strings only: a record must not keep frames alive
            return False
        except ReceiveTimeout:
            _log.info("client silent for %g s: disconnected", self.idle_timeout)
            return False
        finally:
            self._forget_client()

    def _forget_client(self) -> None:
        for address in self._client.breakpoints:
            self.timeline.remove_breakpoint(address)
        for watch in self._client.watchpoints:
            self.timeline.remove_watchpoint(*watch)
        self._client = _ClientState()
        self._conn = None

    def _interrupted(self) -> bool:
        """Polled by the timeline while it runs: Ctrl-C from the client, or the client gone. Also
        where the running motion reports its progress, if the client asked for it."""
        try:
            self._report_progress()
            return self._conn.poll_interrupt()
        except ConnectionClosed:
            return True        # stop now; sending the stop reply then ends the connection

    def _report_progress(self) -> None:
        """One progress line (`O` packet) about the running motion, at most every PROGRESS_INTERVAL_SECONDS
        and not before it has run PROGRESS_DELAY_SECONDS; only while the target runs (the one time the
        protocol lets the stub write to GDB's console unasked) and only if the client turned it on."""
        now = time.monotonic()
        if not self._client.progress or now < self._client.progress_due:
            return
        progress = self.timeline.progress()
        if progress is None:
            return
        self._client.progress_due = now + PROGRESS_INTERVAL_SECONDS
        self._conn.send_packet(b"O" + hex_encode(progress_line(*progress).encode()))

    # ---------------------------------------------------------------- dispatch
    def _reply(self, payload: bytes) -> bytes | None:
        """The reply to one packet (None: the packet has none)."""
        if _is_resume(payload):
            self._client.progress_due = time.monotonic() + self._client.progress_delay
        if self._client.interrupt_pending and _is_resume(payload):
            self._client.interrupt_pending = False
            return self._stop_reply(Stop("interrupt", self.timeline.position, self.timeline.vcpu.pc))
        try:
            return self._dispatch(payload)
        except BadArgument as error:
            _log.info("bad packet %r: %s", payload[:64], str(error))
            return BAD_REQUEST
        except (_SessionOver, ConnectionClosed, ReceiveTimeout):
            raise                      # the client left (e.g. in the middle of a monitor reply): not a failure
        except UnusableRecord as error:    # a malformed log, not a stub failure: one line, no traceback
            _log.warning("the log cannot be replayed past here: %s", str(error))   # strings only, as above
            return b"E." + str(error).encode("ascii", "replace")
        except Exception as error:     # a request the replay cannot serve must not end the server
            _log.exception("packet %r failed", payload[:64])
            return b"E." + f"{type(error).__name__}: {error}".encode("ascii", "replace")

    def _dispatch(self, payload: bytes) -> bytes | None:
        if not payload:
            return b""
        command, args = payload[:1], payload[1:]
        if command in (b"G", b"P", b"M", b"X"):
            return READ_ONLY_REPLY
        if payload in (b"bc", b"bs"):
            return self._reverse(payload == b"bs")
        if command == b"k":
            raise _SessionOver(None)            # `k` has no reply
        if command == b"D":
            raise _SessionOver(b"OK")
        if command in self._handlers:
            return self._handlers[command](args)
        if command == b"q" or command == b"Q":
            return self._query(payload)
        if command == b"v":
            return self._v_packet(payload)
        return b""

    def _query(self, payload: bytes) -> bytes | None:
        name, _, args = payload.partition(b":")
        if name == b"qSupported":
            features = args.split(b";")
            self._client.swbreak = b"swbreak+" in features
            return SUPPORTED
        if payload == b"QStartNoAckMode":
            self._conn.start_no_ack_mode()
            return None
        if payload == b"qAttached":
            return b"1"                          # the replay exists without GDB: quitting detaches
        if payload == b"qC":
            return b"QC%x" % self._client.register_thread
        if payload == b"qfThreadInfo":
            return b"m" + b",".join(b"%x" % thread for thread in self._thread_ids())
        if payload == b"qsThreadInfo":
            return b"l"
        if name.startswith(b"qThreadExtraInfo,"):
            thread = self._thread_number(name[len(b"qThreadExtraInfo,"):])
            if thread not in self._thread_ids():
                return NO_SUCH_THREAD
            status = self.timeline.session.domain.vcpus[thread - 1].status()
            return hex_encode(f"vCPU {thread - 1} {status}".encode())
        if name == b"qXfer" and args.startswith(b"features:read:"):
            return self._target_description(args[len(b"features:read:"):])
        if name == b"qXfer" and args.startswith(b"libraries:read::"):
            return _window(self._libraries, args[len(b"libraries:read::"):])
        if name.startswith(b"qRcmd,"):
            return self._monitor(hex_decode(name[len(b"qRcmd,"):], "monitor command").decode("latin-1"))
        if payload == b"qSymbol::":
            return b"OK"
        return b""

    def _v_packet(self, payload: bytes) -> bytes:
        if payload == b"vCont?":
            return b"vCont;c;C;s;S"
        if payload.startswith(b"vCont;"):
            return self._v_cont(payload[len(b"vCont;"):])
        if payload.startswith(b"vKill"):
            raise _SessionOver(b"OK")
        return b""                               # vMustReplyEmpty, vFile, vRun, ...

    # ---------------------------------------------------------------- threads
    def _vcpu(self, number: int) -> VCpu | SavedCpu:
        """vCPU `number` of the replayed domain (thread id = number + 1): the engine for the one on it,
        a view of the saved registers for each other one."""
        domain = self.timeline.session.domain
        return domain.vcpu if number == domain.current else SavedCpu(domain.vcpu_registers(number))

    def _thread_ids(self) -> range:
        return range(1, len(self.timeline.session.domain.vcpus) + 1)

    @staticmethod
    def _thread_number(text: bytes) -> int:
        """A thread id as GDB writes it: hex, or -1 for all threads (0 for any is also accepted)."""
        if text == b"-1":
            return -1
        return parse_hex_number(text, "thread id")

    def _set_thread(self, args: bytes) -> bytes:
        operation, requested = args[:1], self._thread_number(args[1:])
        if operation not in (b"g", b"c"):
            return b""
        thread = 1 if requested in (0, -1) else requested
        if thread not in self._thread_ids():
            return NO_SUCH_THREAD
        if operation == b"g":
            self._client.register_thread = thread
        else:                                    # all-stop: a continue moves every vCPU; a step is this one's
            self._client.continue_thread = requested
        return b"OK"

    def _thread_alive(self, args: bytes) -> bytes:
        return b"OK" if self._thread_number(args) in self._thread_ids() else NO_SUCH_THREAD

    def _register_vcpu(self) -> VCpu:
        return self._vcpu(self._client.register_thread - 1)

    # ---------------------------------------------------------------- registers, memory, description
    def _read_registers(self, args: bytes) -> bytes:
        return hex_encode(all_registers(self._register_vcpu()))

    def _read_register(self, args: bytes) -> bytes:
        number = parse_hex_number(args, "register number")
        if number >= len(REGISTERS):
            return BAD_REQUEST
        return hex_encode(register_bytes(self._register_vcpu(), number))

    def _read_memory(self, args: bytes) -> bytes:
        address, length = parse_addr_length(args)
        data = _readable_prefix(self.timeline.vcpu, address, min(length, MAX_MEMORY_READ))      # one memory for every vCPU
        if length and not data:
            return BAD_REQUEST
        return hex_encode(data)

    def _target_description(self, args: bytes) -> bytes:
        annex, _, window = args.partition(b":")
        if annex != b"target.xml":
            return b"E00"
        return _window(TARGET_XML, window)

    def _library_list(self) -> bytes:
        """The libraries GDB loads symbols from: the hypercall page's symbol file, when there is one
        (stub/hypercall_frames.py), so that GDB unwinds from a stop inside the page."""
        image = self.timeline.session.domain.image
        path = symbol_file(image.hypercall_page) if image.layout.hypercall_page is not None else None
        if path is None:
            return b"<library-list></library-list>"
        return library_list(path, image.layout.hypercall_page)

    # ---------------------------------------------------------------- break- and watchpoints
    def _point_args(self, args: bytes) -> tuple[int, int, int, bytes]:
        """A Z/z packet's type, address and kind (or length), and the options after `;` (if any)."""
        kind_text, _, rest = args.partition(b",")
        kind = parse_hex_number(kind_text, "breakpoint type")
        location, _, options = rest.partition(b";")
        address, length = parse_addr_length(location)
        return kind, address, length, options

    def _insert_point(self, args: bytes) -> bytes:
        kind, address, length, options = self._point_args(args)
        if kind in (0, 1):
            if b"cmds:" in options:
                return NO_TARGET_COMMANDS
            # Z0 again at an inserted location replaces its conditions (GDB re-sends it when they change).
            self._client.breakpoints.setdefault(address, {})["sw" if kind == 0 else "hw"] = \
                _condition_list(options)
            self._set_breakpoint(address)
            return b"OK"
        if kind in WATCH_ACCESS:
            access = WATCH_ACCESS[kind]
            try:
                self.timeline.add_watchpoint(address, length, access)
            except (GuestMemoryError, ValueError) as error:
                _log.info("watchpoint refused: %s", str(error))
                return NOT_POSSIBLE
            self._client.watchpoints.append((address, length, access))
            return b"OK"
        return b""

    def _remove_point(self, args: bytes) -> bytes:
        kind, address, length, _ = self._point_args(args)
        if kind in (0, 1):
            kinds = self._client.breakpoints.get(address)
            if kinds is not None and kinds.pop("sw" if kind == 0 else "hw", None) is not None:
                if kinds:
                    self._set_breakpoint(address)
                else:
                    del self._client.breakpoints[address]
                    self.timeline.remove_breakpoint(address)
            return b"OK"
        if kind in WATCH_ACCESS:
            watch = (address, length, WATCH_ACCESS[kind])
            if watch in self._client.watchpoints:
                self._client.watchpoints.remove(watch)
                self.timeline.remove_watchpoint(*watch)
            return b"OK"
        return b""

    def _set_breakpoint(self, address: int) -> None:
        """(Re)place the timeline's breakpoint at `address` with the conditions it has now."""
        self.timeline.add_breakpoint(address, self._condition_at(address))

    def _condition_at(self, address: int) -> BreakpointCondition | None:
        """The conditions of the breakpoint at `address` as one predicate; None when it has a kind
        without conditions (which always stops)."""
        kinds = self._client.breakpoints.get(address, {})
        if not kinds or not all(kinds.values()):
            return None
        return BreakpointCondition(tuple(code for _, codes in sorted(kinds.items()) for code in codes))

    def _report_condition_error(self, stop: Stop) -> None:
        """Tell the user, once per condition, that the one of the breakpoint just hit could not be evaluated."""
        condition = self._condition_at(stop.pc)
        if stop.reason != "breakpoint" or condition is None:
            return
        _, failure = condition.judge(self.timeline.vcpu)
        if failure is None or (stop.pc, failure[0]) in self._client.reported_errors:
            return
        self._client.reported_errors.add((stop.pc, failure[0]))
        text = f"xenrr: the stub cannot evaluate the condition of the breakpoint at {stop.pc:#x}: {failure[1]}\n"
        self._conn.send_packet(b"O" + hex_encode(text.encode()))

    # ---------------------------------------------------------------- execution
    def _continue(self, args: bytes) -> bytes:
        """`c`; `c ADDR` is refused: a replay cannot resume anywhere but where it is."""
        if args:
            return NOT_POSSIBLE
        return self._stop_reply(self.timeline.cont(interrupted=self._interrupted))

    def _continue_with_signal(self, args: bytes) -> bytes:
        """`C sig`: the signal is dropped, as nothing can be delivered to a replay."""
        return self._continue(self._drop_signal(args))

    def _step(self, args: bytes) -> bytes:
        if args:
            return NOT_POSSIBLE
        return self._stop_reply(self.timeline.step())

    def _step_with_signal(self, args: bytes) -> bytes:
        return self._step(self._drop_signal(args))

    @staticmethod
    def _drop_signal(args: bytes) -> bytes:
        signal, _, address = args.partition(b";")
        parse_hex_number(signal, "signal number")
        return address

    def _reverse(self, step: bool) -> bytes:
        if step:
            # `Hc N` + `bs`: vCPU N-1 back one of its own instructions. GDB (scheduler-locking off) sends
            # `Hc0` for the thread the user selected, whose registers it last read (`Hg`): that one.
            thread = self._client.continue_thread
            vcpu = (thread if thread > 0 else self._client.register_thread) - 1
            return self._stop_reply(self.timeline.reverse_step_vcpu(vcpu))
        return self._stop_reply(self.timeline.reverse_cont(interrupted=self._interrupted))

    def _v_cont(self, args: bytes) -> bytes:
        """All-stop vCont: every vCPU moves and all stop together. `s:N` steps vCPU N-1 by one of its
        instructions (the others run until its turn); a step without a thread steps the domain."""
        actions = []
        for action in args.split(b";"):
            verb, _, thread = action.partition(b":")
            if verb[:1] not in (b"c", b"C", b"s", b"S") or len(verb) not in (1, 3):
                raise BadArgument(f"unsupported vCont action {action[:20]!r}")
            number = self._thread_number(thread) if thread else -1
            if number > 0 and number not in self._thread_ids():
                raise BadArgument(f"vCont names thread {number}, which does not exist")
            actions.append((verb[:1].lower(), number))
        if not actions:
            raise BadArgument("vCont without an action")
        stepped = [number for verb, number in actions if verb == b"s"]
        if stepped and stepped[0] > 0:
            return self._stop_reply(self.timeline.step_vcpu(stepped[0] - 1))
        if stepped:
            return self._stop_reply(self.timeline.step())
        return self._stop_reply(self.timeline.cont(interrupted=self._interrupted))

    def _stop_reason(self, args: bytes) -> bytes:
        return self._last_stop

    def _stop_reply(self, stop: Stop) -> bytes:
        """`T` stop reply for a timeline stop, remembered for `?` (after the console message of a
        breakpoint condition that could not be evaluated, if that is why it stopped)."""
        if self._conn is not None:
            self._report_condition_error(stop)
        signal = SIGINT if stop.reason == "interrupt" else SIGTRAP
        parts = [b"T%02x" % signal]
        vcpu_number = stop.vcpu
        thread = vcpu_number + 1                 # the vCPU that hit (all stop together: all-stop mode)
        self._client.register_thread = thread
        vcpu = self._vcpu(vcpu_number)
        for name in EXPEDITED:
            number = REGISTER_NUMBERS[name]
            parts.append(b"%02x:%s;" % (number, hex_encode(register_bytes(vcpu, number))))
        parts.append(b"thread:%x;" % thread)
        parts.append(self._stop_detail(stop))
        self._last_stop = b"".join(parts)
        return self._last_stop

    def _stop_detail(self, stop: Stop) -> bytes:
        if stop.reason == "history-end":
            return b"replaylog:end;"
        if stop.reason == "history-start":
            return b"replaylog:begin;"
        if stop.reason == "breakpoint" and self._client.swbreak:
            kinds = self._client.breakpoints.get(stop.pc, {})
            return b"hwbreak:;" if set(kinds) == {"hw"} else b"swbreak:;"
        if stop.reason == "watchpoint":
            return b"%s:%x;" % (self._watch_key(stop.watch_address, stop.watch_access), stop.watch_address)
        return b""

    def _watch_key(self, address: int, access: str | None) -> bytes:
        """The stop-reply key for a watchpoint hit: that of the client's watchpoint it matches best."""
        covering = {kind for start, length, kind in self._client.watchpoints if start <= address < start + length}
        if access == "w" and "w" in covering:
            return b"watch"
        if access == "r" and "r" in covering:
            return b"rwatch"
        return b"awatch"

    # ---------------------------------------------------------------- monitor commands
    def _monitor(self, command_line: str) -> bytes:
        """Run a `monitor` command: its output goes out as `O` packets, errors as `error: ...` text."""
        words = command_line.split()
        commands = {"events": self._monitor_events, "goto": self._monitor_goto,
                    "goto-icount": self._monitor_goto_icount, "when": self._monitor_when,
                    "image": self._monitor_image, "damage": self._monitor_damage,
                    "bookmark": self._monitor_bookmark,
                    "bookmarks": self._monitor_bookmarks, "goto-bookmark": self._monitor_goto_bookmark,
                    "set": self._monitor_set, "help": lambda args: MONITOR_HELP}
        try:
            if not words or words[0] not in commands:
                raise _MonitorError(f"unknown monitor command {command_line.strip()!r}; try 'monitor help'")
            text = commands[words[0]](words[1:])
        except _MonitorError as error:
            text = f"error: {error}\n"
        for start in range(0, len(text), MONITOR_OUTPUT_CHUNK):
            self._conn.send_packet(b"O" + hex_encode(text[start:start + MONITOR_OUTPUT_CHUNK].encode()))
        return b"OK"

    @staticmethod
    def _numbers(args: list[str], names: tuple[str, ...], required: int) -> list[int]:
        if not required <= len(args) <= len(names):
            usage = " ".join(name if index < required else f"[{name}]" for index, name in enumerate(names))
            raise _MonitorError(f"expected {usage}")
        try:
            return [int(arg, 0) for arg in args]
        except ValueError:
            raise _MonitorError(f"not a number: {' '.join(args)!r}") from None

    def _monitor_events(self, args: list[str]) -> str:
        events = self.timeline.events()
        kinds, args = _kind_option(args)
        numbers = self._numbers(args, ("FROM", "TO"), 0)
        first = numbers[0] if numbers else 1
        last = numbers[1] if len(numbers) > 1 else len(events)
        if first < 1 or last < first:
            raise _MonitorError(f"no events in {first}..{last}: the recording has events 1 to {len(events)}")
        current = self.timeline.current_event()
        lines = [f"  {'event':>7} {'icount':>14}  {'kind':<14} payload"]
        for event in events[first - 1:last]:
            if kinds is None or event.kind in kinds:
                marker = "=>" if event.number == current + 1 else "  "
                lines.append(f"{marker}{event.number:>7} {event.icount:>14}  {event.kind_name:<14} "
                             f"{event.describe()}")
        shown = f"{len(lines) - 1} shown of " if kinds is not None else ""
        lines.append(f"{shown}{len(events)} events; => marks the next one to be injected")
        return "\n".join(lines) + "\n"

    def _monitor_bookmark(self, args: list[str]) -> str:
        name = self._bookmark_name(args)
        self._bookmarks[name] = self.timeline.position
        return f"bookmark {name}: " + self._monitor_when([])

    def _monitor_bookmarks(self, args: list[str]) -> str:
        self._numbers(args, (), 0)
        if not self._bookmarks:
            return "no bookmarks; `monitor bookmark NAME` names the current position\n"
        return "".join(f"{name:<16} icount {mark.icount}\n" for name, mark in self._bookmarks.items())

    def _monitor_goto_bookmark(self, args: list[str]) -> str:
        name = self._bookmark_name(args)
        if name not in self._bookmarks:
            known = ", ".join(self._bookmarks) or "none yet"
            raise _MonitorError(f"no bookmark named {name!r} (bookmarks: {known})")
        return self._arrived(self.timeline.goto(self._bookmarks[name]))

    @staticmethod
    def _bookmark_name(args: list[str]) -> str:
        if len(args) != 1:
            raise _MonitorError("expected one NAME (no spaces)")
        return args[0]

    def _monitor_goto(self, args: list[str]) -> str:
        (number,) = self._numbers(args, ("EVENT",), 1)
        try:
            stop = self.timeline.goto_event(number)
        except ValueError as error:
            raise _MonitorError(str(error)) from None
        return self._arrived(stop)

    def _monitor_goto_icount(self, args: list[str]) -> str:
        (icount,) = self._numbers(args, ("N",), 1)
        if icount < 0:
            raise _MonitorError("an instruction count cannot be negative")
        return self._arrived(self.timeline.goto_icount(icount))

    def _arrived(self, stop: Stop) -> str:
        self._stop_reply(stop)
        where = "at the end of the recording; " if stop.reason == "history-end" else ""
        return where + self._monitor_when([])

    def _monitor_when(self, args: list[str]) -> str:
        self._numbers(args, (), 0)
        events = len(self.timeline.events())
        start = self.timeline.start.icount
        since = f", the recording starts at icount {start}" if start else ""    # it began with a running domain
        return (f"event {self.timeline.current_event()} of {events}, icount {self.timeline.position.icount}, "
                f"pc {self.timeline.vcpu.pc:#x}{since}\n")

    def _monitor_set(self, args: list[str]) -> str:
        usage = "expected `set progress on [DELAY]` or `set progress off`"
        if args[:2] == ["progress", "off"] and len(args) == 2:
            self._client.progress = False
            return "progress reports off\n"
        if args[:2] != ["progress", "on"] or len(args) > 3:
            raise _MonitorError(usage)
        try:
            delay = float(args[2]) if len(args) == 3 else PROGRESS_DELAY_SECONDS
        except ValueError:
            raise _MonitorError(usage) from None
        if not 0 <= delay <= 3600:
            raise _MonitorError(f"a progress delay is 0 to 3600 seconds, not {args[2]}")
        self._client.progress, self._client.progress_delay = True, delay
        return f"progress reports on, after {delay:g} s\n"

    def _monitor_damage(self, args: list[str]) -> str:
        self._numbers(args, (), 0)
        return f"{self.timeline.session.loss() or 'the log is whole'}\n"

    def _monitor_image(self, args: list[str]) -> str:
        self._numbers(args, (), 0)
        return f"{self.timeline.session.image_path.resolve()}\n"


def _window(document: bytes, window: bytes) -> bytes:
    """A qXfer read of `document` at `OFFSET,LENGTH`: `m` and the chunk, or `l` with the last one."""
    offset, length = parse_addr_length(window)
    chunk = document[offset:offset + length]
    return (b"m" if offset + length < len(document) else b"l") + chunk


def _condition_list(options: bytes) -> tuple[bytes, ...]:
    """The conditions in a Z0/Z1 packet's options: `X len,bytecode` each, `;` between them optional
    (GDB writes them back to back, gdbserver accepts both)."""
    conditions = []
    while options:
        if options.startswith(b";"):
            options = options[1:]
            continue
        try:
            bytecode, options = parse_condition(options)
        except AgentExprError as error:
            raise BadArgument(str(error)) from None
        conditions.append(bytecode)
    return tuple(conditions)


def _kind_option(args: list[str]) -> tuple[set[int] | None, list[str]]:
    """Split `--kind KINDS` (or `--kind=KINDS`) off a monitor command's arguments: (kinds or None, the rest)."""
    rest: list[str] = []
    names = None
    words = iter(args)
    for word in words:
        if word == "--kind":
            names = next(words, "")
        elif word.startswith("--kind="):
            names = word.removeprefix("--kind=")
        else:
            rest.append(word)
    if names is None:
        return None, rest
    try:
        return kinds_named(names), rest
    except ValueError as error:
        raise _MonitorError(str(error)) from None


def _readable_prefix(vcpu: VCpu, address: int, length: int) -> bytes:
    """The bytes of [address, address+length) up to the first unmapped page (all of them if mapped)."""
    try:
        return vcpu.read(address, length)
    except GuestMemoryError:
        pass
    data = b""
    while len(data) < length:
        chunk = min(length - len(data), PAGE_SIZE - (address + len(data)) % PAGE_SIZE)
        try:
            data += vcpu.read(address + len(data), chunk)
        except GuestMemoryError:
            break
    return data
