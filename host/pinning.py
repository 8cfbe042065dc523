"""The pinned replay: a replay (or gdbstub) process gets a host core of its own while a host runs.

Owns the client side of a core reservation. The replaying process asks the host on its control
socket (`reserve-core`); the host moves every thread of its own (pCPU workers, log daemons) off one
core and answers with it; the process pins itself there (os.sched_setaffinity) and, where it may, takes the highest scheduling
priority (nice -20 for itself and its autogroup), so that what else runs on the machine - processes
the kernel's balancing moves onto the reserved core - barely takes time from it. The reservation lasts as long as the connection:
when the replay ends (or dies), the host gives the core back to its workers. This is what the
system xenrr comes from did with a pinned scheduler: neighbours cannot slow a replay down. Replay
determinism never depended on it - only the replay's speed does.
Invariant: without a host (no socket, or one nobody answers on), or when the host has no core to spare, the replay runs as before (the
latter says so in one line); the process's affinity and priority are restored when the reservation ends.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from host.control import ControlError, connect, default_socket_path, send_request

# The replaying thread's (and its autogroup's) nice value on its reserved core, where the system allows
# it (CAP_SYS_NICE): the host's workers are off the core, and other processes the kernel puts there
# get about 1 % of it each against this weight (the closest to owning the core without an isolated
# CPU set).
REPLAY_NICE = -20
AUTOGROUP = Path("/proc/self/autogroup")
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def pinned_replay() -> Iterator[int | None]:
    """Run the body on a core reserved on the running host (at the default socket); the core, or None."""
    path = default_socket_path()
    if not path.exists():
        yield None
        return
    try:
        connection = connect(path)
    except ControlError:            # a socket left behind by a host that is gone: nothing to keep off
        yield None
        return
    try:
        core = send_request(connection, {"cmd": "reserve-core"})["core"]
    except ControlError as error:
        connection.close()
        print(f"xenrr: not pinned to a core of its own: {error}", file=sys.stderr)
        yield None
        return
    previous = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {core})
        with _highest_priority() as raised:
            priority = ", at the highest scheduling priority" if raised else ""
            print(f"xenrr: replaying on core {core}, kept free of the host's domains{priority} ({path})",
                  file=sys.stderr)
            yield core
    finally:
        os.sched_setaffinity(0, previous)
        connection.close()


@contextmanager
def _highest_priority() -> Iterator[bool]:
    """Nice -20 for this thread and for its autogroup (Linux groups a session's processes and shares
    the CPU between such groups first, so a thread's own nice counts only inside its session), where
    this process may raise them (CAP_SYS_NICE); both are put back afterwards. True if either was raised.
    The autogroup is the whole session's (a terminal's jobs): it is raised only while the replay runs
    in the main thread, which SIGTERM and SIGHUP end through this restoring code (only a SIGKILL
    leaves the session's group raised until the session ends)."""
    undo: list = []
    raised = False
    try:
        previous = os.getpriority(os.PRIO_PROCESS, 0)
        try:
            os.setpriority(os.PRIO_PROCESS, 0, REPLAY_NICE)
            undo.append(lambda: os.setpriority(os.PRIO_PROCESS, 0, previous))
            raised = True
        except PermissionError:
            pass
        group = _autogroup_nice()
        if group is not None and threading.current_thread() is threading.main_thread():
            for number in ENDING_SIGNALS:          # so that the finally below runs when the replay is told to end
                handler = signal.signal(number, _end)
                undo.append(lambda number=number, handler=handler: signal.signal(number, handler))
            try:
                AUTOGROUP.write_text(str(REPLAY_NICE))
                undo.append(lambda: AUTOGROUP.write_text(str(group)))
                raised = True
            except OSError:
                pass
        yield raised
    finally:
        for step in reversed(undo):
            try:
                step()
            except OSError:
                pass


def _end(number: int, frame) -> None:
    raise SystemExit(128 + number)


def _autogroup_nice() -> int | None:
    """The nice value of this process's autogroup ("/autogroup-N nice V"); None without autogroups."""
    try:
        fields = AUTOGROUP.read_text().split()
        return int(fields[fields.index("nice") + 1])
    except (OSError, ValueError, IndexError):
        return None
