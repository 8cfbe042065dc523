"""The xenrr debugger shell: a prompt_toolkit prompt over the scripted debugging API.

Owns the interactive loop of `xenrr shell`: parsing the shell's commands, completing command names
and guest symbols (read from the guest ELF with pyelftools), the persistent history, the bottom
toolbar (event k/N, instruction count, function, file:line), the function keys, showing each
stop with the source lines around it, and a progress bar while a long motion runs (on a terminal). All debugging is done by `gdbext.api.Debugger`, that is by
real GDB; this module only reads and prints.

Invariant: whatever the user types, the shell answers with text and a new prompt - a GDB error is one
line `error: ...`, a Ctrl-C stops the running command - and only `quit` or end of input ends it.
"""
from __future__ import annotations

import linecache
import os
import re
import shlex
import shutil
import textwrap
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

from dom0.terminal import Terminal
from gdbext.api import Debugger, DebugError, Stop
from stub.progress import Progress
from xen.inject import input_kinds_text

SOURCE_CONTEXT = 2        # source lines shown before and after the current one
EVENT_WINDOW = 10         # `events` without arguments lists this many events either side of the current one
GENERAL_REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
                     "r12", "r13", "r14", "r15", "rip", "eflags")


class UsageError(Exception):
    """A shell command was typed wrongly: the message says how to type it."""


def history_path() -> Path:
    """Where the shell keeps its history: $XDG_STATE_HOME/xenrr/history when XDG_STATE_HOME is set,
    else ~/.xenrr_history."""
    state = os.environ.get("XDG_STATE_HOME")
    return Path(state) / "xenrr" / "history" if state else Path.home() / ".xenrr_history"


def guest_symbols(elf_path: Path) -> list[str]:
    """The names of the guest's functions and data objects, sorted."""
    with open(elf_path, "rb") as file:
        names = {symbol.name
                 for section in ELFFile(file).iter_sections() if isinstance(section, SymbolTableSection)
                 for symbol in section.iter_symbols()
                 if symbol.name and symbol["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT")}
    return sorted(names)


@dataclass(frozen=True)
class Command:
    names: tuple[str, ...]       # the command and its aliases
    usage: str
    summary: str
    run: Callable[[DebugShell, str], None]
    takes_symbol: bool = False   # complete guest symbols in its argument


class ShellCompleter(Completer):
    """Command names for the first word; in the argument of commands that take an expression, guest
    symbols (from the ELF), and struct members after `.` or `->` (GDB completes those)."""

    def __init__(self, commands: dict[str, Command], symbols: list[str], debugger: Debugger):
        self.commands = commands
        self.symbols = symbols
        self.debugger = debugger

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        if " " not in text.lstrip():
            yield from _completions(text.lstrip(), sorted(self.commands))
            return
        command = self.commands.get(text.split()[0])
        if command is None:
            return
        if command.names[0] == "help":
            yield from _completions(text.split()[-1] if not text.endswith(" ") else "", sorted(self.commands))
        elif command.takes_symbol:
            expression = re.search(r"[A-Za-z_][\w.>-]*$|$", text).group(0)
            if "." in expression or "->" in expression:
                try:
                    matches = self.debugger.complete(f"print {expression}")
                except DebugError:
                    return
                yield from _completions(expression, [match.removeprefix("print ") for match in matches])
            else:
                yield from _completions(expression, self.symbols)


class ProgressBars:
    """The progress bar of the motion running now (a long `c`, `rc`, ...), drawn on the terminal
    (dom0/terminal.py, tqdm on stderr) from the stub's progress reports: a new bar for each motion
    GDB runs, cleared by `close()` when the command returns, before its stop is shown."""

    def __init__(self, terminal: Terminal):
        self._terminal = terminal
        self._bar = ExitStack()
        self._shown: tuple[str, int] | None = None          # (command, total) of the bar drawn
        self._report: Callable[[int], None] = lambda done: None

    def report(self, progress: Progress) -> None:
        if (progress.command, progress.total) != self._shown:
            self.close()
            self._report = self._bar.enter_context(
                self._terminal.progress(progress.total, progress.command, "instructions", delay=0))
            self._shown = (progress.command, progress.total)
        self._report(progress.done)

    def close(self) -> None:
        self._bar.close()
        self._shown = None


