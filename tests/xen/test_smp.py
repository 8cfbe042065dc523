"""Several vCPUs in one domain: VCPUOP_initialise/up/down/is_up/get_runstate_info, IPIs, bind_vcpu,
per-vCPU VIRQs and timers, and the fixed-order quantum schedule on the one engine.

Hypercalls are dispatched by number with their arguments in guest memory, as a guest makes them.
Layouts and error codes are Xen's: struct vcpu_guest_context (/usr/include/xen/arch-x86/xen.h,
checked field by field in test_abi.py), VCPUOP_* (/usr/include/xen/vcpu.h: "Each VCPU can be
initialised only once", "[up] will fail if the VCPU has not been initialised"), EVTCHNOP_bind_ipi and
EVTCHNOP_bind_vcpu (/usr/include/xen/event_channel.h), and the codes of Xen's common/domain.c
common_vcpu_op, default_initialise_vcpu and arch_set_info_guest, and common/event_channel.c.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from xen import abi, hypercalls
from xen.builder import build_domain
from xen.domain import Domain, RunState
from xen.inject import Kind
from xen.smp import next_vcpu
from xen.timekeeping import TimeBase
from xen.vcpu import ExitReason

ROOT = Path(__file__).resolve().parents[2]
ENOENT, EEXIST, EINVAL = -2, -17, -22          # xen/errno.h


@pytest.fixture
def domain() -> Domain:
    return Domain(build_domain((ROOT / "guests/kbdshell/kbdshell.elf").read_bytes(), 4 << 20), vcpus=3,
                  quantum=1_000)


def scratch(domain: Domain, offset: int = 0) -> int:
    """Free pages of the domain's own (its last ones, above everything the builder placed)."""
    return domain.image.layout.virt_base + (domain.image.nr_pages - 4) * abi.PAGE_SIZE + offset


def call(domain: Domain, number: int, *arguments: int) -> int:
    result = hypercalls.dispatch(domain, number, tuple(arguments) + (0,) * (5 - len(arguments)))
    return result - 2**64 if result >= 2**63 else result


def vcpu_op(domain: Domain, command: int, vcpu_id: int, argument: bytes | None = None) -> int:
    address = 0
    if argument is not None:
        address = scratch(domain)
        domain.vcpu.write(address, argument)
    return call(domain, abi.HYPERVISOR_vcpu_op, command, vcpu_id, address)


def context(domain: Domain, **changes) -> abi.VcpuGuestContext:
    """A vcpu_guest_context as a kernel fills it for a secondary vCPU: kernel mode, the current CR3."""
    ctx = abi.VcpuGuestContext()
    ctx.flags = abi.VGCF_in_kernel
    ctx.user_regs.rip = domain.image.entry
    ctx.user_regs.rsp = scratch(domain, 3 * abi.PAGE_SIZE)
    ctx.user_regs.rax = 0x1234
    ctx.user_regs.rflags = 0x3202                   # IOPL 3: Xen clears it, and sets IF
    ctx.kernel_sp = ctx.user_regs.rsp
    ctx.ctrlreg[3] = domain.memory.cr3 << 12
    ctx.event_callback_eip = 0x100_0000
    ctx.gs_base_user = 0x5000
    for name, value in changes.items():
        setattr(ctx, name, value)
    return ctx


