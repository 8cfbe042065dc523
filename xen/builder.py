"""The ELF domain builder: turns a Xen PV x86-64 kernel image into what a new domain's memory holds.

Owns the image checks, the Xen ELF notes, the guest memory layout and the initial contents of the
special pages. Pure: it reads bytes and returns a DomainImage; xen/domain.py writes that into the
vCPU. Invariant: a DomainImage is only ever made from an image that passed every check, and every
address it names lies inside the domain's memory; bad input raises BuildError with one line.

Loading follows Xen's libelf for PV guests:
- Xen notes (owner "Xen") come from the PT_NOTE segments, or, when these have none, from the
  SHT_NOTE sections (unallocated ones included). Required: HYPERCALL_PAGE, GUEST_OS, XEN_VERSION
  ("xen-3.0"), LOADER ("generic"); ENTRY defaults to the ELF entry point, VIRT_BASE to 0 and
  PADDR_OFFSET to 0 (libelf's default for images that carry notes).
- A PT_LOAD segment is loaded at virtual address p_paddr - PADDR_OFFSET + VIRT_BASE (= p_vaddr for
  images linked as usual). Memory is 1:1: pseudo-physical frame N is at VIRT_BASE + N * PAGE_SIZE,
  and machine frame numbers (mfn) equal pseudo-physical ones (there is no p2m list: mfn_list = 0).

Layout of guest memory, in pages (frame numbers relative to VIRT_BASE):

    [image start, image end)   the PT_LOAD segments; image end = end of the highest one, page-aligned
    image end + 0              start_info (initial %rsi)
    image end + 1              console ring (struct xencons_interface)
    image end + 2              xenstore ring
    image end + 3              guard page, left unmapped: a boot-stack overflow faults
    image end + 4 ...          boot stack, BOOT_STACK_PAGES pages; initial %rsp = its top, page-aligned,
                               as Xen sets it (entry code that `call`s C keeps the SysV alignment)
    ... up to nr_pages         free memory for the guest
    nr_pages ...               EXTRA_FRAMES frames outside the domain's pages (`extra_frames`), a pool
                               the hypervisor hands out as grant-table frames
    last frame                 shared_info: Xen's page, not the domain's, so start_info.nr_pages
                               = frames - 1 - EXTRA_FRAMES and start_info.shared_info = its virtual address

Frames below the image start are left unmapped too (so a stray low pointer faults); nothing else is.
There are no page tables (pt_base = 0, nr_pt_frames = 0): the guest runs with paging off.
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
BOOT_STACK_PAGES = 16
EXTRA_FRAMES = 8                        # machine frames for grant tables and the like
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
    hypercall_page: int
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
    hypercall_page: int
    start_info: int
    console: int
    xenstore: int
    boot_stack: int
    boot_stack_top: int
    shared_info: int

    def frame(self, address: int) -> int:
        """The (pseudo-physical = machine) frame number holding `address`."""
        return (address - self.virt_base) // PAGE_SIZE


@dataclass(frozen=True)
class DomainImage:
    """Everything a new domain starts from. Memory not written by memory_writes() is zero."""

    memory_bytes: int  # guest memory mapped at layout.virt_base, shared_info's frame included
    nr_pages: int  # the domain's own frames (start_info.nr_pages): all but shared_info's and the extra ones
    extra_frames: range  # frames outside the domain's pages, free for the hypervisor to hand out
    segments: tuple[Segment, ...]  # the PT_LOAD segments, bss zeroes included
    hypercall_page: bytes  # its contents (PAGE_SIZE bytes); its address is layout.hypercall_page
    unmapped_pages: tuple[int, ...]  # frames to leave unmapped: those below the image, the stack guard
    entry: int  # initial %rip
    initial_rsi: int  # = layout.start_info
    initial_rsp: int  # = layout.boot_stack_top
    cmdline: str  # start_info.cmd_line
    layout: Layout
    notes: XenNotes
    image_sha256: str  # hex SHA-256 of the image file's bytes

    def start_info(self, *, console_evtchn: int, store_evtchn: int) -> bytes:
        """The start_info page contents (sizeof(struct start_info) bytes) with the domain's ports."""
        layout = self.layout
        info = abi.StartInfo(
            magic=START_INFO_MAGIC,
            nr_pages=self.nr_pages,
            shared_info=layout.shared_info,
            flags=0,
            store_mfn=layout.frame(layout.xenstore),
            store_evtchn=store_evtchn,
        )
        info.console.domU.mfn = layout.frame(layout.console)
        info.console.domU.evtchn = console_evtchn
        raw = bytearray(info)
        cmdline_offset = abi.StartInfo.cmd_line.offset
        encoded = self.cmdline.encode()
        raw[cmdline_offset : cmdline_offset + len(encoded)] = encoded
        return bytes(raw)

    def memory_writes(self, *, console_evtchn: int, store_evtchn: int) -> list[tuple[int, bytes]]:
        """(address, bytes) to write, in order: the segments, the hypercall page, start_info."""
        writes = [(segment.address, segment.data) for segment in self.segments]
        writes.append((self.layout.hypercall_page, self.hypercall_page))
        writes.append(
            (self.layout.start_info, self.start_info(console_evtchn=console_evtchn, store_evtchn=store_evtchn))
        )
        return writes

    def read_only_pages(self) -> tuple[int, ...]:
        """Addresses of the pages that only non-writable segments (code, rodata) occupy: the
        domain maps them read-only, so a guest store to its own code faults as on real hardware."""
        def pages(segment: Segment) -> range:
            start = _align_down(segment.address, PAGE_SIZE)
            return range(start, _align_up(segment.address + len(segment.data), PAGE_SIZE), PAGE_SIZE)
        writable = {page for segment in self.segments if segment.writable for page in pages(segment)}
        return tuple(sorted({page for segment in self.segments if not segment.writable
                             for page in pages(segment)} - writable))


