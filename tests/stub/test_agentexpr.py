"""The agent-expression evaluator, opcode by opcode, against the GDB manual's appendix "The GDB Agent
Expression Mechanism", section "Bytecode Descriptions" (quoted as "manual" below), and a bounded
fuzz: any bytes, any registers, any memory give a value or an AgentExprError, nothing else.

Stack notation as in the manual: `a b => a+b`, b on top.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stub.agentexpr import MAX_STACK, MAX_STEPS, OPCODES, AgentExprError, evaluate, parse_condition

M64 = (1 << 64) - 1
MEMORY_BASE = 0x1000
MEMORY = bytes(range(256)) * 2                       # 512 readable bytes at 0x1000


def registers(number: int) -> int | None:
    return {0: 0x1122334455667788, 5: 0x41, 16: 0xFFFF_FFFF_FFFF_FFFF}.get(number)


def memory(address: int, length: int) -> bytes | None:
    offset = address - MEMORY_BASE
    return MEMORY[offset:offset + length] if 0 <= offset and offset + length <= len(MEMORY) else None


def asm(*items: str | int | tuple[int, int]) -> bytes:
    """Bytecode from opcode names, single operand bytes (ints) and (value, size) big-endian operands."""
    code = b""
    for item in items:
        if isinstance(item, str):
            code += bytes((OPCODES[item],))
        elif isinstance(item, tuple):
            code += item[0].to_bytes(item[1], "big")
        else:
            code += bytes((item,))
    return code


def const(value: int) -> tuple:
    return ("const64", (value & M64, 8))


def run(*items) -> int:
    flat = []
    for item in items:
        flat.extend(item if isinstance(item, tuple) and isinstance(item[0], str) else (item,))
    return evaluate(asm(*flat, "end"), registers, memory)


def binary(name: str, a: int, b: int) -> int:
    return run(const(a), const(b), name)


@pytest.mark.parametrize("name, a, b, result", [
    # manual: add a b => a+b; sub "subtract the top value from the next-to-top value"; mul: n-bit product
    ("add", 2, 3, 5), ("add", M64, 2, 1), ("sub", 3, 5, (3 - 5) & M64), ("sub", 5, 3, 2),
    ("mul", 1 << 63, 2, 0), ("mul", -3, 7, -21 & M64),
    # div_signed/rem_signed: "two signed integers ... divide the next-to-top value by the top value" (C: truncation)
    ("div_signed", -7, 2, -3 & M64), ("div_signed", 7, -2, -3 & M64), ("div_signed", -7, -2, 3),
    ("div_signed", -(1 << 63), -1, 1 << 63), ("rem_signed", -7, 2, -1 & M64), ("rem_signed", 7, -2, 1),
    # div_unsigned/rem_unsigned: the same values read as unsigned
    ("div_unsigned", -7, 2, ((-7) & M64) // 2), ("rem_unsigned", -7, 2, ((-7) & M64) % 2),
    # lsh / rsh_signed ("inserting copies of the top bit") / rsh_unsigned ("inserting zero bits")
    ("lsh", 1, 63, 1 << 63), ("lsh", 1, 64, 0), ("lsh", 3, 1 << 40, 0),
    ("rsh_signed", -16, 2, -4 & M64), ("rsh_signed", -1, 200, M64), ("rsh_signed", 16, 2, 4),
    ("rsh_unsigned", -16, 2, ((-16) & M64) >> 2), ("rsh_unsigned", 1 << 63, 64, 0),
    ("bit_and", 0b1100, 0b1010, 0b1000), ("bit_or", 0b1100, 0b1010, 0b1110), ("bit_xor", 0b1100, 0b1010, 0b0110),
    # equal / less_signed / less_unsigned push one or zero
    ("equal", 7, 7, 1), ("equal", 7, 8, 0), ("less_signed", -1, 0, 1), ("less_signed", 0, -1, 0),
    ("less_unsigned", -1, 0, 0), ("less_unsigned", 0, -1, 1), ("less_signed", 3, 3, 0),
])
def test_binary_operations(name, a, b, result):
    assert binary(name, a, b) == result


@pytest.mark.parametrize("name", ["div_signed", "div_unsigned", "rem_signed", "rem_unsigned"])
def test_division_by_zero_terminates_with_an_error(name):
    # manual: "If the divisor is zero, terminate with an error."
    with pytest.raises(AgentExprError, match="division by zero"):
        binary(name, 5, 0)


def test_unary_operations():
    # manual: log_not "if it is zero, push the value one; otherwise, push the value zero"; bit_not: complement
    assert run(const(0), "log_not") == 1 and run(const(9), "log_not") == 0
    assert run(const(0), "bit_not") == M64 and run(const(0xF0), "bit_not") == M64 ^ 0xF0


def test_ext_and_zero_ext():
    # manual: ext n "all bits to the left of bit n-1 ... are set to the value of bit n-1"; n >= width: no effect
    assert run(const(0x80), "ext", 8) == (M64 ^ 0xFF) | 0x80
    assert run(const(0x7F), "ext", 8) == 0x7F
    assert run(const(0x1_8000), "ext", 16) == M64 ^ 0x7FFF           # bits above n are replaced too
    assert run(const(0x8000_0000), "ext", 32) == 0xFFFF_FFFF_8000_0000
    assert run(const(1 << 63), "ext", 64) == 1 << 63 and run(const(5), "ext", 200) == 5
    # zero_ext n: "zero all but the bottom n bits"
    assert run(const(-1), "zero_ext", 8) == 0xFF and run(const(-1), "zero_ext", 32) == 0xFFFF_FFFF
    assert run(const(-1), "zero_ext", 64) == M64 and run(const(-1), "zero_ext", 0) == 0
    with pytest.raises(AgentExprError, match="ext 0"):
        run(const(1), "ext", 0)


def test_constants_are_big_endian_and_not_sign_extended():
    # manual: "without sign extension"; "always stored most significant byte first"
    assert run("const8", 0xFF) == 0xFF
    assert run("const16", (0xFFFE, 2)) == 0xFFFE
    assert run("const32", (0x8000_0001, 4)) == 0x8000_0001
    assert run("const64", (0x0102_0304_0506_0708, 8)) == 0x0102_0304_0506_0708
    with pytest.raises(AgentExprError, match="cut short"):
        evaluate(asm("const32") + b"\x01\x02", registers, memory)


def test_ref_reads_target_endian_unsigned_values_at_any_alignment():
    # manual: "fetch an n-bit value from addr, using the natural target endianness ... as an unsigned integer"
    assert run(const(MEMORY_BASE + 0xFF), "ref8") == 0xFF
    assert run(const(MEMORY_BASE + 1), "ref16") == 0x0201
    assert run(const(MEMORY_BASE + 3), "ref32") == 0x06050403
    assert run(const(MEMORY_BASE + 0xF9), "ref64") == int.from_bytes(bytes([0xF9, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE,
                                                                             0xFF, 0x00]), "little")


@pytest.mark.parametrize("name, address", [("ref8", 0), ("ref16", MEMORY_BASE + 511), ("ref32", MEMORY_BASE - 2),
                                           ("ref64", MEMORY_BASE + 508), ("ref64", M64)])
def test_ref_of_unreadable_memory_terminates_with_an_error(name, address):
    # manual: "If attempting to access memory at addr would cause a processor exception ..., terminate with an error."
    with pytest.raises(AgentExprError, match=f"cannot read .* at {address:#x}"):
        run(const(address), name)


def test_reg_pushes_registers_by_gdb_number_without_sign_extension():
    # manual: reg n "Push the value of register number n, without sign extension"; n is 16-bit big-endian
    assert run("reg", (0, 2)) == 0x1122334455667788
    assert run("reg", (5, 2), "zero_ext", 8, "const8", ord("A"), "equal") == 1
    assert run("reg", (16, 2)) == M64
    with pytest.raises(AgentExprError, match="no register 99"):
        run("reg", (99, 2))


def test_stack_operations():
    # manual: dup a => a a; pop a =>; swap a b => b a
    assert run("const8", 7, "dup", "add") == 14
    assert run("const8", 1, "const8", 2, "pop") == 1
    assert run("const8", 10, "const8", 3, "swap", "sub") == 3 - 10 & M64
    # pick n: "If n is zero, this is the same as dup; if n is one, it copies the item under the top item"
    assert run("const8", 1, "const8", 2, "const8", 3, "pick", 0) == 3
    assert run("const8", 1, "const8", 2, "const8", 3, "pick", 2) == 1
    with pytest.raises(AgentExprError, match="pick 3"):
        run("const8", 1, "const8", 2, "const8", 3, "pick", 3)
    # rot: "The top item (c) becomes the third item, the next-to-top item (b) becomes the top item and
    # the third item (a) from the top becomes the next-to-top item": a b c => c a b
    rotated = ("const8", 1, "const8", 2, "const8", 3, "rot")
    assert run(*rotated) == 2
    assert run(*rotated, "pop") == 1
    assert run(*rotated, "pop", "pop") == 3


def test_goto_and_if_goto_jump_to_offsets_from_the_start():
    # manual: if_goto "if a is non-zero, set the pc register to start + offset"; goto: unconditionally
    #   0 const8 c  2 if_goto 8  5 const8 20  7 end  8 const8 10  10 end
    for condition, result in ((0, 20), (1, 10), (255, 10)):
        code = asm("const8", condition, "if_goto", (8, 2), "const8", 20, "end", "const8", 10, "end")
        assert evaluate(code, registers, memory) == result
    code = asm("goto", (5, 2), "const8", 1, "const8", 2, "end")
    assert evaluate(code, registers, memory) == 2
    # the bytecode GDB 13 sent for `break handle_key if ed.len == 0 && ed.hist_count == 0` (kbdshell, `ed`
    # at 0x103020: len at +68, hist_count at +64), in its Z0 packet
    condition = bytes.fromhex("24001030202244021922002a201320001421002d24001030202240021922002a20132000"
                              "2821002d220121002f220027")

    def editor(length: int, hist_count: int):
        state = bytes(64) + hist_count.to_bytes(4, "little") + length.to_bytes(4, "little")
        return lambda address, size: state[address - 0x103020:address - 0x103020 + size] \
            if 0x103020 <= address and address + size <= 0x103020 + len(state) else None
    assert evaluate(condition, registers, editor(0, 0)) == 1
    assert evaluate(condition, registers, editor(0, 1)) == 0
    assert evaluate(condition, registers, editor(5, 0)) == 0
    with pytest.raises(AgentExprError, match="cannot read 4 bytes of memory at 0x103064"):
        evaluate(condition, registers, memory)


def test_end_yields_the_top_of_the_stack():
    assert run("const8", 1, "const8", 0) == 0
    with pytest.raises(AgentExprError, match="stack empty"):
        evaluate(asm("end"), registers, memory)


def test_stack_limits_and_runaway_bytecode_are_errors():
    with pytest.raises(AgentExprError, match="underflow"):
        evaluate(asm("const8", 1, "add", "end"), registers, memory)
    with pytest.raises(AgentExprError, match="overflow"):
        evaluate(asm(*["const8", 0] * (MAX_STACK + 1), "end"), registers, memory)
    assert evaluate(asm(*["const8", 0] * MAX_STACK, "end"), registers, memory) == 0
    with pytest.raises(AgentExprError, match=f"more than {MAX_STEPS}"):
        evaluate(asm("goto", (0, 2)), registers, memory)
    with pytest.raises(AgentExprError, match="without 'end'"):
        evaluate(asm("const8", 1), registers, memory)
    with pytest.raises(AgentExprError, match="without 'end'"):
        evaluate(asm("goto", (900, 2)), registers, memory)
    with pytest.raises(AgentExprError, match="unknown bytecode 0x31"):
        evaluate(b"\x31", registers, memory)


@pytest.mark.parametrize("name", ["float", "ref_float", "ref_double", "ref_long_double", "l_to_d", "d_to_l",
                                  "trace", "trace_quick", "trace16", "tracev", "tracenz", "getv", "setv", "printf"])
def test_bytecodes_a_condition_cannot_use_are_errors(name):
    with pytest.raises(AgentExprError, match=f"bytecode {name} at offset 2 cannot be evaluated"):
        evaluate(asm("const8", 1, name, 0, 0, "end"), registers, memory)


def test_condition_list_wire_form():
    # GDB manual, "Packets", Z0: cond_list is a series of `X len,expr`, expr in hex
    assert parse_condition(b"X3,220127") == (bytes((0x22, 0x01, 0x27)), b"")
    assert parse_condition(b"X1,27X2,2227;cmds:0,X1,27") == (b"\x27", b"X2,2227;cmds:0,X1,27")
    for bad in (b"X", b"X3,2201", b"X2,zz27", b"Xg,27", b"X2, 2 27", b"Y1,27"):
        with pytest.raises(AgentExprError):
            parse_condition(bad)


@settings(max_examples=400, deadline=None)
@given(code=st.binary(max_size=64),
       registers_map=st.dictionaries(st.integers(0, 70), st.integers(0, M64), max_size=8),
       readable=st.sets(st.integers(0, 15), max_size=8))
def test_any_bytecode_gives_a_value_or_an_agent_expression_error(code, registers_map, readable):
    def read_memory(address: int, length: int) -> bytes | None:
        return bytes(length) if address in readable else None
    try:
        value = evaluate(code, registers_map.get, read_memory)
    except AgentExprError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert 0 <= value <= M64


@settings(max_examples=300, deadline=None)
@given(body=st.lists(st.sampled_from(sorted(set(OPCODES) - {"end"})), max_size=30),
       operands=st.binary(min_size=40, max_size=40))
def test_opcode_sequences_with_operands_give_a_value_or_an_error(body, operands):
    code = b"".join(bytes((OPCODES[name], operands[index])) for index, name in enumerate(body)) + asm("end")
    try:
        value = evaluate(code, registers, memory)
    except AgentExprError:
        return
    assert 0 <= value <= M64
