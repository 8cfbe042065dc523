"""The debugging commands of the xenrr CLI for people and scripts: `xenrr shell` and `xenrr check`.

Owns their arguments, exit statuses and one-line messages; `dom0/cli.py` adds them to its parser with
`add_user_commands(subparsers)` and dispatches through `USER_COMMANDS`. The debugging itself is
gdbext's: the shell (`gdbext.shell`) and the scripted API (`gdbext.api`), both driving real GDB
against `xenrr serve`. They are imported when a command runs, so `xenrr run` does not pay for
prompt_toolkit and pygdbmi.

A check script is a pytest file of functions named `test_*` that take `d`: a `gdbext.api.Debugger`
already connected to the session. `xenrr check` runs them through pytest (gdbext/check.py) in file
order on one debugger, reset (breakpoints deleted, back at the first instruction) before each; an
`assert` that fails, or any exception, fails that check, explained as pytest explains it. The same
file runs under plain pytest when a conftest.py provides the `d` fixture (examples/conftest.py does).

Invariant: `check` exits 0 with one line `PASS ...` only when every selected check ran and held; 1
when one failed (each failure named by file:line, its source line and pytest's explanation); 2 for
usage errors (missing files, swapped arguments, a script that does not load or has no checks, a
session that cannot be debugged).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from dom0.cliargs import add_goto_option, add_image_option, add_session_argument
from dom0.logfile import FILE_MAGIC

if TYPE_CHECKING:
    from gdbext.check import CheckResult

EXIT_PASS, EXIT_FAIL = 0, 1


class UserCommandError(Exception):
    """Bad input to `shell` or `check` (missing files, a script that cannot run, ...): one line, exit status 2."""


def add_user_commands(commands: argparse._SubParsersAction) -> None:
    """Add `shell` and `check` to the xenrr CLI's subcommands."""
    shell = commands.add_parser(
        "shell", help="debug a recording interactively, forwards and backwards",
        description="Replay SESSION under GDB and open the xenrr debugger shell: events, goto, break, watch, "
                    "continue/rc (reverse-continue), step/rs, next/rn, finish, stepi/rsi, print, x, bt, regs, "
                    "list, `gdb CMD` for any GDB command; `help` inside explains each. Tab completes commands "
                    "and guest symbols; F5 continue, Shift-F5/F6 reverse-continue, F10 next, F11 step.")
    add_session_argument(shell)
    add_goto_option(shell)
    add_image_option(shell)

    check = commands.add_parser(
        "check", help="run a regression-debugging script against a recording",
        description="Replay SESSION under GDB and run the checks of each SCRIPT (or of the test_*.py files in a "
                    "directory) with pytest: every function named test_* taking `d` (a gdbext.api.Debugger "
                    "connected to the replay, reset before each check). Prints `PASS ...` and exits 0 when all "
                    "hold; prints each failure as pytest explains it (file:line, the line, the values of a "
                    "failed assert) and exits 1 otherwise; exits 2 on usage errors. The same scripts run "
                    "under plain pytest with a fixture `d` (see examples/).")
    add_session_argument(check)
    check.add_argument("scripts", metavar="SCRIPT", type=Path, nargs="+",
                       help="a Python file of test_*(d) functions, or a directory of test_*.py such files")
    check.add_argument("-k", metavar="PATTERN",
                       help="run only the checks whose names match PATTERN (pytest's -k: `hist and not long`)")
    check.add_argument("--json", action="store_true",
                       help="print the results as one JSON object (every check: name, file, outcome, line, "
                            "source, message, output)")
    add_image_option(check)


def command_shell(args: argparse.Namespace) -> int:
    from gdbext.api import DebugError, xenrr_debug
    from gdbext.shell import DebugShell, guest_symbols

    try:
        debugger = xenrr_debug(args.session, args.image)
    except DebugError as error:
        raise UserCommandError(str(error)) from None
    with debugger:
        if args.goto is not None:
            try:
                debugger.goto_event(args.goto)
            except DebugError as error:
                raise UserCommandError(f"--goto: {error}") from None
        return DebugShell(debugger, guest_symbols(debugger.image), title=str(args.session)).run()


def _looks_like_log(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(FILE_MAGIC)) == FILE_MAGIC
    except OSError:
        return False


def _check_arguments(session: Path, scripts: list[Path]) -> None:
    """UserCommandError for arguments that cannot work: missing files, swapped arguments, an ELF or a
    log given as a script, a script that is not Python."""
    swapped = "the arguments look swapped: it is `xenrr check SESSION SCRIPT...`, the recording first"
    if any(_looks_like_log(script) for script in scripts) and not _looks_like_log(session):
        raise UserCommandError(swapped)
    if not session.exists():
        raise UserCommandError(f"cannot read {session}: no such file")
    if session.is_dir() or session.suffix == ".py":
        raise UserCommandError(f"{session} is not a recording (made by `xenrr record`)")
    for script in scripts:
        if not script.exists():
            raise UserCommandError(f"cannot read check script {script}: no such file")
        if script.is_dir():
            continue
        data = script.read_bytes()
        if data.startswith(b"\x7fELF"):
            raise UserCommandError(f"{script} is an ELF file, not a Python check script")
        if data.startswith(FILE_MAGIC):
            raise UserCommandError(f"{script} is a recording, not a Python check script")
        try:
            compile(data, str(script), "exec")
        except SyntaxError as error:
            if error.lineno is None:        # e.g. null bytes: not source text at all
                raise UserCommandError(f"{script} is not a Python check script ({error.msg})") from None
            raise UserCommandError(f"cannot load {script}:{error.lineno}: SyntaxError: {error.msg}") from None


def _describe_failure(result: CheckResult) -> list[str]:
    """A failed check as pytest explains it: where, the failing line, then each line of the explanation."""
    if result.outcome == "error":             # it never ran: its setup failed (an unknown fixture, ...)
        return [f"ERROR {result.location} in {result.name}: {result.message}"]
    lines = [f"FAIL {result.location} in {result.name}: {result.source}"]
    lines += [f"    E  {line}" for line in result.message.splitlines() if line.strip()]
    lines += [f"    |  {line}" for line in result.output.splitlines()]
    return lines


def command_check(args: argparse.Namespace) -> int:
    _check_arguments(args.session, args.scripts)
    from gdbext.check import CheckLoadError, run_checks

    try:
        results = run_checks(args.session, args.scripts, args.image, args.k)
    except CheckLoadError as error:
        raise UserCommandError(str(error)) from None
    failures = [result for result in results if result.outcome in ("failed", "error")]
    held = sum(result.outcome == "passed" for result in results)
    status = EXIT_FAIL if failures else EXIT_PASS
    scripts = " ".join(map(str, args.scripts))
    if args.json:
        print(json.dumps({"session": str(args.session), "scripts": [str(script) for script in args.scripts],
                          "status": status, "passed": held, "failed": len(failures),
                          "skipped": sum(result.outcome == "skipped" for result in results),
                          "checks": [asdict(result) for result in results]}, indent=1))
        return status
    for failure in failures:
        print("\n".join(_describe_failure(failure)))
    if failures:
        print(f"FAIL {scripts}: {len(failures)} of {len(results)} checks failed on {args.session}")
    else:
        print(f"PASS {scripts}: {held} checks held on {args.session}" +
              (f" ({len(results) - held} skipped)" if held < len(results) else ""))
    return status


USER_COMMANDS = {"shell": command_shell, "check": command_check}
