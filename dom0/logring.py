"""The log ring: a single-producer/single-consumer byte ring in POSIX shared memory, no locks.

The hypervisor (producer) puts chunks of encoded records; the log daemon (consumer) reads
them in place and releases them once they are in the file. A full ring makes the producer
wait (back-pressure, never loss); a consumer that died or failed turns that wait into
LogDaemonDied / LogDaemonError, and a producer that vanished turns the consumer's wait into
ProducerVanished (what it published stays readable).

Layout (one page of header, then a power-of-two data area), all counters little-endian u64:
    word 0 magic, 1 capacity, 2 producer pid, 3 consumer pid
    word 8 head      (producer-written: data bytes published, absolute, including padding)
    word 9 wrap_at   (producer-written: absolute position where the latest padding starts)
    word 10 producer state (OPEN / CLOSED), word 11 producer waiting for room (0/1)
    word 16 tail     (consumer-written: bytes released, absolute)
    word 17 consumer state (STARTING / RUNNING / FINISHED / FAILED)
    bytes 192..703 consumer failure message (UTF-8, NUL-padded), written before FAILED
A chunk (at most half the capacity) is never split: when it does not fit before the end of
the data area, the producer stores wrap_at = head and skips the rest of the lap (padding),
then writes the chunk at the start. head - tail never exceeds the capacity, so there is at
most one padding inside [tail, head), the one wrap_at names.

Invariant: the consumer sees exactly the bytes put, in order, each chunk contiguous; bytes
are overwritten only after the consumer released them. Every counter is written by one side
only, with one aligned 8-byte store (memoryview cast to 'Q'); each side publishes its
counter after the data it covers (see docs/log-format.md, "Memory ordering").
"""

import mmap
import os
import resource
import select
import time

from xen.logrecord import BytesLike

DEFAULT_CAPACITY = 1 << 20
_HEADER_BYTES = 4096
_MAGIC = int.from_bytes(b"XRRRING1", "little")
_W_MAGIC, _W_CAPACITY, _W_PRODUCER_PID, _W_CONSUMER_PID = 0, 1, 2, 3
_W_HEAD, _W_WRAP_AT, _W_PRODUCER_STATE, _W_PRODUCER_WAITING = 8, 9, 10, 11
_W_TAIL, _W_CONSUMER_STATE = 16, 17
_MESSAGE_OFFSET, _MESSAGE_BYTES = 192, 512
_NO_WRAP = (1 << 64) - 1

PRODUCER_CLOSED = 1  # word 10 is 0 while the stream is open
CONSUMER_STARTING, CONSUMER_RUNNING, CONSUMER_FINISHED, CONSUMER_FAILED = 0, 1, 2, 3

_LIVENESS_INTERVAL = 0.05  # seconds between checks that the other side still exists
_ATTACH_TIMEOUT = 10.0  # how long a producer waits for room before any consumer attached


class RingError(Exception):
    """Misuse of the ring or a segment that is not a log ring."""


class LogDaemonError(RingError):
    """The consumer (log daemon) stopped with an error; the message says which."""


class LogDaemonDied(LogDaemonError):
    """The consumer vanished (killed, crashed) while the producer still had records for it."""


class ProducerVanished(RingError):
    """The producer is gone without closing the stream; what it published is still readable."""


