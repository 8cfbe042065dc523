"""GRUB 2's Xen image under xenrr: boot to the prompt (instructions and seconds) and record/replay cost.

Owns one measurement on Debian's /usr/lib/grub-xen/grub-x86_64-xen.bin (grub-xen-host), in this process:
- boot to prompt: `Scheduler.run` with `--clock virtual` and `halt` typed ahead (keys wait in the ring until
  GRUB reads them); the instruction count and wall time at the moment the console first shows `grub> `
  (noted from the console output callback), and the whole session's instructions and seconds;
- record/plain and replay/plain: GRUB typing `echo hello from grub`, `halt` under --clock real, plain run,
  `record()` and `ReplaySession.replayer.run()` on that recording, interleaved, medians (the Sides of
  benchmarks.record_replay, which check that each replay reproduces its recording's console output).
Invariant: a GRUB that does not reach its prompt and power off is reported as such (with where it
stopped), never timed.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.record_replay import Sides
from dom0.consoleinput import KeyScript, parse_key_script
from dom0.toolstack import connect_xenstore, xenstore_config
from xen.builder import BuildError, build_domain
from xen.domain import Domain
from xen.sched import Scheduler

GRUB = Path("/usr/lib/grub-xen/grub-x86_64-xen.bin")
MEMORY_BYTES = 32 * 1024 * 1024
PROMPT = b"grub> "
SESSION = r"echo hello from grub\rhalt\r"
REPEATS = {False: 5, True: 2}
MAX_INSTRUCTIONS = 2 * 10**9


def boot_to_prompt(image) -> dict:
    console = bytearray()
    seen: dict[str, float] = {}
    domain: Domain

    def output(data: bytes) -> None:
        console.extend(data)
        if "prompt_icount" not in seen and PROMPT in console:
            seen["prompt_icount"] = domain.vcpu.icount
            seen["prompt_seconds"] = time.perf_counter() - started

    domain = Domain(image, console_output=output)
    connect_xenstore(domain, xenstore_config(GRUB))         # GRUB asks xenstore once at boot
    started = time.perf_counter()
    outcome = Scheduler(domain, KeyScript(parse_key_script(r"halt\r")), clock="virtual",
                        max_instructions=MAX_INSTRUCTIONS).run()
    return {"outcome": outcome.reason, "detail": outcome.detail, "instructions": outcome.icount,
            "seconds": time.perf_counter() - started, **seen}


def run(quick: bool) -> dict:
    try:
        image = build_domain(GRUB.read_bytes(), MEMORY_BYTES)
    except (OSError, BuildError) as error:
        return {"status": f"GRUB's image cannot be loaded: {error}"}
    boot = boot_to_prompt(image)
    if boot["outcome"] != "shutdown" or "prompt_icount" not in boot:
        return {"status": f"GRUB did not reach its prompt and power off: {boot['outcome']} after "
                          f"{boot['instructions']} instructions {boot['detail']}".strip(), "boot": boot}
    repeats = REPEATS[quick]
    with tempfile.TemporaryDirectory(prefix="xenrr-bench-grub-") as directory:
        samples = Sides(image, Path(directory), image_path=GRUB).interleaved(SESSION, repeats)
    plain, recorded, replayed = (statistics.median(run["seconds"] for run in samples[side])
                                 for side in ("plain", "record", "replay"))
    return {"status": "ok", "boot": boot, "repeats": repeats, "plain_seconds": plain, "record_seconds": recorded,
            "replay_seconds": replayed, "record_ratio": recorded / plain, "replay_ratio": replayed / plain,
            "session_instructions": samples["plain"][0]["instructions"],
            "runs": {side: [run["seconds"] for run in runs] for side, runs in samples.items()}}


def table(results: dict) -> str:
    if results["status"] != "ok":
        return f"GRUB: not measured: {results['status']}"
    boot = results["boot"]
    return "\n".join([
        f"GRUB 2 Xen image ({GRUB}), {MEMORY_BYTES >> 20} MiB",
        f"boot to `grub> `: {boot['prompt_icount']:,} instructions, {boot['prompt_seconds']:.2f} s "
        f"(whole session with `halt`: {boot['instructions']:,} instructions, {boot['seconds']:.2f} s)",
        f"session `echo hello from grub`, `halt` (--clock real, {results['session_instructions']:,} instructions), "
        f"median of {results['repeats']}:",
        f"  plain {results['plain_seconds']:.3f} s, record {results['record_seconds']:.3f} s "
        f"({results['record_ratio']:.2f}x), replay {results['replay_seconds']:.3f} s ({results['replay_ratio']:.2f}x)"])
