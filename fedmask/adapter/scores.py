"""Held-out quality figures that do not mislead: each one next to the majority baseline, with an interval.

Accuracy alone hides a model that has learned nothing: on records where 64% belong to one class,
always answering that class scores 0.64. So every classification result carries

- the **majority baseline**: the accuracy of the best constant prediction (always the most frequent
  label) on the same records;
- **accuracy**, **balanced accuracy** (mean recall over the labels present; every constant
  prediction gets 1/K on K labels, 0.5 when binary), **macro-F1** (mean F1 over the labels that
  occur in the records or the predictions), **per-label precision and recall**, and **AUROC**
  (binary: label 1 against label 0, scored by the probability of label 1; more labels: the mean
  of one-vs-rest AUROCs over the labels that have both positives and negatives);
- a **95% interval** for each: a percentile bootstrap over records. ``resamples`` (1000 by
  default) resamples of the n records, drawn with replacement by ``numpy.random.default_rng(seed)``
  (seed 0 by default, so a report is reproducible), the metric recomputed on each, and the 2.5th
  and 97.5th percentiles (``numpy.quantile``, linear interpolation) of the values taken. A resample
  on which a metric is undefined (AUROC with one label only) is left out of that metric's interval.

Conventions (those of scikit-learn with ``zero_division=0``): a label never predicted has precision
0, a label never present has recall 0, and its F1 is 0 when both counts are zero. Predictions are
the argmax of the probabilities (the lower label on ties). For causal LMs: held-out perplexity
(exp of the mean next-token cross-entropy over all predicted tokens) and next-token accuracy, with
the same bootstrap over records (each record keeps its tokens together).

Every figure is computed from multiplicity weights (how many times each record is drawn; all ones
for the point estimate), so the point estimate and each resample go through the same code, and
counts are exact integers in float64. Pure numpy: the coordinator may use it too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
CONFIDENCE = 0.95
CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")
METRIC_TITLES: dict[str, str] = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro-F1",
    "auroc": "AUROC",
}
# Resampled weights are built in blocks of at most this many cells (resamples x records).
_BLOCK_CELLS = 2_000_000


# --------------------------------------------------------------------------- resampling


def _weight_blocks(count: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Multiplicity weights, shape (block, count), of ``resamples`` bootstrap draws, in blocks."""
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // count)
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        drawn = rng.integers(0, count, size=(rows, count))
        flat = (drawn + (np.arange(rows) * count)[:, None]).ravel()
        yield np.bincount(flat, minlength=rows * count).reshape(rows, count).astype(np.float64)


def _interval(values: np.ndarray) -> list[float] | None:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    tail = (1.0 - CONFIDENCE) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return [float(low), float(high)]


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


