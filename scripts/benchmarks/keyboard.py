"""The PV keyboard beside the console: sustained key rate with nothing lost, and log bytes per key event.

Owns one measurement, in this process, of kbdshell typed on two input paths side by side - the console
ring (`--keyboard console`, one byte per key) and the PV keyboard (`--keyboard pv`, a press and a
release per key, Shift around capitals and symbols):
- Sustained rate: a flood of keys with no pauses (numbered `echo` lines, then `halt`), recorded with
  `dom0.record.record` under `--clock real` (every due key goes in at once, up to the ring's free room:
  1 KiB of console ring, 51 keyboard events) and `--clock virtual` (one console key, or one keyboard
  event, per idle moment); the two devices interleaved, REPEATS times, medians. Rates are over the whole
  record() call (log daemon start included). Nothing lost: the log's console bytes, or its keyboard
  events, are exactly the script's, and kbdshell echoed every line.
- Log bytes per key event: a paced script (keys 20 ms apart under the real clock, as a person types)
  recorded on each device; its records encoded again with xen.logrecord.Encoder in log order, the
  bytes of the key records (console-input, keyboard) divided by their number, and by the keys typed.
Invariant: a flood that loses a key, or a session that does not end with the guest powering off,
aborts the benchmark.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.guest_speed import KBDSHELL, MEMORY_BYTES
from dom0.consoleinput import KeyScript, parse_key_script
from dom0.keyboard import KeyEventScript
from dom0.logfile import LogReader
from dom0.record import record
from dom0.toolstack import connect_xenstore, xenstore_config
from xen.builder import DomainImage, build_domain
from xen.domain import Domain
from xen.inject import Kind
from xen.logrecord import Encoder

FLOOD_KEYS = {False: {"real": 10_000, "virtual": 2_000}, True: {"real": 1_000, "virtual": 500}}
PACED_KEYS = {False: 200, True: 40}
REPEATS = {False: 3, True: 1}
KEY_INTERVAL_MS = 20
DEVICES = ("console", "pv")
KEY_KINDS = {"console": Kind.CONSOLE_INPUT, "pv": Kind.KEYBOARD}


def flood_text(keys: int) -> str:
    """About `keys` keys: numbered echo lines with capitals and symbols (Shift on the PV keyboard), then halt."""
    text = "".join(f"echo {index} Key{'!' * (index % 3)} {'x' * (index % 20)}\r" for index in range(keys))
    return text[:max(keys - 6, 0)] + "\rhalt\r"


def _script(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", r"\r")


def _session(image: DomainImage, device: str, script: str, clock: str, path: Path) -> dict:
    console = bytearray()
    domain = Domain(image, console_output=console.extend)
    config = xenstore_config(KBDSHELL, device)
    connect_xenstore(domain, config)
    keys = KeyEventScript(script) if device == "pv" else KeyScript(parse_key_script(script))
    started = time.perf_counter()
    result = record(domain, KBDSHELL, keys, path, clock=clock, max_instructions=None, linger_ns=10**9,
                    xenstore=config, keyboard=device == "pv")
    seconds = time.perf_counter() - started
    if result.outcome.reason != "shutdown":
        raise RuntimeError(f"{device} {clock}: the session did not end with the guest powering off: {result.outcome}")
    return {"seconds": seconds, "console": bytes(console), "records": result.records}


def _key_records(path: Path, device: str) -> tuple[list[bytes], int]:
    """The key records' payloads, and their encoded bytes in the log (re-encoded in log order)."""
    encoder, encoded, payloads, key_bytes = Encoder(), bytearray(), [], 0
    with LogReader(path) as reader:
        for logged in reader.records():
            before = len(encoded)
            encoder.encode(encoded, logged.kind, logged.vcpu, logged.icount, logged.rip, logged.payload)
            if logged.kind == KEY_KINDS[device]:
                payloads.append(bytes(logged.payload))
                key_bytes += len(encoded) - before
    return payloads, key_bytes


