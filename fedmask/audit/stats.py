"""The statistics of a membership-inference audit: ROC figures, Clopper-Pearson intervals, the
empirical epsilon lower bound, the (epsilon, delta) trade-off bound, canary exposure and LiRA.

Scores follow one convention throughout: a higher score means "member". Nothing here imports
the ML stack; every function takes plain arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

CONFIDENCE = 0.95  # two-sided Clopper-Pearson intervals; the lower bounds are one-sided 97.5%


@lru_cache(maxsize=8)
def _log_factorials(n: int) -> NDArray[np.float64]:
    return np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))))


def _binomial_tail(x: int, n: int, p: float, *, upper: bool) -> float:
    """P(X >= x) when ``upper``, else P(X <= x), for X ~ Binomial(n, p)."""
    if p <= 0.0:
        return 1.0 if (not upper or x <= 0) else 0.0
    if p >= 1.0:
        return 1.0 if (upper or x >= n) else 0.0
    lf = _log_factorials(n)
    k = np.arange(x, n + 1) if upper else np.arange(0, x + 1)
    logs = lf[n] - lf[k] - lf[n - k] + k * math.log(p) + (n - k) * math.log1p(-p)
    top = float(logs.max())
    return float(min(1.0, math.exp(top) * float(np.exp(logs - top).sum())))


def _bisect(tail: float, x: int, n: int, *, upper: bool) -> float:
    """The reference root finder: 80 halvings of [0, 1], far below any printed digit."""
    # P(X >= x) rises with p; P(X <= x) falls with p.
    lo, hi = 0.0, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        value = _binomial_tail(x, n, mid, upper=upper)
        if (value < tail) == upper:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _log_binomial_term(x: int, n: int, p: float) -> float:
    """log of C(n, x) p^x (1 - p)^(n - x)."""
    lf = _log_factorials(n)
    return float(lf[n] - lf[x] - lf[n - x] + x * math.log(p) + (n - x) * math.log1p(-p))


def _solve(tail: float, x: int, n: int, *, upper: bool) -> float:
    """The p where P(X >= x) (``upper``) or P(X <= x) equals ``tail``: Newton steps kept inside
    a bracket that shrinks at every step, with a halving whenever Newton would leave it; the
    same root as :func:`_bisect` in about ten tail evaluations instead of 80.

    The derivative is the binomial term itself: d/dp P(X >= x) = (x / p) C(n, x) p^x (1-p)^(n-x)
    and d/dp P(X <= x) = -((n - x) / (1 - p)) C(n, x) p^x (1-p)^(n-x)."""
    lo, hi = 0.0, 1.0
    p = min(max(x / n, 1e-12), 1 - 1e-12)
    for _ in range(200):
        value = _binomial_tail(x, n, p, upper=upper)
        if (value < tail) == upper:
            lo = p
        else:
            hi = p
        term = math.exp(_log_binomial_term(x, n, p))
        slope = term * x / p if upper else -term * (n - x) / (1 - p)
        step = p - (value - tail) / slope if slope != 0 else math.nan
        if not lo < step < hi:
            step = (lo + hi) / 2
        if hi - lo <= 4 * math.ulp(hi) or abs(step - p) <= 4 * math.ulp(p):
            return step
        p = step
    return (lo + hi) / 2


@lru_cache(maxsize=65536)
def clopper_pearson(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval for a binomial proportion."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    tail = (1.0 - confidence) / 2
    lower = 0.0 if successes == 0 else _solve(tail, successes, trials, upper=True)
    upper = 1.0 if successes == trials else _solve(tail, successes, trials, upper=False)
    return lower, upper


def _split(scores: ArrayLike, members: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(members, dtype=bool)
    if s.shape != m.shape or s.ndim != 1:
        raise ValueError("scores and members must be 1-d arrays of one length")
    if not m.any() or m.all():
        raise ValueError("need both members and non-members")
    return s[m], s[~m]


def roc_auc(scores: ArrayLike, members: ArrayLike) -> float:
    """The area under the ROC curve (Mann-Whitney; ties count one half)."""
    inside, outside = _split(scores, members)
    ranks = _average_ranks(np.concatenate([inside, outside]))
    n_in, n_out = len(inside), len(outside)
    return float((ranks[:n_in].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))


def _average_ranks(values: NDArray[np.float64]) -> NDArray[np.float64]:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values))
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


@dataclass(frozen=True)
class RocPoints:
    """Every distinct threshold t ("member" when score >= t), strictest first, with its counts."""

    thresholds: NDArray[np.float64]
    true_positives: NDArray[np.int64]
    false_positives: NDArray[np.int64]
    members: int
    non_members: int


def roc_points(scores: ArrayLike, members: ArrayLike) -> RocPoints:
    inside, outside = _split(scores, members)
    thresholds = np.unique(np.concatenate([inside, outside]))[::-1]
    inside_sorted, outside_sorted = np.sort(inside), np.sort(outside)
    tp = len(inside) - np.searchsorted(inside_sorted, thresholds, side="left")
    fp = len(outside) - np.searchsorted(outside_sorted, thresholds, side="left")
    # the threshold above every score: nothing flagged
    return RocPoints(
        thresholds=np.concatenate(([np.inf], thresholds)),
        true_positives=np.concatenate(([0], tp)).astype(np.int64),
        false_positives=np.concatenate(([0], fp)).astype(np.int64),
        members=len(inside),
        non_members=len(outside),
    )


@dataclass(frozen=True)
class TprAtFpr:
    tpr: float  # the best TPR of a threshold whose FPR is at most the target
    fpr: float  # that threshold's FPR
    resolvable: bool  # False: fewer than 1/target non-members, so only FPR 0 fits under the target


def tpr_at_fpr(scores: ArrayLike, members: ArrayLike, target_fpr: float) -> TprAtFpr:
    """The TPR at a false-positive rate of at most ``target_fpr`` (a step, not interpolated: the
    ROC curve is only known at its thresholds, and interpolating would invent a threshold)."""
    roc = roc_points(scores, members)
    fpr = roc.false_positives / roc.non_members
    allowed = fpr <= target_fpr + 1e-12
    best = int(np.argmax(np.where(allowed, roc.true_positives, -1)))
    return TprAtFpr(
        tpr=float(roc.true_positives[best] / roc.members),
        fpr=float(fpr[best]),
        resolvable=roc.non_members * target_fpr >= 1.0,
    )


def epsilon_from_counts(
    true_positives: int,
    members: int,
    false_positives: int,
    non_members: int,
    *,
    delta: float,
    confidence: float = CONFIDENCE,
) -> float:
    """The epsilon that an (epsilon, delta)-DP mechanism needs at least, given one test's counts,
    at ``confidence`` (Clopper-Pearson: the TPR's lower bound, the FPR's upper bound).

    (epsilon, delta)-DP means TPR <= e^eps FPR + delta and 1 - FPR <= e^eps (1 - TPR) + delta, so
    eps >= max(log((TPR - delta) / FPR), log((1 - FPR - delta) / (1 - TPR))). Both terms grow
    with TPR and fall with FPR, so the TPR's lower and the FPR's upper bound go into both.
    0 when neither bound says more.
    """
    tpr_lo = clopper_pearson(true_positives, members, confidence)[0]
    fpr_hi = clopper_pearson(false_positives, non_members, confidence)[1]
    best = 0.0
    if tpr_lo - delta > 0 and fpr_hi > 0:
        best = max(best, math.log((tpr_lo - delta) / fpr_hi))
    if 1 - fpr_hi - delta > 0 and 1 - tpr_lo > 0:
        best = max(best, math.log((1 - fpr_hi - delta) / (1 - tpr_lo)))
    return best


def point_epsilon(true_positives: int, members: int, false_positives: int, non_members: int) -> float:
    """The same bound on the plain rates (no interval; a count of 0 counts as 1/2)."""
    tpr = max(true_positives, 0.5) / members
    fpr = max(false_positives, 0.5) / non_members
    tnr = max(non_members - false_positives, 0.5) / non_members
    fnr = max(members - true_positives, 0.5) / members
    return max(0.0, math.log(tpr / fpr), math.log(tnr / fnr))


@dataclass(frozen=True)
class EpsilonAudit:
    """An epsilon lower bound whose threshold was chosen on one half of the candidates and
    measured on the other (choosing and measuring on the same records would be optimistic)."""

    epsilon_lower: float  # at CONFIDENCE
    epsilon_point: float
    threshold: float
    true_positives: int
    members: int
    false_positives: int
    non_members: int

    @property
    def tpr_interval(self) -> tuple[float, float]:
        return clopper_pearson(self.true_positives, self.members)

    @property
    def fpr_interval(self) -> tuple[float, float]:
        return clopper_pearson(self.false_positives, self.non_members)


def epsilon_lower_bound(
    scores: ArrayLike,
    members: ArrayLike,
    *,
    delta: float,
    choose: ArrayLike,
) -> EpsilonAudit:
    """The empirical epsilon lower bound: the threshold that gives the highest bound on the
    candidates where ``choose`` is true, measured on the others (:func:`stratified_half` draws
    ``choose`` with as many members on both sides)."""
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(members, dtype=bool)
    c = np.asarray(choose, dtype=bool)
    roc = roc_points(s[c], m[c])
    # the highest bound; among equal bounds (all 0 on a weak attack) the highest bound at 50%
    # confidence, which still discounts a threshold that only a handful of records pass
    ranked = [
        (
            epsilon_from_counts(int(tp), roc.members, int(fp), roc.non_members, delta=delta),
            epsilon_from_counts(int(tp), roc.members, int(fp), roc.non_members, delta=delta, confidence=0.5),
        )
        for tp, fp in zip(roc.true_positives, roc.false_positives, strict=True)
    ]
    threshold = float(roc.thresholds[max(range(len(ranked)), key=ranked.__getitem__)])
    inside, outside = _split(s[~c], m[~c])
    tp, fp = int((inside >= threshold).sum()), int((outside >= threshold).sum())
    return EpsilonAudit(
        epsilon_lower=epsilon_from_counts(tp, len(inside), fp, len(outside), delta=delta),
        epsilon_point=point_epsilon(tp, len(inside), fp, len(outside)),
        threshold=threshold,
        true_positives=tp,
        members=len(inside),
        false_positives=fp,
        non_members=len(outside),
    )


def stratified_half(members: ArrayLike, rng: np.random.Generator) -> NDArray[np.bool_]:
    """A random half of the members and a random half of the non-members, as a mask."""
    m = np.asarray(members, dtype=bool)
    chosen = np.zeros(len(m), dtype=bool)
    for side in (m, ~m):
        where = np.flatnonzero(side)
        chosen[rng.choice(where, size=len(where) // 2, replace=False)] = True
    return chosen


def dp_tpr_bound(fpr: float, epsilon: float, delta: float) -> float:
    """The highest TPR that any test can reach at ``fpr`` against an (epsilon, delta)-DP
    mechanism: min(e^eps FPR + delta, 1 - e^-eps (1 - delta - FPR), 1)."""
    if math.isinf(epsilon):
        return 1.0
    first = math.exp(epsilon) * fpr + delta if epsilon < 700 else math.inf
    second = 1.0 - math.exp(-epsilon) * (1.0 - delta - fpr)
    return max(0.0, min(1.0, first, second))


def exposure(inserted_scores: ArrayLike, reference_scores: ArrayLike) -> NDArray[np.float64]:
    """Each inserted canary's exposure in bits (Carlini et al., The Secret Sharer):
    log2 |R| - log2 rank, where R is the held-out canaries plus this one and rank 1 is the most
    member-like score (ties share the middle rank)."""
    inserted = np.asarray(inserted_scores, dtype=np.float64)
    reference = np.asarray(reference_scores, dtype=np.float64)
    size = len(reference) + 1
    above = (reference[None, :] > inserted[:, None]).sum(axis=1)
    ties = (reference[None, :] == inserted[:, None]).sum(axis=1)
    rank = 1 + above + ties / 2
    return np.asarray(math.log2(size) - np.log2(rank), dtype=np.float64)


def chance_exposure(reference_size: int) -> float:
    """The mean exposure of a canary the model never saw (its rank uniform among |R|)."""
    size = reference_size + 1
    return float(np.mean(math.log2(size) - np.log2(np.arange(1, size + 1))))


# --------------------------------------------------------------------------- LiRA


def logit_confidence(losses: ArrayLike) -> NDArray[np.float64]:
    """log(p / (1 - p)) of the true label, from its cross-entropy loss (p = e^-loss): the
    statistic LiRA fits Gaussians to (Carlini et al., Membership Inference Attacks From First
    Principles)."""
    loss = np.maximum(np.asarray(losses, dtype=np.float64), 1e-12)
    return np.asarray(-loss - np.log(-np.expm1(-loss)), dtype=np.float64)


def confidence_from_probabilities(probabilities: ArrayLike, labels: ArrayLike) -> NDArray[np.float64]:
    """log(p_y / (1 - p_y)) from per-record class probabilities (records, classes), with 1 - p_y
    summed over the other classes: exact where the loss would round to 0 (a float32 loss of a
    confident record takes only a few values, and ties hide the tail the attack lives in)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(y))
    true = p[rows, y]
    other = np.ones_like(p, dtype=bool)
    other[rows, y] = False
    others = np.where(other, p, 0.0).sum(axis=1)  # not 1 - p_y: that rounds to 0
    tiny = np.finfo(np.float64).tiny
    return np.asarray(np.log(np.maximum(true, tiny)) - np.log(np.maximum(others, tiny)), dtype=np.float64)


