"""Differentially private adapter training on a participant's own records.

The entry point is :func:`train_adapter` (one local round: load the global adapter, DP-SGD on
the participant's records charged to its privacy ledger, held-out evaluation, report). Under it,
one :class:`LocalTrainer` holds the base model with an adapter (LoRA via peft, or DP-BiTFiT: bias
terms only), a tokenizer, the Opacus wrapping and a :class:`~participant.ledger.PrivacyLedger`.
A federated participant keeps the trainer between rounds::

    ledger = PrivacyLedger.open("ledger.json", accountant="prv", epsilon_budget=8, delta=1e-5)
    config = TrainingConfig(target_epsilon=8, target_delta=1e-5, planned_rounds=5)
    result = train_adapter(config, local_data, global_adapter_state=global_vector, ledger=ledger)
    update = result.vector - global_vector             # what secure aggregation carries
    # next round: train_adapter(..., trainer=result.trainer, ledger=ledger)

DP-SGD is Opacus's: ``PrivacyEngine.make_private`` with Poisson sampling, per-sample gradients
from the configured grad-sample mode (``auto`` = ``ew``, falling back to ``hooks`` when
expanded weights cannot run the model; or ``hooks``, ``ew``, ``ghost``), flat clipping at
``max_grad_norm`` and Gaussian noise whose multiplier is searched (``noise_multiplier_for``, to
1% of epsilon, as Opacus' ``get_noise_multiplier`` but in a few accountant calls) for the whole
planned schedule (``planned_rounds`` x steps per round, and the calibration release) at the
target (epsilon, delta).

Choices that matter for the guarantee or for correctness:

- the loss is per sequence (for causal LMs the mean over that sequence's own tokens), so one
  record's gradient never depends on another record in the batch;
- an empty Poisson batch still takes a (noise-only) optimizer step, counted by the accountant;
- ghost clipping goes through the criterion that ``make_private`` returns -- calling
  ``backward()`` on a plain loss would run without clipping;
- batch sampling and noise come from a CSPRNG keyed from the OS every round
  (:mod:`fedmask.participant.dp_random`), never from torch's generators, whose state follows
  from their outputs. (Opacus's ``secure_mode`` needs torchcsprng, not installable here.)
- ``ew`` rather than ghost clipping by default: for adapters the per-sample gradients are small,
  so ghost clipping's memory saving buys nothing and its second backward pass costs 1.4-1.8x
  (docs/dp-training.md has the figures);
- model dropout is switched off: DP noise already regularises, and per-sample gradients are then
  a deterministic function of the record (the tests compare them with a per-record loop);
- for DP-BiTFiT the trainable tensors are the model's own bias terms (Linear and LayerNorm) plus
  the classification head; they are exported as a PEFT BEFT adapter (bias deltas) with the norm
  layers and head saved whole, so plain ``PeftModel.from_pretrained`` reproduces the model;
- encoders classify from the masked mean of their token states (:func:`use_mean_pooling`), the
  pooling all-MiniLM-L6-v2 was trained for, not from BERT's next-sentence pooler: under DP noise
  the head learns far more from those features. :func:`load_trained_model` rebuilds the model
  (``PeftModel.from_pretrained`` on :func:`load_base_model`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmask.adapter.calibration import CalibrationError
from fedmask.adapter.config import TrainingConfig
from fedmask.adapter.export import TrainingFacts, export_classifier, public_model_name
from fedmask.adapter.scores import beats_majority
from fedmask.adapter.vector import (
    VectorLayoutError,
    VectorSpec,
    flatten,
    unflatten,
)
from fedmask.durable import write_text_atomic
from fedmask.participant.data import LocalData, Record, scrub_records
from fedmask.participant.ledger import PrivacyLedger
from fedmask.participant.pii import empty_counts
from fedmask.participant.probe import FeatureCache
from fedmask.participant.trainer import LocalTrainer

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- library API

REPORT_FORMAT = "fedmask-training-report/1"
TRAINING_CONFIG_FILE = "training_config.json"  # next to a saved adapter: how to rebuild its model


@dataclass(frozen=True)
class TrainingResult:
    """One local training run: the adapter (three views of it) and its report.

    ``adapter_state`` and ``vector`` hold the same values: tensors by name, and the flat
    vector of layout ``spec`` that secure aggregation carries. ``trainer`` is kept so that the
    next round can reuse the loaded model and Opacus wrapping (pass it back as ``trainer=``).
    """

    adapter_state: dict[str, torch.Tensor]
    vector: np.ndarray
    spec: VectorSpec
    report: dict[str, Any]
    trainer: LocalTrainer
    heldout: tuple[Record, ...] = ()  # the (scrubbed) held-out records the report's scores come from


def _as_vector(state: Mapping[str, torch.Tensor] | np.ndarray, spec: VectorSpec) -> np.ndarray:
    if isinstance(state, np.ndarray):
        return state
    names = set(state)
    if names != set(spec.names):
        missing = sorted(set(spec.names) - names)[:5]
        extra = sorted(names - set(spec.names))[:5]
        raise VectorLayoutError(
            f"global adapter does not match this model's adapter (missing {missing}, extra {extra})"
        )
    return flatten(state, spec)


def _versions() -> dict[str, str]:
    import opacus
    import peft
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "opacus": opacus.__version__,
    }


def train_adapter(
    config: TrainingConfig,
    records: LocalData | Sequence[Record],
    *,
    heldout: Sequence[Record] | None = None,
    global_adapter_state: Mapping[str, torch.Tensor] | np.ndarray | None = None,
    ledger: PrivacyLedger | None = None,
    trainer: LocalTrainer | None = None,
    scrub_pii: bool = True,
    on_step: Callable[[int, int, float], None] | None = None,
    note: str = "",
    feature_cache: FeatureCache | None = None,
    score_heldout: bool = True,
    calibrate: bool = False,
) -> TrainingResult:
    """Train the adapter with DP-SGD on a participant's records: one local round.

    ``records`` is a :class:`~participant.data.LocalData` (already split and scrubbed; its
    held-out part is evaluated) or a list of training records, which are scrubbed here unless
    ``scrub_pii`` is false; ``heldout`` records, when given, are scrubbed and evaluated too.
    ``global_adapter_state`` (tensors by name, or a vector of the adapter's layout) is loaded
    before training: the coordinator's adapter of this round. The steps are charged to
    ``ledger`` first (:class:`~participant.ledger.PrivacyBudgetExceeded` when they would exceed
    its budget); without one, a fresh in-memory ledger with the config's budget is used.
    ``feature_cache`` lets trainers of one process share the pooled features of the records they
    have in common (see :class:`~participant.trainer.FeatureCache`). ``score_heldout=False``
    skips scoring the trained adapter on the held-out records (a federated node: its update is
    one term of a sum, and its upload should not wait for a score of it). ``calibrate`` (after
    the last round of a party training alone, when the config plans it) shifts the decision
    threshold from one DP release over the training records before scoring
    (:meth:`~participant.trainer.LocalTrainer.calibrate`); the report's ``calibration`` says how.

    The report's ``warnings`` say, one line each, when training diverged and when the held-out
    balanced accuracy's interval does not lie above what always answering one label gets; each
    is also logged (``logging``, level WARNING).
    """
    if isinstance(records, LocalData):
        if heldout is not None:
            raise ValueError("pass held-out records inside LocalData or separately, not both")
        train_records, heldout_records = list(records.train), list(records.heldout)
        pii_counts, scrubbed, heldout_source = records.pii_counts, records.pii_scrubbed, (records.heldout_source)
    else:
        train_records = list(records)
        heldout_records = list(heldout) if heldout is not None else []
        pii_counts, scrubbed, heldout_source = empty_counts(), scrub_pii, "given"
        if scrub_pii:
            train_records, train_counts = scrub_records(train_records)
            heldout_records, heldout_counts = scrub_records(heldout_records)
            pii_counts = {k: train_counts[k] + heldout_counts[k] for k in pii_counts}
    if not train_records:
        raise ValueError("no training records")
    if trainer is None and ledger is not None and ledger.plan is not None:
        # A ledger whose plan has no round left: refuse before spending a minute on the model.
        ledger.check(
            noise_multiplier=ledger.plan.noise_multiplier,
            sample_rate=ledger.plan.sample_rate,
            steps=ledger.plan.steps_per_round,
        )
    if trainer is None:
        trainer = LocalTrainer(config, ledger=ledger, feature_cache=feature_cache)
    elif trainer.config != config or (ledger is not None and trainer.ledger is not ledger):
        raise ValueError("the trainer passed in was built with another config or ledger")
    if global_adapter_state is not None:
        trainer.set_adapter_vector(_as_vector(global_adapter_state, trainer.spec))
    start_vector = trainer.adapter_vector()

    local = trainer.train(train_records, on_step=on_step, note=note)
    calibrated, not_calibrated = None, ""
    if calibrate and trainer.calibrates:
        try:
            calibrated = trainer.calibrate(train_records)
        except CalibrationError as exc:  # e.g. one label only: the release was charged, nothing moves
            not_calibrated = f"the decision threshold was not calibrated: {exc}"
    evaluation = trainer.evaluate(heldout_records) if heldout_records and score_heldout else None
    plan = trainer.ledger.plan
    assert plan is not None
    vector = trainer.adapter_vector() if calibrated is not None else local.vector
    scores = evaluation.scores() if evaluation else None
    warnings = training_warnings(local.diverged, scores) + ([not_calibrated] if not_calibrated else [])
    for line in warnings[1 if local.diverged else 0 :]:  # the trainer has logged the divergence
        log.warning("%s", line)
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        # record-level privacy, over every step this ledger has charged (all rounds so far)
        "epsilon": trainer.ledger.epsilon_spent if calibrated is not None else local.epsilon,
        "delta": local.delta,
        "epsilon_budget": trainer.ledger.epsilon_budget,
        "accountant": local.accountant,
        "accountant_history": [list(h) for h in trainer.ledger.history],
        "noise_multiplier": local.noise_multiplier,
        "sample_rate": local.sample_rate,
        "expected_batch_size": local.expected_batch_size,
        "max_grad_norm": local.max_grad_norm,
        "steps": local.steps,
        "total_steps": local.total_steps,
        "planned_rounds": plan.planned_rounds,
        "planned_steps": plan.planned_steps,
        "clipping": local.clipping,
        "clipping_note": trainer.clipping_note,
        "empty_batches": local.empty_batches,
        "randomness": (
            "AES-256-CTR keyed from os.urandom"
            if config.noise_seed is None
            else "fixed seed (reproducible, NOT private)"
        ),
        # held-out quality
        "accuracy": evaluation.accuracy if evaluation else None,
        "majority_baseline": evaluation.majority_baseline if evaluation else None,
        "heldout_loss": evaluation.loss if evaluation else None,
        "heldout_count": evaluation.count if evaluation else 0,
        "heldout_source": heldout_source,
        "accuracy_unit": "records" if config.task == "classification" else "next tokens",
        # majority baseline, balanced accuracy, macro-F1, AUROC... with bootstrap intervals
        "scores": scores,
        "beats_majority": beats_majority(scores) if scores and scores["task"] == "classification" else None,
        "warnings": warnings,
        # data
        "train_records": len(train_records),
        "heldout_records": len(heldout_records),
        "pii_scrubbed": scrubbed,
        "pii_counts": dict(pii_counts),
        # training
        "mean_train_loss": local.mean_loss,
        "final_train_loss": local.final_loss,  # mean batch loss over the last quarter of the steps
        "probe_steps": local.probe_steps,  # of "steps", those that trained the head alone
        # the decision threshold's DP calibration (fedmask.adapter.calibration), when it ran
        "calibration": calibrated.as_dict() if calibrated is not None else None,
        "step_sizes": local.learning_rates,  # the learning rates that ran, per parameter group
        "diverged": local.diverged or None,
        "train_seconds": round(local.seconds, 3),
        "adapter": {
            "tensors": len(trainer.spec.tensors),
            "parameters": trainer.spec.size,
            "layout_fingerprint": trainer.spec.fingerprint(),
            "pooling": trainer.pooling,
            "update_l2_norm": float(np.linalg.norm(vector - start_vector)),
        },
        "config": trainer.config.to_dict(),
        "versions": _versions(),
    }
    state = dict(unflatten(vector, trainer.spec))
    return TrainingResult(
        adapter_state=state,
        vector=vector,
        spec=trainer.spec,
        report=report,
        trainer=trainer,
        heldout=tuple(heldout_records),
    )


def training_warnings(diverged: str, scores: Mapping[str, Any] | None) -> list[str]:
    """The lines a person must not miss: training diverged, or the held-out scores do not show
    that the model beats always answering the majority label."""
    lines = []
    if diverged:
        lines.append(f"training diverged: {diverged}")
    if scores is not None and scores["task"] == "classification" and not beats_majority(scores):
        chance = 1.0 / scores["num_labels"]
        interval = scores["ci95"].get("balanced_accuracy") or [scores["balanced_accuracy"]] * 2
        lines.append(
            f"the model does NOT beat the majority baseline: held-out balanced accuracy "
            f"{scores['balanced_accuracy']:.3f} [{interval[0]:.3f}, {interval[1]:.3f}] does not lie above "
            f"{chance:.3f}, what always answering one label gets ({scores['count']} held-out records)"
        )
    return lines


def write_training_outputs(
    result: TrainingResult,
    out_dir: str | Path,
    *,
    export: bool = False,
    label_names: Sequence[str] | None = None,
    base_model_name: str | None = None,
    data_description: str | None = None,
) -> Path:
    """Write ``adapter/`` (PEFT format), ``adapter_layout.json`` and ``report.json``; with
    ``export``, also ``model/``: the classifier as a folder standard libraries load
    (:func:`export_model`), whose facts go into ``report.json`` under ``"export"``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = result.trainer.config
    result.trainer.save_adapter(out_dir / "adapter")
    finish_adapter_folder(out_dir / "adapter", config, pooling=result.trainer.pooling, base_model_name=base_model_name)
    write_text_atomic(out_dir / "adapter_layout.json", json.dumps(result.spec.to_json(), indent=1) + "\n")
    report = dict(result.report)
    if export:
        manifest = export_model(
            result,
            out_dir / "model",
            label_names=label_names,
            base_model_name=base_model_name,
            data_description=data_description,
        )
        report["export"] = {
            "path": "model",
            "base_model": manifest["base_model"],
            "accuracy": manifest["scores"]["accuracy"],
            "max_logit_difference": manifest["max_logit_difference"],
        }
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return out_dir


def default_label_names(config: TrainingConfig) -> list[str]:
    return [str(index) for index in range(config.num_labels)]


def export_model(
    result: TrainingResult,
    out_dir: str | Path,
    *,
    label_names: Sequence[str] | None = None,
    base_model_name: str | None = None,
    data_description: str | None = None,
) -> dict[str, Any]:
    """Export one participant's trained classifier (see :mod:`fedmask.adapter.export`), verified and
    scored on its held-out records; returns the export's manifest."""
    report = result.report
    config = result.trainer.config
    facts = TrainingFacts(
        parties=1,
        rounds=len(result.trainer.ledger.history),
        epsilon=report["epsilon"],
        delta=report["delta"],
        accountant=report["accountant"],
        data=data_description
        or f"{report['train_records']} training records of one participant ({report['heldout_records']} held out)",
        noise_multiplier=report["noise_multiplier"],
        steps=report["total_steps"],
        sample_rate=report["sample_rate"],
        clipping=report["clipping"],
        pii_scrubbed=report["pii_scrubbed"],
    )
    return export_classifier(
        config,
        result.vector,
        out_dir,
        heldout=[heldout_row(record) for record in result.heldout],
        label_names=list(label_names) if label_names else default_label_names(config),
        facts=facts,
        base_model_name=base_model_name,
    )


def heldout_row(record: Record) -> dict[str, Any]:
    """A held-out record as the export's ``heldout.jsonl`` line: text, label and its id or party."""
    row: dict[str, Any] = {"text": record.text, "label": record.label}
    row.update({key: record.meta[key] for key in ("id", "party") if key in record.meta})
    return row


def finish_adapter_folder(
    directory: str | Path, config: TrainingConfig, *, pooling: str, base_model_name: str | None = None
) -> None:
    """Make a saved PEFT adapter folder self-describing and free of this machine's paths.

    ``adapter_config.json`` names the base model by its public name (peft writes the local path it
    was loaded from); ``training_config.json`` holds the settings that :func:`load_trained_model`
    and ``fedmask predict`` rebuild the model with; ``README.md`` replaces peft's empty template.
    ``pooling`` is the trainer's: ``"mean"`` for encoders that classify from mean pooling.
    """
    directory = Path(directory)
    base_model = public_model_name(config, base_model_name)
    adapter_config_path = directory / "adapter_config.json"
    adapter_config = json.loads(adapter_config_path.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = base_model
    write_text_atomic(adapter_config_path, json.dumps(adapter_config, indent=2) + "\n")
    write_text_atomic(directory / TRAINING_CONFIG_FILE, json.dumps(config.portable_dict(), indent=2) + "\n")
    kind = "LoRA" if config.mode == "lora" else "DP-BiTFiT (PEFT BEFT)"
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: peft",
        "tags:",
        "- fedmask",
        "- differential-privacy",
        f"- {config.mode}",
        "---",
        "",
        f"# fedmask {config.mode} adapter for {base_model} ({config.task.replace('_', ' ')})",
        "",
        f"A {kind} adapter trained with DP-SGD by fedmask on PII-scrubbed records (fedmask.participant.pii).",
        "",
    ]
    if pooling == "mean":
        lines += [
            "The classifier reads the masked mean of the token states, not BERT's [CLS] pooler: a plain "
            "`AutoModelForSequenceClassification` + `PeftModel.from_pretrained` loads these files without "
            "error but pools differently, and its predictions are wrong.",
            "",
        ]
    lines += [
        f"Run it with `fedmask predict --model <this folder> --data records.jsonl` (it reads `{TRAINING_CONFIG_FILE}` "
        "and scrubs the inputs as training did), or load it with "
        "`fedmask.adapter.model.load_trained_model(TrainingConfig.from_dict(settings), folder)`. A classifier "
        "trained by `fedmask participant train` or `fedmask demo` also comes as an exported `model/` folder "
        "that sentence-transformers loads without fedmask.",
        "",
    ]
    write_text_atomic(directory / "README.md", "\n".join(lines))


def export_adapter(
    config: TrainingConfig,
    adapter_state: Mapping[str, torch.Tensor] | np.ndarray,
    directory: str | Path,
    *,
    base_model_name: str | None = None,
) -> Path:
    """Save adapter values (e.g. an aggregated global adapter) in PEFT's format.

    Builds the same base model and adapter as training does (no DP, no ledger charge).
    """
    trainer = LocalTrainer(config)
    trainer.set_adapter_vector(_as_vector(adapter_state, trainer.spec))
    trainer.save_adapter(directory)
    finish_adapter_folder(directory, config, pooling=trainer.pooling, base_model_name=base_model_name)
    return Path(directory)


def configure_threads() -> int:
    """Use every core the process may run on (containers often limit it); returns the count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores))
    return int(torch.get_num_threads())


logging.getLogger("opacus").setLevel(logging.ERROR)
