"""The debugging commands of the xenrr CLI for people and scripts: `xenrr shell`, `xenrr check`, `xenrr verify`.

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

`check` with several recordings (or a directory, a glob, --workers/--scheduler/--junit-xml) and
`verify` are batches: dom0/batch.py runs one Dask work unit per recording; this module checks the
arguments and prints the table, JSON or JUnit XML. One recording file with scripts keeps the
single-recording path below, unchanged.

Invariant: single-recording `check` exits 0 with one line `PASS ...` only when every selected check ran and held; 1
when one failed (each failure named by file:line, its source line and pytest's explanation); 2 for
usage errors (missing files, swapped arguments, a script that does not load or has no checks, a
session that cannot be debugged).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from dom0.batch import (BatchError, exit_status, gather, is_recording, run_batch, run_segment_batch, summary_line,
                        table, to_json, to_junit_xml, wants_batch)
from dom0.cliargs import add_goto_option, add_image_option, add_session_argument
from dom0.logfile import FILE_MAGIC
from dom0.terminal import Terminal

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
        "check", help="run regression-debugging scripts against one or many recordings",
        usage="xenrr check [options] RECORDING... SCRIPT...",
        description="Replay each RECORDING under GDB and run the checks of each SCRIPT (or of the test_*.py files in a "
                    "directory) with pytest: every function named test_* taking `d` (a gdbext.api.Debugger "
                    "connected to the replay, reset before each check). Recordings and scripts are told apart by "
                    "content, not by name: a file that starts with the log's magic bytes (written by `xenrr "
                    "record`) is a recording, any other file a script; a directory gives its recordings and its "
                    "test_*.py files; a quoted glob ('corpus/*.xrr') is expanded. With one recording file, prints "
                    "`PASS ...` and exits 0 when all hold, or prints each failure as pytest explains it (file:line, "
                    "the line, the values of a failed assert) and exits 1. " + BATCH_DESCRIPTION + " The same "
                    "scripts run under plain pytest with a fixture `d` (see examples/).")
    check.add_argument("paths", metavar="RECORDING_OR_SCRIPT", type=str, nargs="+",
                       help="a recording, a Python file of test_*(d) functions, a directory, or a glob")
    check.add_argument("-k", metavar="PATTERN",
                       help="run only the checks whose names match PATTERN (pytest's -k: `hist and not long`)")
    check.add_argument("--json", action="store_true",
                       help="print the results as one JSON object (every check: name, file, outcome, line, "
                            "source, message, output; with many recordings, one entry per recording)")
    add_batch_options(check)
    add_image_option(check)

    verify = commands.add_parser(
        "verify", help="replay many recordings and verify their state digests, on Dask",
        usage="xenrr verify [options] RECORDING...",
        description="Replay each RECORDING (files, directories holding recordings, or quoted globs; recordings are "
                    "recognised by content) as `xenrr replay --quiet` does, checking every state digest. "
                    + BATCH_DESCRIPTION)
    verify.add_argument("paths", metavar="RECORDING", type=str, nargs="+",
                        help="a recording, a directory holding recordings, or a glob")
    verify.add_argument("--json", action="store_true", help="print the results as one JSON object, one entry "
                                                            "per recording")
    verify.add_argument("--segments", action="store_true",
                        help="one work unit per segment of each recording (an interval between its stored snapshots, "
                             "as `xenrr replay --jobs`), so that one long recording is verified by many workers")
    add_batch_options(verify)
    add_image_option(verify)


BATCH_DESCRIPTION = (
    "With several recordings (or a directory, a glob, or any of the options below) each recording is one work "
    "unit on Dask: a local cluster of --workers processes (loopback only) unless --scheduler or "
    "DASK_SCHEDULER_ADDRESS names a real cluster, whose workers must have xenrr installed and see the same paths. "
    "Prints a table (status, seconds, recording, detail) and a summary line, a progress bar on a terminal; a "
    "failing recording or a crashing worker is reported and the rest go on. Exit status: 0 all passed, 1 a check "
    "failed, a replay diverged or a worker crashed, 2 usage error or a recording that cannot be replayed at all "
    "(not a log, malformed header, wrong guest image), 3 a log is damaged or incomplete (its valid part verified); "
    "the first that applies.")


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", metavar="N", type=int,
                        help=f"local Dask worker processes (default: one per CPU, {os.cpu_count()} here)")
    parser.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                        help="run on the Dask cluster of this scheduler (default: DASK_SCHEDULER_ADDRESS, "
                             "else a local cluster)")
    parser.add_argument("--junit-xml", metavar="FILE", type=Path,
                        help="also write the results as JUnit XML to FILE, for CI systems")


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


def _check_arguments(session: Path, scripts: list[Path]) -> None:
    """UserCommandError for arguments that cannot work: missing files, swapped arguments, an ELF or a
    log given as a script, a script that is not Python."""
    swapped = "the arguments look swapped: it is `xenrr check SESSION SCRIPT...`, the recording first"
    if any(is_recording(script) for script in scripts) and not is_recording(session):
        raise UserCommandError(swapped)
    if not session.exists():
        raise UserCommandError(f"cannot read {session}: no such file")
    if session.is_dir() or session.suffix == ".py":
        raise UserCommandError(f"{session} is not a recording (made by `xenrr record`)")
    for script in scripts:
        _check_script(script)


def _check_script(script: Path) -> None:
    """UserCommandError for a check script that cannot load: missing, an ELF or a log, not Python."""
    if not script.exists():
        raise UserCommandError(f"cannot read check script {script}: no such file")
    if script.is_dir():
        return
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


def _batch_wanted(args: argparse.Namespace) -> bool:
    return (args.command == "verify" or args.workers is not None or args.scheduler is not None
            or args.junit_xml is not None or wants_batch(args.paths))


def command_check(args: argparse.Namespace) -> int:
    if _batch_wanted(args):
        return _run_batch(args)
    if len(args.paths) < 2:
        raise UserCommandError("no check script given: it is `xenrr check RECORDING... SCRIPT...`")
    args.session, args.scripts = Path(args.paths[0]), [Path(path) for path in args.paths[1:]]
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


def _run_batch(args: argparse.Namespace) -> int:
    """`check` or `verify` over many recordings on Dask (dom0/batch.py): table or JSON, JUnit XML."""
    if args.workers is not None and args.workers < 1:
        raise UserCommandError("--workers: give at least 1")
    try:
        recordings, scripts = gather(args.paths, scripts_in_directories=args.command == "check")
    except BatchError as error:
        raise UserCommandError(str(error)) from None
    if args.command == "check":
        if not scripts:
            raise UserCommandError("no check scripts among the arguments: it is `xenrr check RECORDING... SCRIPT...`")
        for script in scripts:
            _check_script(script)
    elif scripts:
        raise UserCommandError(f"{scripts[0]} is not a recording (made by `xenrr record`)")
    terminal = Terminal()
    scheduler = args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    with terminal.progress(len(recordings), args.command, "recordings", enabled=not args.json) as report:
        try:
            if getattr(args, "segments", False):
                results = run_segment_batch(recordings, image=args.image, workers=args.workers or os.cpu_count() or 1,
                                            scheduler=scheduler, progress=report)
            else:
                results = run_batch(args.command, recordings, scripts, image=args.image,
                                    select=getattr(args, "k", None), workers=args.workers or os.cpu_count() or 1,
                                    scheduler=scheduler, progress=report)
        except BatchError as error:
            raise UserCommandError(str(error)) from None
    if args.junit_xml is not None:
        try:
            args.junit_xml.write_bytes(to_junit_xml(args.command, results))
        except OSError as error:
            raise UserCommandError(f"cannot write {args.junit_xml}: {error.strerror}") from None
    if args.json:
        print(to_json(args.command, results, scripts))
    else:
        print(table(results))
        print(summary_line(args.command, results))
    return exit_status(results)


USER_COMMANDS = {"shell": command_shell, "check": command_check, "verify": _run_batch}
