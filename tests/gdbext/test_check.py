"""`xenrr check SESSION SCRIPT` and the example regression suite (examples/), run as a user would.

The examples record their own sessions under pytest (examples/conftest.py); `xenrr check` is given
recordings of the same key scripts made here.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def recordings(tmp_path_factory, kbdshell_elf, xenrr) -> dict[str, Path]:
    """examples/NAME.keys recorded as NAME.xrr, for each example."""
    directory = tmp_path_factory.mktemp("check")
    sessions = {}
    for keys in sorted(EXAMPLES.glob("*.keys")):
        sessions[keys.stem] = directory / f"{keys.stem}.xrr"
        run = xenrr("record", kbdshell_elf, "-o", sessions[keys.stem], "--clock", "virtual", "--keys-file", keys)
        assert run.status == 0, run.stderr
    return sessions


def write_script(directory: Path, body: str) -> Path:
    script = directory / "check_script.py"
    script.write_text(textwrap.dedent(body))
    return script


def test_every_example_passes_under_xenrr_check(recordings, xenrr):
    scripts = sorted(EXAMPLES.glob("test_*.py"))
    assert {script.stem.removeprefix("test_") for script in scripts} == set(recordings)
    for script in scripts:
        run = xenrr("check", recordings[script.stem.removeprefix("test_")], script)
        assert run.status == 0, run.stdout + run.stderr
        lines = run.stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"PASS {script}"), run.stdout


def test_the_examples_pass_as_plain_pytest_tests():
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout.splitlines()[-1]


def test_a_failed_assertion_exits_1_showing_the_values_as_pytest_does(recordings, xenrr, tmp_path):
    script = write_script(tmp_path, '''\
        def test_holds(d):
            assert d.eval("sizeof(ed.line)") == 64


        def test_wrong_writer(d):
            d.watch("ed.hist_count")
            stop = d.cont()
            assert stop.function == "submit_line", f"written by {stop.function}"


        def test_length(d):
            d.goto_event(70)
            assert d.eval("ed.len") + 1 == 64
        ''')
    run = xenrr("check", recordings["long_line"], script)
    assert run.status == 1, run.stdout + run.stderr
    assert run.stdout.splitlines() == [
        f'FAIL {script}:8 in test_wrong_writer: assert stop.function == "submit_line", f"written by '
        '{stop.function}"',
        "    E  written by line_insert",
        "    E  assert 'line_insert' == 'submit_line'",
        "    E    - submit_line",
        "    E    + line_insert",
        f'FAIL {script}:13 in test_length: assert d.eval("ed.len") + 1 == 64',
        "    E  assert (68 + 1) == 64",
        "    E   +  where 68 = eval('ed.len')",
        f"    E   +    where eval = <Debugger on {recordings['long_line']}>.eval",
        f"FAIL {script}: 2 of 3 checks failed on {recordings['long_line']}",
    ]


def test_an_error_in_a_check_fails_it_with_the_error_line(recordings, xenrr, tmp_path):
    script = write_script(tmp_path, '''\
        def test_unknown_symbol(d):
            d.eval("no_such_symbol")


        def test_unknown_fixture(debugger):
            pass
        ''')
    run = xenrr("check", recordings["long_line"], script)
    assert run.status == 1
    assert run.stdout.splitlines()[:3] == [
        f'FAIL {script}:2 in test_unknown_symbol: d.eval("no_such_symbol")',
        '    E  DebugError: No symbol "no_such_symbol" in current context.',
        f"ERROR {script} in test_unknown_fixture: fixture 'debugger' not found"]


@pytest.mark.parametrize("body, message", [
    ("def test_x(d):\n    assert (\n", "check_script.py:2: SyntaxError"),
    ("def helper(d):\n    pass\n", "has no checks"),
    ("import no_such_module\n", "check_script.py:1: ModuleNotFoundError: No module named 'no_such_module'"),
    ("x = 1\0\n", "is not a Python check script"),
])
def test_unusable_scripts_are_usage_errors(recordings, xenrr, tmp_path, body, message):
    script = tmp_path / "check_script.py"
    script.write_text(body)
    run = xenrr("check", recordings["long_line"], script)
    assert run.status == 2
    assert message in run.stderr and run.stderr.startswith("xenrr: error: ")
    assert len(run.stderr.splitlines()) == 1 and "Traceback" not in run.stderr


def test_a_directory_of_scripts_runs_every_one_and_k_selects(recordings, xenrr):
    run = xenrr("check", recordings["long_line"], EXAMPLES, "-k", "long_line")
    assert run.status == 0, run.stdout + run.stderr
    assert run.stdout == f"PASS {EXAMPLES}: 4 checks held on {recordings['long_line']}\n"
    run = xenrr("check", recordings["long_line"], EXAMPLES, "-k", "long_line and first_write", "--json")
    assert run.status == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    assert (result["status"], result["passed"], result["failed"]) == (0, 1, 0)
    assert [(check["name"], check["file"], check["outcome"]) for check in result["checks"]] == [
        ("test_the_first_write_out_of_bounds_is_the_65th_character", "examples/test_long_line.py", "passed")]
    nothing = xenrr("check", recordings["long_line"], EXAMPLES, "-k", "no_such_check")
    assert (nothing.status, nothing.stderr) == (2, "xenrr: error: no check matches -k 'no_such_check'\n")


def test_json_results_carry_the_failure_explanation(recordings, xenrr, tmp_path):
    script = write_script(tmp_path, '''\
        def test_length(d):
            assert d.eval("ed.len") == 1
        ''')
    run = xenrr("check", recordings["long_line"], script, "--json")
    assert run.status == 1
    (check,) = json.loads(run.stdout)["checks"]
    assert (check["outcome"], check["line"], check["source"]) == ("failed", 2, 'assert d.eval("ed.len") == 1')
    assert check["message"].startswith("assert 0 == 1")


def test_swapped_arguments_and_an_elf_script_are_named(recordings, xenrr, kbdshell_elf):
    script = EXAMPLES / "test_long_line.py"
    swapped = xenrr("check", script, recordings["long_line"])
    assert (swapped.status, swapped.stderr) == (
        2, "xenrr: error: the arguments look swapped: it is `xenrr check SESSION SCRIPT...`, the recording first\n")
    elf = xenrr("check", recordings["long_line"], kbdshell_elf)
    assert (elf.status, elf.stderr) == (2, f"xenrr: error: {kbdshell_elf} is an ELF file, not a Python check script\n")
    two_recordings = xenrr("check", recordings["long_line"], recordings["short_lines"])     # a batch, no scripts
    assert (two_recordings.status, two_recordings.stderr) == (
        2, "xenrr: error: no check scripts among the arguments: it is `xenrr check RECORDING... SCRIPT...`\n")


def test_missing_files_are_usage_errors(recordings, xenrr, tmp_path):
    missing_script = xenrr("check", recordings["long_line"], tmp_path / "nothing.py")
    assert missing_script.status == 2 and "cannot read check script" in missing_script.stderr
    script = EXAMPLES / "test_long_line.py"
    missing_session = xenrr("check", tmp_path / "nothing.xrr", script)
    assert missing_session.status == 2 and "nothing.xrr" in missing_session.stderr
    assert "Traceback" not in missing_script.stderr + missing_session.stderr


def _xenrr_with_path(path: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dom0.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PATH=path))


def test_check_needs_only_gdb_on_path(recordings, tmp_path):
    """No `setsid` program (nor anything else but gdb) on PATH: the check still runs."""
    bin_directory = tmp_path / "bin"
    bin_directory.mkdir()
    (bin_directory / "gdb").symlink_to(shutil.which("gdb"))
    run = _xenrr_with_path(str(bin_directory), "check", recordings["long_line"], EXAMPLES / "test_long_line.py")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("PASS ")


@pytest.mark.parametrize("command", ["check", "shell", "debug"])
def test_without_gdb_every_command_says_how_to_install_it(recordings, tmp_path, command):
    arguments = [recordings["long_line"]] + ([EXAMPLES / "test_long_line.py"] if command == "check" else [])
    run = _xenrr_with_path(str(tmp_path), command, *arguments)
    assert run.returncode == 2
    assert run.stderr == "xenrr: error: gdb is not installed (Debian: apt-get install gdb)\n"


def test_ctrl_c_under_json_prints_a_json_error_object(recordings, tmp_path):
    """SIGINT while a check runs: exit 130, `{"error": "interrupted", ...}` on stdout, no traceback."""
    started = tmp_path / "started"
    script = write_script(tmp_path, f'''\
        import pathlib, time

        def test_waits(d):
            d.goto_event(3)
            pathlib.Path({str(started)!r}).touch()
            time.sleep(60)
        ''')
    check = subprocess.Popen([sys.executable, "-m", "dom0.cli", "check", str(recordings["long_line"]), str(script),
                              "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and check.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), check.communicate()
        check.send_signal(signal.SIGINT)
        stdout, stderr = check.communicate(timeout=60)
    finally:
        if check.poll() is None:
            check.kill()
    assert check.returncode == 130, stderr
    assert (json.loads(stdout), stderr) == ({"error": "interrupted", "status": 130}, "xenrr: interrupted\n")