def test_initialise_up_is_up_down(domain):
    assert vcpu_op(domain, abi.VCPUOP_is_up, 1) == 0
    assert vcpu_op(domain, abi.VCPUOP_up, 1) == EINVAL                # not initialised (vcpu.h)
    assert vcpu_op(domain, abi.VCPUOP_initialise, 1, bytes(context(domain))) == 0
    assert vcpu_op(domain, abi.VCPUOP_initialise, 1, bytes(context(domain))) == EEXIST   # "only once"
    assert vcpu_op(domain, abi.VCPUOP_initialise, 0, bytes(context(domain))) == EEXIST   # vCPU 0: built so
    registers = domain.vcpu_registers(1)
    assert registers.pc == domain.image.entry
    assert domain.vcpus[1].gs_base_user == 0x5000 and domain.vcpus[1].event_callback == 0x100_0000
    assert vcpu_op(domain, abi.VCPUOP_is_up, 1) == 0
    assert vcpu_op(domain, abi.VCPUOP_up, 1) == 0
    assert vcpu_op(domain, abi.VCPUOP_is_up, 1) == 1
    assert [vcpu_op(domain, abi.VCPUOP_is_up, n) for n in (0, 2)] == [1, 0]
    assert vcpu_op(domain, abi.VCPUOP_is_up, 3) == ENOENT              # the domain has 3 vCPUs
    assert vcpu_op(domain, abi.VCPUOP_down, 1) == 0
    assert vcpu_op(domain, abi.VCPUOP_is_up, 1) == 0


def test_initialise_checks_the_context_as_arch_set_info_guest(domain):
    bad = {"non-canonical rip": context(domain), "debugreg 7 high": context(domain),
           "user mode without a user table": context(domain, flags=0), "LDT misaligned": context(domain, ldt_base=8),
           "another L4": context(domain), "non-canonical trap handler": context(domain)}
    bad["non-canonical rip"].user_regs.rip = 1 << 50
    bad["debugreg 7 high"].debugreg[7] = 1 << 40
    bad["another L4"].ctrlreg[3] = (domain.memory.cr3 + 1) << 12
    bad["non-canonical trap handler"].trap_ctxt[3].address = 1 << 60
    for what, ctx in bad.items():
        assert vcpu_op(domain, abi.VCPUOP_initialise, 2, bytes(ctx)) == EINVAL, what
    assert not domain.vcpus[2].initialised
    assert call(domain, abi.HYPERVISOR_vcpu_op, abi.VCPUOP_initialise, 2, 0x7FFF_0000_0000) == -14   # -EFAULT: unmapped


def test_registers_are_loaded_as_xen_does(domain):
    vcpu_op(domain, abi.VCPUOP_initialise, 1, bytes(context(domain)))
    vcpu_op(domain, abi.VCPUOP_up, 1)
    domain.return_to_guest()                      # VCPUOP_up woke vCPU 1: the quantum ends, it runs next
    assert domain.current == 1
    assert domain.vcpu.reg("rax") == 0x1234 and domain.vcpu.pc == domain.image.entry
    assert domain.vcpu.rflags() & 0x3200 == 0x200, "IOPL cleared, IF set"
    assert domain.vcpus[0].status() == "runnable" and domain.vcpus[1].status() == "running"


def test_the_last_vcpu_going_down_powers_the_domain_off(domain):
    assert vcpu_op(domain, abi.VCPUOP_down, 0) == 0
    assert domain.state == RunState.SHUTDOWN and domain.shutdown_name == "poweroff"


def test_runstate_info_of_another_vcpu(domain):
    info_address = scratch(domain, 1024)
    assert call(domain, abi.HYPERVISOR_vcpu_op, abi.VCPUOP_get_runstate_info, 2, info_address) == 0
    info = abi.VcpuRunstateInfo.from_buffer_copy(domain.vcpu.read(info_address, ctypes.sizeof(abi.VcpuRunstateInfo)))
    assert info.state == abi.RUNSTATE_offline                    # never brought up
    vcpu_op(domain, abi.VCPUOP_initialise, 2, bytes(context(domain)))
    vcpu_op(domain, abi.VCPUOP_up, 2)
    call(domain, abi.HYPERVISOR_vcpu_op, abi.VCPUOP_get_runstate_info, 2, info_address)
    info = abi.VcpuRunstateInfo.from_buffer_copy(domain.vcpu.read(info_address, ctypes.sizeof(abi.VcpuRunstateInfo)))
    assert info.state == abi.RUNSTATE_runnable                   # up, waiting for the engine


