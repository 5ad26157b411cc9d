"""``fedmask bench recipe``: does local DP training learn at every size and budget?

For each number of training records per party, each target epsilon and each adapter (LoRA,
BiTFiT), one participant trains all-MiniLM-L6-v2 on the demo's generated records
(``fedmask.demo.data``, party ``hospital-a``) for one round with the default recipe (the
settings ``fedmask participant train`` uses), then the model is scored on one fixed held-out set
of generated records: the majority baseline, balanced accuracy and macro-F1 with their 95%
bootstrap intervals, whether the balanced accuracy's whole interval lies above chance (what
always answering one label gets), whether training diverged, and the wall time of the cell.

``--recipe old`` runs the recipe the project used before (no linear probe, fixed SGD rates 0.01
for the adapter and 2.0 for the head, 3 epochs) for comparison.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from fedmask.cli.quiet import quiet_libraries

if TYPE_CHECKING:
    from fedmask.participant.data import Record
    from fedmask.participant.probe import FeatureCache

PARTY = "hospital-a"
HELDOUT_SEED = 999
RECIPES = ("default", "old")
# The recipe before noise-calibrated step sizes and the linear probe.
OLD_RECIPE: dict[str, Any] = {"probe_fraction": 0.0, "learning_rate": 0.01, "head_learning_rate": 2.0, "epochs": 3.0}


def train_records(count: int, seed: int) -> list[Record]:
    """``count`` scrubbed training records of the demo party (the generator's train split)."""
    from fedmask.demo.data import generate_records
    from fedmask.participant.data import Record, scrub_records

    rows = generate_records(PARTY, math.ceil(count / 0.8) + 5, seed=seed)
    records = [Record(text=str(r["text"]), label=int(str(r["label"]))) for r in rows if r["split"] == "train"]
    if len(records) < count:  # pragma: no cover - the split is 80/20 by construction
        raise RuntimeError(f"asked for {count} training records, the generator gave {len(records)}")
    return scrub_records(records[:count])[0]


def heldout_records(count: int) -> list[Record]:
    """One fixed held-out set for every cell: records generated with their own seed."""
    from fedmask.demo.data import generate_records
    from fedmask.participant.data import Record, scrub_records

    rows = generate_records(PARTY, count, seed=HELDOUT_SEED)
    return scrub_records([Record(text=str(r["text"]), label=int(str(r["label"]))) for r in rows])[0]


def run_cell(
    records: Sequence[Record],
    heldout: Sequence[Record],
    *,
    epsilon: float,
    mode: str,
    recipe: str,
    seed: int,
    cache: FeatureCache,
) -> dict[str, Any]:
    """Train one participant for one round; its held-out scores and how training went."""
    from fedmask.adapter.config import TrainingConfig
    from fedmask.adapter.scores import beats_majority
    from fedmask.participant.trainer import LocalTrainer

    settings: dict[str, Any] = {"mode": mode, "target_epsilon": epsilon, "noise_seed": seed, "seed": seed}
    if recipe == "old":
        settings.update(OLD_RECIPE)
    config = TrainingConfig(**settings)
    started = time.perf_counter()
    trainer = LocalTrainer(config, feature_cache=cache)
    result = trainer.train(records)
    scores = trainer.evaluate(heldout).scores()
    seconds = time.perf_counter() - started
    return {
        "records": len(records),
        "epsilon": epsilon,
        "mode": mode,
        "recipe": recipe,
        "seed": seed,
        "noise_multiplier": round(result.noise_multiplier, 4),
        "expected_batch": result.expected_batch_size,
        "steps": result.steps,
        "probe_steps": result.probe_steps,
        "step_sizes": {k: float(f"{v:.4g}") for k, v in result.learning_rates.items()},
        "final_train_loss": round(result.final_loss, 4),
        "diverged": result.diverged,
        "majority_baseline": scores["majority_baseline"],
        "balanced_accuracy": scores["balanced_accuracy"],
        "balanced_accuracy_ci95": scores["ci95"]["balanced_accuracy"],
        "macro_f1": scores["macro_f1"],
        "macro_f1_ci95": scores["ci95"]["macro_f1"],
        "accuracy": scores["accuracy"],
        "beats_majority": beats_majority(scores),
        "heldout": scores["count"],
        "seconds": round(seconds, 1),
    }


def render_table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['heldout']} held-out records (majority baseline {result['majority_baseline']:.3f}), "
        f"{result['threads']} torch threads, {result['wall_s']} s in all",
        "",
        "| records | ε | adapter | recipe | σ | steps (probe) | balanced acc. [95% CI] | macro-F1 [95% CI] "
        "| beats majority | diverged | final loss | s |",
        "|---:|---:|---|---|---:|---:|---|---|---|---|---:|---:|",
    ]
    for r in result["rows"]:
        ba, f1 = r["balanced_accuracy_ci95"], r["macro_f1_ci95"]
        lines.append(
            f"| {r['records']} | {r['epsilon']:g} | {r['mode']} | {r['recipe']} | {r['noise_multiplier']:.2f} | "
            f"{r['steps']} ({r['probe_steps']}) | {r['balanced_accuracy']:.3f} [{ba[0]:.3f}, {ba[1]:.3f}] | "
            f"{r['macro_f1']:.3f} [{f1[0]:.3f}, {f1[1]:.3f}] | {'yes' if r['beats_majority'] else 'NO'} | "
            f"{'YES' if r['diverged'] else 'no'} | {r['final_train_loss']:.3f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def _numbers(text: str, kind: type, option: str) -> list[Any]:
    """Comma-separated positive numbers (record counts, epsilons), or one line naming the option."""
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=option) from None
    if not values or not all(math.isfinite(value) and value > 0 for value in values):
        raise click.BadParameter(f"expected positive numbers, got {text!r}", param_hint=option)
    return values


