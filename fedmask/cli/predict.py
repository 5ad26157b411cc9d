"""``fedmask predict``: run a trained or federated model on new records, scrubbed as in training.

The model is one of

- an export folder (``fedmask_export.json``: ``fedmask participant train``'s ``OUT/model/``, the
  demo's ``global_model/``), run with sentence-transformers;
- a PEFT adapter folder (``adapter_config.json``: ``OUT/adapter/``, the demo's
  ``global_adapter/``) with the training settings it was trained with (``--config``: a
  ``training_config.json`` or a ``report.json``; by default the ``training_config.json`` in the
  folder), run on the base model rebuilt as in training;
- the output folder of ``fedmask participant train`` (its ``model/``, else its ``adapter/``).

Every record's text goes through :func:`fedmask.participant.data.scrub_records` first -- the
function training used (``fedmask.participant.pii``) -- so the model sees what it was trained on
and no identifier reaches it. For causal LMs the generated continuation is scrubbed too before it
is printed or written. Output: JSON lines (``text`` as scrubbed, ``label``, ``probability`` of
that label; or ``text`` and ``generated``). Heavy imports happen inside the command.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click

from fedmask.cli.checks import check_writable_directory
from fedmask.durable import write_text_atomic

EXPORT_MARKER = "fedmask_export.json"  # fedmask.adapter.export.EXPORT_MARKER, without importing torch here
ADAPTER_MARKER = "adapter_config.json"
TRAINING_CONFIG_FILE = "training_config.json"


@dataclass(frozen=True)
class _ModelSource:
    kind: str  # "export" or "adapter"
    path: Path
    config_path: Path | None = None  # adapters: the training settings


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _resolve_model(path: Path, config_path: Path | None, task: str | None) -> _ModelSource:
    """Which kind of model folder ``path`` is (see the module docstring)."""
    if not path.exists():
        raise click.ClickException(f"model folder not found: {path}")
    if not path.is_dir():
        raise click.ClickException(f"{path} is a file, not a model folder")
    candidates: list[_ModelSource] = []
    if (path / EXPORT_MARKER).is_file():
        candidates.append(_ModelSource("export", path))
    if (path / "model" / EXPORT_MARKER).is_file() and config_path is None:
        candidates.append(_ModelSource("export", path / "model"))
    for adapter in (path, path / "adapter"):
        if (adapter / ADAPTER_MARKER).is_file():
            settings = config_path or next(
                (p for p in (adapter / TRAINING_CONFIG_FILE, adapter.parent / "report.json") if p.is_file()), None
            )
            candidates.append(_ModelSource("adapter", adapter, settings))
    if not candidates:
        raise click.ClickException(
            f"{path} is not a fedmask model: expected an exported model ({EXPORT_MARKER}), a PEFT adapter folder "
            f"({ADAPTER_MARKER}), or the output folder of `fedmask participant train`"
        )
    if task == "causal_lm":  # causal LMs stay adapters
        candidates = [c for c in candidates if c.kind == "adapter"]
        if not candidates:
            raise click.ClickException(f"{path} is an exported classifier: it cannot generate text (--task causal_lm)")
    source = candidates[0]
    if source.kind == "adapter" and source.config_path is None:
        raise click.ClickException(
            f"no training settings for the adapter in {source.path}: pass --config (its training_config.json "
            "or the report.json of the run that trained it)"
        )
    return source


def _load_training_config(path: Path) -> Any:
    from fedmask.adapter.config import ConfigError, TrainingConfig

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise click.ClickException(f"training config not found: {path}") from None
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 text
        raise click.ClickException(f"cannot read the training config {path}: {_first_line(exc)}") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]  # a `participant train` report.json
    if not isinstance(data, dict):
        raise click.ClickException(f"{path}: the training config must be a JSON object")
    try:
        return TrainingConfig.from_dict(data)
    except (ConfigError, TypeError) as exc:
        raise click.ClickException(f"{path}: {exc}") from None


def _label_names(folder: Path, count: int) -> list[str]:
    """Names from a labels.json next to the model (an adapter's sibling export has one), else numbers."""
    for candidate in (folder / "labels.json", folder.parent / "model" / "labels.json"):
        if candidate.is_file():
            names = json.loads(candidate.read_text(encoding="utf-8"))
            if isinstance(names, dict) and len(names) == count:
                return [str(names[str(index)]) for index in range(count)]
    return [str(index) for index in range(count)]


def _softmax(logits: Any) -> Any:
    import numpy as np

    values = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _export_classifier(folder: Path, batch_size: int) -> tuple[list[str], Callable[[Sequence[str]], Any]]:
    from sentence_transformers import SentenceTransformer

    names = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    label_names = [str(names[str(index)]) for index in range(len(names))]
    model = SentenceTransformer(str(folder), device="cpu")

    def probabilities(texts: Sequence[str]) -> Any:
        return _softmax(
            model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        )

    return label_names, probabilities


def _adapter_classifier(folder: Path, config: Any, batch_size: int) -> tuple[list[str], Callable[[Sequence[str]], Any]]:
    import torch

    from fedmask.adapter.model import load_tokenizer, load_trained_model

    model = load_trained_model(config, folder)
    tokenizer = load_tokenizer(config)

    def probabilities(texts: Sequence[str]) -> Any:
        import numpy as np

        rows = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(
                    list(texts[start : start + batch_size]),
                    truncation=True,
                    max_length=config.max_seq_len,
                    padding=True,
                    return_tensors="pt",
                )
                rows.append(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.numpy())
        return _softmax(np.concatenate(rows))

    return _label_names(folder, config.num_labels), probabilities


def _generate(model: Any, tokenizer: Any, prompt: str, max_seq_len: int, max_new_tokens: int) -> str:
    """Greedy continuation of one prompt (the text after the prompt, special tokens dropped)."""
    import torch

    encoded = tokenizer(prompt, truncation=True, max_length=max_seq_len, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        )
    return str(tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True))


