"""The log daemon: the process that drains the hypervisor's log ring into the log file.

Owns the daemon's loop (ring -> LogWriter blocks), its exit codes, how it is started and
`LogDaemon`, the recorder's handle on it. The recorder forks it (`fork_log_daemon`: no new
interpreter to start, so recording adds almost nothing to a run's start-up; a fork before the
domain is built copies little) and then hands it the log's path and header (`LogDaemon.begin`);
`start_log_daemon` does both.

Invariant: bytes leave the ring only after the block holding them is in the file, so
whatever stops the daemon, the file is valid up to its last complete block and nothing
the recorder put is lost silently: a write error, a malformed stream or a vanished
recorder ends the daemon with a one-line reason in the ring header and an exit code.
"""

import gc
import math
import os
import signal
import sys
import tempfile
import time
import traceback
from typing import IO

from dom0.logfile import LogFormatError, LogHeader, LogWriter
from dom0.logring import (
    CONSUMER_FAILED,
    CONSUMER_FINISHED,
    CONSUMER_STARTING,
    Backoff,
    LogDaemonError,
    ProducerVanished,
    RingConsumer,
    RingError,
    RingProducer,
)
from xen.logrecord import RecordError

DEFAULT_BLOCK_BYTES = 32 * 1024  # a block is written once this many record bytes are waiting ...
DEFAULT_FLUSH_SECONDS = 0.5  # ... or once the oldest waiting record is this old
DEFAULT_SYNC_SECONDS = 1.0  # fdatasync at most this often (and fsync at the end)
_IDLE_POLL_SECONDS = 1.0

EXIT_OK = 0
EXIT_WRITE_FAILED = 1  # the file could not be created or written (ENOSPC, EIO, EFBIG, ...)
EXIT_USAGE = 2  # bad arguments, no such ring, bad header
EXIT_RECORDER_VANISHED = 3  # the producer died without closing the stream; the file was closed
EXIT_BAD_RECORDS = 4  # the producer put bytes that are not whole records



def drain(ring: RingConsumer, writer: LogWriter, block_bytes: int, flush_seconds: float) -> None:
    """Write the ring's records as blocks until the producer closes the stream and all is written.

    Blocks of `block_bytes` (up to the record that reaches it) are written as soon as that
    much is waiting; what is left is written as one smaller block when the oldest waiting
    byte is `flush_seconds` old, when the producer waits for room, or at the end of the
    stream. Raises ProducerVanished (after writing what it left), OSError, RecordError.
    """
    pending = 0
    deadline = math.inf  # when the oldest pending byte (as first seen) must be in the file
    while True:
        # Sleep until a block's worth is waiting (or the first byte, to start the clock).
        at_least, timeout = (block_bytes, deadline - time.monotonic()) if pending else (1, _IDLE_POLL_SECONDS)
        try:
            pending = ring.wait_available(at_least, max(0.0, timeout))
        except ProducerVanished:
            _write_blocks(ring, writer, ring.available(), block_bytes, everything=True)
            raise
        if pending and deadline == math.inf:
            deadline = time.monotonic() + flush_seconds
        everything = time.monotonic() >= deadline or ring.producer_waiting() or ring.producer_closed()
        pending = _write_blocks(ring, writer, pending, block_bytes, everything)
        if not pending:
            deadline = math.inf
        if ring.producer_closed() and ring.available() == 0:  # closed is read first: nothing can follow
            return


def _write_blocks(ring: RingConsumer, writer: LogWriter, pending: int, block_bytes: int, everything: bool) -> int:
    """Write full blocks of the `pending` ring bytes (and the rest too if `everything`); returns what is left.

    The records go to the file straight from shared memory and leave the ring only then.
    """
    while pending >= block_bytes or (everything and pending):
        views = ring.views(pending)
        try:
            written = writer.write_block(views, block_bytes)
        finally:
            for view in views:
                view.release()
        ring.release(written)
        pending -= written
    return pending


def serve(ring: RingConsumer, path: str, header: LogHeader | None, block_bytes: int, flush_seconds: float,
          sync_seconds: float) -> int:
    """Create the log file (with `header`; None: continue the log a daemon of another process closed
    before its END, a recording handed over), drain the ring into it, report the outcome in the ring;
    the exit code."""
    try:
        if header is None:
            writer = LogWriter.reopen(path, sync_interval=sync_seconds, closed=True)
        else:
            writer = LogWriter(path, header, sync_interval=sync_seconds)
    except OSError as error:
        ring.report_failure(f"cannot {'create' if header else 'continue'} log file {path}: {error.strerror}")
        return EXIT_WRITE_FAILED
    except LogFormatError as error:
        ring.report_failure(f"cannot continue log file {path}: {error}")
        return EXIT_WRITE_FAILED
    ring.report_running()
    try:
        drain(ring, writer, block_bytes, flush_seconds)
        writer.close()
    except OSError as error:
        _close_quietly(writer)
        ring.report_failure(
            f"cannot write log file {path}: {error.strerror}; the log holds the first {writer.records_written} records"
        )
        return EXIT_WRITE_FAILED
    except RecordError as error:
        _close_quietly(writer)
        ring.report_failure(f"the recorder put malformed records: {error}")
        return EXIT_BAD_RECORDS
    except ProducerVanished as error:
        _close_quietly(writer)
        ring.report_failure(str(error))
        return EXIT_RECORDER_VANISHED
    ring.report_finished()
    return EXIT_OK