@click.command("recipe")
@click.option("--records", "records_text", default="100,400,1600", show_default=True, help="Records per party.")
@click.option("--epsilons", "epsilons_text", default="1,3,8", show_default=True, help="Target epsilons.")
@click.option("--modes", "modes_text", default="lora,bitfit", show_default=True, help="Adapters.")
@click.option(
    "--recipe",
    "recipes",
    type=click.Choice(RECIPES),
    multiple=True,
    help="default (repeatable; 'old': the fixed-rate recipe it replaced) [default: default].",
)
@click.option(
    "--old-records",
    "old_records_text",
    default="",
    help="With --recipe old: run the old recipe only at these record counts (default: all).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Data, initialisation and noise seed.")
@click.option("--heldout", "heldout_count", type=click.IntRange(50), default=1000, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Torch threads; 0: one per core (on a machine others share, 1 is often faster).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def recipe(
    records_text: str,
    epsilons_text: str,
    modes_text: str,
    recipes: tuple[str, ...],
    old_records_text: str,
    seed: int,
    heldout_count: int,
    threads: int,
    as_json: bool,
) -> None:
    """One round of local DP training per (records, epsilon, adapter): held-out quality next to
    the majority baseline, divergence and time."""
    sizes = _numbers(records_text, int, "--records")
    epsilons = _numbers(epsilons_text, float, "--epsilons")
    modes = [m.strip() for m in modes_text.split(",") if m.strip()]
    if not modes or not set(modes) <= {"lora", "bitfit"}:
        raise click.BadParameter(f"modes must be lora and/or bitfit, got {modes}", param_hint="--modes")
    old_sizes = set(_numbers(old_records_text, int, "--old-records")) if old_records_text else set(sizes)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_libraries()
    import torch

    from fedmask.participant.probe import FeatureCache
    from fedmask.participant.training import configure_threads

    if threads:
        torch.set_num_threads(threads)
    else:
        threads = configure_threads()
    heldout = heldout_records(heldout_count)
    cache = FeatureCache()
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for size in sizes:
        records = train_records(size, seed)
        for epsilon in epsilons:
            for mode in modes:
                for name in recipes or ("default",):
                    if name == "old" and size not in old_sizes:
                        continue
                    row = run_cell(records, heldout, epsilon=epsilon, mode=mode, recipe=name, seed=seed, cache=cache)
                    rows.append(row)
                    click.echo(  # progress on stderr, also with --json
                        f"{size} records, ε={epsilon:g}, {mode}, {name}: balanced accuracy "
                        f"{row['balanced_accuracy']:.3f}, beats majority {row['beats_majority']}, "
                        f"diverged {bool(row['diverged'])}, {row['seconds']:.0f} s",
                        err=True,
                    )
    result = {
        "party": PARTY,
        "seed": seed,
        "heldout": heldout_count,
        "majority_baseline": rows[0]["majority_baseline"] if rows else float("nan"),
        "threads": threads,
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(render_table(result))
