"""Grant tables: GNTTABOP_setup_table/query_size/set_version/get_version and the backend's map/copy.

Each hypercall is made as the guest makes it - the op structure (grant_table.h: struct
gnttab_setup_table, gnttab_query_size, gnttab_set_version, gnttab_get_version) in guest memory and
HYPERVISOR_grant_table_op(cmd, uop, count) dispatched by number - and the expected results are
Xen's (xen/common/grant_table.c): -EINVAL for count != 1, GNTST_bad_domain / permission_denied for
other domains, GNTST_general_error beyond max_grant_frames, -ENOSYS for version 2 when the
hypervisor offers only version 1 (gnttab=max-ver:1). Grant entries are struct grant_entry_v1 in the
frames setup_table lists; a backend mapping checks GTF_permit_access, the granted domain,
GTF_readonly and the frame, and marks the entry GTF_reading/GTF_writing while in use.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from xen import abi, hypercalls
from xen.builder import build_domain
from xen.domain import DOMID, Domain
from xen.grant import ENTRIES_PER_FRAME, MAX_GRANT_FRAMES, GrantError

ROOT = Path(__file__).resolve().parents[2]
SCRATCH_PAGES = 4          # guest pages the tests use for op structures, frame lists and granted data


@pytest.fixture
def domain() -> Domain:
    return Domain(build_domain((ROOT / "guests/kbdshell/kbdshell.elf").read_bytes(), 4 << 20))


def scratch(domain: Domain, page: int = 0) -> int:
    """A free page of the domain's own (its last ones, above everything the builder placed)."""
    return domain.image.layout.virt_base + (domain.image.nr_pages - SCRATCH_PAGES + page) * abi.PAGE_SIZE


def call(domain: Domain, command: int, op: ctypes.Structure, count: int = 1, page: int = 0):
    """Put `op` in guest memory, make the hypercall, read the op back: (result, op)."""
    address = scratch(domain, page)
    domain.vcpu.write(address, bytes(op))
    result = hypercalls.dispatch(domain, abi.HYPERVISOR_grant_table_op, (command, address, count, 0, 0))
    return result, type(op).from_buffer_copy(domain.vcpu.read(address, ctypes.sizeof(op)))


def setup(domain: Domain, nr_frames: int, dom: int = abi.DOMID_SELF, frame_list: int | None = None):
    frame_list = scratch(domain, 1) if frame_list is None else frame_list
    op = abi.GnttabSetupTable(dom=dom, nr_frames=nr_frames)
    op.frame_list.p = frame_list
    result, op = call(domain, abi.GNTTABOP_setup_table, op)
    frames = [int.from_bytes(domain.vcpu.read(frame_list + 8 * i, 8), "little") for i in range(nr_frames)] \
        if result == 0 and op.status == abi.GNTST_okay else []
    return result, op.status, frames


def grant(domain: Domain, ref: int, frame: int, flags: int = abi.GTF_permit_access, domid: int = 0) -> None:
    """What a frontend does: fill grant entry `ref` (struct grant_entry_v1) in the shared frame."""
    _, _, frames = setup(domain, 1)
    entry = abi.GrantEntryV1(flags=flags, domid=domid, frame=frame)
    base = frames[0] * abi.PAGE_SIZE          # the table frame by machine address (the guest maps it itself)
    domain.vcpu.machine.write(base + ref * ctypes.sizeof(entry), bytes(entry))


def entry_flags(domain: Domain, ref: int) -> int:
    frame = domain.grants.state.frames[0]
    address = frame * abi.PAGE_SIZE + ref * ctypes.sizeof(abi.GrantEntryV1)
    return abi.GrantEntryV1.from_buffer_copy(domain.vcpu.machine.read(address, ctypes.sizeof(abi.GrantEntryV1))).flags


def test_setup_table_lists_frames_outside_the_domains_pages(domain):
    result, status, frames = setup(domain, 2)
    assert (result, status) == (0, abi.GNTST_okay)
    assert len(frames) == 2 and len(set(frames)) == 2
    assert all(frame in domain.image.extra_frames for frame in frames)
    assert all(frame >= domain.image.nr_pages for frame in frames)      # not the domain's own pages
    assert setup(domain, 1)[2] == frames[:1]                            # asking for fewer: the same frames


def test_query_size_reports_current_and_maximum(domain):
    result, op = call(domain, abi.GNTTABOP_query_size, abi.GnttabQuerySize(dom=abi.DOMID_SELF))
    assert (result, op.status, op.nr_frames, op.max_nr_frames) == (0, abi.GNTST_okay, 1, MAX_GRANT_FRAMES)
    setup(domain, 3)
    assert call(domain, abi.GNTTABOP_query_size, abi.GnttabQuerySize(dom=DOMID))[1].nr_frames == 3


def test_setup_table_errors(domain):
    assert setup(domain, MAX_GRANT_FRAMES + 1)[:2] == (0, abi.GNTST_general_error)
    assert setup(domain, 1, dom=0)[:2] == (0, abi.GNTST_permission_denied)     # dom0's table: not ours
    assert setup(domain, 1, dom=7)[:2] == (0, abi.GNTST_bad_domain)
    unmapped = 0x400000000000                          # never mapped: copy_to_guest fails per frame
    assert setup(domain, 1, frame_list=unmapped)[:2] == (0, abi.GNTST_bad_virt_addr)
    assert setup(domain, 1, frame_list=abi.HYPERVISOR_VIRT_START)[0] == -abi.XEN_EFAULT   # not a guest address
    op = abi.GnttabSetupTable(dom=abi.DOMID_SELF, nr_frames=1)
    assert call(domain, abi.GNTTABOP_setup_table, op, count=2)[0] == -abi.XEN_EINVAL
    assert call(domain, abi.GNTTABOP_setup_table, op, count=-1 & 0xFFFFFFFF)[0] == -abi.XEN_EINVAL
    assert hypercalls.dispatch(domain, abi.HYPERVISOR_grant_table_op,
                               (abi.GNTTABOP_setup_table, 0x400000000010, 1, 0, 0)) == -abi.XEN_EFAULT


