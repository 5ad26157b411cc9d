"""The demo's report: per-round table, the final models' scores, plot, global adapter and exported model.

Per-round held-out figures are what the coordinator learns: the totals over the survivors of each
round, summed inside the masked vectors (``fedmask.adapter.metrics``), never one party's figure.
The final adapter and the baselines (each party alone, all records pooled with and without DP)
are evaluated here, in the demo process that generated everyone's data, because only it may see
every party's records: each with the
scores of :mod:`fedmask.adapter.scores` (majority baseline, balanced accuracy, macro-F1, AUROC,
bootstrap intervals) on the union of the held-out splits, and for classification on each party's
own held-out records too: a figure on the union can hide a party whose records the federated
model serves worse than that party's own model does.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmask.adapter.scores import CLASSIFICATION_METRICS, METRIC_TITLES, format_with_interval
from fedmask.durable import write_atomic, write_text_atomic

# Causal LMs: held-out perplexity (lower is better) and next-token accuracy.
CAUSAL_LM_METRICS: tuple[str, ...] = ("perplexity", "next_token_accuracy")
TITLES: dict[str, str] = {**METRIC_TITLES, "perplexity": "perplexity", "next_token_accuracy": "next-token accuracy"}

if TYPE_CHECKING:
    from fedmask.participant.data import Record
    from fedmask.participant.probe import FeatureCache
    from fedmask.participant.trainer import Evaluation, LocalTrainer


# The pooled baselines (one party holding every party's training records) and their table titles.
POOLED: dict[str, str] = {
    "pooled_dp": "pooled records, same DP budget",
    "pooled_non_private": "pooled records, no DP (ceiling)",
}


def _accuracy_after_rounds(final: Mapping[str, Any], federated: float | None) -> list[float | None]:
    """accuracy[r-1]: the global adapter after round r on the held-out splits of round r+1's
    survivors together (they evaluate the adapter a round starts from); after the last round,
    ``federated`` (the demo's own evaluation on the union), if given."""
    ledger = final["ledger"]
    after = [(entry["metrics"].get("heldout_before") or {}).get("heldout_accuracy") for entry in ledger[1:]]
    return [*after, federated]


def heldout_union(data_paths: Mapping[str, Path], task: str = "classification") -> list[Record]:
    """Every party's held-out split, PII-scrubbed as the parties scrub them, in party order."""
    from fedmask.participant.data import load_local_data

    return [record for path in data_paths.values() for record in load_local_data(path, task=task).heldout]


def scores_by_party(evaluation: Evaluation, parties: Sequence[str | None]) -> dict[str, dict[str, Any]]:
    """A classification evaluation's scores on each party's records alone (``parties[i]`` names
    the party of the i-th record evaluated; records of no party count only in the union)."""
    from fedmask.adapter.scores import classification_scores

    if evaluation.labels is None or evaluation.probabilities is None:
        raise ValueError("scores by party need a classification evaluation")
    if len(parties) != len(evaluation.labels):
        raise ValueError(f"{len(parties)} party names for {len(evaluation.labels)} evaluated records")
    indices: dict[str, list[int]] = {}
    for index, party in enumerate(parties):
        if party is not None:
            indices.setdefault(party, []).append(index)
    return {
        party: classification_scores(evaluation.labels[rows], evaluation.probabilities[rows])
        for party, rows in indices.items()
    }


def union_scores(trainer: LocalTrainer, union: Sequence[Record]) -> dict[str, Any]:
    """``trainer``'s scores on the union of held-out splits; for classification with ``by_party``,
    the same figures on each party's own records (the records' ``meta["party"]``), when the union
    holds records of more than one party."""
    evaluation = trainer.evaluate(union)
    scores: dict[str, Any] = evaluation.scores()
    parties = [record.meta.get("party") for record in union]
    if evaluation.task == "classification" and len({p for p in parties if p is not None}) > 1:
        scores["by_party"] = scores_by_party(evaluation, parties)
    return scores


def evaluate_global_adapter(
    training: Mapping[str, Any], state_dir: Path, heldout: Sequence[Record]
) -> dict[str, Any] | None:
    """Scores of the last committed global adapter on ``heldout`` (the union of the held-out splits)."""
    from fedmask.adapter.config import TrainingConfig
    from fedmask.coordinator.store import FederationStore
    from fedmask.participant.trainer import LocalTrainer

    with FederationStore(state_dir / "federation.db", read_only=True) as store:
        last = store.last_committed()
        if last is None:
            return None
        vector, _layout = store.load_checkpoint(last)
    if not heldout:
        return None
    trainer = LocalTrainer(TrainingConfig.create(**dict(training)))
    trainer.set_adapter_vector(vector)
    return union_scores(trainer, heldout)


def baseline_feature_cache(parties: int, rounds: int) -> FeatureCache:
    """One feature cache for every baseline of a demo, with room for every encoder state they
    use: all of them start from the same encoder, whose features of a record are then computed
    once (the pooled baselines first, and each party's records are among the pooled ones)."""
    from fedmask.participant.probe import FeatureCache

    return FeatureCache(max_states=rounds * (parties + 2) + 1)


def single_party_baselines(
    training: Mapping[str, Any],
    data_paths: Mapping[str, Path],
    rounds: int,
    echo: Callable[[str], None],
    feature_cache: FeatureCache | None = None,
) -> dict[str, dict[str, Any]]:
    """Each party trained alone with the same DP budget and the same local training per round,
    scored on the union of every party's held-out split (only at the end: scoring between
    rounds would change nothing and cost a pass over the held-out split each time)."""
    from fedmask.adapter.config import TrainingConfig
    from fedmask.participant.data import load_local_data
    from fedmask.participant.trainer import LocalTrainer
    from fedmask.participant.training import configure_threads, train_adapter

    configure_threads()  # the participants have exited: every core is free for the baselines
    config = TrainingConfig.create(**dict(training))
    data = {party: load_local_data(path, task=config.task) for party, path in data_paths.items()}
    union = [record for local in data.values() for record in local.heldout]
    scores: dict[str, dict[str, Any]] = {}
    for party, local in data.items():
        echo(f"baseline: training {party} alone ({rounds} rounds of local DP training, same budget)")
        started = time.perf_counter()
        trainer = LocalTrainer(config, feature_cache=feature_cache)
        for number in range(1, rounds + 1):
            train_adapter(config, local, trainer=trainer, score_heldout=False, calibrate=number == rounds)
        scores[party] = union_scores(trainer, union)
        echo(
            f"baseline: {party} alone on the union of held-out splits: {_headline(scores[party])} "
            f"({time.perf_counter() - started:.0f} s)"
        )
    return scores


def pooled_baselines(
    training: Mapping[str, Any],
    data_paths: Mapping[str, Path],
    rounds: int,
    echo: Callable[[str], None],
    feature_cache: FeatureCache | None = None,
) -> dict[str, dict[str, Any]]:
    """One party holding every party's training records, scored on the union of the held-out
    splits: ``pooled_dp`` with the same DP budget and local training per round as the
    participants (what federation would give if secure aggregation and DP on the sum cost
    nothing), and ``pooled_non_private`` with the same recipe without clipping or noise -- the
    ceiling, which only the demo can compute because only it holds everyone's records."""
    from dataclasses import replace

    from fedmask.adapter.calibration import solve_shift
    from fedmask.adapter.config import TrainingConfig
    from fedmask.participant.data import load_local_data
    from fedmask.participant.probe import FeatureCache
    from fedmask.participant.trainer import LocalTrainer
    from fedmask.participant.training import configure_threads, train_adapter

    configure_threads()
    config = TrainingConfig.create(**dict(training))
    data = [load_local_data(path, task=config.task) for path in data_paths.values()]
    union = [record for local in data for record in local.heldout]
    pooled = replace(data[0], train=[record for local in data for record in local.train], heldout=[])
    # Both models start from the same encoder: its features once.
    features = feature_cache if feature_cache is not None else FeatureCache(max_states=2 * rounds + 1)
    scores: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    echo(f"baseline: pooled records ({len(pooled.train)}), {rounds} rounds of DP training, same budget")
    started = time.perf_counter()
    private = LocalTrainer(config, feature_cache=features)
    for number in range(1, rounds + 1):
        train_adapter(config, pooled, trainer=private, score_heldout=False, calibrate=number == rounds)
    scores["pooled_dp"] = union_scores(private, union)
    seconds["pooled_dp"] = time.perf_counter() - started
    echo(f"baseline: pooled records, no DP ({rounds} rounds of the same recipe without clipping or noise)")
    started = time.perf_counter()
    ceiling = LocalTrainer(config, feature_cache=features)
    for _ in range(rounds):
        ceiling.train_non_private(pooled.train)
    if config.calibrates:  # the same recipe's last step, without noise
        ceiling.shift_decision(solve_shift(ceiling.margin_statistic(pooled.train)).shift)
    scores["pooled_non_private"] = union_scores(ceiling, union)
    seconds["pooled_non_private"] = time.perf_counter() - started
    for name, figures in scores.items():
        echo(f"baseline: {name} on the union of held-out splits: {_headline(figures)} ({seconds[name]:.0f} s)")
    return scores


def _metrics(scores: Mapping[str, Any]) -> tuple[str, ...]:
    return CLASSIFICATION_METRICS if scores.get("task", "classification") == "classification" else CAUSAL_LM_METRICS


def _headline(scores: Mapping[str, Any]) -> str:
    """The two figures a progress line names, with their intervals."""
    names = ("macro_f1", "balanced_accuracy") if _metrics(scores) == CLASSIFICATION_METRICS else CAUSAL_LM_METRICS
    return ", ".join(f"{TITLES[name]} {format_with_interval(scores, name)}" for name in names)


def _result(scores: Mapping[str, Any]) -> dict[str, Any]:
    """The report's figures of one model: its scores, their intervals, the record count, and the
    same on each party's records (``by_party``) where they were scored."""
    names = _metrics(scores)
    result = {
        "task": scores.get("task", "classification"),
        **{name: scores[name] for name in names},
        "ci95": {name: scores["ci95"][name] for name in names},
        "count": scores["count"],
    }
    if scores.get("by_party"):
        result["by_party"] = {party: _result(figures) for party, figures in scores["by_party"].items()}
    return result


def _accuracy(scores: Mapping[str, Any]) -> float:
    """Accuracy of records (classification) or of next tokens (causal LM)."""
    return float(scores["accuracy"] if "accuracy" in scores else scores["next_token_accuracy"])


def build_report(
    final: Mapping[str, Any],
    baselines: Mapping[str, Mapping[str, Any]],
    federation_s: float,
    total_s: float,
    config: Mapping[str, Any],
    federated: Mapping[str, Any] | None = None,
    majority: Mapping[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
    pooled: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report: ``rounds`` (what the coordinator learnt), ``results`` (``federated``,
    ``party_alone.<name>``, ``pooled_dp``, ``pooled_non_private`` and ``majority``: accuracy,
    balanced accuracy, macro-F1 and AUROC with ``ci95`` intervals, on the union of the held-out
    splits), timings and the config.

    ``baselines``, ``federated``, ``majority`` and the values of ``pooled`` (keys ``pooled_dp``,
    ``pooled_non_private``; see :func:`pooled_baselines`) are
    :func:`fedmask.adapter.scores.classification_scores` results. The accuracy-only keys of
    earlier reports (``federated_accuracy``, ``best_single_party_accuracy``, ...) are kept for the
    programs that read them.
    """
    ledger = final["ledger"]
    federated_accuracy = _accuracy(federated) if federated is not None else None
    accuracy = _accuracy_after_rounds(final, federated_accuracy)
    rounds = []
    for entry, after in zip(ledger, accuracy, strict=True):
        rounds.append(
            {
                "round": entry["round"],
                "survivors": entry["survivors"],
                "dropped": entry["dropped"],
                "accuracy": after,
                "epsilon": entry["epsilon"],
                "participant_level_epsilon": entry.get("participant_epsilon"),
                "upload_bytes": sum(entry["metrics"]["upload_bytes"].values()),
                "wall_s": entry["metrics"]["wall_s"],
                "attempts": entry["attempt"],
                # the calibration round's shift of the decision margin (fedmask.adapter.calibration)
                "calibration": entry["metrics"].get("calibration"),
            }
        )
    single_accuracy = {party: _accuracy(scores) for party, scores in baselines.items()}
    best_party = max(single_accuracy, key=single_accuracy.__getitem__) if single_accuracy else None
    results: dict[str, Any] = {
        "federated": _result(federated) if federated is not None else None,
        "party_alone": {party: _result(scores) for party, scores in baselines.items()},
        "majority": _result(majority) if majority is not None else None,
    }
    for name in POOLED:
        figures = (pooled or {}).get(name)
        results[name] = _result(figures) if figures is not None else None
    if majority is not None:
        names = list(label_names) if label_names else None
        label = majority["majority_label"]
        results["majority"]["label"] = names[label] if names else label
    if federated is not None:
        results["bootstrap"] = federated["bootstrap"]
    return {
        "rounds": rounds,
        "results": results,
        "federated_accuracy": federated_accuracy,
        "best_single_party_accuracy": single_accuracy[best_party] if best_party else None,
        "best_single_party": best_party,
        "single_party_accuracy": single_accuracy,
        "federation_wall_s": round(federation_s, 1),
        "total_wall_s": round(total_s, 1),
        "config": dict(config),
    }


def render_markdown(report: Mapping[str, Any]) -> str:
    parties = sorted({p for r in report["rounds"] for p in r["epsilon"]})
    header = ["round", "survivors", "held-out acc"] + [f"ε {p}" for p in parties] + ["upload bytes", "wall s"]
    lines = ["# fedmask demo", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in report["rounds"]:
        cells = ["calibration" if r.get("calibration") else str(r["round"]), ", ".join(r["survivors"])]
        cells.append(f"{r['accuracy']:.3f}" if r["accuracy"] is not None else "–")
        cells += [f"{r['epsilon'][p]:.2f}" if p in r["epsilon"] else "–" for p in parties]
        cells += [f"{r['upload_bytes']:,}", f"{r['wall_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    dropped = [(r["round"], name, why) for r in report["rounds"] for name, why in r["dropped"].items()]
    if dropped:
        lines += ["", "Dropped (the round completed without them):"]
        lines += [f"- round {rnd}: {name}: {why}" for rnd, name, why in dropped]
    for r in report["rounds"]:
        if r.get("calibration"):
            solved = r["calibration"]
            lines += [
                "",
                f"Calibration: the decision margin moved by {solved['shift']:+.3f}, from the survivors' "
                f"noised counts summed under secure aggregation ({solved['positives']:.0f} positives among "
                f"{solved['records']:.0f} training records).",
            ]
    if any(r.get("participant_level_epsilon") is not None for r in report["rounds"]):
        lines += [
            "",
            "Participant-level ε against the coordinator (distributed noise, cumulative): "
            + ", ".join(f"round {r['round']}: {r['participant_level_epsilon']:.3f}" for r in report["rounds"]),
        ]
    lines += [
        "",
        "Held-out acc: the global adapter after the round, on the held-out splits of the next round's",
        "survivors together (the coordinator learns only these totals, summed under secure aggregation);",
        "after the last round, on the union of every party's held-out split. ε is record-level,",
        "cumulative, as each party's Opacus accountant reports it.",
        "",
    ]
    lines += _results_markdown(report)
    lines += ["", f"Federation wall time {report['federation_wall_s']} s; whole demo {report['total_wall_s']} s."]
    return "\n".join(lines) + "\n"


def _results_markdown(report: Mapping[str, Any]) -> list[str]:
    results = report.get("results") or {}
    federated, alone, majority = results.get("federated"), results.get("party_alone") or {}, results.get("majority")
    if federated is None:
        return ["Final adapter: not evaluated (the coordinator alone holds no held-out data)."]
    metrics = _metrics(federated)
    header = ["model", *(TITLES[name] for name in metrics)]
    lines = [
        f"## The final models on the union of held-out splits ({federated['count']} records)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    rows = [("**federated adapter**", federated)]
    rows += [(title, results[name]) for name, title in POOLED.items() if results.get(name) is not None]
    rows += [(f"{party} alone, same DP budget", figures) for party, figures in sorted(alone.items())]
    if majority is not None:
        rows.append((f"always {majority['label']!r} (majority baseline)", majority))
    for title, figures in rows:
        lines.append("| " + " | ".join([title, *(format_with_interval(figures, m) for m in metrics)]) + " |")
    boot = results.get("bootstrap") or {}
    if metrics == CAUSAL_LM_METRICS:
        return [
            *lines,
            "",
            f"95% intervals: {boot.get('method', 'percentile bootstrap over records')} ({boot.get('resamples')} "
            f"resamples, seed {boot.get('seed')}). Perplexity: exp of the mean next-token cross-entropy over "
            "every predicted token (lower is better).",
        ]
    chance = 0.5 if majority is None else majority["balanced_accuracy"]
    lines += [
        "",
        f"95% intervals: {boot.get('method', 'percentile bootstrap over records')} ({boot.get('resamples')} "
        f"resamples, seed {boot.get('seed')}). Balanced accuracy is the mean recall over the labels: always "
        f"answering one label gets {chance:.3f}, whatever the label mix.",
        "",
    ]
    low = (federated["ci95"].get("balanced_accuracy") or [federated["balanced_accuracy"]])[0]
    lines.append(
        f"The federated adapter beats the majority baseline (its balanced-accuracy interval lies above {chance:.3f})."
        if low > chance
        else f"The federated adapter does NOT beat the majority baseline: its balanced-accuracy interval reaches "
        f"{chance:.3f}, what always answering one label gets."
    )
    ceiling = results.get("pooled_non_private")
    if ceiling is not None and ceiling["macro_f1"] > 0:
        lines.append(
            f"The federated adapter reaches {federated['macro_f1'] / ceiling['macro_f1']:.3f} of the pooled "
            f"non-private ceiling's macro-F1 ({format_with_interval(ceiling, 'macro_f1')})."
        )
    if alone:
        best = max(alone, key=lambda party: alone[party]["macro_f1"])
        lines.append(
            f"Best party alone by macro-F1: {best}, {format_with_interval(alone[best], 'macro_f1')}, against the "
            f"federated adapter's {format_with_interval(federated, 'macro_f1')} (the intervals overlap: "
            "this held-out sample does not clearly separate the two)."
            if _overlap(alone[best]["ci95"]["macro_f1"], federated["ci95"]["macro_f1"])
            else f"Best party alone by macro-F1: {best}, {format_with_interval(alone[best], 'macro_f1')}, against "
            f"the federated adapter's {format_with_interval(federated, 'macro_f1')}."
        )
    return lines + _by_party_markdown(results)


def _by_party_markdown(results: Mapping[str, Any]) -> list[str]:
    """Each model on each party's own held-out records, and for each party whether the federated
    adapter serves its records better than its own model alone."""
    federated = results.get("federated") or {}
    by_party = federated.get("by_party") or {}
    if not by_party:
        return []
    parties = list(by_party)
    alone = results.get("party_alone") or {}
    rows = [("**federated adapter**", federated)]
    rows += [(title, results[name]) for name, title in POOLED.items() if results.get(name) is not None]
    rows += [(f"{party} alone, same DP budget", alone[party]) for party in parties if party in alone]
    lines = [
        "",
        "## Each party's own held-out records (macro-F1)",
        "",
        "| " + " | ".join(["model", *(f"{party} ({by_party[party]['count']})" for party in parties)]) + " |",
        "|" + "---|" * (len(parties) + 1),
    ]
    for title, figures in rows:
        own = figures.get("by_party") or {}
        cells = [format_with_interval(own[party], "macro_f1") if party in own else "–" for party in parties]
        lines.append("| " + " | ".join([title, *cells]) + " |")
    verdicts = []
    for party in parties:
        own_model = ((alone.get(party) or {}).get("by_party") or {}).get(party)
        if own_model is None:
            continue
        ours, theirs = by_party[party], own_model
        if _overlap(ours["ci95"]["macro_f1"], theirs["ci95"]["macro_f1"]):
            verdict = "the intervals overlap: no clear difference"
        elif ours["macro_f1"] > theirs["macro_f1"]:
            verdict = "the federated adapter is better there"
        else:
            verdict = "the federated adapter is WORSE there"
        verdicts.append(
            f"- on {party}'s records: federated adapter {ours['macro_f1']:.3f}, {party}'s own model "
            f"{theirs['macro_f1']:.3f} ({verdict})."
        )
    if verdicts:
        lines += ["", *verdicts]
    return lines


def _overlap(first: Sequence[float] | None, second: Sequence[float] | None) -> bool:
    return bool(first and second and first[0] <= second[1] and second[0] <= first[1])


def plot(report: Mapping[str, Any], path: Path) -> None:
    """Left: macro-F1 (next-token accuracy for causal LMs) with its 95% interval of every model in
    ``results`` on the union of the held-out splits. Right: each party's cumulative record-level
    ε per round, with the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report.get("results") or {}
    bars: list[tuple[str, Mapping[str, Any]]] = []
    if results.get("federated") is not None:
        bars.append(("federated", results["federated"]))
    bars += [(name.replace("_", " "), results[name]) for name in POOLED if results.get(name) is not None]
    bars += [(f"{party} alone", figures) for party, figures in sorted((results.get("party_alone") or {}).items())]
    if results.get("majority") is not None:
        bars.append(("majority", results["majority"]))
    rounds = [r["round"] for r in report["rounds"]]
    parties = sorted({p for r in report["rounds"] for p in r["epsilon"]})
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    metric = "macro_f1" if not bars or "macro_f1" in bars[0][1] else "next_token_accuracy"
    if bars:
        values = [figures[metric] for _, figures in bars]
        intervals = [figures["ci95"].get(metric) or [figures[metric]] * 2 for _, figures in bars]
        errors = [
            [value - low for value, (low, _) in zip(values, intervals, strict=True)],
            [high - value for value, (_, high) in zip(values, intervals, strict=True)],
        ]
        positions = list(range(len(bars)))
        left.bar(positions, values, yerr=errors, capsize=4, color=["tab:blue"] + ["tab:grey"] * (len(bars) - 1))
        left.set_xticks(positions, [title for title, _ in bars], rotation=30, ha="right")
        left.set_ylim(0, 1)
    left.set(title=f"{TITLES[metric]} on the union of held-out splits (95% CI)", ylabel=TITLES[metric])
    for party in parties:
        right.plot(rounds, [r["epsilon"].get(party) for r in report["rounds"]], marker="o", label=party)
    budget = ((report.get("config") or {}).get("training") or {}).get("target_epsilon")
    if budget is not None:
        right.axhline(budget, linestyle="--", color="grey", label=f"budget ε = {budget:g}")
    right.set(title="Record-level ε spent (cumulative)", xlabel="round", ylabel="ε")
    right.set_xticks(rounds)
    right.legend()
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    plt.close(figure)
    write_atomic(path, image.getvalue())


def write_report(
    report: Mapping[str, Any],
    out_dir: Path,
    final: Mapping[str, Any],
    training: Mapping[str, Any],
    state_dir: Path,
    *,
    heldout: Sequence[Record] | None = None,
    label_names: Sequence[str] | None = None,
    data_description: str = "",
) -> None:
    """``report.json``, ``report.md``, ``report.png``, ``global_adapter/`` (PEFT) and, when the
    held-out records are given, ``global_model/``: the federated classifier exported for standard
    libraries (:mod:`fedmask.adapter.export`), verified and scored on those records."""
    from fedmask.adapter.config import TrainingConfig
    from fedmask.adapter.export import TrainingFacts, export_classifier
    from fedmask.coordinator.store import FederationStore
    from fedmask.participant.training import export_adapter, heldout_row

    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out_dir / "report.md", render_markdown(report))
    plot(report, out_dir / "report.png")
    with FederationStore(state_dir / "federation.db", read_only=True) as store:
        last = store.last_committed()
        if last is None:
            return
        vector, _layout = store.load_checkpoint(last)
    config = TrainingConfig.create(**dict(training))
    export_adapter(config, vector, out_dir / "global_adapter")
    if not heldout or config.task != "classification":
        return
    ledger = final["ledger"]
    spent = final.get("final_epsilon") or (ledger[-1]["epsilon"] if ledger else {})
    parties = sorted({party for entry in ledger for party in entry["epsilon"]})
    facts = TrainingFacts(
        parties=len(parties),
        rounds=len(ledger),
        epsilon=max(spent.values()) if spent else float("nan"),
        delta=config.target_delta,
        accountant=config.accountant,
        data=data_description or f"the records of {', '.join(parties)}",
        participant_level_epsilon=ledger[-1].get("participant_epsilon") if ledger else None,
        secure_aggregation=True,
    )
    export_classifier(
        config,
        vector,
        out_dir / "global_model",
        heldout=[heldout_row(record) for record in heldout],
        label_names=list(label_names) if label_names else [str(i) for i in range(config.num_labels)],
        facts=facts,
    )
