"""fedmask.adapter.scores against hand-computed figures, scikit-learn, and a plain bootstrap loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmask.adapter.scores import (
    beats_majority,
    causal_lm_scores,
    classification_scores,
    majority_macro_f1,
    majority_probabilities,
    majority_scores,
    summary_line,
)

EPS = np.finfo(np.float64).eps


def test_binary_figures_match_the_hand_computation() -> None:
    # labels 0 0 0 1 1, P(label 1) 0.1 0.4 0.6 0.7 0.35 -> predictions 0 0 1 1 0.
    # Confusion (rows: label, columns: prediction): [[2, 1], [1, 1]].
    scores = classification_scores([0, 0, 0, 1, 1], [0.1, 0.4, 0.6, 0.7, 0.35], resamples=0)
    assert scores["count"] == 5 and scores["num_labels"] == 2 and scores["majority_label"] == 0
    # One division of exact integer counts: correctly rounded, so equal to Python's own quotient.
    assert scores["accuracy"] == 3 / 5
    assert scores["majority_baseline"] == 3 / 5
    label0, label1 = scores["per_class"]
    assert (label0["support"], label1["support"]) == (3, 2)
    assert (label0["precision"], label0["recall"], label0["f1"]) == (2 / 3, 2 / 3, 4 / 6)
    assert (label1["precision"], label1["recall"], label1["f1"]) == (1 / 2, 1 / 2, 2 / 4)
    # Positive 0.7 outranks all 3 negatives, 0.35 outranks 1 of them: 4 of 6 pairs.
    assert scores["auroc"] == 4 / 6
    # Means of two rounded quotients: one more addition and a halving, within 2 ulp of 7/12.
    assert scores["balanced_accuracy"] == pytest.approx(7 / 12, rel=2 * EPS, abs=0)
    assert scores["macro_f1"] == pytest.approx(7 / 12, rel=2 * EPS, abs=0)
    assert scores["ci95"] == dict.fromkeys(("accuracy", "balanced_accuracy", "macro_f1", "auroc", "majority_baseline"))


def test_auroc_counts_tied_scores_as_half_a_pair() -> None:
    # Positives 0.5 and 0.9, negatives 0.5 and 0.2: 0.5 + 1 + 1 + 1 = 3.5 of 4 pairs.
    scores = classification_scores([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9], resamples=0)
    assert scores["auroc"] == 3.5 / 4


def test_three_labels_match_the_hand_computation() -> None:
    labels = [0, 1, 2, 2]
    probabilities = [
        [0.6, 0.3, 0.1],  # predicted 0, right
        [0.2, 0.3, 0.5],  # predicted 2, label 1
        [0.1, 0.2, 0.7],  # predicted 2, right
        [0.3, 0.4, 0.3],  # predicted 1, label 2
    ]
    scores = classification_scores(labels, probabilities, resamples=0)
    assert scores["accuracy"] == 0.5
    assert [c["recall"] for c in scores["per_class"]] == [1.0, 0.0, 0.5]
    assert [c["precision"] for c in scores["per_class"]] == [1.0, 0.0, 0.5]  # label 1 predicted once, wrongly
    assert [c["f1"] for c in scores["per_class"]] == [1.0, 0.0, 0.5]
    # Every sum below is of dyadic fractions, exact in binary; the one division by 3 rounds once.
    assert scores["balanced_accuracy"] == 1.5 / 3
    assert scores["macro_f1"] == 1.5 / 3
    # One-vs-rest: label 0 ranks 3/3, label 1 (0.3 vs 0.3 tied, 0.2, 0.4) 1.5/3, label 2 3/4.
    assert scores["auroc"] == (1.0 + 0.5 + 0.75) / 3
    assert scores["majority_label"] == 2 and scores["majority_baseline"] == 2 / 4


def test_figures_agree_with_scikit_learn_on_random_predictions() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    for num_labels in (2, 4):
        labels = rng.integers(0, num_labels, 300)
        logits = np.round(rng.normal(size=(300, num_labels)), 1)  # rounded: many tied scores
        logits[np.arange(300), labels] += 0.8
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        predictions = probabilities.argmax(axis=1)
        scores = classification_scores(labels, probabilities, resamples=0)
        if num_labels == 2:
            auroc = metrics.roc_auc_score(labels, probabilities[:, 1])
        else:
            auroc = metrics.roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
        # Both sum a few hundred terms in different orders: agreement to 1e-12 is far looser than that error.
        assert scores["auroc"] == pytest.approx(auroc, abs=1e-12)
        assert scores["accuracy"] == pytest.approx(metrics.accuracy_score(labels, predictions), abs=1e-12)
        assert scores["balanced_accuracy"] == pytest.approx(
            metrics.balanced_accuracy_score(labels, predictions), abs=1e-12
        )
        assert scores["macro_f1"] == pytest.approx(metrics.f1_score(labels, predictions, average="macro"), abs=1e-12)


def test_a_constant_predictor_gets_half_balanced_accuracy_and_the_majority_baseline() -> None:
    labels = np.array([0] * 193 + [1] * 107)  # 193/300 = 0.643, the review's majority share
    scores = majority_scores(labels, 2)
    assert scores["accuracy"] == 193 / 300 == scores["majority_baseline"]
    assert scores["balanced_accuracy"] == 0.5  # (1 + 0) / 2, exact
    assert scores["auroc"] == 0.5  # every pair tied
    p = 193 / 300
    # Label 0's F1 is 2*193 / (300 + 193), label 1's is 0; a couple of roundings from 2p/(1+p)/2.
    assert scores["macro_f1"] == pytest.approx(p / (1 + p), rel=4 * EPS, abs=0)
    assert majority_macro_f1(scores) == pytest.approx(scores["macro_f1"], rel=4 * EPS, abs=0)
    assert not beats_majority(scores)
    # Any other constant (here always label 1) also gets 0.5 balanced accuracy, and lower accuracy.
    minority = classification_scores(labels, np.tile([0.3, 0.7], (300, 1)), resamples=0)
    assert minority["balanced_accuracy"] == 0.5 and minority["accuracy"] == 107 / 300
    np.testing.assert_array_equal(majority_probabilities([2, 2, 0], 3), np.tile([1 / 3, 0, 2 / 3], (3, 1)))


def _noisy_classifier(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(count) < 0.35).astype(int)
    p1 = np.clip(0.35 + 0.3 * (labels - 0.35) + rng.normal(0, 0.2, count), 0.01, 0.99)
    return labels, p1


def test_the_interval_covers_the_point_estimate_and_repeats_with_the_seed() -> None:
    labels, p1 = _noisy_classifier(300, seed=5)
    scores = classification_scores(labels, p1)
    assert scores["bootstrap"] == {
        "method": "percentile bootstrap over records",
        "resamples": 1000,
        "seed": 0,
        "confidence": 0.95,
    }
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "majority_baseline"):
        low, high = scores["ci95"][name]
        assert low <= scores[name] <= high, name
        assert high - low > 0.01, name  # 300 records: a real spread, not a degenerate interval
    for entry in scores["per_class"]:
        for name in ("precision", "recall", "f1"):
            low, high = entry[f"{name}_ci95"]
            assert low <= entry[name] <= high
    assert beats_majority(scores)
    assert classification_scores(labels, p1)["ci95"] == scores["ci95"]
    assert classification_scores(labels, p1, seed=1)["ci95"] != scores["ci95"]
    # Four times the records: the interval narrows (about halves).
    more_labels, more_p1 = _noisy_classifier(1200, seed=5)
    wider = np.diff(scores["ci95"]["balanced_accuracy"])[0]
    narrower = np.diff(classification_scores(more_labels, more_p1)["ci95"]["balanced_accuracy"])[0]
    assert narrower < 0.75 * wider


def test_the_bootstrap_equals_recomputing_each_resample() -> None:
    labels, p1 = _noisy_classifier(40, seed=8)
    resamples = 200  # 200 x 40 cells: one block, so the draws are rng.integers(0, 40, (200, 40))
    scores = classification_scores(labels, p1, resamples=resamples, seed=11)
    drawn = np.random.default_rng(11).integers(0, 40, size=(resamples, 40))
    recomputed: dict[str, list[float]] = {name: [] for name in ("accuracy", "balanced_accuracy", "macro_f1", "auroc")}
    for rows in drawn:
        again = classification_scores(labels[rows], p1[rows], resamples=0)
        for name, values in recomputed.items():
            values.append(np.nan if again[name] is None else again[name])
    for name, values in recomputed.items():
        finite = np.array(values)[np.isfinite(values)]
        # Counts are exact either way; only the final quotients and the quantile's interpolation round.
        np.testing.assert_allclose(scores["ci95"][name], np.quantile(finite, [0.025, 0.975]), rtol=0, atol=1e-12)


def test_causal_lm_perplexity_and_next_token_accuracy() -> None:
    scores = causal_lm_scores([3.0, 4.0, 5.0], [2, 3, 4], [1, 2, 2], majority_baseline=0.25, resamples=0)
    assert scores["mean_loss"] == 12 / 9  # exact sums of small integers, one division
    assert scores["next_token_accuracy"] == 5 / 9
    assert scores["perplexity"] == pytest.approx(math.exp(12 / 9), rel=2 * EPS, abs=0)  # numpy vs libm exp
    assert (scores["count"], scores["tokens"], scores["majority_baseline"]) == (3, 9, 0.25)
    with_interval = causal_lm_scores([3.0, 4.0, 5.0, 2.0], [2, 3, 4, 2], [1, 2, 2, 2])
    for name in ("perplexity", "next_token_accuracy"):
        low, high = with_interval["ci95"][name]
        assert low <= with_interval[name] <= high
    assert "perplexity" in summary_line(with_interval)


def test_summary_line_says_plainly_when_the_majority_baseline_is_not_beaten() -> None:
    labels, p1 = _noisy_classifier(300, seed=5)
    good = summary_line(classification_scores(labels, p1), ["routine", "urgent"])
    assert "beats the majority baseline" in good and "NOT" not in good
    assert "majority baseline (always 'routine')" in good
    constant = summary_line(majority_scores(labels, 2), ["routine", "urgent"])
    assert "does NOT beat the majority baseline" in constant
    assert "balanced accuracy 0.500 [0.500, 0.500]" in constant


@pytest.mark.parametrize(
    ("labels", "probabilities", "message"),
    [
        ([], np.zeros((0, 2)), "non-empty"),
        ([0, 1], [[0.5, 0.5]], "shape"),
        ([0, 2], [[0.5, 0.5], [0.1, 0.9]], r"labels must be in \[0, 2\)"),
        ([0.0, 1.0], [0.2, 0.8], "integers"),
        ([0, 1], [0.2, np.nan], "finite"),
    ],
)
def test_bad_inputs_are_refused(labels, probabilities, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_scores(labels, probabilities)
