"""The PV memory model through the hypercalls a guest makes: mmu_update, update_va_mapping, mmuext_op.

A kbdshell domain is built (8 MiB: the bootstrap region maps the first 4 MiB, the rest is free) and
the hypercalls are dispatched with their arguments in guest memory, as a guest passes them. The
rules and error codes are Xen's (xen/arch/x86/mm.c: get_page_type, mod_l1_entry..mod_l4_entry,
do_mmu_update, do_update_va_mapping, do_mmuext_op; public/xen.h for the ABI): a page table is never
mapped writable, a frame has one type at a time, an L4's slots 256-271 are Xen's, bad frames and
type conflicts give -EINVAL, unknown commands -ENOSYS, a foreign domain -ESRCH, bad pointers -EFAULT.
"""
from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import pytest

from xen import abi, hypercalls
from xen.builder import build_domain
from xen.domain import Domain, RunState
from xen.vcpu import Exit, ExitReason

KBDSHELL = Path(__file__).resolve().parents[2] / "guests" / "kbdshell" / "kbdshell.elf"
MEMORY = 8 << 20
PRESENT, RW = 0x1, 0x2
DATA = PRESENT | RW | 0x60
EINVAL, EFAULT, ENOSYS, ESRCH, EACCES = (-abi.XEN_EINVAL, -abi.XEN_EFAULT, -abi.XEN_ENOSYS, -abi.XEN_ESRCH,
                                         -abi.XEN_EACCES)
FREE = 1500                     # a frame of the domain beyond the bootstrap region: mapped nowhere


@pytest.fixture()
def domain() -> Domain:
    return Domain(build_domain(KBDSHELL, MEMORY))


def scratch(domain: Domain) -> int:
    """A writable page of the bootstrap region's padding, for hypercall arguments."""
    return domain.image.layout.bootstrap_end - 2 * 4096


def window(domain: Domain) -> int:
    """Another padding page, to map frames onto."""
    return domain.image.layout.bootstrap_end - 4096


def call(domain: Domain, number: int, *arguments: int) -> int:
    result = hypercalls.dispatch(domain, number, tuple(arguments) + (0,) * (5 - len(arguments)))
    return result - (1 << 64) if result >= 1 << 63 else result


def update_va_mapping(domain: Domain, address: int, pte: int, flags: int = abi.UVMF_INVLPG) -> int:
    return call(domain, abi.HYPERVISOR_update_va_mapping, address, pte, flags)


def mmuext(domain: Domain, *operations: tuple[int, int], domid: int = abi.DOMID_SELF,
           count_done: bool = True) -> tuple[int, int | None]:
    """(result, done) of mmuext_op on (cmd, mfn) operations (done None without a done pointer)."""
    base = scratch(domain)
    for index, (command, frame) in enumerate(operations):
        op = abi.MmuextOp(cmd=command)
        op.arg1.mfn = frame
        domain.vcpu.write(base + index * ctypes.sizeof(op), bytes(op))
    done_pointer = base + 0x800 if count_done else 0
    result = call(domain, abi.HYPERVISOR_mmuext_op, base, len(operations), done_pointer, domid)
    return result, int.from_bytes(domain.vcpu.read(done_pointer, 4), "little") if count_done else None


def mmu_update(domain: Domain, *requests: tuple[int, int], domid: int = abi.DOMID_SELF) -> tuple[int, int]:
    base = scratch(domain)
    for index, (ptr, val) in enumerate(requests):
        domain.vcpu.write(base + index * 16, bytes(abi.MmuUpdate(ptr=ptr, val=val)))
    result = call(domain, abi.HYPERVISOR_mmu_update, base, len(requests), base + 0x800, domid)
    return result, int.from_bytes(domain.vcpu.read(base + 0x800, 4), "little")


def l4(domain: Domain) -> int:
    return domain.image.l4_frame


