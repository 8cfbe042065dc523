"""`xenrr grub-symbols`: GDB symbols for GRUB's kernel from the exported-symbol table the image carries.

Checked with the real Debian images (grub-xen-host, grub-xen-bin, grub-common, installed by `make`):
the table of the stock image and of kernel.img agree, a grub-mkimage image with other modules gives
the same kernel symbols, stock GDB reads the file (typed symbols, the image's own bytes at them), and a
non-GRUB image is refused with one line and exit status 2.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dom0.grubsyms import exported_symbols, read_kernel

STOCK_IMAGE = Path("/usr/lib/grub-xen/grub-x86_64-xen.bin")
KERNEL_IMG = Path("/usr/lib/grub/x86_64-xen/kernel.img")
pytestmark = pytest.mark.skipif(not STOCK_IMAGE.exists() or not KERNEL_IMG.exists(),
                                reason="GRUB's Xen image is missing: run `make` (it installs grub-xen-host/-bin)")


def test_the_stock_image_and_kernel_img_carry_the_same_table():
    stock = exported_symbols(read_kernel(STOCK_IMAGE))
    assert stock == exported_symbols(read_kernel(KERNEL_IMG))
    by_name = {symbol.name: symbol for symbol in stock}
    assert len(stock) > 150
    assert by_name["grub_getkey"].is_function and by_name["grub_dl_head"].is_function is False
    # grub_errmsg is char[GRUB_MAX_ERRMSG = 256] and grub_errno follows it (kern/err.c)
    assert by_name["grub_errno"].address - by_name["grub_errmsg"].address == 256


def test_gdb_loads_the_symbol_file(tmp_path, xenrr):
    output = tmp_path / "grub.sym"
    run = xenrr("grub-symbols", STOCK_IMAGE, "-o", output)
    assert run.status == 0, run.stderr
    assert run.stdout.startswith(f"{output}: ") and "GRUB kernel symbols" in run.stdout
    symbols = {symbol.name: symbol for symbol in exported_symbols(read_kernel(STOCK_IMAGE))}
    gdb = subprocess.run(["gdb", "-nx", "-batch", "-ex", "info address grub_getkey", "-ex", "info address grub_dl_head",
                          "-ex", "x/8xb grub_getkey", str(output)], capture_output=True, text=True, timeout=60)
    assert f'"grub_getkey" is at {symbols["grub_getkey"].address:#x}' in gdb.stdout, gdb.stdout + gdb.stderr
    assert f'"grub_dl_head" is at {symbols["grub_dl_head"].address:#x}' in gdb.stdout
    kernel = read_kernel(STOCK_IMAGE)
    start = symbols["grub_getkey"].address - kernel.base
    expected = " ".join(f"{byte:#04x}" for byte in kernel.data[start:start + 8])
    assert expected in " ".join(gdb.stdout.split()), gdb.stdout


@pytest.mark.skipif(shutil.which("grub-mkimage") is None, reason="grub-mkimage (grub-common) is missing: run `make`")
def test_an_image_grub_mkimage_builds_gives_the_same_kernel_symbols(tmp_path):
    image = tmp_path / "grub-test.bin"
    subprocess.run(["grub-mkimage", "-O", "x86_64-xen", "-o", str(image), "-p", "(memdisk)/boot/grub",
                    "echo", "halt", "configfile"], check=True, capture_output=True, timeout=60)
    assert exported_symbols(read_kernel(image)) == exported_symbols(read_kernel(KERNEL_IMG))


def test_a_non_grub_image_is_refused_in_one_line(tmp_path, minimal_elf, xenrr):
    run = xenrr("grub-symbols", minimal_elf, "-o", tmp_path / "x.sym")
    assert run.status == 2
    assert run.stderr == "xenrr: error: no GRUB exported-symbol table in this image (is it a GRUB 2 Xen image?)\n"
    missing = xenrr("grub-symbols", tmp_path / "nope.bin", "-o", tmp_path / "x.sym")
    assert missing.status == 2 and missing.stderr.startswith("xenrr: error: cannot read") and "Traceback" not in missing.stderr
