"""One named test per defect of the stock spec that xen/sleigh/*.patch fixes.

Every test runs its snippet on the stock engine and on the patched one (JIT and interpreter) and
asserts both sides: the patched engine gives the x86 result, and the stock engine really does not
(so each test proves that the patch is what fixes it). Expected values are written out or computed
by small Python models of the instruction, independent of both engines.
"""
import math
import random
import struct

import pytest

from tests.engine.snippets import run_snippet, snippet, stop_anywhere_mismatches

MASK64 = 2**64 - 1


def f32(x: float) -> int:
    return struct.unpack('<I', struct.pack('<f', x))[0]


def f64(x: float) -> int:
    return struct.unpack('<Q', struct.pack('<d', x))[0]


def lanes(value: int, bits: int) -> list[int]:
    return [value >> shift & (2**bits - 1) for shift in range(0, 128, bits)]


def pack(values: list[int], bits: int) -> int:
    return sum((v & (2**bits - 1)) << (k * bits) for k, v in enumerate(values))


def signed(value: int, bits: int) -> int:
    return value - 2**bits if value >> (bits - 1) else value


def assert_fixed(engines, asm: str, read: str, expected: int, registers=None, memory: bytes = b''):
    """The patched engine (JIT and interpreter) runs `asm` to its end with `read` == expected; the
    stock engine does not (wrong value, an exception, or JIT and interpreter disagreeing)."""
    code = snippet(asm)

    def correct(stop) -> bool:
        return stop.code == 'Syscall' and stop.pc == code.end and stop.reg(read) == expected

    for jit in (True, False):
        stop = run_snippet(engines[(True, jit)], code, registers, memory)
        assert correct(stop), (f"patched {'JIT' if jit else 'interpreter'}: {stop.code} at {stop.pc:#x}, "
                               f'{read} = {stop.reg(read):#x}, expected {expected:#x}')
    stock = [run_snippet(engines[(False, jit)], code, registers, memory) for jit in (True, False)]
    assert not all(correct(stop) for stop in stock), 'the stock engine already gets this right'


# ---------------------------------------------------------------- determinism: icount and JIT/interpreter

@pytest.mark.parametrize('instruction', [
    'bsfq %r9,%r8', 'bsrl %r9d,%r8d', 'tzcntw %r9w,%r8w', 'rep bsfq %r9,%r8',
    'lock cmpxchgq %r9,(%rsi)', 'lock cmpxchgl %r9d,(%rdi)', 'lock cmpxchg8b (%rsi)', 'lock cmpxchg16b (%rsi)'])
def test_stop_after_bitscan_or_locked_cmpxchg_keeps_icount(engines, instruction):
    code = snippet(f'movq $0x40,%r9; {instruction}; incq %r10; incq %r10; incq %r10')
    assert stop_anywhere_mismatches(engines[(False, True)], code), 'stock engine unexpectedly right'
    assert stop_anywhere_mismatches(engines[(True, True)], code) == []


@pytest.mark.parametrize('instruction', ['enter $16,$2', 'pclmulqdq $0x11,%xmm1,%xmm2', 'pdep %r9,%r10,%r11',
                                         'pextl %r9d,%r10d,%r11d'])
def test_loop_instructions_are_left_to_the_host(engines, instruction):
    code = snippet(f'movq $0x40,%r9; at: {instruction}; incq %r10; incq %r10')
    registers = {'rbp': 0x700400}
    assert stop_anywhere_mismatches(engines[(False, True)], code, registers), 'stock engine unexpectedly right'
    stop = run_snippet(engines[(True, True)], code, registers)
    assert (stop.code, stop.pc, stop.icount) == ('UnimplementedOp', code.labels['at'], 2)


@pytest.mark.parametrize('asm, source, expected', [
    ('cvttss2si %xmm1,%r8', f32(3e9), 3_000_000_000),
    ('cvttsd2si %xmm1,%r8d', f64(3e9), 0x80000000),
    ('cvtsd2si %xmm1,%r8', f64(2.5), 2),
    ('cvtsd2si %xmm1,%r8', f64(-3.5), -4 & MASK64),
    ('cvtsd2si %xmm1,%r8', f64(1e19), 0x8000000000000000),
    ('cvtss2si %xmm1,%r8d', f32(-1.5), 0xFFFFFFFE),
    ('cvttsd2si %xmm1,%r8', f64(math.nan), 0x8000000000000000),
])
def test_scalar_float_to_int(engines, asm, source, expected):
    assert_fixed(engines, asm, 'r8', expected, {'xmm1': source, 'r8': MASK64})