def flood(image: DomainImage, directory: Path, device: str, clock: str, keys: int, repeat: int) -> dict:
    text = flood_text(keys)
    script = _script(text)
    path = directory / f"flood-{device}-{clock}-{repeat}.xrr"
    session = _session(image, device, script, clock, path)
    payloads, _ = _key_records(path, device)
    if device == "pv":
        expected = KeyEventScript(script).take(0, 10**9)
        lost = payloads != expected[:len(payloads)] or len(expected) - len(payloads) > 1   # halt's last release
        events = len(payloads)
    else:
        lost = b"".join(payloads) != text.encode()
        events = len(text)
    lines = [line for line in text.split("\r") if line.startswith("echo ")]
    if lost or any(f"{line[5:]}\r\n".encode() not in session["console"] for line in lines):
        raise RuntimeError(f"the {device} {clock}-clock flood lost keys")
    return {"device": device, "clock": clock, "keys": len(text), "key_events": events, "records": len(payloads),
            "seconds": session["seconds"], "keys_per_second": len(text) / session["seconds"],
            "key_events_per_second": events / session["seconds"]}


def paced(image: DomainImage, directory: Path, device: str, keys: int) -> dict:
    text = ("echo Hello World\r" * (keys // 17 + 1))[:keys - 6] + "\rhalt\r"
    script = "".join(rf"\p{KEY_INTERVAL_MS}" + _script(key) for key in text)
    path = directory / f"paced-{device}.xrr"
    _session(image, device, script, "real", path)
    payloads, key_bytes = _key_records(path, device)
    events = len(payloads) if device == "pv" else len(b"".join(payloads))
    return {"device": device, "keys": len(text), "key_events": events, "key_records": len(payloads),
            "key_record_bytes": key_bytes, "bytes_per_key_event": key_bytes / events,
            "bytes_per_key": key_bytes / len(text), "file_bytes": path.stat().st_size}


def run(quick: bool) -> dict:
    image = build_domain(KBDSHELL.read_bytes(), MEMORY_BYTES)
    floods: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="xenrr-bench-keyboard-") as name:
        directory = Path(name)
        for repeat in range(REPEATS[quick]):
            for clock in ("real", "virtual"):
                for device in DEVICES:                                   # interleaved, side by side
                    floods.setdefault(f"{device}-{clock}", []).append(
                        flood(image, directory, device, clock, FLOOD_KEYS[quick][clock], repeat))
        bytes_per_event = [paced(image, directory, device, PACED_KEYS[quick]) for device in DEVICES]
    summary = []
    for key, runs in floods.items():
        first = runs[0]
        summary.append({**{name: first[name] for name in ("device", "clock", "keys", "key_events")},
                        "records": first["records"],
                        "keys_per_second": statistics.median(run["keys_per_second"] for run in runs),
                        "key_events_per_second": statistics.median(run["key_events_per_second"] for run in runs),
                        "runs_seconds": [run["seconds"] for run in runs]})
    return {"repeats": REPEATS[quick], "flood": summary, "log": bytes_per_event,
            "timing": "in-process wall time (time.perf_counter) around record(), log daemon start included"}


def table(results: dict) -> str:
    lines = [f"PV keyboard beside the console: sustained key rate, nothing lost (median of {results['repeats']}, "
             "whole record() call)",
             f"  {'device':8} {'clock':8} {'keys':>7} {'key events':>10} {'records':>8} {'keys/s':>8} "
             f"{'events/s':>9}"]
    for flood_result in results["flood"]:
        lines.append(f"  {flood_result['device']:8} {flood_result['clock']:8} {flood_result['keys']:>7} "
                     f"{flood_result['key_events']:>10} {flood_result['records']:>8} "
                     f"{flood_result['keys_per_second']:>8.0f} {flood_result['key_events_per_second']:>9.0f}")
    lines.append("log bytes per key event (keys 20 ms apart, --clock real):")
    for log in results["log"]:
        lines.append(f"  {log['device']:8} {log['keys']:>5} keys, {log['key_events']:>5} key events in "
                     f"{log['key_records']:>5} records: {log['bytes_per_key_event']:.2f} bytes per key event, "
                     f"{log['bytes_per_key']:.2f} per key")
    return "\n".join(lines)
