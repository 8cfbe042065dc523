"""Debian's GRUB 2 Xen PV image, unmodified, under xenrr: boot, typed commands, record, replay, GDB backwards.

The image is /usr/lib/grub-xen/grub-x86_64-xen.bin (grub-xen-host, installed by `make`). GRUB prints its
banner, polls the console ring (it never blocks) and reads the TSC about every 130 instructions; `halt`
powers the domain off (SCHEDOP_shutdown, poweroff). Keys typed before the prompt wait in the ring.
Its symbols come from `xenrr grub-symbols` (docs/grub.md).

GRUB needs the Xen start-of-day memory contract and the PV memory model, grant tables and one xenstore
answer (issue 11).
"""
from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.stub.test_server_gdb import EXTENSION, Gdb, Server

GRUB = Path("/usr/lib/grub-xen/grub-x86_64-xen.bin")
MEMORY_MIB = "32"
GDB_TIMEOUT = 600              # seconds for one GDB command: a backward watch scan replays millions of polls
pytestmark = [
    pytest.mark.skipif(not GRUB.exists(), reason="GRUB's Xen image is missing: run `make` (grub-xen-host)"),
    pytest.mark.slow,
]
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def screen_text(output: str) -> str:
    """GRUB's console output without its VT100 sequences, line ends as \\n."""
    return ESCAPES.sub("", output).replace("\r", "")


def run_grub(xenrr, keys: str, *options: str, image: Path = GRUB):
    return xenrr("run", image, "--memory", MEMORY_MIB, "--keys", keys, *options, timeout=600)


@pytest.mark.parametrize("clock", ["virtual", "real"])
def test_grub_boots_runs_a_command_and_powers_off(xenrr, clock):
    run = run_grub(xenrr, r"echo hello from grub\rhalt\r", "--clock", clock)
    text = screen_text(run.stdout)
    assert run.status == 0, run.stderr
    assert "Welcome to GRUB!" in text
    assert "GNU GRUB  version 2.06" in text
    assert "grub> echo hello from grub\nhello from grub\n" in text
    assert "grub> halt" in text
    assert re.search(r"domain shut down \(poweroff\) after \d+ instructions", run.stderr)


def test_backspace_and_delete_erase_and_tab_completes(xenrr):
    # 0x7f and 0x08 both erase (GRUB maps 0x7f to \b); Tab completes the unique command `halt`
    run = run_grub(xenrr, r"echo hellX\x7fo wX\x08orld\rhal\t\r", "--clock", "virtual")
    text = screen_text(run.stdout)
    assert run.status == 0, run.stderr
    assert "\nhello world\n" in text
    assert "grub> halt" in text


def test_record_and_replay_reproduce_the_console_byte_for_byte(xenrr, tmp_path):
    log = tmp_path / "grub.xrr"
    recorded = xenrr("record", GRUB, "-o", log, "--memory", MEMORY_MIB, "--clock", "real",
                     "--keys", r"echo recorded\rhalt\r", timeout=600)
    assert recorded.status == 0, recorded.stderr
    replayed = xenrr("replay", log, timeout=600)
    assert replayed.status == 0, replayed.stderr
    assert replayed.stdout == recorded.stdout
    assert "recorded\n" in screen_text(replayed.stdout)
    assert re.search(r"\d+ state digests verified", replayed.stderr)


def test_an_image_grub_mkimage_builds_with_a_memdisk_boots(xenrr, tmp_path):
    if shutil.which("grub-mkimage") is None:
        pytest.skip("grub-mkimage (grub-common) is missing: run `make`")
    config = tmp_path / "grub.cfg"
    config.write_text('echo "config from the memdisk"\n')
    memdisk = tmp_path / "memdisk.tar"
    subprocess.run(["tar", "-cf", str(memdisk), "-C", str(tmp_path), "grub.cfg"], check=True)
    image = tmp_path / "grub-custom.bin"
    subprocess.run(["grub-mkimage", "-O", "x86_64-xen", "-o", str(image), "-m", str(memdisk),
                    "-p", "(memdisk)", "memdisk", "tar", "configfile", "normal", "echo", "halt"],
                   check=True, capture_output=True, timeout=120)
    run = run_grub(xenrr, r"halt\r", "--clock", "virtual", image=image)
    assert run.status == 0, run.stderr
    assert "config from the memdisk" in screen_text(run.stdout)


@pytest.fixture(scope="module")
def grub_recording(tmp_path_factory, xenrr) -> Path:
    log = tmp_path_factory.mktemp("grub") / "grub.xrr"
    run = xenrr("record", GRUB, "-o", log, "--memory", MEMORY_MIB, "--clock", "virtual",
                "--keys", r"echo one\recho two\rhalt\r", timeout=600)
    assert run.status == 0, run.stderr
    return log


