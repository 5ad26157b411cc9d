"""Export a trained or federated classifier as a folder that standard libraries load on their own.

The route is sentence-transformers: the model is ``Transformer -> Pooling("mean") -> Dense``, with
the LoRA matrices merged into the encoder's weights (peft's ``merge_and_unload``; for DP-BiTFiT the
trained biases are the encoder's own bias tensors) and the classification head as a ``Dense``
layer with identity activation, so that ``SentenceTransformer(folder).encode(texts)`` returns the
classifier's logits. That is exactly what fedmask computes: encoders classify from the masked mean
of their token states (:func:`fedmask.adapter.model.use_mean_pooling`), which a plain
``AutoModelForSequenceClassification`` cannot express (it would apply BERT's [CLS] pooler, on
which the head was never trained) and which sentence-transformers' mean ``Pooling`` is.

The folder::

    modules.json config.json model.safetensors tokenizer*.json 1_Pooling/ 2_Dense/   the model
    README.md            model card: base model by its public name, method, privacy, data, scores
    labels.json          {"0": "routine", "1": "urgent"}: label index -> name
    heldout.jsonl        the (already PII-scrubbed) held-out records the scores were computed on
    predict_example.py   prints label and probability per record; needs no fedmask
    fedmask_export.json  the same facts for programs (format, base model, scores, ...)

Before the folder is moved into place, the saved model is loaded back with sentence-transformers
and run on the held-out records: its logits must match fedmask's own model (up to float32
rounding), and the scores in the card are computed from what the saved model outputs.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmask.adapter.config import TrainingConfig, default_model_path
from fedmask.adapter.model import build_adapter_model, quiet_transformers
from fedmask.adapter.scores import (
    CLASSIFICATION_METRICS,
    METRIC_TITLES,
    classification_scores,
    format_with_interval,
    majority_scores,
)
from fedmask.adapter.vector import load_model_vector
from fedmask.durable import fsync_directory, sync_tree, write_text_atomic

EXPORT_FORMAT = "fedmask-export/1"
EXPORT_MARKER = "fedmask_export.json"
DEFAULT_PUBLIC_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Relative to the largest logit (at least 1). Merging LoRA into float32 weights and running other
# batch shapes round differently: about 1e-6 of the logits' scale on MiniLM (float32 keeps 6e-8
# per operation; six layers of sums over hundreds of terms). A wrong pooling, a missing head bias
# or an unmerged adapter moves logits by far more than this bound.
LOGIT_TOLERANCE = 1e-4


class ExportError(ValueError):
    """The model cannot be exported, or the exported folder does not reproduce it."""


@dataclass(frozen=True)
class TrainingFacts:
    """How the model was trained, for its model card."""

    parties: int  # 1: one participant alone
    rounds: int
    epsilon: float  # record-level epsilon spent, the largest over the parties
    delta: float
    accountant: str
    data: str  # what the training records were
    participant_level_epsilon: float | None = None  # against the coordinator, with aggregate noise
    noise_multiplier: float | None = None
    steps: int | None = None  # DP-SGD steps per party, all rounds
    sample_rate: float | None = None
    clipping: str | None = None  # the per-sample gradient mode
    secure_aggregation: bool = False
    pii_scrubbed: bool = True


def fedmask_version() -> str:
    try:
        return importlib.metadata.version("fedmask")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return "unknown"


def public_model_name(config: TrainingConfig, given: str | None = None) -> str:
    """The base model's public name for cards and configs: never a path on this machine.

    ``given`` wins; the bundled MiniLM is ``sentence-transformers/all-MiniLM-L6-v2``; a model path
    that does not exist on disk is a hub id already; a local folder is named by its last component.
    """
    if given:
        return given
    path = config.model_path
    if path is None or Path(path).resolve() == Path(default_model_path()).resolve():
        return DEFAULT_PUBLIC_MODEL
    if not Path(path).exists():
        return path
    return Path(path).resolve().name


def _reference_logits(model: nn.Module, tokenizer: Any, texts: Sequence[str], max_seq_len: int) -> np.ndarray:
    """What fedmask's own model computes for ``texts`` (as in training and evaluation)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            batch = tokenizer(
                list(texts[start : start + 64]),
                truncation=True,
                max_length=max_seq_len,
                padding=True,
                return_tensors="pt",
            )
            out.append(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.numpy())
    return np.concatenate(out).astype(np.float64)


