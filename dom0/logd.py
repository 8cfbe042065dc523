"""The log daemon: the process that drains the hypervisor's log ring into the log file.

Owns the daemon's loop (ring -> LogWriter blocks), its entry point (`python -m dom0.logd`,
header bytes on stdin), its exit codes, and `start_log_daemon`, the recorder's handle on it.

Invariant: bytes leave the ring only after the block holding them is in the file, so
whatever stops the daemon, the file is valid up to its last complete block and nothing
the recorder put is lost silently: a write error, a malformed stream or a vanished
recorder ends the daemon with a one-line reason in the ring header and an exit code.
"""

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from dom0.logfile import LogFormatError, LogHeader, LogWriter
from dom0.logring import (
    CONSUMER_FAILED,
    CONSUMER_STARTING,
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

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


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


def serve(ring: RingConsumer, path: str, header: LogHeader, block_bytes: int, flush_seconds: float, sync_seconds: float) -> int:
    """Create the log file, drain the ring into it, report the outcome in the ring; the exit code."""
    try:
        writer = LogWriter(path, header, sync_interval=sync_seconds)
    except OSError as error:
        ring.report_failure(f"cannot create log file {path}: {error.strerror}")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dom0.logd", description="Drain a xenrr log ring into a log file (header bytes on stdin).")
    parser.add_argument("--ring", required=True, help="name of the shared-memory log ring")
    parser.add_argument("--block-bytes", type=int, default=DEFAULT_BLOCK_BYTES)
    parser.add_argument("--flush-seconds", type=float, default=DEFAULT_FLUSH_SECONDS)
    parser.add_argument("--sync-seconds", type=float, default=DEFAULT_SYNC_SECONDS)
    parser.add_argument("path", help="log file to create")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit is a write error (EFBIG), not death
    header_bytes = sys.stdin.buffer.read()
    try:
        ring = RingConsumer(args.ring)
    except RingError as error:
        print(f"xenrr log daemon: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        header = LogHeader.from_bytes(header_bytes)
    except LogFormatError as error:
        ring.report_failure(f"the recorder sent a bad log header: {error}")
        return EXIT_USAGE
    code = serve(ring, args.path, header, args.block_bytes, args.flush_seconds, args.sync_seconds)
    ring.detach()
    return code


class LogDaemon:
    """The recorder's handle on a running log daemon process."""

    def __init__(self, process: subprocess.Popen, ring: RingProducer, stderr: IO[bytes]) -> None:
        self._process = process
        self._ring = ring
        self._stderr = stderr  # a temporary file: read once the daemon exited, for a crash's last line
        self._stderr_tail = ""

    @property
    def pid(self) -> int:
        return self._process.pid

    def alive(self) -> bool:
        return self._process.poll() is None

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the daemon to exit (close the ring first); LogDaemonError says why if it failed."""
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the log daemon (pid {self.pid}) is still running after {timeout:g} s") from None
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
    """Start a log daemon draining `ring` into a new log file at `path`; returns once it runs.

    The ring's name is unlinked once the daemon has attached (or failed): no segment is left
    behind in /dev/shm whatever happens next. LogDaemonError (with the daemon's reason) if
    it cannot start, e.g. the file cannot be created.
    """
    header_bytes = header.to_bytes()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "dom0.logd", "--ring", ring.name, "--block-bytes", str(block_bytes),
        "--flush-seconds", repr(flush_seconds), "--sync-seconds", repr(sync_seconds), os.fspath(path),
    ]  # fmt: skip
    stderr = tempfile.TemporaryFile()
    # A session of its own: the terminal's signals (^C, ^Z) go to the recorder, which ends the stream.
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=stderr, env=env, start_new_session=True)
    daemon = LogDaemon(process, ring, stderr)
    try:
        try:
            process.stdin.write(header_bytes)
            process.stdin.close()
        except BrokenPipeError:
            pass  # it died before reading; its exit status tells why
        deadline = time.monotonic() + startup_timeout
        while ring.consumer_state() == CONSUMER_STARTING and process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                stderr.close()
                raise LogDaemonError(f"the log daemon did not start within {startup_timeout:g} s")
            time.sleep(0.002)
        if ring.consumer_state() == CONSUMER_FAILED or process.poll() is not None:
            daemon.wait()  # raises LogDaemonError with the daemon's reason
            raise LogDaemonError(f"the log daemon (pid {daemon.pid}) exited before it started")
    finally:
        ring.unlink()
    return daemon


if __name__ == "__main__":
    sys.exit(main())
