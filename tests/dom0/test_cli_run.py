"""`xenrr run` as a user meets it: help texts, exit statuses, one-line errors, the input options.

Every test runs the real CLI as a process on the real gcc-built guests. Exit statuses (dom0/cli.py):
0 the guest powered off, 1 the domain crashed, 2 a usage or input error - reported as exactly one
line `xenrr: error: ...`, never a traceback - and 3 the run stopped before the guest shut down
(instruction limit, key script done, Ctrl-] detach).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import run_xenrr_in_terminal


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, kbdshell_elf) -> dict[str, Path]:
    """Bad guest files, and a key script file."""
    folder = tmp_path_factory.mktemp("inputs")
    image = kbdshell_elf.read_bytes()
    files = {"text": b"this is not a kernel\n", "empty": b"", "truncated": image[:3000],
             "header-only": image[:20], "keys": rb"calc 6*7\rhalt\r", "keys-with-newlines": b"echo a\nhalt\n"}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    paths["missing"] = folder / "no-such-file"
    paths["directory"] = folder
    return paths


# --------------------------------------------------------------------------- help

def test_xenrr_help_explains_the_tool(xenrr):
    run = xenrr("--help")
    assert run.status == 0
    for text in ("usage: xenrr", "run", "Record/replay", "Exit status", "--help"):
        assert text in run.stdout


def test_xenrr_help_lists_every_exit_status(xenrr):
    epilog = " ".join(xenrr("--help").stdout.split()).split("Exit status:", 1)[1]
    for status in ("0 the guest powered off", "1 the domain crashed", "2 usage", "3 stopped", "detached",
                   "4 the log could not be written", "130 interrupted"):
        assert status in epilog, status


def test_run_help_explains_every_option(xenrr):
    run = xenrr("run", "--help")
    assert run.status == 0
    for text in ("GUEST", "--keys", "--keys-file", "--memory", "--max-instructions", "--clock", "real",
                 "virtual", "Ctrl-]", r"\xNN", r"\pN", "stdout", "stderr"):
        assert text in run.stdout, text


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "xenrr"
    done = subprocess.run([str(script), "run", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage: xenrr run" in done.stdout


def test_no_command_is_a_usage_error(xenrr):
    run = xenrr()
    assert run.status == 2
    assert "Traceback" not in run.stderr and "COMMAND" in run.stderr


def test_version_names_the_installed_xenrr(xenrr):
    run = xenrr("--version")
    assert (run.status, run.stdout) == (0, f"xenrr {metadata.version('xenrr')}\n")


@pytest.mark.parametrize("command", ["run", "replay", "dump", "debug", "check"])
def test_an_unknown_option_points_to_the_subcommands_help(xenrr, command):
    run = xenrr(command, "x.xrr", *(["x.py"] if command == "check" else []), "--no-such-option")
    assert run.status == 2 and run.stdout == ""
    assert run.stderr == (f"xenrr: error: unrecognized arguments: --no-such-option "
                          f"(see `xenrr {command} --help`)\n")


def test_arguments_after_double_dash_are_refused_where_nothing_takes_them(xenrr):
    run = xenrr("dump", "x.xrr", "--", "-batch")
    assert run.stderr == "xenrr: error: unrecognized arguments: -- -batch (see `xenrr dump --help`)\n"


@pytest.mark.parametrize("arguments", [
    ["dump", "{missing}", "--json"],
    ["replay", "{missing}", "--json"],
    ["check", "{missing}", "{missing}", "--json"],
    ["dump", "--json"],
    ["dump", "{missing}", "--kind", "tick", "--json"],
])
def test_json_commands_print_a_json_error_object_on_failure(xenrr, inputs, arguments):
    run = xenrr(*(argument.format(missing=inputs["missing"]) for argument in arguments))
    assert run.status == 2
    [message] = run.stderr.splitlines()
    assert json.loads(run.stdout) == {"error": message.removeprefix("xenrr: error: "), "status": 2}


def test_image_option_naming_a_missing_file_says_so(xenrr, virtual_recording, inputs):
    run = xenrr("replay", virtual_recording.path, "--image", inputs["missing"])
    assert (run.status, run.stderr) == (
        2, f"xenrr: error: cannot read the guest image {inputs['missing']} given with --image: No such file or "
           "directory\n")


# --------------------------------------------------------------------------- bad input: exit 2, one line

# id -> (arguments after `run`, with {name} standing for inputs[name] and {guest} for kbdshell; a word
# the message must contain)
BAD_INPUTS = [
    pytest.param(["{missing}"], "No such file", id="missing-file"),
    pytest.param(["{directory}"], "directory", id="directory"),
    pytest.param(["{text}"], "not an ELF", id="text-file"),
    pytest.param(["{empty}"], "not an ELF", id="empty-file"),
    pytest.param(["/bin/true"], "Xen", id="not-a-pv-kernel"),
    pytest.param(["{truncated}"], "truncated", id="truncated-guest"),
    pytest.param(["{header-only}"], "truncated", id="truncated-header"),
    pytest.param(["{guest}", "--memory", "0"], "--memory", id="memory-zero"),
    pytest.param(["{guest}", "--memory", "5000"], "--memory", id="memory-too-big"),
    pytest.param(["{guest}", "--memory", "1"], "image too big for the memory", id="memory-too-small-for-the-image"),
    pytest.param(["{guest}", "--memory", "lots"], "--memory", id="memory-not-a-number"),
    pytest.param(["{guest}", "--keys", r"ls\q"], r"\q", id="unknown-escape"),
    pytest.param(["{guest}", "--keys", "halt\\"], "backslash", id="lone-backslash"),
    pytest.param(["{guest}", "--keys", r"\x4"], r"\x", id="short-hex-escape"),
    pytest.param(["{guest}", "--keys", r"\pfast"], r"\p", id="pause-without-number"),
    pytest.param(["{guest}", "--keys", "a", "--keys-file", "{keys}"], "--keys", id="keys-and-keys-file"),
    pytest.param(["{guest}", "--keys-file", "{missing}"], "key script", id="missing-keys-file"),
    pytest.param(["{guest}", "--max-instructions", "-5"], "--max-instructions", id="negative-max-instructions"),
    pytest.param(["{guest}", "--max-instructions", "many"], "--max-instructions", id="max-instructions-not-a-number"),
    pytest.param(["{guest}", "--clock", "sundial"], "--clock", id="unknown-clock"),
]


@pytest.mark.parametrize("arguments,mentions", BAD_INPUTS)
def test_bad_input_is_one_error_line_and_status_2(xenrr, inputs, kbdshell_elf, arguments, mentions):
    names = {name: str(path) for name, path in inputs.items()} | {"guest": str(kbdshell_elf)}
    run = xenrr("run", *(argument.format(**names) for argument in arguments))
    assert run.status == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout == ""                    # nothing was booted
    [line] = run.stderr.splitlines()
    assert line.startswith("xenrr: error: ") and mentions in line, line


# --------------------------------------------------------------------------- exit statuses and input options

def test_max_instructions_stops_the_run_with_status_3(xenrr, kbdshell_elf):
    run = xenrr("run", kbdshell_elf, "--clock", "virtual", "--max-instructions", "1000", "--keys", r"halt\r")
    assert run.status == 3, run.stderr
    assert run.instructions == 1000
    assert run.stderr.splitlines() == ["xenrr: stopped at the instruction limit after 1000 instructions"]


def test_max_instructions_beyond_the_run_does_not_stop_it(xenrr, kbdshell_elf):
    run = xenrr("run", kbdshell_elf, "--clock", "virtual", "--max-instructions", "1000000000", "--keys", r"halt\r")
    assert run.status == 0, run.stderr


def test_guest_idle_after_the_key_script_ends_the_run_with_status_3(xenrr, kbdshell_elf):
    run = xenrr("run", kbdshell_elf, "--clock", "virtual", "--linger", "0.05", "--keys", r"echo still here\r")
    assert run.stdout.endswith("> echo still here\r\nstill here\r\n> ")
    assert run.status == 3, run.stderr
    assert "key script done" in run.stderr


def test_memory_option_sizes_the_domain(xenrr, kbdshell_elf):
    run = xenrr("run", kbdshell_elf, "--clock", "virtual", "--memory", "2", "--keys", r"calc 1+1\rhalt\r")
    assert run.status == 0, run.stderr
    assert "> calc 1+1\r\n2\r\n" in run.stdout


def test_keys_file_types_the_same_keys_as_keys(xenrr, inputs, kbdshell_elf):
    from_file = xenrr("run", kbdshell_elf, "--clock", "virtual", "--keys-file", inputs["keys"])
    inline = xenrr("run", kbdshell_elf, "--clock", "virtual", "--keys", inputs["keys"].read_text())
    assert from_file.status == inline.status == 0
    assert from_file.stdout == inline.stdout
    assert "> calc 6*7\r\n42\r\n> halt\r\n" in from_file.stdout
    assert from_file.instructions == inline.instructions


def test_keys_file_newlines_are_keys(xenrr, inputs, kbdshell_elf):
    run = xenrr("run", kbdshell_elf, "--clock", "virtual", "--keys-file", inputs["keys-with-newlines"])
    assert run.status == 0, run.stderr
    assert run.stdout == "kbdshell ready\r\n> echo a\r\na\r\n> halt\r\n"


def test_console_reads_standard_input_without_a_script(xenrr, kbdshell_elf):
    run = xenrr("run", kbdshell_elf, stdin=b"echo piped\rhalt\r")
    assert run.status == 0, run.stderr
    assert run.stdout == "kbdshell ready\r\n> echo piped\r\npiped\r\n> halt\r\n"


def test_ctrl_close_bracket_detaches_with_status_3(xenrr, kbdshell_elf):
    """0 means the guest powered off; a detach leaves it running (destroyed): stopped before shutdown."""
    run = xenrr("run", kbdshell_elf, stdin=b"\x1d")
    assert run.status == 3, run.stderr
    assert "detached" in run.stderr


def test_keys_before_ctrl_close_bracket_reach_the_guest(xenrr, kbdshell_elf):
    run = xenrr("run", kbdshell_elf, stdin=b"echo typed before leaving\r\x1d")
    assert run.status == 3, run.stderr
    assert "typed before leaving\r\n" in run.stdout


def test_xenrr_messages_start_on_a_fresh_line_after_the_guest_prompt(kbdshell_elf):
    """On a terminal, kbdshell's prompt '> ' leaves the cursor mid-line: xenrr's last message must not
    run into it (with pipes, as everywhere else here, the guest's output stays byte for byte)."""
    status, shown = run_xenrr_in_terminal("run", kbdshell_elf, "--clock", "virtual", "--linger", "0.01",
                                          "--keys", r"echo a\r")
    assert status == 3
    # the terminal turns \n into \r\n
    assert re.search(rb"\na\r\r\n> \r\nxenrr: stopped: key script done and the guest stayed idle after \d+ "
                     rb"instructions\r\n$", shown), shown
