"""The `xenrr` program as users start it: a command through the fork server, or in this process.

Owns the client half of the fork server (dom0/forkserver.py is the server) and what both halves agree
on: where the socket is, the fingerprint of the installed code, and the request. A command in SERVED
is sent to a running server of the same fingerprint, which forks a child that runs it exactly as
`dom0.cli` would here: the client's arguments, working directory, environment, umask, limits, nice value,
CPU affinity, signal dispositions and mask, and its stdin, stdout
and stderr (the file descriptors themselves, passed with SCM_RIGHTS). This process then only relays
signals to that child and exits with its status. The child starts with every module imported and an
engine created but never run, which is most of a short command's time.
Invariant: what a command does and prints does not depend on whether a server ran it. Anything
short of the server's "started" answer - no server, a server of other code or of another environment,
a busy one, a refused or broken connection - runs the command in this process instead, silently;
this module imports only what that decision needs (the standard library's small modules), so the
in-process path costs what it cost before.

XENRR_SERVER chooses: `auto` (default) uses a running server and starts one in the background when
none answers; `manual` uses one only when started with `xenrr server start`; `off` never uses one.
"""
from __future__ import annotations

# The C halves of `signal` and `socket`: their Python wrappers import enum, functools, collections and
# selectors (~5 ms of a client whose whole budget is a few ms); this module needs none of what they add.
import _signal as signal
import _socket as socket
import marshal
import os
import resource
import sys

