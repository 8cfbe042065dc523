"""Guest speed: kbdshell's `bench N` under the hypervisor, as a ratio to the bare engine running the same loop.

Owns one measurement, taken side by side in one process, repeated and reduced to medians:
- hypervisor: a kbdshell domain run exactly as `xenrr run` runs it (xen.domain.Domain, xen.sched.Scheduler,
  a dom0 key script; --clock real, the default, and --clock virtual). The time spent in bench is isolated
  by difference: a session typing `bench N` minus the same session typing `bench 0` (instructions from the
  final instruction count, seconds from the host clock around Scheduler.run). Timer upcalls and slice
  exits during the loop are part of what is measured - they are what the hypervisor costs.
- bare engine: the same bench_loop, on a raw xen.vcpu.VCpu with no hypervisor around it: a snapshot taken
  at bench_loop's entry in a booted kbdshell is restored into a fresh vCPU, %rdi set to N, and the vCPU
  runs to the return address.
Invariant: both sides run the same N on the same guest binary and must agree on the checksum; the ratio
is median(hypervisor instructions/s) / median(bare instructions/s).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from elftools.elf.elffile import ELFFile

from dom0.consoleinput import KeyScript, parse_key_script
from xen.builder import DomainImage, build_domain
from xen.domain import Domain, RunState
from xen.inject import Kind
from xen.sched import Scheduler
from xen.vcpu import CpuState, ExitReason, VCpu

KBDSHELL = Path(__file__).resolve().parents[2] / "guests" / "kbdshell" / "kbdshell.elf"
MEMORY_BYTES = 16 * 1024 * 1024
ITERATIONS = {False: 200_000_000, True: 5_000_000}     # by `quick`
REPEATS = {False: 5, True: 5}
CLOCKS = ("real", "virtual")
TIMER_HZ = 100
RUN_LIMIT = 10**13


def _symbol(elf_path: Path, name: str) -> int:
    with elf_path.open("rb") as file:
        [symbol] = ELFFile(file).get_section_by_name(".symtab").get_symbol_by_name(name)
        return symbol["st_value"]


# --------------------------------------------------------------------------- under the hypervisor

def _session(image: DomainImage, iterations: int, clock: str) -> dict:
    """One `xenrr run`-style session typing `bench N`, `ticks`, `halt`: its instructions, seconds and output."""
    output = bytearray()
    domain = Domain(image, console_output=output.extend)
    keys = KeyScript(parse_key_script(rf"bench {iterations}\rticks\rhalt\r"))
    scheduler = Scheduler(domain, keys, clock=clock)
    started = time.perf_counter()
    outcome = scheduler.run()
    seconds = time.perf_counter() - started
    lines = output.decode().split("\r\n")
    if outcome.reason != "shutdown" or "> ticks" not in lines:
        raise RuntimeError(f"bench session did not complete: {outcome}, output {lines}")
    return {"instructions": outcome.icount, "seconds": seconds,
            "checksum": lines[lines.index(f"> bench {iterations}") + 1],
            "ticks": int(lines[lines.index("> ticks") + 1])}


def measure_hypervisor(image: DomainImage, iterations: int, clock: str) -> dict:
    """Guest instructions per second spent in `bench N` under the scheduler, by difference with `bench 0`."""
    loop = _session(image, iterations, clock)
    empty = _session(image, 0, clock)
    instructions = loop["instructions"] - empty["instructions"]
    seconds = loop["seconds"] - empty["seconds"]
    return {"instructions": instructions, "seconds": seconds, "ips": instructions / seconds,
            "checksum": loop["checksum"], "ticks": loop["ticks"] - empty["ticks"]}


# --------------------------------------------------------------------------- the bare engine

class BareBenchLoop:
    """kbdshell's bench_loop on a raw VCpu: a snapshot at the function's entry, restorable any number of times."""

    def __init__(self, image: DomainImage, entry: int):
        domain = Domain(image)
        vcpu = domain.vcpu
        vcpu.add_breakpoint(entry)
        keys = list(b"bench 1\r")
        while True:
            if domain.state == RunState.BLOCKED:
                if not keys:
                    raise RuntimeError("kbdshell idled without reaching bench_loop")
                domain.funnel.inject(Kind.CONSOLE_INPUT, bytes([keys.pop(0)]))
                continue
            exit = vcpu.run(vcpu.icount + 1_000_000)
            if exit.reason == ExitReason.BREAKPOINT:
                break
            if exit.reason != ExitReason.LIMIT:
                domain.handle_exit(exit)
            if not domain.alive:
                raise RuntimeError(f"kbdshell ended before bench_loop: {domain.state}")
        self._image = image
        self._cpu: CpuState = vcpu.save_cpu()
        self._memory = vcpu.memory_image()
        self._mappings = vcpu.mappings()
        self._return_address = vcpu.read_u64(vcpu.reg("rsp"))

    def measure(self, iterations: int) -> dict:
        """Restore into a fresh vCPU, run bench_loop(iterations) to its return; instructions, seconds, checksum."""
        image = self._image
        vcpu = VCpu(image.frame_count)
        for page, mapping in self._mappings.items():         # the guest's address space as it was
            vcpu.map_page(page, mapping.frame, mapping.writable, mapping.executable)
        vcpu.write_pages({number: self._memory[number * 4096:(number + 1) * 4096] for number in range(image.frame_count)})
        vcpu.load_cpu(self._cpu)
        vcpu.set_reg("rdi", iterations)
        vcpu.add_breakpoint(self._return_address)
        started = time.perf_counter()
        exit = vcpu.run(vcpu.icount + RUN_LIMIT)
        seconds = time.perf_counter() - started
        if exit.reason != ExitReason.BREAKPOINT or exit.pc != self._return_address:
            raise RuntimeError(f"bench_loop did not return: {exit}")
        instructions = exit.icount - self._cpu.icount
        return {"instructions": instructions, "seconds": seconds, "ips": instructions / seconds,
                "checksum": f"{vcpu.reg('rax'):016x}"}


# --------------------------------------------------------------------------- the benchmark

def run(quick: bool) -> dict:
    iterations, repeats = ITERATIONS[quick], REPEATS[quick]
    image = build_domain(KBDSHELL.read_bytes(), MEMORY_BYTES)
    bare = BareBenchLoop(image, _symbol(KBDSHELL, "bench_loop"))
    samples: dict[str, list[dict]] = {"bare": [], **{f"hypervisor_{clock}": [] for clock in CLOCKS}}
    for _ in range(repeats):                       # interleaved, so a host hiccup hits every side alike
        samples["bare"].append(bare.measure(iterations))
        for clock in CLOCKS:
            samples[f"hypervisor_{clock}"].append(measure_hypervisor(image, iterations, clock))
    checksums = {sample["checksum"] for runs in samples.values() for sample in runs}
    if len(checksums) != 1:
        raise RuntimeError(f"the hypervisor and the bare engine disagree on bench {iterations}: {checksums}")
    bare_ips = statistics.median(sample["ips"] for sample in samples["bare"])
    results = {"iterations": iterations, "repeats": repeats, "checksum": checksums.pop(),
               "instructions_per_iteration": samples["bare"][0]["instructions"] / max(iterations, 1)}
    for name, runs in samples.items():
        ips = statistics.median(sample["ips"] for sample in runs)
        results[name] = {"median_ips": ips, "ratio_to_bare": ips / bare_ips,
                         "median_seconds": statistics.median(sample["seconds"] for sample in runs),
                         "median_instructions": statistics.median(sample["instructions"] for sample in runs),
                         "ips_runs": [sample["ips"] for sample in runs]}
        if "ticks" in runs[0]:
            results[name]["median_ticks"] = statistics.median(sample["ticks"] for sample in runs)
    return results


def table(results: dict) -> str:
    rows = [("bare engine (raw VCpu, no hypervisor)", results["bare"])]
    rows += [(f"hypervisor, xenrr run --clock {clock}", results[f"hypervisor_{clock}"]) for clock in CLOCKS]
    lines = [f"guest speed: kbdshell `bench {results['iterations']}` "
             f"({results['instructions_per_iteration']:.1f} instructions/iteration), median of {results['repeats']} runs",
             f"{'':40} {'Minstr/s':>10} {'ratio':>6} {'seconds':>8} {'ticks':>6}"]
    for label, row in rows:
        ticks = f"{row['median_ticks']:>6.0f}" if "median_ticks" in row else f"{'':>6}"
        lines.append(f"{label:40} {row['median_ips'] / 1e6:>10.1f} {row['ratio_to_bare']:>6.3f} "
                     f"{row['median_seconds']:>8.3f} {ticks}")
    wall = results["hypervisor_real"]["median_seconds"]
    lines.append(f"ticks: VIRQ_TIMER upcalls the guest counted during bench "
                 f"(100 Hz of the real-clock run's {wall:.3f} s would be {wall * TIMER_HZ:.0f})")
    return "\n".join(lines)