def test_singleshot_timer_only_for_the_calling_vcpu(domain):
    request = abi.VcpuSetSingleshotTimer(timeout_abs_ns=10**9)
    assert vcpu_op(domain, abi.VCPUOP_set_singleshot_timer, 1, bytes(request)) == EINVAL   # "v != current"
    assert vcpu_op(domain, abi.VCPUOP_set_singleshot_timer, 0, bytes(request)) == 0
    period = abi.VcpuSetPeriodicTimer(period_ns=5_000_000)
    assert vcpu_op(domain, abi.VCPUOP_set_periodic_timer, 2, bytes(period)) == 0             # any vCPU
    assert domain.time.timers_of(2).period == 5_000_000


def bind(domain: Domain, command: int, request: ctypes.Structure) -> tuple[int, ctypes.Structure]:
    address = scratch(domain, 2048)
    domain.vcpu.write(address, bytes(request))
    result = call(domain, abi.HYPERVISOR_event_channel_op, command, address)
    return result, type(request).from_buffer_copy(domain.vcpu.read(address, ctypes.sizeof(request)))


def test_ipi_wakes_the_polling_vcpu_and_ends_the_quantum(domain):
    vcpu_op(domain, abi.VCPUOP_initialise, 1, bytes(context(domain)))
    vcpu_op(domain, abi.VCPUOP_up, 1)
    result, ipi = bind(domain, abi.EVTCHNOP_bind_ipi, abi.EvtchnBindIpi(vcpu=1))
    assert result == 0 and domain.events.binding(ipi.port).vcpu == 1
    assert bind(domain, abi.EVTCHNOP_bind_ipi, abi.EvtchnBindIpi(vcpu=3))[0] == ENOENT
    domain.return_to_guest()
    assert domain.current == 1
    # vCPU 1 polls its IPI port (events masked: no upcall), the engine goes back to vCPU 0
    ports = scratch(domain, 3000)
    domain.vcpu.write(ports, ipi.port.to_bytes(4, "little"))
    request = abi.SchedPoll(nr_ports=1, timeout=0)
    request.ports.p = ports
    domain.vcpu.write(ports + 64, bytes(request))
    assert call(domain, abi.HYPERVISOR_sched_op, abi.SCHEDOP_poll, ports + 64) == 0
    domain.return_to_guest()
    assert domain.vcpus[1].status() == "blocked" and domain.current == 0
    send = abi.EvtchnSend(port=ipi.port)
    domain.vcpu.write(ports + 128, bytes(send))
    assert call(domain, abi.HYPERVISOR_event_channel_op, abi.EVTCHNOP_send, ports + 128) == 0
    domain.return_to_guest()
    assert domain.current == 1 and domain.vcpus[0].status() == "runnable", "the woken vCPU runs at once"


def test_bind_vcpu_and_per_vcpu_virqs(domain):
    result, timer1 = bind(domain, abi.EVTCHNOP_bind_virq, abi.EvtchnBindVirq(virq=abi.VIRQ_TIMER, vcpu=1))
    assert result == 0 and domain.events.port_for_virq(abi.VIRQ_TIMER, 1) == timer1.port
    assert bind(domain, abi.EVTCHNOP_bind_virq, abi.EvtchnBindVirq(virq=abi.VIRQ_TIMER, vcpu=1))[0] == EEXIST
    assert bind(domain, abi.EVTCHNOP_bind_virq, abi.EvtchnBindVirq(virq=abi.VIRQ_TIMER, vcpu=0))[0] == 0
    # a global VIRQ binds on vCPU 0 only (evtchn_bind_virq: "type != VIRQ_VCPU && vcpu != 0")
    assert bind(domain, abi.EVTCHNOP_bind_virq, abi.EvtchnBindVirq(virq=abi.VIRQ_CONSOLE, vcpu=1))[0] == EINVAL
    result, console = bind(domain, abi.EVTCHNOP_bind_virq, abi.EvtchnBindVirq(virq=abi.VIRQ_CONSOLE, vcpu=0))
    assert bind(domain, abi.EVTCHNOP_bind_vcpu, abi.EvtchnBindVcpu(port=console.port, vcpu=2))[0] == 0
    assert domain.events.binding(console.port).vcpu == 2
    assert bind(domain, abi.EVTCHNOP_bind_vcpu, abi.EvtchnBindVcpu(port=timer1.port, vcpu=2))[0] == EINVAL
    assert bind(domain, abi.EVTCHNOP_bind_vcpu, abi.EvtchnBindVcpu(port=console.port, vcpu=5))[0] == ENOENT
    status = abi.EvtchnStatus(dom=abi.DOMID_SELF, port=timer1.port)
    assert bind(domain, abi.EVTCHNOP_status, status)[1].vcpu == 1


