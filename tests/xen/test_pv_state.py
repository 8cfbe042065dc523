"""Hypervisor state the newer PV hypercalls create is part of checkpoints and digests.

Each piece is set the way a guest sets it (the hypercall dispatched by number, arguments as the
guest passes them), then a checkpoint (Domain.save_state) must restore it and the digest must see it:
without that, reverse execution and replay verification would miss a divergence in it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from xen import abi, hypercalls
from xen.builder import build_domain
from xen.domain import Domain, RunState

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def domain() -> Domain:
    return Domain(build_domain((ROOT / "guests/kbdshell/kbdshell.elf").read_bytes(), 4 << 20))


def test_user_gs_base_is_checkpointed_and_digested(domain):
    saved, digest = domain.save_state(), domain.digest(with_memory=True)
    assert hypercalls.dispatch(domain, abi.HYPERVISOR_set_segment_base,
                               (abi.SEGBASE_GS_USER, 0x7000_0000, 0, 0, 0)) == 0
    assert domain.gs_base_user == 0x7000_0000
    assert domain.digest(with_memory=True).device_hash != digest.device_hash
    domain.load_state(saved)
    assert domain.gs_base_user == 0
    assert domain.digest(with_memory=True).device_hash == digest.device_hash


def test_kernel_gs_and_fs_bases_are_the_vcpus_registers(domain):
    hypercalls.dispatch(domain, abi.HYPERVISOR_set_segment_base, (abi.SEGBASE_FS, 0x1000, 0, 0, 0))
    hypercalls.dispatch(domain, abi.HYPERVISOR_set_segment_base, (abi.SEGBASE_GS_KERNEL, 0x2000, 0, 0, 0))
    assert (domain.vcpu.reg("fs_base"), domain.vcpu.reg("gs_base")) == (0x1000, 0x2000)


def scratch(domain: Domain) -> int:
    """A free page of the domain's own (its last one, above everything the builder placed)."""
    return domain.image.layout.virt_base + (domain.image.nr_pages - 1) * abi.PAGE_SIZE


def poll(domain: Domain, ports: list[int], timeout: int) -> int:
    """SCHEDOP_poll as a guest makes it: the port list, then struct sched_poll, in guest memory."""
    ports_address = scratch(domain)
    request_address = ports_address + 256
    domain.vcpu.write(ports_address, b"".join(port.to_bytes(4, "little") for port in ports))
    request = abi.SchedPoll(nr_ports=len(ports), timeout=timeout)
    request.ports.p = ports_address
    domain.vcpu.write(request_address, bytes(request))
    return hypercalls.dispatch(domain, abi.HYPERVISOR_sched_op, (abi.SCHEDOP_poll, request_address, 0, 0, 0))


def mask_port(domain: Domain, port: int) -> None:
    """What a guest does to mask a port: set its bit in shared_info.evtchn_mask."""
    address = domain.image.shared_info_frame * abi.PAGE_SIZE + abi.SharedInfo.evtchn_mask.offset
    domain.vcpu.machine.write(address, (1 << port).to_bytes(8, "little"))


def test_a_poller_wakes_when_its_port_becomes_pending_and_not_for_a_masked_other(domain):
    mask_port(domain, 6)
    assert poll(domain, [5], timeout=0) == 0
    assert domain.state == RunState.BLOCKED
    domain.notify_guest(6)                    # masked: no upcall, and not the polled port
    domain.return_to_guest()
    assert domain.state == RunState.BLOCKED
    domain.notify_guest(5)
    domain.return_to_guest()
    assert domain.state == RunState.RUNNING and domain.poll is None


def test_a_new_upcall_wakes_a_poller_even_with_events_masked(domain):
    """Xen's vcpu_mark_events_pending kicks (unblocks) the vCPU whatever its upcall mask."""
    assert poll(domain, [5], timeout=0) == 0
    domain.notify_guest(6)                    # unmasked port: raises evtchn_upcall_pending
    domain.return_to_guest()
    assert domain.state == RunState.RUNNING and domain.events.upcall_masked()


def test_a_poll_is_checkpointed_and_digested(domain):
    saved, digest = domain.save_state(), domain.digest(with_memory=True)
    assert poll(domain, [5, 6], timeout=domain.time.now() + 10**9) == 0
    assert domain.state == RunState.BLOCKED and domain.time.next_deadline() is not None
    assert domain.digest(with_memory=True).device_hash != digest.device_hash
    blocked = domain.save_state()
    domain.load_state(saved)
    assert domain.state == RunState.RUNNING and domain.poll is None
    assert domain.digest(with_memory=True).device_hash == digest.device_hash
    domain.load_state(blocked)
    assert domain.state == RunState.BLOCKED and domain.poll is not None


