"""A reader that goes away (`xenrr record ... | head -c 50`, `xenrr replay S | head`) never ends a recording
or a verification early: the run goes on without showing its output, stderr says so, and the exit status
is the run's own. Before, BrokenPipeError ended the process with status 0, leaving a log without END.
"""
from __future__ import annotations

import subprocess
import sys

from dom0.logfile import LogReader
from tests.conftest import ROOT
from xen.logrecord import KIND_END

KEYS = r"echo hello world\recho two\recho three\rhalt\r"


def run_with_head(*args, take: int = 20) -> tuple[int, str]:
    """Run xenrr with stdout read by a reader that takes `take` bytes and closes the pipe."""
    process = subprocess.Popen([sys.executable, "-m", "dom0.cli", *map(str, args)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.read(take)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    return process.wait(timeout=120), stderr


def test_record_into_a_closed_pipe_finishes_the_recording(kbdshell_elf, tmp_path, xenrr):
    log = tmp_path / "piped.xrr"
    status, stderr = run_with_head("record", kbdshell_elf, "-o", log, "--clock", "virtual", "--keys", KEYS)
    assert status == 0, stderr
    assert "stdout was closed" in stderr and "domain shut down (poweroff)" in stderr
    with LogReader(log) as reader:
        assert reader.damage is None
        assert list(reader.records())[-1].kind == KIND_END
    assert xenrr("replay", log).status == 0


def test_replay_into_a_closed_pipe_still_verifies_to_the_end(virtual_recording, tmp_path):
    status, stderr = run_with_head("replay", virtual_recording.path, take=5)
    assert status == 0, stderr
    assert "replayed to the end of the recording" in stderr


def test_replay_of_a_damaged_log_into_a_closed_pipe_is_still_exit_3(virtual_recording, tmp_path):
    log = tmp_path / "cut.xrr"
    data = virtual_recording.path.read_bytes()
    log.write_bytes(data[:len(data) - 30])
    status, stderr = run_with_head("replay", log, take=5)
    assert status == 3, stderr