def _close_quietly(writer: LogWriter) -> None:
    """Try to finish the file after a failure; if even that fails it ends at its last block."""
    try:
        writer.close()
    except OSError:
        pass


def _run(ring_name: str, path: str, header_bytes: bytes, block_bytes: int, flush_seconds: float,
         sync_seconds: float, doorbell: int | None = None) -> int:
    """The daemon's life: attach to the ring, write the log, report; the exit code."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit is a write error (EFBIG), not death
    try:
        ring = RingConsumer(ring_name)
        ring.doorbell = doorbell
    except RingError as error:
        print(f"xenrr log daemon: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        header = LogHeader.from_bytes(header_bytes) if header_bytes else None
    except LogFormatError as error:
        ring.report_failure(f"the recorder sent a bad log header: {error}")
        return EXIT_USAGE
    code = serve(ring, path, header, block_bytes, flush_seconds, sync_seconds)
    ring.detach()
    return code


def _forked(ring_name: str, requests: tuple[int, int], doorbell: tuple[int, int], stderr: int, block_bytes: int,
            flush_seconds: float, sync_seconds: float) -> int:
    """The forked daemon: a session of its own (the terminal's ^C and ^Z go to the recorder, which ends
    the stream), no standard input or output, stderr into the recorder's file, then the path and header
    from the recorder's pipe (path, a nul, the header bytes - none: continue that log; nothing at all:
    the recorder gave up before it began); the doorbell pipe's read end wakes its waits when the recorder
    closes the other end (LogDaemon.wait)."""
    os.close(doorbell[1])
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(stderr, 2)
    os.close(requests[1])                # the recorder's end: the read below ends when the recorder closes its copy
    with os.fdopen(requests[0], "rb") as pipe:
        request = pipe.read()
    if not request:
        return EXIT_USAGE
    path, _, header_bytes = request.partition(b"\0")
    return _run(ring_name, os.fsdecode(path), header_bytes, block_bytes, flush_seconds, sync_seconds, doorbell[0])


# Daemons that finished their logs and were left to exit (LogDaemon.wait), reaped by the next fork.
_exiting: list[int] = []


def _reap_exited() -> None:
    for pid in list(_exiting):
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                continue
        except ChildProcessError:
            pass
        _exiting.remove(pid)


class LogDaemon:
    """The recorder's handle on a forked log daemon process."""

    def __init__(self, pid: int, ring: RingProducer, stderr: IO[bytes], requests: int, doorbell: int) -> None:
        self.pid = pid
        self._status: int | None = None      # the exit status once reaped (negative: the signal that killed it)
        self._ring = ring
        self._stderr = stderr  # a temporary file: read once the daemon exited, for a crash's last line
        self._stderr_tail = ""
        self._requests: int | None = requests    # the daemon's pipe, until `begin` sends the path and header
        self._doorbell: int | None = doorbell    # closed once the stream is: wakes the daemon (RingConsumer.doorbell)

    def alive(self) -> bool:
        return self._reap(block=False) is None

    def _reap(self, block: bool) -> int | None:
        if self._status is None:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            if pid:
                self._status = os.waitstatus_to_exitcode(status)
                gc.unfreeze()
        return self._status

    def _finished_or_exit_code(self, timeout: float | None) -> int | None:
        """EXIT_OK once the daemon reports the log finished, its exit status if it exits first (None: neither
        within `timeout`)."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        backoff = Backoff()
        while self._reap(block=False) is None:
            if self._ring.consumer_state() == CONSUMER_FINISHED:
                _exiting.append(self.pid)
                gc.unfreeze()
                return EXIT_OK
            if time.monotonic() >= deadline:
                return None
            backoff.sleep()
        return self._status

    def begin(self, path: str | os.PathLike[str], header: LogHeader | None, startup_timeout: float = 10.0) -> None:
        """Hand the forked daemon its log file and header (None: it continues the log at `path`, which
        the daemon of another process closed before its END); returns once it writes the log.

        The ring's name is unlinked once the daemon has attached (or failed): no segment is left
        behind in /dev/shm whatever happens next. LogDaemonError (with the daemon's reason) if it
        cannot start, e.g. the file cannot be created.
        """
        request = os.fsencode(path) + b"\0" + (header.to_bytes() if header is not None else b"")
        try:
            try:
                with os.fdopen(self._requests, "wb") as pipe:
                    pipe.write(request)
            except BrokenPipeError:
                pass  # it died before reading; its exit status tells why
            self._requests = None
            self._wait_running(startup_timeout)
        finally:
            self._ring.unlink()

    def _ring_doorbell(self) -> None:
        if self._doorbell is not None:
            os.close(self._doorbell)
            self._doorbell = None

    def abandon(self) -> None:
        """The recording will not happen: a daemon that was never begun exits at once."""
        self._ring_doorbell()
        if self._requests is not None:
            os.close(self._requests)
            self._requests = None
        self._reap(block=True)
        self._stderr.close()
        self._ring.unlink()

    def _wait_running(self, startup_timeout: float) -> None:
        ring = self._ring
        deadline = time.monotonic() + startup_timeout
        backoff = Backoff()
        while ring.consumer_state() == CONSUMER_STARTING and self.alive():
            if time.monotonic() > deadline:
                self._ring_doorbell()
                os.kill(self.pid, signal.SIGKILL)
                self._reap(block=True)
                self._stderr.close()
                raise LogDaemonError(f"the log daemon did not start within {startup_timeout:g} s")
            backoff.sleep()
        if ring.consumer_state() == CONSUMER_FAILED or not self.alive():
            self.wait()  # raises LogDaemonError with the daemon's reason
            raise LogDaemonError(f"the log daemon (pid {self.pid}) exited before it started")

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the daemon has finished the log (close the ring first) - it says so in the ring once the
        file is complete and synced - or has exited; LogDaemonError says why if it failed. A daemon that
        finished is not waited for while it exits: its exit (the kernel tearing down a copy of the
        recorder, a few ms) is on nobody's path; it is reaped later (`_reap_exited`)."""
        self._ring_doorbell()
        code = self._finished_or_exit_code(timeout)
        if code is None:
            raise TimeoutError(f"the log daemon (pid {self.pid}) is still running after {timeout:g} s")
        if not self._stderr.closed:
            self._stderr.seek(0)
            lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
            self._stderr_tail = lines[-1] if lines else ""
            self._stderr.close()
        if code != EXIT_OK:
            raise LogDaemonError(self._failure(code))

    def _failure(self, code: int) -> str:
        """Why the exited daemon failed: its own report, the signal that killed it, or its last words."""
        if self._ring.consumer_state() == CONSUMER_FAILED:
            return self._ring.consumer_message()
        if code < 0:
            return f"the log daemon (pid {self.pid}) was killed by {signal.Signals(-code).name}"
        return self._stderr_tail or f"the log daemon (pid {self.pid}) exited with status {code}"


def fork_log_daemon(
    ring: RingProducer,
    *,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    sync_seconds: float = DEFAULT_SYNC_SECONDS,
) -> LogDaemon:
    """Fork a log daemon for `ring`; it waits for `LogDaemon.begin` (or `abandon`). Fork it early - before
    the domain is built, which it then does not copy - and begin once the header is known."""
    _reap_exited()
    requests_read, requests_write = os.pipe()
    doorbell_read, doorbell_write = os.pipe()
    stderr = tempfile.TemporaryFile()
    for stream in (sys.stdout, sys.stderr):       # what the recorder buffered is written once, by the recorder
        stream.flush()
    # The recorder's objects out of reach of its garbage collector while the daemon shares their pages:
    # a collection would write to every one of them and so copy every page (~8 ms more per recording,
    # measured). Collected again once the daemon is gone (LogDaemon._reap).
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        code = EXIT_WRITE_FAILED
        try:
            code = _forked(ring.name, (requests_read, requests_write), (doorbell_read, doorbell_write),
                           stderr.fileno(), block_bytes, flush_seconds, sync_seconds)
        except BaseException:                    # the last line of stderr says why
            traceback.print_exc()
        finally:
            os._exit(code)                       # never the recorder's exit handlers, never its buffers
    os.close(requests_read)
    os.close(doorbell_read)
    return LogDaemon(pid, ring, stderr, requests_write, doorbell_write)


def start_log_daemon(
    ring: RingProducer,
    path: str | os.PathLike[str],
    header: LogHeader,
    *,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    sync_seconds: float = DEFAULT_SYNC_SECONDS,
    startup_timeout: float = 10.0,
) -> LogDaemon:
    """Start a log daemon draining `ring` into a new log file at `path`; returns once it runs
    (`fork_log_daemon`, then `LogDaemon.begin`)."""
    daemon = fork_log_daemon(ring, block_bytes=block_bytes, flush_seconds=flush_seconds, sync_seconds=sync_seconds)
    daemon.begin(path, header, startup_timeout)
    return daemon

