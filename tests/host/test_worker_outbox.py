"""The hypervisor never blocks on a worker's full pipe (host/hypervisor.py's Worker outbox): a worker in
the middle of a long quantum may itself be blocked sending its console output or its domains' xenstore
changes up, and only the hypervisor reading them frees it - had the hypervisor blocked in a send to
that worker, both would wait for ever while every other domain's console and request stalled."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading

from host.hypervisor import Worker

MESSAGES = 4000
PAYLOAD = b"x" * 400           # 4000 messages of ~0.5 KB: several times what a pipe's buffer holds


def _count_then_report(connection) -> None:
    """A stand-in worker process: reads what it is sent, then says how many arrived in order."""
    received = 0
    while (message := connection.recv()) != "end":
        assert message["id"] == received
        received += 1
    connection.send(received)


def test_sending_to_a_worker_that_does_not_read_never_blocks_and_loses_nothing():
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_count_then_report, args=(theirs,), daemon=True)
    process.start()
    theirs.close()
    worker = Worker(0, 0, process, ours)
    os.kill(process.pid, signal.SIGSTOP)               # a worker that reads nothing for a while
    try:
        sending = threading.Thread(target=lambda: [worker.send({"id": index, "payload": PAYLOAD})
                                                   for index in range(MESSAGES)])
        sending.start()
        sending.join(60)                                # only a hang takes this long
        assert not sending.is_alive(), "the hypervisor blocked on the worker's full pipe"
        assert not worker.outbox.empty()                # most of it still waits: the pipe is full
    finally:
        os.kill(process.pid, signal.SIGCONT)
    worker.send("end")
    worker.close_outbox()
    assert ours.poll(60) and ours.recv() == MESSAGES    # every message, in the order sent
    process.join(30)
    assert process.exitcode == 0
