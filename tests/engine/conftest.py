"""Fixtures of the engine conformance suite: the assembled corpus and one engine of each kind.

Engines are raw `icicle.Icicle` instances from `xen.vcpu.new_engine` (patched spec, or the stock one
for the regression tests) and a unicorn instance as the reference. Each is created once per session:
creating an icicle instance compiles the whole SLEIGH spec.
"""
import pytest

from tests.engine.case_runner import Case, IcicleRunner, UnicornRunner, assemble, load_cases
from xen.vcpu import new_engine

@pytest.fixture(scope='session')
def corpus() -> tuple[bytes, list[Case]]:
    """The corpus code blob and its cases with their addresses, in load_cases() order."""
    return assemble(load_cases())


@pytest.fixture(scope='session')
def patched_jit(corpus) -> IcicleRunner:
    return IcicleRunner(new_engine(jit=True), corpus[0])


@pytest.fixture(scope='session')
def patched_interpreter(corpus) -> IcicleRunner:
    return IcicleRunner(new_engine(jit=False), corpus[0])


@pytest.fixture(scope='session')
def unicorn_reference(corpus) -> UnicornRunner:
    return UnicornRunner(corpus[0])


@pytest.fixture(scope='session')
def engines():
    """Raw engines for snippet tests: {(patched, jit): Icicle}."""
    return {(patched, jit): new_engine(jit=jit, patched=patched) for patched in (True, False) for jit in (True, False)}