def test_the_builders_tables_are_validated_pinned_and_loaded(domain):
    memory = domain.memory
    assert memory.cr3 == l4(domain) and l4(domain) in memory.pinned
    assert memory.page_type(l4(domain)) == ("L4", 2)         # pinned + CR3
    layout = domain.image.layout
    assert all(memory.page_type(frame)[0] in ("L3", "L2", "L1")
               for frame in range(l4(domain) + 1, l4(domain) + layout.nr_pt_frames))
    mappings = domain.vcpu.mappings()
    assert mappings[layout.page_tables].writable is False
    assert mappings[layout.start_info].frame == layout.frame(layout.start_info)
    assert layout.bootstrap_end not in mappings
    assert mappings[abi.MACH2PHYS_VIRT_START].writable is False    # the m2p table, read-only


def test_update_va_mapping_maps_another_frame_and_the_old_one_keeps_its_contents(domain):
    vcpu, page = domain.vcpu, window(domain)
    vcpu.write(page, b"old frame")
    assert update_va_mapping(domain, page, (FREE << 12) | DATA) == 0
    assert vcpu.mapping(page).frame == FREE
    vcpu.write(page, b"new frame")
    assert vcpu.read_frame(FREE).startswith(b"new frame")
    assert vcpu.read_frame(domain.image.layout.frame(page)).startswith(b"old frame")
    assert update_va_mapping(domain, page, 0) == 0            # unmap
    assert vcpu.mapping(page) is None


def test_update_va_mapping_errors(domain):
    assert update_va_mapping(domain, 0x40000000000, (FREE << 12) | DATA) == EINVAL     # no L1 there
    assert update_va_mapping(domain, abi.HYPERVISOR_VIRT_START, (FREE << 12) | DATA) == EINVAL
    assert update_va_mapping(domain, window(domain), (domain.image.m2p_frames[0] << 12) | PRESENT) == EINVAL
    unmapped_mask = 0x400000003000 | abi.UVMF_TLB_FLUSH        # UVMF_MULTI with a vCPU mask pointer
    assert update_va_mapping(domain, window(domain), (FREE << 12) | DATA, unmapped_mask) == EFAULT


def test_a_page_table_is_never_mapped_writable(domain):
    table = l4(domain) + 1
    assert update_va_mapping(domain, window(domain), (table << 12) | DATA) == EINVAL
    assert update_va_mapping(domain, window(domain), (table << 12) | PRESENT) == 0      # read-only: fine
    assert domain.vcpu.read(window(domain), 8) == domain.vcpu.read_frame(table)[:8]


def test_a_frame_mapped_writable_cannot_become_a_page_table(domain):
    page = window(domain)
    assert update_va_mapping(domain, page, (FREE << 12) | DATA) == 0
    assert mmuext(domain, (abi.MMUEXT_PIN_L1_TABLE, FREE)) == (EINVAL, 0)
    assert update_va_mapping(domain, page, (FREE << 12) | PRESENT) == 0     # read-only now: type released
    assert mmuext(domain, (abi.MMUEXT_PIN_L1_TABLE, FREE)) == (0, 1)
    assert domain.memory.page_type(FREE) == ("L1", 1)
    assert update_va_mapping(domain, page, (FREE << 12) | DATA) == EINVAL   # and now it is a table


def test_pin_unpin_and_baseptr_rules(domain):
    assert mmuext(domain, (abi.MMUEXT_PIN_L4_TABLE, l4(domain))) == (EINVAL, 0)       # already pinned
    assert mmuext(domain, (abi.MMUEXT_UNPIN_TABLE, FREE)) == (EINVAL, 0)              # not pinned
    assert mmuext(domain, (abi.MMUEXT_NEW_BASEPTR, domain.image.m2p_frames[0])) == (EINVAL, 0)  # not ours
    assert mmuext(domain, (abi.MMUEXT_TLB_FLUSH_LOCAL, 0), (99, 0)) == (ENOSYS, 1)    # done counts the first
    assert mmuext(domain, (abi.MMUEXT_FLUSH_CACHE, 0)) == (EACCES, 0)
    assert mmuext(domain, (abi.MMUEXT_TLB_FLUSH_LOCAL, 0), domid=5) == (ESRCH, 0)
    assert mmuext(domain, (abi.MMUEXT_INVLPG_LOCAL, 0), (abi.MMUEXT_TLB_FLUSH_ALL, 0)) == (0, 2)


