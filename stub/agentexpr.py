"""GDB agent expressions: the bytecode GDB compiles breakpoint conditions to, evaluated in the stub.

Owns the bytecode language of the GDB manual's appendix "The GDB Agent Expression Mechanism"
(section "Bytecode Descriptions") and its wire form in Z0/Z1 condition lists (`X len,hex`, GDB
manual "Packets"). Values are the manual's integers: as wide as GDB's LONGEST, 64 bits here, held
as unsigned Python ints reduced modulo 2**64; signed operations read them as two's complement.

Invariant: `evaluate` returns an integer or raises `AgentExprError` - whatever the bytecode, the
registers or the memory. Everything the manual says "terminates with an error" does (division by
zero, unreadable memory, a pick past the stack), and so do: a stack deeper than `MAX_STACK` (the
limit of GDB's own agent, gdbserver) or popped when empty, more than `MAX_STEPS` bytecodes executed
(conditions GDB compiles only jump forwards), running past the end without `end`, an unknown
opcode, a truncated operand, and the bytecodes a condition has no use for: floating point ("not
implemented yet" in the manual), trace collection, trace state variables and printf (this stub
offers no tracepoints).
"""
from __future__ import annotations

import re
from collections.abc import Callable

MASK = (1 << 64) - 1
SIGN = 1 << 63
MAX_STACK = 100
MAX_STEPS = 10_000

RegisterReader = Callable[[int], "int | None"]      # GDB register number -> value (None: no such register)
MemoryReader = Callable[[int, int], "bytes | None"]  # (address, length) -> bytes (None: not readable)

NAMES = {0x01: "float", 0x02: "add", 0x03: "sub", 0x04: "mul", 0x05: "div_signed", 0x06: "div_unsigned",
         0x07: "rem_signed", 0x08: "rem_unsigned", 0x09: "lsh", 0x0a: "rsh_signed", 0x0b: "rsh_unsigned",
         0x0c: "trace", 0x0d: "trace_quick", 0x0e: "log_not", 0x0f: "bit_and", 0x10: "bit_or",
         0x11: "bit_xor", 0x12: "bit_not", 0x13: "equal", 0x14: "less_signed", 0x15: "less_unsigned",
         0x16: "ext", 0x17: "ref8", 0x18: "ref16", 0x19: "ref32", 0x1a: "ref64", 0x1b: "ref_float",
         0x1c: "ref_double", 0x1d: "ref_long_double", 0x1e: "l_to_d", 0x1f: "d_to_l", 0x20: "if_goto",
         0x21: "goto", 0x22: "const8", 0x23: "const16", 0x24: "const32", 0x25: "const64", 0x26: "reg",
         0x27: "end", 0x28: "dup", 0x29: "pop", 0x2a: "zero_ext", 0x2b: "swap", 0x2c: "getv", 0x2d: "setv",
         0x2e: "tracev", 0x2f: "tracenz", 0x30: "trace16", 0x32: "pick", 0x33: "rot", 0x34: "printf"}
OPCODES = {name: code for code, name in NAMES.items()}

_UNSUPPORTED = {
    **{code: "floating point is not implemented in agent expressions"
       for code in (0x01, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f)},
    **{code: "it collects trace data, and this stub offers no tracepoints" for code in (0x0c, 0x0d, 0x2e, 0x2f, 0x30)},
    **{code: "this stub has no trace state variables" for code in (0x2c, 0x2d)},
    0x34: "this stub offers no agent printf",
}
_REFS = {0x17: 1, 0x18: 2, 0x19: 4, 0x1a: 8}
_CONSTS = {0x22: 1, 0x23: 2, 0x24: 4, 0x25: 8}
_CONDITION = re.compile(rb"X([0-9a-fA-F]{1,8}),")
_HEX = re.compile(rb"[0-9a-fA-F]*")


class AgentExprError(Exception):
    """The expression cannot be evaluated (or parsed); the message says why, in one line."""


def _signed(value: int) -> int:
    return value - (1 << 64) if value & SIGN else value


def _shift_left(a: int, b: int) -> int:
    return (a << b) & MASK if b < 64 else 0


def _shift_right_signed(a: int, b: int) -> int:
    return (_signed(a) >> min(b, 63)) & MASK


def _shift_right_unsigned(a: int, b: int) -> int:
    return a >> b if b < 64 else 0


def _divide_signed(a: int, b: int) -> int:
    a, b = _signed(a), _signed(b)
    quotient = abs(a) // abs(b)                      # C division: the quotient truncates toward zero
    return (quotient if (a < 0) == (b < 0) else -quotient) & MASK


def _remainder_signed(a: int, b: int) -> int:
    a, b = _signed(a), _signed(b)
    remainder = abs(a) % abs(b)                      # C remainder: the sign of the dividend
    return (remainder if a >= 0 else -remainder) & MASK


_BINARY: dict[int, Callable[[int, int], int]] = {
    0x02: lambda a, b: (a + b) & MASK,
    0x03: lambda a, b: (a - b) & MASK,
    0x04: lambda a, b: (a * b) & MASK,
    0x05: _divide_signed,
    0x06: lambda a, b: a // b,
    0x07: _remainder_signed,
    0x08: lambda a, b: a % b,
    0x09: _shift_left,
    0x0a: _shift_right_signed,
    0x0b: _shift_right_unsigned,
    0x0f: lambda a, b: a & b,
    0x10: lambda a, b: a | b,
    0x11: lambda a, b: a ^ b,
    0x13: lambda a, b: int(a == b),
    0x14: lambda a, b: int(_signed(a) < _signed(b)),
    0x15: lambda a, b: int(a < b),
}
_DIVISIONS = {0x05, 0x06, 0x07, 0x08}


