"""Start-up cost: a command imports only what it uses (issue 15, fixed costs).

Each case runs the real CLI in a fresh interpreter and lists the heavy libraries it imported. Time is
measured by `make bench` (scripts/benchmarks/fixed_costs.py), never here; what a test can hold
still is which modules a command loads: Dask, GDB's MI client, the shell's prompt_toolkit, the
schema validator, the disassembler and the progress bar belong to the commands that use them.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEAVY = ("dask", "distributed", "pygdbmi", "prompt_toolkit", "jsonschema", "capstone", "tqdm",
         "stub", "gdbext.api", "gdbext.shell", "host.hypervisor", "importlib.metadata")

_PROBE = """
import json, sys
from dom0.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:       # --help
    status = exit.code
heavy = sorted({name for name in sys.modules for prefix in json.loads(HEAVY)
                if name == prefix or name.startswith(prefix + ".")})
print("\\n" + json.dumps({"status": status, "heavy": heavy}))
"""


def _heavy_modules(*arguments: str) -> tuple[int, list[str]]:
    done = subprocess.run([sys.executable, "-c", _PROBE.replace("HEAVY", repr(json.dumps(HEAVY))), *arguments],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    report = json.loads(done.stdout.splitlines()[-1])
    return report["status"], report["heavy"]


@pytest.mark.parametrize("arguments", [("--help",), ("run", "--help")], ids=["help", "run-help"])
def test_help_imports_no_heavy_library(arguments):
    assert _heavy_modules(*arguments) == (0, [])


def test_run_of_a_guest_imports_no_heavy_library(minimal_elf):
    status, heavy = _heavy_modules("run", str(minimal_elf), "--keys", r"hello world\r", "--clock", "virtual")
    assert status == 0
    assert heavy == []


def test_dump_validates_the_header_with_jsonschema_when_it_needs_it(recorder, minimal_elf):
    """The lazily imported validator still runs: dump of a real recording loads it and says the log is fine."""
    log = recorder(minimal_elf, "--keys", r"hello world\r", "--clock", "virtual").path
    status, heavy = _heavy_modules("dump", str(log))
    assert status == 0
    assert "jsonschema" in heavy and "dask" not in heavy