def _global_fit(
    values: NDArray[np.float64], mask: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.bool_], float]:
    counts = mask.sum(axis=0)
    sums = np.where(mask, values, 0.0).sum(axis=0)
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    residuals = np.where(mask, values - means[None, :], 0.0)
    dof = max(1, int(mask.sum() - (counts > 0).sum()))
    std = float(math.sqrt(float((residuals**2).sum()) / dof)) if mask.sum() > 1 else 1.0
    return means, counts > 0, max(std, 1e-6)


def lira_scores(
    target_confidence: ArrayLike, shadow_confidence: ArrayLike, shadow_members: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """LiRA's offline and online scores for every candidate, from logit confidences
    (:func:`logit_confidence`, :func:`confidence_from_probabilities`).

    ``shadow_confidence`` and ``shadow_members`` are (shadows, candidates). Per candidate, the
    mean confidence over the shadows that did not (offline) / did and did not (online) train on
    it; one variance over all candidates per side, as the LiRA paper advises for few shadows. A
    candidate that no shadow left out (or took in) gets the overall mean of the shadows plus that
    side's mean deviation from it.
    Offline: (phi - mu_out) / sigma_out. Online: log N(phi; mu_in, sigma_in) - log N(phi; mu_out, sigma_out).
    """
    phi = np.asarray(target_confidence, dtype=np.float64)
    shadows = np.asarray(shadow_confidence, dtype=np.float64)
    taken = np.asarray(shadow_members, dtype=bool)
    if shadows.shape != taken.shape or shadows.shape[1:] != phi.shape:
        raise ValueError("shadow arrays must be (shadows, candidates) and match the target's candidates")
    mu_out, has_out, sd_out = _global_fit(shadows, ~taken)
    mu_in, has_in, sd_in = _global_fit(shadows, taken)
    overall = shadows.mean(axis=0)
    if has_out.any():
        mu_out = np.where(has_out, mu_out, overall + float((mu_out - overall)[has_out].mean()))
    else:
        mu_out = overall
    if has_in.any():
        mu_in = np.where(has_in, mu_in, overall + float((mu_in - overall)[has_in].mean()))
    else:
        mu_in = overall
        sd_in = sd_out
    offline = (phi - mu_out) / sd_out
    online = (
        -0.5 * ((phi - mu_in) / sd_in) ** 2 - math.log(sd_in) + 0.5 * ((phi - mu_out) / sd_out) ** 2 + math.log(sd_out)
    )
    return np.asarray(offline, dtype=np.float64), np.asarray(online, dtype=np.float64)