def _sign_extend(value: int, bits: int) -> int:
    if bits >= 64:
        return value                                 # the manual: no effect at or beyond the stack width
    if bits == 0:
        raise AgentExprError("ext 0: there is no sign bit to extend from")
    value &= (1 << bits) - 1
    return (value - (1 << bits)) & MASK if value >> (bits - 1) else value


def _zero_extend(value: int, bits: int) -> int:
    return value if bits >= 64 else value & ((1 << bits) - 1)


def evaluate(bytecode: bytes, read_register: RegisterReader, read_memory: MemoryReader) -> int:
    """Run `bytecode` to its `end`: the value on top of the stack (unsigned 64-bit)."""
    stack: list[int] = []
    pc = steps = 0

    def pop(count: int) -> list[int]:
        if len(stack) < count:
            raise AgentExprError(f"stack underflow: {NAMES[opcode]} at offset {start} needs {count} "
                                 f"value{'s' if count > 1 else ''}, the stack has {len(stack)}")
        values = stack[len(stack) - count:]
        del stack[len(stack) - count:]
        return values

    def push(value: int) -> None:
        if len(stack) >= MAX_STACK:
            raise AgentExprError(f"stack overflow: more than {MAX_STACK} values at offset {start}")
        stack.append(value)

    def operand(size: int) -> int:
        if pc + size > len(bytecode):
            raise AgentExprError(f"{NAMES[opcode]} at offset {start} is cut short: its operand needs "
                                 f"{size} byte{'s' if size > 1 else ''}")
        return int.from_bytes(bytecode[pc:pc + size], "big")   # operands: most significant byte first

    while True:
        if pc >= len(bytecode):
            raise AgentExprError(f"the expression runs past its last byte (offset {len(bytecode)}) without 'end'")
        steps += 1
        if steps > MAX_STEPS:
            raise AgentExprError(f"more than {MAX_STEPS} bytecodes executed: the expression loops")
        start, opcode = pc, bytecode[pc]
        pc += 1
        if opcode not in NAMES:
            raise AgentExprError(f"unknown bytecode 0x{opcode:02x} at offset {start}")
        if opcode in _UNSUPPORTED:
            raise AgentExprError(f"bytecode {NAMES[opcode]} at offset {start} cannot be evaluated: "
                                 f"{_UNSUPPORTED[opcode]}")
        if opcode in _BINARY:
            a, b = pop(2)
            if opcode in _DIVISIONS and b == 0:
                raise AgentExprError(f"division by zero ({NAMES[opcode]} at offset {start})")
            push(_BINARY[opcode](a, b))
        elif opcode in _CONSTS:
            size = _CONSTS[opcode]
            value = operand(size)
            pc += size
            push(value)
        elif opcode in _REFS:
            (address,) = pop(1)
            size = _REFS[opcode]
            data = read_memory(address, size)
            if data is None or len(data) != size:
                raise AgentExprError(f"cannot read {size} byte{'s' if size > 1 else ''} of memory at "
                                     f"{address:#x} ({NAMES[opcode]} at offset {start})")
            push(int.from_bytes(data, "little"))   # x86: the target's natural byte order
        elif opcode == 0x0e:                      # log_not
            (a,) = pop(1)
            push(int(a == 0))
        elif opcode == 0x12:                      # bit_not
            (a,) = pop(1)
            push(~a & MASK)
        elif opcode in (0x16, 0x2a):              # ext, zero_ext
            bits = operand(1)
            pc += 1
            (a,) = pop(1)
            push(_sign_extend(a, bits) if opcode == 0x16 else _zero_extend(a, bits))
        elif opcode in (0x20, 0x21):              # if_goto, goto: an offset from the start of the expression
            target = operand(2)
            pc += 2
            if opcode == 0x21 or pop(1)[0] != 0:
                pc = target
        elif opcode == 0x26:                      # reg
            number = operand(2)
            pc += 2
            value = read_register(number)
            if value is None:
                raise AgentExprError(f"there is no register {number} (reg at offset {start})")
            push(value & MASK)
        elif opcode == 0x27:                      # end
            if not stack:
                raise AgentExprError(f"'end' at offset {start} finds the stack empty: there is no result")
            return stack[-1]
        elif opcode == 0x28:                      # dup
            (a,) = pop(1)
            push(a)
            push(a)
        elif opcode == 0x29:                      # pop
            pop(1)
        elif opcode == 0x2b:                      # swap
            a, b = pop(2)
            push(b)
            push(a)
        elif opcode == 0x32:                      # pick n: copy the item n below the top (0: dup)
            depth = operand(1)
            pc += 1
            if depth >= len(stack):
                raise AgentExprError(f"pick {depth} at offset {start}: the stack has only {len(stack)} values")
            push(stack[-1 - depth])
        elif opcode == 0x33:                      # rot: a b c => c a b
            a, b, c = pop(3)
            push(c)
            push(a)
            push(b)


def parse_condition(text: bytes) -> tuple[bytes, bytes]:
    """The bytecode of the condition `X len,hex...` at the start of `text` (its form in a Z0/Z1
    packet's condition list), and the rest of `text`; AgentExprError if it is malformed."""
    found = _CONDITION.match(text)
    if found is None:
        raise AgentExprError(f"a condition must be 'X len,bytecode', not {text[:24]!r}")
    length = int(found.group(1), 16)
    hex_text = text[found.end():found.end() + 2 * length]
    if len(hex_text) != 2 * length or _HEX.fullmatch(hex_text) is None:
        raise AgentExprError(f"a condition of {length} bytes needs {2 * length} hex digits after "
                             f"'X{found.group(1).decode()},'")
    return bytes.fromhex(hex_text.decode("ascii")), text[found.end() + 2 * length:]
