"""The vCPU's machine frames and their realisation at guest-virtual addresses (the engine has no MMU).

Checked on the real engine: a frame keeps its contents wherever it is mapped or when it is mapped
nowhere; a remapped code page runs its new code (the engine's translated code is keyed by address
and not flushed on a remap, docs/engine.md, so the wrapper must discard it); a writable alias is
refused with a report naming the frame and both addresses; read-only aliases show every write.
"""
from __future__ import annotations

import subprocess

import pytest

from xen.vcpu import AliasError, ExitReason, GuestMemoryError, VCpu

CODE = 0x400000


def assemble(tmp_path, text: str) -> bytes:
    source, obj, binary = tmp_path / "code.S", tmp_path / "code.o", tmp_path / "code.bin"
    source.write_text(".text\n" + text + "\n")
    subprocess.run(["as", "--64", "-o", obj, source], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", obj, binary], check=True)
    return binary.read_bytes()


def run_to_hypercall(vcpu: VCpu, pc: int) -> int:
    vcpu.pc = pc
    exit = vcpu.run(vcpu.icount + 100)
    assert exit.reason == ExitReason.HYPERCALL, exit
    return vcpu.reg("rax")


def test_a_remapped_code_page_runs_its_new_code(tmp_path):
    vcpu = VCpu(4)
    vcpu.write_frame(0, assemble(tmp_path, "mov $1, %eax; syscall").ljust(4096, b"\x90"))
    vcpu.write_frame(1, assemble(tmp_path, "mov $7, %eax; syscall").ljust(4096, b"\x90"))
    vcpu.map_page(CODE, 0, writable=False)
    assert run_to_hypercall(vcpu, CODE) == 1
    vcpu.map_page(CODE, 1, writable=False)       # same address, other frame: the old translation is stale
    assert run_to_hypercall(vcpu, CODE) == 7
    vcpu.unmap_page(CODE)
    vcpu.pc = CODE
    assert vcpu.run(vcpu.icount + 10).reason == ExitReason.FAULT       # unmapped code no longer runs
    vcpu.map_page(CODE, 0, writable=False)
    assert run_to_hypercall(vcpu, CODE) == 1


def test_a_hypervisor_write_over_translated_code_takes_effect(tmp_path):
    vcpu = VCpu(2)
    vcpu.write_frame(0, assemble(tmp_path, "mov $1, %eax; syscall").ljust(4096, b"\x90"))
    vcpu.map_page(CODE, 0, writable=False)
    assert run_to_hypercall(vcpu, CODE) == 1
    vcpu.write_frame(0, assemble(tmp_path, "mov $3, %eax; syscall").ljust(4096, b"\x90"))   # a restore does this
    assert run_to_hypercall(vcpu, CODE) == 3


def test_frames_keep_their_contents_when_unmapped_and_moved():
    vcpu = VCpu(3)
    vcpu.map_page(0x10000, 2, writable=True)
    vcpu.write(0x10123, b"guest data")
    vcpu.unmap_page(0x10000)
    assert vcpu.read_frame(2)[0x123:0x12d] == b"guest data"
    with pytest.raises(GuestMemoryError):
        vcpu.read(0x10123, 4)
    vcpu.map_page(0x7000, 2, writable=True)
    assert vcpu.read(0x7123, 10) == b"guest data"
    assert vcpu.machine.read(2 * 4096 + 0x123, 10) == b"guest data"


def test_a_writable_alias_is_refused_naming_the_frame_and_both_addresses():
    vcpu = VCpu(3)
    vcpu.map_page(0x10000, 1, writable=True)
    with pytest.raises(AliasError, match=r"^machine frame 0x1 is mapped at 0x10000 and would also be mapped at "
                                         r"0x20000, one of them writable"):
        vcpu.map_page(0x20000, 1, writable=False)
    assert vcpu.mapping(0x20000) is None and vcpu.mapping(0x10000).writable


def test_read_only_aliases_show_every_hypervisor_write():
    vcpu = VCpu(3)
    vcpu.map_page(0x10000, 1, writable=False)
    vcpu.map_page(0x20000, 1, writable=False)
    vcpu.machine.write(4096 + 8, b"both")
    assert vcpu.read(0x10008, 4) == vcpu.read(0x20008, 4) == b"both"
    with pytest.raises(GuestMemoryError):
        vcpu.write_for_guest(0x10008, b"nope")     # copy_to_guest through a read-only mapping: -EFAULT


def test_dirty_tracking_is_per_frame_whatever_the_mapping():
    vcpu = VCpu(4)
    vcpu.map_page(0x10000, 3, writable=True)
    generation = vcpu.track_dirty_pages()
    vcpu.write(0x10000, b"x")
    vcpu.machine.write(2 * 4096, b"y")       # a frame mapped nowhere
    assert vcpu.pages_written_since(generation) == {2, 3}


def test_an_instruction_across_into_a_page_made_executable_later_runs(tmp_path):
    """A block translated while the next page could not be executed ends in the failed fetch; once
    the guest maps that page executable the instruction runs (the engine keeps cut-short blocks)."""
    vcpu = VCpu(4)
    code = assemble(tmp_path, "mov $7, %eax; syscall")          # 5 + 2 bytes: starts 3 bytes before the end
    vcpu.write_frame(0, bytes(4096 - 3 - 8) + b"\x90" * 8 + code[:3])
    vcpu.write_frame(1, code[3:].ljust(4096, b"\x90"))
    vcpu.map_page(CODE, 0, writable=False)
    vcpu.map_page(CODE + 4096, 1, writable=False, executable=False)
    start = CODE + 4096 - 3 - 8
    vcpu.pc = start
    assert vcpu.run(vcpu.icount + 100).reason == ExitReason.FAULT    # the second page is no-execute
    vcpu.map_page(CODE + 4096, 1, writable=False, executable=True)
    assert run_to_hypercall(vcpu, start) == 7
    vcpu.add_breakpoint(start)                                  # and single steps over it, lifted
    vcpu.pc = start
    assert vcpu.step().reason == ExitReason.LIMIT and vcpu.pc == start + 1


def test_a_mapping_change_undone_still_counts_as_a_change():
    """Reverse watches skip replay that changed no mapping (stub/timeline.py): a frame switched away and
    back leaves the map's hash as it was, so the count of changes is what tells it."""
    vcpu = VCpu(3)
    vcpu.map_page(0x10000, 1, writable=True)
    digest, changes = vcpu.mapping_digest(), vcpu.mapping_changes
    vcpu.map_page(0x10000, 2, writable=True)
    vcpu.write(0x10000, b"written through the other frame")
    vcpu.map_page(0x10000, 1, writable=True)
    assert vcpu.mapping_digest() == digest
    assert vcpu.mapping_changes > changes
    vcpu.map_page(0x10000, 1, writable=True)         # the same mapping again changes nothing
    assert vcpu.mapping_changes == changes + 4


def test_a_discard_of_translations_keeps_every_frame_written_since_memory_was_zero(tmp_path):
    """With dirty tracking begun on all-zero memory (a new domain), a discard of translated code reads
    back only the frames noted as written: a guest store, a hypervisor write, and nothing else lost."""
    vcpu = VCpu(8)
    vcpu.track_dirty_pages(memory_is_zero=True)
    store = assemble(tmp_path, f"movabs $0x1122334455667788, %rax; movq %rax, {CODE + 3 * 4096 + 0x40}; "
                               "mov $1, %eax; syscall")
    vcpu.write_frame(0, store.ljust(4096, b"\x90"))
    vcpu.write_frame(1, assemble(tmp_path, "mov $7, %eax; syscall").ljust(4096, b"\x90"))
    for frame in range(8):
        vcpu.map_page(CODE + frame * 4096, frame, writable=frame >= 2)
    vcpu.write_frame_bytes(5, 0x80, b"hypervisor")
    assert run_to_hypercall(vcpu, CODE) == 1                     # the guest's store into frame 3
    vcpu.unmap_page(CODE + 4096)
    vcpu.map_page(CODE, 1, writable=False)                       # code remapped: its translations go
    assert run_to_hypercall(vcpu, CODE) == 7
    assert vcpu.read(CODE + 3 * 4096 + 0x40, 8) == (0x1122334455667788).to_bytes(8, "little")
    assert vcpu.read_frame_bytes(5, 0x80, 10) == b"hypervisor"
    assert all(vcpu.read_frame(frame) == bytes(4096) for frame in (2, 4, 6, 7))
