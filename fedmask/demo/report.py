"""The demo's report: per-round table, federated vs. single-party accuracy, plot, global adapter.

Per-round held-out figures are what the coordinator learns: the totals over the survivors of each
round, summed inside the masked vectors (``fedmask.adapter.metrics``), never one party's figure.
The final adapter and the single-party baselines are evaluated here, in the demo process that
generated everyone's data, because only it may see every party's held-out split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def _accuracy_after_rounds(final: Mapping[str, Any], federated: float | None) -> list[float | None]:
    """accuracy[r-1]: the global adapter after round r on the held-out splits of round r+1's
    survivors together (they evaluate the adapter a round starts from); after the last round,
    ``federated`` (the demo's own evaluation on the union), if given."""
    ledger = final["ledger"]
    after = [(entry["metrics"].get("heldout_before") or {}).get("heldout_accuracy") for entry in ledger[1:]]
    return [*after, federated]


def evaluate_global_adapter(
    training: Mapping[str, Any], state_dir: Path, data_paths: Mapping[str, Path]
) -> float | None:
    """The last committed global adapter on the union of every party's held-out split."""
    from fedmask.adapter.config import TrainingConfig
    from fedmask.coordinator.store import FederationStore
    from fedmask.participant.data import load_local_data
    from fedmask.participant.trainer import LocalTrainer

    with FederationStore(state_dir / "federation.db", read_only=True) as store:
        last = store.last_committed()
        if last is None:
            return None
        vector, _layout = store.load_checkpoint(last)
    union = [record for path in data_paths.values() for record in load_local_data(path).heldout]
    trainer = LocalTrainer(TrainingConfig.create(**dict(training)))
    trainer.set_adapter_vector(vector)
    return trainer.evaluate(union).accuracy if union else None


def single_party_baselines(
    training: Mapping[str, Any], data_paths: Mapping[str, Path], rounds: int, echo: Callable[[str], None]
) -> dict[str, float]:
    """Each party trained alone with the same DP budget and the same local training per round,
    evaluated on the union of every party's held-out split."""
    from fedmask.adapter.config import TrainingConfig
    from fedmask.participant.data import load_local_data
    from fedmask.participant.trainer import LocalTrainer
    from fedmask.participant.training import configure_threads, train_adapter

    configure_threads()  # the participants have exited: every core is free for the baselines
    config = TrainingConfig.create(**dict(training))
    data = {party: load_local_data(path) for party, path in data_paths.items()}
    union = [record for local in data.values() for record in local.heldout]
    accuracy: dict[str, float] = {}
    for party, local in data.items():
        echo(f"baseline: training {party} alone ({rounds} rounds of local DP training, same budget)")
        trainer = LocalTrainer(config)
        for _ in range(rounds):
            train_adapter(config, local, trainer=trainer)
        accuracy[party] = trainer.evaluate(union).accuracy
        echo(f"baseline: {party} alone reaches {accuracy[party]:.3f} on the union of held-out splits")
    return accuracy


def build_report(
    final: Mapping[str, Any],
    baselines: Mapping[str, float],
    federation_s: float,
    total_s: float,
    config: Mapping[str, Any],
    federated: float | None = None,
) -> dict[str, Any]:
    ledger = final["ledger"]
    accuracy = _accuracy_after_rounds(final, federated)
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
            }
        )
    best_party = max(baselines, key=baselines.__getitem__) if baselines else None
    return {
        "rounds": rounds,
        "federated_accuracy": federated,
        "best_single_party_accuracy": baselines[best_party] if best_party else None,
        "best_single_party": best_party,
        "single_party_accuracy": dict(baselines),
        "federation_wall_s": round(federation_s, 1),
        "total_wall_s": round(total_s, 1),
        "config": dict(config),
    }


def render_markdown(report: Mapping[str, Any]) -> str:
    parties = sorted({p for r in report["rounds"] for p in r["epsilon"]})
    header = ["round", "survivors", "held-out acc"] + [f"ε {p}" for p in parties] + ["upload bytes", "wall s"]
    lines = ["# fedmask demo", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in report["rounds"]:
        cells = [str(r["round"]), ", ".join(r["survivors"])]
        cells.append(f"{r['accuracy']:.3f}" if r["accuracy"] is not None else "–")
        cells += [f"{r['epsilon'][p]:.2f}" if p in r["epsilon"] else "–" for p in parties]
        cells += [f"{r['upload_bytes']:,}", f"{r['wall_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    dropped = [(r["round"], name, why) for r in report["rounds"] for name, why in r["dropped"].items()]
    if dropped:
        lines += ["", "Dropped (the round completed without them):"]
        lines += [f"- round {rnd}: {name}: {why}" for rnd, name, why in dropped]
    if any(r.get("participant_level_epsilon") is not None for r in report["rounds"]):
        lines += [
            "",
            "Participant-level ε against the coordinator (distributed noise, cumulative): "
            + ", ".join(f"round {r['round']}: {r['participant_level_epsilon']:.3f}" for r in report["rounds"]),
        ]
    lines += [
        "",
        "Held-out accuracy: the global adapter after the round, on the held-out splits of the next",
        "round's survivors together (the coordinator learns only these totals, summed under secure",
        "aggregation); after the last round, on the union of every party's held-out split. ε is",
        "record-level, cumulative, as each party's Opacus accountant reports it.",
        "",
    ]
    federated = report["federated_accuracy"]
    best = report["best_single_party_accuracy"]
    lines.append(
        f"Federated adapter on the union of held-out splits: **{federated:.3f}**"
        if federated is not None
        else "Federated adapter: not evaluated on the union (the coordinator alone holds no held-out data)"
    )
    if best is not None:
        lines.append(
            f"Best single party trained alone with the same DP budget ({report['best_single_party']}): **{best:.3f}**"
        )
        for party, value in sorted(report["single_party_accuracy"].items()):
            lines.append(f"- {party} alone: {value:.3f}")
    lines += ["", f"Federation wall time {report['federation_wall_s']} s; whole demo {report['total_wall_s']} s."]
    return "\n".join(lines) + "\n"


def plot(report: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in report["rounds"]]
    parties = sorted({p for r in report["rounds"] for p in r["epsilon"]})
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(rounds, [r["accuracy"] for r in report["rounds"]], marker="o", label="federated")
    for party in parties:
        right.plot(rounds, [r["epsilon"].get(party) for r in report["rounds"]], marker="o", label=party)
    if report["best_single_party_accuracy"] is not None:
        left.axhline(report["best_single_party_accuracy"], linestyle="--", color="grey", label="best party alone")
    left.set(title="Global adapter, held-out accuracy", xlabel="round", ylabel="accuracy")
    right.set(title="Record-level ε spent (cumulative)", xlabel="round", ylabel="ε")
    for axis in (left, right):
        axis.set_xticks(rounds)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(
    report: Mapping[str, Any], out_dir: Path, final: Mapping[str, Any], training: Mapping[str, Any], state_dir: Path
) -> None:
    from fedmask.adapter.config import TrainingConfig
    from fedmask.coordinator.store import FederationStore
    from fedmask.participant.training import export_adapter

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    plot(report, out_dir / "report.png")
    store = FederationStore(state_dir / "federation.db", read_only=True)
    try:
        last = store.last_committed()
        if last is not None:
            vector, _layout = store.load_checkpoint(last)
            export_adapter(TrainingConfig.create(**dict(training)), vector, out_dir / "global_adapter")
    finally:
        store.close()
