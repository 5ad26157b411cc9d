"""The audit experiment: the audit trains the target itself, so it knows who is a member.

A pool of records plus ``canaries`` (random-word secrets with random labels) is split at random:
half of the records and half of the canaries train the target (the canaries ``canary_repeats``
times each), with the same recipe as ``fedmask participant train`` (:func:`train_adapter`, a
:class:`~fedmask.adapter.config.TrainingConfig`), or without clipping and noise for the
non-private control. ``shadows`` more models train on other random halves of the same pool
(the attacker's calibration, LiRA-style). Every model is evaluated on every candidate; the
logit confidence in the true label, log(p_y / (1 - p_y)), is the attack's raw material (a
monotone function of the cross-entropy loss, computed from the probabilities so that confident
records keep distinct values).

Attacks (higher score = "member"):

- loss threshold: minus the target's loss;
- LiRA offline / online: the target's logit confidence against per-candidate Gaussians fitted on
  the shadows that left the candidate out (and took it in), one variance per side;
- canaries: the loss attack on the canaries alone, and each inserted canary's exposure among the
  held-out ones.

Each attack reports ROC AUC, TPR at 0.1% and 1% FPR, and an empirical epsilon lower bound whose
threshold is chosen on one random half of the candidates and measured on the other, with
Clopper-Pearson 95% intervals; next to it the trade-off bound of the accounted epsilon.
"""

from __future__ import annotations

import logging
import math
import random
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedmask.adapter.config import TrainingConfig
from fedmask.audit import stats
from fedmask.participant.data import Record, scrub_records
from fedmask.participant.trainer import LocalTrainer
from fedmask.participant.training import configure_threads, train_adapter

log = logging.getLogger(__name__)

RESULT_FORMAT = "fedmask-audit/1"
FPR_TARGETS = (0.001, 0.01)


# The memorising control's recipe: every step trains the adapter and the head together (no probe
# steps), with AdamW at ten times its usual step sizes. It is meant to overfit: a control the
# audit must detect, not a model anyone should ship.
MEMORISING_RECIPE: dict[str, Any] = {
    "probe_fraction": 0.0,
    "optimizer": "adamw",
    "learning_rate": 3e-3,
    "head_learning_rate": 3e-2,
}


@dataclass(frozen=True)
class AuditSettings:
    """What one audit trains. ``epsilon`` and ``delta`` are the DP target (unused with
    ``non_private``); ``epochs`` and ``max_seq_len`` go into the training config. ``memorise``
    (only with ``non_private``) trains with :data:`MEMORISING_RECIPE` instead of the DP recipe's
    schedule."""

    epsilon: float = 8.0
    delta: float = 1e-5
    non_private: bool = False
    memorise: bool = False
    canaries: int = 200
    canary_repeats: int = 1
    shadows: int = 4
    epochs: float = 4.0
    max_seq_len: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.memorise and not self.non_private:
            raise ValueError("the memorising recipe is for the non-private control only")

    def config(self) -> TrainingConfig:
        return TrainingConfig.create(
            target_epsilon=self.epsilon,
            target_delta=self.delta,
            epochs=self.epochs,
            max_seq_len=self.max_seq_len,
            **(MEMORISING_RECIPE if self.memorise else {}),
        )

    @property
    def description(self) -> str:
        if self.memorise:
            return "non-private memorising control (no clipping, no noise, AdamW, no probe steps)"
        return "non-private control (no clipping, no noise)" if self.non_private else "DP-SGD"


def make_canaries(count: int, *, num_labels: int, rng: random.Random) -> list[Record]:
    """``count`` records whose text is a random secret (six random five-letter words) and whose
    label is random: nothing but memorisation can predict one."""
    canaries = []
    for index in range(count):
        words = " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(5)) for _ in range(6))
        canaries.append(Record(text=f"Note {words}.", label=rng.randrange(num_labels), meta={"canary": index}))
    return canaries


