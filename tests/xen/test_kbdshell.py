"""kbdshell end to end: the real guest under `xenrr run` with scripted keys, every command's exact output.

The specification is guests/kbdshell/README.md. One scripted session (module fixture, --clock virtual)
types every command once; the tests below look up what each typed line printed. Runs that need their
own timing (ticks), the long-line bug and the reproducibility of --clock virtual have runs of their own.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

LINE_SIZE = 64          # ed.line; characters 65-68 of a line land in ed.hist_count (the deliberate bug)
HISTORY_LINES = 8
DIVISION_BY_ZERO = "error: division by zero"
SYNTAX = "error: syntax"


def fnv1a64(data: bytes) -> str:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) % 2**64
    return f"{value:016x}"


def bench_checksum(iterations: int) -> str:
    value = 0
    for i in range(iterations):
        value = (value * 6364136223846793005 + i) % 2**64
        value ^= value >> 29
    return f"{value:016x}"


def erase(echoed: str) -> str:
    """The line a terminal shows for the guest's echo: each `\\b \\b` rubs out the character before it."""
    while "\b \b" in echoed:
        at = echoed.index("\b \b")
        echoed = echoed[:at - 1] + echoed[at + 3:]
    return echoed


def transcript(stdout: str) -> list[tuple[str, list[str]]]:
    """Split kbdshell's console output into (echo of the typed line, output lines), one per prompt."""
    banner, _, rest = stdout.partition("\r\n")
    assert banner == "kbdshell ready", stdout
    lines = rest.split("\r\n")
    if lines[-1] == "":
        lines.pop()
    entries: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("> "):
            entries.append((line[2:], []))
        else:
            assert entries, f"output before the first prompt: {line!r}"
            entries[-1][1].append(line)
    return entries


# --------------------------------------------------------------------------- the scripted session

CALC = [
    ("1+2", "3"), ("2+3*4", "14"), ("2*3+4", "10"), ("(2+4)*7", "42"), ("2*(3+4)*5", "70"),
    ("((((9))))", "9"), ("10-4-3", "3"), ("100/10/5", "2"), ("2*3%4", "2"), (" 1 + 2 * 3 ", "7"),
    ("-5+2", "-3"), ("-(3*4)", "-12"), ("2*-3", "-6"), ("--7", "7"), ("+8", "8"), ("-2*-2", "4"),
    ("7/2", "3"), ("-7/2", "-3"), ("7/-2", "-3"), ("7%3", "1"), ("-7%3", "-1"), ("7%-3", "1"),
    ("9223372036854775807+1", "-9223372036854775808"), ("-9223372036854775808/-1", "-9223372036854775808"),
    ("5%-1", "0"), ("18446744073709551615", "-1"),
    ("1/0", DIVISION_BY_ZERO), ("5%0", DIVISION_BY_ZERO), ("(1+1)/(2-2)", DIVISION_BY_ZERO),
    ("1/0+", DIVISION_BY_ZERO), ("1+", SYNTAX), ("(1+2", SYNTAX), ("2)", SYNTAX), ("1 2", SYNTAX),
    ("x", SYNTAX), ("+/0", SYNTAX),
]
HASH_INPUTS = ["abc", "", " ", "a", "hello world", "The quick brown fox jumps", "x  y  z",
               "0123456789" * 5 + "abcdefghi"]     # the longest that fits: "hash " + 59 = 64 characters
BENCH = [0, 1, 2, 1000, 100_000, 123_457]
ECHO = [("echo hello world", "hello world"), ("echo", ""), ("echo   spaced  out ", "  spaced  out "),
        ("   echo leading spaces", "leading spaces"), ("echo <>!|&;$`'\"#~", "<>!|&;$`'\"#~")]
UNKNOWN = [("foo", "foo"), ("foo bar baz", "foo"), ("ECHO x", "ECHO"), ("echox", "echox"), ("hist2", "hist2")]
BENCH_ERRORS = ["bench", "bench 12x", "bench -1", "bench  5"]
# (keys as typed, the line the guest runs, what it prints)
EDITING = [
    (r"echo abcd\x7f\x7fxy", "echo abxy", ["abxy"]),
    (r"ecx\x08ho bs", "echo bs", ["bs"]),
    (r"hash abc\x7f\x08\x7fxyz", "hash xyz", [fnv1a64(b"xyz")]),
    (r"halt\x7f\x7f\x7f\x7fecho not halted", "echo not halted", ["not halted"]),
    (r"\x7f\x08echo from an empty line", "echo from an empty line", ["from an empty line"]),
    (r"echo a\tb\x01c\x1b\x80\xff", "echo abc", ["abc"]),
]


def _session_lines() -> list[tuple[str, str]]:
    """(keys typed, line the guest runs) for the whole session, in typing order."""
    lines = [text for text, _ in ECHO] + [f"calc {expr}" for expr, _ in CALC] + ["calc"]
    lines += [f"hash {text}" for text in HASH_INPUTS] + ["hash"]
    lines += [f"bench {n}" for n in BENCH] + BENCH_ERRORS + [text for text, _ in UNKNOWN] + ["   "]
    return [(line, line) for line in lines] + [(typed, line) for typed, line, _ in EDITING]


