"""The CLI-limits campaign: bad numbers, escapes and resource limits are one error line, never a traceback.

Each named case was a traceback or a hang before (`\\p²` passed str.isdigit, `--linger nan`/`inf`
reached int(), a file-size limit failed the ring's shared-memory truncate inside multiprocessing, a
pause of 213 days was simulated tick by tick under the virtual clock); the seeded campaign throws
random option values and key scripts at `run` and `record`. `make soak` runs more of them.
"""
from __future__ import annotations

import random
import resource
import subprocess
import sys

import pytest

from tests.conftest import ROOT, campaign_size


def one_error_line(result, *fragments: str) -> None:
    assert result.status == 2, result.stderr
    assert result.stderr.startswith("xenrr: error: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.mark.parametrize("keys, fragment", [
    ("\\p\u00b2", "\\p needs a number"),
    ("\\p18446744073709", "more than 3600000 ms"),
    ("\\p999999999999", "more than 3600000 ms"),
    ("\\p" + "9" * 5000, "more than 3600000 ms"),
    ("\\p3600000\\p1x", "add up to more than"),
])
def test_bad_key_pauses_are_one_error_line(xenrr, minimal_elf, keys, fragment):
    one_error_line(xenrr("run", minimal_elf, "--clock", "virtual", "--keys", keys, timeout=30), fragment)


@pytest.mark.parametrize("linger", ["nan", "inf", "-inf", "-1", "1e300"])
def test_linger_must_be_a_finite_bounded_number(xenrr, minimal_elf, linger):
    one_error_line(xenrr("run", minimal_elf, "--keys", "a", "--linger", linger, timeout=30), "--linger")


def test_a_file_size_limit_below_the_ring_is_a_clear_recording_failure(minimal_elf, tmp_path):
    """`ulimit -f 8`: the shared-memory ring cannot be sized; exit 4 (the log cannot be written), one line."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    done = subprocess.run([sys.executable, "-m", "dom0.cli", "record", str(minimal_elf), "-o",
                           str(tmp_path / "s.xrr"), "--keys", "a"], cwd=ROOT, capture_output=True, text=True,
                          preexec_fn=limit, timeout=60)
    assert done.returncode == 4, done.stderr
    assert done.stderr.count("\n") == 1 and "file size limit (ulimit -f)" in done.stderr, done.stderr


def _random_arguments(rng: random.Random) -> list[str]:
    pieces = ["a", "\\r", "\\n", "\\t", "\\\\", "\\x41", "\\xZZ", "\\x4", "\\q", "\\", "\\p", "\\p5",
              "\\p5;0", "\\p\u0663", "\\p99999999", "\u00e9", "\\e", ";"]
    arguments = ["--clock", rng.choice(["virtual", "real"]),
                 "--keys", "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))]
    for option, values in (("--linger", ["0", "0.01", "nan", "-0", "1e-9", "x", "1e400"]),
                           ("--memory", ["0", "1", "4", "4096", "4097", "-3", "x"]),
                           ("--max-instructions", ["0", "1", "100000", "-1", "1e3"])):
        if rng.randrange(2):
            arguments += [option, rng.choice(values)]
    return arguments


@pytest.mark.slow
def test_random_command_lines_end_with_a_status_and_no_traceback(xenrr, minimal_elf, tmp_path):
    rng = random.Random(5)
    for number in range(campaign_size(6, 300)):
        arguments = _random_arguments(rng)
        command = rng.choice(["run", "record"])
        if command == "record":
            arguments = ["-o", str(tmp_path / f"{number}.xrr"), *arguments]
        result = xenrr(command, minimal_elf, *arguments, timeout=60)
        assert "Traceback" not in result.stderr, (arguments, result.stderr)
        assert result.status in (0, 1, 2, 3, 4), (arguments, result.stderr)
        if result.status == 2:
            one_error_line(result)
