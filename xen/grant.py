"""Grant tables: the guest's version-1 grant table and the backend-side operations on its grants.

Owns GNTTABOP_setup_table, query_size, set_version and get_version as Xen implements them
(xen/common/grant_table.c; layouts in grant_table.h), and the operations a dom0 backend performs on
the domain's grants: map / unmap (for a shared ring page) and copy. The table's frames are machine
frames outside the domain's pages, taken from the domain's extra-frame pool as the table grows
(one at creation, up to MAX_GRANT_FRAMES); the guest finds them through setup_table's frame list.
A grant is checked as Xen checks it: the entry's type must be GTF_permit_access for the mapping
domain, a writable use needs an entry without GTF_readonly, the frame must be one of the domain's
own pages; while in use the entry carries GTF_reading / GTF_writing. Failures are GNTST_* codes.

Only version 1 is offered, as Xen booted with `gnttab=max-ver:1`: set_version(2) is -ENOSYS.
A domain's own map/unmap/copy hypercalls (mapping grants of other domains) are not implemented.
Invariant: the table's state - frames, version, the pins and handles of active uses - changes only
in a hypercall or a backend operation, both deterministic, and is saved with the domain.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Callable

from xen import abi
from xen.vcpu import VCpu

MAX_GRANT_FRAMES = 4                  # the domain's configuration (xl.cfg max_grant_frames)
INITIAL_GRANT_FRAMES = 1
ENTRY_SIZE = ctypes.sizeof(abi.GrantEntryV1)
ENTRIES_PER_FRAME = abi.PAGE_SIZE // ENTRY_SIZE


class GrantError(Exception):
    """A grant operation failed with a GNTST_* status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class _Active:
    readers: int = 0
    writers: int = 0


@dataclass
class GrantState:
    version: int = 1
    frames: list[int] = field(default_factory=list)
    active: dict[int, _Active] = field(default_factory=dict)
    handles: dict[int, tuple[int, bool]] = field(default_factory=dict)     # handle -> (ref, readonly)
    next_handle: int = 0