def process_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (a dead child not yet reaped counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


class Backoff:
    """Polling sleeps that start short (low latency) and grow to a cap (low idle cost)."""

    def __init__(self) -> None:
        self._delay = 20e-6

    def sleep(self, doorbell: int | None = None) -> bool:
        """Sleep; with a `doorbell` (a pipe's read end), wake as soon as it is readable. Whether it was."""
        rung = False
        if doorbell is None:
            time.sleep(self._delay)
        else:
            rung = bool(select.select([doorbell], [], [], self._delay)[0])
        self._delay = min(self._delay * 2, 2e-3)
        return rung


def _segment_path(name: str) -> str:
    """Where a POSIX shared-memory segment of this name lives on Linux."""
    return f"/dev/shm/{name.lstrip('/')}"


class _RingMemory:
    """The mapped segment: the header words and the data area."""

    def __init__(self, name: str, buffer: memoryview) -> None:
        self.name = name
        self._buffer = buffer
        self._words = buffer[:_HEADER_BYTES].cast("Q")
        self.capacity = self._words[_W_CAPACITY]
        self._mask = self.capacity - 1
        self._data = buffer[_HEADER_BYTES : _HEADER_BYTES + self.capacity]

    def _release_views(self) -> None:
        self._data.release()
        self._words.release()
        self._buffer.release()

    def _message(self) -> str:
        raw = bytes(self._buffer[_MESSAGE_OFFSET : _MESSAGE_OFFSET + _MESSAGE_BYTES])
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


class RingProducer(_RingMemory):
    """The writing side (the hypervisor's log sink). The process that creates it is the producer."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 64 or capacity & (capacity - 1):
            raise ValueError(f"ring capacity must be a power of two >= 64, not {capacity}")
        size = _HEADER_BYTES + capacity
        # A segment is a file: under a lower file-size limit (ulimit -f) its ftruncate would fail (or
        # raise SIGXFSZ). Say so before trying.
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and limit < size:
            raise RingError(f"the log ring needs {size} bytes of shared memory, more than the file size limit "
                            f"(ulimit -f) of {limit} bytes")
        # Created as a file in /dev/shm (what shm_open does on Linux), not with multiprocessing's
        # SharedMemory: that costs `xenrr record` the multiprocessing package and a resource-tracker
        # process started beside the guest. The name is unlinked once the consumer attached.
        name = f"xenrr-ring-{os.getpid()}-{os.urandom(6).hex()}"
        try:
            fd = os.open(_segment_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise RingError(f"cannot create the log ring's shared memory: {error.strerror}") from None
        try:
            os.ftruncate(fd, size)
            self._mmap = mmap.mmap(fd, size)
        except OSError as error:
            os.unlink(_segment_path(name))
            raise RingError(f"cannot create the log ring's shared memory: {error.strerror}") from None
        finally:
            os.close(fd)
        buffer = memoryview(self._mmap)
        words = buffer[:_HEADER_BYTES].cast("Q")
        words[_W_CAPACITY] = capacity
        words[_W_PRODUCER_PID] = os.getpid()
        words[_W_WRAP_AT] = _NO_WRAP
        words[_W_MAGIC] = _MAGIC
        words.release()
        super().__init__(name, buffer)
        self._head = 0
        self._closed = False
        self._linked = True

    def put(self, data: BytesLike) -> None:
        """Copy one chunk of whole encoded records in, waiting while the ring is full.

        A chunk may be at most half the capacity: padding to the end of the data area plus
        the chunk must fit in the ring.
        """
        chunk = memoryview(data)
        if chunk.format != "B" or chunk.ndim != 1:
            chunk = chunk.cast("B")
        size = len(chunk)
        if self._closed:
            raise RingError("put() after close(): the stream has ended")
        if size > self.capacity // 2:
            raise ValueError(f"chunk of {size} bytes exceeds half the ring ({self.capacity // 2} of {self.capacity} bytes)")
        if size == 0:
            return
        words = self._words
        if words[_W_CONSUMER_STATE] == CONSUMER_FAILED:
            raise LogDaemonError(self._message())
        head = self._head
        position = head & self._mask
        room_to_end = self.capacity - position
        needed = size if size <= room_to_end else room_to_end + size
        if self.capacity - (head - words[_W_TAIL]) < needed:
            self._wait_for_room(needed)
        if size > room_to_end:
            words[_W_WRAP_AT] = head
            head += room_to_end
            position = 0
        self._data[position : position + size] = chunk
        head += size
        words[_W_HEAD] = head
        self._head = head

    def _wait_for_room(self, needed: int) -> None:
        words = self._words
        words[_W_PRODUCER_WAITING] = 1
        backoff = Backoff()
        started = next_check = time.monotonic()
        try:
            while self.capacity - (self._head - words[_W_TAIL]) < needed:
                backoff.sleep()
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + _LIVENESS_INTERVAL
                    if words[_W_CONSUMER_PID] == 0 and now - started > _ATTACH_TIMEOUT:
                        raise LogDaemonDied(f"no log daemon attached to ring {self.name} within {_ATTACH_TIMEOUT:g} s")
                    self.check_consumer()
        finally:
            words[_W_PRODUCER_WAITING] = 0

    @property
    def published(self) -> int:
        """Data bytes put so far (absolute, padding included): where the last put() ended."""
        return self._head

    def released(self) -> int:
        """Data bytes the consumer released (absolute): everything before it is in the log file."""
        return self._words[_W_TAIL]

    def check_consumer(self) -> None:
        """Raise LogDaemonError if the consumer reported a failure, LogDaemonDied if it vanished."""
        state = self._words[_W_CONSUMER_STATE]
        if state == CONSUMER_FAILED:
            raise LogDaemonError(self._message())
        pid = self._words[_W_CONSUMER_PID]
        if pid and state != CONSUMER_FINISHED and not process_alive(pid):
            raise LogDaemonDied(f"the log daemon (pid {pid}) died; the log ends with what it had written")

    def consumer_state(self) -> int:
        """One of CONSUMER_STARTING, CONSUMER_RUNNING, CONSUMER_FINISHED, CONSUMER_FAILED."""
        return self._words[_W_CONSUMER_STATE]

    def consumer_message(self) -> str:
        """The consumer's failure message ('' unless its state is CONSUMER_FAILED)."""
        return self._message()

    def close(self) -> None:
        """Mark the end of the stream: everything put so far is all there is."""
        self._closed = True
        self._words[_W_PRODUCER_STATE] = PRODUCER_CLOSED

    def unlink(self) -> None:
        """Remove the segment's name (mappings stay valid); do it once the consumer attached."""
        if self._linked:
            self._linked = False
            os.unlink(_segment_path(self.name))

    def detach(self) -> None:
        """Unmap the segment (and unlink it if still linked). The ring is unusable afterwards."""
        self.unlink()
        self._release_views()
        self._mmap.close()


class RingConsumer(_RingMemory):
    """The reading side (the log daemon). Attaches to a segment a RingProducer created."""

    def __init__(self, name: str) -> None:
        try:
            fd = os.open(_segment_path(name), os.O_RDWR | os.O_CLOEXEC)
        except OSError as error:
            raise RingError(f"cannot open log ring {name}: {error.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size < _HEADER_BYTES:
                raise RingError(f"{name} is not a log ring (only {size} bytes)")
            self._mmap = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        buffer = memoryview(self._mmap)
        words = buffer[:_HEADER_BYTES].cast("Q")
        magic, capacity = words[_W_MAGIC], words[_W_CAPACITY]
        words.release()
        if magic != _MAGIC or capacity < 64 or capacity & (capacity - 1) or _HEADER_BYTES + capacity > size:
            buffer.release()
            self._mmap.close()
            raise RingError(f"{name} is not a log ring")
        super().__init__(name, buffer)
        self._tail = self._words[_W_TAIL]
        self._producer_pid = self._words[_W_PRODUCER_PID]
        self._next_liveness_check = 0.0
        self._words[_W_CONSUMER_PID] = os.getpid()
        # A pipe the producer's side closes once it has closed the stream (dom0/logd.py): a wait then ends at
        # once instead of at its next poll. Rung once, it is forgotten (EOF stays readable).
        self.doorbell: int | None = None

    def _ranges(self) -> list[tuple[int, int]]:
        """Absolute [start, end) ranges of unreleased data, padding left out, split at lap ends."""
        head = self._words[_W_HEAD]
        tail = self._tail
        if tail == head:
            return []
        wrap_at = self._words[_W_WRAP_AT]  # read after head: a padding below head is published
        ranges = []
        if tail <= wrap_at < head:
            if tail < wrap_at:
                ranges.append((tail, wrap_at))
            tail = (wrap_at | self._mask) + 1
        if tail < head:
            lap_end = (tail | self._mask) + 1
            if head > lap_end:
                ranges += [(tail, lap_end), (lap_end, head)]
            else:
                ranges.append((tail, head))
        return ranges

    def available(self) -> int:
        """Data bytes published and not yet released."""
        return sum(end - start for start, end in self._ranges())

    def producer_closed(self) -> bool:
        """True once the producer closed the stream (read this before available())."""
        return self._words[_W_PRODUCER_STATE] == PRODUCER_CLOSED

    def producer_waiting(self) -> bool:
        """True while the producer waits for room: release soon."""
        return self._words[_W_PRODUCER_WAITING] == 1

    def wait_available(self, at_least: int, timeout: float) -> int:
        """Wait until `at_least` bytes are available, the stream is closed, the producer waits
        for room (and something is available), or `timeout` passed; returns available().

        Raises ProducerVanished if the producer is gone without closing the stream; what it
        published before is still available.
        """
        deadline = time.monotonic() + timeout
        backoff = Backoff()
        while True:
            closed = self.producer_closed()
            available = self.available()
            if available >= at_least or closed or (available and self.producer_waiting()):
                return available
            now = time.monotonic()
            if now >= self._next_liveness_check:
                self._next_liveness_check = now + _LIVENESS_INTERVAL
                if not process_alive(self._producer_pid) and not self.producer_closed():
                    raise ProducerVanished(f"the recorder (pid {self._producer_pid}) vanished without closing the log")
            if now >= deadline:
                return available
            if backoff.sleep(self.doorbell):
                self.doorbell = None

    def views(self, size: int) -> list[memoryview]:
        """The next `size` unreleased bytes in place, as one or two memoryviews (release them)."""
        views = []
        for start, end in self._ranges():
            if size <= 0:
                break
            take = min(size, end - start)
            offset = start & self._mask
            views.append(self._data[offset : offset + take])
            size -= take
        if size > 0:
            raise RingError("views() asked for more bytes than are available")
        return views

    def release(self, size: int) -> None:
        """Give the next `size` data bytes back to the producer."""
        tail = self._tail
        for start, end in self._ranges():
            if size <= 0:
                break
            take = min(size, end - start)
            tail = start + take
            size -= take
        if size > 0:
            raise RingError("release() of more bytes than are available")
        wrap_at = self._words[_W_WRAP_AT]
        if tail == wrap_at and wrap_at < self._words[_W_HEAD]:
            tail = (wrap_at | self._mask) + 1
        self._tail = tail
        self._words[_W_TAIL] = tail

    def report_running(self) -> None:
        """Tell the producer the consumer is ready."""
        self._words[_W_CONSUMER_STATE] = CONSUMER_RUNNING

    def report_finished(self) -> None:
        """Tell the producer everything was consumed and the consumer is done."""
        self._words[_W_CONSUMER_STATE] = CONSUMER_FINISHED

    def report_failure(self, message: str) -> None:
        """Tell the producer why the consumer stops (one line); its next put() raises it."""
        raw = message.encode("utf-8")[: _MESSAGE_BYTES - 1]
        self._buffer[_MESSAGE_OFFSET : _MESSAGE_OFFSET + _MESSAGE_BYTES] = raw.ljust(_MESSAGE_BYTES, b"\0")
        self._words[_W_CONSUMER_STATE] = CONSUMER_FAILED

    def detach(self) -> None:
        """Unmap the segment (deferred while views handed out are still alive)."""
        self._release_views()
        try:
            self._mmap.close()
        except BufferError:
            pass  # a view handed out is still referenced; the mapping goes away with it
