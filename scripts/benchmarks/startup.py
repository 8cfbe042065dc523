"""Domain start-up against guest memory size: what `xenrr run --memory N` costs before the guest starts.

Owns one measurement, side by side in one process, median of interleaved repetitions: building the
kbdshell domain (`build_domain` + `Domain`, which maps the memory, writes the boot pages and starts
dirty tracking for the state digests) at 16, 256 and 4096 MiB, and the ratio of each to 16 MiB.
Start-up used to protect every page with its own engine call (19 s at 4096 MiB); it is now one
call per mapped run, so what remains grows with the memory only through the set of clean pages.
Invariant: each domain built is checked to start at the kernel's entry point.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from xen.builder import build_domain
from xen.domain import Domain

KBDSHELL = Path(__file__).resolve().parents[2] / "guests" / "kbdshell" / "kbdshell.elf"
SIZES_MIB = (16, 256, 4096)
REPEATS = {False: 3, True: 1}


def _start_up(image: bytes, mib: int) -> float:
    started = time.perf_counter()
    domain = Domain(build_domain(image, mib << 20))
    seconds = time.perf_counter() - started
    if domain.vcpu.pc != domain.image.entry:
        raise RuntimeError(f"the {mib} MiB domain does not start at the entry point")
    return seconds


def run(quick: bool) -> dict:
    image = KBDSHELL.read_bytes()
    samples: dict[int, list[float]] = {mib: [] for mib in SIZES_MIB}
    for _ in range(REPEATS[quick]):
        for mib in SIZES_MIB:
            samples[mib].append(_start_up(image, mib))
    medians = {mib: statistics.median(values) for mib, values in samples.items()}
    return {"sizes": [{"memory_mib": mib, "median_seconds": round(medians[mib], 3),
                       "ratio_to_16_mib": round(medians[mib] / medians[SIZES_MIB[0]], 2)} for mib in SIZES_MIB],
            "repeats": REPEATS[quick]}


def table(results: dict) -> str:
    lines = ["| guest memory | start-up median (s) | ratio to 16 MiB |", "|---:|---:|---:|"]
    lines += [f"| {entry['memory_mib']} MiB | {entry['median_seconds']:.3f} | {entry['ratio_to_16_mib']:.2f} |"
              for entry in results["sizes"]]
    return "\n".join(lines)