def _sentence_transformer(config: TrainingConfig, merged: nn.Module) -> Any:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    encoder = getattr(merged, merged.base_model_prefix)
    head = getattr(merged, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise ExportError(f"the classification head is {type(head).__name__}, not one linear layer")
    transformer = Transformer(config.resolved_model_path, max_seq_length=config.max_seq_len)
    # The encoder's weights, adapter merged in; the unused [CLS] pooler keeps its pretrained values.
    loaded = transformer.auto_model.load_state_dict(encoder.state_dict(), strict=False)
    if loaded.unexpected_keys or any(not key.startswith("pooler.") for key in loaded.missing_keys):
        raise ExportError(
            f"the encoder does not match {type(transformer.auto_model).__name__} "
            f"(missing {loaded.missing_keys[:5]}, unexpected {loaded.unexpected_keys[:5]})"
        )
    hidden = head.in_features
    pooling = Pooling(hidden, pooling_mode="mean")
    dense = Dense(
        hidden,
        head.out_features,
        bias=head.bias is not None,
        activation_function=nn.Identity(),
        init_weight=head.weight.detach().clone(),
        init_bias=head.bias.detach().clone() if head.bias is not None else None,
    )
    return SentenceTransformer(modules=[transformer, pooling, dense], device="cpu")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return probabilities


def _method(config: TrainingConfig, model: nn.Module) -> str:
    if config.mode == "lora":
        peft_config = model.peft_config["default"]
        targets = ", ".join(sorted(peft_config.target_modules))
        adapter = f"LoRA (rank {config.lora_rank}, alpha {config.lora_alpha:g}) on {targets}, merged into the weights"
    else:
        adapter = "DP-BiTFiT (only the bias terms of the encoder train)"
    return f"{adapter}, plus a new linear classification head on the mean-pooled token states"


def export_classifier(
    config: TrainingConfig,
    vector: np.ndarray,
    out_dir: str | Path,
    *,
    heldout: Sequence[Mapping[str, Any]],
    label_names: Sequence[str],
    facts: TrainingFacts,
    base_model_name: str | None = None,
) -> dict[str, Any]:
    """Write the adapter values ``vector`` (layout of ``config``'s adapter) as an export folder.

    ``heldout``: the PII-scrubbed held-out records, each with ``text`` and ``label`` (other fields
    are kept in ``heldout.jsonl``). An existing export at ``out_dir`` is replaced; any other
    existing, non-empty folder is refused. Returns the contents of ``fedmask_export.json``.
    """
    out_dir = Path(out_dir)
    if config.task != "classification":
        raise ExportError("only classifiers are exported; a causal LM stays a PEFT adapter (fedmask predict runs it)")
    if len(label_names) != config.num_labels:
        raise ExportError(f"{len(label_names)} label names for {config.num_labels} labels")
    if not heldout:
        raise ExportError("no held-out records: the export is verified and scored on them")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / EXPORT_MARKER).is_file():
        raise ExportError(f"{out_dir} exists and is not a fedmask export: choose another folder")

    with quiet_transformers():  # no "newly initialized" notices or progress bars per load and save
        return _export_classifier(config, vector, out_dir, heldout, label_names, facts, base_model_name)


