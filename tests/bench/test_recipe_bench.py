"""``fedmask bench recipe``: its lists of sizes and budgets are checked before anything trains."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fedmask.bench.recipe_bench import recipe


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--records", "-1", "expected positive numbers, got '-1'"),
        ("--records", "abc", "expected comma-separated numbers"),
        ("--epsilons", "0,8", "expected positive numbers"),
        ("--epsilons", "inf", "expected positive numbers"),
        ("--modes", "lora,prefix", "modes must be lora and/or bitfit"),
    ],
)
def test_a_bad_list_is_one_line_before_any_training(option, value, words):
    result = CliRunner().invoke(recipe, [option, value])
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: Invalid value for {option}") and words in last, result.output
