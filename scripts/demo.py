"""The xenrr demo (`make demo`): a guided tour for a newcomer, one numbered step at a time.

Owns the story told by `make demo`. Each step is a function that runs the real `xenrr` CLI on the real
guest kernels (as a user would type it), prints what happened in a few readable lines, and raises
DemoError when something did not behave as the step says. Invariant: the demo only uses public
commands and prints nothing it did not observe; it exits 0 only when every step held.
Steps for recording, replay and reverse debugging join STEPS as those features land.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


@dataclass(frozen=True)
class Step:
    title: str
    run: Callable[[], None]


STEPS = [
    Step("Boot a PV guest kernel and talk to it over its console", boot_and_type),
    Step("Same keys, same instruction count", reproducible),
    Step("The bug we will hunt", long_line_bug),
    Step("A crashing guest does not crash the hypervisor", hostile_guest),
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
    print(f"\n{'=' * WIDTH}\nTry it yourself: .venv/bin/xenrr run {KBDSHELL}    (Ctrl-] leaves)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
