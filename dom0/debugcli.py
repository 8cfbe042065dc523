"""The debugging commands of the xenrr CLI: `xenrr serve` (a gdbstub on a replay) and `xenrr debug`
(GDB itself, with the guest's symbols and the rr-* commands, connected to such a stub).

Owns their arguments and how their processes are started. dom0/cli.py hooks them in
(`add_debug_commands`, `DEBUG_COMMANDS`) and reports `DebugCommandError` like its own usage errors:
one line, exit status 2. Invariant: the stub listens on 127.0.0.1 only, and `xenrr debug` never
leaves a stub running after GDB has exited.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from importlib import resources
from pathlib import Path

from dom0.cliargs import add_goto_option, add_image_option, add_session_argument
from dom0.replay import ReplaySession
from gdbext.locate import GdbNotFound, find_gdb

GDB_EXTENSION = "xenrr_gdb.py"


class DebugCommandError(Exception):
    """Bad input to `serve` or `debug`: reported in one line, exit status 2."""


def add_debug_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `serve` and `debug` to the xenrr command parser."""
    serve = subparsers.add_parser(
        "serve", help="serve a recording to GDB (remote protocol, reverse execution)",
        description="Replay SESSION under a GDB remote-protocol server on 127.0.0.1, stopped at its first "
                    "instruction, and serve it until the client kills or detaches (a client that just "
                    "disconnects can be followed by another). Prints `listening on 127.0.0.1:PORT` once ready. "
                    "Connect with `target remote :PORT` in GDB, the guest ELF loaded; `monitor help` lists the "
                    "replay's own commands (events, goto, when, bookmark, damage).")
    add_session_argument(serve)
    add_goto_option(serve)
    serve.add_argument("--port", metavar="N", type=int, default=0,
                       help="TCP port to listen on (default: any free port, printed)")
    add_image_option(serve)

    debug = subparsers.add_parser(
        "debug", help="debug a recording in GDB, forwards and backwards",
        description="Start GDB with the guest's symbols and the xenrr GDB extension, connected to a replay of "
                    "SESSION stopped at its first instruction. Besides GDB's own commands (including "
                    "reverse-continue, reverse-step, ...) there are rr-goto, rr-events, rr-when, rr-bookmark "
                    "(`help rr-goto`, ...). Arguments after `--` go to GDB, after the connection: "
                    "`xenrr debug s.xrr -- -batch -ex bt`.")
    add_session_argument(debug)
    add_goto_option(debug)
    add_image_option(debug)
    debug.usage = "xenrr debug [-h] [-g EVENT] [--image GUEST] SESSION [-- GDBARGS...]"
    debug.set_defaults(passes_through=True)        # dom0/cli.py puts what follows `--` in args.passthrough


def _open_session(path: Path, image: Path | None) -> ReplaySession:
    """The session, after saying on stderr what a damaged log lost."""
    try:
        session = ReplaySession(path, image)
    except OSError as error:
        raise DebugCommandError(f"cannot read {path}: {error.strerror}") from None
    if session.loss():
        print(f"xenrr: warning: {session.loss()}", file=sys.stderr)
    return session


def _check_event(session: ReplaySession, number: int) -> None:
    try:
        session.event(number)
    except ValueError as error:
        raise DebugCommandError(f"--goto: {error}") from None


def command_serve(args: argparse.Namespace) -> int:
    """`xenrr serve`: returns 0 once a client killed or detached."""
    from stub.server import GdbServer, ServerError, listen      # here: every other command starts without them
    from dom0.snapshots import SnapshotFile
    from stub.timeline import Timeline

    def warn(message: str) -> None:
        print(f"xenrr: warning: {message}", file=sys.stderr, flush=True)

    if not 0 <= args.port <= 65535:
        raise DebugCommandError(f"--port must be between 0 and 65535, not {args.port}")
    session = _open_session(args.session, args.image)
    try:
        timeline = Timeline(session, stored=SnapshotFile.beside(args.session, warn), warn=warn)
        if args.goto is not None:
            _check_event(session, args.goto)
            timeline.goto_event(args.goto)
        try:
            listener = listen(args.port)
        except ServerError as error:
            raise DebugCommandError(str(error)) from None
        with listener:
            print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
            GdbServer(timeline).serve(listener)
    finally:
        session.close()
    return 0


def command_debug(args: argparse.Namespace) -> int:
    """`xenrr debug`: runs GDB in this terminal and returns its exit status."""
    try:
        gdb = find_gdb()
    except GdbNotFound as error:
        raise DebugCommandError(str(error)) from None
    session = _open_session(args.session, args.image)      # check the recording before GDB starts
    image = session.image_path
    if args.goto is not None:
        _check_event(session, args.goto)
    session.close()
    extension = resources.files("gdbext") / GDB_EXTENSION
    replay = ["rr-replay", str(args.session)] + (["--image", str(args.image)] if args.image else [])
    command = [gdb, "-q", str(image), "-x", str(extension), "-ex", shlex.join(replay)]
    if args.goto is not None:
        command += ["-ex", f"rr-goto {args.goto}"]
    command += args.passthrough
    # rr-replay starts `xenrr serve` with this very interpreter and project.
    environment = dict(os.environ, XENRR=shlex.join([sys.executable, "-m", "dom0.cli"]))
    # Ctrl-C belongs to GDB. Not SIG_IGN: an ignored signal would stay ignored in GDB's children.
    previous = signal.signal(signal.SIGINT, lambda number, frame: None)
    try:
        return subprocess.run(command, env=environment).returncode
    finally:
        signal.signal(signal.SIGINT, previous)


DEBUG_COMMANDS = {"serve": command_serve, "debug": command_debug}
