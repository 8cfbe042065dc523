"""The x86-64 register file as GDB sees it: the target description (qXfer target.xml) and the
value of every register in it, read from a vCPU.

Owns the one table of registers - name, size, GDB type, and how its value is read - from which
both the XML target description and the `g`/`p` packet contents are produced, so they can never
disagree. Invariant: register number N in the XML is entry N of `REGISTERS`, and `g` is the
concatenation of every entry's value, little-endian, `bits // 8` bytes each, in table order.

GDB's amd64 architecture accepts a description only if its core feature holds the x87 registers
too (st0-7, fctrl ... fop), so they are included; the engine keeps no x87 instruction/operand
pointers, so fiseg, fioff, foseg, fooff and fop read as 0. The vCPU runs in the PV guest kernel's
flat segments, so cs and ss are Xen's FLAT_KERNEL_CS/SS and the data segments are null, as on Xen.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xen import abi
from xen.vcpu import GPR_NAMES, VCpu

Reader = Callable[[VCpu], int]


@dataclass(frozen=True)
class Register:
    """One register of the target description."""
    name: str
    bits: int
    gdb_type: str
    feature: str
    read: Reader
    group: str | None = None


CORE = "org.gnu.gdb.i386.core"
SSE = "org.gnu.gdb.i386.sse"
SEGMENTS = "org.gnu.gdb.i386.segments"

# rflags bits GDB shows by name (`info registers eflags` -> [ IF ZF ]).
_EFLAGS_BITS = (("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
                ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18), ("VIF", 19),
                ("VIP", 20), ("ID", 21))
_MXCSR_BITS = (("IE", 0), ("DE", 1), ("ZE", 2), ("OE", 3), ("UE", 4), ("PE", 5), ("DAZ", 6), ("IM", 7),
               ("DM", 8), ("ZM", 9), ("OM", 10), ("UM", 11), ("PM", 12), ("FZ", 15))
# x87 condition codes C0-C3 live in the status word at these bits.
_CONDITION_BITS = (("C0", 8), ("C1", 9), ("C2", 10), ("C3", 14))


def _named(name: str) -> Reader:
    return lambda vcpu: vcpu.reg(name)


def _constant(value: int) -> Reader:
    return lambda vcpu: value


def _x87_status(vcpu: VCpu) -> int:
    status = vcpu.reg("FPUStatusWord")
    for flag, bit in _CONDITION_BITS:
        status |= (vcpu.reg(flag) & 1) << bit
    return status


def _build_registers() -> tuple[Register, ...]:
    gprs = [Register(name, 64, "data_ptr" if name in ("rbp", "rsp") else "int64", CORE, _named(name))
            for name in GPR_NAMES]
    control = [Register("rip", 64, "code_ptr", CORE, lambda vcpu: vcpu.pc),
               Register("eflags", 32, "i386_eflags", CORE, lambda vcpu: vcpu.rflags())]
    segments = [Register(name, 32, "int32", CORE, _constant(value))
                for name, value in (("cs", abi.FLAT_KERNEL_CS), ("ss", abi.FLAT_KERNEL_SS),
                                    ("ds", abi.FLAT_KERNEL_DS), ("es", abi.FLAT_KERNEL_DS),
                                    ("fs", abi.FLAT_KERNEL_DS), ("gs", abi.FLAT_KERNEL_DS))]
    x87 = [Register(f"st{k}", 80, "i387_ext", CORE, _named(f"st{k}")) for k in range(8)]
    x87 += [Register("fctrl", 32, "int", CORE, _named("FPUControlWord"), "float"),
            Register("fstat", 32, "int", CORE, _x87_status, "float"),
            Register("ftag", 32, "int", CORE, _named("FPUTagWord"), "float")]
    x87 += [Register(name, 32, "int", CORE, _constant(0), "float")
            for name in ("fiseg", "fioff", "foseg", "fooff", "fop")]
    sse = [Register(f"xmm{k}", 128, "vec128", SSE, _named(f"xmm{k}")) for k in range(16)]
    sse.append(Register("mxcsr", 32, "i386_mxcsr", SSE, _named("mxcsr"), "vector"))
    bases = [Register(name, 64, "int", SEGMENTS, _named(name)) for name in ("fs_base", "gs_base")]
    return tuple(gprs + control + segments + x87 + sse + bases)


REGISTERS: tuple[Register, ...] = _build_registers()
REGISTER_NUMBERS: dict[str, int] = {register.name: number for number, register in enumerate(REGISTERS)}


def register_bytes(vcpu: VCpu, number: int) -> bytes:
    """Register `number`'s value as GDB expects it: little-endian, bits // 8 bytes."""
    register = REGISTERS[number]
    size = register.bits // 8
    return (register.read(vcpu) & ((1 << register.bits) - 1)).to_bytes(size, "little")


def all_registers(vcpu: VCpu) -> bytes:
    """The `g` packet contents: every register in description order."""
    return b"".join(register_bytes(vcpu, number) for number in range(len(REGISTERS)))


def _flags_type(type_id: str, size: int, bits: tuple[tuple[str, int], ...]) -> list[str]:
    lines = [f'  <flags id="{type_id}" size="{size}">']
    lines += [f'    <field name="{name}" start="{bit}" end="{bit}"/>' for name, bit in bits]
    lines.append("  </flags>")
    return lines


def _vec128_type() -> list[str]:
    lanes = (("v4_float", "v4f", "ieee_single", 4), ("v2_double", "v2d", "ieee_double", 2),
             ("v16_int8", "v16i8", "int8", 16), ("v8_int16", "v8i16", "int16", 8),
             ("v4_int32", "v4i32", "int32", 4), ("v2_int64", "v2i64", "int64", 2))
    lines = [f'  <vector id="{type_id}" type="{element}" count="{count}"/>' for _, type_id, element, count in lanes]
    lines.append('  <union id="vec128">')
    lines += [f'    <field name="{field}" type="{type_id}"/>' for field, type_id, _, _ in lanes]
    lines.append('    <field name="uint128" type="uint128"/>')
    lines.append("  </union>")
    return lines


def _build_xml() -> bytes:
    types = {CORE: _flags_type("i386_eflags", 4, _EFLAGS_BITS),
             SSE: _vec128_type() + _flags_type("i386_mxcsr", 4, _MXCSR_BITS),
             SEGMENTS: []}
    lines = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', '<target version="1.0">',
             "  <architecture>i386:x86-64</architecture>"]
    for feature in (CORE, SSE, SEGMENTS):
        lines.append(f'  <feature name="{feature}">')
        lines += ["  " + line for line in types[feature]]
        for number, register in enumerate(REGISTERS):
            if register.feature == feature:
                group = f' group="{register.group}"' if register.group else ""
                lines.append(f'    <reg name="{register.name}" bitsize="{register.bits}" type="{register.gdb_type}"'
                             f' regnum="{number}"{group}/>')
        lines.append("  </feature>")
    lines.append("</target>")
    return ("\n".join(lines) + "\n").encode()


TARGET_XML: bytes = _build_xml()
"""The target description GDB reads with qXfer:features:read:target.xml."""
