"""Host keys -> PV keyboard events (`--keyboard pv`): the key map, scripted keys and the terminal.

Owns turning what the host types - a terminal's bytes or a key script (`--keys`, `--keys-file`) - into
press/release events with Linux keycodes (xen/keycodes.py), as a US PC keyboard produces them. The
mapping is the table KEY_MAP (docs/keyboard.md lists it): each character is one key plus the
modifiers held around it (Shift for upper case and the shifted symbols, Ctrl for control characters);
terminal escape sequences for the arrows, Home and End are the table ARROW_KEYS. Scripts may also
press, hold and release keys by name (dom0/consoleinput.py: \\d{NAME}, \\u{NAME}, \\k{NAME}); a modifier
held that way is not pressed again for a character that needs it.
Both inputs implement xen.sched.ConsoleInput with `take` returning event payloads (xen/kbdif.py), at
most `limit` of them - the keyboard ring's free slots - so a flood of keys waits for the guest
(back-pressure) and nothing is dropped. Invariant: every host key is turned into its events exactly
once, in order; a script that names an unknown key or holds a character no key types is refused
before anything runs.
"""
from __future__ import annotations

import string
from collections import deque

from dom0.consoleinput import KeyScript, KeyScriptError, NamedKey, TerminalInput, parse_key_script
from xen.kbdif import encode_key_event
from xen.keycodes import keycode

SHIFT, CTRL = "LEFTSHIFT", "LEFTCTRL"
ESCAPE = 0x1B


def _key_map() -> dict[int, tuple[str, tuple[str, ...]]]:
    """byte -> (key name, modifiers held while it is typed): the US layout."""
    table: dict[int, tuple[str, tuple[str, ...]]] = {}
    for letter in string.ascii_lowercase:
        table[ord(letter)] = (letter.upper(), ())
        table[ord(letter.upper())] = (letter.upper(), (SHIFT,))
        table[ord(letter) & 0x1F] = (letter.upper(), (CTRL,))        # Ctrl-A is 0x01 ... Ctrl-Z 0x1a
    plain, shifted = "1234567890-=[]\\;',./`", "!@#$%^&*()_+{}|:\"<>?~"
    names = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "MINUS", "EQUAL", "LEFTBRACE", "RIGHTBRACE",
             "BACKSLASH", "SEMICOLON", "APOSTROPHE", "COMMA", "DOT", "SLASH", "GRAVE"]
    for name, unshifted, shifted_char in zip(names, plain, shifted):
        table[ord(unshifted)] = (name, ())
        table[ord(shifted_char)] = (name, (SHIFT,))
    # Keys a terminal sends as control characters: they win over Ctrl + letter (Ctrl-I is Tab, ...).
    table.update({ord(" "): ("SPACE", ()), ord("\r"): ("ENTER", ()), ord("\n"): ("ENTER", ()),
                  ord("\t"): ("TAB", ()), 0x7F: ("BACKSPACE", ()), 0x08: ("BACKSPACE", ()),
                  ESCAPE: ("ESC", ())})
    return table


KEY_MAP = _key_map()
# A terminal's escape sequences ESC [ X for the cursor keys.
ARROW_KEYS = {ord("A"): "UP", ord("B"): "DOWN", ord("C"): "RIGHT", ord("D"): "LEFT", ord("H"): "HOME",
              ord("F"): "END"}


