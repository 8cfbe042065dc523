"""The xenrr toolstack command line: `xenrr run` and its siblings.

Owns argument parsing, exit statuses and the one-line error messages users see. It builds
domains (xen/), wires host input and output to them, and reports how they ended. Invariant: a
user error or bad input file never shows a traceback: it prints `xenrr: error: ...` on stderr
and exits with status 2.

Exit statuses: 0 the guest powered off (or you detached), 1 the domain crashed, 2 usage or input
error, 3 the run stopped before the guest shut down (instruction limit, input exhausted, deadlock).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from dom0.consoleinput import KeyScript, KeyScriptError, TerminalInput, parse_key_script
from xen.builder import BuildError, build_domain
from xen.domain import Domain
from xen.sched import NS_PER_SECOND, Outcome, Scheduler
from xen.vcpu import EngineError

EXIT_OK, EXIT_CRASHED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3
DEFAULT_MEMORY_MIB = 16


class UsageError(Exception):
    """Bad arguments or input files: reported in one line, exit status 2."""


def _write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _write_stderr(data: bytes) -> None:
    sys.stderr.buffer.write(data)
    sys.stderr.buffer.flush()


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `xenrr: error: ...` and exit status 2, no usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"xenrr: error: {message} (see `{self.prog} --help`)\n")


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--keys", metavar="TEXT",
                      help="type TEXT into the guest console instead of reading the terminal; C escapes "
                           r"\r \n \t \\ \xNN, and \pN pauses N ms before the next key")
    keys.add_argument("--keys-file", metavar="FILE", type=Path,
                      help="like --keys, with the script read from FILE (escapes as in --keys)")
    parser.add_argument("--memory", metavar="MiB", type=int, default=DEFAULT_MEMORY_MIB,
                        help=f"guest memory in MiB (default {DEFAULT_MEMORY_MIB})")
    parser.add_argument("--max-instructions", metavar="N", type=int,
                        help="stop the domain after N guest instructions (exit status 3)")
    parser.add_argument("--clock", choices=("real", "virtual"), default="real",
                        help="real: guest time and timer ticks follow the host clock (default); virtual: guest "
                             "time is derived from the instruction count and scripted keys arrive when the "
                             "guest idles, so a run is reproducible without a log")
    parser.add_argument("--linger", metavar="SECONDS", type=float, default=1.0,
                        help="with scripted keys: after the last key, stop once the guest has idled this long "
                             "(guest time) without shutting down (default 1.0; exit status 3)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="xenrr",
        description="Record/replay and reverse debugging for paravirtualized (Xen PV ABI) guest domains.",
        epilog="Exit status: 0 guest powered off, 1 domain crashed, 2 usage or input error, "
               "3 stopped before the guest shut down. `xenrr COMMAND --help` explains each command.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run", help="boot a PV guest kernel and attach its console",
        description="Boot GUEST (a Xen PV x86-64 ELF kernel) and connect its PV console to this terminal "
                    "(Ctrl-] leaves, as `xl console` does) or to a key script. Guest console output goes to "
                    "stdout; the hypervisor's messages and the guest's CONSOLEIO_write text go to stderr.")
    run.add_argument("guest", metavar="GUEST", type=Path, help="the guest kernel (ELF with Xen notes)")
    _add_input_options(run)
    return parser


def _console_input(args: argparse.Namespace):
    if args.keys is not None:
        return KeyScript(parse_key_script(args.keys))
    if args.keys_file is not None:
        try:
            text = args.keys_file.read_text()
        except OSError as error:
            raise UsageError(f"cannot read key script {args.keys_file}: {error.strerror}") from None
        return KeyScript(parse_key_script(text))
    return TerminalInput(sys.stdin.fileno())


def _check_numbers(args: argparse.Namespace) -> None:
    if args.memory < 1 or args.memory > 4096:
        raise UsageError(f"--memory must be between 1 and 4096 MiB, not {args.memory}")
    if args.max_instructions is not None and args.max_instructions < 0:
        raise UsageError("--max-instructions must not be negative")
    if args.linger < 0:
        raise UsageError("--linger must not be negative")


def load_domain(guest: Path, memory_mib: int) -> Domain:
    """Build a live domain from a guest kernel file, with console output wired to stdout/stderr."""
    try:
        image_bytes = guest.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read guest kernel {guest}: {error.strerror}") from None
    image = build_domain(image_bytes, memory_mib * 1024 * 1024)
    return Domain(image, console_output=_write_stdout, hypervisor_console=_write_stderr)


def _exit_status(outcome: Outcome) -> int:
    if outcome.reason == "crashed" or (outcome.reason == "shutdown" and outcome.detail == "crash"):
        return EXIT_CRASHED
    if outcome.reason in ("shutdown", "detached"):
        return EXIT_OK
    return EXIT_STOPPED


def _describe(outcome: Outcome) -> str:
    if outcome.reason == "shutdown":
        return f"domain shut down ({outcome.detail}) after {outcome.icount} instructions"
    if outcome.reason == "crashed":
        return outcome.detail
    texts = {"instruction-limit": "stopped at the instruction limit",
             "input-exhausted": "stopped: key script done and the guest stayed idle",
             "detached": "detached from the console; domain destroyed",
             "deadlock": f"stopped: {outcome.detail}"}
    return f"{texts[outcome.reason]} after {outcome.icount} instructions"


def command_run(args: argparse.Namespace) -> int:
    _check_numbers(args)
    console_input = _console_input(args)
    domain = load_domain(args.guest, args.memory)
    scheduler = Scheduler(domain, console_input, clock=args.clock, max_instructions=args.max_instructions,
                          linger_ns=int(args.linger * NS_PER_SECOND))
    try:
        outcome = scheduler.run()
    finally:
        if isinstance(console_input, TerminalInput):
            console_input.restore()
    print(f"xenrr: {_describe(outcome)}", file=sys.stderr)
    return _exit_status(outcome)


COMMANDS = {"run": command_run}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, KeyScriptError, BuildError, EngineError) as error:
        print(f"xenrr: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("xenrr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
