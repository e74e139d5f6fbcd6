"""Property-based fuzzing of every input boundary, small budget (tests/fuzz_targets.py has the targets;
`python benchmarks/fuzz.py` runs them with a large one)."""

import pytest
from hypothesis import HealthCheck, example, given, settings

from tests.fuzz_targets import TARGETS


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_every_input_gets_a_defined_result(target):
    check = given(target.inputs)(target.check)
    for regression in target.examples:
        check = example(regression)(check)
    settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))(
        check
    )()
