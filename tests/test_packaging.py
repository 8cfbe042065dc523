"""The package as setuptools builds it (what `make` installs): every module and the engine patches,
without build warnings."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_build_ships_the_engine_patches_without_warnings(tmp_path):
    built = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                            "--build-lib", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert "absent" not in built.stderr and "Warning" not in built.stderr, built.stderr
    shipped = sorted(path.name for path in (tmp_path / "xen" / "sleigh").glob("*.patch"))
    assert shipped == sorted(path.name for path in (ROOT / "xen" / "sleigh").glob("*.patch")) and shipped
    for package in ("xen", "dom0", "host", "stub", "gdbext"):
        assert (tmp_path / package / "__init__.py").exists(), package