def test_versions(domain):
    result, op = call(domain, abi.GNTTABOP_get_version, abi.GnttabGetVersion(dom=abi.DOMID_SELF))
    assert (result, op.version) == (0, 1)
    assert call(domain, abi.GNTTABOP_set_version, abi.GnttabSetVersion(version=1))[0] == 0
    result, op = call(domain, abi.GNTTABOP_set_version, abi.GnttabSetVersion(version=2))
    assert (result, op.version) == (-abi.XEN_ENOSYS, 1)        # version 2 not offered; the current one is returned
    result, op = call(domain, abi.GNTTABOP_set_version, abi.GnttabSetVersion(version=3))
    assert (result, op.version) == (-abi.XEN_EINVAL, 1)
    assert call(domain, abi.GNTTABOP_get_version, abi.GnttabGetVersion(dom=9))[0] == -abi.XEN_ESRCH
    assert call(domain, abi.GNTTABOP_get_version, abi.GnttabGetVersion(dom=0))[0] == -abi.XEN_EPERM


def test_unknown_and_unimplemented_operations(domain):
    for command in (abi.GNTTABOP_map_grant_ref, abi.GNTTABOP_copy, 99):
        assert hypercalls.dispatch(domain, abi.HYPERVISOR_grant_table_op, (command, scratch(domain), 1, 0, 0)) \
            == -abi.XEN_ENOSYS


def test_backend_maps_a_granted_page_and_the_entry_shows_it_in_use(domain):
    page = scratch(domain, 2)
    frame = domain.image.layout.frame(page)
    domain.vcpu.write(page, b"ring contents")
    grant(domain, 5, frame)
    handle, address = domain.grants.map(5, domid=0, readonly=False)
    assert address == page and domain.vcpu.read(address, 13) == b"ring contents"
    assert entry_flags(domain, 5) == abi.GTF_permit_access | abi.GTF_reading | abi.GTF_writing
    domain.grants.unmap(handle)
    assert entry_flags(domain, 5) == abi.GTF_permit_access
    with pytest.raises(GrantError) as failure:
        domain.grants.unmap(handle)
    assert failure.value.status == abi.GNTST_bad_handle


def test_backend_copy_through_grants(domain):
    page = scratch(domain, 2)
    grant(domain, 9, domain.image.layout.frame(page))
    domain.grants.copy_to(9, 0, 100, b"event")
    assert domain.vcpu.read(page + 100, 5) == b"event"
    assert domain.grants.copy_from(9, 0, 100, 5) == b"event"
    assert entry_flags(domain, 9) == abi.GTF_permit_access          # a copy leaves no pin behind
    with pytest.raises(GrantError) as failure:
        domain.grants.copy_to(9, 0, abi.PAGE_SIZE - 2, b"xyz")
    assert failure.value.status == abi.GNTST_bad_copy_arg


@pytest.mark.parametrize("flags, domid, frame_of, readonly, status", [
    (abi.GTF_invalid, 0, "page", True, abi.GNTST_general_error),                       # not granted
    (abi.GTF_accept_transfer, 0, "page", True, abi.GNTST_general_error),               # wrong type
    (abi.GTF_permit_access, 3, "page", True, abi.GNTST_general_error),                 # granted to another domain
    (abi.GTF_permit_access | abi.GTF_readonly, 0, "page", False, abi.GNTST_general_error),   # write-pin of r/o
    (abi.GTF_permit_access, 0, "shared_info", True, abi.GNTST_bad_page),               # Xen's page, not the domain's
    (abi.GTF_permit_access, 0, "beyond", True, abi.GNTST_bad_page),
])
def test_bad_grants_are_refused_with_xens_status(domain, flags, domid, frame_of, readonly, status):
    layout = domain.image.layout
    frame = {"page": layout.frame(scratch(domain, 2)), "shared_info": domain.image.shared_info_frame,
             "beyond": 0xFFFFFF}[frame_of]
    grant(domain, 3, frame, flags=flags, domid=domid)
    with pytest.raises(GrantError) as failure:
        domain.grants.map(3, domid=0, readonly=readonly)
    assert failure.value.status == status
    assert entry_flags(domain, 3) == flags                           # nothing marked in use


def test_reference_beyond_the_table(domain):
    with pytest.raises(GrantError) as failure:
        domain.grants.map(ENTRIES_PER_FRAME, domid=0, readonly=True)     # the table has one frame
    assert failure.value.status == abi.GNTST_bad_gntref


def test_grant_state_is_checkpointed_and_digested(domain):
    page = scratch(domain, 2)
    grant(domain, 4, domain.image.layout.frame(page))
    saved, digest = domain.save_state(), domain.digest(with_memory=True)
    handle, _ = domain.grants.map(4, domid=0, readonly=True)
    assert domain.digest(with_memory=True).device_hash != digest.device_hash
    domain.load_state(saved)
    assert domain.digest(with_memory=True).device_hash == digest.device_hash
    with pytest.raises(GrantError):
        domain.grants.unmap(handle)                                  # the mapping is gone with the restore
