"""The ELF domain builder: turns a Xen PV x86-64 kernel image into what a new domain's memory holds.

Owns the image checks, the Xen ELF notes, Xen's start-of-day memory layout and the initial contents
of the bootstrap pages. Pure: it reads bytes and returns a DomainImage; xen/domain.py writes that into
machine memory and xen/mm.py takes over the page tables. Invariant: a DomainImage is only ever made
from an image that passed every check, and every frame it names exists; bad input raises BuildError
with one line.

Loading follows Xen's libelf for PV guests:
- Xen notes (owner "Xen") come from the PT_NOTE segments, or, when these have none, from the
  SHT_NOTE sections (unallocated ones included). Required: GUEST_OS, XEN_VERSION ("xen-3.0"),
  LOADER ("generic"); HYPERCALL_PAGE is optional (a guest may issue `syscall` itself); ENTRY
  defaults to the ELF entry point, VIRT_BASE to 0 and PADDR_OFFSET to 0.
- A PT_LOAD segment is loaded at virtual address p_paddr - PADDR_OFFSET + VIRT_BASE; segments need
  not be page-aligned (two may share a page).

Memory follows the "Start-of-day memory layout" of xen/xen.h, laid out as libxenguest's
xc_dom_x86.c does for a 64-bit PV guest. Pseudo-physical frame N (pfn) is at VIRT_BASE + N * 4096
in the bootstrap region, and machine frame numbers equal pfns for the domain's own pages (the p2m
list is the identity; real Xen's may be any permutation). In order, each element page-aligned:

    the kernel image          PT_LOAD segments; image end = end of the highest one, page-aligned
    mfn_list                  the p2m list: nr_pages 8-byte machine frame numbers
    start_info                initial %rsi
    bootstrap page tables     pt_base (= the L4, then L3s, L2s, L1s), nr_pt_frames; mapped read-only
    boot stack                one page; initial %rsp = its top
    >= 512 KiB padding        the region ends on a 4 MiB boundary (clipped to the domain's pages)

The region [VIRT_BASE, bootstrap end) is mapped 1:1, read-write except the page tables. The initial
L4 is pinned and loaded. Frames after the domain's nr_pages are not the domain's pages and are in no
bootstrap mapping: the console ring, shared_info, the xenstore ring (in this order, so a guest that
maps its pfns and then these at the next virtual pages, as GRUB does, gets a pure identity map), a
small pool of extra frames (`extra_frames`, for grant tables), then the machine-to-phys table, which
xen/mm.py maps read-only at MACH2PHYS_VIRT_START. start_info.shared_info is a machine address and
console.domU.mfn and store_mfn are machine frames: the guest maps them itself (update_va_mapping).
The console and xenstore event channels are the domain's to allocate: it passes their ports to
DomainImage.start_info()/memory_writes().
"""

import hashlib
import io
import os
import struct
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from xen import abi

PF_W = 0x2  # ELF program header flag: writable

PAGE_SIZE = abi.PAGE_SIZE
PAGE_SHIFT = 12
BOOTSTRAP_PADDING = 512 * 1024          # xen.h: at least 512 KiB after the last bootstrap element
BOOTSTRAP_ALIGN = 4 * 1024 * 1024       # ... and the region ends on a 4 MiB boundary
EXTRA_FRAMES = 8                        # machine frames for grant tables and the like
L1_PROT = 0x1 | 0x2 | 0x20              # _PAGE_PRESENT|_PAGE_RW|_PAGE_ACCESSED (xc_dom_x86.c)
UPPER_PROT = 0x1 | 0x2 | 0x4 | 0x20 | 0x40   # ... |_PAGE_USER|_PAGE_DIRTY for L2-L4 entries
PTE_RW = 0x2
INVALID_M2P_ENTRY = (1 << 64) - 1
START_INFO_MAGIC = b"xen-3.0-x86_64"
REQUIRED_XEN_VERSION = "xen-3.0"
REQUIRED_LOADER = "generic"
HYPERCALL_ENTRY_SIZE = 32

ELF64_HEADER_SIZE = 64
ELF_MACHINE_X86_64 = 62
ADDRESS_SPACE_END = 1 << 64


class BuildError(Exception):
    """The image cannot be built into a domain; the message says why in one line."""


@dataclass(frozen=True)
class Segment:
    """Bytes to write at a guest virtual address: a PT_LOAD's file bytes then its zeroed bss."""

    address: int
    data: bytes
    writable: bool = True


