"""``fedmask audit``: a membership-inference audit of the DP training recipe (docs/privacy-audit.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from fedmask.cli.checks import check_writable_directory
from fedmask.cli.quiet import quiet_libraries
from fedmask.durable import write_text_atomic


@click.command()
@click.option(
    "--data",
    "data_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Labelled records (.jsonl or .csv), e.g. from `fedmask data generate`; their split is ignored.",
)
@click.option(
    "--records",
    type=click.IntRange(min=8),
    default=None,
    help="Use the first N records of the file (default: all). Half of them train the target.",
)
@click.option("--epsilon", type=click.FloatRange(min=0, min_open=True), default=8.0, show_default=True)
@click.option("--delta", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=1e-5, show_default=True)
@click.option(
    "--non-private",
    is_flag=True,
    help="Train without clipping or noise (the control that shows the audit has power).",
)
@click.option(
    "--memorise",
    is_flag=True,
    help="With --non-private: a recipe meant to overfit (AdamW, no probe steps): the control the audit must detect.",
)
@click.option(
    "--canaries",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Random-secret records, half inserted: 100 held out resolve a TPR at 1% FPR.",
)
@click.option(
    "--canary-repeats",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many copies of each inserted canary the training set holds.",
)
@click.option("--shadows", type=click.IntRange(min=0), default=4, show_default=True, help="Shadow models for LiRA.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True)
@click.option("--max-seq-len", type=click.IntRange(min=8), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Membership draws and canaries.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for audit.json (every figure and every candidate's losses).",
)
def audit(
    data_path: Path,
    records: int | None,
    epsilon: float,
    delta: float,
    non_private: bool,
    memorise: bool,
    canaries: int,
    canary_repeats: int,
    shadows: int,
    epochs: float,
    max_seq_len: int,
    seed: int,
    out_dir: Path,
) -> None:
    """Membership-inference audit: train a target adapter on a random half of the records (and
    half of the canaries) with the DP recipe, then attack it (loss threshold, LiRA with shadow
    models, canary exposure) and print AUC, TPR at low FPR and the empirical epsilon lower bound
    next to the accounted epsilon's bound."""
    if memorise and not non_private:
        raise click.UsageError("--memorise is a recipe for the non-private control: add --non-private")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_libraries("audit: %(message)s")
    from fedmask.audit.experiment import AuditSettings, format_table, run_audit
    from fedmask.participant.data import DataError, load_records

    try:
        pool = load_records(data_path)
    except (DataError, OSError) as exc:
        raise click.ClickException(f"--data {data_path}: {exc}") from None
    check_writable_directory(out_dir, f"the output directory {out_dir}")  # before any model trains
    if records is not None:
        pool = pool[:records]
    settings = AuditSettings(
        epsilon=epsilon,
        delta=delta,
        non_private=non_private,
        memorise=memorise,
        canaries=canaries,
        canary_repeats=canary_repeats,
        shadows=shadows,
        epochs=epochs,
        max_seq_len=max_seq_len,
        seed=seed,
    )
    result = run_audit(pool, settings, progress=lambda line: click.echo(line, err=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "audit.json", json.dumps(result, indent=1) + "\n")
    click.echo(format_table(result))
    click.echo(f"\n{out_dir / 'audit.json'}")