# The commands a server may run: a domain's run, recording or replay and looking at a log. Not those
# that hand the terminal to another program (debug, shell), start long-lived daemons (up, create ...) or
# their own worker pools (check, verify), nor `server` itself.
SERVED = frozenset({"run", "record", "replay", "dump", "xenstore-ls", "serve"})
MODES = ("auto", "manual", "off")
DEFAULT_IDLE_SECONDS = 600.0
# The environment the server's own imports and engine depend on: a client whose values differ runs in-process.
# (Not GHIDRA_SRC: xen/vcpu.py sets it. TQDM_*: tqdm reads its defaults from them when imported.)
_ENVIRONMENT_PREFIXES = ("XENRR_", "PYTHON", "ICICLE", "RUST", "LC_", "TQDM_")
_ENVIRONMENT_IGNORED = ("XENRR_SERVER", "XENRR_SERVER_SOCKET", "XENRR_SERVER_IDLE")
_PACKAGES = ("xen", "dom0", "host", "stub", "gdbext", os.path.join("xen", "sleigh"))
_LENGTH_BYTES = 4
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))      # where the packages are
MAX_REQUEST_BYTES = 1 << 22
_RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH, signal.SIGCONT)
# What a process inherits and a forked child would take from the server instead of the client.
_LIMITS = tuple(sorted(getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")))


def mode() -> str:
    """XENRR_SERVER's value (an unknown one counts as `auto`, the default)."""
    value = os.environ.get("XENRR_SERVER", "auto").strip().lower()
    return value if value in MODES else "auto"


def socket_path() -> str:
    """XENRR_SERVER_SOCKET, or in the per-user directory the host's control socket uses, one socket per
    installation (its directory and interpreter; two checkouts or venvs of one user never share a server):
    server-CRC.sock."""
    if os.environ.get("XENRR_SERVER_SOCKET"):
        return os.environ["XENRR_SERVER_SOCKET"]
    import zlib         # a name, not a secret: crc32 tells installations apart
    installation = f"{_ROOT}\0{os.path.realpath(sys.executable)}".encode()
    name = f"server-{zlib.crc32(installation):08x}.sock"
    return os.path.join(user_runtime_directory(), name)


def user_runtime_directory() -> str:
    """This user's directory for xenrr's sockets (the fork server's and the host's control socket):
    $XDG_RUNTIME_DIR/xenrr, else /tmp/xenrr-UID."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "xenrr")
    return f"/tmp/xenrr-{os.getuid()}"


def private_directory(path: str) -> bool:
    """The socket's directory is a real directory of this user that nobody else may enter (mode 0700):
    whoever can reach the socket can run commands as this user, so no other directory is trusted."""
    try:
        status = os.lstat(os.path.dirname(path))
    except OSError:
        return False
    return (status.st_uid == os.getuid() and (status.st_mode & 0o170000) == 0o040000
            and status.st_mode & 0o077 == 0)


def code_fingerprint() -> str:
    """The installed code as a server must have loaded it: every file of the project's packages (name,
    size, modification time), the interpreter, the site-packages directory (a pip install changes it)
    and the engine's prepared spec. A server whose fingerprint differs is never used, so it never runs
    stale code."""
    root = _ROOT
    parts = [os.path.realpath(sys.executable), sys.version]
    for package in _PACKAGES:
        try:
            entries = sorted(os.scandir(os.path.join(root, package)), key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith((".py", ".patch")) and entry.is_file():
                status = entry.stat()
                parts.append(f"{package}/{entry.name}:{status.st_size}:{status.st_mtime_ns}")
    spec = os.environ.get("XENRR_ENGINE_SPEC", os.path.join(root, "build", "engine-spec"))
    for path in (os.path.dirname(os.__file__), os.path.join(spec, ".stamp")):
        try:
            status = os.stat(path)
            parts.append(f"{path}:{status.st_size}:{status.st_mtime_ns}")
        except OSError:
            parts.append(f"{path}:-")
    for entry in sys.path:
        if entry.endswith("site-packages"):
            try:
                parts.append(f"{entry}:{os.stat(entry).st_mtime_ns}")
            except OSError:
                pass
    return "\n".join(parts)


def relevant_environment(environment: dict[str, str]) -> dict[str, str]:
    """The variables that shaped the server's imports and engine (compared with the client's)."""
    return {name: value for name, value in environment.items()
            if (name.startswith(_ENVIRONMENT_PREFIXES) or name == "LANG") and name not in _ENVIRONMENT_IGNORED}


class MessageTooLong(ValueError):
    """A message longer than MAX_REQUEST_BYTES (an environment of megabytes): not read."""


def send_message(connection: socket.socket, message: dict, fds: tuple[int, ...] = ()) -> None:
    """One message (a dict of plain values), length-prefixed, in marshal's format: a built-in module, where
    json would import `re` into every client. Only a peer of the same user (the socket's directory and
    SO_PEERCRED) is ever read."""
    data = marshal.dumps(message)
    framed = len(data).to_bytes(_LENGTH_BYTES, "big") + data
    if fds:
        rights = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)
        framed = framed[connection.sendmsg([framed], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)]):]
    if framed:
        connection.sendall(framed)


def receive_message(connection: socket.socket, max_fds: int = 0) -> tuple[dict, list[int]]:
    """One message (and the file descriptors that came with its first bytes); ValueError if malformed.
    Reads no byte past it: the next message (a command's status after its "started") may have come already."""
    buffer, fds = b"", []
    length = None
    while length is None or len(buffer) < _LENGTH_BYTES + length:
        wanted = _LENGTH_BYTES - len(buffer) if length is None else _LENGTH_BYTES + length - len(buffer)
        if max_fds and not fds:
            data, ancillary, _, _ = connection.recvmsg(wanted, socket.CMSG_SPACE(4 * max_fds))
            for level, kind, rights in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds += [int.from_bytes(rights[at:at + 4], sys.byteorder, signed=True)
                            for at in range(0, len(rights) - len(rights) % 4, 4)]
        else:
            data = connection.recv(wanted)
        if not data:
            raise ConnectionError("connection closed")
        buffer += data
        if len(buffer) >= _LENGTH_BYTES:
            length = int.from_bytes(buffer[:_LENGTH_BYTES], "big")
            if length > MAX_REQUEST_BYTES:
                raise MessageTooLong(f"a message of {length} bytes (at most {MAX_REQUEST_BYTES})")
    try:
        message = marshal.loads(buffer[_LENGTH_BYTES:_LENGTH_BYTES + length])
    except (EOFError, TypeError) as error:
        raise ValueError(f"malformed message: {error}") from None
    if not isinstance(message, dict):
        raise ValueError("malformed message: not a dict")
    return message, fds


def start_server_in_background():
    """Start a server detached from this terminal and session (it exits on its own when idle); its Popen."""
    import subprocess
    return subprocess.Popen([sys.executable, "-m", "dom0.forkserver"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            close_fds=True, cwd="/")


def _standard_fd_closed() -> bool:
    """Whether stdin, stdout or stderr is closed (`<&-`): in-process Python makes that stream None; here the
    connection to the server would take the descriptor and be sent as the command's stream."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            return True
    return False


def _in_background() -> bool:
    """Whether this process is a background job of the terminal it reads or writes (`xenrr run ... &`):
    in-process the kernel stops it when it touches the terminal (SIGTTIN, SIGTTOU) until `fg`, which a
    child of the server, in another session, would not be - it would share the terminal with the shell."""
    for fd in (0, 1, 2):
        try:
            foreground = os.tcgetpgrp(fd)       # only for this process's controlling terminal
        except OSError:
            continue
        if foreground != os.getpgrp():
            return True
    return False


def process_attributes() -> dict:
    """What this process inherited that a child forked by the server would otherwise take from the server:
    the umask, resource limits (ulimit), nice value, CPU affinity, ignored and blocked signals, and the
    groups (the server refuses a client of other groups; it applies the rest in the child)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return {"umask": umask, "limits": {limit: resource.getrlimit(limit) for limit in _LIMITS},
            "nice": os.getpriority(os.PRIO_PROCESS, 0), "affinity": sorted(os.sched_getaffinity(0)),
            "ignored": [number for number in range(1, signal.NSIG) if _ignored(number)],
            "blocked": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            "groups": [os.getgid(), os.getegid(), *sorted(os.getgroups())]}


def _ignored(number: int) -> bool:
    try:
        return signal.getsignal(number) == signal.SIG_IGN
    except (OSError, ValueError):
        return False


def _connect(path: str) -> socket.socket | None:
    if not private_directory(path):
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(5)
        connection.connect(path)
        return connection
    except OSError:
        connection.close()
        return None


def _command_of(argv: list[str]) -> str | None:
    return argv[0] if argv and not argv[0].startswith("-") else None


def run_through_server(argv: list[str]) -> int | None:
    """The command's exit status after a server ran it, or None: run it in this process."""
    chosen = mode()
    if chosen == "off" or _command_of(argv) not in SERVED or _in_background() or _standard_fd_closed():
        return None
    path = socket_path()
    connection = _connect(path)
    if connection is None:
        if chosen == "auto" and (not os.path.exists(path) or private_directory(path)):
            start_server_in_background()
        return None
    terminal = _terminal_mode()         # before the child can change it
    try:
        try:
            send_message(connection, {"op": "run", "fingerprint": code_fingerprint(), "argv": argv,
                                      "cwd": os.getcwd(), "environment": dict(os.environ),
                                      "process": process_attributes()}, (0, 1, 2))
            answer, _ = receive_message(connection)
        except (OSError, ValueError):
            return None
        if answer.get("started") is None:
            if answer.get("reason") == "stale" and chosen == "auto":
                start_server_in_background()      # the stale one has let go of the socket already
            return None
        connection.settimeout(None)
        return _wait_for(connection, answer["started"], terminal)
    finally:
        connection.close()


def _wait_for(connection: socket.socket, child: int, terminal) -> int:
    """Relay signals to the child until the server reports its exit status; the terminal as it was
    (`terminal`: its mode before the request, None if stdin is no terminal)."""
    def relay(number, frame):
        try:
            os.kill(child, number)
        except OSError:
            pass

    def stop(number, frame):           # Ctrl-Z: the child stops with this process, and goes on with it
        relay(signal.SIGSTOP, frame)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, stop)

    previous = {number: signal.signal(number, relay) for number in _RELAYED}
    previous[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, stop)
    try:
        answer, _ = receive_message(connection)
        status, ended_by = int(answer["status"]), answer.get("signal")
    except (OSError, ValueError, KeyError):
        _wait_for_orphan(child)
        print("xenrr: error: the xenrr server went away while it ran the command (XENRR_SERVER=off runs "
              "commands without it)", file=sys.stderr)
        return 1
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _restore_terminal(terminal)
    if ended_by:
        _end_by(ended_by)
    return status


def _end_by(number: int) -> None:
    """End as the command ended, by signal `number`, so that whoever waits for this process (a shell, a
    script's subprocess) sees what it sees of a command run in-process (its core, if any, was dumped)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    if number != signal.SIGKILL:                  # it has no handler to reset
        signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [number])
    os.kill(os.getpid(), number)        # returns only for a signal whose default is to go on


def _wait_for_orphan(child: int) -> None:
    """The command outlived its server: wait until it ends (signals are still relayed), as the client
    of a command must; its status went with the server."""
    import select
    try:
        process = os.pidfd_open(child)
    except OSError:                     # it has ended already
        return
    try:
        select.select([process], [], [])    # readable when it ends
    finally:
        os.close(process)


def _terminal_mode():
    if not os.isatty(0):
        return None
    import termios
    try:
        return termios.tcgetattr(0)
    except termios.error:
        return None


def _restore_terminal(saved) -> None:
    """A child that died with the terminal raw leaves it as it found it (a clean exit restored it already)."""
    if saved is None:
        return
    import termios
    try:
        if termios.tcgetattr(0) != saved:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
    except termios.error:
        pass


def program() -> int:
    """The `xenrr` console script: through a server when one can run the command, else `dom0.cli`."""
    try:
        status = run_through_server(sys.argv[1:])
    except KeyboardInterrupt:           # before the command started (once it has, the child gets Ctrl-C)
        print("xenrr: interrupted", file=sys.stderr)
        return 130                      # dom0.cli.EXIT_INTERRUPTED, without importing it
    if status is not None:
        return status
    from dom0.cli import program as in_process
    return in_process()


if __name__ == "__main__":
    sys.exit(program())
