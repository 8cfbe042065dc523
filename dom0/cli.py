"""The xenrr toolstack command line: `xenrr run` and its siblings.

Owns argument parsing, exit statuses and the one-line error messages users see. It builds
domains (xen/), wires host input and output to them, and reports how they ended. Invariant: a
user error or bad input file never shows a traceback: it prints `xenrr: error: ...` on stderr
and exits with status 2.

Exit statuses: 0 the guest powered off, 1 the domain crashed (replay: diverged), 2 usage or input
error, 3 the run stopped before the guest shut down (instruction limit, input exhausted, deadlock,
detached with Ctrl-]; replay: the log is incomplete), 4 the log could not be written, 130 interrupted.
Under `--json` a failure or an interrupt also prints `{"error": ..., "status": N}` on stdout.
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from dom0.cliargs import add_image_option, add_kind_option, add_session_argument
from dom0.consoleinput import MAX_PAUSE_MS, KeyScript, KeyScriptError, TerminalInput, parse_key_script
from dom0.debugcli import DEBUG_COMMANDS, DebugCommandError, add_debug_commands
from dom0.forkserver import SERVER_COMMANDS, ServerCommandError, add_server_commands
from dom0.grubsyms import GRUB_COMMANDS, GrubSymbolsError, add_grub_commands
from dom0.keyboard import KeyboardTerminal, KeyEventScript
from dom0.logfile import LogFormatError, LogReader, count_phrase
from dom0.logschema import check_header
from dom0.replay import ReplaySession, ReplaySetupError
from dom0.terminal import Terminal
from dom0.toolstack import GUEST_DOMID, connect_xenstore, xenstore_config
from dom0.usercli import USER_COMMANDS, UserCommandError, add_user_commands
from dom0.xenstored import format_perms, is_valid_path
from host.cli import HOST_COMMANDS, HostCommandError, add_host_commands, record_running_domain
from xen.builder import BuildError, build_domain
from xen.domain import Domain
from xen.inject import ReplayDivergence, UnusableRecord, describe_payload
from xen.logrecord import FIRST_INPUT_KIND, kind_name, kinds_named
from xen.replay import Mark
from xen.sched import NS_PER_SECOND, Outcome, Scheduler
from xen.smp import DEFAULT_QUANTUM, MAX_QUANTUM, MAX_VCPUS
from xen.vcpu import EngineError

EXIT_OK, EXIT_CRASHED, EXIT_USAGE, EXIT_STOPPED, EXIT_LOG_FAILED = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130          # Ctrl-C, as a shell reports a command killed by SIGINT
DEFAULT_MEMORY_MIB = 16


class UsageError(Exception):
    """Bad arguments or input files: reported in one line, exit status 2."""


_terminal = Terminal()
REPLAY_PROGRESS_STEP = 100_000_000    # instructions replayed between two progress reports


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `xenrr: error: ...` and exit status 2 (main reports them), no usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--keys", metavar="TEXT",
                      help="type TEXT into the guest console instead of reading the terminal; C escapes "
                           r"\r \n \t \\ \e (ESC) \xNN, and \pN pauses N ms (at most an hour) before the next key (end N with ; "
                           r"if a digit follows: \p20;0)")
    keys.add_argument("--keys-file", metavar="FILE", type=Path,
                      help="like --keys, with the script read from FILE: its bytes are the keys as they are (a carriage "
                           "return stays a carriage return, a line feed a line feed), escapes as in --keys")
    parser.add_argument("--keyboard", choices=("console", "pv"), default="console",
                        help="where typed keys go: console (default) writes them into the PV console ring; pv gives "
                             "the domain a PV keyboard (kbdif) and types them on it as key presses and releases "
                             r"with Linux keycodes (docs/keyboard.md); --keys may then also name keys: \d{NAME} "
                             r"presses and holds, \u{NAME} releases, \k{NAME} taps (e.g. \d{LEFTSHIFT}abc\u{LEFTSHIFT}, "
                             r"\k{UP})")
    parser.add_argument("--xenstore-write", metavar="PATH=VALUE", action="append", default=[],
                        help="write VALUE at PATH in the domain's xenstore, as the toolstack (dom0) does, the first "
                             "time the guest idles (e.g. control/shutdown=poweroff, as `xl shutdown`); a relative "
                             "PATH is under the domain's /local/domain/N; may be repeated")
    parser.add_argument("--memory", metavar="MiB", type=int, default=DEFAULT_MEMORY_MIB,
                        help=f"guest memory in MiB (default {DEFAULT_MEMORY_MIB})")
    parser.add_argument("--max-instructions", metavar="N", type=int,
                        help="stop the domain after N guest instructions (exit status 3)")
    parser.add_argument("--clock", choices=("real", "virtual"), default="real",
                        help="real: guest time and timer ticks follow the host clock (default); virtual: guest "
                             "time is derived from the instruction count and scripted keys arrive when the "
                             "guest idles, so a run is reproducible without a log")
    parser.add_argument("--vcpus", metavar="N", type=int, default=1,
                        help=f"the domain's vCPUs (1 to {MAX_VCPUS}, default 1); vCPU 0 starts, the guest brings "
                             "the others up (VCPUOP_initialise, VCPUOP_up)")
    parser.add_argument("--quantum", metavar="INSTRUCTIONS", type=int, default=DEFAULT_QUANTUM,
                        help="the vCPUs take turns on one emulated CPU, this many instructions each in a fixed "
                             f"order (default {DEFAULT_QUANTUM}); a recording keeps it, so replay interleaves them "
                             "exactly; a smaller quantum interleaves them more finely (to shake out a race)")
    parser.add_argument("--linger", metavar="SECONDS", type=float, default=1.0,
                        help="with scripted keys: after the last key, stop once the guest has idled this long "
                             "(guest time under --clock virtual, host time under real) without shutting down "
                             "(default 1.0; exit status 3)")


@functools.cache            # built once per process: the fork server builds it for every child
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="xenrr",
        description="Record/replay and reverse debugging for paravirtualized (Xen PV ABI) guest domains.",
        epilog="Exit status: 0 the guest powered off (replay: verified to the end), 1 the domain crashed "
               "(replay: diverged), 2 usage or input error, 3 stopped before the guest shut down (instruction "
               "limit, key script done, detached with Ctrl-]; replay: the log is incomplete), 4 the log could "
               "not be written, 130 interrupted (Ctrl-C). `xenrr COMMAND --help` explains each command. "
               "The first run, record, replay, dump, xenstore-ls or serve starts a fork server in the background "
               "that later ones start from (much faster); it exits after 10 idle minutes: see `xenrr server "
               "--help`; XENRR_SERVER=off turns it off.")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run", help="boot a PV guest kernel and attach its console",
        description="Boot GUEST (a Xen PV x86-64 ELF kernel) and connect its PV console to this terminal "
                    "(Ctrl-] leaves, as `xl console` does) or to a key script. Guest console output goes to "
                    "stdout; the hypervisor's messages and the guest's CONSOLEIO_write text go to stderr.")
    run.add_argument("guest", metavar="GUEST", type=Path, help="the guest kernel (ELF with Xen notes)")
    _add_input_options(run)

    record = commands.add_parser(
        "record", help="run a guest like `run` and record every input into one log file",
        description="Run GUEST exactly as `xenrr run` does (same console, same options) and record every "
                    "nondeterministic input - console keys, timer interrupts, time values, random numbers - with the "
                    "instruction count at which it arrived, into the log SESSION. `xenrr replay SESSION` then "
                    "reproduces the run instruction for instruction. Exit status as for run, or 4 if the log "
                    "could not be written (it stays valid up to the last complete block). "
                    "`xenrr record NAME -o SESSION`, NAME a domain running on the host (`xenrr up`, `xenrr create`), "
                    "records that domain from its current instruction on: the log begins with its whole state "
                    "(replay needs no host), the command waits until the domain shuts down or is destroyed, and "
                    "Ctrl-C (or the command's end) stops the recording while the domain runs on (exit 130). "
                    "SESSION is never replaced; the guest options below do not apply to a running domain.")
    record.add_argument("guest", metavar="GUEST|NAME", type=Path,
                        help="the guest kernel (ELF with Xen notes), or the name of a domain running on the host")
    record.add_argument("-o", "--output", metavar="SESSION", type=Path, required=True,
                        help="the log file to write (e.g. session.xrr); an existing file is never replaced "
                             "unless --force is given")
    record.add_argument("--force", action="store_true", help="replace SESSION if it exists")
    record.add_argument("--snapshot-every", metavar="SECONDS|INSTRUCTIONS",
                        help="store a full-state snapshot every INSTRUCTIONS guest instructions (e.g. 1e8) or every "
                             "SECONDS of recording (e.g. 2s) in SESSION.snap beside the log, so that replay --from, "
                             "--jobs and goto start from the nearest one; 0: none (default: every 2^28 instructions)")
    record.add_argument("--socket", metavar="PATH", type=Path,
                        help="with NAME: the host's control socket (default as for the host commands)")
    _add_input_options(record)

    replay = commands.add_parser(
        "replay", help="replay a recording and verify it",
        description="Rebuild the recorded domain from SESSION's header, feed it the logged inputs at their exact "
                    "instruction counts, reproduce its console output byte for byte, and check every state "
                    "digest. Exit status: 0 replayed and verified to the end, 1 replay diverged (the message names "
                    "the instruction count and what differed), 2 unusable log or wrong guest image, 3 the log is "
                    "damaged or incomplete (its valid part replayed and verified).")
    add_session_argument(replay)
    add_image_option(replay)
    replay.add_argument("--quiet", action="store_true", help="do not print the guest's console output")
    replay.add_argument("--until-event", metavar="N", type=int,
                        help="stop just before input event N is injected (events are numbered from 1; "
                             "see `xenrr dump`)")
    replay.add_argument("--json", action="store_true",
                        help="print a JSON summary on stdout instead of the console output")
    replay.add_argument("--from", dest="from_event", metavar="EVENT", type=int,
                        help="start just before input event EVENT, from the nearest stored snapshot before it "
                             "(SESSION.snap, checked against the log's digest) instead of the first instruction; "
                             "console output and verification from there on")
    replay.add_argument("--jobs", metavar="N", type=int,
                        help="verify in N processes at once, one segment per interval between stored snapshots "
                             "(each from its snapshot to the next one's digest); no console output")
    replay.add_argument("--segment", metavar="K[-L]", help=argparse.SUPPRESS)    # one unit of --jobs

    dump = commands.add_parser(
        "dump", help="print a recording's header and records",
        description="Print SESSION's header and every record (sequence number, instruction count, rip, kind, "
                    "payload in words: the keys typed, the guest time published, ...; input events with their "
                    "event number), and any damage found.")
    add_session_argument(dump)
    add_kind_option(dump)
    dump.add_argument("--json", action="store_true", help="one JSON object: header, records, damage")

    xenstore_ls = commands.add_parser(
        "xenstore-ls", help="show a recording's xenstore tree",
        description="Replay SESSION to the end (or to just before input event N) and print the domain's xenstore "
                    "tree as xenstore-ls does: one node per line, `name = \"value\"`, children indented by one "
                    "space; non-printable bytes as \\ooo (octal).")
    add_session_argument(xenstore_ls)
    add_image_option(xenstore_ls)
    xenstore_ls.add_argument("--at", metavar="EVENT", type=int,
                             help="the tree just before input event EVENT is injected (as `replay --until-event`)")
    xenstore_ls.add_argument("-p", "--perms", action="store_true",
                             help="also show each node's permissions (owner first), as `xenstore-ls -p`")
    add_debug_commands(commands)
    add_user_commands(commands)
    add_grub_commands(commands)
    add_host_commands(commands)
    add_server_commands(commands)
    for command_parser in commands.choices.values():      # its errors point to its own --help
        command_parser.set_defaults(command_parser=command_parser)
    return parser


class _VersionAction(argparse.Action):
    """--version: the installed package's version, looked up (importlib.metadata) only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the program's version number and exit", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        print(f"xenrr {_version()}")
        parser.exit()