@pytest.mark.parametrize('asm, source, expected', [
    ('cvttps2dq %xmm1,%xmm2', pack([f32(math.nan), f32(2.9), f32(-2.9), f32(3e9)], 32),
     pack([0x80000000, 2, -2, 0x80000000], 32)),
    ('cvtps2dq %xmm1,%xmm2', pack([f32(0.5), f32(1.5), f32(-2.5), f32(-3e9)], 32), pack([0, 2, -2, 0x80000000], 32)),
    ('cvtpd2dq %xmm1,%xmm2', pack([f64(1e10), f64(-2.5)], 64), pack([0x80000000, -2, 0, 0], 32)),
    ('cvttpd2dq %xmm1,%xmm2', pack([f64(1e10), f64(-7.9)], 64), pack([0x80000000, -7, 0, 0], 32)),
])
def test_packed_float_to_int(engines, asm, source, expected):
    assert_fixed(engines, asm, 'xmm2', expected, {'xmm1': source, 'xmm2': 2**128 - 1})


@pytest.mark.parametrize('asm', ['addss %xmm2,%xmm1', 'addps %xmm2,%xmm1', 'mulss %xmm2,%xmm1'])
def test_two_nan_operands_give_the_first(engines, asm):
    # a signalling NaN first, a quiet one second: x86 returns the first, quietened
    first, second = pack([0x7F800001] * 4, 32), pack([0xFFC00002] * 4, 32)
    expected = 0x7FC00001 if 'ss' in asm else pack([0x7FC00001] * 4, 32)
    mask = 2**32 - 1 if 'ss' in asm else 2**128 - 1
    code = snippet(asm)
    for patched, wrong_somewhere in ((True, False), (False, True)):
        results = [run_snippet(engines[(patched, jit)], code, {'xmm1': first, 'xmm2': second}).reg('xmm1') & mask
                   for jit in (True, False)]
        assert (results != [expected, expected]) == wrong_somewhere, results


# ---------------------------------------------------------------- integer results

@pytest.mark.parametrize('asm, value, expected_cf', [
    ('stc; rclq $5,%r8', 0x0800000000000000, 1),
    ('clc; rclq %cl,%r8', 0x0200000000000000, 1),
    ('clc; rcrq $3,%r8', 0x4, 1),
    ('clc; rcrq $2,%r8', 1 << 62, 0),
])
def test_rcl_rcr_64_bit_carry(engines, asm, value, expected_cf):
    assert_fixed(engines, asm, 'CF', expected_cf, {'r8': value, 'rcx': 7})


@pytest.mark.parametrize('asm, value', [('shrq %r8', 0x8000000000000001), ('shrb %r8b', 0x81), ('shrl $1,%r8d', 0x80000000)])
def test_shr_by_one_sets_overflow_to_the_old_sign(engines, asm, value):
    assert_fixed(engines, asm, 'OF', 1, {'r8': value})


def test_sbb_sign_extends_a_32_bit_immediate(engines):
    assert_fixed(engines, 'clc; sbbq $-0x12345,%r8', 'r8', 5 + 0x12345, {'r8': 5})


@pytest.mark.parametrize('asm', [
    'movb $0x0f,%al; addb $1,%al', 'movb $0x10,%al; subb $1,%al', 'movl $0xf,%r8d; incl %r8d',
    'movl $0x10,%r8d; decl %r8d', 'movq $1,%r8; negq %r8', 'movq $0x10,%r8; cmpq $1,%r8',
    'stc; movb $0x0f,%al; adcb $0,%al', 'stc; movb $0x10,%al; sbbb $0,%al', 'movq $8,%r8; movq $8,%r9; xaddq %r9,%r8',
    'movb $0x10,%al; movb $1,(%rsi); cmpxchgb %r9b,(%rsi)', 'movb $0x10,%al; movb $1,(%rdi); scasb',
    'movb $0x10,(%rsi); movb $1,(%rdi); cmpsb', 'movw $0x0f,(%rsi); lock incw (%rsi)'])
def test_auxiliary_carry_flag(engines, asm):
    assert_fixed(engines, asm, 'AF', 1)


def test_pushf_pushes_reserved_bit_1(engines):
    assert_fixed(engines, 'pushfq; popq %r8; andl $2,%r8d', 'r8', 2)


