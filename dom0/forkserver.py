"""The fork server: xenrr's imports and engine creation paid once per user, not once per command.

Owns the server process (`python -m dom0.forkserver`) and `xenrr server start|stop|status`. The
server imports every module the served commands use and creates one engine that it never runs
(xen.vcpu.prepare_spare_engine), then waits on a Unix socket (dom0/launch.py says where). For each
command a client sends it forks a child; the child takes the client's stdin, stdout and stderr, its
working directory, environment, arguments and process attributes (umask, limits, nice, affinity, signal
dispositions and mask), runs `dom0.cli` exactly as the client would have, and
its exit status (or the signal that ended it, by which the client then ends too) goes back to the client,
which waits meanwhile.
Invariants:
- every command runs in a fresh child of a server that never ran one: the child's engine is a copy
  of one never run, its modules' state is as imports left it (no command's leftovers, ever);
- the server runs only the code it fingerprinted before importing it: a client with another
  fingerprint (the code changed since), or whose request it cannot read, is told "stale", and the
  server lets go of its socket at once and exits once its running children end; a client whose environment would have shaped the
  imports or the engine differently is refused, and runs the command itself;
- only the user who owns the server reaches it: the socket is mode 0600 in a directory of mode 0700
  that the client checks, and the server also checks each peer's uid (SO_PEERCRED);
- it exits on its own after `--idle` seconds without a command (XENRR_SERVER_IDLE, default 600).
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import gc
import io
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time
import traceback

from dom0.launch import (DEFAULT_IDLE_SECONDS, SERVED, MessageTooLong, code_fingerprint, mode, private_directory,
                         receive_message, relevant_environment, send_message, socket_path, start_server_in_background)

MAX_CHILDREN = 32               # commands running at once; one more is answered "busy" (it runs in its client)
REQUEST_TIMEOUT_SECONDS = 2.0   # a client sends its request at once; one that does not is dropped
START_TIMEOUT_SECONDS = 20.0    # `xenrr server start` waits this long for the new server to answer
_UCRED = struct.Struct("3i")    # SO_PEERCRED: pid, uid, gid


class ServerCommandError(Exception):
    """`xenrr server ...` could not do what it was asked: one line, exit status 2."""


# --------------------------------------------------------------------------- the server

class ForkServer:
    """One listening socket, the children it forked (pid -> the connection of the client waiting)."""

    def __init__(self, path: str, idle_seconds: float, fingerprint: str, environment: dict[str, str],
                 lock: int):
        self.path, self.idle_seconds = path, idle_seconds
        self.fingerprint, self.environment = fingerprint, environment
        self.lock: int | None = lock
        self.children: dict[int, socket.socket] = {}
        self.hang_up: dict[int, int] = {}   # pid -> the signal that ends it when its client goes away
        self.served = 0                 # commands started so far
        self.children_cpu_seconds = 0.0   # CPU time of the commands that ended (`xenrr server status`, benchmarks)
        self.waiting: set[socket.socket] = set()    # connections watched for their client going away
        self.started = time.monotonic()
        self.last_active = time.monotonic()
        self.selector = selectors.DefaultSelector()
        self.listener: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.lexists(path):       # a dead server's socket: we hold the lock, so no live one owns it
            os.unlink(path)
        self.listener.bind(path)
        os.chmod(path, 0o600)
        self.inode = os.stat(path).st_ino
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        self.wakeup_read, wakeup_write = os.pipe()
        os.set_blocking(self.wakeup_read, False)
        os.set_blocking(wakeup_write, False)
        self.wakeup_write = wakeup_write
        signal.set_wakeup_fd(wakeup_write)
        for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, lambda number, frame: None)    # each wakes the loop through the pipe
        self.selector.register(self.wakeup_read, selectors.EVENT_READ, "wakeup")

    def serve(self) -> None:
        while self.listener is not None or self.children:
            timeout = None
            if not self.children and self.listener is not None:
                timeout = max(0.0, self.last_active + self.idle_seconds - time.monotonic())
            events = self.selector.select(timeout)
            if not events and not self.children and time.monotonic() - self.last_active >= self.idle_seconds:
                self.let_go()
            for key, _ in events:
                if key.data == "listener":
                    self._accept()
                elif key.data == "wakeup":
                    self._signalled()
                else:
                    self._client_gone(key.data)

    def let_go(self) -> None:
        """Stop taking commands: the socket (if it is still ours) and the lock go now; running children
        are waited for."""
        if self.listener is None:
            return
        self.selector.unregister(self.listener)
        self.listener.close()
        self.listener = None
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    def _signalled(self) -> None:
        try:
            numbers = os.read(self.wakeup_read, 512)
        except BlockingIOError:
            numbers = b""
        if any(number in numbers for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)):
            self.let_go()
        while self.children:
            try:
                pid, wait_status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children_cpu_seconds += usage.ru_utime + usage.ru_stime
            connection = self.children.pop(pid, None)
            self.hang_up.pop(pid, None)
            self.last_active = time.monotonic()
            if connection is None:
                continue
            if connection in self.waiting:
                self.waiting.discard(connection)
                self.selector.unregister(connection)
            try:
                signalled = os.WIFSIGNALED(wait_status)
                send_message(connection, {"status": 128 + os.WTERMSIG(wait_status) if signalled else
                                          os.waitstatus_to_exitcode(wait_status),
                                          "signal": os.WTERMSIG(wait_status) if signalled else None})
            except OSError:
                pass
            connection.close()

    def _client_gone(self, pid: int) -> None:
        """A waiting client's connection became readable: it closed (it never sends more), so its
        command loses its terminal, as when a terminal hangs up (SIGHUP; SIGTERM when it ignores SIGHUP,
        as under nohup: in-process the command was the client, and it is gone)."""
        connection = self.children[pid]
        try:
            still_there = connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            still_there = True
        except OSError:
            still_there = False
        if not still_there:
            self.waiting.discard(connection)
            self.selector.unregister(connection)
            try:
                os.kill(pid, self.hang_up[pid])
            except OSError:
                pass

    def _accept(self) -> None:
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        self.last_active = time.monotonic()
        fds: list[int] = []
        try:
            connection.setblocking(True)
            connection.settimeout(REQUEST_TIMEOUT_SECONDS)
            _, uid, _ = _UCRED.unpack(connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            if uid != os.getuid():           # refused unread
                send_message(connection, {"reason": "refused"})
            else:
                request, fds = receive_message(connection, max_fds=3)
                self._answer(connection, request, fds)
                return
        except MessageTooLong:               # the client runs it itself
            self._answer_quietly(connection, {"reason": "too long"})
        except ValueError:                   # a request it cannot read: a client of other code
            self._answer_quietly(connection, {"reason": "stale"})
            self.let_go()
        except OSError:
            pass
        finally:
            for fd in fds:
                os.close(fd)
        connection.close()

    @staticmethod
    def _answer_quietly(connection: socket.socket, answer: dict) -> None:
        try:
            send_message(connection, answer)
        except OSError:
            pass

    def _answer(self, connection: socket.socket, request: dict, fds: list[int]) -> None:
        """Answer one request; a connection kept for a started command is registered, others closed."""
        op = request.get("op")
        if op == "status":
            send_message(connection, {"pid": os.getpid(), "fingerprint": request.get("fingerprint") == self.fingerprint,
                                      "environment": request.get("environment") == self.environment,
                                      "running": len(self.children), "served": self.served,
                                      "cpu_seconds": self.children_cpu_seconds, "idle_seconds": self.idle_seconds,
                                      "uptime": time.monotonic() - self.started, "path": self.path})
        elif op == "stop":
            send_message(connection, {"pid": os.getpid(), "running": len(self.children)})
            self.let_go()
        elif op == "run":
            reason = self._refusal(request, fds)
            if reason is None:
                self._fork(connection, request, fds)
                return
            send_message(connection, {"reason": reason})
            if reason == "stale":
                self.let_go()
        else:
            send_message(connection, {"reason": "unknown request"})
        connection.close()

    def _refusal(self, request: dict, fds: list[int]) -> str | None:
        if request.get("fingerprint") != self.fingerprint:
            return "stale"
        if self.listener is None:
            return "stopping"
        if len(self.children) >= MAX_CHILDREN:
            return "busy"
        argv, cwd, environment = request.get("argv"), request.get("cwd"), request.get("environment")
        if (not isinstance(argv, list) or not argv or argv[0] not in SERVED or not all(isinstance(a, str) for a in argv)
                or not isinstance(environment, dict) or not isinstance(cwd, str) or len(fds) != 3):
            return "malformed"
        if relevant_environment(environment) != self.environment:
            return "environment"
        process = request.get("process")
        if not isinstance(process, dict) or process.get("groups") != _groups():
            return "credentials"
        if not _can_take(process):
            return "limits"
        if not os.path.isdir(cwd):
            return "cwd"
        return None

    def _fork(self, connection: socket.socket, request: dict, fds: list[int]) -> None:
        pid = os.fork()
        if pid == 0:
            _child(self, connection, request, fds)       # never returns
        self.children[pid] = connection
        ignored = request["process"]["ignored"]
        self.hang_up[pid] = next((number for number in (signal.SIGHUP, signal.SIGTERM) if number not in ignored),
                                 signal.SIGKILL)
        self.served += 1
        try:
            send_message(connection, {"started": pid})
        except OSError:
            pass
        connection.setblocking(False)
        self.selector.register(connection, selectors.EVENT_READ, pid)
        self.waiting.add(connection)


def _child(server: ForkServer, connection: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become the client's command, run it, exit with its status."""
    status = 1
    try:
        signal.set_wakeup_fd(-1)
        server.selector.close()
        for resource in [server.listener, connection, *server.children.values()]:
            if resource is not None:
                resource.close()
        for fd in (server.wakeup_read, server.wakeup_write, server.lock):
            if fd is not None:
                os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.setsid()                       # a scheduling autogroup of its own (see _take_process_attributes)
        _take_process_attributes(request["process"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["environment"])
        _reopen_standard_streams()
        sys.argv = ["xenrr", *request["argv"]]
    except BaseException as error:        # the command cannot start here: say so in one line
        _say(f"xenrr: error: the xenrr server could not start the command: {error} (XENRR_SERVER=off runs "
             "commands without it)")
        os._exit(1)
    try:
        from dom0.cli import program
        status = program()
    except SystemExit as done:
        status = _exit_code(done)
    except BaseException:                 # as the interpreter would report it in-process
        traceback.print_exc()
        status = 1
    os._exit(_flush_at_exit(status))


def _flush_at_exit(status: int) -> int:
    """The interpreter's last act: flush stdout and stderr; output that cannot be written (a full disk, a
    reader gone) is reported as it reports it, and the status becomes 120."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError) as error:
            if stream is sys.stdout:
                _say(f"Exception ignored in: {stream!r}\n" + "".join(traceback.format_exception_only(error)).rstrip())
                status = 120
    return status


def _groups() -> list[int]:
    return [os.getgid(), os.getegid(), *sorted(os.getgroups())]


def _can_take(process: dict) -> bool:
    """Whether a child of this server can take the client's limits and nice value: an unprivileged process
    can lower a hard limit but never raise one, and raise its nice value but not lower it."""
    privileged = os.geteuid() == 0
    for limit, (_, hard) in process["limits"].items():
        own = resource.getrlimit(limit)[1]
        if not privileged and own != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > own):
            return False
    return privileged or process["nice"] >= os.getpriority(os.PRIO_PROCESS, 0)


def _take_process_attributes(process: dict) -> None:
    """In the child: the client's umask, resource limits, nice value, CPU affinity and signal dispositions
    and mask, in place of the server's (a command in-process would have had the client's). Its session is
    its own (no terminal's: it never opens one): Linux shares the CPU between sessions' autogroups first,
    so in the server's one all served commands of all terminals would share one session's CPU time, and a
    pinned replay raising its autogroup's priority (host/pinning.py) would raise the others' with it."""
    os.umask(process["umask"])
    for limit, limits in process["limits"].items():
        resource.setrlimit(limit, limits)
    os.setpriority(os.PRIO_PROCESS, 0, process["nice"])
    os.sched_setaffinity(0, process["affinity"])
    ignored = set(process["ignored"])
    for number in range(1, signal.NSIG):
        if number in ignored:
            handler = signal.SIG_IGN
        else:
            handler = signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(number, handler)
        except (OSError, ValueError):       # SIGKILL, SIGSTOP and the C library's own
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, process["blocked"])


def _exit_code(done: SystemExit) -> int:
    """The status an interpreter exits with for this SystemExit (printing a message one carries)."""
    if done.code is None:
        return 0
    if isinstance(done.code, int):
        return done.code & 0xFF
    _say(str(done.code))
    return 1


def _say(line: str) -> None:
    try:
        os.write(2, (line + "\n").encode(errors="replace"))
    except OSError:
        pass


def _reopen_standard_streams() -> None:
    """sys.stdin/stdout/stderr on the client's descriptors, buffered as the interpreter buffers them at
    start-up (line-buffered on a terminal, stderr always; stdout and stderr unbuffered under the client's
    PYTHONUNBUFFERED), named `<stdin>`, `<stdout>`, `<stderr>` as the interpreter names them."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        previous = getattr(sys, name)
        reading = fd == 0
        raw = io.FileIO(fd, "rb" if reading else "wb", closefd=False)
        raw.name = f"<{name}>"
        if reading:
            buffered = io.BufferedReader(raw)
        else:
            buffered = raw if unbuffered else io.BufferedWriter(raw)
        stream = io.TextIOWrapper(buffered, encoding=previous.encoding, errors=previous.errors, newline="\n",
                                  line_buffering=not unbuffered and (raw.isatty() or fd == 2),
                                  write_through=unbuffered and not reading)
        stream.mode = "r" if reading else "w"
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _private_socket_directory(path: str) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not private_directory(path):
        raise ServerCommandError(f"{directory} is not a directory of this user with mode 0700: no server there")


def _lock(path: str) -> int | None:
    """The server's lock (one server per socket path); None when another server holds it."""
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _warm_up() -> None:
    """Everything a served command imports (the libraries commands load on first use too: a replay's
    header check, a watch trap's disassembler, a progress bar, `replay --jobs`'s workers), then its first
    engine; frozen out of the collector so the children share these pages instead of copying them when
    they collect."""
    import multiprocessing.connection  # noqa: F401

    import capstone  # noqa: F401
    import jsonschema  # noqa: F401
    import tqdm  # noqa: F401

    import dom0.cli
    import dom0.record  # noqa: F401
    import dom0.segments  # noqa: F401
    import dom0.snapshots  # noqa: F401
    import host.pinning  # noqa: F401
    import stub.server  # noqa: F401
    import stub.timeline  # noqa: F401
    from xen.vcpu import prepare_spare_engine
    prepare_spare_engine()
    dom0.cli.build_parser()
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    """`python -m dom0.forkserver [--idle SECONDS]`: serve until idle, stale or stopped."""
    parser = argparse.ArgumentParser(prog="python -m dom0.forkserver")
    parser.add_argument("--idle", type=float, default=_default_idle())
    args = parser.parse_args(argv)
    fingerprint = code_fingerprint()                # before any import: the code it loads is at least this new
    environment = relevant_environment(dict(os.environ))
    path = socket_path()
    try:
        _private_socket_directory(path)
    except ServerCommandError as error:
        _say(f"xenrr: error: {error}")
        return 2
    lock = _lock(path)
    if lock is None:
        return 0                                     # another server has this socket
    os.chdir("/")
    _warm_up()
    server = ForkServer(path, args.idle, fingerprint, environment, lock)
    server.serve()
    return 0


def _default_idle() -> float:
    try:
        return float(os.environ.get("XENRR_SERVER_IDLE", DEFAULT_IDLE_SECONDS))
    except ValueError:
        return DEFAULT_IDLE_SECONDS


# --------------------------------------------------------------------------- `xenrr server ...`

def _ask(request: dict) -> dict | None:
    """One request to the server at the socket; None when none answers."""
    path = socket_path()
    if not private_directory(path):
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(5)
    try:
        connection.connect(path)
        send_message(connection, {**request, "fingerprint": code_fingerprint(),
                                  "environment": relevant_environment(dict(os.environ))})
        return receive_message(connection)[0]
    except (OSError, ValueError):
        return None
    finally:
        connection.close()


def add_server_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `server start|stop|status` to the xenrr command parser."""
    server = subparsers.add_parser(
        "server", help="start, stop or show the fork server that starts commands in a few milliseconds",
        description="The fork server keeps xenrr's modules imported and an engine created (never run), and runs "
                    f"each {', '.join(sorted(SERVED))} command in a fresh child of itself, so a short command "
                    "skips ~0.15 s of start-up. By default (XENRR_SERVER=auto) the first such command starts it "
                    "in the background; it exits after --idle seconds without a command, and when xenrr's code "
                    "changes it is replaced. XENRR_SERVER=manual uses it only once started here; XENRR_SERVER=off "
                    "never. Its socket is private to this user (docs/architecture.md, \"Start-up: the fork server\").")
    actions = server.add_subparsers(dest="server_action", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start a server (or say that one runs for this code and environment; "
                                                  "one for another is replaced)")
    start.add_argument("--idle", metavar="SECONDS", type=float, default=_default_idle(),
                       help=f"exit after SECONDS without a command (default {DEFAULT_IDLE_SECONDS:g}, or XENRR_SERVER_IDLE)")
    actions.add_parser("stop", help="stop the server (commands it runs finish first)")
    actions.add_parser("status", help="say whether a server runs, and for which code")


def command_server(args: argparse.Namespace) -> int:
    path = socket_path()
    if args.server_action == "status":
        answer = _ask({"op": "status"})
        if answer is None:
            print(f"no xenrr server at {path} (XENRR_SERVER={mode()})")
            return 3
        code = "this code" if answer["fingerprint"] else "other code (it is replaced at the next command)"
        if answer["fingerprint"] and not answer.get("environment"):
            code += (", another environment (XENRR_*, PYTHON*, LANG, LC_* ... differ: commands from this one run "
                     "in-process; `xenrr server start` here replaces it)")
        print(f"xenrr server pid {answer['pid']} at {path}: {code}, {answer['running']} running, "
              f"{answer['served']} served ({answer['cpu_seconds']:.2f} s of CPU), up "
              f"{answer['uptime']:.0f} s, exits after {answer['idle_seconds']:g} s idle (XENRR_SERVER={mode()})")
        return 0
    if args.server_action == "stop":
        answer = _ask({"op": "stop"})
        if answer is None:
            print(f"no xenrr server at {path}")
            return 0
        print(f"xenrr server pid {answer['pid']} stopped" +
              (f" ({answer['running']} running commands finish first)" if answer["running"] else ""))
        return 0
    return _start(args.idle)


def _start(idle: float) -> int:
    if not idle > 0:
        raise ServerCommandError(f"--idle must be a positive number of seconds, not {idle}")
    answer = _ask({"op": "status"})
    if answer is not None and answer["fingerprint"] and answer.get("environment"):
        print(f"xenrr server already running: pid {answer['pid']} at {socket_path()}")
        return 0
    if answer is not None:
        _ask({"op": "stop"})
    _private_socket_directory(socket_path())
    os.environ["XENRR_SERVER_IDLE"] = repr(idle)
    process = start_server_in_background()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None and process.returncode != 0:
            raise ServerCommandError(f"the server exited as it started (status {process.returncode}); "
                                     f"`python -m dom0.forkserver` in a terminal shows why")
        answer = _ask({"op": "status"})
        if answer is not None and answer["fingerprint"] and answer.get("environment"):
            print(f"xenrr server started: pid {answer['pid']} at {socket_path()}, exits after {idle:g} s idle"
                  + ("" if mode() != "off" else " (XENRR_SERVER=off: commands will not use it)"))
            return 0
        time.sleep(0.05)
    raise ServerCommandError(f"the server did not answer at {socket_path()} within {START_TIMEOUT_SECONDS:g} s")


SERVER_COMMANDS = {"server": command_server}

if __name__ == "__main__":
    sys.exit(main())
