"""Shared fixtures: the project's guest kernels, built on demand with the guests Makefile."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "guests"


def guest_path(name: str) -> Path:
    """The ELF of guests/<name>, building the guests first when it is missing or stale."""
    subprocess.run(["make", "-s", "-C", str(GUESTS)], check=True, capture_output=True)
    path = GUESTS / name / f"{name}.elf"
    assert path.exists(), f"guests Makefile did not produce {path}"
    return path


@pytest.fixture(scope="session")
def kbdshell_elf() -> Path:
    return guest_path("kbdshell")
