"""The debugging commands of the xenrr CLI for people and scripts: `xenrr shell` and `xenrr check`.

Owns their arguments, exit statuses and one-line messages; `dom0/cli.py` adds them to its parser with
`add_user_commands(subparsers)` and dispatches through `USER_COMMANDS`. The debugging itself is
gdbext's: the shell (`gdbext.shell`) and the scripted API (`gdbext.api`), both driving real GDB
against `xenrr serve`. They are imported when a command runs, so `xenrr run` does not pay for
prompt_toolkit and pygdbmi.

A check script is a Python file of functions named `test_*` that take one argument, `d`: a
`gdbext.api.Debugger` already connected to the session. `xenrr check` runs them in file order on
one debugger, resetting it (breakpoints deleted, back at the first instruction) before each; an
`assert` that fails, or any exception, fails that check. The same file runs under pytest when a
conftest.py provides the `d` fixture (examples/conftest.py does).

Invariant: `check` exits 0 with one line `PASS ...` only when every check ran and held; 1 when one
failed (each failure named by file:line and the assertion's text or message); 2 for usage errors
(missing files, a script that does not load or has no checks, a session that cannot be debugged).
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import inspect
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

from dom0.cliargs import add_image_option, add_session_argument

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class CheckScriptError(Exception):
    """The check script cannot be used: one line."""


def add_user_commands(commands: argparse._SubParsersAction) -> None:
    """Add `shell` and `check` to the xenrr CLI's subcommands."""
    shell = commands.add_parser(
        "shell", help="debug a recording interactively, forwards and backwards",
        description="Replay SESSION under GDB and open the xenrr debugger shell: events, goto, break, watch, "
                    "continue/rc (reverse-continue), step/rs, next/rn, finish, stepi/rsi, print, x, bt, regs, "
                    "list, `gdb CMD` for any GDB command; `help` inside explains each. Tab completes commands "
                    "and guest symbols; F5 continue, Shift-F5/F6 reverse-continue, F10 next, F11 step.")
    add_session_argument(shell)
    add_image_option(shell)

    check = commands.add_parser(
        "check", help="run a regression-debugging script against a recording",
        description="Replay SESSION under GDB and run SCRIPT's checks: every function named test_* taking one "
                    "argument `d` (a gdbext.api.Debugger connected to the replay, reset before each check). "
                    "Prints `PASS ...` and exits 0 when all hold; prints each failed assertion (file:line and "
                    "its text) and exits 1 otherwise; exits 2 on usage errors. The same script runs under "
                    "pytest with a fixture `d` (see examples/).")
    add_session_argument(check)
    check.add_argument("script", metavar="SCRIPT", type=Path, help="a Python file of test_*(d) functions")
    add_image_option(check)


def command_shell(args: argparse.Namespace) -> int:
    from gdbext.api import DebugError, xenrr_debug
    from gdbext.shell import DebugShell, guest_symbols

    try:
        debugger = xenrr_debug(args.session, args.image)
    except DebugError as error:
        print(f"xenrr: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    with debugger:
        return DebugShell(debugger, guest_symbols(debugger.image), title=str(args.session)).run()


@dataclass(frozen=True)
class CheckFailure:
    """One check that did not hold: where in the script, and what."""
    check: str
    location: str       # SCRIPT:LINE
    text: str           # the assertion's source line and message, or the exception

    def describe(self) -> str:
        return f"FAIL {self.location} in {self.check}: {self.text}"


def load_checks(script: Path) -> list[Callable]:
    """The script's test_* functions in file order; CheckScriptError if it does not load or has none."""
    loader = importlib.machinery.SourceFileLoader(f"xenrr_check_{script.stem}", str(script))   # any file name
    module: ModuleType = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    try:
        loader.exec_module(module)
    except Exception as error:
        if isinstance(error, SyntaxError):
            line, message = error.lineno, error.msg
        else:
            line = next((frame.lineno for frame in reversed(traceback.extract_tb(error.__traceback__))
                         if Path(frame.filename) == script), "?")
            message = str(error)
        raise CheckScriptError(f"cannot load {script}:{line}: {type(error).__name__}: {message}") from None
    checks = [function for name, function in vars(module).items()
              if name.startswith("test_") and inspect.isfunction(function) and function.__module__ == module.__name__]
    if not checks:
        raise CheckScriptError(f"{script} has no checks: define functions named test_* that take `d`")
    for function in checks:
        if list(inspect.signature(function).parameters) != ["d"]:
            raise CheckScriptError(f"{script}: {function.__name__} must take exactly one argument, `d`")
    return sorted(checks, key=lambda function: function.__code__.co_firstlineno)


def run_check(check: Callable, debugger, script: Path) -> CheckFailure | None:
    """Run one check on a reset debugger; its failure (located in the script where possible), or None."""
    try:
        debugger.reset()
        check(debugger)
    except Exception as error:
        frames = traceback.extract_tb(error.__traceback__)
        in_script = [frame for frame in frames if Path(frame.filename) == script]
        frame = in_script[-1] if in_script else frames[-1]
        location = f"{frame.filename}:{frame.lineno}"
        if isinstance(error, AssertionError):
            text = frame.line or "assert"
            if str(error) and str(error) not in text:        # a message the source line does not show
                text += f" ({error})"
        else:
            text = f"{type(error).__name__}: {error}"
        return CheckFailure(check.__name__, location, text)
    return None


def command_check(args: argparse.Namespace) -> int:
    from gdbext.api import DebugError, xenrr_debug

    try:
        if not args.script.is_file():
            raise CheckScriptError(f"cannot read check script {args.script}: no such file")
        checks = load_checks(args.script)
        debugger = xenrr_debug(args.session, args.image)
    except (CheckScriptError, DebugError) as error:
        print(f"xenrr: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    with debugger:
        failures = [failure for check in checks if (failure := run_check(check, debugger, args.script))]
    for failure in failures:
        print(failure.describe())
    if failures:
        print(f"FAIL {args.script}: {len(failures)} of {len(checks)} checks failed on {args.session}")
        return EXIT_FAIL
    print(f"PASS {args.script}: {len(checks)} checks held on {args.session}")
    return EXIT_PASS


USER_COMMANDS = {"shell": command_shell, "check": command_check}
