"""The patch set itself: it applies to a fresh copy of the installed package's spec, the result
compiles, and every patch is a small documented diff of the x86 .sinc files."""
import re
import shutil
import subprocess
from pathlib import Path

import icicle

ROOT = Path(__file__).resolve().parents[2]
PATCHES = sorted((ROOT / 'xen' / 'sleigh').glob('*.patch'))
STOCK_X86 = Path(icicle.__file__).resolve().parent / 'Ghidra' / 'Processors' / 'x86'


def test_patch_set_is_present():
    assert len(PATCHES) >= 10
    assert [p.name[:3] for p in PATCHES] == [f'{n:02d}-' for n in range(1, len(PATCHES) + 1)]


def test_patches_apply_in_order_to_a_fresh_stock_copy_and_compile(tmp_path, monkeypatch):
    x86 = tmp_path / 'Ghidra' / 'Processors' / 'x86'
    shutil.copytree(STOCK_X86, x86)
    languages = x86 / 'data' / 'languages'
    for patch in PATCHES:
        with patch.open('rb') as diff:
            result = subprocess.run(['patch', '-p1', '--forward', '-d', str(languages)], stdin=diff,
                                    capture_output=True, text=True)
        assert result.returncode == 0, f'{patch.name}: {result.stdout}{result.stderr}'
        assert 'offset' not in result.stdout and 'fuzz' not in result.stdout, f'{patch.name} is stale: {result.stdout}'
    assert not list(languages.glob('*.rej')) and not list(languages.glob('*.orig'))
    monkeypatch.setenv('GHIDRA_SRC', str(tmp_path))    # read when an instance is created
    vm = icicle.Icicle('x86_64')                       # compiles the SLEIGH spec; raises on any error
    assert vm.architecture.startswith('x86_64')


def test_patches_are_unified_diffs_of_sinc_files_only():
    for patch in PATCHES:
        text = patch.read_text()
        old = re.findall(r'^--- a/(\S+)', text, re.M)
        new = re.findall(r'^\+\+\+ b/(\S+)', text, re.M)
        assert old and old == new, patch.name
        assert all(name.endswith('.sinc') and '/' not in name for name in old), patch.name


def test_every_patch_is_documented():
    readme = (ROOT / 'xen' / 'sleigh' / 'README.md').read_text()
    docs = (ROOT / 'docs' / 'engine.md').read_text()
    for patch in PATCHES:
        assert f'`{patch.stem}`' in readme, f'{patch.name} missing from xen/sleigh/README.md'
        assert f'`{patch.stem}`' in docs, f'{patch.name} missing from docs/engine.md'


def test_stock_spec_is_untouched():
    """Patching works on a copy: the installed package keeps its own files."""
    text = (STOCK_X86 / 'data' / 'languages' / 'ia.sinc').read_text()
    assert 'vcpu_exit' not in text