SESSION = _session_lines()


@pytest.fixture(scope="module")
def session(kbdshell_elf, xenrr):
    """Every line of SESSION typed into one kbdshell, then `hist` and `halt`."""
    keys = "".join(typed + r"\r" for typed, _ in SESSION) + r"hist\rhalt\r"
    run = xenrr("run", kbdshell_elf, "--clock", "virtual", "--keys", keys)
    entries = transcript(run.stdout)
    by_line: dict[str, tuple[str, list[str]]] = {}
    for echoed, output in entries:
        assert erase(echoed) not in by_line, f"line typed twice: {erase(echoed)!r}"
        by_line[erase(echoed)] = (echoed, output)
    return run, entries, by_line


def _output(session, line: str) -> list[str]:
    _, _, by_line = session
    assert line in by_line, f"{line!r} was not run; lines run: {list(by_line)}"
    return by_line[line][1]


@pytest.mark.parametrize("line,expected", ECHO, ids=[text for text, _ in ECHO])
def test_echo_prints_its_argument_verbatim(session, line, expected):
    assert _output(session, line) == [expected]


@pytest.mark.parametrize("expr,expected", CALC, ids=[expr for expr, _ in CALC])
def test_calc(session, expr, expected):
    assert _output(session, f"calc {expr}") == [expected]


def test_calc_without_expression_is_a_syntax_error(session):
    assert _output(session, "calc") == [SYNTAX]


@pytest.mark.parametrize("text", HASH_INPUTS, ids=[f"len{len(t)}:{t[:12]}" for t in HASH_INPUTS])
def test_hash_is_fnv1a_64(session, text):
    assert _output(session, f"hash {text}") == [fnv1a64(text.encode())]


def test_hash_alone_hashes_the_empty_string(session):
    assert _output(session, "hash") == ["cbf29ce484222325"] == [fnv1a64(b"")]


def test_reference_checksums_match_the_readme():
    assert bench_checksum(1000) == "2b653e46c76114ff"
    assert bench_checksum(100_000) == "ecd0ff05a53bc9fe"


@pytest.mark.parametrize("iterations", BENCH)
def test_bench_prints_the_checksum_of_its_loop(session, iterations):
    assert _output(session, f"bench {iterations}") == [bench_checksum(iterations)]


@pytest.mark.parametrize("line", BENCH_ERRORS)
def test_bench_without_a_number_prints_its_usage(session, line):
    assert _output(session, line) == ["error: usage: bench N"]


@pytest.mark.parametrize("line,word", UNKNOWN, ids=[text for text, _ in UNKNOWN])
def test_unknown_command_names_its_word(session, line, word):
    assert _output(session, line) == [f"unknown command: {word}"]


def test_line_of_spaces_prints_nothing(session):
    assert _output(session, "   ") == []


@pytest.mark.parametrize("typed,line,expected", EDITING, ids=[line for _, line, _ in EDITING])
def test_backspace_editing_changes_what_is_executed(session, typed, line, expected):
    assert _output(session, line) == expected


def test_backspace_is_echoed_as_rubout_and_nothing_on_an_empty_line(session):
    _, _, by_line = session
    assert by_line["echo abxy"][0] == "echo abcd\b \b\b \bxy"
    assert by_line["echo from an empty line"][0] == "echo from an empty line"
    assert by_line["echo abc"][0] == "echo abc"       # control characters are not echoed


def test_hist_prints_the_count_and_the_last_eight_lines(session):
    _, entries, _ = session
    echoed, output = entries[-2]
    assert echoed == "hist"
    typed_lines = [line for _, line in SESSION] + ["hist"]
    assert output == [str(len(typed_lines))] + typed_lines[-HISTORY_LINES:]


def test_halt_powers_off_with_exit_status_0(session):
    run, entries, _ = session
    assert entries[-1] == ("halt", [])
    assert run.status == 0, run.stderr
    assert "domain shut down (poweroff)" in run.stderr
    assert len(entries) == len(SESSION) + 2         # every line ran exactly once: no line was lost or split


def test_session_transcript_is_exact(session):
    """The first lines byte for byte, as the README states: `calc (2+4)*7` then CR gives `calc (2+4)*7\\r\\n42\\r\\n> `."""
    run, _, _ = session
    assert run.stdout.startswith("kbdshell ready\r\n> echo hello world\r\nhello world\r\n> echo\r\n\r\n> ")
    assert "> calc (2+4)*7\r\n42\r\n> " in run.stdout
    assert run.stdout.endswith("> halt\r\n")


# --------------------------------------------------------------------------- line ends