def _version() -> str:
    from importlib import metadata
    try:
        return metadata.version("xenrr")
    except metadata.PackageNotFoundError:          # run from a source tree that was never installed
        return "(not installed)"


def _console_input(args: argparse.Namespace):
    """The host's keys as the input the chosen device takes: console bytes or PV keyboard events."""
    pv = args.keyboard == "pv"
    script: str | bytes | None = args.keys
    if args.keys_file is not None:
        try:
            script = args.keys_file.read_bytes()
        except OSError as error:
            raise UsageError(f"cannot read key script {args.keys_file}: {error.strerror}") from None
    if script is not None:
        return KeyEventScript(script) if pv else KeyScript(parse_key_script(script))
    if sys.stdin is None:           # `xenrr run GUEST <&-`
        raise UsageError("standard input is closed: give keys with --keys or --keys-file, or none with </dev/null")
    terminal = TerminalInput(sys.stdin.fileno())
    return KeyboardTerminal(terminal) if pv else terminal


def _restore_terminal(console_input) -> None:
    if isinstance(console_input, (TerminalInput, KeyboardTerminal)):
        console_input.restore()


def _xenstore_writes(args: argparse.Namespace) -> list[tuple[str, bytes]]:
    """The --xenstore-write options as (absolute path, value), checked as xenstored checks paths."""
    writes = []
    for text in args.xenstore_write:
        path, separator, value = text.partition("=")
        if not separator or not path:
            raise UsageError(f"--xenstore-write wants PATH=VALUE, not {text!r}")
        if not path.startswith("/"):
            path = f"/local/domain/{GUEST_DOMID}/{path}"
        if not is_valid_path(path):
            raise UsageError(f"--xenstore-write: {path!r} is not a valid xenstore path "
                             "(letters, digits and -/_@; no empty, doubled or trailing /)")
        writes.append((path, value.encode()))
    return writes


