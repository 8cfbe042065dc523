"""vCPU snapshots: restoring registers and memory (into the same or a fresh vCPU) continues identically."""
from __future__ import annotations

import hashlib

import pytest

from xen.builder import build_domain
from xen.domain import Domain, RunState
from xen.inject import Kind
from xen.vcpu import VCpu, ExitReason

MEMORY = 4 * 1024 * 1024
RUN_AHEAD = 400_000


def _state(vcpu: VCpu) -> tuple:
    cpu = vcpu.save_cpu()
    return cpu, hashlib.sha256(vcpu.memory_image()).hexdigest()


def _domain_in_bench(elf_bytes: bytes) -> Domain:
    """A kbdshell domain that has been typed `bench 1000000` and is computing (no hypercalls for a while)."""
    domain = Domain(build_domain(elf_bytes, MEMORY))
    keys = list(b"bench 1000000\r")
    while domain.alive and (keys or domain.vcpu.icount < 50_000):
        if domain.state == RunState.BLOCKED:
            domain.funnel.inject(Kind.CONSOLE_INPUT, bytes([keys.pop(0)]))
            continue
        exit = domain.vcpu.run(domain.vcpu.icount + 1_000_000)
        if exit.reason != ExitReason.LIMIT:
            domain.handle_exit(exit)
    assert domain.state == RunState.RUNNING and not keys
    return domain


def _run_ahead(vcpu: VCpu) -> tuple:
    target = vcpu.icount + RUN_AHEAD
    exit = vcpu.run(target)
    assert exit.reason == ExitReason.LIMIT, exit   # bench is pure computation
    return _state(vcpu)


@pytest.fixture()
def computing_domain(kbdshell_elf) -> Domain:
    return _domain_in_bench(kbdshell_elf.read_bytes())


def test_restore_into_same_vcpu_continues_identically(computing_domain):
    vcpu = computing_domain.vcpu
    cpu, image = vcpu.save_cpu(), vcpu.memory_image()
    first = _run_ahead(vcpu)
    stack_page = vcpu.reg("rsp") & ~0xFFF
    vcpu.write(stack_page, bytes(range(256)) * 16)      # clobber the live stack page
    assert vcpu.mapping(stack_page).frame in vcpu.changed_pages(image)
    vcpu.write_pages({number: image[number * 4096:(number + 1) * 4096] for number in vcpu.changed_pages(image)})
    vcpu.load_cpu(cpu)
    assert _state(vcpu) == (cpu, hashlib.sha256(image).hexdigest())
    assert _run_ahead(vcpu) == first


def test_restore_into_fresh_vcpu_continues_identically(computing_domain):
    vcpu = computing_domain.vcpu
    cpu, image = vcpu.save_cpu(), vcpu.memory_image()
    first = _run_ahead(vcpu)
    fresh = VCpu(vcpu.frame_count)
    for page, mapping in vcpu.mappings().items():      # the same guest-virtual map
        fresh.map_page(page, mapping.frame, mapping.writable, mapping.executable)
    fresh.write_pages({number: image[number * 4096:(number + 1) * 4096] for number in range(vcpu.frame_count)})
    fresh.load_cpu(cpu)
    assert _run_ahead(fresh) == first


def test_snapshot_covers_sse_and_x87_state(computing_domain):
    vcpu = computing_domain.vcpu
    vcpu.set_reg("xmm7", (0x1122334455667788 << 64) | 0x99AABBCCDDEEFF00)
    vcpu.set_reg("mxcsr", 0x1F80 | 0x6000)   # round toward zero
    cpu = vcpu.save_cpu()
    vcpu.set_reg("xmm7", 0)
    vcpu.set_reg("mxcsr", 0x1F80)
    vcpu.load_cpu(cpu)
    assert vcpu.reg("xmm7") == (0x1122334455667788 << 64) | 0x99AABBCCDDEEFF00
    assert vcpu.reg("mxcsr") == 0x1F80 | 0x6000


def test_fresh_vcpu_starts_with_hardware_reset_fpu_state():
    vcpu = VCpu(64 * 1024)
    assert vcpu.reg("mxcsr") == 0x1F80
    assert vcpu.reg("FPUControlWord") == 0x037F
    assert vcpu.rflags() & 0x2