@pytest.mark.parametrize('asm, read, expected, registers', [
    ('lodsl', 'rax', 0x44332211, {'rax': MASK64}),
    ('cmpxchg8b (%rsi)', 'rdx', 0x88776655, {'rax': MASK64, 'rdx': MASK64}),
    ('cvtsd2si %xmm1,%r8d', 'r8', 5, {'r8': MASK64, 'xmm1': f64(5.0)}),
    ('cvtss2si %xmm1,%r8d', 'r8', 7, {'r8': MASK64, 'xmm1': f32(7.0)}),
    ('movmskps %xmm1,%r8d', 'r8', 0b0101, {'r8': MASK64, 'xmm1': pack([0x80000000, 0, 0xBF800000, 1], 32)}),
])
def test_32_bit_results_clear_the_upper_half(engines, asm, read, expected, registers):
    assert_fixed(engines, asm, read, expected, registers, memory=bytes(range(0x11, 0x99, 0x11)))


@pytest.mark.parametrize('asm, registers, expected', [
    ('bsfq %r9,%r8', {'r8': 0x1234}, 0x1234),
    ('bsrq %r9,%r8', {'r8': 0x1234}, 0x1234),
    ('bsrl %r9d,%r8d', {'r8': 0xFFFFFFFF00001234}, 0x1234),
])
def test_bit_scan_of_zero_leaves_the_destination(engines, asm, registers, expected):
    assert_fixed(engines, asm, 'r8', expected, registers)


# ---------------------------------------------------------------- SSE/SSE2

PATTERN = 0x8000_7FFF_0123_FEDC_8001_0002_FFFF_1234


@pytest.mark.parametrize('asm, count, expected', [
    ('psllq %xmm3,%xmm2', 0x1_0000_0004, 0),
    ('psrld %xmm3,%xmm2', 0x1_0000_0004, 0),
    ('psrad %xmm3,%xmm2', 0x1_0000_0004, pack([-1 if signed(v, 32) < 0 else 0 for v in lanes(PATTERN, 32)], 32)),
    ('psraw %xmm3,%xmm2', 0x1_0000_0003, pack([-1 if signed(v, 16) < 0 else 0 for v in lanes(PATTERN, 16)], 16)),
    ('psllw %xmm3,%xmm2', 0x1_0000_0003, 0),
])
def test_packed_shift_by_xmm_count(engines, asm, count, expected):
    assert_fixed(engines, asm, 'xmm2', expected, {'xmm2': PATTERN, 'xmm3': count})


def test_cmpps_compares_lanes_2_and_3(engines):
    a = pack([f32(1), f32(1), f32(1), f32(5)], 32)
    b = pack([f32(2), f32(0), f32(2), f32(0)], 32)
    assert_fixed(engines, 'cmpltps %xmm2,%xmm1', 'xmm1', pack([-1, 0, -1, 0], 32), {'xmm1': a, 'xmm2': b})


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


SSE2_INTEGER = {
    'paddsb': (8, lambda a, b: _clamp(signed(a, 8) + signed(b, 8), -128, 127)),
    'paddsw': (16, lambda a, b: _clamp(signed(a, 16) + signed(b, 16), -32768, 32767)),
    'paddusb': (8, lambda a, b: min(a + b, 255)),
    'paddusw': (16, lambda a, b: min(a + b, 65535)),
    'psubsb': (8, lambda a, b: _clamp(signed(a, 8) - signed(b, 8), -128, 127)),
    'psubsw': (16, lambda a, b: _clamp(signed(a, 16) - signed(b, 16), -32768, 32767)),
    'psubusb': (8, lambda a, b: max(a - b, 0)),
    'psubusw': (16, lambda a, b: max(a - b, 0)),
    'pavgb': (8, lambda a, b: (a + b + 1) >> 1),
    'pavgw': (16, lambda a, b: (a + b + 1) >> 1),
    'pmulhuw': (16, lambda a, b: (a * b) >> 16),
}


def _vector(seed: int) -> int:
    rng = random.Random(seed)
    return pack([rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)]) for _ in range(16)], 8)


@pytest.mark.parametrize('operation', sorted(SSE2_INTEGER))
def test_sse2_integer_instruction(engines, operation):
    bits, model = SSE2_INTEGER[operation]
    a, b = _vector(1), _vector(2)
    expected = pack([model(x, y) for x, y in zip(lanes(a, bits), lanes(b, bits))], bits)
    assert_fixed(engines, f'{operation} %xmm2,%xmm1', 'xmm1', expected, {'xmm1': a, 'xmm2': b})