class KeyTranslator:
    """Turns keys - bytes and named keys, in order - into (keycode, pressed) events, keeping which
    keys are held."""

    def __init__(self) -> None:
        self.held: set[int] = set()

    def named(self, key: NamedKey) -> list[tuple[int, bool]]:
        try:
            code = keycode(key.name)
        except KeyError:
            raise KeyScriptError(f"unknown key name {key.name!r} (offset {key.offset}); names are Linux's "
                                 "KEY_* without the prefix, e.g. LEFTSHIFT, UP, F1 (docs/keyboard.md)") from None
        if key.action == "press":
            self.held.add(code)
            return [(code, True)]
        if key.action == "release":
            self.held.discard(code)
            return [(code, False)]
        return [(code, True), (code, False)]

    def byte(self, byte: int) -> list[tuple[int, bool]] | None:
        """The events typing `byte` takes; None when no key types it."""
        entry = KEY_MAP.get(byte)
        if entry is None:
            return None
        name, modifiers = entry
        pressed = [keycode(modifier) for modifier in modifiers if keycode(modifier) not in self.held]
        code = keycode(name)
        return ([(modifier, True) for modifier in pressed] + [(code, True), (code, False)]
                + [(modifier, False) for modifier in reversed(pressed)])

    def arrow(self, final: int) -> list[tuple[int, bool]]:
        code = keycode(ARROW_KEYS[final])
        return [(code, True), (code, False)]


def _payloads(events: list[tuple[int, bool]]) -> list[bytes]:
    return [encode_key_event(code, pressed) for code, pressed in events]


def _is_arrow(keys: list, index: int) -> bool:
    """keys[index] starts ESC [ X with X a cursor key."""
    return keys[index] == ESCAPE and index + 2 < len(keys) and keys[index + 1] == ord("[") \
        and keys[index + 2] in ARROW_KEYS


class KeyEventScript(KeyScript):
    """Scripted keys for the PV keyboard: a script's keys as events, each stroke's events together,
    the script's pause before its first event. `take` returns event payloads."""

    def __init__(self, script: str | bytes):
        parsed = parse_key_script(script, named_keys=True)
        keys = [key for _, key in parsed]
        translator = KeyTranslator()
        events: list[tuple[int, bytes]] = []
        index = 0
        while index < len(keys):
            key = keys[index]
            if isinstance(key, NamedKey):
                stroke, used = translator.named(key), 1
            elif _is_arrow(keys, index):
                stroke, used = translator.arrow(keys[index + 2]), 3
            else:
                stroke, used = translator.byte(key), 1
                if stroke is None:
                    raise KeyScriptError(f"no key of the PV keyboard types byte {key:#04x} (key {index + 1} of "
                                         "the script); name the keys with \\d{NAME} \\u{NAME} (docs/keyboard.md)")
            payloads = _payloads(stroke)
            events += [(parsed[index][0] if n == 0 else 0, payload) for n, payload in enumerate(payloads)]
            index += used
        super().__init__(events)

    def take(self, now_ns: int, limit: int) -> list[bytes]:       # type: ignore[override]
        return self.take_items(now_ns, limit)


class KeyboardTerminal:
    """The host terminal typing on the PV keyboard; Ctrl-] still detaches (it never reaches the guest).
    Bytes no key types are dropped (a terminal can send anything); escape sequences for the cursor
    keys become those keys when they arrive together, as a terminal sends them."""

    def __init__(self, terminal: TerminalInput):
        self._terminal = terminal
        self._translator = KeyTranslator()
        self._events: deque[bytes] = deque()

    def restore(self) -> None:
        self._terminal.restore()

    def take(self, now_ns: int, limit: int) -> list[bytes]:
        if len(self._events) < limit:
            keys = list(self._terminal.take(now_ns, 4096))
            index = 0
            while index < len(keys):
                if _is_arrow(keys, index):
                    stroke, used = self._translator.arrow(keys[index + 2]), 3
                else:
                    stroke, used = self._translator.byte(keys[index]) or [], 1
                self._events.extend(_payloads(stroke))
                index += used
        return [self._events.popleft() for _ in range(min(limit, len(self._events)))]

    def next_due_ns(self, now_ns: int) -> int | None:
        return now_ns if self._events else self._terminal.next_due_ns(now_ns)

    def fileno(self) -> int | None:
        return self._terminal.fileno()

    @property
    def exhausted(self) -> bool:
        return not self._events and self._terminal.exhausted

    @property
    def detached(self) -> bool:
        return not self._events and self._terminal.detached
