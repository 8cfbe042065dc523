"""The multi-domain host as a real process: `xenrr up` on a socket of its own, stopped and checked
for leftover processes after each test."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, XenrrRun, guest_path, run_xenrr

START_SECONDS = 120


def children_of(pid: int) -> set[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Host:
    process: subprocess.Popen
    socket: Path
    directory: Path

    def xenrr(self, *args, stdin: bytes = b"", timeout: float = 120) -> XenrrRun:
        return run_xenrr(*args, "--socket", self.socket, stdin=stdin, timeout=timeout)

    def config(self, name: str, guest: str = "spinpoll", **keys) -> Path:
        lines = [f'name = "{name}"', f'kernel = "{guest_path(guest)}"']
        lines += [f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}" for key, value in keys.items()]
        path = self.directory / f"{name}.cfg"
        path.write_text("\n".join(lines) + "\n")
        return path

    def domains(self) -> dict[str, dict]:
        import json
        listed = self.xenrr("list", "--json")
        assert listed.status == 0, listed.stderr
        return {domain["name"]: domain for domain in json.loads(listed.stdout)}

    def console_until(self, name: str, text: bytes, count: int, typed: bytes = b"") -> bytes:
        """Attach to NAME's console, type `typed`, read until the output holds `count` times `text`, then
        detach (Ctrl-]): the console exits 0 saying so."""
        console = subprocess.Popen([sys.executable, "-m", "dom0.cli", "console", name, "--socket", str(self.socket)],
                                   cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen = b""
        try:
            console.stdin.write(typed)
            console.stdin.flush()
            while seen.count(text) < count:
                chunk = os.read(console.stdout.fileno(), 4096)
                assert chunk, seen
                seen += chunk
            console.stdin.write(b"\x1d")
            console.stdin.flush()
            assert console.wait(timeout=60) == 0
            assert f"console of {name}: detached" in console.stderr.read().decode()
        finally:
            if console.poll() is None:
                console.kill()
                console.wait()
            for stream in (console.stdin, console.stdout, console.stderr):
                stream.close()
        return seen

    def wait_for(self, predicate, what: str, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")


def start_host(directory: Path, pcpus: int = 2) -> Host:
    socket = directory / "control.sock"
    process = subprocess.Popen([sys.executable, "-m", "dom0.cli", "up", "--pcpus", str(pcpus), "--socket", str(socket)],
                               cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.monotonic() + START_SECONDS
    while not socket.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"xenrr up did not start: {process.communicate()[1].decode()}")
        time.sleep(0.05)
    return Host(process, socket, directory)


@pytest.fixture
def host():
    """A running host with 2 pCPUs; afterwards it is stopped and no process of it is left."""
    directory = Path(tempfile.mkdtemp(prefix="xh", dir="/tmp"))      # a short path: sun_path holds 108 bytes
    running = start_host(directory)
    assert running.xenrr("list").status == 0          # answering: its workers have started
    workers = children_of(running.process.pid)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            run_xenrr("down", "--socket", running.socket, timeout=120)
        try:
            running.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(running.process.pid, signal.SIGKILL)
            running.process.wait()
            raise AssertionError("xenrr up did not stop after `xenrr down`")
        finally:
            running.process.stdout.close()
            running.process.stderr.close()
            shutil.rmtree(directory, ignore_errors=True)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        leaked = {pid: (Path("/proc") / str(pid) / "cmdline").read_bytes() for pid in workers if alive(pid)}
        assert not leaked, f"processes of the host still running after down: {leaked}"
