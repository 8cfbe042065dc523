"""Dirty-page tracking on a large guest: starting it costs the same engine work at any memory size
(`run --memory 4096` used to spend 19 s protecting its million pages one by one before the guest
started; frames that are mapped nowhere cost nothing), and it still notes exactly the pages
written, by the guest or the hypervisor."""
from __future__ import annotations

from xen.vcpu import PAGE_SIZE, VCpu

MIB = 1024 * 1024


class _CountingEngine:
    """The real engine, with its page-protection calls counted (everything else passes through)."""

    def __init__(self, engine):
        self._engine = engine
        self.protect_calls = 0

    def mem_protect(self, *arguments):
        self.protect_calls += 1
        return self._engine.mem_protect(*arguments)

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def __setattr__(self, name, value):
        if name in ("_engine", "protect_calls"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._engine, name, value)


def _protect_calls_to_start_tracking(memory_bytes: int) -> int:
    """A vCPU with `memory_bytes` of machine frames of which, as in a new domain, only a 4 MiB
    bootstrap region is mapped (the guest maps the rest itself, if at all)."""
    vcpu = VCpu(memory_bytes // PAGE_SIZE, jit=False)
    for frame in range(1, 1024):
        vcpu.map_page(frame * PAGE_SIZE, frame, writable=True)
    vcpu.set_read_only((0x10,))
    counting = _CountingEngine(vcpu._vm)
    vcpu._vm = counting
    vcpu.track_dirty_pages()
    return counting.protect_calls


def test_starting_dirty_tracking_does_not_grow_with_guest_memory():
    assert _protect_calls_to_start_tracking(4 * MIB) == _protect_calls_to_start_tracking(256 * MIB)


def test_tracking_notes_the_pages_written_after_it_starts():
    vcpu = VCpu.flat(8 * MIB, unmapped_pages=(0,), jit=False)
    code = 0x20 * PAGE_SIZE
    vcpu.write(code, bytes.fromhex("48c7000100000048c7030200000048c701030000000f05"))
    # mov qword [rax], 1; mov qword [rbx], 2; mov qword [rcx], 3; syscall
    vcpu.set_read_only((code // PAGE_SIZE,))
    generation = vcpu.track_dirty_pages()
    assert vcpu.pages_written_since(generation) == set()
    targets = {"rax": 0x100 * PAGE_SIZE + 8, "rbx": 0x7FF * PAGE_SIZE, "rcx": 0x100 * PAGE_SIZE + 64}
    for register, address in targets.items():
        vcpu.set_reg(register, address)
    vcpu.pc = code
    assert vcpu.run(100).icount == 4
    vcpu.write(0x300 * PAGE_SIZE, b"hypervisor")
    assert vcpu.pages_written_since(generation) == {0x100, 0x7FF, 0x300}
    assert vcpu.read_u64(targets["rbx"]) == 2
