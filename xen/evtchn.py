"""Event channels: the port table and the 2-level pending/mask bitmaps in the guest's shared_info.

Owns which port is bound to what (a VIRQ, a backend device, another domain's port, or nothing yet),
the ports other domains offer this one (their EVTCHNOP_alloc_unbound naming it: what a
bind_interdomain may bind to, learnt only through logged inputs) and the event bits as Xen
lays them out: shared_info.evtchn_pending[] / evtchn_mask[], vcpu_info.evtchn_pending_sel and
evtchn_upcall_pending. Invariant: the bits in guest memory are the only event state; this module
keeps no shadow copy of them, so a snapshot of guest memory is a snapshot of all event state.
Upcall delivery itself (the bounce frame) is xen/upcall.py's.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, replace

from xen import abi
from xen.vcpu import MachineMemory

BITS_PER_WORD = 64


@dataclass
class Binding:
    """What a port is connected to: ("virq", number), ("ipi", None), ("backend", device name), ("unbound",
    remote domid) or ("interdomain", remote domid) with the remote domain's port in `remote_port` (remote
    domid 0: a dom0 backend in this process, e.g. the PV keyboard's); `vcpu` is the vCPU it notifies (Xen's
    notify_vcpu_id)."""
    kind: str
    target: int | str | None
    vcpu: int = 0
    remote_port: int = 0


class EventChannels:
    """The domain's event-channel ports, with their pending/mask bits kept in shared_info."""

    def __init__(self, memory: MachineMemory, shared_info_address: int, max_ports: int = abi.EVTCHN_2L_NR_CHANNELS):
        self._memory = memory          # Xen reaches this page by its machine address
        self._shared = shared_info_address
        self.max_ports = max_ports
        self._ports: dict[int, Binding] = {}
        self._virq_ports: dict[tuple[int, int], int] = {}    # (virq, vcpu) -> port
        self.offers: set[tuple[int, int]] = set()     # (domid, port): unbound ports of other domains, offered to us
        self._vcpu_info_overrides: dict[int, int] = {}       # vcpu -> VCPUOP_register_vcpu_info's machine address
        self.current = 0          # the vCPU on the engine: the default of every per-vCPU call below

    def vcpu_info_override(self, vcpu_id: int) -> int | None:
        """A vCPU's registered vcpu_info (None: its slot in shared_info)."""
        return self._vcpu_info_overrides.get(vcpu_id)

    def register_vcpu_info(self, vcpu_id: int, address: int) -> None:
        self._vcpu_info_overrides[vcpu_id] = address

    # ---------------------------------------------------------------- port table
    def allocate(self, binding: Binding, port: int | None = None) -> int:
        """Bind the lowest free port (port 0 is never used, as on Xen), or `port` if given and free."""
        if port is None:
            port = next(p for p in range(1, self.max_ports) if p not in self._ports)
        self._ports[port] = binding
        if binding.kind == "virq":
            self._virq_ports[int(binding.target), binding.vcpu] = port
        return port

    def has_free_port(self) -> bool:
        return len(self._ports) < self.max_ports - 1

    def binding(self, port: int) -> Binding | None:
        return self._ports.get(port)

    def port_for_virq(self, virq: int, vcpu_id: int = 0) -> int | None:
        return self._virq_ports.get((virq, vcpu_id))

    def bind_vcpu(self, port: int, vcpu_id: int) -> None:
        """EVTCHNOP_bind_vcpu: the port notifies `vcpu_id` from now on (the caller checked it may)."""
        binding = self._ports[port]
        if binding.kind == "virq":
            del self._virq_ports[int(binding.target), binding.vcpu]
            self._virq_ports[int(binding.target), vcpu_id] = port
        self._ports[port] = replace(binding, vcpu=vcpu_id)

    def notify_vcpu(self, port: int) -> int:
        binding = self._ports.get(port)
        return binding.vcpu if binding else 0

    def rebind(self, port: int, binding: Binding) -> None:
        """Change what a bound port (not a VIRQ's) is connected to; its vCPU stays."""
        self._ports[port] = replace(binding, vcpu=self._ports[port].vcpu)

    def remote_change_applies(self, change: str, port: int, remote_dom: int, remote_port: int) -> bool:
        """Whether another domain's `change` to a channel with this domain finds the state it expects:
        "bound" an unbound port offered to `remote_dom`; "closed" and "notify" a port connected to
        (`remote_dom`, `remote_port`); "withdraw" an offer we hold. An "offer" always applies."""
        binding = self._ports.get(port)
        if change == "offer":
            return True
        if change == "withdraw":
            return (remote_dom, remote_port) in self.offers
        if change == "bound":
            return binding is not None and binding.kind == "unbound" and binding.target == remote_dom
        return binding is not None and binding.kind == "interdomain" and binding.target == remote_dom \
            and binding.remote_port == remote_port

    def apply_remote_change(self, change: str, port: int, remote_dom: int, remote_port: int) -> None:
        """The port table after another domain's change (`remote_change_applies` must hold): an offer
        kept or dropped, our unbound port connected to theirs, or our connected port unbound again when
        they closed theirs (as Xen's evtchn_close leaves the other end ECS_UNBOUND). "notify" changes
        no table (the caller raises the event)."""
        if change == "offer":
            self.offers.add((remote_dom, remote_port))
        elif change == "withdraw":
            self.offers.discard((remote_dom, remote_port))
        elif change == "bound":
            self.rebind(port, Binding("interdomain", remote_dom, remote_port=remote_port))
        elif change == "closed":
            self.rebind(port, Binding("unbound", remote_dom))

    def close(self, port: int) -> None:
        binding = self._ports.pop(port)
        if binding.kind == "virq":
            del self._virq_ports[int(binding.target), binding.vcpu]

    def ports(self) -> dict[int, Binding]:
        """Every bound port (a copy)."""
        return dict(self._ports)

    def interdomain_state(self) -> bytes:
        """The ports connected to or offered to other domains, canonically (for digests); empty without any."""
        remote = sorted((port, binding.kind, binding.target, binding.remote_port) for port, binding in self._ports.items()
                        if binding.kind == "interdomain" or binding.kind == "unbound")
        return repr((remote, sorted(self.offers))).encode() if remote or self.offers else b""

    def save_state(self) -> tuple:
        return (dict(self._ports), dict(self._virq_ports), dict(self._vcpu_info_overrides), self.current,
                frozenset(self.offers))

    def load_state(self, state: tuple) -> None:
        self._ports, self._virq_ports = dict(state[0]), dict(state[1])
        self._vcpu_info_overrides, self.current = dict(state[2]), state[3]
        self.offers = set(state[4])

    def overrides_bytes(self) -> bytes:
        """The registered vcpu_info addresses of every vCPU, for digests."""
        return repr(sorted(self._vcpu_info_overrides.items())).encode()

    # ---------------------------------------------------------------- bits in shared_info
    def _word_address(self, array_field: str, port: int) -> int:
        return self._shared + getattr(abi.SharedInfo, array_field).offset + (port // BITS_PER_WORD) * 8

    def _vcpu_info(self, vcpu_id: int | None = None) -> int:
        vcpu_id = self.current if vcpu_id is None else vcpu_id
        if vcpu_id in self._vcpu_info_overrides:
            return self._vcpu_info_overrides[vcpu_id]
        return self._shared + abi.SharedInfo.vcpu_info.offset + vcpu_id * ctypes.sizeof(abi.VcpuInfo)

    def _test_and_set(self, address: int, bit: int) -> bool:
        word = self._memory.read_u64(address)
        self._memory.write_u64(address, word | (1 << bit))
        return bool(word >> bit & 1)

    def is_pending(self, port: int) -> bool:
        return bool(self._memory.read_u64(self._word_address("evtchn_pending", port)) >> (port % BITS_PER_WORD) & 1)

    def is_masked(self, port: int) -> bool:
        return bool(self._memory.read_u64(self._word_address("evtchn_mask", port)) >> (port % BITS_PER_WORD) & 1)

    def set_pending(self, port: int) -> bool:
        """Mark `port` pending as Xen's 2-level ABI does. True when this raised the vCPU's upcall flag."""
        if self._test_and_set(self._word_address("evtchn_pending", port), port % BITS_PER_WORD):
            return False
        if self.is_masked(port):
            return False
        return self._raise_selector(port)

    def unmask(self, port: int) -> bool:
        """Clear the mask bit; a port that was pending meanwhile now raises the upcall flag."""
        address = self._word_address("evtchn_mask", port)
        self._memory.write_u64(address, self._memory.read_u64(address) & ~(1 << (port % BITS_PER_WORD)))
        return self.is_pending(port) and self._raise_selector(port)

    def _raise_selector(self, port: int) -> bool:
        info = self._vcpu_info(self.notify_vcpu(port))
        selector = info + abi.VcpuInfo.evtchn_pending_sel.offset
        if self._test_and_set(selector, port // BITS_PER_WORD):
            return False
        pending = info + abi.VcpuInfo.evtchn_upcall_pending.offset
        already = self._memory.read(pending, 1) != b"\0"
        self._memory.write(pending, b"\1")
        return not already

    # ---------------------------------------------------------------- a vCPU's upcall flags (default: the current one's)
    def upcall_pending(self, vcpu_id: int | None = None) -> bool:
        return self._memory.read(self._vcpu_info(vcpu_id) + abi.VcpuInfo.evtchn_upcall_pending.offset, 1) != b"\0"

    def upcall_masked(self, vcpu_id: int | None = None) -> bool:
        return self._memory.read(self._vcpu_info(vcpu_id) + abi.VcpuInfo.evtchn_upcall_mask.offset, 1) != b"\0"

    def set_upcall_mask(self, masked: bool, vcpu_id: int | None = None) -> None:
        self._memory.write(self._vcpu_info(vcpu_id) + abi.VcpuInfo.evtchn_upcall_mask.offset,
                         b"\1" if masked else b"\0")

    def vcpu_info_address(self, vcpu_id: int | None = None) -> int:
        """The machine address of a vCPU's vcpu_info (in shared_info unless the guest registered one)."""
        return self._vcpu_info(vcpu_id)