def build_domain(image: bytes | str | os.PathLike, memory_bytes: int, cmdline: str = "") -> DomainImage:
    """Check a PV kernel image (its bytes or its path) and lay it out in `memory_bytes` of guest memory."""
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
    guard_frame = layout.frame(layout.boot_stack) - 1
    return DomainImage(
        memory_bytes=memory_bytes,
        nr_pages=layout.frame(layout.shared_info) - EXTRA_FRAMES,
        extra_frames=range(layout.frame(layout.shared_info) - EXTRA_FRAMES, layout.frame(layout.shared_info)),
        segments=segments,
        hypercall_page=_hypercall_page(),
        unmapped_pages=(*range(layout.frame(layout.image_start)), guard_frame),
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
        abi.XEN_ELFNOTE_HYPERCALL_PAGE,
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
    own_memory_end = memory_bytes - PAGE_SIZE  # the last frame is shared_info's
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
        if pseudo_physical < 0 or pseudo_physical + memory_size > own_memory_end:
            needed = -(-(pseudo_physical + memory_size + PAGE_SIZE) // 1024)
            if 0 <= pseudo_physical < ADDRESS_SPACE_END // 2:
                raise BuildError(f"image too big for the memory: segment {index} [{address:#x}, "
                                 f"{address + memory_size:#x}) alone needs more than {needed} KiB of guest "
                                 f"memory, the domain has {memory_bytes // 1024} KiB")
            raise BuildError(
                f"segment {index} [{address:#x}, {address + memory_size:#x}) is outside guest memory "
                f"[{notes.virt_base:#x}, {notes.virt_base + own_memory_end:#x}) of {memory_bytes // 1024} KiB"
            )
        writable = bool(segment["p_flags"] & PF_W)
        segments.append(Segment(address, contents + bytes(memory_size - file_size), writable))
    if not segments:
        raise BuildError("the image has no loadable (PT_LOAD) segments")
    return tuple(segments)


def _plan_layout(segments: tuple[Segment, ...], notes: XenNotes, memory_bytes: int) -> Layout:
    image_start = _align_down(min(segment.address for segment in segments), PAGE_SIZE)
    image_end = _align_up(max(segment.address + len(segment.data) for segment in segments), PAGE_SIZE)
    boot_stack = image_end + 4 * PAGE_SIZE
    boot_stack_top = boot_stack + BOOT_STACK_PAGES * PAGE_SIZE
    shared_info = notes.virt_base + memory_bytes - PAGE_SIZE
    if boot_stack_top > shared_info - EXTRA_FRAMES * PAGE_SIZE:
        needed = (boot_stack_top - notes.virt_base + (1 + EXTRA_FRAMES) * PAGE_SIZE) // 1024
        raise BuildError(
            f"image too big for the memory: the image, its boot pages and shared_info need {needed} KiB, "
            f"the domain has {memory_bytes // 1024} KiB"
        )
    hypercall_page = notes.hypercall_page
    if hypercall_page % PAGE_SIZE:
        raise BuildError(f"the hypercall page {hypercall_page:#x} is not page-aligned")
    if not image_start <= hypercall_page < image_end:
        raise BuildError(
            f"the hypercall page {hypercall_page:#x} is outside the image [{image_start:#x}, {image_end:#x})"
        )
    return Layout(
        virt_base=notes.virt_base,
        image_start=image_start,
        image_end=image_end,
        hypercall_page=hypercall_page,
        start_info=image_end,
        console=image_end + PAGE_SIZE,
        xenstore=image_end + 2 * PAGE_SIZE,
        boot_stack=boot_stack,
        boot_stack_top=boot_stack_top,
        shared_info=shared_info,
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
