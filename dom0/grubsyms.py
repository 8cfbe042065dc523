"""`xenrr grub-symbols`: a symbol file for GDB from a GRUB 2 Xen image's own table of exported symbols.

GRUB's kernel (`kernel.img`, the first PT_LOAD of a `grub-mkimage -O x86_64-xen` image) is linked at 0,
never relocated, and carries no .symtab or DWARF; but it registers its exported symbols with its module
loader from a static table (gensymlist.sh's `struct symtab { const char *name; void *addr; int isfunc; }`,
24 bytes an entry on x86-64). This module finds that table in the image - the longest run of entries
whose name points at a C identifier inside the image, whose address lies inside the kernel and whose
isfunc is 0 or 1 - and writes an x86-64 ELF file GDB loads with `symbol-file` (or `add-symbol-file FILE`):
the kernel's bytes at their addresses, functions and variables as typed symbols (binutils `as` and
`ld` assemble it). Module symbols come from grub-xen-dbg's `*.module` files at the addresses GRUB
loaded them to (`rr-grub-modules` in gdbext/xenrr_gdb.py walks grub_dl_head for them).

Invariant: every symbol written is one of the table's entries, at the table's address; nothing is
guessed from code. An image without such a table is refused with a one-line error.
"""
from __future__ import annotations

import argparse
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

ENTRY = struct.Struct("<QQII")          # name pointer, address, isfunc, padding
MIN_ENTRIES = 16                        # a real table has ~160; shorter runs are coincidences
_IDENTIFIER = re.compile(rb"[A-Za-z_][A-Za-z0-9_]{0,127}\0")
EXIT_OK, EXIT_USAGE = 0, 2


class GrubSymbolsError(Exception):
    """The image cannot give a symbol file: one line."""


@dataclass(frozen=True)
class KernelSymbol:
    name: str
    address: int
    is_function: bool


@dataclass(frozen=True)
class Kernel:
    """GRUB's kernel segment: its file bytes at `base` and its size in memory (bss included)."""
    base: int
    data: bytes
    memory_size: int


def read_kernel(image: Path) -> Kernel:
    """The first PT_LOAD of a GRUB image (or of kernel.img itself)."""
    try:
        with open(image, "rb") as stream:
            elf = ELFFile(stream)
            if elf.get_machine_arch() != "x64":
                raise GrubSymbolsError(f"{image} is not an x86-64 ELF image")
            for segment in elf.iter_segments():
                if segment["p_type"] == "PT_LOAD":
                    return Kernel(segment["p_vaddr"], segment.data(), segment["p_memsz"])
    except OSError as error:
        raise GrubSymbolsError(f"cannot read {image}: {error.strerror}") from None
    except ELFError as error:
        raise GrubSymbolsError(f"{image} is not an ELF image: {error}") from None
    raise GrubSymbolsError(f"{image} has no loadable segment")


def _entry_at(kernel: Kernel, offset: int) -> KernelSymbol | None:
    name_pointer, address, is_function, padding = ENTRY.unpack_from(kernel.data, offset)
    if padding or is_function > 1 or not kernel.base <= address < kernel.base + kernel.memory_size:
        return None
    name_offset = name_pointer - kernel.base
    if not 0 <= name_offset < len(kernel.data):
        return None
    match = _IDENTIFIER.match(kernel.data, name_offset)
    if match is None:
        return None
    return KernelSymbol(match.group()[:-1].decode(), address, bool(is_function))


def exported_symbols(kernel: Kernel) -> list[KernelSymbol]:
    """The kernel's exported-symbol table: the longest run of valid entries, in table order."""
    best: list[KernelSymbol] = []
    for phase in range(0, ENTRY.size, 8):
        run: list[KernelSymbol] = []
        for offset in range(phase, len(kernel.data) - ENTRY.size + 1, ENTRY.size):
            entry = _entry_at(kernel, offset)
            if entry is None:
                if len(run) > len(best):
                    best = run
                run = []
            else:
                run.append(entry)
        if len(run) > len(best):
            best = run
    if len(best) < MIN_ENTRIES:
        raise GrubSymbolsError("no GRUB exported-symbol table in this image (is it a GRUB 2 Xen image?)")
    return best


def _assembly(kernel: Kernel, symbols: list[KernelSymbol], blob: Path) -> str:
    lines = ['\t.section .text, "awx", @progbits', "kernel_start:", f'\t.incbin "{blob}"',
             '\t.section .bss, "aw", @nobits', "bss_start:",
             f"\t.skip {max(kernel.memory_size - len(kernel.data), 0)}"]
    for symbol in sorted(symbols, key=lambda s: (s.address, s.name)):
        offset = symbol.address - kernel.base
        anchor = "kernel_start" if offset < len(kernel.data) else "bss_start"
        relative = offset if anchor == "kernel_start" else offset - len(kernel.data)
        lines += [f"\t.globl {symbol.name}", f"\t.type {symbol.name}, @{'function' if symbol.is_function else 'object'}",
                  f"\t.set {symbol.name}, {anchor} + {relative:#x}"]
    return "\n".join(lines) + "\n"


def write_symbol_file(image: Path, output: Path) -> int:
    """Write the symbol file for `image` to `output`; returns how many symbols it holds."""
    for tool in ("as", "ld"):
        if shutil.which(tool) is None:
            raise GrubSymbolsError(f"`{tool}` (binutils) is missing: run `make` or apt-get install binutils")
    kernel = read_kernel(image)
    symbols = exported_symbols(kernel)
    with tempfile.TemporaryDirectory(prefix="xenrr-grub-symbols-") as work:
        blob, source, obj = Path(work, "kernel.bin"), Path(work, "symbols.S"), Path(work, "symbols.o")
        blob.write_bytes(kernel.data)
        source.write_text(_assembly(kernel, symbols, blob))
        bss = kernel.base + len(kernel.data)
        for command in (["as", "--64", "-o", str(obj), str(source)],
                        ["ld", "-m", "elf_x86_64", "-static", "-nostdlib", "-e", f"{kernel.base:#x}",
                         "-Ttext", f"{kernel.base:#x}", "-Tbss", f"{bss:#x}", "-o", str(output), str(obj)]):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                detail = (result.stderr.strip().splitlines() or ["failed"])[0]
                raise GrubSymbolsError(f"{command[0]}: {detail}")
    return len(symbols)


def add_grub_commands(commands: "argparse._SubParsersAction") -> None:
    parser = commands.add_parser(
        "grub-symbols", help="write a GDB symbol file for a GRUB 2 Xen image (its exported symbols)",
        description="Find the exported-symbol table inside a GRUB 2 Xen image (grub-x86_64-xen.bin, an image "
                    "from grub-mkimage -O x86_64-xen, or kernel.img) and write an ELF file that GDB loads "
                    "with `symbol-file FILE`. Module symbols: `rr-grub-modules` in GDB.")
    parser.add_argument("image", metavar="GRUB-IMAGE", type=Path)
    parser.add_argument("-o", "--output", metavar="FILE", type=Path, required=True, help="the symbol file to write")


def command_grub_symbols(args: argparse.Namespace) -> int:
    count = write_symbol_file(args.image, args.output)
    print(f"{args.output}: {count} GRUB kernel symbols")
    return EXIT_OK


GRUB_COMMANDS = {"grub-symbols": command_grub_symbols}