def _labels_of(data_path: Path, num_labels: int, warn: Callable[[str], None]) -> list[int] | None:
    """The records' labels when every record has a valid one (then scores are printed), else None."""
    from fedmask.participant.data import DataError, load_records

    try:
        return [
            int(r.label)
            for r in load_records(data_path, task="classification", num_labels=num_labels)
            if r.label is not None
        ]
    except DataError as exc:
        if "'label'" not in str(exc) and "column" not in str(exc):
            warn(f"labels not used for scores: {exc}")
        return None


@click.command()
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(path_type=Path),
    help="An export folder, a PEFT adapter folder, or the output folder of `fedmask participant train`.",
)
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Records, .jsonl or .csv, with a 'text' field (a 'label' is optional: with one, scores are printed).",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the predictions (JSON lines) here instead of standard output.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Training settings of an adapter: training_config.json or a report.json [default: next to the adapter].",
)
@click.option(
    "--task",
    type=click.Choice(["classification", "causal_lm"]),
    default=None,
    help="causal_lm: generate a continuation of each record's text [default: the model's task].",
)
@click.option("--max-new-tokens", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True)
def predict(
    model_path: Path,
    data_path: Path,
    out_path: Path | None,
    config_path: Path | None,
    task: str | None,
    max_new_tokens: int,
    batch_size: int,
) -> None:
    """Run a trained or federated model on new records (scrubbed of PII as in training)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fedmask.participant.data import DataError, load_records, scrub_records
    from fedmask.participant.pii import empty_counts

    def note(message: str) -> None:
        click.echo(message, err=True)

    if out_path is not None:  # before the model is loaded and run
        check_writable_directory(out_path.parent, f"the predictions {out_path}")
    source = _resolve_model(model_path, config_path, task)
    config = _load_training_config(source.config_path) if source.config_path is not None else None
    model_task = config.task if config is not None else "classification"
    if task is not None and task != model_task:
        raise click.ClickException(f"{source.path} holds a {model_task} model, not {task}")
    try:
        records = load_records(data_path, task="causal_lm")  # text only; labels are read separately
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    scrubbed, counts = scrub_records(records)
    texts = [record.text for record in scrubbed]
    generated_counts = empty_counts()

    from fedmask.adapter.config import ConfigError
    from fedmask.adapter.model import quiet_transformers

    try:
        with quiet_transformers():  # no load notices or progress bars between the predictions
            if model_task == "causal_lm":
                assert config is not None  # a causal LM is an adapter with its training settings
                rows = _continuations(source.path, config, texts, max_new_tokens, generated_counts)
                score_line = None
            else:
                rows, score_line = _classifications(source, config, texts, batch_size, data_path, note)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise click.ClickException(f"cannot run the model in {source.path}: {_first_line(exc)}") from None

    rows = [
        {"id": record.meta["id"], **row} if "id" in record.meta else row
        for row, record in zip(rows, records, strict=True)
    ]
    _write(rows, out_path)
    summary = f"{len(rows)} records ({source.kind} {source.path}); PII replaced in the inputs: {_counted(counts)}"
    if model_task == "causal_lm":
        summary += f", in the generated text: {_counted(generated_counts)}"
    note(summary + (f"; predictions in {out_path}" if out_path else ""))
    if score_line:
        note(score_line)


def _continuations(
    folder: Path, config: Any, prompts: Sequence[str], max_new_tokens: int, generated_counts: dict[str, int]
) -> list[dict[str, Any]]:
    from fedmask.adapter.model import load_tokenizer, load_trained_model
    from fedmask.participant.pii import scrub

    model = load_trained_model(config, folder)
    tokenizer = load_tokenizer(config)
    rows = []
    for prompt in prompts:
        # The model may reproduce identifiers it saw: what it writes is scrubbed like its input.
        generated = scrub(_generate(model, tokenizer, prompt, config.max_seq_len, max_new_tokens))
        for kind, count in generated.counts.items():
            generated_counts[kind] += count
        rows.append({"text": prompt, "generated": generated.text})
    return rows


def _classifications(
    source: _ModelSource,
    config: Any,
    texts: Sequence[str],
    batch_size: int,
    data_path: Path,
    note: Callable[[str], None],
) -> tuple[list[dict[str, Any]], str | None]:
    """Label and probability per text, and the scores line when every record carries a label."""
    if source.kind == "export":
        label_names, probabilities_of = _export_classifier(source.path, batch_size)
    else:
        label_names, probabilities_of = _adapter_classifier(source.path, config, batch_size)
    probabilities = probabilities_of(texts)
    predicted = probabilities.argmax(axis=1)
    rows = [
        {"text": text, "label": label_names[index], "probability": round(float(row[index]), 6)}
        for text, index, row in zip(texts, predicted, probabilities, strict=True)
    ]
    labels = _labels_of(data_path, len(label_names), note)
    if labels is None:
        return rows, None
    from fedmask.adapter.scores import classification_scores, summary_line

    scores = classification_scores(labels, probabilities)
    return rows, summary_line(scores, label_names, records="labelled records:")


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in counts.items() if n) or "none"


def _write(rows: list[dict[str, Any]], out_path: Path | None) -> None:
    if out_path is None:
        _dump(rows, sys.stdout)
        return
    text = io.StringIO()
    _dump(rows, text)
    write_text_atomic(out_path, text.getvalue())


def _dump(rows: list[dict[str, Any]], handle: TextIO) -> None:
    for row in rows:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
