"""``fedmask data ...``: synthetic local records for the demo parties."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from fedmask.cli.checks import check_writable_directory
from fedmask.demo.data import PARTIES, generate_notes, generate_records, write_records

# About 5,000 records a second, all held in memory before the file is written: a million takes
# minutes and 200 MB; more is a typo rather than a demo.
MAX_RECORDS = 1_000_000


@click.group()
def data() -> None:
    """Demo data: records like those a hospital or a bank holds."""


@data.command()
@click.option(
    "--party",
    type=click.Choice(PARTIES),
    required=True,
    help="Whose records: clinical notes (hospitals) or customer messages (bank).",
)
@click.option(
    "--records",
    "count",
    type=click.IntRange(2, MAX_RECORDS),
    required=True,
    help="How many records (train and held-out together).",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output file: .jsonl, or .csv (a header row and one row per record).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="The same party, count and seed always give the same file."
)
@click.option(
    "--heldout-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True
)
@click.option(
    "--task",
    type=click.Choice(["classification", "causal_lm"]),
    default="classification",
    show_default=True,
    help="classification: labelled messages; causal_lm: notes that end in what was done (Plan: ...).",
)
def generate(party: str, count: int, out_path: Path, seed: int, heldout_fraction: float, task: str) -> None:
    """Write N records for PARTY: labelled (label 1: needs urgent human follow-up), or notes to continue."""
    if out_path.suffix.lower() not in (".jsonl", ".ndjson", ".csv"):
        raise click.BadParameter(f"{out_path}: give a .jsonl or .csv file", param_hint="--out")
    check_writable_directory(out_path.parent, f"the records {out_path}")
    if task == "causal_lm":
        notes = generate_notes(party, count, seed=seed, heldout_fraction=heldout_fraction)
        write_records(notes, out_path)
        held = sum(1 for note in notes if note["split"] == "heldout")
        click.echo(f"{out_path}: {len(notes)} notes for {party} ({len(notes) - held} train, {held} held out)")
        return
    records = generate_records(party, count, seed=seed, heldout_fraction=heldout_fraction)
    write_records(records, out_path)
    splits = Counter(str(r["split"]) for r in records)
    urgent = sum(1 for r in records if r["label"] == 1)
    click.echo(
        f"{out_path}: {len(records)} records for {party} ({splits['train']} train, "
        f"{splits['heldout']} held out; {urgent / len(records):.1%} urgent)"
    )
