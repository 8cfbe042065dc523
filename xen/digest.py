"""State digests: what record writes into the log so replay can prove it reproduces the run.

Owns the digest payload: the general registers, rip and rflags in the clear (so a divergence can
say which register differs and how), a hash of the complete 87-register state, and optionally a
hash of all guest memory (reading all of memory costs tens of ms, so record takes a full digest
rarely and a register digest often). Invariant: a digest is a pure function of vCPU state; two
equal states give byte-identical digests.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from xen.vcpu import GPR_NAMES, VCpu

_REGISTERS = GPR_NAMES + ("rip", "rflags")
_CLEAR = struct.Struct(f"<B{len(_REGISTERS)}Q8s")
_MEMORY_HASH_BYTES = 16


@dataclass(frozen=True)
class Digest:
    registers: tuple[int, ...]
    state_hash: bytes
    memory_hash: bytes | None

    def to_bytes(self) -> bytes:
        flags = 1 if self.memory_hash is not None else 0
        return _CLEAR.pack(flags, *self.registers, self.state_hash) + (self.memory_hash or b"")

    @classmethod
    def from_bytes(cls, data: bytes) -> "Digest":
        if len(data) < _CLEAR.size:
            raise ValueError(f"state digest of {len(data)} bytes is truncated")
        flags, *values = _CLEAR.unpack_from(data)
        memory = bytes(data[_CLEAR.size:_CLEAR.size + _MEMORY_HASH_BYTES]) if flags & 1 else None
        if flags & 1 and len(memory) != _MEMORY_HASH_BYTES:
            raise ValueError("state digest memory hash is truncated")
        return cls(tuple(values[:-1]), values[-1], memory)

    def differences(self, actual: "Digest") -> list[str]:
        """What differs between this (recorded) digest and `actual` (replayed), one phrase each."""
        found = [f"{name} recorded {want:#x} replayed {got:#x}"
                 for name, want, got in zip(_REGISTERS, self.registers, actual.registers) if want != got]
        if not found and self.state_hash != actual.state_hash:
            found.append("other register state (flags, segment bases, SSE/x87)")
        if self.memory_hash is not None and actual.memory_hash is not None \
                and self.memory_hash != actual.memory_hash:
            found.append("guest memory")
        return found


def take_digest(vcpu: VCpu, with_memory: bool) -> Digest:
    cpu = vcpu.save_cpu()
    state_hash = hashlib.blake2b(repr((cpu.registers, cpu.pc, cpu.icount)).encode(), digest_size=8).digest()
    memory_hash = (hashlib.blake2b(vcpu.memory_image(), digest_size=_MEMORY_HASH_BYTES).digest()
                   if with_memory else None)
    return Digest(tuple(vcpu.reg(name) for name in _REGISTERS), state_hash, memory_hash)


def end_payload(digest: Digest, outcome: str) -> bytes:
    """The END record's payload: the final digest, then how the recorded run ended (UTF-8)."""
    body = digest.to_bytes()
    return len(body).to_bytes(2, "little") + body + outcome.encode()


def parse_end_payload(payload: bytes) -> tuple[Digest, str]:
    size = int.from_bytes(payload[:2], "little")
    return Digest.from_bytes(payload[2:2 + size]), bytes(payload[2 + size:]).decode(errors="replace")
