"""The virtual CPU: one x86-64 vCPU on the icicle-emu engine, and every engine quirk.

`VCpu` is the only place that touches `icicle`. It owns the engine instance, guest memory mapping,
exact instruction counting, exits, breakpoints, watch traps and state snapshots. The rest of the
hypervisor sees only the small interface below and never an engine exception.

Invariant (the one record/replay stands on): given the same state and the same calls, `run()` and
`step()` reach the same instruction counts and the same state whatever limits the caller uses to
slice execution. `icount` counts retired guest instructions: an instruction that exits (a hypercall,
an emulated instruction, a watched access) has retired when the exit is reported; one that faults
has not. Everything guest-visible that the engine would otherwise make host-dependent (CPUID, TSC,
random numbers, HLT) is either a documented pure function of the vCPU state or an exit that the
hypervisor answers through its input funnel.

Engine quirks handled here (see docs/engine.md):
- the stock x86 SLEIGH spec is patched (xen/sleigh/*.patch) into build/engine-spec; GHIDRA_SRC is
  pointed at it after `import icicle` and before any instance exists;
- MXCSR and the x87 control word start at 0 in the engine; hardware reset values are set instead;
- environment instructions (CPUID, RDTSC, RDTSCP, RDRAND, RDSEED, HLT) and privileged ones surface as
  UnimplementedOp with the instruction counted and pc on it; they are decoded and emulated here;
- `syscall` and `int n` both surface as a Syscall exception; the bytes at pc tell them apart;
- most faults leave the faulting instruction counted, but an execute violation and undecodable
  bytes count nothing: each fault kind has its own measured rule here (_UNCOUNTED_FAULTS);
- write/read watch traps come from page protection: the trapping access is re-executed on an
  unprotected page, exactly once, then protection is restored. The engine reports the access's first
  address only (on whichever page trapped): the trapping page and the access's width (decoded with
  capstone) are worked out here, so accesses straddling pages or overlapping a watch partly are exact;
- `rflags`/`eflags` engine registers are computed by handlers: state is saved flag by flag instead;
- the JIT keeps a fast lookup table from block start to translated code, and adding a breakpoint
  evicts only the entry *at* the breakpoint's address: a block that already ran and contains the
  address further in would run past it. Adding a breakpoint that such a block may cover evicts every
  entry that can start a block containing it (`_evict_translations_covering`). The engine's periodic
  recompilation chains blocks past breakpoints altogether: it is turned off.
"""
from __future__ import annotations

import enum
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import icicle
from icicle import ExceptionCode, Icicle, MemoryProtection, RunStatus

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1)
_ZERO_PAGE = bytes(PAGE_SIZE)

_PROJECT_ROOT = Path(__file__).resolve().parent.parent
PATCH_DIR = Path(__file__).resolve().parent / "sleigh"
SPEC_DIR = Path(os.environ.get("XENRR_ENGINE_SPEC", _PROJECT_ROOT / "build" / "engine-spec"))
_SPEC_SUBDIR = Path("Ghidra") / "Processors" / "x86"

# The longest span of code one translated block can cover: the engine ends a block after 128
# instructions, and an x86 instruction is at most 15 bytes long.
_MAX_BLOCK_BYTES = 128 * 15

# The documented virtual TSC: one tick per retired instruction (docs/engine.md, "Time").
TSC_PER_INSTRUCTION = 1


class EngineError(RuntimeError):
    """The engine could not be set up or misbehaved in a way that is not the guest's fault."""


class GuestMemoryError(Exception):
    """A hypervisor access to guest memory outside what the guest has mapped (or may write)."""

    def __init__(self, address: int, length: int, problem: str = "is not mapped"):
        super().__init__(f"guest address range {address:#x}+{length:#x} {problem}")
        self.address = address
        self.length = length


# --------------------------------------------------------------------------- engine spec patching

def _patch_files() -> list[Path]:
    return sorted(PATCH_DIR.glob("*.patch"))


def _patch_set_digest() -> str:
    digest = hashlib.sha256(icicle.__file__.encode())
    for patch in _patch_files():
        digest.update(patch.name.encode())
        digest.update(patch.read_bytes())
    return digest.hexdigest()


def _stock_spec_dir() -> Path:
    return Path(icicle.__file__).resolve().parent / _SPEC_SUBDIR


def prepare_spec() -> Path:
    """Build the patched engine spec (idempotent; rebuilt when the patch set changes). Returns its root.

    The stock x86 folder of the installed icicle package is copied and every xen/sleigh/*.patch is
    applied in name order with `patch`. The result replaces the old copy atomically, so concurrent
    processes never see a half-patched spec.
    """
    stamp = SPEC_DIR / ".stamp"
    digest = _patch_set_digest()
    if stamp.exists() and stamp.read_text() == digest:
        return SPEC_DIR
    if shutil.which("patch") is None:
        raise EngineError("the `patch` program is missing: run `make` (it installs it) or apt-get install patch")
    SPEC_DIR.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".engine-spec-", dir=SPEC_DIR.parent))
    try:
        shutil.copytree(_stock_spec_dir(), staging / _SPEC_SUBDIR)
        languages = staging / _SPEC_SUBDIR / "data" / "languages"
        for patch in _patch_files():
            result = subprocess.run(
                ["patch", "-p1", "--forward", "--silent", "-d", str(languages), "-i", str(patch)],
                capture_output=True, text=True)
            if result.returncode != 0:
                detail = (result.stdout + result.stderr).strip().splitlines()
                raise EngineError(f"engine patch {patch.name} does not apply: {detail[0] if detail else 'patch failed'}")
        (staging / ".stamp").write_text(digest)
        old = None
        if SPEC_DIR.exists():
            old = Path(tempfile.mkdtemp(prefix=".engine-spec-old-", dir=SPEC_DIR.parent))
            os.replace(SPEC_DIR, old / "spec")
        os.replace(staging, SPEC_DIR)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return SPEC_DIR


# One engine created ahead of need, never run (prepare_spare_engine); the next default new_engine() takes it.
_spare_engine: Icicle | None = None


def prepare_spare_engine() -> None:
    """Create the next engine now, for a process that forks before it needs one (the fork server of
    dom0/forkserver.py, the parent of `replay --jobs` workers): each forked child's first engine is then
    a copy of this one instead of a new compilation of the spec (~0.07 s). Creating an engine runs no
    guest code and an engine is never handed out twice, so a child's copy is indistinguishable from an
    engine it would have created itself."""
    global _spare_engine
    if _spare_engine is None:
        _spare_engine = _create_engine(jit=True, patched=True)


def new_engine(jit: bool = True, patched: bool = True) -> Icicle:
    """A raw engine instance using the patched spec (or the stock one, for regression tests only)."""
    global _spare_engine
    if jit and patched and _spare_engine is not None:
        engine, _spare_engine = _spare_engine, None
        return engine
    return _create_engine(jit, patched)


def _create_engine(jit: bool, patched: bool) -> Icicle:
    os.environ["GHIDRA_SRC"] = str(prepare_spec() if patched else Path(icicle.__file__).resolve().parent)
    # The SLEIGH compiler builds error values for constructs of the x86 spec it then handles; with
    # RUST_BACKTRACE set (common in a Rust developer's shell) each captures and symbolises a backtrace,
    # which doubled the engine's creation (~0.07 s more). Nothing shows them: library backtraces are
    # off unless the user asked for them by name (panics still follow RUST_BACKTRACE).
    os.environ.setdefault("RUST_LIB_BACKTRACE", "0")
    try:
        # recompilation=False: the engine's periodic (wall-clock driven) recompilation chains translated
        # blocks into direct jumps that no breakpoint check sees.
        return Icicle("x86_64", jit=jit, recompilation=False)
    except Exception as error:  # the engine reports SLEIGH compile errors as plain exceptions
        raise EngineError(f"the engine could not load its x86 spec: {error}") from error


