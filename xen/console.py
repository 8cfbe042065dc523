"""The PV console ring, backend side: struct xencons_interface in the guest's console page.

Owns the ring indices as the backend sees them: it consumes guest output (out[], out_cons) and
produces guest input (in[], in_prod). Invariant: output is consumed only when the guest notifies
the console port (a guest hypercall, so deterministic); input is produced only through the input
funnel (xen/inject.py). Ring indices are free-running 32-bit counters masked into the arrays, as in
io/console.h; a guest that corrupts them loses its own output, never the hypervisor's stability.
"""
from __future__ import annotations

from xen import abi
from xen.ringpage import RingFields, ring_distance
from xen.vcpu import MachineMemory


class ConsoleRing:
    """Backend view of one xencons_interface page."""

    def __init__(self, memory: MachineMemory, address: int):
        self._memory = memory          # Xen reaches this page by its machine address
        self.address = address
        self._fields = RingFields(memory, address, abi.XenconsInterface)
        self.in_size = abi.XENCONS_IN_SIZE
        self.out_size = abi.XENCONS_OUT_SIZE

    def drain_output(self) -> bytes:
        """Everything the guest has produced since the last call; advances out_cons."""
        consumer, producer = self._fields.read("out_cons"), self._fields.read("out_prod")
        available = ring_distance(consumer, producer)
        if available > self.out_size:          # corrupted indices: resynchronise, drop the garbage
            self._fields.write("out_cons", producer)
            return b""
        base = self.address + abi.XenconsInterface.out.offset
        data = bytearray()
        while available:
            offset = consumer % self.out_size
            chunk = min(available, self.out_size - offset)
            data += self._memory.read(base + offset, chunk)
            consumer += chunk
            available -= chunk
        self._fields.write("out_cons", consumer)
        return bytes(data)

    def guest_indices(self) -> tuple[int, int]:
        """(in_cons, out_prod): the indices only the guest moves, when it takes input or gives output."""
        return self._fields.read("in_cons"), self._fields.read("out_prod")

    def input_empty(self) -> bool:
        """No input waits in the ring for the guest."""
        return self._fields.read("in_prod") == self._fields.read("in_cons")

    @property
    def in_prod_address(self) -> int:
        """Where the guest reads whether input arrived (what a polling guest reads again and again)."""
        return self.address + abi.XenconsInterface.in_prod.offset

    def input_space(self) -> int:
        """How many bytes of input the ring can take now."""
        used = ring_distance(self._fields.read("in_cons"), self._fields.read("in_prod"))
        return max(0, self.in_size - used)

    def push_input(self, data: bytes) -> None:
        """Append input bytes (the caller has checked input_space) and advance in_prod."""
        producer = self._fields.read("in_prod")
        base = self.address + getattr(abi.XenconsInterface, "in").offset
        written = 0
        while written < len(data):
            offset = (producer + written) % self.in_size
            chunk = data[written:written + self.in_size - offset]
            self._memory.write(base + offset, chunk)
            written += len(chunk)
        self._fields.write("in_prod", producer + len(data))
