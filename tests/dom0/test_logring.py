"""The shared-memory log ring between real processes: order, contiguity, back-pressure, liveness.

Producer and consumer run in separate processes (fork) on a real POSIX shared-memory segment.
Chunks are self-describing (a length byte, then that many bytes) so the consumer can check
that no chunk was lost, reordered or split by the wrap-around.
"""

import multiprocessing
import os
import random
import signal
import time

import pytest

from dom0.logring import (
    LogDaemonDied,
    LogDaemonError,
    ProducerVanished,
    RingConsumer,
    RingError,
    RingProducer,
)

FORK = multiprocessing.get_context("fork")


def make_chunks(count: int, seed: int, max_size: int) -> list[bytes]:
    rng = random.Random(seed)
    chunks = []
    for _ in range(count):
        body = rng.randbytes(rng.randint(0, max_size - 1))
        chunks.append(bytes([len(body)]) + body)
    return chunks


def slow_consumer(name: str, result, delay: float) -> None:
    """Drain the ring in small, slow steps; send back the chunks seen and whether the producer ever waited."""
    ring = RingConsumer(name)
    ring.report_running()
    chunks, saw_waiting, split = [], False, False
    while True:
        available = ring.wait_available(1, 5.0)
        saw_waiting |= ring.producer_waiting()
        if available == 0 and ring.producer_closed() and ring.available() == 0:
            break
        for view in ring.views(available):
            data = bytes(view)
            view.release()
            position = 0
            while position < len(data):
                end = position + 1 + data[position]
                split |= end > len(data)
                chunks.append(data[position:end])
                position = end
        ring.release(available)
        time.sleep(delay)
    ring.report_finished()
    result.send((chunks, saw_waiting, split))
    ring.detach()


def test_tiny_ring_wraps_and_applies_back_pressure_without_loss():
    chunks = make_chunks(3000, seed=1, max_size=32)
    ring = RingProducer(64)
    receive, send = FORK.Pipe(duplex=False)
    consumer = FORK.Process(target=slow_consumer, args=(ring.name, send, 0.0005))
    consumer.start()
    for chunk in chunks:
        ring.put(chunk)
    ring.close()
    got, saw_waiting, split = receive.recv()
    consumer.join()
    ring.detach()
    assert consumer.exitcode == 0
    assert not split, "a chunk was split across the end of the data area"
    assert got == chunks
    assert saw_waiting, "the producer never had to wait: the test did not exercise back-pressure"


def test_chunks_of_every_size_up_to_half_the_capacity_go_through():
    rng = random.Random(2)
    chunks = [bytes([size - 1]) + rng.randbytes(size - 1) for size in [32, 1, 31, 2, 32, 17, 15, 32, 3] * 20]
    ring = RingProducer(64)
    receive, send = FORK.Pipe(duplex=False)
    consumer = FORK.Process(target=slow_consumer, args=(ring.name, send, 0.0))
    consumer.start()
    for chunk in chunks:
        ring.put(chunk)
    ring.close()
    got, _, split = receive.recv()
    consumer.join()
    ring.detach()
    assert not split and got == chunks


def attach_and_wait(name: str, ready, how: str) -> None:
    """Attach as consumer, then die (SIGKILL) or report a failure, without reading anything."""
    ring = RingConsumer(name)
    ring.report_running()
    if how == "fail":
        ring.report_failure("disk on fire")
    ready.send(True)
    if how == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


def test_producer_notices_a_consumer_that_died():
    ring = RingProducer(64)
    receive, send = FORK.Pipe(duplex=False)
    consumer = FORK.Process(target=attach_and_wait, args=(ring.name, send, "die"))
    consumer.start()
    receive.recv()
    with pytest.raises(LogDaemonDied, match=r"log daemon \(pid \d+\) died"):
        for _ in range(100):
            ring.put(b"x" * 16)  # the ring fills; waiting for room finds the consumer dead
    consumer.join()
    ring.detach()


def test_producer_hears_the_consumers_failure_message():
    ring = RingProducer(64)
    receive, send = FORK.Pipe(duplex=False)
    consumer = FORK.Process(target=attach_and_wait, args=(ring.name, send, "fail"))
    consumer.start()
    receive.recv()
    with pytest.raises(LogDaemonError, match="disk on fire"):
        ring.put(b"x")
    consumer.kill()
    consumer.join()
    ring.detach()


def producer_process(names, go, how: str, chunks: list[bytes]) -> None:
    """Create a ring, publish its name, put `chunks` once the consumer attached, then close or vanish."""
    ring = RingProducer(256)
    names.send(ring.name)
    go.recv()
    ring.unlink()
    for chunk in chunks:
        ring.put(chunk)
    if how == "close":
        ring.close()
        go.recv()
    os._exit(0)


@pytest.mark.parametrize("how", ["close", "vanish"])
def test_consumer_tells_a_closed_stream_from_a_vanished_producer(how):
    chunks = make_chunks(10, seed=3, max_size=20)
    names_in, names_out = FORK.Pipe(duplex=False)
    go_in, go_out = FORK.Pipe(duplex=False)
    producer = FORK.Process(target=producer_process, args=(names_out, go_in, how, chunks))
    producer.start()
    ring = RingConsumer(names_in.recv())
    go_out.send(True)
    received = b""
    ended = None
    while ended is None:
        try:
            ring.wait_available(1, 5.0)
        except ProducerVanished as vanished:
            ended = vanished
        available = ring.available()
        for view in ring.views(available):
            received += bytes(view)
            view.release()
        ring.release(available)
        if ended is None and ring.producer_closed() and ring.available() == 0:
            ended = "closed"
    if how == "close":
        go_out.send(True)
    producer.join()
    ring.detach()
    assert received == b"".join(chunks), "everything published before the end was read"
    if how == "close":
        assert ended == "closed"
    else:
        assert isinstance(ended, ProducerVanished) and "vanished without closing" in str(ended)


def test_misuse_is_refused_with_clear_errors():
    with pytest.raises(ValueError, match="power of two"):
        RingProducer(100)
    ring = RingProducer(64)
    with pytest.raises(ValueError, match="exceeds half the ring"):
        ring.put(bytes(33))
    ring.close()
    with pytest.raises(RingError, match="after close"):
        ring.put(b"x")
    ring.detach()
    assert not os.path.exists(f"/dev/shm/{ring.name}")
    with pytest.raises(RingError, match="cannot open log ring"):
        RingConsumer("xenrr-no-such-ring")
