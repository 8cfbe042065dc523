"""Linux input keycodes (linux/input-event-codes.h, KEY_*): the numbers a PV keyboard event carries.

Owns the one table of key names and numbers xenrr knows (the keys of a PC keyboard, KEY_ESC 1 to
KEY_DELETE 111), used to name keys in logs and key scripts. Invariant: every entry equals the kernel
header's value (tests/xen/test_keycodes.py compares them with /usr/include/linux/input-event-codes.h).
"""
from __future__ import annotations

KEY_MAX = 0x2FF          # the highest keycode Linux defines

# Name (without its KEY_ prefix) -> keycode.
KEYCODES: dict[str, int] = {
    "ESC": 1, "1": 2, "2": 3, "3": 4, "4": 5, "5": 6, "6": 7, "7": 8, "8": 9, "9": 10, "0": 11, "MINUS": 12,
    "EQUAL": 13, "BACKSPACE": 14, "TAB": 15, "Q": 16, "W": 17, "E": 18, "R": 19, "T": 20, "Y": 21, "U": 22,
    "I": 23, "O": 24, "P": 25, "LEFTBRACE": 26, "RIGHTBRACE": 27, "ENTER": 28, "LEFTCTRL": 29, "A": 30, "S": 31,
    "D": 32, "F": 33, "G": 34, "H": 35, "J": 36, "K": 37, "L": 38, "SEMICOLON": 39, "APOSTROPHE": 40, "GRAVE": 41,
    "LEFTSHIFT": 42, "BACKSLASH": 43, "Z": 44, "X": 45, "C": 46, "V": 47, "B": 48, "N": 49, "M": 50, "COMMA": 51,
    "DOT": 52, "SLASH": 53, "RIGHTSHIFT": 54, "KPASTERISK": 55, "LEFTALT": 56, "SPACE": 57, "CAPSLOCK": 58,
    "F1": 59, "F2": 60, "F3": 61, "F4": 62, "F5": 63, "F6": 64, "F7": 65, "F8": 66, "F9": 67, "F10": 68,
    "NUMLOCK": 69, "SCROLLLOCK": 70, "KP7": 71, "KP8": 72, "KP9": 73, "KPMINUS": 74, "KP4": 75, "KP5": 76,
    "KP6": 77, "KPPLUS": 78, "KP1": 79, "KP2": 80, "KP3": 81, "KP0": 82, "KPDOT": 83, "ZENKAKUHANKAKU": 85,
    "102ND": 86, "F11": 87, "F12": 88, "RO": 89, "KATAKANA": 90, "HIRAGANA": 91, "HENKAN": 92,
    "KATAKANAHIRAGANA": 93, "MUHENKAN": 94, "KPJPCOMMA": 95, "KPENTER": 96, "RIGHTCTRL": 97, "KPSLASH": 98,
    "SYSRQ": 99, "RIGHTALT": 100, "LINEFEED": 101, "HOME": 102, "UP": 103, "PAGEUP": 104, "LEFT": 105,
    "RIGHT": 106, "END": 107, "DOWN": 108, "PAGEDOWN": 109, "INSERT": 110, "DELETE": 111,
}
_NAMES = {code: name for name, code in KEYCODES.items()}


def keycode_name(code: int) -> str:
    """'KEY_A' for 30; 'keycode 300' for a number the table does not name."""
    name = _NAMES.get(code)
    return f"KEY_{name}" if name is not None else f"keycode {code}"


def keycode(name: str) -> int:
    """The keycode of a key name, with or without its KEY_ prefix, any case. KeyError if unknown."""
    return KEYCODES[name.upper().removeprefix("KEY_")]
