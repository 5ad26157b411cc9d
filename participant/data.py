"""Loading a participant's local records from JSONL or CSV, with validation and PII scrubbing.

Record format (both file types, one record per line/row):

- ``text``  (required): the message, a non-empty string;
- ``label`` (required for ``classification``): an integer in ``[0, num_labels)``;
- ``split`` (optional): ``"train"`` or ``"heldout"``. When present on every record the file
  carries its own held-out set (``fedmask data generate`` writes it); when absent everywhere,
  :func:`split_records` draws a seeded held-out fraction. Mixing both is an error.

Other fields (``id``, ``party``...) are kept in :attr:`Record.meta` and otherwise ignored.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedmask.participant.pii import empty_counts, scrub

TASKS: tuple[str, ...] = ("classification", "causal_lm")
SPLITS: tuple[str, ...] = ("train", "heldout")


class DataError(ValueError):
    """The local data cannot be used; the message says which file, line and field."""


@dataclass(frozen=True)
class Record:
    text: str
    label: int | None = None
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class LocalData:
    """Training and held-out records, scrubbed, with where the held-out set came from."""

    train: list[Record]
    heldout: list[Record]
    heldout_source: str  # "file" (the records' split field) or "random <fraction> (seed <s>)"
    pii_counts: dict[str, int]
    pii_scrubbed: bool


def _parse_label(raw: Any, where: str, num_labels: int) -> int:
    if isinstance(raw, bool):
        raise DataError(f"{where}: label must be an integer, got a boolean ({raw!r})")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    elif isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        value = int(raw.strip())
    else:
        raise DataError(f"{where}: label must be an integer, got {raw!r}")
    if not 0 <= value < num_labels:
        raise DataError(f"{where}: label {value} is out of range [0, {num_labels})")
    return value


def _make_record(row: dict[str, Any], where: str, task: str, num_labels: int) -> Record:
    if "text" not in row:
        raise DataError(f"{where}: missing required field 'text' (fields: {sorted(row)})")
    text = row["text"]
    if not isinstance(text, str):
        raise DataError(f"{where}: 'text' must be a string, got {type(text).__name__}")
    if not text.strip():
        raise DataError(f"{where}: 'text' is empty")
    label = None
    if task == "classification":
        if "label" not in row or row["label"] in (None, ""):
            raise DataError(f"{where}: missing required field 'label' for classification")
        label = _parse_label(row["label"], where, num_labels)
    split = row.get("split")
    if split in ("", None):
        split = None
    elif split not in SPLITS:
        raise DataError(f"{where}: 'split' must be one of {SPLITS}, got {split!r}")
    meta = {k: v for k, v in row.items() if k not in ("text", "label", "split")}
    return Record(text=text, label=label, split=split, meta=meta)


def load_records(path: str | Path, *, task: str = "classification", num_labels: int = 2) -> list[Record]:
    """Read and validate every record of a ``.jsonl`` or ``.csv`` file (not scrubbed)."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; expected one of {TASKS}")
    if num_labels < 2:
        raise DataError(f"num_labels must be at least 2, got {num_labels}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():
        raise DataError(f"data path is not a file: {path}")
    suffix = path.suffix.lower()
    try:
        records = _read_records(path, suffix, task, num_labels)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}); save the records as UTF-8") from None
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _read_records(path: Path, suffix: str, task: str, num_labels: int) -> list[Record]:
    records: list[Record] = []
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{where}: each line must be a JSON object")
                records.append(_make_record(row, where, task, num_labels))
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            required = ["text"] + (["label"] if task == "classification" else [])
            missing = [c for c in required if c not in columns]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing}; found {columns}")
            for number, row in enumerate(reader, start=2):
                records.append(_make_record(dict(row), f"{path}:{number}", task, num_labels))
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl or .csv")
    return records


# The share of the records held out when they carry no 'split' field of their own.
DEFAULT_HELDOUT_FRACTION = 0.2


def split_records(
    records: Sequence[Record], *, heldout_fraction: float | None = None, seed: int = 0
) -> tuple[list[Record], list[Record], str]:
    """Split into (train, heldout, source), honouring the records' own ``split`` field.

    ``heldout_fraction`` (default ``DEFAULT_HELDOUT_FRACTION``) splits records that carry no
    ``split``; asked for explicitly on records that do, it is refused rather than ignored."""
    with_split = [r for r in records if r.split is not None]
    if with_split and len(with_split) != len(records):
        raise DataError(
            f"{len(with_split)} of {len(records)} records have a 'split' field: "
            "either all records carry one or none does"
        )
    if with_split and heldout_fraction is not None:
        raise DataError(
            f"a held-out fraction of {heldout_fraction:g} was asked for, but the records carry their own "
            "'split' field: drop one of the two"
        )
    if heldout_fraction is None:
        heldout_fraction = DEFAULT_HELDOUT_FRACTION
    if with_split:
        train = [r for r in records if r.split == "train"]
        heldout = [r for r in records if r.split == "heldout"]
        source = "file"
    else:
        if not 0.0 < heldout_fraction < 1.0:
            raise DataError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        order = list(range(len(records)))
        random.Random(seed).shuffle(order)
        n_heldout = max(1, round(len(records) * heldout_fraction))
        heldout = [records[i] for i in sorted(order[:n_heldout])]
        train = [records[i] for i in sorted(order[n_heldout:])]
        source = f"random {heldout_fraction:g} (seed {seed})"
    if not train:
        raise DataError("no training records (every record is held out)")
    if not heldout:
        raise DataError("no held-out records to evaluate on")
    return train, heldout, source


def scrub_records(records: Sequence[Record]) -> tuple[list[Record], dict[str, int]]:
    """Replace PII in every record's text; return the new records and counts per type."""
    totals = empty_counts()
    out: list[Record] = []
    for record in records:
        result = scrub(record.text)
        for kind, count in result.counts.items():
            totals[kind] += count
        out.append(replace(record, text=result.text))
    return out, totals


def load_local_data(
    path: str | Path,
    *,
    task: str = "classification",
    num_labels: int = 2,
    heldout_fraction: float | None = None,
    seed: int = 0,
    scrub_pii: bool = True,
) -> LocalData:
    """Load, validate, split and (by default) scrub a participant's data file."""
    records = load_records(path, task=task, num_labels=num_labels)
    train, heldout, source = split_records(records, heldout_fraction=heldout_fraction, seed=seed)
    counts = empty_counts()
    if scrub_pii:
        train, train_counts = scrub_records(train)
        heldout, heldout_counts = scrub_records(heldout)
        counts = {k: train_counts[k] + heldout_counts[k] for k in counts}
    return LocalData(
        train=train,
        heldout=heldout,
        heldout_source=source,
        pii_counts=counts,
        pii_scrubbed=scrub_pii,
    )
