"""The ELF domain builder on real PV images assembled and linked with gcc at test time.

Each image is a small `.S` carrying Xen notes (type numbers from the real xen/elfnote.h) plus a
linker script; the tests check the layout, the hypercall page (disassembled with capstone), the
start_info a guest will read, notes from a PT_NOTE segment and from an unallocated SHT_NOTE
section, and the one-line BuildError of every kind of bad image.
"""

import ctypes
import hashlib
import shutil
import subprocess
from pathlib import Path

import capstone
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from elftools.elf.elffile import ELFFile

from xen import abi
import struct

from xen.builder import PAGE_SIZE, BuildError, DomainImage, build_domain

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or not Path("/usr/include/xen/elfnote.h").exists(),
    reason="needs gcc and the Xen public headers (libxen-dev)",
)

REPO = Path(__file__).resolve().parents[2]
KBDSHELL = REPO / "guests" / "kbdshell" / "kbdshell.elf"
MEMORY = 1 << 20
HIGH_BASE = 0xFFFFFFFF80000000

STANDARD_NOTES = {
    "XEN_ELFNOTE_GUEST_OS": '.asciz "testos"',
    "XEN_ELFNOTE_XEN_VERSION": '.asciz "xen-3.0"',
    "XEN_ELFNOTE_LOADER": '.asciz "generic"',
    "XEN_ELFNOTE_HYPERCALL_PAGE": ".quad hypercall_page",
    "XEN_ELFNOTE_FEATURES": '.asciz "!writable_page_tables"',
}

SOURCE = """\
#include <xen/elfnote.h>
    .section .note.Xen, "{note_flags}", @note
{notes}
    .text
    .globl _start
_start:
    mov %rsi, %rdi
second_entry:
    jmp _start
    .balign 4096
hypercall_page:
    .skip 4096
    .data
message:
    .ascii "data bytes"
    .bss
    .skip {bss_size}
"""

NOTE = """\
    .balign 4
    .long 2f - 1f
    .long 4f - 3f
    .long {note_type}
1:  .asciz "Xen"
2:  .balign 4
3:  {desc}
4:  .balign 4
"""

LINKER_SCRIPT = """\
ENTRY(_start)
SECTIONS {{
    . = {base:#x};
    .text : {{ *(.text) }}
    .data : {{ *(.data) }}
    .bss : {{ *(.bss) }}
}}
"""


def assemble(tmp_path: Path, notes=STANDARD_NOTES, *, note_flags="a", base=0x1000, bss_size=0x3000, extra_flags=()):
    """Link a PV test image; return its path."""
    source = tmp_path / "guest.S"
    note_text = "".join(NOTE.format(note_type=name, desc=desc) for name, desc in notes.items())
    source.write_text(SOURCE.format(note_flags=note_flags, notes=note_text, bss_size=bss_size))
    script = tmp_path / "guest.ld"
    script.write_text(LINKER_SCRIPT.format(base=base))
    image = tmp_path / "guest.elf"
    subprocess.run(
        ["gcc", "-nostdlib", "-static", "-no-pie", *extra_flags, "-T", script,
         "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments", "-o", image, source],
        check=True, capture_output=True,
    )
    return image


def symbol(image: Path, name: str) -> int:
    with open(image, "rb") as file:
        return ELFFile(file).get_section_by_name(".symtab").get_symbol_by_name(name)[0]["st_value"]


def memory_after(domain: DomainImage, console_evtchn=1, store_evtchn=2) -> dict[int, int]:
    """Guest memory after the domain's writes, as a sparse {address: byte} map."""
    memory = {}
    for address, data in domain.memory_writes(console_evtchn=console_evtchn, store_evtchn=store_evtchn):
        memory.update(zip(range(address, address + len(data)), data))
    return memory


def read(memory: dict[int, int], address: int, length: int) -> bytes:
    return bytes(memory.get(address + i, 0) for i in range(length))


@pytest.fixture(scope="module")
def standard_image(tmp_path_factory) -> Path:
    return assemble(tmp_path_factory.mktemp("standard"))


@pytest.fixture(scope="module")
def standard(standard_image) -> DomainImage:
    return build_domain(standard_image, MEMORY, cmdline="console=hvc0 debug")