def _check_numbers(args: argparse.Namespace) -> None:
    if args.memory < 1 or args.memory > 4096:
        raise UsageError(f"--memory must be between 1 and 4096 MiB, not {args.memory}")
    if args.max_instructions is not None and args.max_instructions < 0:
        raise UsageError("--max-instructions must not be negative")
    if not 1 <= args.vcpus <= MAX_VCPUS:
        raise UsageError(f"--vcpus must be between 1 and {MAX_VCPUS}, not {args.vcpus}")
    if not 1 <= args.quantum <= MAX_QUANTUM:
        raise UsageError(f"--quantum must be between 1 and {MAX_QUANTUM} instructions, not {args.quantum}")
    if not 0 <= args.linger <= MAX_PAUSE_MS / 1000:      # also refuses nan and inf
        raise UsageError(f"--linger must be between 0 and {MAX_PAUSE_MS // 1000} seconds, not {args.linger}")


def load_domain(guest: Path, memory_mib: int, keyboard: str = "console", vcpus: int = 1,
                quantum: int = DEFAULT_QUANTUM) -> Domain:
    """Build a live domain from a guest kernel file, with console output wired to stdout/stderr (and a
    PV keyboard device with keyboard "pv"); `vcpus` vCPUs taking turns in quanta of `quantum` instructions."""
    try:
        image_bytes = guest.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read guest kernel {guest}: {error.strerror}") from None
    image = build_domain(image_bytes, memory_mib * 1024 * 1024)
    domain = Domain(image, vcpus=vcpus, quantum=quantum, console_output=_terminal.write_console,
                    hypervisor_console=_terminal.write_hypervisor_console)
    connect_xenstore(domain, xenstore_config(guest, keyboard))
    return domain


