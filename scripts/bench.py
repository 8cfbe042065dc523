"""Run the benchmarks (`make bench`): every module in scripts/benchmarks/, one JSON file each.

Owns discovery, the command line and the result files; the measurements belong to the modules
(contract in scripts/benchmarks/__init__.py). For each benchmark NAME it writes
bench/results/NAME.json - the results plus when, where and how they were measured - and prints the
benchmark's table. Invariant: a results file is written only for a benchmark that finished.

    python scripts/bench.py [--quick] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import benchmarks

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"


def benchmark_names() -> list[str]:
    return sorted(module.name for module in pkgutil.iter_modules(benchmarks.__path__))


def _git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def _host() -> dict:
    return {"machine": platform.machine(), "processor_count": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}", "load_average": os.getloadavg()[0]}


def run_benchmark(name: str, quick: bool) -> dict:
    """Run one benchmark module and return its results record (also written to bench/results/NAME.json)."""
    module = importlib.import_module(f"benchmarks.{name}")
    started = time.perf_counter()
    results = module.run(quick)
    record = {"benchmark": name, "quick": quick, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "commit": _git_commit(), "host": _host(), "seconds": round(time.perf_counter() - started, 1),
              "results": results}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(module.table(results))
    return record


def main(argv: Sequence[str] | None = None) -> int:
    names = benchmark_names()
    parser = argparse.ArgumentParser(prog="bench.py", description="Run xenrr's benchmarks; results go to "
                                     "bench/results/NAME.json and a table per benchmark to stdout.")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (small sizes, few repeats)")
    parser.add_argument("--only", metavar="NAME", action="append",
                        help=f"run only this benchmark (repeatable); one of: {', '.join(names)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        print(f"bench.py: error: no benchmark named {', '.join(unknown)}; there are: {', '.join(names)}",
              file=sys.stderr)
        return 2
    for name in args.only or names:
        print(f"== {name}{' (quick)' if args.quick else ''}", flush=True)
        run_benchmark(name, args.quick)
        print(f"   -> {(RESULTS_DIR / f'{name}.json').relative_to(ROOT)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
