"""Console input backends: a key script (`--keys`, `--keys-file`) and the host terminal.

Owns turning host input into the byte stream the hypervisor injects into the console ring, and
when each byte is due. Both implement xen.sched.ConsoleInput. Invariant: every byte given to the
backend is handed to the hypervisor exactly once, in order (nothing is dropped when the ring is
full: the rest simply stays due).

Key script syntax: text with C escapes \\r \\n \\t \\\\ \\e (ESC) \\xNN, and \\pN = pause N milliseconds before
the next key (on the guest's clock with --clock virtual, on the host's with --clock real); a `;` may end
the number, so that a digit can follow (`\\p20;0`). The pauses before one key add up to at most
MAX_PAUSE_MS (one hour). For the PV keyboard (`named_keys`) a script may also name keys:
\\d{NAME} presses a key and holds it, \\u{NAME} releases it, \\k{NAME} taps it (NAME a Linux key name
such as LEFTSHIFT or KEY_UP; dom0/keyboard.py turns everything into key events).
"""
from __future__ import annotations

import os
import select
import termios
import tty
from collections import deque
from typing import NamedTuple

DETACH_KEY = 0x1D          # Ctrl-], as `xl console`
_SIMPLE_ESCAPES = {"r": b"\r", "n": b"\n", "t": b"\t", "\\": b"\\", "e": b"\x1b"}
NS_PER_MS = 1_000_000
MAX_PAUSE_MS = 3_600_000   # one hour: a longer pause under the virtual clock would simulate days of timer ticks


NAMED_KEY_ACTIONS = {"d": "press", "u": "release", "k": "tap"}


class KeyScriptError(ValueError):
    """A key script that cannot be parsed (message says where)."""


class NamedKey(NamedTuple):
    """A key a PV keyboard script names: \\d{NAME} (press), \\u{NAME} (release), \\k{NAME} (tap)."""
    action: str
    name: str
    offset: int          # where the escape starts in the script (for error messages)


def parse_key_script(script: str | bytes, named_keys: bool = False) -> list[tuple[int, int | NamedKey]]:
    """Parse a key script into (pause_before_ns, key) pairs, a key being a byte or (with `named_keys`,
    for the PV keyboard) a NamedKey. A key file is given as its bytes; a str (a --keys argument) stands
    for the bytes it came from (os.fsencode). Every byte outside an escape is a key as it is: a
    carriage return stays a carriage return."""
    text = os.fsencode(script).decode("latin-1")    # one character per byte: no byte changed or merged
    keys: list[tuple[int, int]] = []
    pause = 0
    index = 0
    while index < len(text):
        char = text[index]
        if char != "\\":
            keys.append((pause, ord(char)))
            pause = 0
            index += 1
            continue
        if index + 1 >= len(text):
            raise KeyScriptError(f"key script ends with a lone backslash (offset {index})")
        escape = text[index + 1]
        if escape in _SIMPLE_ESCAPES:
            keys.append((pause, _SIMPLE_ESCAPES[escape][0]))
            pause = 0
            index += 2
        elif escape == "x":
            digits = text[index + 2:index + 4]
            if len(digits) != 2 or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise KeyScriptError(f"\\x needs two hex digits (offset {index})")
            keys.append((pause, int(digits, 16)))
            pause = 0
            index += 4
        elif escape == "p":
            end = index + 2
            while end < len(text) and text[end] in "0123456789":     # not str.isdigit: it takes '²'
                end += 1
            if end == index + 2:
                raise KeyScriptError(f"\\p needs a number of milliseconds (offset {index})")
            digits = text[index + 2:end]
            pause += (int(digits) if len(digits) <= len(str(MAX_PAUSE_MS)) else MAX_PAUSE_MS + 1) * NS_PER_MS
            if pause > MAX_PAUSE_MS * NS_PER_MS:
                raise KeyScriptError(f"\\p pauses before one key add up to more than {MAX_PAUSE_MS} ms "
                                     f"(one hour) (offset {index})")
            index = end + 1 if text[end:end + 1] == ";" else end     # `\p20;0`: pause 20 ms, then the key 0
        elif escape in NAMED_KEY_ACTIONS and named_keys:
            end = text.find("}", index + 3)
            if text[index + 2:index + 3] != "{" or end < 0 or end == index + 3:
                raise KeyScriptError(f"\\{escape} needs a key name in braces, e.g. \\{escape}{{LEFTSHIFT}} (offset {index})")
            keys.append((pause, NamedKey(NAMED_KEY_ACTIONS[escape], text[index + 3:end], index)))
            pause = 0
            index = end + 1
        elif escape in NAMED_KEY_ACTIONS:
            raise KeyScriptError(f"\\{escape}{{NAME}} names a key of the PV keyboard: it needs --keyboard pv "
                                 f"(offset {index})")
        else:
            named = " \\d{NAME} \\u{NAME} \\k{NAME}" if named_keys else ""
            raise KeyScriptError(f"unknown escape \\{escape} (offset {index}); use \\r \\n \\t \\\\ \\e \\xNN \\pN{named}")
    return keys