def _exit_status(outcome: Outcome) -> int:
    if outcome.reason == "crashed" or (outcome.reason == "shutdown" and outcome.detail == "crash"):
        return EXIT_CRASHED
    if outcome.reason == "shutdown":
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
             "deadlock": f"stopped: {outcome.detail}",
             "input-refused": f"stopped: key script not done: {outcome.detail}"}
    return f"{texts[outcome.reason]} after {outcome.icount} instructions"


def command_run(args: argparse.Namespace) -> int:
    _check_numbers(args)
    writes = _xenstore_writes(args)
    console_input = _console_input(args)
    try:
        domain = load_domain(args.guest, args.memory, args.keyboard, args.vcpus, args.quantum)
        outcome = Scheduler(domain, console_input, clock=args.clock, max_instructions=args.max_instructions,
                            linger_ns=int(args.linger * NS_PER_SECOND), xenstore_writes=writes,
                            keyboard=args.keyboard == "pv").run()
    finally:
        _restore_terminal(console_input)
    _terminal.say(f"xenrr: {_describe(outcome)}")
    return _exit_status(outcome)


def command_record(args: argparse.Namespace) -> int:
    from dom0.record import EarlyDaemon, RecordingFailed, RecordingRefused, record    # `run` starts without them
    _check_numbers(args)
    if not args.guest.exists():
        if args.force:
            raise UsageError(f"--force: {args.guest} is no guest kernel file, and the log of a running domain is "
                             "never replaced")
        return record_running_domain(str(args.guest), args.output, args.socket)
    if args.socket is not None:
        raise UsageError(f"--socket names a host, but {args.guest} is a guest kernel file, not a domain's name")
    from dom0.snapshots import DEFAULT_EVERY_INSTRUCTIONS, Interval, snapshot_path

    try:
        snapshot_every = Interval.parse(str(DEFAULT_EVERY_INSTRUCTIONS) if args.snapshot_every is None
                                        else args.snapshot_every)
    except ValueError as error:
        raise UsageError(str(error)) from None
    writes = _xenstore_writes(args)
    console_input = _console_input(args)
    early = None
    try:
        early = EarlyDaemon()          # forked first: the domain built next is not copied into it
        domain = load_domain(args.guest, args.memory, args.keyboard, args.vcpus, args.quantum)
        result = record(domain, args.guest, console_input, args.output, clock=args.clock,
                        max_instructions=args.max_instructions, linger_ns=int(args.linger * NS_PER_SECOND),
                        overwrite=args.force, xenstore_writes=writes,
                        xenstore=xenstore_config(args.guest, args.keyboard), keyboard=args.keyboard == "pv",
                        early=early, snapshot_every=snapshot_every)
    except RecordingRefused as error:
        raise UsageError(str(error)) from None
    except RecordingFailed as error:
        _terminal.say(f"xenrr: error: recording stopped: {error}")
        return EXIT_LOG_FAILED
    finally:
        if early is not None:
            early.abandon()
        _restore_terminal(console_input)
    size = result.path.stat().st_size
    snapshots = ""
    if result.snapshots:
        snapshots = f"; {count_phrase(result.snapshots, 'snapshot')} in {snapshot_path(result.path)} ({result.snapshot_bytes} bytes)"
    _terminal.say(f"xenrr: {_describe(result.outcome)}; {count_phrase(result.records, 'record')} logged to {result.path} "
                  f"({size} bytes){snapshots}")
    if result.snapshot_problem:
        _terminal.say(f"xenrr: warning: {result.snapshot_problem}")
    return _exit_status(result.outcome)