@dataclass(frozen=True)
class XenNotes:
    """The Xen ELF notes of an image, defaults applied (`entry` is None without an ENTRY note)."""

    guest_os: str
    xen_version: str
    loader: str
    hypercall_page: int | None
    entry: int | None
    virt_base: int
    paddr_offset: int
    features: str | None


@dataclass(frozen=True)
class Layout:
    """Where everything sits: guest virtual addresses, all page-aligned (see the module docstring)."""

    virt_base: int
    image_start: int
    image_end: int
    hypercall_page: int | None
    p2m: int                 # start_info.mfn_list
    start_info: int
    page_tables: int         # start_info.pt_base: the L4, then the L3s, L2s and L1s
    nr_pt_frames: int
    boot_stack: int
    boot_stack_top: int
    bootstrap_end: int       # end of the 1:1 mapped region

    def frame(self, address: int) -> int:
        """The pseudo-physical (= machine) frame number holding bootstrap address `address`."""
        return (address - self.virt_base) // PAGE_SIZE


@dataclass(frozen=True)
class DomainImage:
    """Everything a new domain starts from. Machine memory not written by memory_writes() is zero."""

    memory_bytes: int  # the domain's own pages: nr_pages * PAGE_SIZE
    nr_pages: int  # start_info.nr_pages
    frame_count: int  # all machine frames: the domain's, the special ones, the extra pool, the m2p table
    console_frame: int
    shared_info_frame: int
    store_frame: int
    extra_frames: range  # machine frames outside the domain's pages, free for the hypervisor to hand out
    m2p_frames: range  # the machine-to-phys table
    segments: tuple[Segment, ...]  # the PT_LOAD segments, bss zeroes included
    hypercall_page: bytes  # its contents (PAGE_SIZE bytes) if the image has a HYPERCALL_PAGE note
    entry: int  # initial %rip
    initial_rsi: int  # = layout.start_info
    initial_rsp: int  # = layout.boot_stack_top
    cmdline: str  # start_info.cmd_line
    layout: Layout
    notes: XenNotes
    image_sha256: str  # hex SHA-256 of the image file's bytes

    @property
    def l4_frame(self) -> int:
        return self.layout.frame(self.layout.page_tables)

    def start_info(self, *, console_evtchn: int, store_evtchn: int) -> bytes:
        """The start_info page contents (sizeof(struct start_info) bytes) with the domain's ports."""
        layout = self.layout
        info = abi.StartInfo(
            magic=START_INFO_MAGIC,
            nr_pages=self.nr_pages,
            shared_info=self.shared_info_frame << PAGE_SHIFT,
            flags=0,
            store_mfn=self.store_frame,
            store_evtchn=store_evtchn,
            pt_base=layout.page_tables,
            nr_pt_frames=layout.nr_pt_frames,
            mfn_list=layout.p2m,
        )
        info.console.domU.mfn = self.console_frame
        info.console.domU.evtchn = console_evtchn
        raw = bytearray(info)
        cmdline_offset = abi.StartInfo.cmd_line.offset
        encoded = self.cmdline.encode()
        raw[cmdline_offset : cmdline_offset + len(encoded)] = encoded
        return bytes(raw)

    def memory_writes(self, *, console_evtchn: int, store_evtchn: int) -> list[tuple[int, bytes]]:
        """(machine address, bytes) to write, in order: the segments, the hypercall page, the p2m list,
        start_info, the page tables, the machine-to-phys table."""
        layout = self.layout

        def machine(address: int) -> int:
            return address - layout.virt_base          # the bootstrap region is 1:1 and mfn = pfn

        writes = [(machine(segment.address), segment.data) for segment in self.segments]
        if layout.hypercall_page is not None:
            writes.append((machine(layout.hypercall_page), self.hypercall_page))
        writes.append((machine(layout.p2m), struct.pack(f"<{self.nr_pages}Q", *range(self.nr_pages))))
        writes.append((machine(layout.start_info),
                       self.start_info(console_evtchn=console_evtchn, store_evtchn=store_evtchn)))
        writes.append((machine(layout.page_tables), self._page_tables()))
        m2p = [pfn if pfn < self.nr_pages else INVALID_M2P_ENTRY for pfn in range(self.frame_count)]
        writes.append((self.m2p_frames.start * PAGE_SIZE, struct.pack(f"<{len(m2p)}Q", *m2p)))
        return writes

    def _page_tables(self) -> bytes:
        """The bootstrap tables as xc_dom_x86.c builds them: the 1:1 map of [VIRT_BASE, bootstrap end),
        the tables themselves read-only. Frames: the L4, then the L3s, the L2s and the L1s."""
        layout = self.layout
        counts = _table_counts(layout.virt_base, layout.bootstrap_end)
        first_frame = layout.frame(layout.page_tables)
        first_table = {3: 1, 2: 1 + counts[3], 1: 1 + counts[3] + counts[2]}
        tables = [[0] * 512 for _ in range(layout.nr_pt_frames)]
        tables_end = layout.page_tables + layout.nr_pt_frames * PAGE_SIZE

        def table(level: int, address: int) -> int:      # the level-`level` table mapping `address`
            bits = PAGE_SHIFT + 9 * level
            return first_table[level] + (address >> bits) - (layout.virt_base >> bits)

        for address in range(layout.virt_base, layout.bootstrap_end, PAGE_SIZE):
            parent = 0
            for level in (3, 2, 1):
                child = table(level, address)
                index = (address >> (PAGE_SHIFT + 9 * level)) & 511
                tables[parent][index] = ((first_frame + child) << PAGE_SHIFT) | UPPER_PROT
                parent = child
            entry = (layout.frame(address) << PAGE_SHIFT) | L1_PROT
            if layout.page_tables <= address < tables_end:
                entry &= ~PTE_RW                    # page tables are read-only
            tables[parent][(address >> PAGE_SHIFT) & 511] = entry
        return b"".join(struct.pack("<512Q", *entries) for entries in tables)

    def read_only_frames(self) -> tuple[int, ...]:
        """Frames that only non-writable segments (code, rodata) occupy: guest stores to them fault
        whatever the guest's mappings say (the engine runs no self-modifying code)."""
        def pages(segment: Segment) -> range:
            start = _align_down(segment.address, PAGE_SIZE)
            return range(start, _align_up(segment.address + len(segment.data), PAGE_SIZE), PAGE_SIZE)
        writable = {page for segment in self.segments if segment.writable for page in pages(segment)}
        code = {page for segment in self.segments if not segment.writable for page in pages(segment)}
        return tuple(sorted(self.layout.frame(page) for page in code - writable))