def test_a_timer_raises_virq_timer_on_its_own_vcpu(domain):
    vcpu_op(domain, abi.VCPUOP_initialise, 1, bytes(context(domain)))
    vcpu_op(domain, abi.VCPUOP_up, 1)
    _, timer1 = bind(domain, abi.EVTCHNOP_bind_virq, abi.EvtchnBindVirq(virq=abi.VIRQ_TIMER, vcpu=1))
    domain.time.set_periodic(None, 0)
    domain.funnel.inject(Kind.TIMER, TimeBase(50_000_000).to_bytes())     # vCPU 1's 10 ms tick is due
    assert domain.events.is_pending(timer1.port)
    selector = domain.events.vcpu_info_address(1) + abi.VcpuInfo.evtchn_pending_sel.offset
    assert domain.vcpu.machine.read_u64(selector) != 0
    assert domain.vcpu.machine.read_u64(domain.events.vcpu_info_address(0) + abi.VcpuInfo.evtchn_pending_sel.offset) == 0


def test_fixed_order_skips_vcpus_that_cannot_run(domain):
    for n in (1, 2):
        vcpu_op(domain, abi.VCPUOP_initialise, n, bytes(context(domain)))
        vcpu_op(domain, abi.VCPUOP_up, n)
    assert next_vcpu(domain.vcpus, 0) == 1 and next_vcpu(domain.vcpus, 2) == 0
    domain.vcpus[1].blocked = True
    assert next_vcpu(domain.vcpus, 0) == 2


def test_quanta_interleave_vcpus_and_checkpoints_hold_every_one(domain):
    """Three vCPUs counting in rax (`inc rax; jmp` in a page of the guest's) take turns every 1,000
    instructions in id order, each with its own registers; a checkpoint taken mid-way restores all three."""
    loop = scratch(domain, 3 * abi.PAGE_SIZE)
    domain.vcpu.write(loop, bytes.fromhex("48ffc0ebfb"))          # inc rax; jmp back
    for n in (1, 2):
        vcpu_op(domain, abi.VCPUOP_initialise, n, bytes(context(domain, user_regs=abi.CpuUserRegs(rip=loop))))
        vcpu_op(domain, abi.VCPUOP_up, n)
    domain.vcpu.pc = loop
    domain.vcpu.set_reg("rax", 0)
    domain.return_to_guest()
    order = []
    while domain.vcpu.icount < 6_000:
        order.append((domain.vcpu.icount, domain.current))
        assert domain.run(domain.vcpu.icount + 500).reason == ExitReason.LIMIT
        if len(order) == 6:
            saved = (domain.vcpu.save_cpu(), domain.save_state(), [domain.vcpu_registers(n) for n in range(3)])
    assert order == [(i * 500, (i // 2 + 1) % 3) for i in range(12)]
    counts = [domain.vcpu_registers(n).registers[0] for n in range(3)]     # rax, first of the registers
    assert counts == [1_000, 1_000, 1_000], "each vCPU retired its 2,000 instructions on its own registers"
    cpu, state, registers = saved
    digest = domain.digest(with_memory=False)
    domain.vcpu.load_cpu(cpu)
    domain.load_state(state)
    assert [domain.vcpu_registers(n) for n in range(3)] == registers and domain.current == 1
    assert domain.digest(with_memory=False) != digest
