"""The pinned replay: a replay (or gdbstub) process gets a host core of its own while a host runs.

Owns the client side of a core reservation. The replaying process asks the host on its control
socket (`reserve-core`); the host moves every pCPU worker off one core and answers with it; the
process pins itself there (os.sched_setaffinity). The reservation lasts as long as the connection:
when the replay ends (or dies), the host gives the core back to its workers. This is what the
system xenrr comes from did with a pinned scheduler: neighbours cannot slow a replay down. Replay
determinism never depended on it - only the replay's speed does.
Invariant: without a host (no socket, or one nobody answers on), or when the host has no core to spare, the replay runs as before (the
latter says so in one line); the process's affinity is restored when the reservation ends.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from host.control import ControlError, connect, default_socket_path, send_request


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
        print(f"xenrr: replaying on core {core}, kept free of the host's domains ({path})", file=sys.stderr)
        yield core
    finally:
        os.sched_setaffinity(0, previous)
        connection.close()
