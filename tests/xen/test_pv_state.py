"""Hypervisor state the newer PV hypercalls create is part of checkpoints and digests.

Each piece is set the way a guest sets it (the hypercall dispatched by number, arguments as the
guest passes them), then a checkpoint (Domain.save_state) must restore it and the digest must see it:
without that, reverse execution and replay verification would miss a divergence in it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from xen import abi, hypercalls
from xen.builder import build_domain
from xen.domain import Domain

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def domain() -> Domain:
    return Domain(build_domain((ROOT / "guests/kbdshell/kbdshell.elf").read_bytes(), 4 << 20))


def test_user_gs_base_is_checkpointed_and_digested(domain):
    saved, digest = domain.save_state(), domain.digest(with_memory=False)
    assert hypercalls.dispatch(domain, abi.HYPERVISOR_set_segment_base,
                               (abi.SEGBASE_GS_USER, 0x7000_0000, 0, 0, 0)) == 0
    assert domain.gs_base_user == 0x7000_0000
    assert domain.digest(with_memory=False).device_hash != digest.device_hash
    domain.load_state(saved)
    assert domain.gs_base_user == 0
    assert domain.digest(with_memory=False).device_hash == digest.device_hash


def test_kernel_gs_and_fs_bases_are_the_vcpus_registers(domain):
    hypercalls.dispatch(domain, abi.HYPERVISOR_set_segment_base, (abi.SEGBASE_FS, 0x1000, 0, 0, 0))
    hypercalls.dispatch(domain, abi.HYPERVISOR_set_segment_base, (abi.SEGBASE_GS_KERNEL, 0x2000, 0, 0, 0))
    assert (domain.vcpu.reg("fs_base"), domain.vcpu.reg("gs_base")) == (0x1000, 0x2000)