def _open_session(path: Path, image: Path | None, console_output) -> ReplaySession:
    try:
        return ReplaySession(path, image, console_output=console_output)
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None


def _before_event(session: ReplaySession, number: int | None) -> Mark | None:
    """The mark just before input event `number` is injected (None: no event given)."""
    if number is None:
        return None
    try:
        event = session.event(number)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return Mark(event.icount, event.seq)


def _replay_showing_progress(session: ReplaySession, until: Mark | None, enabled: bool) -> None:
    """Replay to `until` (or the end) in steps of REPLAY_PROGRESS_STEP instructions, reporting each
    to a progress bar (a replay stops exactly anywhere: the steps change nothing in it)."""
    replayer, vcpu = session.replayer, session.domain.vcpu
    total = until.icount if until is not None else session.last_icount
    with _terminal.progress(total, "replaying", "instructions", enabled) as report:
        while True:
            step = Mark(vcpu.icount + REPLAY_PROGRESS_STEP, 0)
            final = until is not None and step >= until
            stop = replayer.run(until if final else step)
            report(vcpu.icount)
            if final or stop.reason != "target":
                return


def _warn(message: str) -> None:
    """A warning on its own line (a stored snapshot skipped, ...)."""
    _terminal.say(f"xenrr: warning: {message}")


