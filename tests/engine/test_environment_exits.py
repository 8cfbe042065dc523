"""The exit contract of the patched engine for environment and privileged instructions.

CPUID, RDTSC, RDTSCP, RDRAND, RDSEED, HLT and every privileged instruction a PV guest may not run
stop the vCPU the same way, which xen/vcpu.py relies on: RunStatus.UnhandledException with
ExceptionCode.UnimplementedOp, exception_value 0, pc on the instruction, icount counting the
instructions before it and the instruction itself, and nothing else changed. Each instruction sits
in the middle of a block and is reached with run() and a big limit, with a stop at every icount
before it followed by run(), and with step(1) - on the JIT and on the interpreter.
"""
import pytest

from tests.engine.snippets import load, observe, run, run_snippet, snippet

BEFORE = 3   # instructions in the block before the one under test

ENVIRONMENT = ['cpuid', 'rdtsc', 'rdtscp', 'rdrand %rax', 'rdrand %r9d', 'rdseed %rax', 'rdseed %r10w', 'hlt']
PRIVILEGED = [
    'cli', 'sti', 'clts', 'inb $0x80,%al', 'inw %dx,%ax', 'inl (%dx),%eax', 'outb %al,$0x80', 'outl %eax,(%dx)',
    'insb', 'rep insl', 'outsb', 'rep outsw', 'movq %cr0,%rax', 'movq %rax,%cr3', 'movq %cr4,%r9', 'movq %r9,%cr8',
    'movq %db7,%rax', 'movq %rax,%db0', 'lmsw %ax', 'invd', 'wbinvd', 'xsetbv', 'wrmsr', 'rdmsr', 'rdpmc',
    'lgdt (%rsi)', 'lidt (%rsi)', 'lldt %ax', 'ltr %ax', 'invlpg (%rsi)', 'swapgs', 'sysretq', 'sysexitq',
    'monitor', 'mwait']
# The instructions the patch set turned into exits (the others already stopped this way).
PATCHED_TO_EXIT = {'cpuid', 'rdtsc', 'hlt', 'cli', 'sti', 'clts', 'inb $0x80,%al', 'inw %dx,%ax', 'inl (%dx),%eax',
                'outb %al,$0x80', 'outl %eax,(%dx)', 'insb', 'rep insl', 'outsb', 'rep outsw', 'movq %cr0,%rax',
                'movq %rax,%cr3', 'movq %cr4,%r9', 'movq %r9,%cr8', 'movq %db7,%rax', 'movq %rax,%db0', 'lmsw %ax',
                'invd', 'wbinvd', 'xsetbv'}
REGISTERS = {'rax': 0x1234_5678_9ABC_DEF0, 'rcx': 3, 'rdx': 0x80, 'r9': 0x7777}


def _code(instruction: str):
    return snippet(f'incq %r12; incq %r13; incq %r14; at: {instruction}; incq %r15; incq %r15')


@pytest.mark.parametrize('jit', [True, False], ids=['jit', 'interpreter'])
@pytest.mark.parametrize('instruction', ENVIRONMENT + PRIVILEGED)
def test_exit_contract(engines, instruction, jit):
    vm, code = engines[(True, jit)], _code(instruction)
    load(vm, code, REGISTERS)
    before = run(vm, limit=BEFORE)                       # state just before the instruction
    assert (before.status, before.pc, before.icount) == ('InstructionLimit', code.labels['at'], BEFORE)

    exit_big = run_snippet(vm, code, REGISTERS)           # one run with a big limit
    assert (exit_big.status, exit_big.code, exit_big.value) == ('UnhandledException', 'UnimplementedOp', 0)
    assert (exit_big.pc, exit_big.icount) == (code.labels['at'], BEFORE + 1)
    assert (exit_big.registers, exit_big.memory) == (before.registers, before.memory), 'state changed'

    for stop in range(1, BEFORE + 1):                     # stop at every icount before it, then run
        assert run_snippet(vm, code, REGISTERS, stops=(stop,)) == exit_big, f'after a stop at icount {stop}'

    load(vm, code, REGISTERS)                             # single steps
    for _ in range(BEFORE):
        vm.step(1)
    assert observe(vm, vm.step(1)) == exit_big


@pytest.mark.parametrize('instruction', sorted(PATCHED_TO_EXIT))
def test_stock_engine_did_not_exit(engines, instruction):
    code = _code(instruction)
    stop = run_snippet(engines[(False, True)], code, REGISTERS)
    assert (stop.code, stop.pc) != ('UnimplementedOp', code.labels['at'])


def test_stock_hlt_spins_in_place(engines):
    code = _code('hlt')
    vm = engines[(False, True)]
    load(vm, code, REGISTERS)
    stop = run(vm, limit=1000)
    assert (stop.status, stop.pc, stop.icount) == ('InstructionLimit', code.labels['at'], 1000)


def test_rep_ins_with_zero_count_still_exits(engines):
    code = _code('rep insb')
    stop = run_snippet(engines[(True, True)], code, REGISTERS | {'rcx': 0})
    assert (stop.code, stop.pc, stop.icount) == ('UnimplementedOp', code.labels['at'], BEFORE + 1)
