"""Stopping anywhere does not change the result: icount and state at the end of every corpus case.

For each case and each instruction count before its end marker, the patched engine (JIT) stops
there (icount limit), resumes, and must reach the end marker with the same icount and state as a
run without stops. This is the property record/replay stands on, checked instruction by
instruction; the stock engine breaks it for BSF/BSR/TZCNT and LOCK CMPXCHG (see
test_defect_regressions.py).
"""
import pytest

from tests.engine.case_runner import case_seed, differences, load_cases, random_state

GROUPS = sorted({case.group for case in load_cases()})


@pytest.mark.parametrize('group', GROUPS)
def test_stop_at_every_icount_changes_nothing(group, corpus, patched_jit):
    broken = []
    for case in (case for case in corpus[1] if case.group == group):
        state = random_state(case_seed(case, 0))
        reference = patched_jit.run(case, state)
        for stop in range(1, reference.instructions):
            got = patched_jit.run(case, state, stops=(stop,))
            found = differences(got.state, reference.state)
            if (got.status, got.rip, got.instructions) != (reference.status, reference.rip, reference.instructions) or found:
                broken.append(f'{case.asm}: stop at +{stop} ended with {got.instructions} instructions '
                              f'(reference {reference.instructions}) {"; ".join(found[:2])}')
                break
    assert not broken, '\n'.join(broken)
