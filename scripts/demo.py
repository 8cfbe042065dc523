"""The xenrr demo (`make demo`): a guided tour for a newcomer, one numbered step at a time.

Owns the story told by `make demo`. Each step is a function that runs the real `xenrr` CLI on the real
guest kernels (as a user would type it), or the scripted debugging API (gdbext.api, real GDB against
`xenrr serve`) as a user's script would, prints what happened in a few readable lines, and raises
DemoError when something did not behave as the step says. Invariant: the demo only uses public
commands and APIs and prints nothing it did not observe; it exits 0 only when every step held.
The recording it debugs is left in build/demo/ for the reader to explore with `xenrr shell`.
"""
from __future__ import annotations

import linecache
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gdbext.api import DebugError, Debugger, Stop, xenrr_debug

ROOT = Path(__file__).resolve().parent.parent
KBDSHELL = Path("guests/kbdshell/kbdshell.elf")
HOSTILE = Path("guests/hostile/hostile.elf")
WIDTH = 78

# The scripted session of step 1: (heading shown before the first use of a command, keys typed).
SESSION = [
    ("echo: print the rest of the line", "echo Hello from a Xen PV guest!"),
    ("calc: 64-bit integer arithmetic with precedence and parentheses", "calc (2+4)*7"),
    (None, "calc 2+3*4"),
    (None, "calc -7/2"),
    (None, "calc 1/0"),
    ("hash: FNV-1a 64 of the text", "hash hello"),
    ("bench: a CPU-bound loop of N iterations, its checksum", "bench 1000000"),
    ("ticks: 100 Hz timer interrupts (VIRQ_TIMER) since boot; typed after a 250 ms pause", r"\p250ticks"),
    ("backspace works: `echp`, backspace (shown <BS>), `o ...` runs `echo ...`", r"echp\x7fo fixed with backspace"),
    ("anything else is an unknown command", "frobnicate now"),
    ("hist: how many lines were typed, and the last 8", "hist"),
    ("halt: power the guest off", "halt"),
]
LONG_LINE = "echo " + "x" * 59 + "ABCD"     # 68 characters: 65-68 overwrite ed.hist_count
BUG_SESSION = Path("build/demo/long-line.xrr")
BUG_CHECKS = Path("examples/test_long_line.py")


class DemoError(Exception):
    """A step did not behave as it says."""


@dataclass(frozen=True)
class Run:
    status: int
    stdout: str
    stderr: str