def _completions(word: str, candidates: Iterable[str]) -> Iterable[Completion]:
    for candidate in candidates:
        if candidate.startswith(word):
            yield Completion(candidate, start_position=-len(word))


class DebugShell:
    """The shell over one Debugger. `run()` is the interactive loop; `execute(line)` runs one command."""

    def __init__(self, debugger: Debugger, symbols: list[str], title: str = ""):
        self.debugger = debugger
        self.title = title
        self.commands: dict[str, Command] = {name: command for command in COMMANDS for name in command.names}
        self.completer = ShellCompleter(self.commands, symbols, debugger)
        self.finished = False
        self.progress = ProgressBars(Terminal())

    # ------------------------------------------------------------------ the loop
    def run(self, history: Path | None = None) -> int:
        """Read and run commands until `quit` or end of input; exit status 0."""
        path = history or history_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        session: PromptSession[str] = PromptSession(
            history=FileHistory(str(path)), completer=self.completer, complete_while_typing=False,
            bottom_toolbar=self.toolbar, key_bindings=self._key_bindings())
        print(f"xenrr shell{': ' + self.title if self.title else ''}  ({self.debugger.event_count} input events)")
        damage = self.debugger.damage()
        if damage:
            print(f"warning: {damage}")
        print("`help` lists the commands. F5 continue, Shift-F5/F6 reverse-continue, F10 next, F11 step.")
        if Terminal.interactive():
            self.debugger.report_progress(self.progress.report)
        self.show_stop(self.debugger.last_stop)
        while not self.finished:
            try:
                line = session.prompt("(xenrr) ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            self.execute(line)
        return 0

    def execute(self, line: str) -> None:
        """Run one command line, printing its output or a one-line error."""
        found = re.match(r"\s*([^\s/]+)(\S*)\s*(.*)$", line)    # `x/16xb &ed`: name x, argument /16xb &ed
        if not found:
            return
        name, argument = found.group(1), f"{found.group(2)} {found.group(3)}".strip()
        command = self.commands.get(name)
        try:
            if command is None:
                raise UsageError(f"unknown command {name!r}; `help` lists the commands")
            command.run(self, argument)
        except UsageError as error:
            print(f"usage error: {error}")
        except DebugError as error:
            print(f"error: {error}")
        except KeyboardInterrupt:
            print("interrupted")

    def toolbar(self) -> str:
        stop = self.debugger.last_stop
        if stop is None:
            return " no position yet"
        return (f" event {stop.event}/{self.debugger.event_count} | instruction {stop.icount} | "
                f"{stop.function or '??'} | {stop.location}")

    def _key_bindings(self) -> KeyBindings:
        bindings = KeyBindings()
        for key, command in (("f5", "continue"), ("f17", "rc"), ("f6", "rc"), ("f10", "next"), ("f11", "step")):
            bindings.add(key)(_typing(command))
        return bindings

    # ------------------------------------------------------------------ output
    def show_stop(self, stop: Stop | None) -> None:
        """The stop in one line, then the source lines around it."""
        if stop is None:
            return
        reasons = {"history-start": "no more history: the start of the recording",
                   "history-end": "no more history: the end of the recording",
                   "interrupt": "interrupted", "breakpoint": "breakpoint"}
        if stop.reason in reasons:
            print(reasons[stop.reason])
        elif stop.reason == "watchpoint":
            print(f"watchpoint: old value {stop.old_value}, new value {stop.new_value}")
        vcpu = f", vCPU {stop.vcpu}" if self.debugger.vcpu_count > 1 else ""
        print(f"{stop.function or '??'} at {stop.location}  [event {stop.event}/{self.debugger.event_count}, "
              f"instruction {stop.icount}, pc {stop.pc:#x}{vcpu}]")
        if stop.fullname and stop.line:
            for number in range(max(1, stop.line - SOURCE_CONTEXT), stop.line + SOURCE_CONTEXT + 1):
                text = linecache.getline(stop.fullname, number)
                if text:
                    print(f"{'=>' if number == stop.line else '  '} {number:4}  {text.rstrip()}")

    # ------------------------------------------------------------------ commands
    def motion(self, run: Callable[[], Stop], argument: str) -> None:
        if argument:
            raise UsageError("this command takes no argument")
        try:
            stop = run()
        finally:
            self.progress.close()
        self.show_stop(stop)

    def do_events(self, argument: str) -> None:
        usage = "events [--kind KIND[,KIND...]] [FROM [TO]]"
        kind = None
        words: list[str] = []
        arguments = iter(shlex.split(argument))
        for word in arguments:                 # --kind may come before, between or after the numbers
            if word == "--kind" or word.startswith("--kind="):
                kind = word.removeprefix("--kind").removeprefix("=") or next(arguments, "")
                if not kind:
                    raise UsageError(usage)
            else:
                words.append(word)
        numbers = _numbers(shlex.join(words), usage, most=2)
        current = self.debugger.last_stop.event if self.debugger.last_stop else 0
        if numbers:
            first, last = numbers[0], numbers[1] if len(numbers) > 1 else numbers[0] + 2 * EVENT_WINDOW
        elif kind is not None:
            first, last = 1, None            # every event of that kind
        else:
            first, last = max(1, current - EVENT_WINDOW), current + EVENT_WINDOW
        events = self.debugger.events(first, last, kind=kind)
        if not events:
            of_kind = f" of kind {kind}" if kind else ""
            raise UsageError(f"no events{of_kind} in {first}..{last or len(self.debugger.events())}: the recording "
                             f"has events 1 to {len(self.debugger.events())}")
        for event in events:
            marker = "=>" if event.number == current + 1 else "  "
            print(f"{marker}{event.number:>7}  instruction {event.icount:>12}  {event.kind:<14} {event.detail}")
        print(f"(=> marks the next event to be injected; {len(self.debugger.events())} events in all)")

    def do_goto(self, argument: str) -> None:
        words = shlex.split(argument)
        if len(words) == 1 and not re.fullmatch(r"[-+]?(0[xX][0-9a-fA-F]+|\d+)", words[0]):
            self.show_stop(self.debugger.goto_bookmark(words[0]))
            return
        (number,) = _numbers(argument, "goto EVENT|BOOKMARK", least=1, most=1)
        self.show_stop(self.debugger.goto_event(number))

    def do_goto_icount(self, argument: str) -> None:
        (icount,) = _numbers(argument, "goto-icount N", least=1, most=1)
        self.show_stop(self.debugger.goto_icount(icount))

    def do_when(self, argument: str) -> None:
        _numbers(argument, "when", most=0)
        event, icount = self.debugger.when()
        print(f"event {event}/{self.debugger.event_count} applied, instruction {icount}")

    def do_bookmark(self, argument: str) -> None:
        words = shlex.split(argument)
        if len(words) > 1:
            raise UsageError("bookmark [NAME] (one word)")
        if words:
            self.debugger.bookmark(words[0])
            event, icount = self.debugger.when()
            print(f"bookmark {words[0]}: event {event}/{self.debugger.event_count}, instruction {icount}")
            return
        bookmarks = self.debugger.bookmarks()
        if not bookmarks:
            print("no bookmarks; `bookmark NAME` names the current position")
        for name, icount in bookmarks.items():
            print(f"  {name:<16} instruction {icount}")

    def do_break(self, argument: str) -> None:
        if not argument:
            raise UsageError("break LOCATION [if CONDITION] (a function, FILE:LINE or *ADDRESS)")
        print(f"breakpoint {self.debugger.break_at(argument)} at {argument}")

    def do_watch(self, argument: str) -> None:
        if not argument:
            raise UsageError("watch EXPRESSION")
        print(f"watchpoint {self.debugger.watch(argument)}: {argument}")

    def do_delete(self, argument: str) -> None:
        numbers = _numbers(argument, "delete [NUMBER]", most=1)
        self.debugger.delete(numbers[0] if numbers else None)
        print(f"deleted {'breakpoint ' + str(numbers[0]) if numbers else 'all breakpoints and watchpoints'}")

    def do_print(self, argument: str) -> None:
        if not argument:
            raise UsageError("print[/FMT] EXPRESSION")
        if argument.startswith("/"):
            self.do_gdb_command(f"print{argument}")
        else:
            print(f"{argument} = {self.debugger.eval_text(argument)}")

    def do_backtrace(self, argument: str) -> None:
        for frame in self.debugger.backtrace():
            print(f"#{frame.level:<2} {frame.function or '??'} at {frame.location}  ({frame.pc:#x})")

    def do_threads(self, argument: str) -> None:
        for thread in self.debugger.threads():
            print(f"{'*' if thread.selected else ' '} vCPU {thread.vcpu}  {thread.status:<9} "
                  f"{thread.function or '??'} ({thread.pc:#x})")

    def do_thread(self, argument: str) -> None:
        [vcpu] = _numbers(argument, "thread N (a vCPU number, as `threads` lists them)", 1, 1)
        self.show_stop(self.debugger.select_thread(vcpu))

    def do_registers(self, argument: str) -> None:
        registers = self.debugger.registers()
        names = [name for name in GENERAL_REGISTERS if name in registers]
        for row in range(0, len(names), 3):
            print("   ".join(f"{name:>6} {registers[name]:#018x}" for name in names[row:row + 3]))

    def do_gdb_command(self, command: str) -> None:
        if not command:
            raise UsageError("gdb COMMAND (any GDB command)")
        before = self.debugger.last_stop
        try:
            output = self.debugger.gdb(command)
        finally:
            self.progress.close()
        print(output, end="" if output.endswith("\n") or not output else "\n")
        if self.debugger.last_stop is before:
            self.debugger.last_stop = self.debugger.where()   # e.g. `monitor goto`: the toolbar follows

    def do_help(self, argument: str) -> None:
        if argument:
            command = self.commands.get(argument.strip())
            if command is None:
                raise UsageError(f"unknown command {argument.strip()!r}")
            aliases = f" (also: {', '.join(command.names[1:])})" if len(command.names) > 1 else ""
            width = max(40, shutil.get_terminal_size().columns - 1)     # words whole at the terminal's edge
            print(f"{command.usage}{aliases}\n" + textwrap.fill(command.summary, width, initial_indent="    ",
                                                                 subsequent_indent="    "))
            return
        for command in COMMANDS:
            print(f"  {command.usage:<30} {command.summary}")
        print("Keys: F5 continue, Shift-F5 or F6 reverse-continue, F10 next, F11 step; Ctrl-C stops a running "
              "command; Tab completes commands and guest symbols.")

    def do_quit(self, argument: str) -> None:
        self.finished = True


def _typing(command: str) -> Callable[[KeyPressEvent], None]:
    """A key binding that types `command` and presses Enter."""
    def handler(event: KeyPressEvent) -> None:
        buffer = event.app.current_buffer
        buffer.text = command
        buffer.validate_and_handle()
    return handler


def _numbers(argument: str, usage: str, least: int = 0, most: int = 0) -> list[int]:
    words = shlex.split(argument)
    if not least <= len(words) <= most:
        raise UsageError(usage)
    try:
        return [int(word, 0) for word in words]
    except ValueError:
        raise UsageError(f"{usage}: not a number in {argument!r}") from None


def _motion(name: str) -> Callable[[DebugShell, str], None]:
    return lambda shell, argument: shell.motion(getattr(shell.debugger, name), argument)


def _gdb(prefix: str) -> Callable[[DebugShell, str], None]:
    """A shell command passed to GDB as typed (`x/4xw &ed` -> GDB's `x/4xw &ed`)."""
    return lambda shell, argument: shell.do_gdb_command(
        prefix + argument if argument.startswith("/") else f"{prefix} {argument}".strip())


COMMANDS = [
    Command(("events",), "events [--kind K] [FROM [TO]]",
            f"list input events by number; --kind one or more of {input_kinds_text()}",
            DebugShell.do_events),
    Command(("goto",), "goto EVENT|BOOKMARK", "go to just before input event EVENT is injected, or to a bookmark",
            DebugShell.do_goto),
    Command(("goto-icount",), "goto-icount N", "go to where exactly N instructions have retired",
            DebugShell.do_goto_icount),
    Command(("when",), "when", "the current position: last event applied, instructions retired",
            DebugShell.do_when),
    Command(("bookmark",), "bookmark [NAME]", "name the current position (`goto NAME` returns); alone: list them",
            DebugShell.do_bookmark),
    Command(("break", "b"), "break LOCATION [if CONDITION]", "set a breakpoint (function, FILE:LINE or *ADDRESS)",
            DebugShell.do_break, takes_symbol=True),
    Command(("watch",), "watch EXPRESSION", "stop when the value of EXPRESSION is written",
            DebugShell.do_watch, takes_symbol=True),
    Command(("delete",), "delete [NUMBER]", "delete one or all breakpoints and watchpoints", DebugShell.do_delete),
    Command(("continue", "c"), "continue", "run forward to the next breakpoint, watchpoint or the end",
            _motion("cont")),
    Command(("rc",), "rc", "run backward to the previous breakpoint, watchpoint or the start",
            _motion("reverse_continue")),
    Command(("step", "s"), "step", "forward one source line, into calls", _motion("step")),
    Command(("rs",), "rs", "backward one source line, into calls", _motion("reverse_step")),
    Command(("next", "n"), "next", "forward one source line, over calls", _motion("next")),
    Command(("rn",), "rn", "backward one source line, over calls", _motion("reverse_next")),
    Command(("finish",), "finish", "run forward until the current function returns", _motion("finish")),
    Command(("rf",), "rf", "run backward to where the current function was called", _motion("reverse_finish")),
    Command(("stepi", "si"), "stepi", "forward one instruction", _motion("stepi")),
    Command(("rsi",), "rsi", "backward one instruction", _motion("reverse_stepi")),
    Command(("print", "p"), "print EXPRESSION", "the value of a C expression (GDB evaluates it)",
            DebugShell.do_print, takes_symbol=True),
    Command(("x",), "x[/FMT] ADDRESS", "examine memory, as GDB's x (e.g. x/16xb &ed)", _gdb("x"), takes_symbol=True),
    Command(("bt",), "bt", "the call stack", DebugShell.do_backtrace),
    Command(("regs",), "regs", "the general registers", DebugShell.do_registers),
    Command(("threads",), "threads", "the domain's vCPUs: running, runnable, blocked or down, and where",
            DebugShell.do_threads),
    Command(("thread",), "thread N", "show vCPU N: registers, bt and print are about it from now on",
            DebugShell.do_thread),
    Command(("list",), "list [LOCATION]", "source lines, as GDB's list", _gdb("list"), takes_symbol=True),
    Command(("info",), "info breakpoints", "breakpoints and watchpoints (any GDB `info` subcommand works)",
            _gdb("info")),
    Command(("gdb",), "gdb COMMAND", "run any GDB command", DebugShell.do_gdb_command, takes_symbol=True),
    Command(("help",), "help [COMMAND]", "this list, or one command's help", DebugShell.do_help),
    Command(("quit", "q", "exit"), "quit", "leave the shell", DebugShell.do_quit),
]
