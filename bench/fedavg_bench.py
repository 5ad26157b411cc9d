"""``fedmask bench fedavg``: the demo's federation in one process, for recipe experiments.

Each party is the trainer ``participant node`` runs (``LocalTrainer`` and ``train_adapter`` with
the federation's training settings, its own DP noise from the OS's CSPRNG), and the coordinator's
arithmetic is the coordinator's own: each update fixed-point encoded (clipped to ``clip_norm``,
randomised rounding), the sum mod 2^b decoded and checked (``decode_checked_sum``), the mean
applied by the configured server optimizer, then the calibration round's releases encoded,
summed and solved. What is left out cannot change the model: secure aggregation hands the
coordinator the exact sum of the encoded vectors, and gRPC carries it. A round takes seconds
instead of process starts, model loads and transport, so a setting's effect can be measured over
repeats: the records stay fixed (``--seed``), the DP noise differs in every repeat.

Each repeat reports the federated adapter on the union of the held-out splits, as ``fedmask
demo`` scores it; with ``--baselines`` (the default) also each party trained alone under the
same budget (the demo's baselines) and the federated adapter's macro-F1 margin over the best of
them. ``--set KEY=VALUE`` changes a federation setting (``server_learning_rate``, ``clip_norm``,
``rounds`` ...) or, as ``training.KEY=VALUE``, a training setting; values are JSON.
``--non-private`` federates without DP (the parties' recipe without clipping or noise, exact
calibration counts): where the federated result would stand if DP cost nothing.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fedmask.cli.quiet import quiet_libraries

if TYPE_CHECKING:
    from fedmask.coordinator.config import FederationConfig
    from fedmask.participant.data import LocalData, Record
    from fedmask.participant.probe import FeatureCache

FIGURES = ("macro_f1", "balanced_accuracy", "auroc")


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (VALUE as JSON, else a string) into federation settings; a key
    ``training.NAME`` goes into the training settings."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--set")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if key.startswith("training."):
            settings.setdefault("training", {})[key.removeprefix("training.")] = value
        else:
            settings[key] = value
    return settings


def federation_config(
    parties: Sequence[str], rounds: int, epsilon: float, changes: Mapping[str, Any]
) -> FederationConfig:
    """The demo's federation settings with ``changes`` applied, validated as the coordinator
    validates a config file."""
    from fedmask.cli.demo import federation_settings
    from fedmask.coordinator.config import FederationConfig, FederationError

    settings = federation_settings(list(parties), rounds, epsilon=epsilon)
    for key, value in changes.items():
        if key == "training":
            settings["training"] = {**settings["training"], **value}
        else:
            settings[key] = value
    try:
        return FederationConfig.from_json(settings)
    except FederationError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from None


def federate(
    federation: FederationConfig,
    data: Mapping[str, LocalData],
    heldout: Sequence[Record],
    features: FeatureCache,
    *,
    private: bool = True,
) -> dict[str, Any]:
    """One federation of every party in ``data``, nobody dropping out: the final global
    adapter (``adapter``, calibrated when the settings plan it), its scores on ``heldout`` and
    each round's update norms (before clipping). ``private=False``: the same federation with the
    parties' recipe run without clipping or noise and an exact calibration statistic (where
    the federated result would stand without DP)."""
    import numpy as np

    from fedmask.adapter import calibration
    from fedmask.adapter.config import TrainingConfig
    from fedmask.adapter.model import initial_adapter
    from fedmask.coordinator.aggregation import server_optimizer_from_config
    from fedmask.demo.report import union_scores
    from fedmask.participant.trainer import LocalTrainer
    from fedmask.participant.training import train_adapter
    from fedmask.secagg import prg
    from fedmask.secagg.encoding import decode_checked_sum, encode
    from fedmask.secagg.rand import SystemRandom

    config = TrainingConfig.create(**federation.training_config())
    encoding = federation.encoding()
    optimizer = server_optimizer_from_config(federation.server_optimizer_config())
    trainers = {party: LocalTrainer(config, feature_cache=features) for party in data}
    global_vector, _ = initial_adapter(config)
    survivors = len(trainers)
    norms: list[list[float]] = []
    for _ in range(federation.rounds):
        total = np.zeros(global_vector.size, dtype=prg.dtype_for_bits(encoding.modulus_bits))
        round_norms = []
        for party, trainer in trainers.items():
            if private:
                trained = train_adapter(
                    config, data[party], global_adapter_state=global_vector, trainer=trainer, score_heldout=False
                ).vector
            else:
                trainer.set_adapter_vector(global_vector)
                trainer.train_non_private(data[party].train)
                trained = trainer.adapter_vector()
            update = trained.astype(np.float64) - global_vector.astype(np.float64)
            round_norms.append(float(np.linalg.norm(update)))
            np.add(total, encode(update, encoding, SystemRandom()), out=total)
        prg.reduce_modulus(total, encoding.modulus_bits)
        norms.append(round_norms)
        global_vector = optimizer.apply(global_vector, decode_checked_sum(total, encoding, survivors) / survivors)
    scorer = next(iter(trainers.values()))
    if federation.calibration_round is not None:
        release_total = None
        for party, trainer in trainers.items():
            trainer.set_adapter_vector(global_vector)
            release = (
                trainer.calibration_release(data[party].train, SystemRandom())
                if private
                else trainer.margin_statistic(data[party].train).astype(np.float64)
            )
            encoded = calibration.encode_release(release, encoding.modulus_bits, survivors)
            release_total = encoded if release_total is None else release_total + encoded
        assert release_total is not None
        prg.reduce_modulus(release_total, encoding.modulus_bits)
        solved = calibration.solve_shift(
            calibration.decode_release(release_total, encoding.modulus_bits, survivors, survivors)
        )
        scorer.set_adapter_vector(global_vector)
        scorer.shift_decision(solved.shift)
    else:
        scorer.set_adapter_vector(global_vector)
    return {"adapter": scorer.adapter_vector(), "scores": union_scores(scorer, heldout), "update_norms": norms}


def _figures(scores: Mapping[str, Any]) -> dict[str, Any]:
    """The bench's figures of one model on the union, and its macro-F1 on each party's records."""
    figures: dict[str, Any] = {name: scores[name] for name in FIGURES}
    if "by_party" in scores:
        figures["by_party_macro_f1"] = {party: own["macro_f1"] for party, own in scores["by_party"].items()}
    return figures


def repeat_row(
    federation: FederationConfig,
    data_paths: Mapping[str, Path],
    baselines: bool,
    echo: Callable[[str], None],
    private: bool = True,
) -> dict[str, Any]:
    from fedmask.demo.report import baseline_feature_cache, single_party_baselines
    from fedmask.participant.data import load_local_data

    data = {party: load_local_data(path) for party, path in data_paths.items()}
    heldout = [record for local in data.values() for record in local.heldout]
    features = baseline_feature_cache(len(data), federation.rounds)
    started = time.perf_counter()
    federated = federate(federation, data, heldout, features, private=private)
    row: dict[str, Any] = {
        "federated": _figures(federated["scores"]),
        "update_norms": federated["update_norms"],
        "federation_s": time.perf_counter() - started,
    }
    echo(f"federated macro-F1 {row['federated']['macro_f1']:.3f} ({row['federation_s']:.0f} s)")
    if baselines:
        alone = single_party_baselines(federation.training_config(), data_paths, federation.rounds, echo, features)
        row["party_alone"] = {party: _figures(scores) for party, scores in alone.items()}
        best = max(alone, key=lambda party: alone[party]["macro_f1"])
        row["best_party"] = best
        row["margin_over_best_party"] = row["federated"]["macro_f1"] - alone[best]["macro_f1"]
    return row


@click.command("fedavg")
@click.option("--participants", type=click.IntRange(2, 12), default=3, show_default=True)
@click.option("--records", type=click.IntRange(50, 100_000), default=500, show_default=True, help="Per party.")
@click.option("--rounds", type=click.IntRange(1, 50), default=3, show_default=True)
@click.option("--epsilon", type=click.FloatRange(0.1, 100), default=8.0, show_default=True)
@click.option("--repeats", type=click.IntRange(1, 50), default=3, show_default=True)
@click.option(
    "--set",
    "changes",
    multiple=True,
    metavar="KEY=VALUE",
    help="A federation setting (server_learning_rate=1.0) or a training one (training.batch_size=128).",
)
@click.option("--baselines/--no-baselines", default=True, show_default=True, help="Train each party alone too.")
@click.option(
    "--non-private",
    is_flag=True,
    help="Federate without DP (no clipping or noise in training; exact calibration counts); "
    "the parties alone keep their DP budget.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated records.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def fedavg(
    participants: int,
    records: int,
    rounds: int,
    epsilon: float,
    repeats: int,
    changes: tuple[str, ...],
    baselines: bool,
    non_private: bool,
    seed: int,
    as_json: bool,
) -> None:
    """The demo's federation in one process, repeated: federated macro-F1 and its margin over
    the best party alone."""
    quiet_libraries("%(message)s")
    from fedmask.cli.demo import party_names, party_profile
    from fedmask.demo.data import generate_records, write_records
    from fedmask.participant.training import configure_threads

    parties = party_names(participants)
    federation = federation_config(parties, rounds, epsilon, parse_settings(changes))
    configure_threads()

    def echo(line: str) -> None:
        if not as_json:
            click.echo(line, err=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="fedmask-bench-fedavg-") as workdir:
        data_paths = {
            party: write_records(
                generate_records(party_profile(party), records, seed=seed + index), Path(workdir) / f"{party}.jsonl"
            )
            for index, party in enumerate(parties)
        }
        for number in range(1, repeats + 1):
            echo(f"repeat {number}/{repeats}")
            rows.append(repeat_row(federation, data_paths, baselines, echo, private=not non_private))
    report = summarise(rows, federation, parties, records, epsilon, seed)
    report["federated_with_dp"] = not non_private
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render(report))


def summarise(
    rows: list[dict[str, Any]],
    federation: FederationConfig,
    parties: Sequence[str],
    records: int,
    epsilon: float,
    seed: int,
) -> dict[str, Any]:
    federated = [row["federated"]["macro_f1"] for row in rows]
    summary: dict[str, Any] = {
        "federated_macro_f1_mean": statistics.fmean(federated),
        "federated_macro_f1_min": min(federated),
    }
    margins = [row["margin_over_best_party"] for row in rows if "margin_over_best_party" in row]
    if margins:
        summary["margin_mean"] = statistics.fmean(margins)
        summary["margin_min"] = min(margins)
        summary["repeats_with_margin_at_least_0.10"] = sum(m >= 0.10 for m in margins)
    return {
        "participants": list(parties),
        "records_per_party": records,
        "epsilon": epsilon,
        "seed": seed,
        "server_optimizer": federation.server_optimizer_config(),
        "clip_norm": federation.clip_norm,
        "rounds": federation.rounds,
        "training": federation.training,
        "rows": rows,
        "summary": summary,
    }


def render(report: Mapping[str, Any]) -> str:
    lines = [
        f"{len(report['participants'])} parties x {report['records_per_party']} records, epsilon "
        f"{report['epsilon']:g}, {report['rounds']} rounds, server {report['server_optimizer']}, clip "
        f"{report['clip_norm']:g}; training {json.dumps(report['training'], sort_keys=True)}"
        + ("" if report["federated_with_dp"] else "; federated WITHOUT DP"),
        "",
        "| repeat | federated macro-F1 | balanced accuracy | AUROC | best party alone | margin | federation s |",
        "|---:|---:|---:|---:|---|---:|---:|",
    ]
    for number, row in enumerate(report["rows"], 1):
        federated = row["federated"]
        best = "–"
        margin = "–"
        if "best_party" in row:
            best = f"{row['best_party']} {row['party_alone'][row['best_party']]['macro_f1']:.3f}"
            margin = f"{row['margin_over_best_party']:+.3f}"
        lines.append(
            f"| {number} | {federated['macro_f1']:.3f} | {federated['balanced_accuracy']:.3f} "
            f"| {federated['auroc']:.3f} | {best} | {margin} | {row['federation_s']:.0f} |"
        )
    lines += _by_party_lines(report["rows"])
    summary = report["summary"]
    text = (
        f"mean federated macro-F1 {summary['federated_macro_f1_mean']:.3f} "
        f"(min {summary['federated_macro_f1_min']:.3f})"
    )
    if "margin_mean" in summary:
        text += (
            f"; margin over the best party alone: mean {summary['margin_mean']:+.3f}, min "
            f"{summary['margin_min']:+.3f}, >= 0.10 in {summary['repeats_with_margin_at_least_0.10']} "
            f"of {len(report['rows'])}"
        )
    lines += ["", text]
    return "\n".join(lines)


def _by_party_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Macro-F1 on each party's own held-out records, by repeat: where the federation's value
    comes from, and whether a party's records are served worse than by its own model."""
    parties = list(rows[0]["federated"].get("by_party_macro_f1") or {}) if rows else []
    if not parties:
        return []
    lines = [
        "",
        "macro-F1 on each party's own held-out records:",
        "",
        "| repeat | model | " + " | ".join(parties) + " |",
        "|---:|---|" + "---:|" * len(parties),
    ]
    for number, row in enumerate(rows, 1):
        models = [("federated", row["federated"])]
        models += [(f"{party} alone", figures) for party, figures in (row.get("party_alone") or {}).items()]
        for name, figures in models:
            own = figures.get("by_party_macro_f1") or {}
            cells = [f"{own[party]:.3f}" if party in own else "–" for party in parties]
            lines.append(f"| {number} | {name} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":  # pragma: no cover
    fedavg()