def _check_replay_options(args: argparse.Namespace) -> None:
    exclusive = [name for name, value in (("--from", args.from_event), ("--jobs", args.jobs),
                                          ("--segment", args.segment)) if value is not None]
    if len(exclusive) > 1:
        raise UsageError(f"{' and '.join(exclusive)} cannot be combined")
    if args.until_event is not None and (args.jobs is not None or args.segment is not None):
        raise UsageError(f"--until-event cannot be combined with {exclusive[0]}")
    if args.jobs is not None and not 1 <= args.jobs <= 256:
        raise UsageError(f"--jobs must be between 1 and 256, not {args.jobs}")
    if args.from_event is not None and args.until_event is not None and args.until_event < args.from_event:
        raise UsageError(f"--until-event {args.until_event} is before --from {args.from_event}")


def command_replay(args: argparse.Namespace) -> int:
    _check_replay_options(args)
    if args.jobs is not None:
        return _replay_in_segments(args)
    show_console = not (args.quiet or args.json)
    console = {"on": args.from_event is None}
    session = _open_session(args.session, args.image, lambda data: (_terminal.write_console(data)
                                                                    if show_console and console["on"] else None))
    if args.segment is not None:
        return _replay_segment(args, session)
    from dom0.snapshots import SnapshotFile

    start = _before_event(session, args.from_event)
    until = _before_event(session, args.until_event)
    replayer = session.replayer
    divergence = None
    events_before = digests_before = 0     # with --from: what this replay applied and checked is counted from there
    try:
        if start is not None:
            from stub.timeline import Timeline    # restores and checks the stored snapshot

            Timeline(session, checkpoint_interval=2**62, stored=SnapshotFile.beside(args.session, _warn),
                     warn=_warn).goto(start)
            console["on"] = True
            events_before, digests_before = replayer.inputs_applied, replayer.digests_checked
        _replay_showing_progress(session, until, enabled=not args.json)
    except ReplayDivergence as error:
        divergence = str(error)
    damage = session.damage
    complete = replayer.recorded_outcome is not None
    events, digests = replayer.inputs_applied - events_before, replayer.digests_checked - digests_before
    summary = {"session": str(args.session), "events": events,
               "instructions": session.domain.vcpu.icount, "start_icount": session.start_icount,
               "digests_checked": digests,
               "verified": divergence is None, "divergence": divergence, "complete": complete,
               "recorded_outcome": replayer.recorded_outcome, "damage": str(damage) if damage else None,
               "stopped_before_event": args.until_event, "started_before_event": args.from_event}
    if args.json:
        _terminal.write_output((json.dumps(summary, indent=2) + "\n").encode())
    if divergence is not None:
        _terminal.say(f"xenrr: replay diverged: {divergence}")
        return EXIT_CRASHED
    started = f" from event {args.from_event}" if args.from_event is not None else ""
    if args.until_event is not None:
        verdict = f"stopped before event {args.until_event}"
    elif complete and damage:
        verdict = f"replayed to the end of the recording, but the log is damaged after its END record: {damage}"
    elif complete:
        verdict = "replayed to the end of the recording"
    else:
        verdict = f"log is incomplete: {damage or 'no END record'}; everything before it"
    since = f" (from instruction {session.start_icount})" if session.start_icount else ""
    _terminal.say(f"xenrr: {verdict}{started}: {count_phrase(events, 'event')}, "
                  f"{session.domain.vcpu.icount} instructions{since}, {count_phrase(digests, 'state digest')} verified")
    session.close()
    if args.until_event is not None or (complete and not damage):
        return EXIT_OK
    return EXIT_STOPPED


def _replay_segment(args: argparse.Namespace, session: ReplaySession) -> int:
    """`replay --segment K`: verify one segment (a unit of --jobs and of `verify --segments`), JSON only."""
    from dom0.segments import parse_range, verify_segment
    from dom0.snapshots import SnapshotFile

    try:
        first, last = parse_range(args.segment)
        summary = verify_segment(session, SnapshotFile.beside(args.session, _warn), first, last, _warn)
    except ValueError as error:
        raise UsageError(f"--segment: {error}") from None
    summary["damage"] = str(session.damage) if session.damage else None
    _terminal.write_output((json.dumps(summary, indent=2) + "\n").encode())
    return _replay_status(summary, session.damage, last=summary["last"])