def xenrr(*arguments: str, show: bool = True) -> Run:
    """Run `xenrr ARGUMENTS` (this interpreter's dom0.cli), showing the command line as a user would type it."""
    if show:
        print(f"  $ xenrr {shlex.join(arguments)}")
    done = subprocess.run([sys.executable, "-m", "dom0.cli", *arguments], cwd=ROOT, capture_output=True,
                          timeout=300)
    return Run(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


def session_keys() -> str:
    return "".join(keys + r"\r" for _, keys in SESSION)


def show_console(stdout: str, headings: list[str | None] = ()) -> None:
    """Print guest console output indented; headings[n], when set, goes before the n-th typed line.

    The guest echoes a backspace as `\\b \\b` (rub out); it is shown as <BS>."""
    prompts = 0
    for line in stdout.replace("\b \b", "<BS>").split("\r\n"):
        if line.startswith("> "):
            if prompts < len(headings) and headings[prompts]:
                print(f"\n    # {headings[prompts]}")
            prompts += 1
        if line:
            print(f"    {line}")


def instructions(run: Run) -> int:
    last = run.stderr.strip().splitlines()[-1]
    words = last.split()
    if "instructions" not in words:
        raise DemoError(f"xenrr did not report an instruction count: {last!r}")
    return int(words[words.index("instructions") - 1])


def expect_status(run: Run, status: int) -> None:
    if run.status != status:
        raise DemoError(f"xenrr exited with status {run.status}, expected {status}: {run.stderr.strip()}")


# --------------------------------------------------------------------------- the steps

def boot_and_type() -> None:
    print("  kbdshell is a real x86-64 Xen PV kernel (C, built with gcc against the Xen headers). xenrr's\n"
          "  hypervisor, written in Python, boots it on an emulated vCPU and types a key script into its\n"
          "  PV console ring. --clock virtual: guest time follows the instruction count.\n")
    run = xenrr("run", str(KBDSHELL), "--clock", "virtual", "--keys", session_keys())
    expect_status(run, 0)
    show_console(run.stdout, [heading for heading, _ in SESSION])
    print(f"\n  The guest powered off: {run.stderr.strip().splitlines()[-1].removeprefix('xenrr: ')}.")


def reproducible() -> None:
    print("  With the virtual clock the same keys give the same run, to the instruction, however busy\n"
          "  the host is. (Recording, next, makes any run replayable this way, real clock included.)\n")
    print("  $ xenrr run ... (step 1's command, twice)")
    counts = [instructions(xenrr("run", str(KBDSHELL), "--clock", "virtual", "--keys", session_keys(), show=False))
              for _ in range(2)]
    if counts[0] != counts[1]:
        raise DemoError(f"two identical runs took {counts[0]} and {counts[1]} instructions")
    print(f"\n  Both runs powered off after exactly {counts[0]} instructions.")


def long_line_bug() -> None:
    print("  kbdshell has one deliberate bug: its line editor accepts 68 characters into a 64-byte\n"
          "  buffer, and characters 65-68 overwrite the history counter next to it. Type a long line,\n"
          "  then `hist`: the count is garbage (it should be 2). Reverse debugging will find the culprit.\n")
    run = xenrr("run", str(KBDSHELL), "--clock", "virtual", "--keys", LONG_LINE + r"\rhist\rhalt\r")
    expect_status(run, 0)
    show_console(run.stdout)
    wrong = int.from_bytes(b"ABCD", "little") + 2
    if f"\r\n{wrong}\r\n" not in run.stdout:
        raise DemoError(f"`hist` did not show the corrupted count {wrong}")
    print(f"\n  {wrong} = 0x{wrong:x}: the bytes of `ABCD` (0x44434241), plus the two lines typed.")


def hostile_guest() -> None:
    print("  A guest can only crash itself. The hostile guest writes to an unmapped address; the\n"
          "  hypervisor stops the domain and reports where (exit status 1, no Python traceback).\n")
    run = xenrr("run", str(HOSTILE), "--clock", "virtual", "--keys", "w")
    expect_status(run, 1)
    show_console(run.stdout)
    print(f"    {run.stderr.strip()}")


def record_the_bug() -> None:
    print("  `xenrr record` runs the guest exactly like `run` and logs every input - each key, each timer\n"
          "  tick, each time value - with the instruction count at which it arrived, into one file.\n")
    (ROOT / BUG_SESSION).parent.mkdir(parents=True, exist_ok=True)
    run = xenrr("record", str(KBDSHELL), "-o", str(BUG_SESSION), "--force", "--clock", "virtual",
                "--keys", LONG_LINE + r"\rhist\rhalt\r")
    expect_status(run, 0)
    print(f"    {run.stderr.strip()}")
    dump = xenrr("dump", str(BUG_SESSION), show=False)
    expect_status(dump, 0)
    print(f"\n  `xenrr dump` lists them: {dump.stdout.strip().splitlines()[-1]} (one per key typed, after the\n"
          "  boot time). We will ask which of them broke the history counter.")


def replay_the_bug() -> None:
    print("  Replay rebuilds the domain from the log, feeds it the same inputs at the same instruction\n"
          "  counts and checks the state digests recorded along the way.\n")
    run = xenrr("replay", str(BUG_SESSION), "--quiet")
    expect_status(run, 0)
    print(f"    {run.stderr.strip()}")


def say(call: str, result: str = "", note: str = "") -> None:
    """One line of the debugging transcript: the API call, what it returned, a comment."""
    print(f"  >>> {call}")
    for line in result.splitlines():
        print(f"      {line}")
    if note:
        print(f"      # {note}")


def stop_text(stop: Stop) -> str:
    """A stop in one line, then its source line."""
    source = linecache.getline(stop.fullname, stop.line).strip() if stop.fullname and stop.line else ""
    return stop.describe() + (f"\n  {stop.location}:  {source}" if source else "")


def hunt(d: Debugger) -> None:
    keys = [event for event in d.events() if event.kind == "console-input"]
    enter = keys[len(LONG_LINE)]                              # the Enter that ends the long line
    shown = d.events(enter.number - 4, enter.number)
    say(f"d.events({shown[0].number}, {shown[-1].number})",
        "\n".join(f"{event.number:3}  instruction {event.icount:6}  {event.kind}  {event.detail}" for event in shown),
        "the last four keys of the long line, then Enter")
    say(f"d.goto_event({enter.number})", stop_text(d.goto_event(enter.number)),
        "just before the Enter arrives (the guest waits for input in a hypercall)")
    corrupted = d.eval("ed.hist_count")
    if corrupted != int.from_bytes(b"ABCD", "little"):
        raise DemoError(f"ed.hist_count is {corrupted} before the Enter, not the bytes of ABCD")
    say('d.eval("ed.hist_count")', str(corrupted),
        f"= {corrupted:#x}, the bytes 'ABCD': wrong before the line even runs (no line was entered yet)")
    say('d.watch("ed.hist_count")', f"watchpoint {d.watch('ed.hist_count')}")
    stop = d.reverse_continue()
    if stop.function != "line_insert":
        raise DemoError(f"reverse-continue stopped in {stop.function}, not in line_insert")
    say("d.reverse_continue()", stop_text(stop),
        "back to the last write to ed.hist_count (values: where we came from -> before the write)")
    say("d.backtrace()", "\n".join(f"#{frame.level} {frame.function} at {frame.location}" for frame in d.backtrace()))
    event = d.event(stop.event)
    say(f"d.event({stop.event})", f"{event.kind}  {event.detail}", "the keystroke being handled")
    say('d.eval("c"), d.eval("ed.len")', f"{d.eval('c')!r}, {d.eval('ed.len')}",
        "line_insert stores the key at ed.line[ed.len]: index 67 of a 64-byte array")
    writes = []
    for _ in range(3):
        stop = d.reverse_continue()
        writes.append(f"{stop.function} storing {d.eval('c')!r} at ed.line[{d.eval('ed.len')}], event {stop.event}")
    say("d.reverse_continue()  # three more times", "\n".join(writes), "every key from the 65th on")
    say('d.eval("ed.len >= sizeof(ed.line)"), d.eval("ed.len >= sizeof(ed.line) + 4")',
        f"{d.eval('ed.len >= sizeof(ed.line)')}, {d.eval('ed.len >= sizeof(ed.line) + 4')}",
        "the line is full, yet line_insert's check (+ 4) lets the key in: that is the bug")
    stop = d.reverse_continue()
    if stop.reason != "history-start":
        raise DemoError(f"something else wrote ed.hist_count earlier: {stop.describe()}")
    say("d.reverse_continue()", stop.describe(), "nothing wrote ed.hist_count before: the 65th key was the first")


def debug_backwards() -> None:
    print("  A Python script (gdbext.api) drives real GDB against `xenrr serve`, a GDB remote-protocol\n"
          "  server on the replay that can also run backwards. Each call below is GDB doing the work.\n")
    say(f'd = xenrr_debug("{BUG_SESSION}")')
    try:
        with xenrr_debug(ROOT / BUG_SESSION) as d:
            hunt(d)
    except DebugError as error:
        raise DemoError(f"debugging failed: {error}") from None


def regression_check() -> None:
    print(f"  The same hunt, written as assertions in {BUG_CHECKS}, is a regression check:\n"
          "  `xenrr check` runs it on a recording and exits 0 only if every assertion holds (the file\n"
          "  also runs under pytest).\n")
    run = xenrr("check", str(BUG_SESSION), str(BUG_CHECKS))
    expect_status(run, 0)
    print(f"    {run.stdout.strip()}")


@dataclass(frozen=True)
class Step:
    title: str
    run: Callable[[], None]


STEPS = [
    Step("Boot a PV guest kernel and talk to it over its console", boot_and_type),
    Step("Same keys, same instruction count", reproducible),
    Step("The bug we will hunt", long_line_bug),
    Step("A crashing guest does not crash the hypervisor", hostile_guest),
    Step("Record the bug", record_the_bug),
    Step("Replay the recording and verify it", replay_the_bug),
    Step("Debug it backwards: who wrote the history counter?", debug_backwards),
    Step("Keep it found: a regression check", regression_check),
]


def main() -> int:
    for guest in (KBDSHELL, HOSTILE):
        if not (ROOT / guest).exists():
            print(f"demo: error: {guest} is missing; run `make` first", file=sys.stderr)
            return 1
    print("xenrr demo".center(WIDTH, "="))
    for number, step in enumerate(STEPS, 1):
        print(f"\n{number}. {step.title}\n{'-' * WIDTH}")
        try:
            step.run()
        except (DemoError, subprocess.TimeoutExpired) as error:
            print(f"demo: error in step {number}: {error}", file=sys.stderr)
            return 1
    print(f"\n{'=' * WIDTH}\nTry it yourself:\n"
          f"  .venv/bin/xenrr run {KBDSHELL}         talk to the guest (Ctrl-] leaves)\n"
          f"  .venv/bin/xenrr shell {BUG_SESSION}     the hunt above, interactively:\n"
          f"      goto {len(LONG_LINE) + 2}, watch ed.hist_count, rc, bt (Tab completes, F5/F6/F10/F11 move)\n"
          f"  .venv/bin/xenrr debug {BUG_SESSION}     the same in plain GDB (rr-goto, reverse-continue)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