class KeyScript:
    """Scripted keys: each key is due `pause` ns after the previous one was taken. Keys are console
    bytes (`take` returns bytes); a subclass may schedule other items the same way (`take_items`)."""

    def __init__(self, keys: list[tuple[int, object]]):
        self._keys = deque(keys)
        self._last_taken_ns = 0

    def take_items(self, now_ns: int, limit: int) -> list:
        taken = []
        while self._keys and len(taken) < limit and self._last_taken_ns + self._keys[0][0] <= now_ns:
            taken.append(self._keys.popleft()[1])
            self._last_taken_ns = now_ns
        return taken

    def take(self, now_ns: int, limit: int) -> bytes:
        return bytes(self.take_items(now_ns, limit))

    def next_due_ns(self, now_ns: int) -> int | None:
        if not self._keys:
            return None
        return max(now_ns, self._last_taken_ns + self._keys[0][0])

    def fileno(self) -> int | None:
        return None

    @property
    def exhausted(self) -> bool:
        return not self._keys

    @property
    def detached(self) -> bool:
        return False


class TerminalInput:
    """The host terminal (or any readable fd) as console input; Ctrl-] detaches.

    On a TTY it switches to raw input (no echo, no line editing, no signals: the guest does those)
    while keeping output processing, and `restore()` puts the terminal back.
    """

    def __init__(self, descriptor: int = 0):
        self._fd = descriptor
        self._pending = bytearray()
        self._eof = False
        self._detached = False
        self._saved = None
        if os.isatty(descriptor):
            self._saved = termios.tcgetattr(descriptor)
            mode = termios.tcgetattr(descriptor)
            mode[tty.IFLAG] &= ~(termios.ICRNL | termios.IXON | termios.ISTRIP | termios.INLCR | termios.IGNCR)
            mode[tty.LFLAG] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
            mode[tty.CC][termios.VMIN] = 1
            mode[tty.CC][termios.VTIME] = 0
            termios.tcsetattr(descriptor, termios.TCSANOW, mode)

    def restore(self) -> None:
        if self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def _read_available(self) -> None:
        while not self._eof and select.select([self._fd], [], [], 0)[0]:
            chunk = os.read(self._fd, 4096)
            if not chunk:
                self._eof = True
                break
            if DETACH_KEY in chunk:
                self._pending += chunk[:chunk.index(DETACH_KEY)]
                self._detached = True
                break
            self._pending += chunk

    def take(self, now_ns: int, limit: int) -> bytes:
        self._read_available()
        taken = bytes(self._pending[:limit])
        del self._pending[:limit]
        return taken

    def next_due_ns(self, now_ns: int) -> int | None:
        return now_ns if self._pending else None

    def fileno(self) -> int | None:
        return None if self._eof or self._detached else self._fd

    @property
    def exhausted(self) -> bool:
        return self._eof and not self._pending

    @property
    def detached(self) -> bool:
        return self._detached and not self._pending
