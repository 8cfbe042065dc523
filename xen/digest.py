"""State digests: what record writes into the log so replay can prove it reproduces the run.

Owns the digest payload. Every digest holds a 4-byte hash of the vCPU's complete state (all 87
registers, rip and the instruction count) together with the domain's device state outside guest
memory (xenstore, grant table, PV vCPU state: `Domain.device_state`). A *full* digest adds an 8-byte
hash of all guest memory - a hash of per-frame hashes, where only the frames written since the
previous memory digest are rehashed (the vCPU's dirty-page tracking), combined with the hash of the
guest-virtual map - and an 8-byte hash of the device state alone, so a divergence there is named. A
digest *in the clear* (the log header's initial state and the END record) also carries the general
registers, rip and rflags, so a divergence at the end names the register and both values.

Why so small (docs/log-format.md, "State digests"): a busy guest logs a digest every 2^24
instructions, about 140 a second; at 153 bytes each they were 90 % of its log. A periodic digest is
now 4 bytes of payload (12-13 with its record), a full one 21: under 2 KB per busy second. A
diverged state still fails the first digest after the divergence (a 32-bit hash misses a difference
once in 4 x 10^9, and the next digest checks again); the replay names rip from the record itself.
Invariant: a digest is a pure function of vCPU and device state; two equal states give
byte-identical digests.
"""
from __future__ import annotations

import hashlib
import struct
import weakref
from dataclasses import dataclass

from xen.vcpu import GPR_NAMES, PAGE_SIZE, VCpu

_REGISTERS = GPR_NAMES + ("rip", "rflags")
_CLEAR = struct.Struct(f"<{len(_REGISTERS)}Q")
STATE_HASH_BYTES = 4
_PAGE_HASH_BYTES = 16
_MEMORY_HASH_BYTES = 8
_DEVICE_HASH_BYTES = 8
_HAS_MEMORY, _HAS_DEVICES, _HAS_CLEAR = 1, 2, 4
_OTHER_REGISTERS = "flags, segment bases, SSE/x87"


@dataclass(frozen=True)
class Digest:
    """`state_hash` covers registers and device state; the optional parts are present in full digests
    (memory and device hashes) and digests in the clear (`registers`: rax..r15, rip, rflags)."""
    state_hash: bytes
    memory_hash: bytes | None = None
    device_hash: bytes | None = None
    registers: tuple[int, ...] | None = None

    def to_bytes(self) -> bytes:
        """The state hash alone (a periodic digest), or followed by a flags byte and the parts it names."""
        flags = (_HAS_MEMORY if self.memory_hash is not None else 0) | \
            (_HAS_DEVICES if self.device_hash is not None else 0) | (_HAS_CLEAR if self.registers is not None else 0)
        if not flags:
            return self.state_hash
        return self.state_hash + bytes([flags]) + (self.memory_hash or b"") + (self.device_hash or b"") + \
            (_CLEAR.pack(*self.registers) if self.registers is not None else b"")

    @classmethod
    def from_bytes(cls, data: bytes) -> "Digest":
        """ValueError unless `data` is exactly a digest: the state hash, then optionally flags and the flagged parts."""
        if len(data) < STATE_HASH_BYTES:
            raise ValueError(f"state digest of {len(data)} bytes is truncated")
        if len(data) == STATE_HASH_BYTES:
            return cls(bytes(data))
        flags = data[STATE_HASH_BYTES]
        if not flags or flags & ~(_HAS_MEMORY | _HAS_DEVICES | _HAS_CLEAR):
            raise ValueError(f"state digest has unknown flags {flags:#x}")
        sizes = [(_HAS_MEMORY, _MEMORY_HASH_BYTES), (_HAS_DEVICES, _DEVICE_HASH_BYTES), (_HAS_CLEAR, _CLEAR.size)]
        expected = STATE_HASH_BYTES + 1 + sum(size for flag, size in sizes if flags & flag)
        if len(data) != expected:
            raise ValueError(f"state digest of {len(data)} bytes, expected {expected}")
        parts: list[bytes | None] = []
        offset = STATE_HASH_BYTES + 1
        for flag, size in sizes:
            parts.append(bytes(data[offset:offset + size]) if flags & flag else None)
            offset += size if flags & flag else 0
        memory, device, clear = parts
        return cls(bytes(data[:STATE_HASH_BYTES]), memory, device,
                   _CLEAR.unpack(clear) if clear is not None else None)

    @property
    def in_clear(self) -> bool:
        return self.registers is not None

    def differences(self, actual: "Digest") -> list[str]:
        """What differs between this (recorded) digest and `actual` (replayed, taken with the same parts),
        one phrase each: registers by name where both are in the clear, else the kind of state."""
        found = []
        if self.registers is not None and actual.registers is not None:
            found = [f"{name} recorded {want:#x} replayed {got:#x}"
                     for name, want, got in zip(_REGISTERS, self.registers, actual.registers) if want != got]
        devices_compared = self.device_hash is not None and actual.device_hash is not None
        device_differs = devices_compared and self.device_hash != actual.device_hash
        if self.state_hash != actual.state_hash and not found and not device_differs:
            if self.registers is not None and actual.registers is not None:
                found.append(f"other register state ({_OTHER_REGISTERS})")
            elif devices_compared:
                found.append(f"registers (general, {_OTHER_REGISTERS})")
            else:
                found.append(f"registers (general, {_OTHER_REGISTERS}) or device state (xenstore, grant table, "
                             "PV vCPU state)")
        if self.memory_hash is not None and actual.memory_hash is not None \
                and self.memory_hash != actual.memory_hash:
            found.append("guest memory")
        if device_differs:
            found.append("device state (xenstore, grant table, PV vCPU state)")
        return found