def _replay_status(summary: dict, damage, last: bool = True) -> int:
    if not summary["verified"]:
        return EXIT_CRASHED
    if not last or (summary["complete"] and not damage):
        return EXIT_OK
    return EXIT_STOPPED


def _replay_in_segments(args: argparse.Namespace) -> int:
    """`replay --jobs N`: the recording's segments verified N at a time by forked worker processes."""
    from dom0.segments import SegmentWorkers, count_segments, merge

    count = count_segments(args.session, _warn)
    jobs = min(count, args.jobs)           # never more processes than segments
    workers = SegmentWorkers(args.session, count, jobs, args.image)
    try:
        session = _open_session(args.session, args.image, lambda data: None)    # checked here once, meanwhile
    except BaseException:
        workers.stop()
        raise
    damage = session.damage
    session.close()
    with _terminal.progress(jobs, "verifying", "units", enabled=not args.json) as report:
        summaries = workers.results(report)
    merged = merge(summaries)
    merged.update(session=str(args.session), damage=str(damage) if damage else None, jobs=jobs)
    if args.json:
        _terminal.write_output((json.dumps(merged, indent=2) + "\n").encode())
    if not merged["verified"]:
        _terminal.say(f"xenrr: replay diverged: {merged['divergence']}")
    else:
        verdict = "replayed to the end of the recording" if merged["complete"] else \
            f"log is incomplete: {damage or 'no END record'}; everything before it"
        _terminal.say(f"xenrr: {verdict} in {count_phrase(count, 'segment')}, {jobs} at a time: "
                      f"{count_phrase(merged['events'], 'event')}, {merged['instructions']} instructions, "
                      f"{count_phrase(merged['digests_checked'], 'state digest')} verified")
    return _replay_status(merged, damage)


def _kind_filter(names: str | None) -> set[int] | None:
    """The kinds a `--kind` option selects (None: all)."""
    if names is None:
        return None
    try:
        return kinds_named(names)
    except ValueError as error:
        raise UsageError(f"--kind: {error}") from None


def _xenstore_value(value: bytes) -> str:
    """A value as xenstore-ls prints it: printable ASCII as is, backslash doubled, other bytes \\ooo."""
    return "".join(chr(byte) if 0x20 <= byte < 0x7F and byte != 0x5C else "\\\\" if byte == 0x5C
                   else f"\\{byte:03o}" for byte in value)


def command_xenstore_ls(args: argparse.Namespace) -> int:
    session = _open_session(args.session, args.image, lambda data: None)
    store = session.domain.xenstore
    if store is None:
        raise UsageError(f"{args.session} was recorded without xenstore (by an older xenrr)")
    until = _before_event(session, args.at)
    try:
        session.replayer.run(until)
    except ReplayDivergence as error:
        _terminal.say(f"xenrr: replay diverged: {error}")
        return EXIT_CRASHED
    for depth, name, value, perms in store.listing():
        line = f"{' ' * depth}{name} = \"{_xenstore_value(value)}\""
        print(f"{line}  ({format_perms(perms)})" if args.perms else line)
    session.close()
    return EXIT_OK


