"""The benchmarks `scripts/bench.py` runs: every module of this package is one benchmark.

A benchmark module owns one measurement and exposes two functions:
- `run(quick: bool) -> dict`: measures and returns named results (JSON-serialisable: numbers, strings,
  lists, dicts). `quick` asks for a short smoke run that still exercises every code path.
- `table(results: dict) -> str`: the results as a small human-readable table.
Invariant: a benchmark only measures and describes; bench.py discovers, stores and prints. Benchmarks
never run in the test suite, and nothing asserts their timings.
"""
