"""pytest fixtures that run the example checks as plain pytest tests (`pytest examples`).

Each `test_NAME.py` runs against a fresh recording of `NAME.keys` typed into kbdshell with the
virtual clock (made once per module, as `xenrr record` would). The fixture `d` is the same thing
`xenrr check` passes to each check: a `gdbext.api.Debugger` on that recording, reset (no breakpoints,
at the first instruction) before every test.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from gdbext.api import Debugger, xenrr_debug

EXAMPLES = Path(__file__).resolve().parent
ROOT = EXAMPLES.parent
KBDSHELL = ROOT / "guests" / "kbdshell" / "kbdshell.elf"


def record(keys: Path, session: Path) -> Path:
    """Record kbdshell typing the key script `keys` into `session` (building the guests if needed)."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "dom0.cli", "record", str(KBDSHELL), "-o", str(session),
                    "--clock", "virtual", "--keys-file", str(keys)], check=True, capture_output=True)
    return session


@pytest.fixture(scope="module")
def session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    name = Path(request.module.__file__).stem.removeprefix("test_")
    return record(EXAMPLES / f"{name}.keys", tmp_path_factory.mktemp(name) / f"{name}.xrr")


@pytest.fixture(scope="module")
def debugger(session: Path) -> Iterator[Debugger]:
    with xenrr_debug(session) as debugger:
        yield debugger


@pytest.fixture
def d(debugger: Debugger) -> Debugger:
    debugger.reset()
    return debugger