def command_dump(args: argparse.Namespace) -> int:
    kinds = _kind_filter(args.kind)
    try:
        reader = LogReader(args.session)
    except OSError as error:
        raise UsageError(f"cannot read {args.session}: {error.strerror}") from None
    with reader:
        header = reader.header
        try:
            check_header(header)
            header_error = None
        except LogFormatError as error:        # shown all the same (dump is how one looks at a bad log), then refused
            header_error = str(error)
        records = []
        total = event = 0
        for logged in reader.records():
            total += 1
            if logged.kind >= FIRST_INPUT_KIND:
                event += 1
            if kinds is not None and logged.kind not in kinds:
                continue
            payload = bytes(logged.payload)
            records.append({"seq": logged.seq, "event": event if logged.kind >= FIRST_INPUT_KIND else None,
                            "icount": logged.icount, "rip": logged.rip, "vcpu": logged.vcpu,
                            "kind": kind_name(logged.kind), "detail": describe_payload(logged.kind, payload),
                            "payload": payload.hex()})
        damage = str(reader.damage) if reader.damage else None
    if args.json:
        print(json.dumps({"image_sha256": header.image_sha256.hex(), "config": header.config,
                          "initial_state": header.initial_state, "records": records, "damage": damage,
                          **({"error": header_error, "status": EXIT_USAGE} if header_error else {})}, indent=1))
        return _header_verdict(header_error)
    print(f"image sha256  {header.image_sha256.hex()}")
    for key, value in sorted(header.config.items()):
        print(f"{key:13} {value}")
    if header.start_state:
        print(f"{'starts at':13} instruction {header.start_icount} (the state of a running domain, "
              f"{len(header.start_state)} bytes)")
    smp = isinstance(header.config.get("vcpus"), int) and header.config["vcpus"] > 1   # the vCPU each record names
    print(f"{'seq':>8} {'event':>7} {'icount':>14}" + (" vcpu" if smp else "") + f" {'rip':>18}  {'kind':<14} payload")
    for entry in records:
        event_text = str(entry["event"]) if entry["event"] is not None else "-"
        vcpu = f" {entry['vcpu']:>4}" if smp else ""
        print(f"{entry['seq']:>8} {event_text:>7} {entry['icount']:>14}{vcpu} {entry['rip']:#18x}  {entry['kind']:<14} "
              f"{entry['detail']}")
    shown = (f"{len(records)} of {count_phrase(total, 'record')} ({args.kind})" if kinds is not None
             else count_phrase(total, 'record'))
    print(f"{shown}, {count_phrase(event, 'input event')}" + (f"; damage: {damage}" if damage else ""))
    return _header_verdict(header_error)


def _header_verdict(header_error: str | None) -> int:
    """dump's status: a header no replay may trust is a usage error, said in one line after the listing."""
    if header_error is None:
        return EXIT_OK
    _terminal.say(f"xenrr: error: {header_error}")
    return EXIT_USAGE


COMMANDS = {"run": command_run, "record": command_record, "replay": command_replay, "dump": command_dump,
            "xenstore-ls": command_xenstore_ls,
            **DEBUG_COMMANDS, **USER_COMMANDS, **GRUB_COMMANDS, **HOST_COMMANDS, **SERVER_COMMANDS}


# While a host runs (`xenrr up`), these replay on a core of their own that the host's domains keep off.
PINNED_COMMANDS = ("replay", "serve")


def _fail(message: str, status: int, json_wanted: bool) -> int:
    """Report a failure: one line on stderr and, under --json, a JSON error object on stdout."""
    _terminal.say(f"xenrr: {message}")
    if json_wanted:
        print(json.dumps({"error": message.removeprefix("error: "), "status": status}), flush=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []    # for the program a command starts
    argv = argv[:len(argv) - len(passthrough) - 1] if "--" in argv else argv
    json_wanted = "--json" in argv
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if passthrough and not getattr(args, "passes_through", None):
            unknown += ["--", *passthrough]
        if unknown:
            args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.passthrough = passthrough
        if args.command in PINNED_COMMANDS:        # the replaying process (debug's is its serve)
            from host.pinning import pinned_replay
            with pinned_replay():
                return COMMANDS[args.command](args)
        return COMMANDS[args.command](args)
    except (UsageError, KeyScriptError, BuildError, EngineError, LogFormatError, ReplaySetupError,
            UnusableRecord, DebugCommandError, UserCommandError, GrubSymbolsError,
            HostCommandError, ServerCommandError) as error:
        return _fail(f"error: {error}", EXIT_USAGE, json_wanted)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED, json_wanted)
    except BrokenPipeError:          # e.g. `xenrr dump S | head`: the reader has gone, nothing to report
        sys.stderr.close()
        return EXIT_OK


def program() -> int:
    """The `xenrr` program (and `python -m dom0.cli`): `main`, then an exit that leaves the objects to the
    operating system instead of one more garbage collection of all of them at shutdown (~15 ms of CPU for
    a run; files are closed and logs finished by then)."""
    status = main()
    gc.freeze()
    return status


if __name__ == "__main__":
    sys.exit(program())