class GrantTable:
    """The grant table of one domain."""

    def __init__(self, memory: VCpu, domid: int, frame_address: Callable[[int], int],
                 allocate_frame: Callable[[], int | None], is_domain_frame: Callable[[int], bool]):
        self._memory = memory
        self.domid = domid
        self._frame_address = frame_address
        self._allocate_frame = allocate_frame
        self._is_domain_frame = is_domain_frame
        self.state = GrantState()
        self._grow(INITIAL_GRANT_FRAMES)

    # ---------------------------------------------------------------- state
    def save_state(self) -> GrantState:
        return self.state

    def load_state(self, state: GrantState) -> None:
        self.state = state

    def state_bytes(self) -> bytes:
        state = self.state
        return repr((state.version, state.frames, sorted((ref, a.readers, a.writers) for ref, a in state.active.items()),
                     sorted(state.handles.items()), state.next_handle)).encode()

    @property
    def nr_entries(self) -> int:
        return len(self.state.frames) * ENTRIES_PER_FRAME

    def _grow(self, nr_frames: int) -> bool:
        while len(self.state.frames) < nr_frames:
            frame = self._allocate_frame()
            if frame is None:
                return False
            self._memory.write(self._frame_address(frame), bytes(abi.PAGE_SIZE))
            self.state.frames.append(frame)
        return True

    # ---------------------------------------------------------------- entries
    def _entry_address(self, ref: int) -> int:
        frame = self.state.frames[ref // ENTRIES_PER_FRAME]
        return self._frame_address(frame) + (ref % ENTRIES_PER_FRAME) * ENTRY_SIZE

    def _entry(self, ref: int) -> abi.GrantEntryV1:
        return abi.GrantEntryV1.from_buffer_copy(self._memory.read(self._entry_address(ref), ENTRY_SIZE))

    def _set_flags(self, ref: int, flags: int) -> None:
        self._memory.write(self._entry_address(ref) + abi.GrantEntryV1.flags.offset, flags.to_bytes(2, "little"))

    def _pin(self, ref: int, domid: int, readonly: bool) -> int:
        """Validate grant `ref` for `domid` and count a use of it; returns the granted frame."""
        if not 0 <= ref < self.nr_entries:
            raise GrantError(abi.GNTST_bad_gntref, f"grant reference {ref} is beyond the table ({self.nr_entries} entries)")
        entry = self._entry(ref)
        if entry.flags & abi.GTF_type_mask != abi.GTF_permit_access or entry.domid != domid:
            raise GrantError(abi.GNTST_general_error,
                             f"grant {ref}: bad flags {entry.flags:#x} or domain {entry.domid} (expected d{domid})")
        if not readonly and entry.flags & abi.GTF_readonly:
            raise GrantError(abi.GNTST_general_error, f"grant {ref} is read-only")
        if not self._is_domain_frame(entry.frame):
            raise GrantError(abi.GNTST_bad_page, f"grant {ref} names frame {entry.frame:#x}, not a page of the domain")
        active = self.state.active.setdefault(ref, _Active())
        if readonly:
            active.readers += 1
        else:
            active.writers += 1
        self._set_flags(ref, entry.flags | abi.GTF_reading | (0 if readonly else abi.GTF_writing))
        return entry.frame

    def _unpin(self, ref: int, readonly: bool) -> None:
        active = self.state.active[ref]
        if readonly:
            active.readers -= 1
        else:
            active.writers -= 1
        flags = self._entry(ref).flags
        if not active.writers:
            flags &= ~abi.GTF_writing
        if not active.writers and not active.readers:
            flags &= ~abi.GTF_reading
            del self.state.active[ref]
        self._set_flags(ref, flags)

    # ---------------------------------------------------------------- backend operations
    def map(self, ref: int, domid: int, readonly: bool) -> tuple[int, int]:
        """GNTTABOP_map_grant_ref by a backend in `domid`: (handle, address of the granted page)."""
        frame = self._pin(ref, domid, readonly)
        handle = self.state.next_handle
        self.state.next_handle += 1
        self.state.handles[handle] = (ref, readonly)
        return handle, self._frame_address(frame)

    def unmap(self, handle: int) -> None:
        """GNTTABOP_unmap_grant_ref of a handle `map` returned."""
        if handle not in self.state.handles:
            raise GrantError(abi.GNTST_bad_handle, f"grant handle {handle} is not mapped")
        ref, readonly = self.state.handles.pop(handle)
        self._unpin(ref, readonly)

    def copy_from(self, ref: int, domid: int, offset: int, length: int) -> bytes:
        """GNTTABOP_copy out of a granted page (source gref)."""
        self._check_span(offset, length)
        frame = self._pin(ref, domid, readonly=True)
        try:
            return bytes(self._memory.read(self._frame_address(frame) + offset, length))
        finally:
            self._unpin(ref, readonly=True)

    def copy_to(self, ref: int, domid: int, offset: int, data: bytes) -> None:
        """GNTTABOP_copy into a granted page (destination gref)."""
        self._check_span(offset, len(data))
        frame = self._pin(ref, domid, readonly=False)
        try:
            self._memory.write(self._frame_address(frame) + offset, data)
        finally:
            self._unpin(ref, readonly=False)

    @staticmethod
    def _check_span(offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > abi.PAGE_SIZE:
            raise GrantError(abi.GNTST_bad_copy_arg, f"copy of {length} bytes at offset {offset} crosses the page")

    # ---------------------------------------------------------------- hypercalls (decoded by xen/hypercalls.py)
    def domain_status(self, dom: int) -> int:
        """GNTST_okay for the domain itself, else the status Xen gives a domU naming another domain."""
        if dom in (abi.DOMID_SELF, self.domid):
            return abi.GNTST_okay
        return abi.GNTST_permission_denied if dom == 0 else abi.GNTST_bad_domain

    def setup_table(self, op: abi.GnttabSetupTable, write_frame: Callable[[int, int], bool]) -> None:
        """GNTTABOP_setup_table: grow to op.nr_frames and list the frames (`write_frame(i, mfn)`)."""
        op.status = self.domain_status(op.dom)
        if op.status != abi.GNTST_okay:
            return
        if op.nr_frames > MAX_GRANT_FRAMES or not self._grow(op.nr_frames):
            op.status = abi.GNTST_general_error
            return
        for index in range(op.nr_frames):
            if not write_frame(index, self.state.frames[index]):
                op.status = abi.GNTST_bad_virt_addr

    def query_size(self, op: abi.GnttabQuerySize) -> None:
        op.status = self.domain_status(op.dom)
        if op.status == abi.GNTST_okay:
            op.nr_frames = len(self.state.frames)
            op.max_nr_frames = MAX_GRANT_FRAMES

    def get_version(self, op: abi.GnttabGetVersion) -> int:
        """Returns 0 or -errno (Xen: -ESRCH for an unknown domain, -EPERM for one a domU may not query)."""
        status = self.domain_status(op.dom)
        if status == abi.GNTST_bad_domain:
            return -abi.XEN_ESRCH
        if status == abi.GNTST_permission_denied:
            return -abi.XEN_EPERM
        op.version = self.state.version
        return 0

    def set_version(self, op: abi.GnttabSetVersion) -> int:
        """Returns 0 or -errno; op.version is set to the table's version either way, as Xen does."""
        result = 0
        if op.version not in (1, 2):
            result = -abi.XEN_EINVAL
        elif op.version == 2:
            result = -abi.XEN_ENOSYS            # gnttab=max-ver:1
        op.version = self.state.version
        return result
