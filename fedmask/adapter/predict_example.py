"""Predict with an exported fedmask classifier, using sentence-transformers and numpy only.

Copied into every export folder as ``predict_example.py``; it needs no fedmask::

    python predict_example.py                      # the held-out records shipped with the model
    python predict_example.py records.jsonl        # one JSON object per line, with a "text" field
    python predict_example.py records.jsonl --model path/to/export

Prints one JSON line per record (``label``, ``probability`` of that label, ``text``). When every
record also has a ``label`` (its index, or its name from ``labels.json``), the accuracy goes to
stderr. The model was trained on PII-scrubbed text (identifiers replaced by placeholders such as
``[EMAIL]``): new text should be scrubbed the same way first (``fedmask predict`` does it), or
the model sees inputs unlike those it learned from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def read_records(path: Path) -> list[dict[str, object]]:
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise SystemExit(f"{path}:{number}: each line must be a JSON object with a 'text' string")
            records.append(record)
    return records


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return probabilities


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="?", type=Path, default=here / "heldout.jsonl")
    parser.add_argument("--model", type=Path, default=here, help="The export folder (default: this file's).")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    from sentence_transformers import SentenceTransformer

    names = json.loads((args.model / "labels.json").read_text(encoding="utf-8"))
    label_names = [names[str(index)] for index in range(len(names))]
    records = read_records(args.records)
    model = SentenceTransformer(str(args.model), device="cpu")
    # The model's "embedding" is the classifier's logits (its last module is the head).
    logits = model.encode(
        [r["text"] for r in records], batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False
    )
    probabilities = softmax(np.asarray(logits, dtype=np.float64))
    predicted = probabilities.argmax(axis=1)
    for record, index, row in zip(records, predicted, probabilities, strict=True):
        line = {"label": label_names[index], "probability": round(float(row[index]), 6), "text": record["text"]}
        print(json.dumps(line, ensure_ascii=False))

    if records and all("label" in r for r in records):
        truth = [r["label"] if isinstance(r["label"], int) else label_names.index(r["label"]) for r in records]
        correct = int((np.asarray(truth) == predicted).sum())
        print(f"accuracy {correct / len(records):.4f} ({correct} of {len(records)} labelled records)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