def _half(count: int, rng: random.Random) -> np.ndarray:
    """A random subset of exactly half (rounded down) of ``count`` items, as a mask."""
    chosen = rng.sample(range(count), count // 2)
    mask = np.zeros(count, dtype=bool)
    mask[chosen] = True
    return mask


def _training_set(
    records: Sequence[Record], canaries: Sequence[Record], mask: np.ndarray, repeats: int
) -> list[Record]:
    n = len(records)
    chosen = [r for r, m in zip(records, mask[:n], strict=True) if m]
    for canary, m in zip(canaries, mask[n:], strict=True):
        if m:
            chosen += [canary] * repeats
    return chosen


def train_model(settings: AuditSettings, records: Sequence[Record]) -> tuple[LocalTrainer, float]:
    """One model of the audit on ``records`` (already scrubbed): the trainer and its accounted
    epsilon (infinite for the non-private control)."""
    config = settings.config()
    if settings.non_private:
        trainer = LocalTrainer(config)
        trainer.train_non_private(list(records))
        return trainer, math.inf
    result = train_adapter(config, list(records), scrub_pii=False)
    return result.trainer, float(result.report["epsilon"])


def record_confidences(trainer: LocalTrainer, candidates: Sequence[Record]) -> np.ndarray:
    """Each candidate's logit confidence in its own label under ``trainer``'s model."""
    evaluation = trainer.evaluate(candidates)
    if evaluation.probabilities is None or evaluation.labels is None:
        raise RuntimeError("the evaluation kept no per-record probabilities")
    return stats.confidence_from_probabilities(evaluation.probabilities, evaluation.labels)


def attack_figures(
    scores: np.ndarray, members: np.ndarray, choose: np.ndarray, *, epsilon: float, delta: float
) -> dict[str, Any]:
    """Every figure of one attack on one candidate set."""
    figures: dict[str, Any] = {
        "candidates": int(len(scores)),
        "members": int(members.sum()),
        "auc": stats.roc_auc(scores, members),
    }
    for target in FPR_TARGETS:
        point = stats.tpr_at_fpr(scores, members, target)
        lower = stats.clopper_pearson(round(point.tpr * int(members.sum())), int(members.sum()))[0]
        bound = stats.dp_tpr_bound(target, epsilon, delta)
        figures[f"tpr_at_fpr_{target:g}"] = {
            "tpr": point.tpr,
            "fpr": point.fpr,
            "resolvable": point.resolvable,
            "tpr_lower": lower,
            "dp_bound": bound,
            "inside_bound": lower <= bound,
        }
    audit = stats.epsilon_lower_bound(scores, members, delta=delta, choose=choose)
    figures["epsilon"] = {
        "lower": audit.epsilon_lower,
        "point": audit.epsilon_point,
        "threshold": audit.threshold,
        "true_positives": audit.true_positives,
        "members": audit.members,
        "false_positives": audit.false_positives,
        "non_members": audit.non_members,
        "tpr_interval": list(audit.tpr_interval),
        "fpr_interval": list(audit.fpr_interval),
        "inside_bound": audit.epsilon_lower <= epsilon,
    }
    return figures


def run_audit(
    records: Sequence[Record],
    settings: AuditSettings,
    *,
    num_labels: int = 2,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the target and the shadows on random halves of ``records`` + canaries; attack."""
    say = progress or (lambda line: None)
    threads = configure_threads()
    rng = random.Random(settings.seed)
    pool, _ = scrub_records(records)
    canaries, _ = scrub_records(make_canaries(settings.canaries, num_labels=num_labels, rng=rng))
    candidates = [*pool, *canaries]
    n_records, n_all = len(pool), len(candidates)
    if n_records < 8:
        raise ValueError(f"the audit needs at least 8 records, got {n_records}")
    is_canary = np.arange(n_all) >= n_records
    # one draw for the pool and one for the canaries: exactly half of each
    target_members = np.concatenate([_half(n_records, rng), _half(len(canaries), rng)])
    # which candidates choose each attack's threshold (the others measure it): half of each of
    # members and non-members, of records and of canaries
    split_rng = np.random.default_rng(settings.seed)
    choose = np.zeros(n_all, dtype=bool)
    for kind in (~is_canary, is_canary):
        choose[kind] = stats.stratified_half(target_members[kind], split_rng)
    shadow_members = (
        np.stack([np.concatenate([_half(n_records, rng), _half(len(canaries), rng)]) for _ in range(settings.shadows)])
        if settings.shadows
        else np.zeros((0, n_all), dtype=bool)
    )

    started = time.perf_counter()
    confidences = []
    epsilons = []
    models = [("target", target_members), *((f"shadow {i + 1}", m) for i, m in enumerate(shadow_members))]
    for name, mask in models:
        begin = time.perf_counter()
        train = _training_set(pool, canaries, mask, settings.canary_repeats)
        trainer, spent = train_model(settings, train)
        confidences.append(record_confidences(trainer, candidates))
        epsilons.append(spent)
        del trainer
        say(
            f"{name}: trained on {len(train)} records, epsilon {spent:.3g}, "
            f"{time.perf_counter() - begin:.0f} s (total {time.perf_counter() - started:.0f} s)"
        )
    target = confidences[0]
    epsilon = epsilons[0]
    delta = settings.delta

    rows: dict[str, dict[str, Any]] = {}
    records_only = ~is_canary
    # the loss attack: a lower loss is a higher confidence in the true label (the same ranking)
    rows["loss threshold"] = attack_figures(
        target[records_only], target_members[records_only], choose[records_only], epsilon=epsilon, delta=delta
    )
    if settings.shadows:
        offline, online = stats.lira_scores(target, np.stack(confidences[1:]), shadow_members)
        rows["LiRA offline"] = attack_figures(
            offline[records_only], target_members[records_only], choose[records_only], epsilon=epsilon, delta=delta
        )
        rows["LiRA online"] = attack_figures(
            online[records_only], target_members[records_only], choose[records_only], epsilon=epsilon, delta=delta
        )
    canary_summary: dict[str, Any] = {"count": len(canaries), "repeats": settings.canary_repeats}
    if len(canaries) >= 4:
        rows["canaries: loss"] = attack_figures(
            target[is_canary], target_members[is_canary], choose[is_canary], epsilon=epsilon, delta=delta
        )
        inserted = target_members & is_canary
        held_out = ~target_members & is_canary
        exposures = stats.exposure(target[inserted], target[held_out])
        canary_summary.update(
            inserted=int(inserted.sum()),
            held_out=int(held_out.sum()),
            exposure_mean=float(exposures.mean()),
            exposure_median=float(np.median(exposures)),
            exposure_max=float(exposures.max()),
            exposure_possible=math.log2(int(held_out.sum()) + 1),
            exposure_chance=stats.chance_exposure(int(held_out.sum())),
            exposures=[float(e) for e in exposures],
        )
    return {
        "format": RESULT_FORMAT,
        "settings": asdict(settings),
        "config": settings.config().to_dict(),
        "privacy": settings.description,
        "accounted_epsilon": epsilon,
        "shadow_epsilons": epsilons[1:],
        "delta": delta,
        "records": n_records,
        "threads": threads,
        "seconds": time.perf_counter() - started,
        "attacks": rows,
        "canaries": canary_summary,
        "candidates": {
            "canary": is_canary.tolist(),
            "target_member": target_members.tolist(),
            "choose_half": choose.tolist(),
            "target_confidence": target.tolist(),
            "shadow_member": shadow_members.tolist(),
            "shadow_confidence": [row.tolist() for row in confidences[1:]],
        },
    }


# --------------------------------------------------------------------------- the table


def _rate(figure: dict[str, Any]) -> str:
    text = f"{figure['tpr']:.3f}"
    return text + ("*" if not figure["resolvable"] else " ")


def format_table(result: dict[str, Any]) -> str:
    """The printed table of one audit (what ``fedmask audit`` shows)."""
    settings = result["settings"]
    epsilon, delta = result["accounted_epsilon"], result["delta"]
    if math.isinf(epsilon):
        privacy = f"{result['privacy']}: no bound"
    else:
        privacy = f"DP-SGD, accounted epsilon {epsilon:.2f} (delta {delta:g})"
    canaries = result["canaries"]
    lines = [
        f"Membership-inference audit: {privacy}",
        f"{result['records']} records ({result['records'] // 2} members), {canaries['count']} canaries "
        f"({canaries['count'] // 2} inserted x{canaries['repeats']}), {settings['shadows']} shadow models, "
        f"{settings['epochs']:g} epochs, max_seq_len {settings['max_seq_len']}, {result['seconds'] / 60:.1f} min",
        "",
        f"{'attack':<16} {'AUC':>5} {'TPR@0.1%FPR':>12} {'TPR@1%FPR':>10} {'bound@1%':>9}  "
        f"{'eps_lb 95%':>10} {'eps_hat':>7}  {'TP/members':>11} {'FP/non-mem':>11}  inside",
    ]
    for name, row in result["attacks"].items():
        at01, at1, eps = row["tpr_at_fpr_0.001"], row["tpr_at_fpr_0.01"], row["epsilon"]
        inside = at1["inside_bound"] and eps["inside_bound"]
        lines.append(
            f"{name:<16} {row['auc']:>5.3f} {_rate(at01):>12} {_rate(at1):>10} {at1['dp_bound']:>9.3f}  "
            f"{eps['lower']:>10.2f} {eps['point']:>7.2f}  "
            f"{eps['true_positives']:>5}/{eps['members']:<5} {eps['false_positives']:>5}/{eps['non_members']:<5}  "
            f"{'yes' if inside else 'NO'}"
        )
    if "exposure_mean" in canaries:
        lines += [
            "",
            f"canary exposure (bits, {canaries['inserted']} inserted among {canaries['held_out']} held out): "
            f"mean {canaries['exposure_mean']:.2f}, median {canaries['exposure_median']:.2f}, "
            f"max {canaries['exposure_max']:.2f} of {canaries['exposure_possible']:.2f} possible; "
            f"chance mean {canaries['exposure_chance']:.2f}",
        ]
    lines += [
        "",
        "TPR@x%FPR: best threshold with FPR <= x on all candidates (chosen on the same data: optimistic); "
        "* = fewer than 1/x non-members, so only FPR 0 fits.",
        "bound@1%: the most TPR any attack can have at 1% FPR under the accounted (epsilon, delta): "
        "min(e^eps FPR + delta, 1 - e^-eps (1 - delta - FPR)).",
        "eps_lb 95%: empirical epsilon lower bound, threshold chosen on one half of the candidates, "
        "counts (TP, FP) from the other half, Clopper-Pearson 95%; eps_hat: the same without intervals.",
        "inside: TPR@1%FPR's lower 95% bound <= bound@1% and eps_lb <= the accounted epsilon.",
    ]
    return "\n".join(lines)