# ---------------------------------------------------------------- layout


def test_layout_is_xens_start_of_day_layout(standard, standard_image):
    """xen.h "Start-of-day memory layout": image, p2m list, start_info, page tables, stack, each
    page-aligned and packed; the region ends on a 4 MiB boundary (clipped here to 1 MiB of memory)."""
    layout = standard.layout
    bss_end = symbol(standard_image, "message") + len("data bytes")  # .bss follows .data
    assert layout.virt_base == 0
    assert layout.image_start == 0x1000
    assert layout.image_end % PAGE_SIZE == 0 and bss_end + 0x3000 <= layout.image_end < bss_end + 0x3000 + PAGE_SIZE
    assert layout.p2m == layout.image_end
    assert layout.start_info == layout.p2m + PAGE_SIZE == standard.initial_rsi   # 256 entries: one page
    assert layout.page_tables == layout.start_info + PAGE_SIZE
    assert layout.nr_pt_frames == 1 + 1 + 1 + 2          # L4, L3, L2, two L1s for 4 MiB
    assert layout.boot_stack == layout.page_tables + layout.nr_pt_frames * PAGE_SIZE
    assert layout.boot_stack_top == layout.boot_stack + PAGE_SIZE == standard.initial_rsp
    assert layout.bootstrap_end == MEMORY
    assert standard.nr_pages == MEMORY // PAGE_SIZE


def test_special_frames_follow_the_domains_pages(standard):
    nr_pages = MEMORY // PAGE_SIZE
    assert (standard.console_frame, standard.shared_info_frame, standard.store_frame) == \
        (nr_pages, nr_pages + 1, nr_pages + 2)
    assert standard.extra_frames.start == nr_pages + 3 and len(standard.extra_frames) > 0
    assert standard.m2p_frames.start == standard.extra_frames.stop
    assert standard.frame_count == standard.m2p_frames.stop
    assert len(standard.m2p_frames) * PAGE_SIZE >= standard.frame_count * 8


def machine(memory: dict[int, int], frame: int) -> bytes:
    return read(memory, frame * PAGE_SIZE, PAGE_SIZE)


def walk(memory: dict[int, int], l4_frame: int) -> dict[int, tuple[int, bool]]:
    """Virtual page -> (frame, writable) through 4-level tables in machine memory."""
    pages = {}

    def table(frame: int, level: int, base: int, writable: bool) -> None:
        for index, entry in enumerate(struct.unpack("<512Q", machine(memory, frame))):
            if entry & 1:
                address = base + (index << (12 + 9 * (level - 1)))
                if level == 4 and index >= 256:
                    address |= 0xFFFF000000000000         # canonical upper half
                target, rw = (entry & 0x000FFFFFFFFFF000) >> 12, writable and bool(entry & 2)
                if level == 1:
                    pages[address] = (target, rw)
                else:
                    table(target, level - 1, address, rw)

    table(l4_frame, 4, 0, True)
    return pages


