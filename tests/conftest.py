"""Shared fixtures: the project's guest kernels, built on demand with the guests Makefile, the
`xenrr` CLI run as a real process, and logs recorded with it."""
from __future__ import annotations

import os
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "guests"
# No xenrr a test starts uses or starts a fork server (dom0/forkserver.py): commands run in their own
# process, as `-m dom0.cli` does anyway; tests/dom0/test_forkserver.py turns it on for its own servers.
os.environ["XENRR_SERVER"] = "off"


def guest_path(name: str) -> Path:
    """The ELF of guests/<name>, building the guests first when it is missing or stale."""
    subprocess.run(["make", "-s", "-C", str(GUESTS)], check=True, capture_output=True)
    path = GUESTS / name / f"{name}.elf"
    assert path.exists(), f"guests Makefile did not produce {path}"
    return path


@pytest.fixture(scope="session")
def kbdshell_elf() -> Path:
    return guest_path("kbdshell")


@pytest.fixture(scope="session")
def minimal_elf() -> Path:
    return guest_path("minimal")


@pytest.fixture(scope="session")
def hostile_elf() -> Path:
    return guest_path("hostile")


@pytest.fixture(scope="session")
def abiprobe_elf() -> Path:
    return guest_path("abiprobe")


@dataclass(frozen=True)
class XenrrRun:
    """A finished `xenrr` process: exit status and its output, line ends kept as written (\\r\\n)."""
    status: int
    stdout: str
    stderr: str

    @property
    def instructions(self) -> int:
        """The instruction count xenrr reports on stderr when the run ends."""
        found = re.findall(r"after (\d+) instructions", self.stderr)
        assert found, f"no instruction count on stderr: {self.stderr!r}"
        return int(found[-1])


def run_xenrr(*args: str | Path, stdin: bytes = b"", timeout: float = 120) -> XenrrRun:
    """Run the real `xenrr` CLI (this interpreter, `-m dom0.cli`) as a process; never raises on its status."""
    done = subprocess.run([sys.executable, "-m", "dom0.cli", *map(str, args)], cwd=ROOT, input=stdin,
                          capture_output=True, timeout=timeout)
    return XenrrRun(done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"))


def run_xenrr_in_terminal(*args: str | Path, timeout: float = 120) -> tuple[int, bytes]:
    """Run the real `xenrr` CLI with stdout and stderr on one terminal (a pty of 100 x 24, so that
    progress bars have a width); its exit status and everything the terminal showed."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "dom0.cli", *map(str, args)], cwd=ROOT,
                               stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:             # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    return process.wait(timeout=timeout), bytes(shown)


@pytest.fixture(scope="session")
def xenrr():
    """`run_xenrr` for tests: xenrr("run", elf, "--keys", ...) -> XenrrRun."""
    return run_xenrr


@dataclass(frozen=True)
class Recording:
    """A log written by a finished `xenrr record` process (read-only for tests: copy it to change it)."""
    path: Path
    record: XenrrRun


@pytest.fixture(scope="session")
def recorder(tmp_path_factory):
    """recorder(guest, *options) -> Recording: a successful `xenrr record` into a fresh log file."""
    def record(guest: Path, *options: str) -> Recording:
        path = tmp_path_factory.mktemp("recording") / "session.xrr"
        run = run_xenrr("record", guest, "-o", path, *options)
        assert run.status == 0, run.stderr
        return Recording(path, run)
    return record


@pytest.fixture(scope="session")
def virtual_recording(recorder, kbdshell_elf) -> Recording:
    """kbdshell recorded with `--clock virtual` typing `echo abc`, `halt`: one key per input event, and the
    same instruction counts on every run."""
    return recorder(kbdshell_elf, "--clock", "virtual", "--keys", r"echo abc\rhalt\r")


@pytest.fixture(scope="session")
def long_line_recording(tmp_path_factory, kbdshell_elf) -> Path:
    """kbdshell typing the long-line bug (examples/long_line.keys), recorded with the virtual clock."""
    path = tmp_path_factory.mktemp("long-line") / "long_line.xrr"
    run = run_xenrr("record", kbdshell_elf, "-o", path, "--clock", "virtual", "--keys-file",
                    ROOT / "examples" / "long_line.keys")
    assert run.status == 0, run.stderr
    return path


def campaign_size(bounded: int, soak: int) -> int:
    """How many cases a randomized campaign runs: `bounded` in `make test`, `soak` under `make soak`
    (which sets XENRR_SOAK=1)."""
    return soak if os.environ.get("XENRR_SOAK") == "1" else bounded


@pytest.fixture(scope="session")
def spinpoll_elf() -> Path:
    return guest_path("spinpoll")


def write_log(path: Path, header, records) -> Path:
    """A log with valid CRCs, index and trailer holding exactly `records` (Record tuples, any content)."""
    from dom0.logfile import LogWriter
    from xen.logrecord import Encoder
    encoded = bytearray()
    encoder = Encoder()
    for record in records:
        encoder.encode(encoded, record.kind, record.vcpu, record.icount, record.rip, record.payload)
    writer = LogWriter(path, header)
    writer.write_block([encoded])
    writer.close()
    return path