class _MemoryHasher:
    """The memory hash of one vCPU, kept up to date incrementally: a hash per page, rehashed only for
    pages written since the last digest (the vCPU's dirty tracking), combined into one hash."""

    def __init__(self, vcpu: VCpu, all_zero: bool):
        self._generation = vcpu.track_dirty_pages(memory_is_zero=all_zero)
        if all_zero:
            self._pages = [_ZERO_PAGE_HASH] * vcpu.frame_count
        else:
            image = vcpu.memory_image()
            self._pages = [self._page_hash(image[offset:offset + PAGE_SIZE])
                           for offset in range(0, len(image), PAGE_SIZE)]

    @staticmethod
    def _page_hash(page: bytes) -> bytes:
        return hashlib.blake2b(page, digest_size=_PAGE_HASH_BYTES).digest()

    def hash(self, vcpu: VCpu) -> bytes:
        written = vcpu.pages_written_since(self._generation)
        self._generation = vcpu.new_generation()
        for number in written:
            self._pages[number] = self._page_hash(vcpu.read_frame(number))
        return hashlib.blake2b(b"".join(self._pages) + vcpu.mapping_digest(), digest_size=_MEMORY_HASH_BYTES).digest()


_ZERO_PAGE_HASH = hashlib.blake2b(bytes(PAGE_SIZE), digest_size=_PAGE_HASH_BYTES).digest()
# One hasher per vCPU, dropped with it (a hasher holds no reference to its vCPU).
_hashers: "weakref.WeakKeyDictionary[VCpu, _MemoryHasher]" = weakref.WeakKeyDictionary()


def start_memory_digests(fresh_vcpu: VCpu) -> None:
    """Set up memory digests for a vCPU whose memory is still all zeros (nothing written yet): from
    then on every write is noted, and no memory digest ever needs to read all of memory."""
    _hashers[fresh_vcpu] = _MemoryHasher(fresh_vcpu, all_zero=True)


def take_digest(vcpu: VCpu, with_memory: bool, device_state: bytes = b"", in_clear: bool = False) -> Digest:
    """The digest of a vCPU's state; `device_state` is the domain's canonical device-state encoding.
    `with_memory`: a full digest (memory and device hashes); `in_clear`: with the named registers too."""
    cpu = vcpu.save_cpu()
    state = hashlib.blake2b(repr((cpu.registers, cpu.pc, cpu.icount)).encode(), digest_size=STATE_HASH_BYTES)
    state.update(device_state)
    memory_hash = device_hash = None
    if with_memory:
        if vcpu not in _hashers:
            _hashers[vcpu] = _MemoryHasher(vcpu, all_zero=False)
        memory_hash = _hashers[vcpu].hash(vcpu)
        device_hash = hashlib.blake2b(device_state, digest_size=_DEVICE_HASH_BYTES).digest()
    registers = tuple(vcpu.reg(name) for name in _REGISTERS) if in_clear else None
    return Digest(state.digest(), memory_hash, device_hash, registers)


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