def test_bootstrap_page_tables_map_the_region_one_to_one_tables_read_only(standard):
    memory = memory_after(standard)
    layout = standard.layout
    info = abi.StartInfo.from_buffer_copy(read(memory, standard.initial_rsi, ctypes.sizeof(abi.StartInfo)))
    assert info.pt_base == layout.page_tables and info.nr_pt_frames == layout.nr_pt_frames
    pages = walk(memory, layout.frame(info.pt_base))
    tables = range(layout.page_tables, layout.page_tables + layout.nr_pt_frames * PAGE_SIZE, PAGE_SIZE)
    assert pages == {address: (address // PAGE_SIZE, address not in tables)
                     for address in range(0, layout.bootstrap_end, PAGE_SIZE)}


def test_p2m_list_and_machine_to_phys_table(standard):
    memory = memory_after(standard)
    info = abi.StartInfo.from_buffer_copy(read(memory, standard.initial_rsi, ctypes.sizeof(abi.StartInfo)))
    assert info.mfn_list == standard.layout.p2m
    p2m = struct.unpack(f"<{standard.nr_pages}Q", read(memory, info.mfn_list, standard.nr_pages * 8))
    assert p2m == tuple(range(standard.nr_pages))
    m2p_bytes = read(memory, standard.m2p_frames.start * PAGE_SIZE, standard.frame_count * 8)
    m2p = struct.unpack(f"<{standard.frame_count}Q", m2p_bytes)
    assert all(m2p[p2m[pfn]] == pfn for pfn in range(standard.nr_pages))
    assert set(m2p[standard.nr_pages:]) == {(1 << 64) - 1}     # frames that are no pfn of the domain


def test_image_without_hypercall_page_note_builds(tmp_path):
    """HYPERCALL_PAGE is optional (GRUB issues `syscall` itself): nothing is written for it."""
    domain = build_domain(assemble(tmp_path, without("XEN_ELFNOTE_HYPERCALL_PAGE")), MEMORY)
    assert domain.layout.hypercall_page is None
    assert read(memory_after(domain), 0x2000, 16) == bytes(16)


UNALIGNED_SCRIPT = """\
ENTRY(_start)
PHDRS {{ text PT_LOAD FLAGS(5); data PT_LOAD FLAGS(6); note PT_NOTE; }}
SECTIONS {{
    . = 0x1000;
    .text : {{ *(.text) }} :text
    .note.Xen : {{ *(.note.Xen) }} :text :note
    . = . + 0x1f0;
    .data : {{ *(.data) }} :data
    .bss : {{ *(.bss) }} :data
}}
"""


def test_segments_that_share_a_page_load(tmp_path):
    """GRUB's second PT_LOAD starts at 0x41e1f0, in the page its first one ends in."""
    source = tmp_path / "guest.S"
    note_text = "".join(NOTE.format(note_type=name, desc=desc) for name, desc in STANDARD_NOTES.items())
    source.write_text(SOURCE.format(note_flags="a", notes=note_text, bss_size=0x100))
    script = tmp_path / "guest.ld"
    script.write_text(UNALIGNED_SCRIPT.format())
    image = tmp_path / "guest.elf"
    subprocess.run(["gcc", "-nostdlib", "-static", "-no-pie", "-T", script, "-Wl,-z,max-page-size=16",
                    "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments", "-o", image, source],
                   check=True, capture_output=True)
    domain = build_domain(image, MEMORY)
    code, data = sorted(domain.segments, key=lambda segment: segment.address)
    assert data.address % PAGE_SIZE and data.address // PAGE_SIZE == (code.address + len(code.data) - 1) // PAGE_SIZE
    memory = memory_after(domain)
    assert read(memory, symbol(image, "message"), 10) == b"data bytes"
    assert read(memory, symbol(image, "_start"), 3) == bytes.fromhex("4889f7")
    assert data.address // PAGE_SIZE not in domain.read_only_frames()   # the shared page holds data


def test_entry_defaults_to_the_elf_entry_point(standard, standard_image):
    assert standard.entry == symbol(standard_image, "_start")
    assert standard.notes.entry is None


def test_entry_note_overrides_the_elf_entry_point(tmp_path):
    image = assemble(tmp_path, {**STANDARD_NOTES, "XEN_ELFNOTE_ENTRY": ".quad second_entry"})
    domain = build_domain(image, MEMORY)
    assert domain.entry == domain.notes.entry == symbol(image, "second_entry")


def test_segments_hold_file_bytes_and_zeroed_bss(standard, standard_image):
    memory = memory_after(standard)
    assert read(memory, symbol(standard_image, "message"), 10) == b"data bytes"
    assert read(memory, symbol(standard_image, "_start"), 3) == bytes.fromhex("4889f7")  # mov %rsi,%rdi
    last = max(standard.segments, key=lambda segment: segment.address)
    assert last.address + len(last.data) > symbol(standard_image, "message") + 0x3000
    assert last.data.endswith(bytes(0x3000))


def test_image_hash_is_sha256_of_the_file(standard, standard_image):
    assert standard.image_sha256 == hashlib.sha256(standard_image.read_bytes()).hexdigest()
    assert build_domain(standard_image.read_bytes(), MEMORY) == build_domain(standard_image, MEMORY)


def test_virt_base_and_paddr_offset_place_a_high_linked_image(tmp_path):
    notes = {**STANDARD_NOTES, "XEN_ELFNOTE_VIRT_BASE": f".quad {HIGH_BASE:#x}",
             "XEN_ELFNOTE_PADDR_OFFSET": f".quad {HIGH_BASE:#x}"}
    image = assemble(tmp_path, notes, base=HIGH_BASE + 0x2000)
    domain = build_domain(image, MEMORY)
    layout = domain.layout
    assert layout.virt_base == HIGH_BASE
    assert layout.image_start == HIGH_BASE + 0x2000
    assert domain.entry == symbol(image, "_start")
    assert layout.hypercall_page == symbol(image, "hypercall_page")
    assert layout.bootstrap_end == HIGH_BASE + MEMORY
    memory = memory_after(domain)
    pages = walk(memory, domain.l4_frame)
    assert pages[layout.image_start] == (2, True) and pages[HIGH_BASE] == (0, True)
    info = abi.StartInfo.from_buffer_copy(domain.start_info(console_evtchn=1, store_evtchn=2))
    assert info.console.domU.mfn == domain.console_frame
    assert info.shared_info == domain.shared_info_frame * PAGE_SIZE
    assert info.pt_base == layout.page_tables and info.mfn_list == layout.p2m


def test_paddr_offset_defaults_to_zero_as_in_xen(tmp_path):
    """With notes, libelf defaults PADDR_OFFSET to 0: p_paddr is then an offset from VIRT_BASE."""
    notes = {**STANDARD_NOTES, "XEN_ELFNOTE_VIRT_BASE": f".quad {HIGH_BASE:#x}"}
    image = assemble(tmp_path, notes, base=HIGH_BASE + 0x2000)
    expected = r"^segment 0 \[0xffffffff00002000, 0x\w+\) is outside guest memory \[0xffffffff80000000, "
    with pytest.raises(BuildError, match=expected):
        build_domain(image, MEMORY)


# ---------------------------------------------------------------- hypercall page


def disassemble(code: bytes) -> list[tuple[str, str]]:
    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return [(insn.mnemonic, insn.op_str) for insn in decoder.disasm(code, 0)]


def test_hypercall_page_is_filled_as_xen_does(standard, standard_image):
    page = standard.hypercall_page
    assert len(page) == PAGE_SIZE
    for number in range(PAGE_SIZE // 32):
        entry = page[number * 32 : (number + 1) * 32]
        if number == abi.HYPERVISOR_iret:
            assert entry[:11] == bytes.fromhex("51415350b8170000000f05")
            assert disassemble(entry[:11]) == [
                ("push", "rcx"), ("push", "r11"), ("push", "rax"), ("mov", "eax, 0x17"), ("syscall", "")]
            assert entry[11:] == b"\xcc" * 21
        else:
            number_bytes = number.to_bytes(4, "little")
            assert entry[:14] == bytes.fromhex("514153b8") + number_bytes + bytes.fromhex("0f05415b59c3")
            assert disassemble(entry[:14]) == [
                ("push", "rcx"), ("push", "r11"), ("mov", f"eax, {number:#x}" if number > 9 else f"eax, {number}"),
                ("syscall", ""), ("pop", "r11"), ("pop", "rcx"), ("ret", "")]
            assert entry[14:] == b"\xcc" * 18
    assert standard.layout.hypercall_page == symbol(standard_image, "hypercall_page")
    memory = memory_after(standard)
    assert read(memory, standard.layout.hypercall_page, PAGE_SIZE) == page  # written over the image's zeroes


# ---------------------------------------------------------------- start_info


def test_start_info_is_what_a_guest_reads(standard):
    memory = memory_after(standard, console_evtchn=3, store_evtchn=4)
    layout = standard.layout
    info = abi.StartInfo.from_buffer_copy(read(memory, standard.initial_rsi, ctypes.sizeof(abi.StartInfo)))
    assert info.magic == b"xen-3.0-x86_64"
    assert info.nr_pages == MEMORY // PAGE_SIZE
    assert info.shared_info == standard.shared_info_frame * PAGE_SIZE     # a machine address (xen.h)
    assert info.flags == 0
    assert info.store_mfn == standard.store_frame and info.store_evtchn == 4
    assert info.console.domU.mfn == standard.console_frame and info.console.domU.evtchn == 3
    assert (info.pt_base, info.nr_pt_frames, info.mfn_list) == (layout.page_tables, layout.nr_pt_frames, layout.p2m)
    assert (info.mod_start, info.mod_len) == (0, 0)
    assert bytes(info.cmd_line).split(b"\0")[0] == b"console=hvc0 debug"
    assert (info.first_p2m_pfn, info.nr_p2m_frames) == (0, 0)


# ---------------------------------------------------------------- notes


def test_notes_from_a_pt_note_segment(standard, standard_image):
    with open(standard_image, "rb") as file:
        assert any(segment["p_type"] == "PT_NOTE" for segment in ELFFile(file).iter_segments())
    notes = standard.notes
    assert (notes.guest_os, notes.xen_version, notes.loader) == ("testos", "xen-3.0", "generic")
    assert notes.features == "!writable_page_tables"
    assert (notes.virt_base, notes.paddr_offset) == (0, 0)


def test_notes_from_an_unallocated_note_section(tmp_path, standard):
    image = assemble(tmp_path, note_flags="")
    with open(image, "rb") as file:
        elf = ELFFile(file)
        assert not any(segment["p_type"] == "PT_NOTE" for segment in elf.iter_segments())
        assert elf.get_section_by_name(".note.Xen")["sh_flags"] & 0x2 == 0  # not SHF_ALLOC
    domain = build_domain(image, MEMORY)
    assert domain.notes == standard.notes
    assert domain.layout.hypercall_page == symbol(image, "hypercall_page")


def test_features_note_is_optional(tmp_path):
    notes = {name: desc for name, desc in STANDARD_NOTES.items() if name != "XEN_ELFNOTE_FEATURES"}
    assert build_domain(assemble(tmp_path, notes), MEMORY).notes.features is None


# ---------------------------------------------------------------- bad input


def without(note: str) -> dict[str, str]:
    return {name: desc for name, desc in STANDARD_NOTES.items() if name != note}


@pytest.mark.parametrize("note", ["XEN_ELFNOTE_GUEST_OS",
                                  "XEN_ELFNOTE_XEN_VERSION", "XEN_ELFNOTE_LOADER"])
def test_missing_required_note_is_named(tmp_path, note):
    with pytest.raises(BuildError, match=f"^not a Xen PV image: the {note} note is missing$"):
        build_domain(assemble(tmp_path, without(note)), MEMORY)


def test_image_without_xen_notes(tmp_path):
    with pytest.raises(BuildError, match="^not a Xen PV image: it has no Xen ELF notes$"):
        build_domain(assemble(tmp_path, {}), MEMORY)


def test_wrong_xen_version_and_loader(tmp_path):
    old = {**STANDARD_NOTES, "XEN_ELFNOTE_XEN_VERSION": '.asciz "xen-2.0"'}
    with pytest.raises(BuildError, match="^XEN_ELFNOTE_XEN_VERSION is 'xen-2.0'; only 'xen-3.0' is supported$"):
        build_domain(assemble(tmp_path, old), MEMORY)
    other = {**STANDARD_NOTES, "XEN_ELFNOTE_LOADER": '.asciz "bsd"'}
    with pytest.raises(BuildError, match="^XEN_ELFNOTE_LOADER is 'bsd'; only 'generic' is supported$"):
        build_domain(assemble(tmp_path, other), MEMORY)


def test_not_an_elf(tmp_path):
    text = tmp_path / "kernel.txt"
    text.write_text("just text\n")
    with pytest.raises(BuildError, match="^not an ELF file$"):
        build_domain(text, MEMORY)
    with pytest.raises(BuildError, match="^not an ELF file$"):
        build_domain(b"", MEMORY)


def test_unreadable_path(tmp_path):
    with pytest.raises(BuildError, match=r"^cannot read .*missing\.elf: No such file or directory$"):
        build_domain(tmp_path / "missing.elf", MEMORY)


def test_32_bit_elf(tmp_path):
    source = tmp_path / "start.S"
    source.write_text(".globl _start\n_start: nop\n")
    subprocess.run(["gcc", "-m32", "-nostdlib", "-static", "-o", tmp_path / "k32", source], check=True)
    with pytest.raises(BuildError, match="^not an ELF64 file"):
        build_domain(tmp_path / "k32", MEMORY)


def test_other_machine(standard_image):
    data = bytearray(standard_image.read_bytes())
    data[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
    with pytest.raises(BuildError, match=r"^not an x86-64 ELF file \(e_machine 183\)$"):
        build_domain(bytes(data), MEMORY)


@pytest.mark.parametrize("length", [40, 200, -100])
def test_truncated_file(standard_image, length):
    data = standard_image.read_bytes()
    with pytest.raises(BuildError, match="^truncated file: "):
        build_domain(data[:length], MEMORY)


def test_segment_beyond_guest_memory_says_how_much_memory_it_needs(tmp_path):
    image = assemble(tmp_path, base=0x400000)
    with pytest.raises(BuildError, match=r"^image too big for the memory: segment \d+ \[0x400000, 0x\w+\) alone "
                                         r"needs more than 41\d\d KiB of guest memory, the domain has 1024 KiB$"):
        build_domain(image, MEMORY)


def test_image_too_big_for_memory(tmp_path):
    image = assemble(tmp_path, bss_size=0xFA000)
    with pytest.raises(BuildError, match=r"^image too big for the memory: .* need \d+ KiB, the domain has 1024 KiB$"):
        build_domain(image, MEMORY)
    assert build_domain(image, 2 * MEMORY).layout.image_end > 0xFA000


def test_hypercall_page_not_page_aligned(tmp_path):
    image = assemble(tmp_path, {**STANDARD_NOTES, "XEN_ELFNOTE_HYPERCALL_PAGE": ".quad hypercall_page + 8"})
    with pytest.raises(BuildError, match=r"^the hypercall page 0x\w+8 is not page-aligned$"):
        build_domain(image, MEMORY)


def test_hypercall_page_outside_the_image(tmp_path):
    image = assemble(tmp_path, {**STANDARD_NOTES, "XEN_ELFNOTE_HYPERCALL_PAGE": ".quad 0x80000"})
    with pytest.raises(BuildError, match=r"^the hypercall page 0x80000 is outside the image \[0x1000, 0x\w+\)$"):
        build_domain(image, MEMORY)


def test_entry_outside_the_image(tmp_path):
    image = assemble(tmp_path, {**STANDARD_NOTES, "XEN_ELFNOTE_ENTRY": ".quad 0x90000"})
    with pytest.raises(BuildError, match=r"^entry point 0x90000 is outside the image"):
        build_domain(image, MEMORY)


def test_command_line_too_long(standard_image):
    with pytest.raises(BuildError, match="^command line is 1024 bytes; Xen allows at most 1023$"):
        build_domain(standard_image, MEMORY, cmdline="x" * 1024)
    assert build_domain(standard_image, MEMORY, cmdline="x" * 1023).cmdline == "x" * 1023


def test_memory_size_must_be_whole_pages(standard_image):
    with pytest.raises(BuildError, match="^guest memory must be a positive multiple of 4096 bytes, not 5000$"):
        build_domain(standard_image, 5000)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(corruption=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=8))
def test_corrupted_image_builds_or_fails_with_build_error(standard_image, corruption):
    data = bytearray(standard_image.read_bytes())
    for position, value in corruption:
        data[position % len(data)] = value
    try:
        build_domain(bytes(data), MEMORY)
    except BuildError as error:
        assert "\n" not in str(error)


# ---------------------------------------------------------------- the real guest


@pytest.mark.skipif(not KBDSHELL.exists(), reason="guests/kbdshell/kbdshell.elf is not built (make guests)")
def test_kbdshell_builds():
    domain = build_domain(KBDSHELL, 16 << 20)
    assert domain.notes.xen_version == "xen-3.0" and domain.notes.loader == "generic"
    assert domain.notes.guest_os
    layout = domain.layout
    assert layout.image_start <= layout.hypercall_page < layout.image_end
    assert layout.image_start <= domain.entry < layout.image_end
    assert layout.image_end <= layout.start_info < layout.boot_stack_top <= layout.bootstrap_end
