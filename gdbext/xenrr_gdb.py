"""xenrr's GDB extension: the rr-* commands that connect GDB to a replay and move through it.

Load it in GDB with `source gdbext/xenrr_gdb.py` (or `gdb -x ...`; `xenrr debug` does it). It runs
inside GDB's embedded Python, so it uses the standard library and the `gdb` module only, and it
reaches a replay only through the remote protocol: `rr-replay` starts `xenrr serve` and connects
to it; the other commands are the stub's `monitor` commands, with GDB's view refreshed after a
jump.

Commands: rr-replay SESSION.xrr [--image ELF], rr-goto EVENT|BOOKMARK, rr-events [--kind KIND] [FROM [TO]],
rr-when, rr-bookmark [NAME], rr-grub-modules [DIR]. (GDB's own `checkpoint` needs a native process; on a replay, bookmarks
take its place: they are positions in the recording, so going back to one restores everything.)
Invariant: every failure reaches the user as one line (gdb.GdbError), and a `xenrr serve`
started here never outlives this GDB.

Which `xenrr` runs: the command line in $XENRR if set (`xenrr debug` sets it), else `xenrr` on
PATH.
"""
from __future__ import annotations

import atexit
import os
import re
import select
import shlex
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import gdb

SERVER_START_TIMEOUT = 60.0     # seconds `xenrr serve` may take to replay-check the log and listen
LISTENING = re.compile(rb"listening on (127\.0\.0\.1):(\d+)")
REMOTE_TIMEOUT = 120            # seconds GDB waits for a reply: a far `goto` replays a long way

_servers: list[subprocess.Popen] = []


def _xenrr_command() -> list[str]:
    configured = os.environ.get("XENRR")
    if configured:
        return shlex.split(configured)
    on_path = shutil.which("xenrr")
    if on_path is None:
        raise gdb.GdbError("cannot find the xenrr command: put it on PATH (activate its venv) or name it in $XENRR")
    return [on_path]


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _start_server(session: str, image: str | None) -> tuple[subprocess.Popen, str]:
    """Start `xenrr serve` on a free port; return it and its address once it listens."""
    argv = _xenrr_command() + ["serve", session, "--port", "0"] + (["--image", image] if image else [])
    errors = tempfile.TemporaryFile()
    try:
        # A session of its own: Ctrl-C at the terminal must reach GDB only, which passes it on.
        server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
                                  start_new_session=True)
    except OSError as error:
        raise gdb.GdbError(f"cannot start {argv[0]}: {error.strerror}") from None
    _servers.append(server)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    output = b""
    while not LISTENING.search(output):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _stop(server)
            raise gdb.GdbError(f"xenrr serve did not start listening within {SERVER_START_TIMEOUT:.0f} s")
        readable, _, _ = select.select([server.stdout], [], [], remaining)
        chunk = os.read(server.stdout.fileno(), 4096) if readable else b""
        if readable and not chunk:
            server.wait()
            errors.seek(0)
            message = _one_line(errors.read().decode(errors="replace"))
            raise gdb.GdbError(message or f"xenrr serve exited with status {server.returncode}")
        output += chunk
    found = LISTENING.search(output)
    return server, f"{found.group(1).decode()}:{found.group(2).decode()}"


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@atexit.register
def _stop_servers() -> None:
    for server in _servers:
        _stop(server)


def _monitor(command: str) -> str:
    """Run a stub monitor command; its `error: ...` answer becomes a GDB error."""
    try:
        output = gdb.execute(f"monitor {command}", to_string=True)
    except gdb.error as error:
        if "not supported by this target" in str(error) or "current target" in str(error):
            raise gdb.GdbError("not connected to a replay: use rr-replay SESSION.xrr first") from None
        raise gdb.GdbError(_one_line(str(error))) from None
    if output.startswith("error: "):
        raise gdb.GdbError(_one_line(output).removeprefix("error: "))
    return output


def _refresh_view() -> None:
    """The stub moved behind GDB's back: drop what GDB cached of registers and memory, show the frame."""
    gdb.execute("maintenance flush register-cache", to_string=True)
    gdb.execute("maintenance flush dcache", to_string=True)
    gdb.execute("frame")


def _numbers(command: str, argument: str, names: tuple[str, ...], required: int) -> list[int]:
    """The numeric arguments of `command`; GdbError with its usage if they are not that."""
    words = gdb.string_to_argv(argument)
    usage = " ".join([command] + [name if index < required else f"[{name}]" for index, name in enumerate(names)])
    if not required <= len(words) <= len(names):
        raise gdb.GdbError(f"usage: {usage}")
    try:
        numbers = [int(word, 0) for word in words]
    except ValueError:
        raise gdb.GdbError(f"usage: {usage} (numbers, not {argument.strip()!r})") from None
    if any(number < 0 for number in numbers):
        raise gdb.GdbError("event numbers start at 1")
    return numbers