def test_new_baseptr_switches_the_address_space(domain):
    """A copy of the L4 whose first slot is cleared: after NEW_BASEPTR the low 512 GiB are unmapped;
    switching back restores them, and the copy's references are released on unpin."""
    vcpu, page = domain.vcpu, window(domain)
    copy = bytearray(vcpu.read_frame(l4(domain)))
    copy[0:8] = bytes(8)
    vcpu.write_frame(FREE, bytes(copy))
    operations = ((abi.MMUEXT_PIN_L4_TABLE, FREE), (abi.MMUEXT_NEW_BASEPTR, FREE))
    assert mmuext(domain, *operations, count_done=False) == (0, None)
    assert domain.memory.cr3 == FREE and vcpu.mapping(page) is None
    assert domain.memory.page_type(l4(domain)) == ("L4", 1)          # pinned only
    domain.memory.new_baseptr(l4(domain))          # the guest has nothing mapped to pass arguments from
    domain.memory.unpin(FREE)
    assert vcpu.mapping(page) is not None and domain.memory.page_type(FREE) == ("none", 0)


def test_mmu_update_writes_table_entries_and_the_m2p_table(domain):
    vcpu, page = domain.vcpu, window(domain)
    l1, index = domain.memory.l1_slot(page)
    entry = (l1 << 12) + index * 8
    assert mmu_update(domain, (entry | abi.MMU_NORMAL_PT_UPDATE, (FREE << 12) | DATA)) == (0, 1)
    assert vcpu.mapping(page).frame == FREE
    assert mmu_update(domain, ((FREE << 12) | abi.MMU_MACHPHYS_UPDATE, 77)) == (0, 1)
    m2p = domain.image.m2p_frames[0]
    assert struct.unpack_from("<Q", vcpu.read_frame(m2p + FREE * 8 // 4096), FREE * 8 % 4096) == (77,)
    assert mmu_update(domain, ((m2p << 12) | abi.MMU_MACHPHYS_UPDATE, 1)) == (EINVAL, 0)   # not the domain's
    l4_slot_256 = (l4(domain) << 12) + 256 * 8
    assert mmu_update(domain, (l4_slot_256, (FREE << 12) | PRESENT)) == (EINVAL, 0)   # Xen's slots
    assert mmu_update(domain, (entry | 3, 0)) == (ENOSYS, 0)
    assert mmu_update(domain, (entry, 0), domid=3) == (ESRCH, 0)
    assert call(domain, abi.HYPERVISOR_mmu_update, 0x400000003000, 1, 0, abi.DOMID_SELF) == EFAULT


def test_hypercall_pointers_into_xens_area_fault_though_the_guest_can_read_it(domain):
    assert call(domain, abi.HYPERVISOR_console_io, abi.CONSOLEIO_write, 8, abi.MACH2PHYS_VIRT_START) == EFAULT


def test_a_writable_alias_crashes_the_domain_with_a_one_line_report(domain):
    vcpu, page = domain.vcpu, window(domain)
    other = scratch(domain)
    frame = domain.image.layout.frame(other)
    vcpu.set_reg("rax", abi.HYPERVISOR_update_va_mapping)
    vcpu.set_reg("rdi", page)
    vcpu.set_reg("rsi", (frame << 12) | DATA)
    vcpu.set_reg("rdx", abi.UVMF_INVLPG)
    domain.handle_exit(Exit(ExitReason.HYPERCALL, vcpu.icount, vcpu.pc))
    assert domain.state == RunState.CRASHED
    assert str(domain.crash_report).startswith(
        f"domain crashed: machine frame {frame:#x} is mapped at {other:#x} and would also be mapped at {page:#x}")