def _table_counts(start: int, end: int) -> dict[int, int]:
    """Tables per level (L4, L3, L2, L1) that map [start, end), as xc_dom_x86.c's nr_page_tables counts."""
    counts = {4: 1}
    for level, bits in ((3, 39), (2, 30), (1, 21)):
        mask = (1 << bits) - 1
        counts[level] = (((end - 1) | mask) - (start & ~mask) >> bits) + 1
    return counts


def build_domain(image: bytes | str | os.PathLike, memory_bytes: int, cmdline: str = "") -> DomainImage:
    """Check a PV kernel image (its bytes or its path) and lay it out in `memory_bytes` of domain pages."""
    data = _read_image(image)
    if memory_bytes <= 0 or memory_bytes % PAGE_SIZE:
        raise BuildError(f"guest memory must be a positive multiple of {PAGE_SIZE} bytes, not {memory_bytes}")
    encoded_cmdline = cmdline.encode()
    if len(encoded_cmdline) >= abi.MAX_GUEST_CMDLINE:
        raise BuildError(
            f"command line is {len(encoded_cmdline)} bytes; Xen allows at most {abi.MAX_GUEST_CMDLINE - 1}"
        )
    elf = _open_elf(data)
    notes = _decode_notes(_find_xen_notes(elf, data))
    segments = _load_segments(elf, data, notes, memory_bytes)
    layout = _plan_layout(segments, notes, memory_bytes)
    entry = notes.entry if notes.entry is not None else elf.header["e_entry"]
    if not any(segment.address <= entry < segment.address + len(segment.data) for segment in segments):
        raise BuildError(
            f"entry point {entry:#x} is outside the image [{layout.image_start:#x}, {layout.image_end:#x})"
        )
    nr_pages = memory_bytes // PAGE_SIZE
    extra_start = nr_pages + 3
    m2p_start = extra_start + EXTRA_FRAMES
    m2p_count = 1
    while (m2p_start + m2p_count) * 8 > m2p_count * PAGE_SIZE:
        m2p_count += 1
    return DomainImage(
        memory_bytes=memory_bytes,
        nr_pages=nr_pages,
        frame_count=m2p_start + m2p_count,
        console_frame=nr_pages,
        shared_info_frame=nr_pages + 1,
        store_frame=nr_pages + 2,
        extra_frames=range(extra_start, m2p_start),
        m2p_frames=range(m2p_start, m2p_start + m2p_count),
        segments=segments,
        hypercall_page=_hypercall_page(),
        entry=entry,
        initial_rsi=layout.start_info,
        initial_rsp=layout.boot_stack_top,
        cmdline=cmdline,
        layout=layout,
        notes=notes,
        image_sha256=hashlib.sha256(data).hexdigest(),
    )


