"""The SIGKILL campaign: the log daemon or the recorder killed at a random moment of a real recording.

A killed daemon loses nothing: the recorder writes what the daemon had not, the log is complete and
replays to its end with exactly the console the recording showed (status 4: the recording stopped).
A killed recorder leaves what the daemon drained: a log whose valid part replays (status 3), never
a traceback. `make soak` kills more often.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from dom0.logfile import LogReader
from tests.conftest import ROOT, campaign_size
from tests.dom0.test_record_damage import log_daemon_of

KEYS = r"echo one\r\p150echo two\r\p150echo three\r\p150echo four\r\p150halt\r"


def _record_and_kill(elf, log, victim: str, delay: float) -> tuple[int, str, str]:
    recorder = subprocess.Popen([sys.executable, "-m", "dom0.cli", "record", str(elf), "-o", str(log),
                                 "--keys", KEYS], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(delay)
        try:
            pid = recorder.pid if victim == "recorder" else log_daemon_of(recorder.pid)
            os.kill(pid, signal.SIGKILL)
        except (AssertionError, OSError):
            pass                                   # it had finished (or not started its daemon) already
        stdout, stderr = recorder.communicate(timeout=60)
    finally:
        recorder.kill()
        recorder.wait()
    return recorder.returncode, stdout.decode(), stderr.decode()


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["daemon", "recorder"])
def test_sigkill_at_random_moments(xenrr, kbdshell_elf, tmp_path, victim):
    rng = random.Random(f"{victim}-7")
    for number in range(campaign_size(3, 40)):
        log = tmp_path / f"{number}.xrr"
        status, stdout, stderr = _record_and_kill(kbdshell_elf, log, victim, rng.uniform(0.3, 1.6))
        assert "Traceback" not in stderr, stderr
        if not log.exists():
            continue                               # killed before the daemon created the log
        replayed = xenrr("replay", log)
        assert "Traceback" not in replayed.stderr
        if victim == "daemon" or status == 0:
            assert status in (0, 4), stderr
            with LogReader(log) as reader:
                assert reader.damage is None, (stderr, reader.damage)
            assert replayed.status == 0, replayed.stderr
            assert replayed.stdout == stdout
        else:
            assert replayed.status in (2, 3), replayed.stderr    # 2: killed before the header was written
            assert stdout.startswith(replayed.stdout) or replayed.stdout.startswith(stdout)
