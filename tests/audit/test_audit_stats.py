"""The audit's statistics on constructed score sets (no models)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmask.audit.stats import (
    chance_exposure,
    clopper_pearson,
    confidence_from_probabilities,
    dp_tpr_bound,
    epsilon_from_counts,
    epsilon_lower_bound,
    exposure,
    lira_scores,
    logit_confidence,
    roc_auc,
    stratified_half,
    tpr_at_fpr,
)


@pytest.mark.parametrize(
    ("x", "n", "lower", "upper"),
    [
        (0, 10, 0.0, 0.3085),
        (5, 10, 0.1871, 0.8129),
        (10, 10, 0.6915, 1.0),
        (1, 100, 0.000253, 0.0545),
        (50, 100, 0.3983, 0.6017),
    ],
)
def test_clopper_pearson_matches_published_values(x: int, n: int, lower: float, upper: float) -> None:
    lo, hi = clopper_pearson(x, n)
    assert lo == pytest.approx(lower, abs=1e-4)
    assert hi == pytest.approx(upper, abs=1e-4)


def test_clopper_pearson_closed_forms() -> None:
    # x = 0: upper = 1 - (alpha/2)^(1/n); x = n: lower = (alpha/2)^(1/n)
    for n in (1, 7, 300, 2000):
        assert clopper_pearson(0, n)[1] == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9)
        assert clopper_pearson(n, n)[0] == pytest.approx(0.025 ** (1 / n), rel=1e-9)


@pytest.mark.parametrize("n", [1, 2, 7, 150, 2000])
def test_the_fast_root_finder_lands_on_the_bisection_s_root(n: int) -> None:
    from fedmask.audit.stats import _bisect, _solve

    for x in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        for upper in (True, False):
            if (upper and x == 0) or (not upper and x == n):
                continue  # the closed ends: 0 and 1, never solved for
            for tail in (0.025, 0.25):
                reference, fast = _bisect(tail, x, n, upper=upper), _solve(tail, x, n, upper=upper)
                # both bracket one root of a monotone function to a few float64 ulps
                assert fast == pytest.approx(reference, rel=1e-13, abs=1e-300), (x, n, upper, tail)


def test_clopper_pearson_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)
    with pytest.raises(ValueError):
        clopper_pearson(0, 0)


def test_auc_perfect_chance_and_ties() -> None:
    members = np.array([1, 1, 0, 0], dtype=bool)
    assert roc_auc([3, 4, 1, 2], members) == 1.0
    assert roc_auc([1, 2, 3, 4], members) == 0.0
    assert roc_auc([1, 1, 1, 1], members) == 0.5
    rng = np.random.default_rng(0)
    scores = rng.normal(size=4000)
    assert roc_auc(scores, rng.random(4000) < 0.5) == pytest.approx(0.5, abs=0.03)


def test_tpr_at_fpr_takes_the_best_threshold_under_the_target() -> None:
    # 100 non-members scored 0..99, 10 members scored 97.5, 98.5, 100, ...: one false positive
    # is allowed at 1% FPR (threshold 98.5), none at 0.1% (threshold 100).
    outside = np.arange(100.0)
    inside = np.array([97.5, 98.5, 100, 101, 102, 103, 104, 105, 106, 107])
    scores = np.concatenate([inside, outside])
    members = np.arange(110) < 10
    at1 = tpr_at_fpr(scores, members, 0.01)
    assert (at1.tpr, at1.fpr, at1.resolvable) == (0.9, 0.01, True)
    at01 = tpr_at_fpr(scores, members, 0.001)
    assert (at01.tpr, at01.fpr, at01.resolvable) == (0.8, 0.0, False)


def test_epsilon_bound_grows_with_n_under_perfect_separation() -> None:
    delta = 1e-5
    bounds = [epsilon_from_counts(n, n, 0, n, delta=delta) for n in (10, 100, 1000)]
    assert bounds[0] < bounds[1] < bounds[2]
    # perfect separation of n and n: TPR >= 0.025^(1/n), FPR <= 1 - 0.025^(1/n)
    assert bounds[2] == pytest.approx(math.log((0.025 ** (1 / 1000) - delta) / (1 - 0.025 ** (1 / 1000))), rel=1e-6)
    assert bounds[2] < math.log(1000)


def test_epsilon_bound_is_zero_on_identical_distributions() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=2000)
    members = rng.random(2000) < 0.5
    choose = rng.random(2000) < 0.5
    audit = epsilon_lower_bound(scores, members, delta=1e-5, choose=choose)
    assert audit.epsilon_lower < 0.2
    assert audit.members + audit.non_members == int((~choose).sum())


def test_epsilon_bound_detects_a_shift() -> None:
    rng = np.random.default_rng(2)
    members = np.arange(2000) < 1000
    scores = rng.normal(size=2000) + 3 * members
    audit = epsilon_lower_bound(scores, members, delta=1e-5, choose=rng.random(2000) < 0.5)
    assert audit.epsilon_lower > 1.5
    assert audit.epsilon_point >= audit.epsilon_lower


def test_dp_tpr_bound() -> None:
    assert dp_tpr_bound(0.01, 1.0, 1e-5) == pytest.approx(math.e * 0.01 + 1e-5)
    assert dp_tpr_bound(0.01, 8.0, 1e-5) == pytest.approx(1 - math.exp(-8) * (0.99 - 1e-5))
    assert dp_tpr_bound(0.5, 0.0, 0.0) == pytest.approx(0.5)
    # near FPR 1 the second inequality binds
    assert dp_tpr_bound(0.9, 1.0, 0.0) == pytest.approx(1 - math.exp(-1) * 0.1)
    assert dp_tpr_bound(0.01, math.inf, 0.0) == 1.0


def test_exposure() -> None:
    reference = np.arange(1.0, 32.0)  # 31 held-out canaries: |R| = 32
    exposures = exposure([100.0, 0.0, 16.0], reference)
    assert exposures[0] == pytest.approx(5.0)  # ranked first
    assert exposures[1] == pytest.approx(0.0)  # ranked last
    assert exposures[2] == pytest.approx(5 - math.log2(16.5))  # tied with 16: the middle rank
    assert chance_exposure(31) == pytest.approx(np.mean([5 - math.log2(r) for r in range(1, 33)]))
    assert 1.0 < chance_exposure(10_000) < 1 / math.log(2) + 0.01


def test_logit_confidence() -> None:
    p = np.array([0.01, 0.5, 0.99])
    assert logit_confidence(-np.log(p)) == pytest.approx(np.log(p / (1 - p)))


def test_confidence_from_probabilities_keeps_the_tail() -> None:
    # p_y = 1 - 1e-20 is 1.0 in float64, but the other class's 1e-20 is kept
    probabilities = np.array([[1e-20, 1.0], [0.25, 0.75], [0.2, 0.3]])
    phi = confidence_from_probabilities(probabilities, [1, 0, 1])
    assert phi == pytest.approx([20 * math.log(10), math.log(0.25 / 0.75), math.log(0.3 / 0.2)])


def test_lira_separates_what_the_shadows_predict() -> None:
    # Candidates differ in how hard they are (their own mean); membership adds a fixed shift.
    rng = np.random.default_rng(3)
    candidates, shadows = 400, 8
    hardness = rng.normal(scale=3.0, size=candidates)
    shadow_members = rng.random((shadows, candidates)) < 0.5
    phi = hardness[None, :] + 1.0 * shadow_members + rng.normal(scale=0.3, size=(shadows, candidates))
    target_members = rng.random(candidates) < 0.5
    target_phi = hardness + 1.0 * target_members + rng.normal(scale=0.3, size=candidates)

    offline, online = lira_scores(target_phi, phi, shadow_members)
    plain = roc_auc(target_phi, target_members)
    assert plain < 0.7  # the loss alone is swamped by the hardness
    assert roc_auc(offline, target_members) > 0.9
    assert roc_auc(online, target_members) > 0.9


def test_stratified_half_halves_each_side() -> None:
    members = np.arange(101) < 40
    chosen = stratified_half(members, np.random.default_rng(0))
    assert int((chosen & members).sum()) == 20
    assert int((chosen & ~members).sum()) == 30


def test_a_weak_attack_still_picks_a_finite_threshold() -> None:
    members = np.arange(20) < 10
    scores = np.where(members, 1.0, 0.0) + np.arange(20) * 0.01
    audit = epsilon_lower_bound(scores, members, delta=1e-5, choose=stratified_half(members, np.random.default_rng(1)))
    assert math.isfinite(audit.threshold)
    assert audit.true_positives == 5 and audit.false_positives == 0