def _read_image(image: bytes | str | os.PathLike) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    try:
        with open(image, "rb") as file:
            return file.read()
    except OSError as error:
        raise BuildError(f"cannot read {os.fsdecode(image)}: {error.strerror}") from None


def _open_elf(data: bytes) -> ELFFile:
    """Check the ELF identification and header; return the parsed file."""
    if data[:4] != b"\x7fELF":
        raise BuildError("not an ELF file")
    if len(data) < ELF64_HEADER_SIZE:
        raise BuildError(f"truncated file: {len(data)} bytes, shorter than an ELF64 header")
    if data[4] != 2:
        raise BuildError("not an ELF64 file (a 32-bit ELF); a PV x86-64 kernel is ELF64")
    if data[5] != 1:
        raise BuildError("not a little-endian ELF file")
    machine = struct.unpack_from("<H", data, 18)[0]
    if machine != ELF_MACHINE_X86_64:
        raise BuildError(f"not an x86-64 ELF file (e_machine {machine})")
    try:
        elf = ELFFile(io.BytesIO(data))
    except ELFError as error:
        raise BuildError(f"malformed ELF file: {error}") from None
    header = elf.header
    _file_range(data, header["e_phoff"], header["e_phnum"] * header["e_phentsize"], "the program header table")
    _file_range(data, header["e_shoff"], header["e_shnum"] * header["e_shentsize"], "the section header table")
    return elf


def _file_range(data: bytes, offset: int, size: int, what: str) -> bytes:
    if offset + size > len(data):
        raise BuildError(
            f"truncated file: {what} (file bytes {offset:#x}-{offset + size:#x}) ends past its {len(data)} bytes"
        )
    return data[offset : offset + size]


def _find_xen_notes(elf: ELFFile, data: bytes) -> dict[int, bytes]:
    """Xen note type -> value, from the PT_NOTE segments, else from the SHT_NOTE sections."""
    notes: dict[int, bytes] = {}
    for index, segment in enumerate(elf.iter_segments()):
        if segment["p_type"] == "PT_NOTE":
            what = f"PT_NOTE segment {index}"
            raw = _file_range(data, segment["p_offset"], segment["p_filesz"], what)
            notes.update(_parse_notes(raw, segment["p_align"], what))
    if notes:
        return notes
    try:
        sections = list(elf.iter_sections())
    except ELFError as error:
        raise BuildError(f"malformed ELF section headers: {error}") from None
    for section in sections:
        if section["sh_type"] == "SHT_NOTE":
            what = f"note section {section.name}"
            raw = _file_range(data, section["sh_offset"], section["sh_size"], what)
            notes.update(_parse_notes(raw, section["sh_addralign"], what))
    if not notes:
        raise BuildError("not a Xen PV image: it has no Xen ELF notes")
    return notes


def _parse_notes(raw: bytes, alignment: int, what: str) -> dict[int, bytes]:
    """The notes owned by "Xen" in one note segment or section, by their raw type numbers."""
    padding = 8 if alignment == 8 else 4
    found = {}
    offset = 0
    while offset + 12 <= len(raw):
        name_size, desc_size, note_type = struct.unpack_from("<III", raw, offset)
        name_start = offset + 12
        desc_start = _align_up(name_start + name_size, padding)   # offsets are aligned, not sizes
        end = _align_up(desc_start + desc_size, padding)
        if desc_start + desc_size > len(raw):
            raise BuildError(f"malformed note in {what}: it runs past the end")
        if raw[name_start : name_start + name_size].rstrip(b"\0") == b"Xen":
            found[note_type] = raw[desc_start : desc_start + desc_size]
        offset = end
    return found


