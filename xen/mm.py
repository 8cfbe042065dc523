"""The PV memory model: machine frames, their page types, the guest's page tables and its address space.

Owns what Xen's x86 direct-paging code owns for a 64-bit PV domain: which machine frames the domain
may map, the type of each frame (L1..L4 page table, descriptor page, writable page, none) with its type count, the
pinned tables, the current base pointer (CR3), the guest's GDT frames (set_gdt), the machine-to-phys
table, and the guest-virtual -> machine map the page tables reachable from CR3 define. The engine has no MMU, so every change of that
map is realised in the vCPU (`VCpu.map_page`/`unmap_page`, xen/vcpu.py) at once: the vCPU always runs
on exactly the mappings the guest's tables define (the TLB is never stale, which is one of the
behaviours real hardware may show).

Invariants (Xen's, checked on every update as Xen's mod_lN_entry/get_page_type do):
- a frame has one type at a time; its type can change only when its type count is 0;
- a frame of a page-table type is referenced only by read-only L1 entries: no guest-writable mapping
  of a page table can exist, so page tables change only through mmu_update/update_va_mapping here;
- every present entry of a validated table holds a type reference on what it points to (an L2 entry
  on an L1 table, ...; a writable L1 entry on a writable page) and releases it when it changes; a
  table whose count drops to 0 releases all of its entries' references;
- slots 256-271 of an L4 are Xen's: guests cannot write them, walks ignore them;
- a GDT frame has the descriptor-page type (Xen's PGT_seg_desc_page) for as long as it is in the GDT:
  every descriptor in it passed `checked_descriptor` (xen/descriptors.py), so it cannot be mapped
  writable and changes only through update_descriptor. xenrr has no segmentation (every selector is
  flat in the engine): the GDT is validated and kept, as Xen keeps it, but never used to translate.
The contents of the tables are guest memory (frames): digests and checkpoints cover them with the rest
of memory; the types, counts, pins, CR3 and GDT are `save_state()`; the address space is derived from
those two and rebuilt by `load_state()`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from xen import abi
from xen.descriptors import checked_descriptor
from xen.vcpu import PAGE_SHIFT, PAGE_SIZE, Mapping, VCpu

PTE_PRESENT = 0x1
PTE_RW = 0x2
PTE_USER = 0x4
PTE_ACCESSED = 0x20
PTE_DIRTY = 0x40
PTE_PSE = 0x80
PTE_NX = 1 << 63
PTE_FRAME_MASK = 0x000FFFFFFFFFF000
ENTRIES = 512
_TABLE = struct.Struct(f"<{ENTRIES}Q")

# Page types (Xen's PGT_l1_page_table ... PGT_writable_page); NONE: no type reference held.
NONE, L1, L2, L3, L4, SEG_DESC, WRITABLE = 0, 1, 2, 3, 4, 5, 7
TYPE_NAMES = {NONE: "none", L1: "L1", L2: "L2", L3: "L3", L4: "L4", SEG_DESC: "descriptors", WRITABLE: "writable"}
XEN_L4_SLOTS = range(256, 272)       # 0xffff800000000000-0xffff87ffffffffff: Xen's (HYPERVISOR_VIRT_START..END)
INVALID_M2P_ENTRY = (1 << 64) - 1
M2P_ENTRY = struct.Struct("<Q")


class MmuError(Exception):
    """Ends an MMU operation with a Xen error code (positive errno)."""

    def __init__(self, errno: int):
        super().__init__(errno)
        self.errno = errno


def _span(level: int) -> int:
    """Bytes of address space one entry of a level-`level` table covers."""
    return PAGE_SIZE << (9 * (level - 1))


def _canonical(address: int) -> int:
    """Sign-extend bit 47, as x86-64 addresses are."""
    return address | 0xFFFF000000000000 if address & (1 << 47) else address


@dataclass(frozen=True)
class MemoryState:
    """The model's own state (the tables themselves are in guest memory)."""
    types: tuple[int, ...]
    counts: tuple[int, ...]
    pinned: frozenset[int]
    cr3: int | None
    user_cr3: int
    gdt: tuple[int, ...] = ()
    gdt_entries: int = 0


