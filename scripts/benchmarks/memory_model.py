"""The PV memory model: what a page-table change costs the hypervisor.

Owns one measurement of xen/mm.py and the vCPU's realisation of mappings (xen/vcpu.py) on a kbdshell
domain of 64 MiB, through the real hypercall handlers: update_va_mapping of one page (validation, the
L1 write, one engine page unmapped and one mapped), a NEW_BASEPTR switch to a copy of the L4 and back
(a full walk of the tables; nothing moves), a NEW_BASEPTR onto tables that map all 16384 pages (every
new page realised in the engine), and the translation-cache discard a remapped code page costs.
Invariant: every operation measured is checked to have succeeded; each figure is the median of its
repeats.
"""
from __future__ import annotations

import statistics
import struct
import time
from pathlib import Path

from benchmarks.record_replay import _median_time
from xen import abi, hypercalls
from xen.builder import build_domain
from xen.domain import Domain

ROOT = Path(__file__).resolve().parents[2]
KBDSHELL = ROOT / "guests" / "kbdshell" / "kbdshell.elf"
MEMORY = 64 << 20
DATA = 0x63
REPEATS = {False: 200, True: 20}


def _call(domain: Domain, number: int, *arguments: int) -> None:
    result = hypercalls.dispatch(domain, number, tuple(arguments) + (0,) * (5 - len(arguments)))
    if result != 0:
        raise RuntimeError(f"hypercall {number} failed: {result}")


def _mmuext(domain: Domain, scratch: int, command: int, frame: int) -> None:
    op = abi.MmuextOp(cmd=command)
    op.arg1.mfn = frame
    domain.vcpu.write(scratch, bytes(op))
    _call(domain, abi.HYPERVISOR_mmuext_op, scratch, 1, 0, abi.DOMID_SELF)


def _identity_tables(domain: Domain, first: int) -> int:
    """Write 4-level tables mapping every pfn at its identity address into frames from `first` on
    (read-only where they map themselves or the bootstrap tables); returns the L4's frame."""
    image = domain.image
    nr_pages = image.nr_pages
    l1_count = -(-nr_pages // 512)
    l2_count = -(-l1_count // 512)
    l4, l3, l2s, l1s = first, first + 1, first + 2, first + 2 + l2_count
    table_frames = set(range(first, l1s + l1_count))
    bootstrap = set(range(image.l4_frame, image.l4_frame + image.layout.nr_pt_frames))
    write = domain.vcpu.write_frame
    write(l4, struct.pack("<Q", (l3 << 12) | DATA) + bytes(4088))
    write(l3, b"".join(struct.pack("<Q", ((l2s + i) << 12) | DATA) for i in range(l2_count)).ljust(4096, b"\0"))
    for i in range(l2_count):
        entries = [((l1s + j) << 12) | DATA for j in range(i * 512, min(l1_count, (i + 1) * 512))]
        write(l2s + i, struct.pack(f"<{len(entries)}Q", *entries).ljust(4096, b"\0"))
    for j in range(l1_count):
        entries = []
        for pfn in range(j * 512, min(nr_pages, (j + 1) * 512)):
            read_only = pfn in table_frames or pfn in bootstrap
            entries.append((pfn << 12) | (0x61 if read_only else DATA))
        write(l1s + j, struct.pack(f"<{len(entries)}Q", *entries).ljust(4096, b"\0"))
    return l4


def run(quick: bool) -> dict:
    repeats = REPEATS[quick]
    domain = Domain(build_domain(KBDSHELL, MEMORY))
    layout = domain.image.layout
    scratch = layout.bootstrap_end - 2 * 4096
    window = layout.bootstrap_end - 4096
    frames = [domain.image.nr_pages - 1 - i for i in range(2)]
    flip = iter(range(10**9))

    def remap() -> None:
        frame = frames[next(flip) % 2]
        _call(domain, abi.HYPERVISOR_update_va_mapping, window, (frame << 12) | DATA, abi.UVMF_INVLPG)

    update_va_mapping = _median_time(remap, repeats)
    _call(domain, abi.HYPERVISOR_update_va_mapping, window, 0, abi.UVMF_INVLPG)

    copy = domain.image.nr_pages - 3
    domain.vcpu.write_frame(copy, domain.vcpu.read_frame(domain.image.l4_frame))
    _mmuext(domain, scratch, abi.MMUEXT_PIN_L4_TABLE, copy)
    targets = iter(range(10**9))

    def switch() -> None:
        _mmuext(domain, scratch, abi.MMUEXT_NEW_BASEPTR, copy if next(targets) % 2 == 0 else domain.image.l4_frame)

    same_map_switch = _median_time(switch, repeats)
    if domain.memory.cr3 != domain.image.l4_frame:
        switch()
    _mmuext(domain, scratch, abi.MMUEXT_UNPIN_TABLE, copy)
    pages_before = len(domain.vcpu.mappings())
    identity = _identity_tables(domain, first=domain.image.nr_pages - 64)
    started = time.perf_counter()
    _mmuext(domain, scratch, abi.MMUEXT_PIN_L4_TABLE, identity)
    _mmuext(domain, scratch, abi.MMUEXT_NEW_BASEPTR, identity)
    full_switch = time.perf_counter() - started
    pages_after = len(domain.vcpu.mappings())

    vcpu = domain.vcpu
    code_frame = layout.frame(domain.image.entry & ~0xFFF)
    original = vcpu.read_frame(code_frame)
    patched = original[:-1] + bytes([original[-1] ^ 0xFF])
    flushes = []
    for turn in range(max(3, repeats // 20)):
        vcpu.pc = domain.image.entry
        vcpu.step()                       # the page now holds translated code
        started = time.perf_counter()
        vcpu.write_frame(code_frame, patched if turn % 2 == 0 else original)   # discards it
        flushes.append(time.perf_counter() - started)
    flush = statistics.median(flushes)
    return {"memory_bytes": MEMORY, "update_va_mapping_seconds": update_va_mapping,
            "new_baseptr_same_map_seconds": same_map_switch, "pages_mapped_before": pages_before,
            "new_baseptr_identity_seconds": full_switch, "pages_mapped_after": pages_after,
            "translation_discard_seconds": flush}


def table(results: dict) -> str:
    rows = [
        ("update_va_mapping, one page remapped", results["update_va_mapping_seconds"]),
        (f"NEW_BASEPTR, same mappings ({results['pages_mapped_before']} pages)",
         results["new_baseptr_same_map_seconds"]),
        (f"PIN + NEW_BASEPTR, identity map ({results['pages_mapped_after']} pages)",
         results["new_baseptr_identity_seconds"]),
        ("translation-cache discard, all pages mapped", results["translation_discard_seconds"]),
    ]
    lines = [f"PV memory model, {results['memory_bytes'] >> 20} MiB kbdshell domain"]
    lines += [f"  {name:<52} {seconds * 1e3:10.3f} ms" for name, seconds in rows]
    return "\n".join(lines)
