"""A GDB symbol file for the hypercall page: symbols and call-frame information (CFI) for its entries.

A replay stopped in a blocking hypercall - where every `goto EVENT` before a key or a timer lands -
sits in the hypercall page just after `syscall`, with rcx and r11 pushed above the return address
(the entry is `push %rcx; push %r11; mov $N,%eax; syscall; pop %r11; pop %rcx; ret`, as Xen writes
it). The hypervisor writes that page, so the guest's ELF has no unwind information for it and GDB's
prologue analysis takes the saved r11 for the return address (`#1 0x0 in ?? ()`), and `finish`
never returns.

This module assembles, with the system's gcc, a small ELF whose code is the same 128 entries, each
with exact CFI and a symbol named after its hypercall (`xen_hypercall_sched_op`), linked at 0. The
stub offers it to GDB as a library loaded at the page's address (`qXfer:libraries:read`); GDB then
unwinds through the page: `bt` shows the guest's caller and `finish` returns to it, with stock GDB
and no extension. The file is cached under build/gdb/ by the digest of its source.

Invariant: a symbol file is offered only when its code is byte for byte the page the domain
builder wrote; otherwise (or without gcc) none is, and GDB behaves as before.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from elftools.elf.elffile import ELFFile

from xen import abi

PAGE_SIZE = 4096
ENTRY_SIZE = 32
CACHE_DIR = Path(__file__).resolve().parent.parent / "build" / "gdb"

_LINKER_SCRIPT = "SECTIONS { . = 0; .text : { *(.text) } .eh_frame : { *(.eh_frame) } }\n"


def _hypercall_names() -> dict[int, str]:
    return {value: name[len("HYPERVISOR_"):] for name, value in vars(abi).items()
            if name.startswith("HYPERVISOR_") and isinstance(value, int)}


def _entry_source(number: int, name: str) -> str:
    """One entry with its CFI: the CFA stays the caller's rsp before the call plus 8 throughout."""
    symbol = f"xen_hypercall_{name}"
    lines = [f".globl {symbol}", f".type {symbol}, @function", f"{symbol}:", ".cfi_startproc",
             "push %rcx", ".cfi_adjust_cfa_offset 8", ".cfi_rel_offset %rcx, 0",
             "push %r11", ".cfi_adjust_cfa_offset 8", ".cfi_rel_offset %r11, 0"]
    if number == abi.HYPERVISOR_iret:
        # The guest jumps here with its iret frame on the stack; the hypercall never returns.
        lines += ["push %rax", ".cfi_adjust_cfa_offset 8", f"mov ${number}, %eax", "syscall"]
    else:
        lines += [f"mov ${number}, %eax", "syscall",
                  "pop %r11", ".cfi_adjust_cfa_offset -8", ".cfi_restore %r11",
                  "pop %rcx", ".cfi_adjust_cfa_offset -8", ".cfi_restore %rcx", "ret"]
    lines += [".cfi_endproc", f".size {symbol}, . - {symbol}", f".balign {ENTRY_SIZE}, 0xcc"]
    return "\n".join(lines) + "\n"


def page_source() -> str:
    """The assembly of the whole page (GNU as, AT&T syntax)."""
    names = _hypercall_names()
    entries = (_entry_source(number, names.get(number, f"{number}")) for number in range(PAGE_SIZE // ENTRY_SIZE))
    return ".text\n" + "".join(entries)


def _build(source: str, output: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="xenrr-hypercall-page-") as work:
        assembly, script = Path(work) / "page.S", Path(work) / "page.ld"
        assembly.write_text(source)
        script.write_text(_LINKER_SCRIPT)
        staged = Path(work) / "page.elf"
        subprocess.run(["gcc", "-nostdlib", "-static", "-Wl,--build-id=none", "-Wl,-z,noexecstack", "-Wl,-e,0",
                        "-T", str(script), "-o", str(staged), str(assembly)], check=True, capture_output=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, output)        # atomic: concurrent servers never see half a file


def _text_of(path: Path) -> bytes:
    with path.open("rb") as file:
        section = ELFFile(file).get_section_by_name(".text")
        return section.data() if section is not None and section["sh_addr"] == 0 else b""


def symbol_file(page: bytes) -> Path | None:
    """The symbol file for a hypercall page with these contents, made if needed; None when it cannot
    be made (no gcc) or would not describe this page."""
    source = page_source()
    path = CACHE_DIR / f"hypercall-page-{hashlib.sha256(source.encode()).hexdigest()[:16]}.elf"
    if not path.exists():
        if shutil.which("gcc") is None:
            return None
        try:
            _build(source, path)
        except (OSError, subprocess.CalledProcessError):
            return None
    return path if _text_of(path) == page else None


def library_list(path: Path, address: int) -> bytes:
    """The qXfer:libraries:read document offering `path` as a library with its code at `address`."""
    name = str(path).replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return (f'<library-list><library name="{name}"><segment address="{address:#x}"/></library>'
            f"</library-list>").encode()