@pytest.fixture(scope="module")
def grub_symbols(tmp_path_factory, xenrr) -> Path:
    path = tmp_path_factory.mktemp("grub-symbols") / "grub.sym"
    assert xenrr("grub-symbols", GRUB, "-o", path).status == 0
    return path


def test_gdb_breaks_in_grub_and_runs_backwards(grub_recording, grub_symbols):
    server = Server(grub_recording)
    gdb = Gdb(str(grub_symbols))

    def run(command: str):
        return gdb.run(command, timeout=GDB_TIMEOUT)
    try:
        run(f"target remote {server.address}")
        run("break grub_getkey")                          # the console terminal's key reader
        run("continue")
        assert gdb.function() == "grub_getkey"
        run("delete")
        run("break grub_extcmd_dispatcher")              # the dispatcher of extended commands (`echo` is one)
        run("continue")
        assert gdb.function() == "grub_extcmd_dispatcher"
        first = gdb.when()[1]
        run("reverse-stepi")
        assert gdb.when()[1] == first - 1
        run("stepi")
        assert gdb.function() == "grub_extcmd_dispatcher" and gdb.when()[1] == first
        run("continue")
        second = gdb.when()[1]
        assert gdb.function() == "grub_extcmd_dispatcher" and second > first
        run("reverse-continue")                            # back to the previous dispatch
        assert gdb.function() == "grub_extcmd_dispatcher" and gdb.when()[1] == first
        run("delete")
        run("watch *(int *) &grub_errno")                 # GRUB's error variable
        stop = run("reverse-continue").stopped
        assert stop is not None and gdb.when()[1] < first
        run("kill")
        assert server.finish() == 0
    finally:
        gdb.close()
        server.finish()


def test_gdb_loads_the_symbols_of_grubs_loaded_modules(grub_recording, grub_symbols):
    server = Server(grub_recording)
    gdb = Gdb(str(grub_symbols))
    try:
        gdb.run(f"target remote {server.address}", timeout=GDB_TIMEOUT)
        gdb.run(f"source {EXTENSION}")
        gdb.run("break grub_extcmd_dispatcher", timeout=GDB_TIMEOUT)
        gdb.run("continue", timeout=GDB_TIMEOUT)
        loaded = gdb.run("rr-grub-modules", timeout=GDB_TIMEOUT).text
        assert re.match(r"loaded symbols of \d+ GRUB modules: .*\bnormal\b", loaded), loaded
        # normal.module's DWARF: the caller of the dispatcher is GRUB's script executor, with its source line
        assert re.search(r"grub_script_execute_cmd\w* \(.*\) at .*grub-core/script/execute\.c:\d+", gdb.run("bt 4").text)
        assert "is a function at address" in gdb.run("info address grub_cmd_echo").text
        gdb.run("kill")
        assert server.finish() == 0
    finally:
        gdb.close()
        server.finish()


class TerminalSession:
    """`xenrr run` with its standard input and output on a terminal (a pty), as a person runs it."""

    def __init__(self, *args: str | Path):
        self.controller, terminal = pty.openpty()
        self.process = subprocess.Popen([sys.executable, "-m", "dom0.cli", *map(str, args)], cwd=ROOT,
                                        stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True)
        os.close(terminal)
        self.shown = ""

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while text not in screen_text(self.shown):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} never showed; the terminal: {screen_text(self.shown)[-600:]!r}"
            ready, _, _ = select.select([self.controller], [], [], min(remaining, 1.0))
            if ready:
                try:
                    self.shown += os.read(self.controller, 65536).decode(errors="replace")
                except OSError:          # EIO: xenrr closed the terminal
                    break

    def type(self, keys: bytes) -> None:
        os.write(self.controller, keys)

    def close(self) -> int:
        try:
            return self.process.wait(timeout=300)
        finally:
            os.close(self.controller)
            self.controller = -1

    def __enter__(self) -> "TerminalSession":
        return self

    def __exit__(self, *failure) -> None:
        """Whatever happened, no xenrr is left running and the terminal is closed."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.controller >= 0:
            os.close(self.controller)


def test_a_person_gets_the_grub_prompt_from_interactive_run():
    with TerminalSession("run", GRUB, "--memory", MEMORY_MIB) as session:
        session.wait_for("grub> ")
        session.type(b"echo typed by a person\r")
        session.wait_for("\ntyped by a person\n")
        session.type(b"halt\r")
        session.wait_for("domain shut down (poweroff)")
        assert session.close() == 0
