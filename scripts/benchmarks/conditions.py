"""Conditional breakpoints: reverse-continue from the end with a condition false at all hits but one,
evaluated by GDB (host) and by the stub (target), against the unconditional reverse-continue.

Owns one measurement through the real pieces: a `xenrr serve` process and GDB connected to it over
the remote protocol, timed inside GDB (its Python, around `gdb.execute`), so each figure is what the
user waits for. The recording is kbdshell typing 64 keys (`echo ` + 53 x `x`, Enter, `halt`, Enter)
with the virtual clock; `handle_key` runs once per key. From the end of the recording:
  - unconditional: `break handle_key`, reverse-continue (to the last key: one hit back);
  - host / target: `break handle_key if ed.len == 0 && ed.hist_count == 0` (true only at the first
    key, so 63 of the 64 hits are false) with `set breakpoint condition-evaluation host` / `target`,
    reverse-continue back to the first key.
Invariant: the three are measured in one session, interleaved, medians; every stop is checked (the
conditional ones at the first key, `e`, with the condition true), or the benchmark fails.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KBDSHELL = ROOT / "guests" / "kbdshell" / "kbdshell.elf"
KEYS = "echo " + "x" * 53 + r"\rhalt\r"            # 64 keys
CONDITION = "ed.len == 0 && ed.hist_count == 0"
REPEATS = {False: 5, True: 1}

# Runs inside GDB: times reverse-continue from the end in the three ways, prints one JSON line.
GDB_SCRIPT = """
import json, re, time
import gdb

def run(command):
    return gdb.execute(command, to_string=True)

def to_end():
    run("delete")
    run("continue")
    event, events = re.match(r"event (\\d+) of (\\d+),", run("monitor when")).groups()
    if event != events:
        raise RuntimeError("continue without breakpoints did not reach the end of the recording")

def timed_reverse_continue(breakpoint, evaluation):
    to_end()
    run("set breakpoint condition-evaluation " + evaluation)
    run("break " + breakpoint)
    started = time.perf_counter()
    run("reverse-continue")
    seconds = time.perf_counter() - started
    stop = (int(gdb.parse_and_eval("$pc")), int(gdb.parse_and_eval("c")), int(gdb.parse_and_eval("ed.len")))
    return seconds, stop

samples = {"unconditional": [], "host": [], "target": []}
stops = {}
for _ in range(REPEATS):
    for name, breakpoint, evaluation in (("unconditional", "handle_key", "host"),
                                         ("host", "handle_key if CONDITION", "host"),
                                         ("target", "handle_key if CONDITION", "target")):
        seconds, stops[name] = timed_reverse_continue(breakpoint, evaluation)
        samples[name].append(seconds)
handle_key = int(gdb.parse_and_eval("(long) &handle_key"))
print("RESULT " + json.dumps({"samples": samples, "stops": stops, "handle_key": handle_key}))
run("kill")
"""


def _record(directory: Path) -> Path:
    log = directory / "keys64.xrr"
    subprocess.run([sys.executable, "-m", "dom0.cli", "record", str(KBDSHELL), "-o", str(log), "--clock", "virtual",
                    "--keys", KEYS], check=True, capture_output=True, cwd=ROOT)
    return log


def _measure(log: Path, repeats: int) -> dict:
    server = subprocess.Popen([sys.executable, "-m", "dom0.cli", "serve", str(log), "--port", "0"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = re.fullmatch(r"listening on (\S+)\n", server.stdout.readline()).group(1)
        script = log.parent / "measure.py"
        script.write_text(GDB_SCRIPT.replace("REPEATS", str(repeats)).replace("CONDITION", CONDITION))
        done = subprocess.run(["gdb", "-nx", "-batch", "-ex", "set pagination off", "-ex", f"file {KBDSHELL}",
                               "-ex", f"target remote {address}", "-x", str(script)],
                              capture_output=True, text=True, timeout=600)
        found = re.search(r"^RESULT (.*)$", done.stdout, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"GDB did not measure: {done.stdout[-800:]} {done.stderr[-800:]}")
        return json.loads(found.group(1))
    finally:
        server.wait(timeout=30)


def run(quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        measured = _measure(_record(Path(directory)), REPEATS[quick])
    handle_key, stops = measured["handle_key"], measured["stops"]
    if stops["unconditional"][:2] != [handle_key, ord("\r")]:
        raise RuntimeError(f"the unconditional reverse-continue stopped at {stops['unconditional']}, not the last key")
    for name in ("host", "target"):
        if stops[name] != [handle_key, ord("e"), 0]:
            raise RuntimeError(f"the {name}-evaluated reverse-continue stopped at {stops[name]}, not the first key")
    medians = {name: sorted(values)[len(values) // 2] for name, values in measured["samples"].items()}
    return {"keys": 64, "condition": CONDITION, "repeats": REPEATS[quick], "median_seconds": medians,
            "samples_seconds": measured["samples"],
            "target_to_unconditional": medians["target"] / medians["unconditional"],
            "host_to_unconditional": medians["host"] / medians["unconditional"],
            "host_to_target": medians["host"] / medians["target"]}


def table(results: dict) -> str:
    seconds = results["median_seconds"]
    lines = [f"64 keys, `break handle_key if {results['condition']}` (63 false hits), reverse-continue from "
             f"the end, median of {results['repeats']}",
             "| reverse-continue | median (s) | ratio to unconditional | target (s) |", "|---|---:|---:|---:|",
             f"| unconditional (one hit back) | {seconds['unconditional']:.3f} | 1.00 | - |",
             f"| condition evaluated by GDB (host) | {seconds['host']:.3f} | {results['host_to_unconditional']:.2f} | - |",
             f"| condition evaluated by the stub (target) | {seconds['target']:.3f} | "
             f"{results['target_to_unconditional']:.2f} | 0.1 |"]
    return "\n".join(lines)