def test_psadbw(engines):
    a, b = _vector(3), _vector(4)
    differences = [abs(x - y) for x, y in zip(lanes(a, 8), lanes(b, 8))]
    expected = sum(differences[:8]) | sum(differences[8:]) << 64
    assert_fixed(engines, 'psadbw %xmm2,%xmm1', 'xmm1', expected, {'xmm1': a, 'xmm2': b})


def _f32_lanes(values: list[float]) -> int:
    return pack([f32(v) for v in values], 32)


def _x86_min(a: float, b: float) -> float:
    return a if a < b else b     # unordered or equal: the second operand, as x86 MINPS


def _x86_max(a: float, b: float) -> float:
    return a if a > b else b


FIRST = [1.0, math.nan, 0.0, -6.0]
SECOND = [4.0, 2.0, -0.0, math.nan]


@pytest.mark.parametrize('asm, expected', [
    ('divps %xmm2,%xmm1', _f32_lanes([0.25, math.nan, math.nan, math.nan])),
    ('minps %xmm2,%xmm1', _f32_lanes([_x86_min(a, b) for a, b in zip(FIRST, SECOND)])),
    ('maxps %xmm2,%xmm1', _f32_lanes([_x86_max(a, b) for a, b in zip(FIRST, SECOND)])),
    ('sqrtps %xmm2,%xmm1', _f32_lanes([2.0, math.sqrt(2.0), -0.0, math.nan])),
    ('rcpps %xmm2,%xmm1', _f32_lanes([0.25, 0.5, -math.inf, math.nan])),
    ('rsqrtps %xmm2,%xmm1', _f32_lanes([0.5, 1 / math.sqrt(2.0), -math.inf, math.nan])),
])
def test_packed_single_float(engines, asm, expected):
    code = snippet(asm)
    registers = {'xmm1': _f32_lanes(FIRST), 'xmm2': _f32_lanes(SECOND)}
    # NaN lanes are compared as "some NaN": their payload is host arithmetic, the same in JIT and interpreter
    def canonical(value: int) -> list:
        return ['nan' if math.isnan(struct.unpack('<f', struct.pack('<I', v))[0]) else v for v in lanes(value, 32)]
    for jit in (True, False):
        stop = run_snippet(engines[(True, jit)], code, registers)
        assert stop.code == 'Syscall' and canonical(stop.reg('xmm1')) == canonical(expected)
    assert run_snippet(engines[(False, True)], code, registers).code == 'UnimplementedOp'


@pytest.mark.parametrize('asm, expected', [
    ('divpd %xmm2,%xmm1', pack([f64(2.5), f64(-0.5)], 64)),
    ('minpd %xmm2,%xmm1', pack([f64(2.0), f64(-0.5)], 64)),
    ('maxpd %xmm2,%xmm1', pack([f64(5.0), f64(1.0)], 64)),
    ('sqrtpd %xmm2,%xmm1', pack([f64(math.sqrt(2.0)), f64(1.0)], 64)),
])
def test_packed_double_float(engines, asm, expected):
    registers = {'xmm1': pack([f64(5.0), f64(-0.5)], 64), 'xmm2': pack([f64(2.0), f64(1.0)], 64)}
    assert_fixed(engines, asm, 'xmm1', expected, registers)


@pytest.mark.parametrize('asm', ['rcpss %xmm2,%xmm1', 'rsqrtss %xmm2,%xmm1'])
def test_scalar_reciprocals_keep_upper_lanes(engines, asm):
    value = 0.25 if asm.startswith('rcp') else 0.5
    expected = pack([f32(value), 0x11111111, 0x22222222, 0x33333333], 32)
    assert_fixed(engines, asm, 'xmm1', expected,
                 {'xmm1': pack([0, 0x11111111, 0x22222222, 0x33333333], 32), 'xmm2': f32(4.0)})


def test_lddqu_loads_16_unaligned_bytes(engines):
    memory = bytes(range(32))
    assert_fixed(engines, 'lddqu 3(%rsi),%xmm1', 'xmm1', int.from_bytes(memory[3:19], 'little'), memory=memory)


def test_clflush_has_no_effect(engines):
    assert_fixed(engines, 'clflush (%rsi); movq $7,%r8', 'r8', 7)