class ReplayCommand(gdb.Command):
    """Debug a xenrr recording: rr-replay SESSION.xrr [--image ELF]

Starts `xenrr serve SESSION.xrr` on a free loopback port and connects GDB to it (`target remote`),
stopped at the recording's first instruction. Loads the guest's symbols from the image named in
the recording (or ELF) when GDB has none. Then reverse-continue, reverse-step, ... work, and
rr-goto, rr-events, rr-when move through and describe the recording."""

    def __init__(self) -> None:
        super().__init__("rr-replay", gdb.COMMAND_RUNNING, gdb.COMPLETE_FILENAME)

    def invoke(self, argument: str, from_tty: bool) -> None:
        words = gdb.string_to_argv(argument)
        image = None
        if len(words) == 3 and words[1] == "--image":
            image = words[2]
        elif len(words) != 1 or words[0].startswith("-"):
            raise gdb.GdbError("usage: rr-replay SESSION.xrr [--image ELF]")
        session = words[0]
        if not Path(session).is_file():
            raise gdb.GdbError(f"cannot read {session}: no such file")
        server, address = _start_server(session, image)
        try:
            gdb.execute(f"set remotetimeout {REMOTE_TIMEOUT}")
            gdb.execute(f"target remote {address}")
            if gdb.current_progspace().filename is None:
                gdb.execute(f"file {image or _monitor('image').strip()}")
                # A new executable drops the libraries' symbols: read the stub's hypercall-page symbol
                # file again (stub/hypercall_frames.py), or GDB cannot unwind from a stop in a hypercall.
                gdb.execute("sharedlibrary", to_string=True)
                gdb.execute("frame")
        except gdb.error as error:
            _stop(server)
            raise gdb.GdbError(_one_line(str(error))) from None


class GotoCommand(gdb.Command):
    """Go to an input event or a bookmark of the recording: rr-goto EVENT | rr-goto BOOKMARK

Moves the replay, forwards or backwards, to exactly the point where input event EVENT (numbered
from 1, see rr-events) is about to be injected, or to the position named BOOKMARK (see rr-bookmark),
and shows the new position ($pc and frame)."""

    def __init__(self) -> None:
        super().__init__("rr-goto", gdb.COMMAND_RUNNING)

    def invoke(self, argument: str, from_tty: bool) -> None:
        words = gdb.string_to_argv(argument)
        if len(words) == 1 and not re.fullmatch(r"[-+]?(0[xX][0-9a-fA-F]+|\d+)", words[0]):
            gdb.write(_monitor(f"goto-bookmark {words[0]}"))
        else:
            (number,) = _numbers("rr-goto", argument, ("EVENT",), 1)
            gdb.write(_monitor(f"goto {number}"))
        _refresh_view()


class BookmarkCommand(gdb.Command):
    """Name the current position of the replay: rr-bookmark NAME (rr-bookmark alone lists them)

`rr-goto NAME` comes back to it, from anywhere before or after, with every register and byte of
memory as it was. Bookmarks last as long as the replay server (this rr-replay)."""

    def __init__(self) -> None:
        super().__init__("rr-bookmark", gdb.COMMAND_RUNNING)

    def invoke(self, argument: str, from_tty: bool) -> None:
        words = gdb.string_to_argv(argument)
        if len(words) > 1:
            raise gdb.GdbError("usage: rr-bookmark [NAME] (one word)")
        gdb.write(_monitor(f"bookmark {words[0]}" if words else "bookmarks"))


class EventsCommand(gdb.Command):
    """List the recording's input events: rr-events [--kind KIND[,KIND...]] [FROM [TO]]

Shows events FROM to TO (all by default): number, instruction count, kind and payload (the key
typed, the time published, ...); with --kind (anywhere on the line) only those of the kinds named, e.g.
console-input or timer (`monitor help` lists them all). `=>` marks the next event to be injected."""

    def __init__(self) -> None:
        super().__init__("rr-events", gdb.COMMAND_STATUS)

    def invoke(self, argument: str, from_tty: bool) -> None:
        usage = "usage: rr-events [--kind KIND[,KIND...]] [FROM [TO]]"
        kind: list[str] = []
        positional: list[str] = []
        words = iter(gdb.string_to_argv(argument))
        for word in words:                     # --kind may come before, between or after the numbers
            if word == "--kind":
                kind = ["--kind", next(words, "")]
            elif word.startswith("--kind="):
                kind = ["--kind", word.removeprefix("--kind=")]
            elif word.startswith("--"):
                raise gdb.GdbError(f"{usage} (unknown option {word})")
            else:
                positional.append(word)
        if kind and not kind[1]:
            raise gdb.GdbError(usage)
        numbers = _numbers("rr-events", " ".join(positional), ("FROM", "TO"), 0)
        gdb.write(_monitor(" ".join(["events"] + kind + [str(number) for number in numbers])))