def test_the_runstate_and_its_guest_area_are_checkpointed_and_digested(domain):
    area = scratch(domain) + 512
    request = abi.VcpuRegisterRunstateMemoryArea()
    request.addr.p = area
    domain.vcpu.write(scratch(domain), bytes(request))
    saved, digest = domain.save_state(), domain.digest(with_memory=True)
    assert hypercalls.dispatch(domain, abi.HYPERVISOR_vcpu_op,
                               (abi.VCPUOP_register_runstate_memory_area, 0, scratch(domain), 0, 0)) == 0
    assert poll(domain, [5], timeout=0) == 0              # blocks: the runstate goes to the area
    copied = abi.VcpuRunstateInfo.from_buffer_copy(domain.vcpu.read(area, 48))
    assert copied.state == abi.RUNSTATE_blocked
    assert domain.digest(with_memory=True).device_hash != digest.device_hash
    domain.load_state(saved)
    assert domain.runstate.state == abi.RUNSTATE_running and domain.runstate.area == 0
    assert domain.digest(with_memory=True).device_hash == digest.device_hash


def test_a_moved_vcpu_info_is_checkpointed_and_events_follow_it(domain):
    page = scratch(domain)
    request = abi.VcpuRegisterVcpuInfo(mfn=domain.image.layout.frame(page), offset=64)
    domain.vcpu.write(page + 2048, bytes(request))
    saved = domain.save_state()
    assert hypercalls.dispatch(domain, abi.HYPERVISOR_vcpu_op,
                               (abi.VCPUOP_register_vcpu_info, 0, page + 2048, 0, 0)) == 0
    moved = domain.events.vcpu_info_address()
    assert moved == request.mfn * abi.PAGE_SIZE + 64 and domain.events.upcall_pending()
    domain.load_state(saved)
    assert domain.events.vcpu_info_address() != moved
    assert not domain.events.upcall_pending()          # shared_info's vcpu_info again


def test_the_gdt_is_checkpointed_digested_and_keeps_its_frame_from_writable_mappings(domain):
    page, frame_list = scratch(domain), scratch(domain) - abi.PAGE_SIZE
    frame = domain.image.layout.frame(page)
    domain.vcpu.write(frame_list, frame.to_bytes(8, "little"))

    def remap(flags: int) -> int:
        return hypercalls.dispatch(domain, abi.HYPERVISOR_update_va_mapping,
                                   (page, frame * abi.PAGE_SIZE | flags, abi.UVMF_INVLPG, 0, 0))

    assert remap(0x21) == 0                              # present, read-only: it may become a GDT page
    saved, digest = domain.save_state(), domain.digest(with_memory=True)
    assert hypercalls.dispatch(domain, abi.HYPERVISOR_set_gdt, (frame_list, 16, 0, 0, 0)) == 0
    assert domain.memory.page_type(frame) == ("descriptors", 1)
    assert domain.digest(with_memory=True).device_hash != digest.device_hash
    assert remap(0x23) == -abi.XEN_EINVAL               # Xen: a descriptor page is never writable
    domain.load_state(saved)
    assert (domain.memory.gdt, domain.memory.page_type(frame)) == ((), ("none", 0))
    assert domain.digest(with_memory=True).device_hash == digest.device_hash
    assert remap(0x23) == 0


def test_physdev_state_is_checkpointed_and_digested(domain):
    argument = scratch(domain)
    saved, digest = domain.save_state(), domain.digest(with_memory=True)
    domain.vcpu.write(argument, bytes(abi.PhysdevSetIopl(iopl=3)))
    assert hypercalls.dispatch(domain, abi.HYPERVISOR_physdev_op, (abi.PHYSDEVOP_set_iopl, argument, 0, 0, 0)) == 0
    domain.vcpu.write(argument, bytes(abi.PhysdevGetFreePirq(type=abi.MAP_PIRQ_TYPE_GSI)))
    assert hypercalls.dispatch(domain, abi.HYPERVISOR_physdev_op,
                               (abi.PHYSDEVOP_get_free_pirq, argument, 0, 0, 0)) == 0
    assert (domain.iopl, domain.pirqs) == (3, (16,))
    assert domain.digest(with_memory=True).device_hash != digest.device_hash
    domain.load_state(saved)
    assert (domain.iopl, domain.pirqs) == (0, ())
    assert domain.digest(with_memory=True).device_hash == digest.device_hash
