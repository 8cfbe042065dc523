"""The hypercall page's symbol file (stub/hypercall_frames.py): its code is the page the domain builder
writes, byte for byte, and every entry has a symbol named after its hypercall."""
from __future__ import annotations

from elftools.elf.elffile import ELFFile

from stub.hypercall_frames import library_list, symbol_file
from xen import abi
from xen.builder import build_domain


def test_the_symbol_file_describes_exactly_the_page_the_builder_writes(kbdshell_elf):
    page = build_domain(kbdshell_elf.read_bytes(), 2 << 20).hypercall_page
    path = symbol_file(page)
    assert path is not None
    with path.open("rb") as file:
        elf = ELFFile(file)
        assert elf.get_section_by_name(".text").data() == page
        symbols = {symbol.name: symbol["st_value"] for symbol in elf.get_section_by_name(".symtab").iter_symbols()}
        assert elf.get_section_by_name(".eh_frame").data_size > 0
    assert symbols["xen_hypercall_sched_op"] == abi.HYPERVISOR_sched_op * 32
    assert symbols["xen_hypercall_iret"] == abi.HYPERVISOR_iret * 32


def test_no_symbol_file_for_a_page_it_would_not_describe(kbdshell_elf):
    page = bytearray(build_domain(kbdshell_elf.read_bytes(), 2 << 20).hypercall_page)
    page[0] = 0x90
    assert symbol_file(bytes(page)) is None


def test_the_library_list_gives_the_file_at_the_page_address(tmp_path):
    listing = library_list(tmp_path / 'a"b&c', 0x1000).decode()
    assert listing == (f'<library-list><library name="{tmp_path}/a&quot;b&amp;c"><segment address="0x1000"/>'
                       '</library></library-list>')