# --------------------------------------------------------------------------- classification


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (the zero_division=0 convention)."""
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, 0.0)


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    counts = mask.sum(axis=-1)
    total = np.where(mask, values, 0.0).sum(axis=-1)
    return np.where(counts > 0, total / np.where(counts > 0, counts, 1), np.nan)


def _auroc(weights: np.ndarray, scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Weighted AUROC per row of ``weights``: P(score of a positive > a negative's), ties half.

    Sorted once by score; for each record, the weighted count of negatives strictly below its
    score and tied with it comes from a cumulative sum taken at its tie group's ends.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    w = weights[:, order]
    negative_w = np.where(positive[order], 0.0, w)
    positive_w = np.where(positive[order], w, 0.0)
    below = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(negative_w, axis=1)], axis=1)
    group_start = np.searchsorted(sorted_scores, sorted_scores, side="left")
    group_end = np.searchsorted(sorted_scores, sorted_scores, side="right")
    strictly_below = below[:, group_start]
    tied = below[:, group_end] - strictly_below
    numerator = (positive_w * (strictly_below + 0.5 * tied)).sum(axis=1)
    pairs = positive_w.sum(axis=1) * negative_w.sum(axis=1)
    return np.where(pairs > 0, numerator / np.where(pairs > 0, pairs, 1.0), np.nan)


def _classification_figures(
    weights: np.ndarray, labels: np.ndarray, predictions: np.ndarray, probabilities: np.ndarray
) -> dict[str, np.ndarray]:
    """Every classification figure for each row of ``weights`` (shape (rows, records))."""
    num_labels = probabilities.shape[1]
    # confusion[r, t, p]: weighted count of records of label t predicted as p.
    cell = np.zeros((labels.size, num_labels * num_labels))
    cell[np.arange(labels.size), labels * num_labels + predictions] = 1.0
    confusion = (weights @ cell).reshape(-1, num_labels, num_labels)
    total = confusion.sum(axis=(1, 2))
    correct = np.trace(confusion, axis1=1, axis2=2)
    support = confusion.sum(axis=2)
    predicted = confusion.sum(axis=1)
    hits = np.diagonal(confusion, axis1=1, axis2=2)
    recall = _divide(hits, support)
    precision = _divide(hits, predicted)
    f1 = _divide(2.0 * hits, support + predicted)  # = 2PR / (P + R)
    if num_labels == 2:
        auroc = _auroc(weights, probabilities[:, 1], labels == 1)
    else:
        per_label = np.stack([_auroc(weights, probabilities[:, k], labels == k) for k in range(num_labels)], axis=1)
        auroc = _masked_mean(np.nan_to_num(per_label), np.isfinite(per_label))
    return {
        "accuracy": correct / total,
        "balanced_accuracy": _masked_mean(recall, support > 0),
        "macro_f1": _masked_mean(f1, (support > 0) | (predicted > 0)),
        "auroc": auroc,
        "majority_baseline": support.max(axis=1) / total,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
    }


def _as_probabilities(labels: Sequence[int] | np.ndarray, probabilities: Any) -> tuple[np.ndarray, np.ndarray]:
    label_array = np.asarray(labels)
    prob = np.asarray(probabilities, dtype=np.float64)
    if prob.ndim == 1:  # binary, given as the probability of label 1
        prob = np.stack([1.0 - prob, prob], axis=1)
    if label_array.ndim != 1 or label_array.size == 0:
        raise ValueError("labels must be a non-empty 1-D sequence")
    if prob.ndim != 2 or prob.shape[0] != label_array.size or prob.shape[1] < 2:
        raise ValueError(f"probabilities must have shape ({label_array.size}, K >= 2), got {prob.shape}")
    if not np.issubdtype(label_array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {label_array.dtype}")
    if label_array.min() < 0 or label_array.max() >= prob.shape[1]:
        raise ValueError(f"labels must be in [0, {prob.shape[1]}), got {label_array.min()}..{label_array.max()}")
    if not np.isfinite(prob).all():
        raise ValueError("probabilities must be finite")
    return label_array.astype(np.int64), prob


def classification_scores(
    labels: Sequence[int] | np.ndarray,
    probabilities: Any,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Scores of predicted ``probabilities`` (shape (n, K), or (n,) for P(label 1)) against ``labels``.

    Returns a JSON-ready dict: ``count``, ``num_labels``, ``majority_label``, ``majority_baseline``,
    ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``auroc`` (``None`` when undefined),
    ``per_class`` (label, support, precision, recall, f1, each figure's interval) and ``ci95``
    (the percentile-bootstrap 95% interval of each figure, see the module docstring), plus how the
    interval was made (``bootstrap``). ``resamples=0`` skips the intervals (``None``).
    """
    label_array, prob = _as_probabilities(labels, probabilities)
    if resamples < 0:
        raise ValueError(f"resamples must be >= 0, got {resamples}")
    predictions = prob.argmax(axis=1)
    point = _classification_figures(np.ones((1, label_array.size)), label_array, predictions, prob)
    figures = (*CLASSIFICATION_METRICS, "majority_baseline")
    per_label_figures = ("precision", "recall", "f1")
    intervals: dict[str, list[float] | None] = dict.fromkeys(figures)
    label_intervals: dict[str, list[list[float] | None]] = {name: [None] * prob.shape[1] for name in per_label_figures}
    if resamples:
        blocks = [
            _classification_figures(weights, label_array, predictions, prob)
            for weights in _weight_blocks(label_array.size, resamples, seed)
        ]
        for name in figures:
            intervals[name] = _interval(np.concatenate([b[name] for b in blocks]))
        for name in per_label_figures:
            values = np.concatenate([b[name] for b in blocks])
            label_intervals[name] = [_interval(values[:, k]) for k in range(prob.shape[1])]
    support = point["support"][0]
    return {
        "task": "classification",
        "count": int(label_array.size),
        "num_labels": int(prob.shape[1]),
        "majority_label": int(np.argmax(support)),
        **{name: _number(point[name][0]) for name in figures},
        "per_class": [
            {
                "label": k,
                "support": int(support[k]),
                **{name: float(point[name][0][k]) for name in per_label_figures},
                **{f"{name}_ci95": label_intervals[name][k] for name in per_label_figures},
            }
            for k in range(prob.shape[1])
        ],
        "ci95": intervals,
        "bootstrap": _bootstrap_note(resamples, seed),
    }


def majority_probabilities(labels: Sequence[int] | np.ndarray, num_labels: int) -> np.ndarray:
    """The best constant predictor's output: every record gets the label frequencies of ``labels``.

    Its argmax is the most frequent label (the lower one on ties), so its accuracy is the majority
    baseline; its AUROC is 0.5 (all scores tie).
    """
    label_array = np.asarray(labels, dtype=np.int64)
    frequencies = np.bincount(label_array, minlength=num_labels) / label_array.size
    return np.tile(frequencies, (label_array.size, 1))