NOTE_NAMES = {
    abi.XEN_ELFNOTE_ENTRY: "ENTRY",
    abi.XEN_ELFNOTE_HYPERCALL_PAGE: "HYPERCALL_PAGE",
    abi.XEN_ELFNOTE_VIRT_BASE: "VIRT_BASE",
    abi.XEN_ELFNOTE_PADDR_OFFSET: "PADDR_OFFSET",
    abi.XEN_ELFNOTE_XEN_VERSION: "XEN_VERSION",
    abi.XEN_ELFNOTE_GUEST_OS: "GUEST_OS",
    abi.XEN_ELFNOTE_LOADER: "LOADER",
    abi.XEN_ELFNOTE_FEATURES: "FEATURES",
}


def _decode_notes(notes: dict[int, bytes]) -> XenNotes:
    for required in (
        abi.XEN_ELFNOTE_GUEST_OS,
        abi.XEN_ELFNOTE_XEN_VERSION,
        abi.XEN_ELFNOTE_LOADER,
    ):
        if required not in notes:
            raise BuildError(f"not a Xen PV image: the XEN_ELFNOTE_{NOTE_NAMES[required]} note is missing")

    def number(note_type: int, default: int | None) -> int | None:
        if note_type not in notes:
            return default
        value = notes[note_type]
        if len(value) not in (1, 2, 4, 8):
            raise BuildError(f"the XEN_ELFNOTE_{NOTE_NAMES[note_type]} note has {len(value)} bytes, not 1, 2, 4 or 8")
        return int.from_bytes(value, "little")

    def text(note_type: int) -> str | None:
        if note_type not in notes:
            return None
        return notes[note_type].split(b"\0", 1)[0].decode("ascii", "replace")

    decoded = XenNotes(
        guest_os=text(abi.XEN_ELFNOTE_GUEST_OS),
        xen_version=text(abi.XEN_ELFNOTE_XEN_VERSION),
        loader=text(abi.XEN_ELFNOTE_LOADER),
        hypercall_page=number(abi.XEN_ELFNOTE_HYPERCALL_PAGE, None),
        entry=number(abi.XEN_ELFNOTE_ENTRY, None),
        virt_base=number(abi.XEN_ELFNOTE_VIRT_BASE, 0),
        paddr_offset=number(abi.XEN_ELFNOTE_PADDR_OFFSET, 0),
        features=text(abi.XEN_ELFNOTE_FEATURES),
    )
    if decoded.xen_version != REQUIRED_XEN_VERSION:
        raise BuildError(
            f"XEN_ELFNOTE_XEN_VERSION is {decoded.xen_version!r}; only {REQUIRED_XEN_VERSION!r} is supported"
        )
    if decoded.loader != REQUIRED_LOADER:
        raise BuildError(f"XEN_ELFNOTE_LOADER is {decoded.loader!r}; only {REQUIRED_LOADER!r} is supported")
    if decoded.virt_base % PAGE_SIZE:
        raise BuildError(f"XEN_ELFNOTE_VIRT_BASE {decoded.virt_base:#x} is not page-aligned")
    return decoded