def _export_classifier(
    config: TrainingConfig,
    vector: np.ndarray,
    out_dir: Path,
    heldout: Sequence[Mapping[str, Any]],
    label_names: Sequence[str],
    facts: TrainingFacts,
    base_model_name: str | None,
) -> dict[str, Any]:
    built = build_adapter_model(config)
    if built.pooling != "mean":
        raise ExportError(
            "only encoders that classify from mean pooling are exported (this model uses its own pooling); "
            "its PEFT adapter works with fedmask predict"
        )
    load_model_vector(built.model, vector, built.spec)
    model = built.model.eval()
    method = _method(config, model)
    texts = [str(record["text"]) for record in heldout]
    labels = np.asarray([int(record["label"]) for record in heldout], dtype=np.int64)
    reference = _reference_logits(model, built.tokenizer, texts, config.max_seq_len)
    merged = model.merge_and_unload()
    st_model = _sentence_transformer(config, merged)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        st_model.save(str(staging), create_model_card=False)
        from sentence_transformers import SentenceTransformer

        reloaded = SentenceTransformer(str(staging), device="cpu")
        logits = np.asarray(
            reloaded.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False), dtype=np.float64
        )
        difference = float(np.abs(logits - reference).max())
        bound = LOGIT_TOLERANCE * max(1.0, float(np.abs(reference).max()))
        if difference > bound:
            raise ExportError(
                f"the saved model's logits differ from fedmask's by up to {difference:.3g} (> {bound:.3g})"
            )
        scores = classification_scores(labels, _softmax(logits))
        baseline = majority_scores(labels, config.num_labels)
        base_model = public_model_name(config, base_model_name)
        manifest = {
            "format": EXPORT_FORMAT,
            "task": "classification",
            "base_model": base_model,
            "labels": list(label_names),
            "pooling": "mean",
            "max_seq_length": config.max_seq_len,
            "method": method,
            "mode": config.mode,
            "training": asdict(facts),
            "scores": scores,
            "majority": baseline,
            "heldout_records": len(texts),
            "max_logit_difference": difference,
            "fedmask_version": fedmask_version(),
        }
        _write_json(staging / EXPORT_MARKER, manifest)
        _write_json(staging / "labels.json", {str(i): name for i, name in enumerate(label_names)})
        lines = [json.dumps(dict(record), ensure_ascii=False) + "\n" for record in heldout]
        write_text_atomic(staging / "heldout.jsonl", "".join(lines))
        shutil.copyfile(Path(__file__).with_name("predict_example.py"), staging / "predict_example.py")
        write_text_atomic(staging / "README.md", model_card(manifest))
        sync_tree(staging)  # every file on disk before the folder appears under its name
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
        fsync_directory(out_dir.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _privacy_lines(facts: Mapping[str, Any]) -> list[str]:
    lines = [
        f"- **Record-level privacy:** (ε, δ) = ({facts['epsilon']:.3g}, {facts['delta']:g}), "
        + ("the largest any party spent, " if facts["parties"] > 1 else "")
        + f"{facts['accountant']} accountant (Opacus), over every training step",
    ]
    if facts.get("participant_level_epsilon") is not None:
        lines.append(
            f"- **Participant-level ε against the coordinator:** {facts['participant_level_epsilon']:.3g} "
            "(distributed DP: integer noise added before secure aggregation)"
        )
    else:
        lines.append("- **Participant-level ε:** none (no aggregate noise; the guarantee is per record)")
    details = [
        f"noise multiplier {facts['noise_multiplier']:.4g}" if facts.get("noise_multiplier") is not None else None,
        f"sample rate {facts['sample_rate']:.4g} (Poisson)" if facts.get("sample_rate") is not None else None,
        f"{facts['steps']} steps" if facts.get("steps") is not None else None,
        f"per-sample gradients: {facts['clipping']}" if facts.get("clipping") else None,
    ]
    shown = [d for d in details if d]
    if shown:
        lines.append("- **DP-SGD:** " + ", ".join(shown))
    return lines


def model_card(manifest: Mapping[str, Any]) -> str:
    """The export's README.md: what the model is, how it was trained, how well it does, how to run it."""
    facts = manifest["training"]
    scores, baseline = manifest["scores"], manifest["majority"]
    names = manifest["labels"]
    parties = facts["parties"]
    how = (
        f"federated by {parties} parties over {facts['rounds']} rounds under secure aggregation"
        if parties > 1
        else f"trained by one party alone ({facts['rounds']} round{'s' if facts['rounds'] != 1 else ''})"
    )
    rows = [
        "| model | " + " | ".join(METRIC_TITLES[m] for m in CLASSIFICATION_METRICS) + " |",
        "|---|" + "---|" * len(CLASSIFICATION_METRICS),
        "| this model | " + " | ".join(format_with_interval(scores, m) for m in CLASSIFICATION_METRICS) + " |",
        f"| always {names[baseline['majority_label']]!r} (majority baseline) | "
        + " | ".join(format_with_interval(baseline, m) for m in CLASSIFICATION_METRICS)
        + " |",
    ]
    per_class = [
        "| label | records | precision | recall |",
        "|---|---:|---|---|",
        *(
            f"| {names[c['label']]} | {c['support']} | {c['precision']:.3f} "
            f"{_bracket(c['precision_ci95'])} | {c['recall']:.3f} {_bracket(c['recall_ci95'])} |"
            for c in scores["per_class"]
        ),
    ]
    boot = scores["bootstrap"]
    front = [
        "---",
        f"base_model: {manifest['base_model']}",
        "library_name: sentence-transformers",
        "pipeline_tag: text-classification",
        "tags:",
        *(f"- {tag}" for tag in ("fedmask", "text-classification", "differential-privacy", "dp-sgd", manifest["mode"])),
        "---",
        "",
    ]
    body = [
        f"# Text classifier on {manifest['base_model']} ({', '.join(names)})",
        "",
        f"A {len(names)}-label text classifier, {how}, with differentially private training (DP-SGD). "
        "`SentenceTransformer(folder).encode(texts)` returns the classifier's logits; the softmax of a "
        "row gives the label probabilities, in the order of `labels.json`.",
        "",
        "## Training",
        "",
        f"- **Base model:** [{manifest['base_model']}](https://huggingface.co/{manifest['base_model']})",
        f"- **Method:** {manifest['method']}; DP-SGD (Opacus) with per-record gradient clipping and Gaussian noise",
        *_privacy_lines(facts),
        f"- **Parties:** {parties}" + (" (secure aggregation: the coordinator saw only sums)" if parties > 1 else ""),
        f"- **Data:** {facts['data']}",
        "- **PII:** "
        + (
            "every training and held-out text was scrubbed first (fedmask.participant.pii): e-mails, phones, "
            "national IDs, cards, IBANs, record numbers, dates of birth, names and addresses became "
            "placeholders such as `[EMAIL]`. Scrub new text the same way before predicting "
            "(`fedmask predict` does), or the model sees inputs unlike those it learned from."
            if facts["pii_scrubbed"]
            else "not scrubbed (training ran with --no-scrub)"
        ),
        f"- **Input:** text cut at {manifest['max_seq_length']} tokens (as in training)",
        "",
        "## Evaluation",
        "",
        f"On the {manifest['heldout_records']} held-out records in `heldout.jsonl` (never trained on), computed "
        f"from this folder's own outputs. Intervals: 95% {boot['method']} ({boot['resamples']} resamples, "
        f"seed {boot['seed']}). Balanced accuracy is the mean recall over labels: every constant prediction "
        f"gets {1 / len(names):.3f}.",
        "",
        *rows,
        "",
        *per_class,
        "",
        "## Use",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        "model = SentenceTransformer('path/to/this/folder')",
        "logits = model.encode(['[NAME] reports chest pain since this morning'])  # shape (records, labels)",
        "```",
        "",
        "`python predict_example.py [records.jsonl]` prints a label and its probability per record (needs only "
        "sentence-transformers and numpy); on `heldout.jsonl` it reproduces the accuracy above.",
        "",
        "## Versions",
        "",
        f"fedmask {manifest['fedmask_version']}; " + ", ".join(f"{k} {v}" for k, v in _library_versions().items()),
        "",
    ]
    return "\n".join(front + body)


def _bracket(interval: Sequence[float] | None) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in ("sentence-transformers", "transformers", "torch", "peft", "opacus"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - an optional library
            continue
    return versions