def majority_scores(
    labels: Sequence[int] | np.ndarray,
    num_labels: int,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """:func:`classification_scores` of the constant predictor (:func:`majority_probabilities`)."""
    return classification_scores(labels, majority_probabilities(labels, num_labels), resamples=resamples, seed=seed)


def beats_majority(scores: Mapping[str, Any]) -> bool:
    """Whether a classifier does better than always answering the majority label.

    True when the whole 95% interval of its balanced accuracy lies above what every constant
    prediction gets (1/K for K labels); without an interval, when the point estimate does.
    """
    chance = 1.0 / scores["num_labels"]
    interval = scores["ci95"].get("balanced_accuracy")
    low = interval[0] if interval else scores["balanced_accuracy"]
    return low is not None and low > chance


def majority_macro_f1(scores: Mapping[str, Any]) -> float:
    """The macro-F1 of always answering the majority label, from a classifier's scores.

    With majority frequency p, that label's F1 is 2p / (1 + p) and every other label's is 0; the
    mean runs over the labels present in the records (the constant predicts no other).
    """
    p = scores["majority_baseline"]
    present = sum(1 for entry in scores["per_class"] if entry["support"] > 0)
    return float(2.0 * p / (1.0 + p) / present)


# --------------------------------------------------------------------------- causal LM


def causal_lm_scores(
    loss_sums: Sequence[float] | np.ndarray,
    token_counts: Sequence[int] | np.ndarray,
    correct_counts: Sequence[int] | np.ndarray,
    *,
    majority_baseline: float | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Held-out perplexity and next-token accuracy from per-record sums, with bootstrap intervals.

    For record i: ``loss_sums[i]`` is the summed next-token cross-entropy (nats) over its
    ``token_counts[i]`` predicted tokens, ``correct_counts[i]`` how many of them the argmax got
    right. Perplexity is exp(total loss / total tokens). ``majority_baseline`` (the frequency of
    the most common next token, from the caller) is passed through without an interval.
    """
    loss = np.asarray(loss_sums, dtype=np.float64)
    tokens = np.asarray(token_counts, dtype=np.float64)
    correct = np.asarray(correct_counts, dtype=np.float64)
    if loss.ndim != 1 or loss.size == 0 or tokens.shape != loss.shape or correct.shape != loss.shape:
        raise ValueError("loss_sums, token_counts and correct_counts must be 1-D of the same non-zero length")
    if (tokens < 0).any() or (correct < 0).any() or (correct > tokens).any() or tokens.sum() == 0:
        raise ValueError("token counts must be non-negative, correct <= tokens, and some tokens predicted")

    def figures(weights: np.ndarray) -> dict[str, np.ndarray]:
        total = weights @ tokens
        safe = np.where(total > 0, total, 1.0)
        mean_loss = np.where(total > 0, (weights @ loss) / safe, np.nan)
        return {
            "perplexity": np.exp(mean_loss),
            "next_token_accuracy": np.where(total > 0, (weights @ correct) / safe, np.nan),
            "mean_loss": mean_loss,
        }

    point = figures(np.ones((1, loss.size)))
    intervals: dict[str, list[float] | None] = dict.fromkeys(point)
    if resamples:
        blocks = [figures(w) for w in _weight_blocks(loss.size, resamples, seed)]
        for name in point:
            intervals[name] = _interval(np.concatenate([b[name] for b in blocks]))
    return {
        "task": "causal_lm",
        "count": int(loss.size),
        "tokens": int(tokens.sum()),
        **{name: _number(value[0]) for name, value in point.items()},
        "majority_baseline": majority_baseline,
        "ci95": intervals,
        "bootstrap": _bootstrap_note(resamples, seed),
    }


def _bootstrap_note(resamples: int, seed: int) -> dict[str, Any]:
    return {
        "method": "percentile bootstrap over records",
        "resamples": resamples,
        "seed": seed,
        "confidence": CONFIDENCE,
    }


# --------------------------------------------------------------------------- text


def format_with_interval(scores: Mapping[str, Any], name: str, digits: int = 3) -> str:
    """``0.712 [0.664, 0.759]`` (or ``–`` when the figure is undefined)."""
    value = scores.get(name)
    if value is None:
        return "–"
    interval = scores.get("ci95", {}).get(name)
    if not interval:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def summary_line(
    scores: Mapping[str, Any], label_names: Sequence[str] | None = None, *, records: str = "held-out"
) -> str:
    """One line for a person: the scores with intervals, the majority baseline, and a verdict.

    ``records`` says which records they were computed on (it starts the line)."""
    if scores["task"] == "causal_lm":
        return (
            f"{records} perplexity {format_with_interval(scores, 'perplexity', 2)}, next-token accuracy "
            f"{format_with_interval(scores, 'next_token_accuracy')} on {scores['count']} records "
            f"({scores['tokens']} tokens)"
        )
    majority = scores["majority_label"]
    name = label_names[majority] if label_names else str(majority)
    chance = 1.0 / scores["num_labels"]
    line = (
        f"{records} balanced accuracy {format_with_interval(scores, 'balanced_accuracy')}, macro-F1 "
        f"{format_with_interval(scores, 'macro_f1')}, accuracy {format_with_interval(scores, 'accuracy')} "
        f"on {scores['count']} records; majority baseline (always {name!r}): balanced accuracy "
        f"{chance:.3f}, macro-F1 {majority_macro_f1(scores):.3f}, accuracy {scores['majority_baseline']:.3f}"
    )
    if beats_majority(scores):
        return line + "; beats the majority baseline"
    return (
        line + "; does NOT beat the majority baseline (the balanced-accuracy interval does not lie above "
        f"{chance:.3f}, what always answering {name!r} gets)"
    )
