"""The 32-bit fields of a page shared with a guest for one of Xen's rings: the console (io/console.h),
xenstore (io/xs_wire.h) and PV keyboard (io/kbdif.h) pages.

Owns reading and writing those fields in machine memory, and the distance between a consumer and a
producer index. Invariant: a field is a little-endian u32 at its offset in the page's structure (a
ctypes structure of xen/abi.py); indices run freely and wrap at 2^32, so every value written is taken
modulo 2^32 and every distance between two indices is computed modulo 2^32.
"""
from __future__ import annotations

import ctypes

from xen.vcpu import MachineMemory

INDEX_MASK = 0xFFFFFFFF


class RingFields:
    """The u32 fields of the shared page at machine address `address`, laid out as `layout`."""

    def __init__(self, memory: MachineMemory, address: int, layout: type[ctypes.Structure]):
        self._memory = memory
        self._address = address
        self._layout = layout

    def read(self, name: str) -> int:
        return int.from_bytes(self._memory.read(self._address + getattr(self._layout, name).offset, 4), "little")

    def write(self, name: str, value: int) -> None:
        self._memory.write(self._address + getattr(self._layout, name).offset,
                           (value & INDEX_MASK).to_bytes(4, "little"))


def ring_distance(consumer: int, producer: int) -> int:
    """How many entries lie between a consumer index and the producer index ahead of it."""
    return (producer - consumer) & INDEX_MASK