def _load_segments(elf: ELFFile, data: bytes, notes: XenNotes, memory_bytes: int) -> tuple[Segment, ...]:
    """The PT_LOAD segments at their load addresses, each checked to lie in the domain's own frames."""
    if notes.virt_base + memory_bytes > ADDRESS_SPACE_END:
        raise BuildError(
            f"guest memory of {memory_bytes // 1024} KiB at VIRT_BASE {notes.virt_base:#x} "
            "runs past the 64-bit address space"
        )
    segments = []
    for index, segment in enumerate(elf.iter_segments()):
        if segment["p_type"] != "PT_LOAD" or segment["p_memsz"] == 0:
            continue
        file_size, memory_size = segment["p_filesz"], segment["p_memsz"]
        if file_size > memory_size:
            raise BuildError(f"malformed ELF: segment {index} has more file bytes than memory bytes")
        contents = _file_range(data, segment["p_offset"], file_size, f"segment {index}")
        pseudo_physical = segment["p_paddr"] - notes.paddr_offset
        address = (notes.virt_base + pseudo_physical) % ADDRESS_SPACE_END
        if pseudo_physical < 0 or pseudo_physical + memory_size > memory_bytes:
            needed = -(-(pseudo_physical + memory_size) // 1024)
            if 0 <= pseudo_physical < ADDRESS_SPACE_END // 2:
                raise BuildError(f"image too big for the memory: segment {index} [{address:#x}, "
                                 f"{address + memory_size:#x}) alone needs more than {needed} KiB of guest "
                                 f"memory, the domain has {memory_bytes // 1024} KiB")
            raise BuildError(
                f"segment {index} [{address:#x}, {address + memory_size:#x}) is outside guest memory "
                f"[{notes.virt_base:#x}, {notes.virt_base + memory_bytes:#x}) of {memory_bytes // 1024} KiB"
            )
        writable = bool(segment["p_flags"] & PF_W)
        segments.append(Segment(address, contents + bytes(memory_size - file_size), writable))
    if not segments:
        raise BuildError("the image has no loadable (PT_LOAD) segments")
    return tuple(segments)


def _plan_layout(segments: tuple[Segment, ...], notes: XenNotes, memory_bytes: int) -> Layout:
    """The bootstrap region as xc_dom_x86.c lays it out (count_pgtables: page tables for the region
    including themselves, one stack page and 512 KiB of padding, the end rounded up to 4 MiB)."""
    virt_base = notes.virt_base
    image_start = _align_down(min(segment.address for segment in segments), PAGE_SIZE)
    image_end = _align_up(max(segment.address + len(segment.data) for segment in segments), PAGE_SIZE)
    nr_pages = memory_bytes // PAGE_SIZE
    p2m = image_end
    start_info = p2m + _align_up(nr_pages * 8, PAGE_SIZE)
    page_tables = start_info + PAGE_SIZE
    extra = 1 + BOOTSTRAP_PADDING // PAGE_SIZE                      # the stack page and the padding
    pages = extra
    while True:
        end = _align_up(page_tables + pages * PAGE_SIZE, BOOTSTRAP_ALIGN)
        nr_pt_frames = sum(_table_counts(virt_base, end).values())
        pages = nr_pt_frames + extra
        if page_tables + pages * PAGE_SIZE <= end:
            break
    boot_stack = page_tables + nr_pt_frames * PAGE_SIZE
    memory_end = virt_base + memory_bytes
    if boot_stack + PAGE_SIZE > memory_end:
        needed = (boot_stack + PAGE_SIZE - virt_base) // 1024
        raise BuildError(
            f"image too big for the memory: the image and its bootstrap pages (p2m list, start_info, "
            f"page tables, stack) need {needed} KiB, the domain has {memory_bytes // 1024} KiB"
        )
    hypercall_page = notes.hypercall_page
    if hypercall_page is not None:
        if hypercall_page % PAGE_SIZE:
            raise BuildError(f"the hypercall page {hypercall_page:#x} is not page-aligned")
        if not image_start <= hypercall_page < image_end:
            raise BuildError(
                f"the hypercall page {hypercall_page:#x} is outside the image [{image_start:#x}, {image_end:#x})"
            )
    return Layout(
        virt_base=virt_base,
        image_start=image_start,
        image_end=image_end,
        hypercall_page=hypercall_page,
        p2m=p2m,
        start_info=start_info,
        page_tables=page_tables,
        nr_pt_frames=nr_pt_frames,
        boot_stack=boot_stack,
        boot_stack_top=boot_stack + PAGE_SIZE,
        bootstrap_end=min(end, memory_end),
    )


def _hypercall_page() -> bytes:
    """The hypercall page as Xen fills it for a 64-bit PV guest: 0xcc, then one 32-byte entry per call."""
    page = bytearray(b"\xcc" * PAGE_SIZE)
    for number in range(PAGE_SIZE // HYPERCALL_ENTRY_SIZE):
        offset = number * HYPERCALL_ENTRY_SIZE
        if number == abi.HYPERVISOR_iret:
            # push %rcx; push %r11; push %rax; mov $23,%eax; syscall (guests jump here; it never returns)
            entry = b"\x51\x41\x53\x50\xb8" + struct.pack("<I", number) + b"\x0f\x05"
        else:
            # push %rcx; push %r11; mov $number,%eax; syscall; pop %r11; pop %rcx; ret
            entry = b"\x51\x41\x53\xb8" + struct.pack("<I", number) + b"\x0f\x05\x41\x5b\x59\xc3"
        page[offset : offset + len(entry)] = entry
    return bytes(page)


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def _align_down(value: int, alignment: int) -> int:
    return value // alignment * alignment