# --------------------------------------------------------------------------- exits

class ExitReason(enum.Enum):
    LIMIT = "limit"            # icount reached the requested target
    HYPERCALL = "hypercall"    # `syscall` retired; pc is after it; number and arguments in registers
    BREAKPOINT = "breakpoint"  # pc is at a breakpoint; that instruction has not executed
    WATCHPOINT = "watchpoint"  # an access to a watched range retired; pc is after the instruction
    RANDOM = "random"          # rdrand/rdseed: answer with finish_random(value) before running on
    IDLE = "idle"              # `hlt` retired
    FAULT = "fault"            # the guest faulted; pc is on the faulting instruction, not retired


class Exit(NamedTuple):
    """Why `run`/`step` returned, and where (a NamedTuple: built on every exit, it must be cheap)."""
    reason: ExitReason
    icount: int
    pc: int
    address: int | None = None   # data address of a watched access or a memory fault
    access: str | None = None    # watchpoint: "r" or "w"
    detail: str = ""             # fault: a one-line description
    vector: int | None = None    # fault: the x86 exception vector it raises (None: none applies)
    error_code: int | None = None  # fault: the exception's error code, for vectors that push one
    length: int = 0              # fault from `int n`/`int3`: its length (a trap: the handler returns past it)


# --------------------------------------------------------------------------- registers

GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_X86_REGISTER_ORDER = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi") + tuple(f"r{n}" for n in range(8, 16))
_FLAG_BITS = (("CF", 0), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
              ("DF", 10), ("OF", 11), ("NT", 14), ("AC", 18), ("ID", 21))
# The complete architectural state the engine holds (87 registers); order matters on restore:
# STk is written before MMk_Wd (writing STk writes all 10 bytes). pc is restored separately, last.
_STATE_REGISTERS = (
    tuple(name.upper() for name in GPR_NAMES)
    + tuple(flag for flag, _ in _FLAG_BITS)
    + ("FS_OFFSET", "GS_OFFSET", "MXCSR")
    + tuple(f"XMM{k}_Q{half}" for k in range(16) for half in "ab")
    + tuple(name for k in range(8) for name in (f"ST{k}", f"MM{k}_Wd"))
    + ("FPUControlWord", "FPUStatusWord", "FPUTagWord", "C0", "C1", "C2", "C3"))

MXCSR_RESET = 0x1F80
FCW_RESET = 0x037F
RFLAGS_RESERVED_ONE = 0x2


@dataclass(frozen=True)
class CpuState:
    """A complete vCPU register snapshot, restorable into this or a fresh VCpu."""
    registers: tuple[int, ...]
    pc: int
    icount: int


def fresh_cpu_state(registers: dict[str, int], pc: int, icount: int = 0) -> CpuState:
    """The registers of a vCPU that has not run yet (VCPUOP_initialise): the named GPRs, `rflags`,
    `fs_base` and `gs_base` as given, the rest at their reset values (MXCSR, x87 control and tag words)."""
    values = {name: 0 for name in _STATE_REGISTERS}
    values.update(MXCSR=MXCSR_RESET, FPUControlWord=FCW_RESET, FPUTagWord=0xFFFF)
    for name, value in registers.items():
        if name == "rflags":
            values.update({flag: (value >> bit) & 1 for flag, bit in _FLAG_BITS})
        elif name in ("fs_base", "gs_base"):
            values[name[:2].upper() + "_OFFSET"] = value
        else:
            values[name.upper()] = value
    return CpuState(tuple(values[name] for name in _STATE_REGISTERS), pc, icount)


def cpu_state_register(state: CpuState, name: str) -> int:
    """One register of a saved vCPU state, by the names `VCpu.reg` takes (GPRs, rip, rflags, fs_base,
    gs_base, mxcsr, xmmN, stN and the engine's x87 names): how a debugger reads a vCPU that is not on
    the engine."""
    name = name.lower()
    values = {key.lower(): value for key, value in zip(_STATE_REGISTERS, state.registers)}
    if name == "rip":
        return state.pc
    if name in ("rflags", "eflags"):
        return RFLAGS_RESERVED_ONE | sum((values[flag.lower()] & 1) << bit for flag, bit in _FLAG_BITS)
    if name in ("fs_base", "gs_base"):
        return values[name[:2] + "_offset"]
    if name.startswith("xmm"):
        return values[f"{name}_qa"] | (values[f"{name}_qb"] << 64)
    return values[name]


class SavedCpu:
    """A read-only view of a saved vCPU state with the reading half of `VCpu`'s register interface
    (`reg`, `pc`, `rflags`, `icount`): a debugger shows a vCPU that waits off the engine through it."""

    def __init__(self, state: CpuState):
        self.state = state

    def reg(self, name: str) -> int:
        return cpu_state_register(self.state, name)

    @property
    def pc(self) -> int:
        return self.state.pc

    def rflags(self) -> int:
        return cpu_state_register(self.state, "rflags")


# --------------------------------------------------------------------------- the vCPU

# CPUID as documented in docs/engine.md: a fixed, honest description of what the patched engine runs.
_VENDOR = b"XenrrVirtCPU"
_XEN_SIGNATURE = b"XenVMMXenVMM"


def _regs_from_text(text: bytes) -> tuple[int, int, int]:
    return tuple(int.from_bytes(text[i:i + 4], "little") for i in (0, 4, 8))  # type: ignore[return-value]