class MemoryModel:
    """The direct-paging model of one domain, realised in its vCPU."""

    def __init__(self, vcpu: VCpu, guest_frames: range, m2p_frames: range):
        self.vcpu = vcpu
        self.guest_frames = guest_frames          # what the domain may map (its pages and special frames)
        self.m2p_frames = m2p_frames
        self._types = [NONE] * vcpu.frame_count
        self._counts = [0] * vcpu.frame_count
        self.pinned: set[int] = set()
        self.cr3: int | None = None
        self.user_cr3 = 0
        self.gdt: tuple[int, ...] = ()            # the GDT's frames (each of type SEG_DESC) ...
        self.gdt_entries = 0                      # ... and its size in descriptors
        self._validating: set[int] = set()
        self._pages: dict[int, Mapping] = {}     # the guest-virtual map from CR3 (Xen's slots excluded)
        # Each table reachable from CR3 -> where it sits: (virtual base, rights inherited from above).
        self._tables: dict[int, list[tuple[int, bool, bool]]] = {}
        for index, frame in enumerate(m2p_frames):
            vcpu.map_page(abi.MACH2PHYS_VIRT_START + index * PAGE_SIZE, frame, writable=False, executable=False)
        vcpu.reserve_for_hypervisor(abi.HYPERVISOR_VIRT_START, abi.HYPERVISOR_VIRT_END)

    # ---------------------------------------------------------------- frames and the m2p table
    def owns(self, frame: int) -> bool:
        return frame in self.guest_frames

    def page_type(self, frame: int) -> tuple[str, int]:
        """(type name, type count) of a frame."""
        return TYPE_NAMES[self._types[frame]], self._counts[frame]

    def set_m2p(self, frame: int, pfn: int) -> None:
        """Machine-to-phys entry for `frame` (as MMU_MACHPHYS_UPDATE sets it)."""
        offset = frame * M2P_ENTRY.size
        table_frame = self.m2p_frames[offset // PAGE_SIZE]
        self.vcpu.write_frame_bytes(table_frame, offset % PAGE_SIZE, M2P_ENTRY.pack(pfn & INVALID_M2P_ENTRY))

    def _entries(self, frame: int) -> tuple[int, ...]:
        return _TABLE.unpack(self.vcpu.read_frame(frame))

    def _entry(self, frame: int, index: int) -> int:
        return int.from_bytes(self.vcpu.read_frame_bytes(frame, index * 8, 8), "little")

    # ---------------------------------------------------------------- types and references
    def get_type(self, frame: int, page_type: int) -> None:
        """Take a type reference: validate the frame as `page_type` if it has none (Xen's get_page_type)."""
        if not self.owns(frame):
            raise MmuError(abi.XEN_EINVAL)
        if self._counts[frame] == 0:
            if frame in self._validating:
                raise MmuError(abi.XEN_EINVAL)       # a table reaching itself (linear page tables)
            if page_type in (L1, L2, L3, L4):
                self._validating.add(frame)
                try:
                    self._validate(frame, page_type)
                finally:
                    self._validating.discard(frame)
            elif page_type == SEG_DESC:
                self._validate_descriptors(frame)
            self._types[frame] = page_type
        elif self._types[frame] != page_type:
            raise MmuError(abi.XEN_EINVAL)
        self._counts[frame] += 1

    def put_type(self, frame: int) -> None:
        """Drop a type reference; a table whose last reference goes releases its entries' references."""
        self._counts[frame] -= 1
        if self._counts[frame] == 0:
            page_type = self._types[frame]
            self._types[frame] = NONE
            if page_type in (L1, L2, L3, L4):
                for index, entry in enumerate(self._entries(frame)):
                    if self._is_guest_entry(page_type, index):
                        self._put_entry(entry, page_type)

    def _validate(self, frame: int, level: int) -> None:
        taken: list[int] = []
        try:
            for index, entry in enumerate(self._entries(frame)):
                if self._is_guest_entry(level, index):
                    self._get_entry(entry, level)
                    taken.append(entry)
        except MmuError:
            for entry in taken:
                self._put_entry(entry, level)
            raise

    def _validate_descriptors(self, frame: int) -> None:
        """Xen's alloc_segdesc_page: every descriptor must pass; the fixed-up ones are written back."""
        descriptors = _TABLE.unpack(self.vcpu.read_frame(frame))
        checked = [checked_descriptor(descriptor) for descriptor in descriptors]
        if None in checked:
            raise MmuError(abi.XEN_EINVAL)
        if checked != list(descriptors):
            self.vcpu.write_frame_bytes(frame, 0, _TABLE.pack(*checked))

    @staticmethod
    def _is_guest_entry(level: int, index: int) -> bool:
        return not (level == L4 and index in XEN_L4_SLOTS)

    def _get_entry(self, entry: int, level: int) -> None:
        """The reference a present entry of a level-`level` table holds on what it points to."""
        if not entry & PTE_PRESENT:
            return
        target = (entry & PTE_FRAME_MASK) >> PAGE_SHIFT
        if level == L1:
            if not self.owns(target):
                raise MmuError(abi.XEN_EINVAL)
            if entry & PTE_RW:
                self.get_type(target, WRITABLE)
            return
        if entry & PTE_PSE:
            raise MmuError(abi.XEN_EINVAL)           # no superpages for PV guests
        self.get_type(target, level - 1)

    def _put_entry(self, entry: int, level: int) -> None:
        if not entry & PTE_PRESENT or (level == L1 and not entry & PTE_RW):
            return
        self.put_type((entry & PTE_FRAME_MASK) >> PAGE_SHIFT)

    # ---------------------------------------------------------------- updates
    def update_entry(self, frame: int, index: int, value: int) -> None:
        """mmu_update MMU_NORMAL_PT_UPDATE on a frame: checked as Xen's mod_lN_entry when it is a
        validated table, a plain write when it is not a table."""
        if not self.owns(frame):
            raise MmuError(abi.XEN_EINVAL)
        level = self._types[frame] if self._counts[frame] else NONE
        if level not in (L1, L2, L3, L4):
            self.get_type(frame, WRITABLE)       # Xen writes to a non-table page as to a writable one
            try:
                self.vcpu.write_frame_bytes(frame, index * 8, value.to_bytes(8, "little"))
            finally:
                self.put_type(frame)
            return
        if not self._is_guest_entry(level, index):
            raise MmuError(abi.XEN_EINVAL)
        old = self._entry(frame, index)
        if old == value:
            return
        self._get_entry(value, level)
        self.vcpu.write_frame_bytes(frame, index * 8, value.to_bytes(8, "little"))
        self._put_entry(old, level)
        places = self._tables.get(frame)
        if places is None:
            return                                 # not reachable from CR3: the address space is unchanged
        if level != L1:
            self._refresh()
            return
        for base, writable, executable in places:    # an L1 entry: one page at each place the table sits
            page = base + index * PAGE_SIZE
            self._set_page(page, Mapping((value & PTE_FRAME_MASK) >> PAGE_SHIFT, writable and bool(value & PTE_RW),
                                         executable and not value & PTE_NX) if value & PTE_PRESENT else None)

    def l1_slot(self, address: int) -> tuple[int, int]:
        """(L1 frame, index) that maps virtual `address` in the current tables (-EINVAL without one)."""
        if self.cr3 is None:
            raise MmuError(abi.XEN_EINVAL)
        frame = self.cr3
        for level in (L4, L3, L2):
            index = (address >> (PAGE_SHIFT + 9 * (level - 1))) & (ENTRIES - 1)
            if not self._is_guest_entry(level, index):
                raise MmuError(abi.XEN_EINVAL)
            entry = self._entry(frame, index)
            if not entry & PTE_PRESENT:
                raise MmuError(abi.XEN_EINVAL)
            frame = (entry & PTE_FRAME_MASK) >> PAGE_SHIFT
        return frame, (address >> PAGE_SHIFT) & (ENTRIES - 1)

    def update_va_mapping(self, address: int, value: int) -> None:
        if abi.HYPERVISOR_VIRT_START <= address < abi.HYPERVISOR_VIRT_END:
            raise MmuError(abi.XEN_EINVAL)
        frame, index = self.l1_slot(address)
        self.update_entry(frame, index, value)

    def pin(self, frame: int, level: int) -> None:
        if frame in self.pinned:
            raise MmuError(abi.XEN_EINVAL)
        self.get_type(frame, level)
        self.pinned.add(frame)

    def unpin(self, frame: int) -> None:
        if frame not in self.pinned:
            raise MmuError(abi.XEN_EINVAL)
        self.pinned.discard(frame)
        self.put_type(frame)          # what CR3 reaches keeps its references: the address space is unchanged

    def new_baseptr(self, frame: int) -> None:
        """Switch to the L4 table `frame` (the old one keeps only its other references)."""
        self.get_type(frame, L4)
        old, self.cr3 = self.cr3, frame
        if old is not None:
            self.put_type(old)
        self._refresh()

    def new_user_baseptr(self, frame: int) -> None:
        """The L4 for guest user mode (64-bit PV): 0 for none. Our guests never enter user mode, so
        it is kept, checked and counted but never walked."""
        if frame:
            self.get_type(frame, L4)
        old, self.user_cr3 = self.user_cr3, frame
        if old:
            self.put_type(old)

    # ---------------------------------------------------------------- descriptor tables
    def set_gdt(self, frames: list[int], entries: int) -> None:
        """Install the GDT (Xen's pv_set_gdt): every frame must be the domain's and take the
        descriptor-page type (not mapped writable, not a table, every descriptor valid), else -EINVAL
        and the old GDT stays; on success the old GDT's frames are released."""
        if entries > abi.FIRST_RESERVED_GDT_ENTRY:
            raise MmuError(abi.XEN_EINVAL)
        taken: list[int] = []
        try:
            for frame in frames:
                self.get_type(frame, SEG_DESC)
                taken.append(frame)
        except MmuError:
            for frame in taken:
                self.put_type(frame)
            raise
        for frame in self.gdt:
            self.put_type(frame)
        self.gdt, self.gdt_entries = tuple(frames), entries

    def update_descriptor(self, frame: int, offset: int, descriptor: int) -> None:
        """Xen's do_update_descriptor: write one checked descriptor into a descriptor page or into a
        page that may be writable (not a page table)."""
        stored = checked_descriptor(descriptor)
        if offset % 8 or stored is None or not self.owns(frame):
            raise MmuError(abi.XEN_EINVAL)
        in_use = self._types[frame] if self._counts[frame] else NONE
        self.get_type(frame, SEG_DESC if in_use == SEG_DESC else WRITABLE)
        try:
            self.vcpu.write_frame_bytes(frame, offset, stored.to_bytes(8, "little"))
        finally:
            self.put_type(frame)

    # ---------------------------------------------------------------- the address space
    def _refresh(self) -> None:
        """Bring the vCPU's mappings in line with the tables reachable from CR3 (a full walk; only
        the pages that differ are touched, unmappings first)."""
        pages: dict[int, Mapping] = {}
        tables: dict[int, list[tuple[int, bool, bool]]] = {}
        if self.cr3 is not None:
            self._walk(self.cr3, L4, 0, True, True, pages, tables)
        old = self._pages
        for page, mapping in old.items():
            if pages.get(page) != mapping:
                self.vcpu.unmap_page(page)
        self._pages = pages
        self._tables = tables
        for page, mapping in pages.items():
            if old.get(page) != mapping:
                self.vcpu.map_page(page, mapping.frame, mapping.writable, mapping.executable)

    def _set_page(self, page: int, mapping: Mapping | None) -> None:
        old = self._pages.get(page)
        if old == mapping:
            return
        if old is not None:
            del self._pages[page]
            self.vcpu.unmap_page(page)
        if mapping is not None:
            self.vcpu.map_page(page, mapping.frame, mapping.writable, mapping.executable)
            self._pages[page] = mapping

    def _walk(self, frame: int, level: int, base: int, writable: bool, executable: bool,
              pages: dict[int, Mapping], tables: dict[int, list[tuple[int, bool, bool]]]) -> None:
        tables.setdefault(frame, []).append((base, writable, executable))
        span = _span(level)
        for index, entry in enumerate(self._entries(frame)):
            if not entry & PTE_PRESENT or not self._is_guest_entry(level, index):
                continue
            address = _canonical(base + index * span) if level == L4 else base + index * span
            target = (entry & PTE_FRAME_MASK) >> PAGE_SHIFT
            entry_writable = writable and bool(entry & PTE_RW)
            entry_executable = executable and not entry & PTE_NX
            if level == L1:
                pages[address] = Mapping(target, entry_writable, entry_executable)
            else:
                self._walk(target, level - 1, address, entry_writable, entry_executable, pages, tables)

    # ---------------------------------------------------------------- checkpoints
    def save_state(self) -> MemoryState:
        return MemoryState(tuple(self._types), tuple(self._counts), frozenset(self.pinned), self.cr3, self.user_cr3,
                           self.gdt, self.gdt_entries)

    def load_state(self, state: MemoryState) -> None:
        """Restore the types, pins and CR3 (guest memory, with the tables in it, is restored first)."""
        self._types = list(state.types)
        self._counts = list(state.counts)
        self.pinned = set(state.pinned)
        self.cr3 = state.cr3
        self.user_cr3 = state.user_cr3
        self.gdt, self.gdt_entries = state.gdt, state.gdt_entries
        self._refresh()
