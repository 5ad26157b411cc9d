"""The privacy plan's noise search (participant/noise_calibration.py): the smallest noise
multiplier that keeps a schedule of DP-SGD steps, and the other releases, within the budget."""

from __future__ import annotations

import pytest

from fedmask.adapter.config import ConfigError
from fedmask.participant.ledger import compute_epsilon
from fedmask.participant.noise_calibration import _central_limit_guess, _smallest_noise, noise_multiplier_for


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("epsilon", [1.0, 8.0])
def test_the_noise_search_lands_within_one_percent_below_the_budget(accountant: str, epsilon: float) -> None:
    rate, steps, release = 1 / 7, 112, (5.0, 1.0, 1)
    alone = noise_multiplier_for(epsilon, 1e-5, rate, steps, accountant)
    assert 0.99 * epsilon <= compute_epsilon(accountant, [(alone, rate, steps)], 1e-5) <= epsilon
    composed = noise_multiplier_for(epsilon, 1e-5, rate, steps, accountant, also=(release,))
    assert composed > alone  # the release takes part of the budget
    assert 0.99 * epsilon <= compute_epsilon(accountant, [(composed, rate, steps), release], 1e-5) <= epsilon


@pytest.mark.parametrize("guess", [1e-3, 0.5, 2.0, 3.0, 1e4])
def test_the_noise_search_brackets_the_answer_from_any_starting_guess(guess: float) -> None:
    calls: list[float] = []

    def spent(noise: float) -> float:  # decreasing, like any accountant's epsilon
        calls.append(noise)
        return 6.0 / noise**1.3

    noise = _smallest_noise(spent, 3.0, guess)
    assert 0.99 * 3.0 <= spent(noise) <= 3.0
    assert len(calls) <= 40


def test_the_central_limit_guess_starts_the_search_near_the_answer() -> None:
    release = (5.0, 1.0, 1)
    guess = _central_limit_guess(8.0, 1e-5, 0.16, 75, (release,))
    answer = noise_multiplier_for(8.0, 1e-5, 0.16, 75, "prv", also=(release,))
    assert 0.9 * answer <= guess <= answer


def test_a_budget_the_other_events_already_spend_is_refused() -> None:
    with pytest.raises(ConfigError, match="spent by"):
        noise_multiplier_for(1.0, 1e-5, 0.1, 10, "rdp", also=((0.5, 1.0, 1),))
