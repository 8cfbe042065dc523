"""State digests: what record writes into the log so replay can prove it reproduces the run.

Owns the digest payload: the general registers, rip and rflags in the clear (so a divergence can
say which register differs and how), a hash of the complete 87-register state, and optionally a
hash of all guest memory: a hash of per-frame hashes, where only the frames written since the previous
memory digest are rehashed (the vCPU's dirty-page tracking), so a memory digest costs in proportion to
what the guest wrote, combined with the hash of the guest-virtual map (which frame is mapped where);
and a hash of the domain's device state outside guest memory (xenstore, grant table:
`Domain.device_state`). Invariant: a digest is a pure function of vCPU and device state; two equal
states give byte-identical digests.
"""
from __future__ import annotations

import hashlib
import struct
import weakref
from dataclasses import dataclass

from xen.vcpu import GPR_NAMES, PAGE_SIZE, VCpu

_REGISTERS = GPR_NAMES + ("rip", "rflags")
_CLEAR = struct.Struct(f"<B{len(_REGISTERS)}Q8s")
_MEMORY_HASH_BYTES = 16
_DEVICE_HASH_BYTES = 16
_HAS_MEMORY, _HAS_DEVICES = 1, 2


@dataclass(frozen=True)
class Digest:
    registers: tuple[int, ...]
    state_hash: bytes
    memory_hash: bytes | None
    device_hash: bytes | None = None

    def to_bytes(self) -> bytes:
        flags = (_HAS_MEMORY if self.memory_hash is not None else 0) | \
            (_HAS_DEVICES if self.device_hash is not None else 0)
        return _CLEAR.pack(flags, *self.registers, self.state_hash) + (self.memory_hash or b"") + \
            (self.device_hash or b"")

    @classmethod
    def from_bytes(cls, data: bytes) -> "Digest":
        """ValueError unless `data` is exactly a digest: the clear part, then the memory and device hashes if flagged."""
        if len(data) < _CLEAR.size:
            raise ValueError(f"state digest of {len(data)} bytes is truncated")
        flags, *values = _CLEAR.unpack_from(data)
        if flags & ~(_HAS_MEMORY | _HAS_DEVICES):
            raise ValueError(f"state digest has unknown flags {flags:#x}")
        expected = _CLEAR.size + (_MEMORY_HASH_BYTES if flags & _HAS_MEMORY else 0) + \
            (_DEVICE_HASH_BYTES if flags & _HAS_DEVICES else 0)
        if len(data) != expected:
            raise ValueError(f"state digest of {len(data)} bytes, expected {expected}")
        offset = _CLEAR.size
        memory = device = None
        if flags & _HAS_MEMORY:
            memory = bytes(data[offset:offset + _MEMORY_HASH_BYTES])
            offset += _MEMORY_HASH_BYTES
        if flags & _HAS_DEVICES:
            device = bytes(data[offset:offset + _DEVICE_HASH_BYTES])
        return cls(tuple(values[:-1]), values[-1], memory, device)

    def differences(self, actual: "Digest") -> list[str]:
        """What differs between this (recorded) digest and `actual` (replayed), one phrase each."""
        found = [f"{name} recorded {want:#x} replayed {got:#x}"
                 for name, want, got in zip(_REGISTERS, self.registers, actual.registers) if want != got]
        if not found and self.state_hash != actual.state_hash:
            found.append("other register state (flags, segment bases, SSE/x87)")
        if self.memory_hash is not None and actual.memory_hash is not None \
                and self.memory_hash != actual.memory_hash:
            found.append("guest memory")
        if self.device_hash is not None and actual.device_hash is not None \
                and self.device_hash != actual.device_hash:
            found.append("device state (xenstore, grant table)")
        return found


class _MemoryHasher:
    """The memory hash of one vCPU, kept up to date incrementally: a hash per page, rehashed only for
    pages written since the last digest (the vCPU's dirty tracking), combined into one hash."""

    def __init__(self, vcpu: VCpu, all_zero: bool):
        self._generation = vcpu.track_dirty_pages()
        if all_zero:
            self._pages = [_ZERO_PAGE_HASH] * vcpu.frame_count
        else:
            image = vcpu.memory_image()
            self._pages = [self._page_hash(image[offset:offset + PAGE_SIZE])
                           for offset in range(0, len(image), PAGE_SIZE)]

    @staticmethod
    def _page_hash(page: bytes) -> bytes:
        return hashlib.blake2b(page, digest_size=_MEMORY_HASH_BYTES).digest()

    def hash(self, vcpu: VCpu) -> bytes:
        written = vcpu.pages_written_since(self._generation)
        self._generation = vcpu.new_generation()
        for number in written:
            self._pages[number] = self._page_hash(vcpu.read_frame(number))
        return hashlib.blake2b(b"".join(self._pages) + vcpu.mapping_digest(), digest_size=_MEMORY_HASH_BYTES).digest()


_ZERO_PAGE_HASH = hashlib.blake2b(bytes(PAGE_SIZE), digest_size=_MEMORY_HASH_BYTES).digest()
# One hasher per vCPU, dropped with it (a hasher holds no reference to its vCPU).
_hashers: "weakref.WeakKeyDictionary[VCpu, _MemoryHasher]" = weakref.WeakKeyDictionary()


def start_memory_digests(fresh_vcpu: VCpu) -> None:
    """Set up memory digests for a vCPU whose memory is still all zeros (nothing written yet): from
    then on every write is noted, and no memory digest ever needs to read all of memory."""
    _hashers[fresh_vcpu] = _MemoryHasher(fresh_vcpu, all_zero=True)


def take_digest(vcpu: VCpu, with_memory: bool, device_state: bytes | None = None) -> Digest:
    """The digest of a vCPU's state; `device_state` is the domain's canonical device-state encoding."""
    cpu = vcpu.save_cpu()
    state_hash = hashlib.blake2b(repr((cpu.registers, cpu.pc, cpu.icount)).encode(), digest_size=8).digest()
    memory_hash = None
    if with_memory:
        if vcpu not in _hashers:
            _hashers[vcpu] = _MemoryHasher(vcpu, all_zero=False)
        memory_hash = _hashers[vcpu].hash(vcpu)
    device_hash = None if device_state is None else \
        hashlib.blake2b(device_state, digest_size=_DEVICE_HASH_BYTES).digest()
    return Digest(tuple(vcpu.reg(name) for name in _REGISTERS), state_hash, memory_hash, device_hash)


def end_payload(digest: Digest, outcome: str) -> bytes:
    """The END record's payload: the final digest, then how the recorded run ended (UTF-8)."""
    body = digest.to_bytes()
    return len(body).to_bytes(2, "little") + body + outcome.encode()


def parse_end_payload(payload: bytes) -> tuple[Digest, str]:
    """(final digest, outcome) from an END payload; ValueError when it is not one."""
    if len(payload) < 2:
        raise ValueError(f"end-of-recording payload of {len(payload)} bytes is truncated")
    size = int.from_bytes(payload[:2], "little")
    if 2 + size > len(payload):
        raise ValueError(f"end-of-recording payload is shorter than its {size}-byte digest")
    return Digest.from_bytes(payload[2:2 + size]), bytes(payload[2 + size:]).decode(errors="replace")