class WhenCommand(gdb.Command):
    """Where the replay is: rr-when

Prints the number of the last input event injected so far (0: none yet), the number of events,
the instruction count and the pc."""

    def __init__(self) -> None:
        super().__init__("rr-when", gdb.COMMAND_STATUS)

    def invoke(self, argument: str, from_tty: bool) -> None:
        if argument.strip():
            raise gdb.GdbError("usage: rr-when (no arguments)")
        gdb.write(_monitor("when"))


# GRUB 2.06's module list (include/grub/dl.h, x86-64; tests/gdbext/test_grub_modules.py checks these
# against the DWARF of the installed *.module files): struct grub_dl {name @0, segment @32, next @88},
# struct grub_dl_segment {next @0, addr @8, section @24}.
GRUB_DL_NAME, GRUB_DL_SEGMENT, GRUB_DL_NEXT = 0, 32, 88
GRUB_SEGMENT_NEXT, GRUB_SEGMENT_ADDR, GRUB_SEGMENT_SECTION = 0, 8, 24
GRUB_MODULE_DIR = "/usr/lib/grub/x86_64-xen"
GRUB_MAX_MODULES = 1024


def _read_u64(address: int) -> int:
    return struct.unpack("<Q", bytes(gdb.selected_inferior().read_memory(address, 8)))[0]


def _read_c_string(address: int, limit: int = 64) -> str:
    raw = bytes(gdb.selected_inferior().read_memory(address, limit))
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def elf_section_names(path: Path) -> list[str]:
    """The section names of an ELF64 file, by section index (stdlib only: this runs inside GDB)."""
    data = path.read_bytes()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + index * shentsize) for index in range(shnum)]
    strings_offset = headers[shstrndx][4]
    return [data[strings_offset + name:data.index(b"\0", strings_offset + name)].decode() for name, *_ in headers]


def grub_loaded_modules() -> list[tuple[str, dict[int, int]]]:
    """(name, {section index: load address}) of every module on GRUB's grub_dl_head list, read from the target."""
    try:
        module = _read_u64(int(gdb.parse_and_eval("(unsigned long) &grub_dl_head")))
    except gdb.error:
        raise gdb.GdbError("no symbol grub_dl_head: load GRUB's kernel symbols first "
                           "(xenrr grub-symbols IMAGE -o grub.sym; symbol-file grub.sym)") from None
    modules = []
    while module and len(modules) < GRUB_MAX_MODULES:
        sections = {}
        segment = _read_u64(module + GRUB_DL_SEGMENT)
        while segment and len(sections) < GRUB_MAX_MODULES:
            index = struct.unpack("<I", bytes(gdb.selected_inferior().read_memory(segment + GRUB_SEGMENT_SECTION, 4)))[0]
            sections[index] = _read_u64(segment + GRUB_SEGMENT_ADDR)
            segment = _read_u64(segment + GRUB_SEGMENT_NEXT)
        modules.append((_read_c_string(_read_u64(module + GRUB_DL_NAME)), sections))
        module = _read_u64(module + GRUB_DL_NEXT)
    return modules


class GrubModulesCommand(gdb.Command):
    """Load the symbols of the GRUB modules loaded at this point: rr-grub-modules [DIR]

Walks GRUB's list of loaded modules (grub_dl_head; needs the kernel symbols from `xenrr grub-symbols`)
and, for each, runs add-symbol-file on DIR/NAME.module (grub-xen-dbg: full symbols and DWARF) with
every section at the address GRUB loaded it to (section numbers from DIR/NAME.mod, as GRUB's own
gdb_grub script does). DIR defaults to /usr/lib/grub/x86_64-xen."""

    def __init__(self) -> None:
        super().__init__("rr-grub-modules", gdb.COMMAND_FILES, gdb.COMPLETE_FILENAME)

    def invoke(self, argument: str, from_tty: bool) -> None:
        words = gdb.string_to_argv(argument)
        if len(words) > 1:
            raise gdb.GdbError("usage: rr-grub-modules [DIR]")
        directory = Path(words[0] if words else GRUB_MODULE_DIR)
        loaded, missing = [], []
        for name, sections in grub_loaded_modules():
            symbols, layout = directory / f"{name}.module", directory / f"{name}.mod"
            if not symbols.is_file() or not layout.is_file():
                missing.append(name)
                continue
            names = elf_section_names(layout)
            placed = {names[index]: address for index, address in sections.items()
                      if index < len(names) and address}
            if ".text" not in placed:
                missing.append(name)
                continue
            others = "".join(f" -s {section} {address:#x}" for section, address in placed.items() if section != ".text")
            gdb.execute(f"add-symbol-file {symbols} {placed['.text']:#x}{others}", to_string=True)
            loaded.append(name)
        gdb.write(f"loaded symbols of {len(loaded)} GRUB modules" + (f": {' '.join(loaded)}" if loaded else "")
                  + (f"; no symbol file for: {' '.join(missing)}" if missing else "") + "\n")


ReplayCommand()
GotoCommand()
BookmarkCommand()
EventsCommand()
WhenCommand()
GrubModulesCommand()