def test_cr_lf_ends_one_line_and_lf_alone_ends_a_line(kbdshell_elf, xenrr):
    run = xenrr("run", kbdshell_elf, "--clock", "virtual", "--keys", r"echo one\r\necho two\n\r\rhist\rhalt\r")
    assert run.status == 0, run.stderr
    assert transcript(run.stdout) == [("echo one", ["one"]), ("echo two", ["two"]), ("", []), ("", []),
                                      ("hist", ["3", "echo one", "echo two", "hist"]), ("halt", [])]


# --------------------------------------------------------------------------- ticks

def _ticks(run) -> list[int]:
    return [int(output[0]) for echoed, output in transcript(run.stdout) if echoed == "ticks"]


def test_ticks_follow_the_host_clock_with_real_clock(kbdshell_elf, xenrr):
    """100 Hz on the host clock: a 300 ms pause lets the timer tick, and never more often than the host's
    elapsed time allows (no lower bound near 30: on a busy host the pause can be spent booting)."""
    started = time.monotonic_ns()
    run = xenrr("run", kbdshell_elf, "--clock", "real", "--keys", r"\p300ticks\rhalt\r")
    elapsed_ns = time.monotonic_ns() - started
    assert run.status == 0, run.stderr
    [ticks] = _ticks(run)
    assert 1 <= ticks <= elapsed_ns // 10_000_000 + 1, (ticks, elapsed_ns, run.stdout)


def test_real_clock_guest_time_does_not_run_ahead_of_the_host(kbdshell_elf, xenrr):
    """Not a timing assertion: a slow host only makes guest time lag further behind the wall clock."""
    started = time.monotonic_ns()
    run = xenrr("run", kbdshell_elf, "--clock", "real", "--keys", r"bench 600000000\ruptime\rhalt\r")
    elapsed_ns = time.monotonic_ns() - started
    assert run.status == 0, run.stderr
    [uptime] = [int(output[0]) for echoed, output in transcript(run.stdout) if echoed == "uptime"]
    assert uptime <= elapsed_ns


def test_ticks_with_virtual_clock_are_exact(kbdshell_elf, xenrr):
    """Virtual clock: guest time is the instruction count (1 ns each) plus skipped idle time.

    Booting and running a command takes tens of thousands of instructions - tens of microseconds of
    guest time - so no 10 ms tick is due yet: 0. A `\\p300` pause is 300 ms of idle guest time, which the
    hypervisor skips timer by timer: exactly 30 ticks, then 100 more for `\\p1000`. The same on every host.
    """
    run = xenrr("run", kbdshell_elf, "--clock", "virtual", "--keys",
                r"ticks\r\p300ticks\ruptime\r\p1000ticks\rhalt\r")
    assert run.status == 0, run.stderr
    assert _ticks(run) == [0, 30, 130]
    [uptime] = [int(output[0]) for echoed, output in transcript(run.stdout) if echoed == "uptime"]
    assert 300_000_000 <= uptime < 301_000_000


# --------------------------------------------------------------------------- the deliberate bug

def test_long_line_overwrites_hist_count_without_crashing(kbdshell_elf, xenrr):
    """Characters 65-68 land in ed.hist_count (README, "The deliberate bug"); 69 on are dropped."""
    typed = "echo " + "x" * 59 + "ABCD" + "dropped"
    accepted = typed[:LINE_SIZE + 4]
    run = xenrr("run", kbdshell_elf, "--clock", "virtual", "--keys", typed + r"\rhist\rhalt\r")
    assert run.status == 0, run.stderr
    wrong_count = int.from_bytes(typed[LINE_SIZE:LINE_SIZE + 4].encode(), "little") + 2
    assert wrong_count == 1145258563
    assert transcript(run.stdout) == [(accepted, [accepted[5:]]),
                                      ("hist", [str(wrong_count), accepted, "hist"]),
                                      ("halt", [])]
    assert wrong_count != 2            # the true count


# --------------------------------------------------------------------------- --clock virtual reproducibility

DETERMINISM_KEYS = r"bench 300000\r\p25ticks\rhash determinism\r\p40calc 6*7\ruptime\rhist\rhalt\r"
CPU_HOG = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end:\n    pass\n"


def test_virtual_clock_runs_are_identical_even_on_a_busy_host(kbdshell_elf, xenrr):
    runs = [xenrr("run", kbdshell_elf, "--clock", "virtual", "--keys", DETERMINISM_KEYS) for _ in range(2)]
    hog = subprocess.Popen([sys.executable, "-c", CPU_HOG])
    try:
        runs.append(xenrr("run", kbdshell_elf, "--clock", "virtual", "--keys", DETERMINISM_KEYS))
    finally:
        hog.kill()
        hog.wait()
    assert all(run.status == 0 for run in runs), [run.stderr for run in runs]
    assert len({run.instructions for run in runs}) == 1, [run.instructions for run in runs]
    assert len({run.stdout for run in runs}) == 1
    assert _ticks(runs[0]) == [2]      # 25 ms of idle guest time after a bench of ~2.4 ms
