"""Runs inside GDB (`source`d by gdbext.api): a C value as JSON, so that `Debugger.eval` returns a
Python value.

Owns the conversion rule, which the README's "Debugger API" section documents:

    integer types, pointers (not to char)  -> int  (a pointer: its address)
    _Bool                                  -> bool
    float, double                          -> float
    plain `char`                           -> str of one character (signed/unsigned char, uint8_t -> int)
    char arrays, pointers to char          -> str: the bytes up to the first NUL, decoded as Latin-1
                                              (a null pointer -> None)
    enum                                   -> str: the enumerator's name (int if it has none)
    other arrays                           -> list;  struct/union -> dict of member name -> value
    anything else (functions, ...)         -> str: GDB's text

Invariant: `xenrr_value(EXPRESSION)` prints exactly one line of JSON, `{"value": ...}` or
`{"error": "GDB's one-line message"}`, and never raises.
"""
from __future__ import annotations

import json

import gdb

MAX_STRING = 1 << 16        # bytes read from a char pointer before giving up on finding its NUL
MAX_ELEMENTS = 1 << 16      # array elements converted


def _is_plain_char(type_: gdb.Type) -> bool:
    return type_.strip_typedefs().name == "char" or type_.strip_typedefs().code == gdb.TYPE_CODE_CHAR


def _c_string(address: int) -> str:
    memory = gdb.selected_inferior()
    data = b""
    while len(data) < MAX_STRING:
        chunk = bytes(memory.read_memory(address + len(data), 64))
        end = chunk.find(b"\0")
        if end >= 0:
            return (data + chunk[:end]).decode("latin-1")
        data += chunk
    return data.decode("latin-1")


def convert(value: gdb.Value):
    """The Python value of a gdb.Value, by the rule above."""
    type_ = value.type.strip_typedefs()
    code = type_.code
    if code == gdb.TYPE_CODE_BOOL:
        return bool(value)
    if code in (gdb.TYPE_CODE_INT, gdb.TYPE_CODE_CHAR):
        return chr(int(value) & 0xFF) if _is_plain_char(value.type) else int(value)
    if code == gdb.TYPE_CODE_FLT:
        return float(value)
    if code == gdb.TYPE_CODE_ENUM:
        number = int(value)
        names = [field.name for field in type_.fields() if field.enumval == number]
        return names[0] if names else number
    if code == gdb.TYPE_CODE_PTR:
        address = int(value)
        if _is_plain_char(type_.target()):
            return None if address == 0 else _c_string(address)
        return address
    if code == gdb.TYPE_CODE_ARRAY:
        low, high = type_.range()
        if _is_plain_char(type_.target()):
            data = bytes(gdb.selected_inferior().read_memory(value.address, type_.sizeof)) \
                if value.address is not None else bytes(int(value[index]) & 0xFF for index in range(low, high + 1))
            return data.split(b"\0", 1)[0].decode("latin-1")
        return [convert(value[index]) for index in range(low, min(high, low + MAX_ELEMENTS - 1) + 1)]
    if code in (gdb.TYPE_CODE_STRUCT, gdb.TYPE_CODE_UNION):
        return {field.name: convert(value[field]) for field in type_.fields() if field.name}
    return str(value)


def xenrr_value(expression: str) -> None:
    """Print `{"value": ...}` for a C expression, or `{"error": ...}`."""
    try:
        answer = {"value": convert(gdb.parse_and_eval(expression))}
    except gdb.error as error:
        answer = {"error": " ".join(str(error).split())}
    print(json.dumps(answer))
