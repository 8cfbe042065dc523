"""The patched engine's JIT and interpreter agree on every corpus case.

A stop inside a translated block makes icicle finish that block in its interpreter, so any
disagreement between the two would make results depend on where the host stopped the vCPU. The
whole state is compared, undefined flags included.
"""
import pytest

from tests.engine.case_runner import case_seed, differences, load_cases, random_state

CASES = load_cases()
TRIALS = 3


@pytest.mark.parametrize('index', range(len(CASES)), ids=[case.name for case in CASES])
def test_jit_and_interpreter_agree(index, corpus, patched_jit, patched_interpreter):
    case = corpus[1][index]
    for trial in range(TRIALS):
        state = random_state(case_seed(case, trial))
        jit = patched_jit.run(case, state)
        interpreted = patched_interpreter.run(case, state)
        assert (jit.status, jit.rip, jit.instructions) == (interpreted.status, interpreted.rip, interpreted.instructions)
        found = differences(jit.state, interpreted.state)
        assert not found, f'trial {trial} (JIT / interpreter): ' + '; '.join(found)