def cpuid(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """The vCPU's CPUID table: (eax, ebx, ecx, edx) for a leaf/subleaf. Unknown leaves read as zeros."""
    vendor_b, vendor_d, vendor_c = _regs_from_text(_VENDOR)
    if leaf == 0:
        return 0x7, vendor_b, vendor_c, vendor_d
    if leaf == 1:
        # family 6, model 0x2a-like signature; edx: FPU TSC CX8 CMOV MMX FXSR SSE SSE2; ecx: CX16 POPCNT HYPERVISOR
        edx = (1 << 0) | (1 << 4) | (1 << 8) | (1 << 15) | (1 << 23) | (1 << 24) | (1 << 25) | (1 << 26)
        ecx = (1 << 13) | (1 << 23) | (1 << 31)
        return 0x000206A0, 0x00000800, ecx, edx
    if leaf == 0x40000000:
        b, c, d = _regs_from_text(_XEN_SIGNATURE)
        return 0x40000001, b, c, d
    if leaf == 0x40000001:
        return (4 << 16) | 17, 0, 0, 0   # Xen 4.17, as the headers we implement
    if leaf == 0x80000000:
        return 0x80000001, 0, 0, 0
    if leaf == 0x80000001:
        # edx: SYSCALL NX LM; ecx: LAHF/SAHF, LZCNT
        return 0, 0, (1 << 0) | (1 << 5), (1 << 11) | (1 << 20) | (1 << 29)
    return 0, 0, 0, 0


@functools.cache
def _disassembler():
    """capstone, for the width of a watched access: imported on the first watch trap, not by every command."""
    import capstone
    disassembler = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    disassembler.detail = True
    return disassembler, capstone.x86.X86_OP_MEM

_PROTECTION_FULL = MemoryProtection.ExecuteReadWrite
_PROTECTION_WRITE_TRAP = MemoryProtection.ExecuteRead
_PROTECTION_ACCESS_TRAP = MemoryProtection.ExecuteOnly


_WRITABLE = (MemoryProtection.ExecuteReadWrite, MemoryProtection.ReadWrite)
_READABLE = _WRITABLE + (MemoryProtection.ExecuteRead, MemoryProtection.ReadOnly)


def _mapping_hash(page: int, mapping: "Mapping") -> int:
    """One mapping's share of VCpu.mapping_digest() (combined by XOR, so order does not matter)."""
    text = f"{page:x}:{mapping.frame:x}:{int(mapping.writable)}{int(mapping.executable)}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=16).digest(), "little")

# Engine exception codes are not hashable: these tables are keyed by the code's name.
_FAULT_TEXT = {
    "InvalidInstruction": "invalid instruction",
    "Undecodable": "undecodable instruction bytes",
    "DivisionException": "divide error",
    "ReadUnmapped": "read from unmapped address",
    "WriteUnmapped": "write to unmapped address",
    "ExecViolation": "execute from non-executable or unmapped address",
    "ReadPerm": "read from protected memory at",
    "WritePerm": "write to read-only memory at",
    "SelfModifyingCode": "store to the guest's own code (self-modifying code is not supported) at",
    "ReadUnaligned": "unaligned read",
    "WriteUnaligned": "unaligned write",
    "AddressOverflow": "address overflow",
    "UnimplementedOp": "instruction not supported by the vCPU",
    "UnknownCpuID": "unsupported CPUID leaf",
}
# How the engine counts a faulting instruction, measured per fault kind (tests/vcpu/test_fault_rules.py):
# - counted (pc on the instruction, icount includes it): ud0/ud1/ud2 (InvalidInstruction, value 0),
#   DivisionException, ReadUnmapped, WriteUnmapped, ReadPerm, WritePerm, SelfModifyingCode,
#   UnimplementedOp (privileged or unknown instructions), `int n` (Syscall);
# - not counted: ExecViolation (pc is the target of the jump/call/ret/iret that retired, or the start
#   of an instruction whose bytes run into unmapped memory: it never started) and undecodable bytes
#   (InvalidInstruction with the value = pc: decoding failed before the instruction began).
_UNCOUNTED_FAULTS = frozenset({"ExecViolation", "Undecodable"})
_UD_OPCODES = frozenset({b"\x0f\x0b", b"\x0f\xb9", b"\x0f\xff"})
# The x86 exception each engine fault raises in a PV guest kernel: (vector, error code or None). Page
# faults: bit 0 present (a protection fault), bit 1 write, bit 4 instruction fetch (never user mode: the
# guest kernel is the only code that runs). Privileged instructions and misaligned or non-canonical
# accesses are #GP(0), as on hardware.
_FAULT_EXCEPTIONS = {
    "InvalidInstruction": (6, None),
    "Undecodable": (6, None),
    "DivisionException": (0, None),
    "ReadUnmapped": (14, 0x0),
    "WriteUnmapped": (14, 0x2),
    "ExecViolation": (14, 0x10),
    "ReadPerm": (14, 0x1),
    "WritePerm": (14, 0x3),
    "SelfModifyingCode": (14, 0x3),
    "ReadUnaligned": (13, 0),
    "WriteUnaligned": (13, 0),
    "AddressOverflow": (13, 0),
    "UnimplementedOp": (13, 0),
}
_MEMORY_FAULTS = frozenset({"ReadUnmapped", "WriteUnmapped", "ExecViolation", "ReadPerm", "WritePerm",
                            "SelfModifyingCode", "ReadUnaligned", "WriteUnaligned", "AddressOverflow"})


_UNIMPLEMENTED_OP = ExceptionCode.UnimplementedOp


def _code_name(code: ExceptionCode) -> str:
    return str(code).rpartition(".")[2]
_PREFIX_BYTES = frozenset({0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0xF0})


@dataclass(frozen=True)
class _Decoded:
    """An environment instruction recognised at pc: its kind, length and rdrand/rdseed destination."""
    kind: str
    length: int
    register: int = 0
    width: int = 0


def _decode_environment(code: bytes) -> _Decoded | None:
    """Recognise the instructions this module emulates (legacy prefixes and REX allowed)."""
    index = 0
    operand16 = False
    while index < len(code) and code[index] in _PREFIX_BYTES:
        operand16 |= code[index] == 0x66
        index += 1
    rex = 0
    if index < len(code) and 0x40 <= code[index] <= 0x4F:
        rex = code[index]
        index += 1
    rest = code[index:]
    if rest[:1] == b"\xf4":
        return _Decoded("hlt", index + 1)
    if rest[:2] == b"\x0f\xa2":
        return _Decoded("cpuid", index + 2)
    if rest[:2] == b"\x0f\x31":
        return _Decoded("rdtsc", index + 2)
    if rest[:3] == b"\x0f\x01\xf9":
        return _Decoded("rdtscp", index + 3)
    if rest[:2] == b"\x0f\xc7" and len(rest) >= 3:
        modrm = rest[2]
        mod, reg = modrm >> 6, (modrm >> 3) & 7
        if mod == 3 and reg in (6, 7):
            width = 64 if rex & 0x8 else (16 if operand16 else 32)
            return _Decoded("rdrand" if reg == 6 else "rdseed", index + 3,
                            register=(modrm & 7) | ((rex & 1) << 3), width=width)
    return None


_GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@dataclass(frozen=True)
class ControlMove:
    """A `mov` to or from a control register (0f 20 / 0f 22): which CR, which GPR, its length."""
    control: int
    register: str
    to_register: bool
    length: int


def _decode_control_move(code: bytes) -> ControlMove | None:
    """`mov %crN, %reg` / `mov %reg, %crN` (REX.R extends N, REX.B the register; mod is ignored, as
    the CPU does), else None."""
    index = 0
    while index < len(code) and code[index] in _PREFIX_BYTES:
        index += 1
    rex = code[index] if index < len(code) and 0x40 <= code[index] <= 0x4F else 0
    index += 1 if rex else 0
    if len(code) < index + 3 or code[index] != 0x0F or code[index + 1] not in (0x20, 0x22):
        return None
    modrm = code[index + 2]
    return ControlMove(((modrm >> 3) & 7) | ((rex & 4) << 1), _GPR_NAMES[(modrm & 7) | ((rex & 1) << 3)],
                       code[index + 1] == 0x20, index + 3)


class AliasError(Exception):
    """A mapping the engine cannot realise: one machine frame at two virtual addresses where one of
    them is writable (the engine has no MMU: each mapping is a copy of the frame)."""

    def __init__(self, frame: int, mapped_at: int, wanted_at: int):
        super().__init__(f"machine frame {frame:#x} is mapped at {mapped_at:#x} and would also be mapped at "
                         f"{wanted_at:#x}, one of them writable: aliasing of a writable frame is not supported")
        self.frame = frame
        self.mapped_at = mapped_at
        self.wanted_at = wanted_at


class Mapping(NamedTuple):
    """One guest-virtual page as the guest's page tables define it."""
    frame: int
    writable: bool
    executable: bool = True


def _frame_pieces(address: int, length: int) -> list[tuple[int, int, int]]:
    """(frame, offset, size) pieces of the machine range [address, address+length)."""
    pieces = []
    while length > 0:
        offset = address & ~PAGE_MASK
        size = min(length, PAGE_SIZE - offset)
        pieces.append((address >> PAGE_SHIFT, offset, size))
        address += size
        length -= size
    return pieces


class MachineMemory:
    """The hypervisor's own view of machine memory (Xen's direct map): machine addresses, no guest
    page tables and no guest permissions involved. Used for the pages Xen itself owns or writes by
    frame number: shared_info, the console and xenstore rings, page tables, the machine-to-phys table."""

    def __init__(self, vcpu: "VCpu"):
        self._vcpu = vcpu

    def read(self, address: int, length: int) -> bytes:
        """Bytes at machine address `address`; GuestMemoryError past the last frame."""
        parts = []
        for frame, offset, size in _frame_pieces(address, length):
            parts.append(self._vcpu.read_frame_bytes(frame, offset, size))
        return b"".join(parts)

    def write(self, address: int, data: bytes) -> None:
        done = 0
        for frame, offset, size in _frame_pieces(address, len(data)):
            self._vcpu.write_frame_bytes(frame, offset, data[done:done + size])
            done += size

    def read_u64(self, address: int) -> int:
        return int.from_bytes(self.read(address, 8), "little")

    def write_u64(self, address: int, value: int) -> None:
        self.write(address, (value & (2**64 - 1)).to_bytes(8, "little"))


class VCpu:
    """One vCPU with its machine memory: run to an exact instruction count, exits, traps, snapshots.

    Memory is `frame_count` machine frames (all zero at first), realised in the engine (which has no
    MMU) page by page: `map_page(va, frame)` puts the frame's contents at virtual address va, and the
    engine runs on those flat addresses. A frame mapped nowhere keeps its contents here, in Python.
    Invariant: each frame's contents exist exactly once - at its mappings (several only when all of
    them are read-only, kept identical by writing every copy) or in the store - so a frame read is
    always its current contents, whoever wrote it. Translated code the engine keeps for a virtual
    page whose frame changed is discarded (the whole translation cache is rebuilt) before the vCPU
    runs again; pages become executable in the engine only when first executed, which is how the
    wrapper knows which pages may hold translated code.
    """

    def __init__(self, frame_count: int, jit: bool = True):
        if frame_count <= 0:
            raise ValueError("a vCPU needs at least one machine frame")
        self._vm = new_engine(jit=jit)
        self.frame_count = frame_count
        self._ensure_capacity()
        self._store: dict[int, bytes] = {}                 # frame -> contents, for frames mapped nowhere
        self._mappings: dict[int, Mapping] = {}            # virtual page -> what the guest maps there
        self._frame_pages: dict[int, list[int]] = {}       # frame -> virtual pages mapping it
        self._code_pages: set[int] = set()                 # virtual pages executable in the engine
        self._stale_code = False                           # a code page changed: flush before running
        self._mapping_hash = 0                             # XOR of a hash per mapping (for digests)
        # Mapping changes so far (never restored): a change undone later leaves the hash as it was, this not.
        self.mapping_changes = 0
        self._hypervisor_ranges: list[tuple[int, int]] = []  # virtual ranges guests may not pass to Xen
        self.machine = MachineMemory(self)
        self._breakpoints: set[int] = set()
        self._lifted_breakpoint: int | None = None         # lifted while the instruction there executes
        self._exec_retry: tuple[int, int] | None = None    # the last fetch fault retried after a discard
        # Addresses no translated block can cover unchecked: each has been a breakpoint through every
        # execution since its translations were last evicted (None: nothing has executed yet).
        self._translations_checked: set[int] | None = None
        self._watches: list[tuple[int, int, str]] = []   # (address, length, "w" | "r" | "a")
        self._access_widths: dict[int, int] = {}          # pc -> bytes its instruction accesses
        self._watch_traps_lifted = False                   # while a trapped access is re-executed
        # Page protection is computed per page from four facts (see _protection): the guest's mapping
        # (writable or not), read-only frames (code), watched (write or read traps), and clean under
        # dirty tracking (write traps); pages are executable once executed.
        self._read_only_frames: set[int] = set()
        self._watched_pages: dict[int, str] = {}     # virtual page -> "w" (writes trap) or "r" (all accesses trap)
        self._tracking_dirty = False
        self._unwritten_frames_zero = False           # tracking began on all-zero memory (track_dirty_pages)
        self._clean_frames: set[int] = set()
        self._generation = 0                          # dirty tracking: writes are noted per generation
        self._last_written: dict[int, int] = {}       # frame -> generation of its latest noted write
        self._pending_random: tuple[_Decoded, int] | None = None
        self._reset_registers()

    @classmethod
    def flat(cls, memory_size: int, memory_base: int = 0, unmapped_pages: tuple[int, ...] = (),
             jit: bool = True) -> "VCpu":
        """A vCPU whose frame N is mapped writable at memory_base + N * PAGE_SIZE (for engine tests and
        benchmarks that run code without a domain); page numbers in `unmapped_pages` are left out."""
        if memory_size <= 0 or memory_size % PAGE_SIZE or memory_base % PAGE_SIZE:
            raise ValueError("guest memory size and base must be positive multiples of 4 KiB")
        vcpu = cls(memory_size // PAGE_SIZE, jit=jit)
        holes = set(unmapped_pages)
        for frame in range(vcpu.frame_count):
            if frame not in holes:
                vcpu.map_page(memory_base + frame * PAGE_SIZE, frame, writable=True)
        return vcpu

    @property
    def memory_size(self) -> int:
        """Bytes of machine memory."""
        return self.frame_count * PAGE_SIZE

    def _ensure_capacity(self) -> None:
        pages_needed = self.frame_count + len(getattr(self, "_mappings", ())) + 1024
        if self._vm.mem_capacity < pages_needed:
            self._vm.mem_capacity = pages_needed

    # ---------------------------------------------------------------- mappings (the engine's MMU)
    def map_page(self, page: int, frame: int, writable: bool, executable: bool = True) -> None:
        """Make virtual page `page` show machine frame `frame` (replacing what was there). AliasError
        when the frame is already mapped elsewhere and either mapping is writable: then nothing changed."""
        if not 0 <= frame < self.frame_count:
            raise ValueError(f"machine frame {frame:#x} does not exist")
        wanted = Mapping(frame, writable, executable)
        old = self._mappings.get(page)
        if old == wanted:
            return
        others = [other for other in self._frame_pages.get(frame, ()) if other != page]
        if others and (writable or any(self._mappings[other].writable for other in others)):
            raise AliasError(frame, others[0], page)
        if old is not None:
            self.unmap_page(page)
        if others:
            contents = bytes(self._vm.mem_read(others[0], PAGE_SIZE))
        else:
            contents = self._store.pop(frame, None)
        self._ensure_capacity()
        self._vm.mem_map(page, PAGE_SIZE, _PROTECTION_FULL)
        # Always written, zeros too: the engine may back fresh pages by one shared zero page, and a
        # host write into such a page has been seen to show through at another (engine quirk).
        self._vm.mem_write(page, contents if contents is not None else _ZERO_PAGE)
        self._mappings[page] = wanted
        self._frame_pages.setdefault(frame, []).append(page)
        self._mapping_hash ^= _mapping_hash(page, wanted)
        self.mapping_changes += 1
        if page - PAGE_SIZE in self._code_pages:
            self._stale_code = True     # a block there may have been cut short by a failed fetch of this page
        self._protect(page)

    def unmap_page(self, page: int) -> None:
        """Remove the guest mapping of virtual page `page` (nothing if there is none)."""
        mapping = self._mappings.pop(page, None)
        if mapping is None:
            return
        pages = self._frame_pages[mapping.frame]
        pages.remove(page)
        if not pages:
            del self._frame_pages[mapping.frame]
            self._store[mapping.frame] = bytes(self._vm.mem_read(page, PAGE_SIZE))
        self._vm.mem_unmap(page, PAGE_SIZE)
        self._mapping_hash ^= _mapping_hash(page, mapping)
        self.mapping_changes += 1
        if page in self._code_pages:
            self._code_pages.discard(page)
            self._stale_code = True

    def mapping(self, page: int) -> Mapping | None:
        return self._mappings.get(page)

    def pages_mapping(self, frame: int) -> tuple[int, ...]:
        """The virtual pages at which machine frame `frame` is mapped (none when it is not)."""
        return tuple(self._frame_pages.get(frame, ()))

    def mappings(self) -> dict[int, Mapping]:
        """Every mapped virtual page (a copy)."""
        return dict(self._mappings)

    def mapping_digest(self) -> bytes:
        """A hash of the whole guest-virtual map (which frame where, with which rights)."""
        return self._mapping_hash.to_bytes(16, "little")

    def reserve_for_hypervisor(self, start: int, end: int) -> None:
        """Virtual range [start, end) is Xen's: hypercalls refuse guest pointers into it (-EFAULT)
        even where the guest can read it (the machine-to-phys table)."""
        self._hypervisor_ranges.append((start, end))

    def _flush_translations(self) -> None:
        """Discard all translated code: the engine can only do it by a reset, so memory and registers
        are put back around it. Guest-visible state is unchanged."""
        cpu = self.save_cpu()
        # Reading a page back costs ~8 us (the engine copies it out); most mapped frames of a new domain
        # were never written, and those are known to be zeros.
        known_zero = self._unwritten_frames_zero
        contents = {page: _ZERO_PAGE if known_zero and mapping.frame not in self._last_written
                    else bytes(self._vm.mem_read(page, PAGE_SIZE)) for page, mapping in self._mappings.items()}
        self._vm.reset()
        self._ensure_capacity()
        for page, data in contents.items():
            self._vm.mem_map(page, PAGE_SIZE, _PROTECTION_FULL)
            self._vm.mem_write(page, data)
        self._code_pages.clear()
        self._stale_code = False
        self._translations_checked = None             # no translation is left to be stale
        self._access_widths.clear()                   # the code at an address may have changed
        for page in self._mappings:
            self._protect(page)
        for address in self._breakpoints - {self._lifted_breakpoint}:
            self._vm.add_breakpoint(address)
        self.load_cpu(cpu)

    # ---------------------------------------------------------------- memory
    def is_mapped(self, address: int, length: int = 1) -> bool:
        """True when every byte of [address, address+length) is mapped in the guest's address space."""
        if length <= 0:
            return length == 0
        return all(page in self._mappings for page in range(address & PAGE_MASK, address + length, PAGE_SIZE))

    def _guest_range_ok(self, address: int, length: int) -> bool:
        if not self.is_mapped(address, length):
            return False
        return not any(address < end and start < address + length for start, end in self._hypervisor_ranges)

    def read(self, address: int, length: int) -> bytes:
        """Guest-virtual memory, as copy_from_guest reads it; GuestMemoryError when any byte is not mapped."""
        if not self._guest_range_ok(address, length):
            raise GuestMemoryError(address, length)
        return bytes(self._vm.mem_read(address, length)) if length else b""

    def write(self, address: int, data: bytes) -> None:
        """Write through the guest's mappings with the hypervisor's rights (the debugger, the tests): any
        mapped page, read-only ones included; watch protection ignored; never counts as a guest access.
        Every copy of an aliased frame is written. Writes on the guest's behalf use write_for_guest."""
        if not self.is_mapped(address, len(data)):
            raise GuestMemoryError(address, len(data))
        offset = 0
        while offset < len(data):
            page = (address + offset) & PAGE_MASK
            chunk = min(len(data) - offset, page + PAGE_SIZE - (address + offset))
            self.write_frame_bytes(self._mappings[page].frame, (address + offset) - page, data[offset:offset + chunk])
            offset += chunk

    def read_frame(self, frame: int) -> bytes:
        """The contents of machine frame `frame`."""
        pages = self._frame_pages.get(frame)
        if pages:
            return bytes(self._vm.mem_read(pages[0], PAGE_SIZE))
        return self._store.get(frame, _ZERO_PAGE)

    def read_frame_bytes(self, frame: int, offset: int, length: int) -> bytes:
        if not 0 <= frame < self.frame_count or offset + length > PAGE_SIZE:
            raise GuestMemoryError(frame * PAGE_SIZE + offset, length)
        pages = self._frame_pages.get(frame)
        if pages:
            return bytes(self._vm.mem_read(pages[0] + offset, length))
        return self._store.get(frame, _ZERO_PAGE)[offset:offset + length]

    def write_frame_bytes(self, frame: int, offset: int, data: bytes) -> None:
        """Write into machine frame `frame` at `offset` (within the frame), wherever it lives."""
        if not 0 <= frame < self.frame_count or offset + len(data) > PAGE_SIZE:
            raise GuestMemoryError(frame * PAGE_SIZE + offset, len(data))
        if not data:
            return
        if self._tracking_dirty:
            self._mark_dirty(frame)
        pages = self._frame_pages.get(frame)
        if not pages:
            old = self._store.get(frame, _ZERO_PAGE)
            self._store[frame] = old[:offset] + bytes(data) + old[offset + len(data):]
            return
        for page in pages:
            if page in self._code_pages and bytes(self._vm.mem_read(page + offset, len(data))) != data:
                self._flush_translations()      # the engine refuses (or would ignore) a write over translated code
            try:
                self._vm.mem_write(page + offset, bytes(data))
            except icicle.MemoryException as error:
                raise EngineError(f"write of {len(data)} bytes at {page + offset:#x} refused by the engine: "
                                  f"{error}") from error

    def write_for_guest(self, address: int, data: bytes) -> None:
        """Write guest memory on the guest's behalf (a hypercall's output, a bounce frame) with the
        guest's own permissions, as Xen's copy_to_guest does: GuestMemoryError unless every byte is
        writable by the guest (its page tables allow it and the frame is not code; outside Xen's range).
        The same check in every
        mode: dirty tracking and watch traps, which also write-protect pages, do not change what the
        guest may write."""
        if not self._guest_range_ok(address, len(data)) or not all(
                self._guest_may_write(page) for page in range(address & PAGE_MASK, address + len(data), PAGE_SIZE)):
            raise GuestMemoryError(address, len(data), "is not writable by the guest")
        self.write(address, data)

    def write_frame(self, frame: int, contents: bytes) -> None:
        """Replace the whole contents of a machine frame."""
        self.write_frame_bytes(frame, 0, contents)

    def set_read_only(self, frames: tuple[int, ...]) -> None:
        """These frames hold code: guest stores to them fault whatever the guest's mappings say
        (the engine cannot run self-modifying code)."""
        for frame in frames:
            self._read_only_frames.add(frame)
            for page in self._frame_pages.get(frame, ()):
                self._protect(page)

    def _guest_may_write(self, page: int) -> bool:
        mapping = self._mappings.get(page)
        return mapping is not None and mapping.writable and mapping.frame not in self._read_only_frames

    def _protection(self, page: int, lifted: bool = False) -> MemoryProtection:
        """A page's protection; `lifted` leaves out watch and dirty-tracking traps (read-only stays)."""
        code = page in self._code_pages
        if not lifted:
            if self._watched_pages.get(page) == "r":
                return _PROTECTION_ACCESS_TRAP if code else MemoryProtection.NoAccess
            if page in self._watched_pages or self._mappings[page].frame in self._clean_frames:
                return _PROTECTION_WRITE_TRAP if code else MemoryProtection.ReadOnly
        if self._guest_may_write(page):
            return _PROTECTION_FULL if code else MemoryProtection.ReadWrite
        return _PROTECTION_WRITE_TRAP if code else MemoryProtection.ReadOnly

    def _protect(self, page: int, lifted: bool = False) -> None:
        if page in self._mappings:
            self._vm.mem_protect(page, PAGE_SIZE, self._protection(page, lifted))

    # ---------------------------------------------------------------- dirty page tracking
    def track_dirty_pages(self, memory_is_zero: bool = False) -> int:
        """From now on, note every frame written (by the guest or the hypervisor). Returns the current
        generation; `pages_written_since(generation)` then tells what was written. Several users
        (the timeline, the state digests) can each keep their own generation. `memory_is_zero`: nothing
        was written yet, so a frame never noted as written holds zeros (a discard of translations then
        need not read it back)."""
        if not self._tracking_dirty:
            self._tracking_dirty = True
            self._unwritten_frames_zero = memory_is_zero
            self._clean_frames = set(range(self.frame_count))
            for page in self._mappings:
                self._protect(page)
        return self.new_generation()

    def new_generation(self) -> int:
        """Start a new generation: frames written before it are write-trapped again, so the next write to
        each is noted in the new one. Returns the new generation's number."""
        for frame, generation in self._last_written.items():
            if generation == self._generation and frame not in self._clean_frames:
                self._clean_frames.add(frame)
                for page in self._frame_pages.get(frame, ()):
                    self._protect(page)
        self._generation += 1
        return self._generation

    def pages_written_since(self, generation: int) -> set[int]:
        """Machine frame numbers written in `generation` or later."""
        return {frame for frame, written in self._last_written.items() if written >= generation}

    def _mark_dirty(self, frame: int) -> None:
        if frame in self._clean_frames:
            self._clean_frames.discard(frame)
            self._last_written[frame] = self._generation
            for page in self._frame_pages.get(frame, ()):
                self._protect(page)

    def read_u64(self, address: int) -> int:
        return int.from_bytes(self.read(address, 8), "little")

    def write_u64(self, address: int, value: int) -> None:
        self.write(address, (value & (2**64 - 1)).to_bytes(8, "little"))

    def memory_image(self) -> bytes:
        """All of machine memory as one bytes object, frame after frame."""
        return b"".join(self.read_frame(frame) for frame in range(self.frame_count))

    def changed_pages(self, reference: bytes) -> dict[int, bytes]:
        """Frames (frame number -> contents) whose current contents differ from `reference`, a memory_image()."""
        changed = {}
        for frame in range(self.frame_count):
            contents = self.read_frame(frame)
            if contents != reference[frame * PAGE_SIZE:(frame + 1) * PAGE_SIZE]:
                changed[frame] = contents
        return changed

    def write_pages(self, pages: dict[int, bytes]) -> None:
        """Write whole frames back (frame number -> contents), only where they differ."""
        for frame, contents in pages.items():
            if self.read_frame(frame) != contents:
                self.write_frame(frame, contents)

    # ---------------------------------------------------------------- registers
    def _reset_registers(self) -> None:
        write = self._vm.reg_write
        write("MXCSR", MXCSR_RESET)
        write("FPUControlWord", FCW_RESET)
        write("FPUTagWord", 0xFFFF)

    def reg(self, name: str) -> int:
        """A register by name: GPRs (rax..r15), rip, rflags, fs_base, gs_base, mxcsr, xmmN (128-bit)."""
        name = name.lower()
        if name == "rip":
            return self._vm.pc
        if name in ("rflags", "eflags"):
            return self.rflags()
        if name in ("fs_base", "gs_base"):
            return self._vm.reg_read(name[:2].upper() + "_OFFSET")
        if name.startswith("xmm"):
            return self._vm.reg_read(f"{name.upper()}_Qa") | (self._vm.reg_read(f"{name.upper()}_Qb") << 64)
        return self._vm.reg_read(name)

    def set_reg(self, name: str, value: int) -> None:
        name = name.lower()
        if name == "rip":
            self._vm.pc = value
        elif name in ("rflags", "eflags"):
            self.set_rflags(value)
        elif name in ("fs_base", "gs_base"):
            self._vm.reg_write(name[:2].upper() + "_OFFSET", value)
        elif name.startswith("xmm"):
            self._vm.reg_write(f"{name.upper()}_Qa", value & (2**64 - 1))
            self._vm.reg_write(f"{name.upper()}_Qb", value >> 64)
        else:
            self._vm.reg_write(name, value)

    def rflags(self) -> int:
        value = RFLAGS_RESERVED_ONE
        for flag, bit in _FLAG_BITS:
            value |= (self._vm.reg_read(flag) & 1) << bit
        return value

    def set_rflags(self, value: int) -> None:
        for flag, bit in _FLAG_BITS:
            self._vm.reg_write(flag, (value >> bit) & 1)

    @property
    def pc(self) -> int:
        return self._vm.pc

    @pc.setter
    def pc(self, value: int) -> None:
        self._vm.pc = value

    @property
    def icount(self) -> int:
        """Retired guest instructions."""
        return self._vm.icount

    def save_cpu(self) -> CpuState:
        read = self._vm.reg_read
        return CpuState(tuple(read(name) for name in _STATE_REGISTERS), self._vm.pc, self._vm.icount)

    def load_cpu(self, state: CpuState) -> None:
        write = self._vm.reg_write
        for name, value in zip(_STATE_REGISTERS, state.registers):
            write(name, value)
        self._vm.icount = state.icount
        self._pending_random = None
        self._vm.pc = state.pc

    def switch_registers(self, state: CpuState) -> CpuState:
        """An SMP context switch: put another vCPU's registers on this engine and return the ones it
        held. The instruction count stays: it counts the domain's instructions, every vCPU's together
        (xen/smp.py). Translated code is keyed by address over the one shared memory, so it stays valid."""
        if self._pending_random is not None:
            raise EngineError("rdrand/rdseed exit not answered: call finish_random() before switching vCPUs")
        outgoing = self.save_cpu()
        write = self._vm.reg_write
        for name, old, new in zip(_STATE_REGISTERS, outgoing.registers, state.registers):
            if old != new:           # most registers (x87, SSE, flags) often match: each write is an FFI call
                write(name, new)
        self._vm.pc = state.pc
        return outgoing

    # ---------------------------------------------------------------- breakpoints and watches
    def add_breakpoint(self, address: int) -> None:
        """Stop before the instruction at `address`, whatever ran before (its translations are evicted)."""
        if address not in self._breakpoints:
            self._breakpoints.add(address)
            self._vm.add_breakpoint(address)
            if self._translations_checked is not None and address not in self._translations_checked:
                self._evict_translations_covering(address)
                self._translations_checked.add(address)

    def _evict_translations_covering(self, address: int) -> None:
        """Evict from the JIT's fast lookup every block that may contain `address`.

        The engine looks a block up by its start, and its add_breakpoint(a) evicts the entry at `a`
        only: a block that started before `a`, was translated while `a` had no breakpoint and contains
        it would keep running past it. Adding and removing a breakpoint at each possible start evicts
        them all; the next lookup of each block sees the breakpoint and runs it on the interpreter."""
        vm = self._vm
        for start in range(max(address - _MAX_BLOCK_BYTES, 0), address):
            if start not in self._breakpoints:
                vm.add_breakpoint(start)
                vm.remove_breakpoint(start)

    def _note_execution(self, single_instruction: bool) -> None:
        """Before the engine executes: blocks it translates now may cover any address that is not a
        breakpoint, except that one instruction from pc translates at most the block starting at pc,
        which the engine's own add_breakpoint(pc) evicts."""
        kept = self._breakpoints | {self._vm.pc} if single_instruction else self._breakpoints
        checked = self._translations_checked
        self._translations_checked = set(kept) if checked is None else checked & kept

    def remove_breakpoint(self, address: int) -> None:
        if address in self._breakpoints:
            self._breakpoints.discard(address)
            self._vm.remove_breakpoint(address)

    @property
    def breakpoints(self) -> frozenset[int]:
        return frozenset(self._breakpoints)

    def add_watch(self, address: int, length: int, access: str = "w") -> None:
        """Trap guest accesses to [address, address+length): "w" writes, "r" reads, "a" both."""
        if access not in ("w", "r", "a") or length <= 0:
            raise ValueError("watch access must be 'w', 'r' or 'a' and length positive")
        if not self.is_mapped(address, length):
            raise GuestMemoryError(address, length)
        self._watches.append((address, length, access))
        self._apply_watch_protection()

    def remove_watch(self, address: int, length: int, access: str = "w") -> None:
        if (address, length, access) in self._watches:
            self._watches.remove((address, length, access))
            self._apply_watch_protection()

    def _apply_watch_protection(self) -> None:
        wanted: dict[int, str] = {}
        for address, length, access in self._watches:
            for page in range(address & PAGE_MASK, address + length, PAGE_SIZE):
                wanted[page] = "r" if access != "w" or wanted.get(page) == "r" else "w"
        changed = {page for page in set(wanted) | set(self._watched_pages)
                   if wanted.get(page) != self._watched_pages.get(page)}
        self._watched_pages = wanted
        for page in changed:
            self._protect(page)

    def _watch_hit(self, start: int, width: int, access: str) -> int | None:
        """The first watched byte that the access [start, start+width) touches, for a watch of its
        kind; None if it touches none."""
        touched = [max(start, begin) for begin, length, kind in self._watches
                   if begin < start + width and start < begin + length and kind in ("a", access)]
        return min(touched) if touched else None

    def _access_width(self, pc: int) -> int:
        """Bytes accessed by the instruction at pc: its widest memory operand (8 for the implicit stack
        accesses of push, pop, call and ret). Decoded once per pc until translations are discarded
        (a remap may change the code at pc)."""
        width = self._access_widths.get(pc)
        if width is None:
            length = next(n for n in range(16, -1, -1) if self.is_mapped(pc, n))
            disassembler, memory_operand = _disassembler()
            decoded = next(disassembler.disasm(bytes(self._vm.mem_read(pc, length)) if length else b"", pc), None)
            operands = decoded.operands if decoded is not None else ()
            width = max((op.size for op in operands if op.type == memory_operand), default=8)
            self._access_widths[pc] = width
        return width

    def _trapping_page(self, address: int, is_write: bool) -> int:
        """The page whose protection stopped an access starting at `address`: the access's first page,
        unless that one lets it through (then the access straddles into the next page)."""
        first = address & PAGE_MASK
        if first not in self._mappings:
            return first
        protection = self._protection(first, lifted=self._watch_traps_lifted and first in self._watched_pages)
        allowed = _WRITABLE if is_write else _READABLE
        return first + PAGE_SIZE if protection in allowed else first

    # ---------------------------------------------------------------- execution
    def run(self, until_icount: int) -> Exit:
        """Execute until `icount == until_icount` or an exit. A breakpoint at the starting pc does not
        stop this call (the instruction there executes first), as when a debugger resumes."""
        if self._pending_random is not None:
            raise EngineError("rdrand/rdseed exit not answered: call finish_random() first")
        if self._stale_code:
            self._flush_translations()
        vm = self._vm
        if vm.icount < until_icount:
            self._note_execution(single_instruction=until_icount == vm.icount + 1)
        if vm.icount < until_icount and vm.pc in self._breakpoints:
            result = self._execute_one_unbroken()
            if result is not None:
                return result
        while vm.icount < until_icount:
            vm.icount_limit = until_icount
            status = vm.run()
            if status == RunStatus.InstructionLimit:
                continue
            if status == RunStatus.Breakpoint:
                return Exit(ExitReason.BREAKPOINT, vm.icount, vm.pc)
            if self._plain_rdtsc():
                continue
            result = self._handle_exception()
            if result is not None:
                return result
        return Exit(ExitReason.LIMIT, vm.icount, vm.pc)

    def step(self) -> Exit:
        """Execute exactly one instruction (or stop at the exit it causes). Breakpoints do not stop it."""
        if self._pending_random is not None:
            raise EngineError("rdrand/rdseed exit not answered: call finish_random() first")
        self._note_execution(single_instruction=True)
        if self._stale_code:
            self._flush_translations()
        result = self._execute_one_unbroken()
        return result if result is not None else Exit(ExitReason.LIMIT, self._vm.icount, self._vm.pc)

    def _execute_one_unbroken(self) -> Exit | None:
        """Run the instruction at pc with any breakpoint there lifted. None when it simply retired."""
        vm = self._vm
        pc = vm.pc
        lifted = pc in self._breakpoints
        if lifted:
            vm.remove_breakpoint(pc)
            self._lifted_breakpoint = pc
        start = vm.icount
        try:
            while True:       # again after a write to a clean page was noted (the instruction did not retire)
                vm.icount_limit = start + 1
                status = vm.run()
                if status in (RunStatus.InstructionLimit, RunStatus.Breakpoint) and vm.icount == start + 1:
                    return None
                if status == RunStatus.Breakpoint:
                    return Exit(ExitReason.BREAKPOINT, vm.icount, vm.pc)
                result = self._handle_exception()
                if result is not None or vm.icount == start + 1:
                    return result
        finally:
            if lifted:
                self._lifted_breakpoint = None
                self._vm.add_breakpoint(pc)

    def finish_random(self, value: int) -> None:
        """Complete a RANDOM exit: write `value` to the destination register, CF=1, pc past the insn."""
        if self._pending_random is None:
            raise EngineError("no rdrand/rdseed exit is waiting for a value")
        decoded, next_pc = self._pending_random
        self._pending_random = None
        self._write_gpr(decoded.register, value & ((1 << decoded.width) - 1), decoded.width)
        for flag in ("OF", "SF", "ZF", "AF", "PF"):
            self._vm.reg_write(flag, 0)
        self._vm.reg_write("CF", 1)
        self._vm.pc = next_pc

    def _write_gpr(self, number: int, value: int, width: int) -> None:
        name = _X86_REGISTER_ORDER[number]
        if width == 16:
            old = self._vm.reg_read(name)
            value = (old & ~0xFFFF) | value
        self._vm.reg_write(name, value)   # 32-bit writes zero-extend, as hardware does

    def _plain_rdtsc(self) -> bool:
        """The hot path of a polling guest (GRUB reads the TSC every ~130 instructions): an unprefixed
        RDTSC exit is answered here with the fewest engine calls. False for any other exit."""
        vm = self._vm
        pc = vm.pc
        if vm.exception_code != _UNIMPLEMENTED_OP or vm.mem_read(pc, 2) != b"\x0f\x31":
            return False
        tsc = vm.icount * TSC_PER_INSTRUCTION
        vm.reg_write("rax", tsc & 0xFFFFFFFF)
        vm.reg_write("rdx", (tsc >> 32) & 0xFFFFFFFF)
        vm.pc = pc + 2
        return True

    def _handle_exception(self) -> Exit | None:
        """Turn an engine exception into an exit, or emulate and return None to keep running."""
        vm = self._vm
        code = vm.exception_code
        pc = vm.pc
        if code == ExceptionCode.Syscall:
            head = bytes(vm.mem_read(pc, 2))
            if head == b"\x0f\x05":
                vm.pc = pc + 2
                return Exit(ExitReason.HYPERCALL, vm.icount, vm.pc)
            vector = vm.exception_value
            length = 1 if head[:1] == b"\xcc" else 2
            return self._fault(f"software interrupt int {vector:#x}", None, counted=True,
                               vector=(vector, None), length=length)
        if code == ExceptionCode.ExecViolation and self._make_executable(vm.exception_value):
            return None       # first execution on the page: nothing retired, it runs again
        if code in (ExceptionCode.WritePerm, ExceptionCode.ReadPerm):
            is_write = code == ExceptionCode.WritePerm
            page = self._trapping_page(vm.exception_value, is_write)
            if not is_write or self._guest_may_write(page):
                frame = self._mappings[page].frame
                if is_write and frame in self._clean_frames:
                    self._mark_dirty(frame)
                    if page not in self._watched_pages:
                        vm.icount = vm.icount - 1     # not retired: it runs again on the now writable page
                        return None
                if page in self._watched_pages:
                    return self._trapped_access(vm.exception_value, "w" if is_write else "r")
        if code == ExceptionCode.UnimplementedOp:
            decoded = _decode_environment(bytes(vm.mem_read(pc, 16)) if self.is_mapped(pc, 16)
                                          else bytes(vm.mem_read(pc, 1)))
            if decoded is not None:
                return self._emulate(decoded)
        name = _code_name(code)
        address = vm.exception_value if name in _MEMORY_FAULTS else None
        if name == "InvalidInstruction" and self._undecodable_at_pc():
            name, address = "Undecodable", None
        return self._fault(_FAULT_TEXT.get(name, f"engine exception {name}"), address,
                           counted=name not in _UNCOUNTED_FAULTS, vector=_FAULT_EXCEPTIONS.get(name))

    def _make_executable(self, address: int) -> bool:
        """An instruction at `address` was fetched from a page not yet executable in the engine: make
        its page (or the next one, for an instruction that crosses into it) executable if the guest's
        mapping allows. False when the fetch is a real fault."""
        page = address & PAGE_MASK
        if page not in self._code_pages:
            if not self._may_execute(page):
                return False
            self._code_pages.add(page)
            self._protect(page)
            following = page + PAGE_SIZE        # eagerly: blocks run on across the page boundary
            if following not in self._code_pages and self._may_execute(following):
                self._code_pages.add(following)
                self._protect(following)
            return True
        following = page + PAGE_SIZE
        if following in self._code_pages or not self._may_execute(following):
            # Both pages executable for us, yet the engine refused the fetch: a translation made
            # before they were is still cached. Discard them all, once per faulting instruction.
            retry = (self._vm.icount, address)
            if not self._may_execute(page) or retry == self._exec_retry:
                return False
            self._exec_retry = retry
            self._flush_translations()
            return True
        # An instruction crossing into a page that was not executable when its block was translated:
        # that translation ends in the failed fetch and is cached, so it must go.
        self._code_pages.add(following)
        self._flush_translations()
        return True

    def _may_execute(self, page: int) -> bool:
        mapping = self._mappings.get(page)
        return mapping is not None and mapping.executable

    def _undecodable_at_pc(self) -> bool:
        """An InvalidInstruction is a decode failure (nothing counted, the value is pc) unless the
        bytes are one of the defined undefined-opcode instructions ud0/ud1/ud2 (counted, value 0)."""
        vm = self._vm
        pc = vm.pc
        if vm.exception_value != pc:
            return False
        code = bytes(vm.mem_read(pc, 3)) if self.is_mapped(pc, 3) else b""
        index = 0
        while index < len(code) and (code[index] in _PREFIX_BYTES or 0x40 <= code[index] <= 0x4F):
            index += 1
        return code[index:index + 2] not in _UD_OPCODES

    def _fault(self, text: str, address: int | None, counted: bool,
               vector: tuple[int, int | None] | None = None, length: int = 0) -> Exit:
        """A guest fault: pc on the instruction that did not retire. `counted`: the engine counted it
        (see _UNCOUNTED_FAULTS for the kinds it does not), so the count is taken back."""
        vm = self._vm
        if counted:
            vm.icount = vm.icount - 1
        if address is not None:
            text = f"{text} {address:#x}"
        number, error_code = vector if vector is not None else (None, None)
        return Exit(ExitReason.FAULT, vm.icount, vm.pc, address=address, detail=text, vector=number,
                    error_code=error_code, length=length)

    def control_move_at_pc(self) -> ControlMove | None:
        """The control-register move at pc, if that is what raised a #GP (a privileged instruction)."""
        pc = self._vm.pc
        return _decode_control_move(bytes(self._vm.mem_read(pc, 16)) if self.is_mapped(pc, 16)
                                    else bytes(self._vm.mem_read(pc, 1)) if self.is_mapped(pc, 1) else b"")

    def retire_emulated(self, length: int) -> None:
        """Retire the instruction at pc as executed by the hypervisor: pc moves past its `length` bytes
        and it counts as one instruction (a trapping `int n` entering the guest's handler, an emulated
        privileged instruction)."""
        self._vm.icount = self._vm.icount + 1
        self._vm.pc = self._vm.pc + length

    def _emulate(self, decoded: _Decoded) -> Exit | None:
        vm = self._vm
        next_pc = vm.pc + decoded.length
        if decoded.kind == "cpuid":
            values = cpuid(vm.reg_read("rax") & 0xFFFFFFFF, vm.reg_read("rcx") & 0xFFFFFFFF)
            for name, value in zip(("rax", "rbx", "rcx", "rdx"), values):
                vm.reg_write(name, value)
        elif decoded.kind in ("rdtsc", "rdtscp"):
            tsc = vm.icount * TSC_PER_INSTRUCTION
            vm.reg_write("rax", tsc & 0xFFFFFFFF)
            vm.reg_write("rdx", (tsc >> 32) & 0xFFFFFFFF)
            if decoded.kind == "rdtscp":
                vm.reg_write("rcx", 0)   # TSC_AUX: the vCPU number
        elif decoded.kind == "hlt":
            vm.pc = next_pc
            return Exit(ExitReason.IDLE, vm.icount, vm.pc)
        else:
            self._pending_random = (decoded, next_pc)
            return Exit(ExitReason.RANDOM, vm.icount, vm.pc, detail=decoded.kind)
        vm.pc = next_pc
        return None

    def _trapped_access(self, address: int, access: str) -> Exit | None:
        """Re-execute a trapped access once on unprotected pages; report it if it hits a watch (with
        the first watched byte it touched as its address)."""
        vm = self._vm
        vm.icount = vm.icount - 1
        width = self._access_width(vm.pc)
        watched = [page for page in self._watched_pages if page in self._mappings]
        for page in watched:
            if self._tracking_dirty and self._guest_may_write(page):
                self._mark_dirty(self._mappings[page].frame)   # it may be written while its traps are lifted
            self._protect(page, lifted=True)
        self._watch_traps_lifted = True
        try:
            result = self._execute_one_unbroken()
        finally:
            self._watch_traps_lifted = False
            for page in watched:
                self._protect(page)
        if result is not None:
            return result
        hit = self._watch_hit(address, width, access)
        if hit is not None:
            return Exit(ExitReason.WATCHPOINT, vm.icount, vm.pc, address=hit, access=access)
        return None


def _main(argv: list[str]) -> int:
    if argv == ["prepare-spec"]:
        try:
            path = prepare_spec()
        except EngineError as error:
            print(f"xen.vcpu: {error}", file=sys.stderr)
            return 1
        print(f"engine spec ready: {path} ({len(_patch_files())} patches)")
        return 0
    print("usage: python -m xen.vcpu prepare-spec", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
