"""The participant's DP-SGD trainer: base model + adapter + Opacus wrapping + privacy ledger.

See :mod:`fedmask.participant.training` for the choices that matter for the guarantee.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmask.adapter import calibration
from fedmask.adapter.config import STEP_NOISE, ConfigError, TrainingConfig, noise_calibrated_learning_rate
from fedmask.adapter.model import ClassificationHead, _is_head_parameter, build_adapter_model, classification_head
from fedmask.adapter.prefix import FrozenPrefix, first_trainable_layer
from fedmask.adapter.scores import DEFAULT_RESAMPLES, DEFAULT_SEED, causal_lm_scores, classification_scores
from fedmask.adapter.vector import (
    VectorSpec,
    load_model_vector,
    model_vector,
    trainable_named_parameters,
)
from fedmask.participant.data import Record
from fedmask.participant.dp_random import DpRandomness
from fedmask.participant.ledger import (
    CALIBRATION_NOTE,
    PrivacyLedger,
    PrivacyPlan,
)
from fedmask.participant.noise_calibration import calibration_noise_multiplier, noise_multiplier_for
from fedmask.participant.probe import FeatureCache, divergence_verdict, final_loss, linear_probe
from fedmask.secagg.rand import RandomSource, SystemRandom

log = logging.getLogger(__name__)


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
    probe_steps: int = 0  # of ``steps``, how many trained the head alone on pooled features
    learning_rates: dict[str, float] = field(default_factory=dict)  # the rates that ran: "head", "adapter"
    final_loss: float = float("nan")  # mean batch loss over the last quarter of the steps
    diverged: str = ""  # one line saying how training diverged; "" when it did not


@dataclass(frozen=True)
class Evaluation:
    """Held-out quality. For causal LMs, ``accuracy`` is next-token accuracy.

    The per-record arrays (in the order of the records evaluated) are what :meth:`scores` needs:
    for classification the labels and the predicted probabilities, for causal LMs each record's
    summed next-token loss, predicted tokens and correct predictions.
    """

    accuracy: float
    majority_baseline: float  # accuracy of the best constant prediction on the same records
    loss: float
    count: int  # records (classification) or predicted tokens (causal LM)
    task: str = "classification"
    labels: np.ndarray | None = field(default=None, compare=False, repr=False)  # (records,)
    probabilities: np.ndarray | None = field(default=None, compare=False, repr=False)  # (records, labels)
    record_loss_sums: np.ndarray | None = field(default=None, compare=False, repr=False)
    record_token_counts: np.ndarray | None = field(default=None, compare=False, repr=False)
    record_correct_counts: np.ndarray | None = field(default=None, compare=False, repr=False)

    def scores(self, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict[str, Any]:
        """Majority baseline, balanced accuracy, macro-F1, AUROC... with bootstrap intervals
        (classification), or perplexity and next-token accuracy (causal LM):
        :mod:`fedmask.adapter.scores`."""
        if self.task == "classification":
            assert self.labels is not None and self.probabilities is not None
            return classification_scores(self.labels, self.probabilities, resamples=resamples, seed=seed)
        assert (
            self.record_loss_sums is not None
            and self.record_token_counts is not None
            and self.record_correct_counts is not None
        )
        return causal_lm_scores(
            self.record_loss_sums,
            self.record_token_counts,
            self.record_correct_counts,
            majority_baseline=self.majority_baseline,
            resamples=resamples,
            seed=seed,
        )


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
    # This round's Poisson sampling and noise (set by _seed_round; Opacus's sampler and
    # optimizer draw from it too: _draw_from_csprng).
    randomness: DpRandomness = field(default_factory=DpRandomness.fresh)
    encoded: _Encoded | None = None  # the training records, for the head's probe steps


@dataclass
class _Encoded:
    input_ids: list[torch.Tensor] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def _draw_from_csprng(optimizer: Any, loader: Any, randomness: Callable[[], DpRandomness]) -> None:
    """Make the optimizer and the Poisson loader Opacus built draw their noise and coin flips
    from ``randomness()`` (the round's CSPRNG) instead of torch's Mersenne Twister.

    Opacus adds ``noise_multiplier * max_grad_norm`` Gaussian noise to each parameter's clipped
    gradient sum in ``add_noise``; this is that method with the noise drawn elsewhere. An
    optimizer class that adds noise its own way (adaptive clipping) is refused rather than left
    on a predictable generator.
    """
    from opacus.optimizers.optimizer import DPOptimizer, _check_processed_flag, _mark_as_processed
    from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    known = (DPOptimizer.add_noise, DPOptimizerFastGradientClipping.add_noise)
    if type(optimizer).add_noise not in known or hasattr(optimizer, "_adjusted_noise_multiplier"):
        raise RuntimeError(f"{type(optimizer).__name__} adds its noise its own way; not training with it")
    sampler = loader.batch_sampler
    if type(sampler) is not UniformWithReplacementSampler:
        raise RuntimeError(f"expected Opacus's Poisson sampler, got {type(sampler).__name__}")

    def add_noise() -> None:
        std = optimizer.noise_multiplier * optimizer.max_grad_norm
        for p in optimizer.params:
            _check_processed_flag(p.summed_grad)
            noise = randomness().gaussian(p.summed_grad.shape, std, p.summed_grad.dtype)
            p.grad = (p.summed_grad + noise.to(p.summed_grad.device)).view_as(p)
            _mark_as_processed(p.summed_grad)

    optimizer.add_noise = add_noise
    sampler.__class__ = _csprng_poisson_sampler()
    sampler.randomness = randomness


@functools.cache
def _csprng_poisson_sampler() -> type:
    """Opacus's Poisson batch sampler with its coin flips from the round's CSPRNG (a subclass
    made on first use: Opacus is imported only when DP training starts)."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    class CsprngPoissonSampler(UniformWithReplacementSampler):  # type: ignore[misc]  # opacus is untyped
        randomness: Callable[[], DpRandomness]

        def __iter__(self) -> Iterator[list[int]]:
            for _ in range(self.steps):
                mask = self.randomness().poisson_mask(self.num_samples, self.sample_rate)
                yield mask.nonzero().reshape(-1).tolist()

    return CsprngPoissonSampler


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

    def __init__(
        self,
        config: TrainingConfig,
        *,
        ledger: PrivacyLedger | None = None,
        feature_cache: FeatureCache | None = None,
    ) -> None:
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
        built = build_adapter_model(config)
        self.tokenizer = built.tokenizer
        self.pooling: str = built.pooling
        self.model = built.model
        self.spec: VectorSpec = built.spec
        self.initial_vector = self.adapter_vector()
        # Original bias values of the BEFT-wrapped Linear layers, for exporting deltas.
        self._bias_reference = {
            name: p.detach().clone() for name, p in self.model.named_parameters() if name.endswith(".base_layer.bias")
        }
        self._private: _Private | None = None
        self.clipping_note = ""  # why the auto mode fell back to hooks, when it did
        # The head the probe steps train (encoders with mean pooling); None: no probe steps.
        self.head: ClassificationHead | None = (
            classification_head(self.model, self.pooling) if config.task == "classification" else None
        )
        self.feature_cache = feature_cache if feature_cache is not None else FeatureCache()
        self._head_names = {name for name in self.spec.names if _is_head_parameter(name)}
        # LoRA in the top layers only: the frozen layers below run once per record (prefix.py).
        self.prefix: FrozenPrefix | None = None
        first = first_trainable_layer(self.model, _is_head_parameter)
        if first:
            self.prefix = FrozenPrefix.install(self.model, first)
            if self.prefix is not None and not self.prefix.verify(self.model, *self._verification_batch()):
                self.prefix = None

    def _verification_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Two fixed texts of different lengths, padded as training pads them."""
        texts = ["Routine follow-up booked for next month.", "Chest pain at rest since this morning, short of breath."]
        ids = self.tokenizer(texts, truncation=True, max_length=self.config.max_seq_len)["input_ids"]
        input_ids, mask, _ = _collate(self.tokenizer.pad_token_id)([(torch.tensor(i), 0) for i in ids])
        return input_ids, mask

    # ------------------------------------------------------------------ adapter values

    def adapter_vector(self) -> np.ndarray:
        """The adapter's current values as a flat vector (layout :attr:`spec`)."""
        return model_vector(self.model, self.spec)

    def set_adapter_vector(self, vector: np.ndarray) -> None:
        """Load adapter values (e.g. the global adapter of this round) from a flat vector."""
        load_model_vector(self.model, vector, self.spec)

    @property
    def calibrates(self) -> bool:
        """Whether the config plans a calibration and the model has a head bias to shift."""
        return self.config.calibrates and calibration.has_head_bias(self.spec.to_json())

    def shift_decision(self, shift: float) -> None:
        """Move the two-class head's decision threshold: class 1 is predicted at a margin
        ``shift`` higher (:func:`fedmask.adapter.calibration.shifted`)."""
        self.set_adapter_vector(calibration.shifted(self.adapter_vector(), self.spec.to_json(), shift))

    def calibration_release(self, records: Sequence[Record], rng: RandomSource) -> np.ndarray:
        """The noised calibration statistic of ``records`` (this holder's training records) under
        the current adapter, charged to the ledger before it is computed
        (:mod:`fedmask.adapter.calibration`). Inside ``ledger.pending_release`` the charge stays
        pending until the caller marks it released."""
        plan = self.plan_for(len(records))
        noise = plan.calibration_noise_multiplier
        if noise is None:
            raise calibration.CalibrationError(
                "this training plan reserves no budget for calibration (two-class classification, "
                "calibrate: true, from the first round)"
            )
        self.ledger.charge(noise_multiplier=noise, sample_rate=1.0, steps=1, note=CALIBRATION_NOTE)
        return calibration.noised_release(self.margin_statistic(records), noise, rng)

    def margin_statistic(self, records: Sequence[Record]) -> np.ndarray:
        """The exact calibration statistic of ``records`` under the current adapter -- private:
        only :meth:`calibration_release` (noised, charged) or a non-private reference uses it."""
        evaluation = self.evaluate(records)
        assert evaluation.probabilities is not None and evaluation.labels is not None
        with np.errstate(divide="ignore"):  # a saturated probability is an infinite margin: an end bin
            logs = np.log(evaluation.probabilities)
        return calibration.margin_histogram(logs[:, 1] - logs[:, 0], evaluation.labels)

    def calibrate(self, records: Sequence[Record], rng: RandomSource | None = None) -> calibration.Calibration:
        """Calibrate the decision threshold on this holder's own training records alone (a party
        training by itself; a federation sums the releases under secure aggregation instead)."""
        release = self.calibration_release(records, rng if rng is not None else SystemRandom())
        solved = calibration.solve_shift(release)
        self.shift_decision(solved.shift)
        return solved

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
        calibration_noise = calibration_noise_multiplier(self.config) if self.calibrates else None
        noise = noise_multiplier_for(
            self.config.target_epsilon,
            self.config.target_delta,
            sample_rate,
            steps_per_round * self.config.planned_rounds,
            self.config.accountant,
            also=((calibration_noise, 1.0, 1),) if calibration_noise is not None else (),
        )
        return PrivacyPlan(
            noise_multiplier=float(noise),
            sample_rate=sample_rate,
            steps_per_round=steps_per_round,
            planned_rounds=self.config.planned_rounds,
            num_records=num_records,
            expected_batch_size=int(num_records * sample_rate),
            max_grad_norm=self.config.max_grad_norm,
            calibration_noise_multiplier=calibration_noise,
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
        from fedmask.participant import bias_grad  # imports Opacus: only when training privately

        encoded = self.encode(records)
        plan = self.plan_for(len(records))
        dataset = list(zip(encoded.input_ids, encoded.labels, strict=True))
        if self.config.clipping != "auto":
            self._private = self._make_private(self.config.clipping, dataset, plan, key)
        elif any(bias_grad.is_bias_only(module) for module in self.model.modules()):
            # DP-BiTFiT: hooks with bias-only grad samplers keep no layer inputs (bias_grad.py);
            # expanded weights would keep one per layer, half again the plain step's memory.
            self._private = self._make_private("hooks", dataset, plan, key)
            self._probe(dataset[: min(2, len(dataset))])
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
        self._private.encoded = encoded
        self.ledger.set_plan(plan)
        return plan

    def _make_private(
        self, mode: str, dataset: list[tuple[torch.Tensor, int]], plan: PrivacyPlan, key: str
    ) -> _Private:
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader

        from fedmask.participant import bias_grad

        loader = DataLoader(
            dataset, batch_size=self.config.batch_size, collate_fn=_collate(self.tokenizer.pad_token_id)
        )
        if mode == "hooks":
            bias_grad.use_bias_only_grad_samplers(self.model)
        optimizer = self.build_optimizer()
        with warnings.catch_warnings():
            # Opacus says its noise comes from torch's generator ("Secure RNG turned off ...
            # before production"). Not here: fedmask swaps in its own AES-256-CTR stream keyed
            # from os.urandom for the noise and the batches (fedmask.participant.dp_random).
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
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
        )
        if mode == "ghost":
            ignore = -100 if self.config.task == "causal_lm" else -1
            kwargs["criterion"] = nn.CrossEntropyLoss(ignore_index=ignore, reduction="mean")
            module, dp_optimizer, criterion, dp_loader = engine.make_private(**kwargs)
        else:
            module, dp_optimizer, dp_loader = engine.make_private(**kwargs)
        if abs(dp_loader.sample_rate - plan.sample_rate) > 1e-12:
            raise RuntimeError(f"Opacus sample rate {dp_loader.sample_rate} differs from the plan's {plan.sample_rate}")
        private = _Private(
            engine=engine,
            module=module,
            optimizer=dp_optimizer,
            criterion=criterion,
            loader=dp_loader,
            data_key=key,
            plan=plan,
            clipping=mode,
        )
        _draw_from_csprng(dp_optimizer, dp_loader, lambda: private.randomness)
        return private

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimizer: one parameter group for the adapter, one for the head."""
        head: list[nn.Parameter] = []
        adapter: list[nn.Parameter] = []
        for name, p in trainable_named_parameters(self.model):
            (head if _is_head_parameter(name) else adapter).append(p)
        groups = [
            {"params": group, "lr": lr, "role": role}
            for role, group, lr in (
                ("adapter", adapter, self.config.resolved_learning_rate),
                ("head", head, self.config.resolved_head_learning_rate),
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

    # ------------------------------------------------------------------ batches

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
        """Key this round's Poisson sampling and noise: fresh OS entropy, or the test seed."""
        priv = self._private
        assert priv is not None
        if self.config.noise_seed is None:
            priv.randomness = DpRandomness.fresh()
        else:
            # Depends on the steps already charged, so each round (and a re-run after a
            # restart) draws its own batches and noise, reproducibly.
            priv.randomness = DpRandomness.reproducible(f"{self.config.noise_seed}:{self.ledger.steps}")

    # ------------------------------------------------------------------ step sizes and features

    def step_sizes(self, noise_multiplier: float, expected_batch_size: float) -> dict[str, float]:
        """The learning rate of each parameter group ("adapter", "head") for DP-SGD at this noise.

        A rate left unset in the config is scaled to the noise (SGD:
        :func:`~fedmask.adapter.config.noise_calibrated_learning_rate`, so a step's noise moves each
        group about as far at every record count, batch and epsilon); a rate given is used as it is.
        """
        sizes = {"adapter": 0, "head": 0}
        for name, spec in zip(self.spec.names, self.spec.tensors, strict=True):
            sizes["head" if name in self._head_names else "adapter"] += spec.numel
        given = {"adapter": self.config.learning_rate, "head": self.config.head_learning_rate}
        caps = {"adapter": self.config.resolved_learning_rate, "head": self.config.resolved_head_learning_rate}
        rates: dict[str, float] = {}
        for role in ("adapter", "head"):
            if not sizes[role]:
                continue
            value = given[role]
            if value is None and self.config.optimizer == "sgd":
                value = noise_calibrated_learning_rate(
                    caps[role],
                    STEP_NOISE[role],
                    noise_multiplier=noise_multiplier,
                    max_grad_norm=self.config.max_grad_norm,
                    expected_batch_size=expected_batch_size,
                    parameters=sizes[role],
                )
            rates[role] = float(value if value is not None else caps[role])
        return rates

    def _encoder_state(self) -> str:
        """A fingerprint of everything the pooled features depend on: the base model, the sequence
        length and the adapter's encoder tensors (not the head)."""
        digest = hashlib.sha256(f"{self.config.resolved_model_path}|{self.config.max_seq_len}|".encode())
        for name, p in trainable_named_parameters(self.model):
            if name not in self._head_names:
                digest.update(name.encode())
                digest.update(p.detach().cpu().numpy().tobytes())
        return digest.hexdigest()

    def pooled_features(self, records: Sequence[Record], encoded: _Encoded | None = None) -> torch.Tensor:
        """What the head reads for each record under the current encoder: shape (records, hidden).

        Taken from the feature cache where this encoder state has seen the text before."""
        if self.head is None:
            raise ValueError("this model has no head that reads one pooled vector per record")
        encoded = encoded if encoded is not None else self.encode(records)
        state = self._encoder_state()
        found = [self.feature_cache.get(state, r.text) for r in records]
        missing = [i for i, value in enumerate(found) if value is None]
        if missing:
            captured: list[torch.Tensor] = []

            def capture(module: nn.Module, args: tuple[Any, ...]) -> None:
                captured.append(args[0].detach())

            hook = self.head.module.register_forward_pre_hook(capture)
            was_training = self.model.training
            self.model.eval()
            collate = _collate(self.tokenizer.pad_token_id)
            order = sorted(missing, key=lambda i: len(encoded.input_ids[i]))  # little padding
            try:
                with torch.no_grad():
                    for start in range(0, len(order), 64):
                        idx = order[start : start + 64]
                        batch = collate([(encoded.input_ids[i], 0) for i in idx])
                        captured.clear()
                        self.model(input_ids=batch[0], attention_mask=batch[1])
                        for i, row in zip(idx, captured[0], strict=True):
                            found[i] = row.clone()
                            self.feature_cache.put(state, records[i].text, found[i])
            finally:
                hook.remove()
                self.model.train(was_training)
        return torch.stack([value for value in found if value is not None])

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in trainable_named_parameters(self.model)}

    def _restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in trainable_named_parameters(self.model):
                p.copy_(snapshot[name])

    def _parameters_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for _, p in trainable_named_parameters(self.model))

    # ------------------------------------------------------------------ DP steps

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
        is raised (before any training) when they would exceed the epsilon budget. The first
        ``config.probe_steps(steps)`` train the head alone on the pooled features (when the model
        has such a head), the rest the adapter and head, through Opacus. ``on_step(step, total,
        loss)`` is called after every step (loss is NaN on empty batches).

        Guards: parameters that stop being finite are put back to where that phase started and
        the round's remaining steps are skipped (a decision on the released values alone, so the
        guarantee holds; the steps stay charged); a loss that explodes is reported in
        ``diverged`` (and logged), never acted on, since the loss is not privatised.
        """
        plan = self.prepare(records)
        priv = self._private
        assert priv is not None and priv.encoded is not None
        n_steps = plan.steps_per_round if steps is None else int(steps)
        if n_steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        probe_steps = self.config.probe_steps(n_steps) if self.head is not None else 0
        self._seed_round()
        epsilon = self.ledger.charge(
            noise_multiplier=plan.noise_multiplier,
            sample_rate=plan.sample_rate,
            steps=n_steps,
            note=note,
        )
        rates = self.step_sizes(plan.noise_multiplier, plan.sample_rate * plan.num_records)
        optimizer = priv.optimizer
        optimizer.original_optimizer.state.clear()  # fresh moments each round
        for group in optimizer.param_groups:
            group["lr"] = rates[group["role"]]
        history_before = sum(h[2] for h in priv.engine.accountant.history)
        start = time.perf_counter()
        losses: list[float] = []
        empty = 0
        diverged = ""

        def report_step(step: int, loss: float) -> None:
            if on_step is not None:
                on_step(step, n_steps, loss)

        if probe_steps:
            assert self.head is not None
            features = self.pooled_features(records, priv.encoded)
            probe = linear_probe(
                self.head.layer,
                features,
                torch.tensor(priv.encoded.labels, dtype=torch.long),
                steps=probe_steps,
                sample_rate=plan.sample_rate,
                learning_rate=rates["head"],
                momentum=0.9,
                noise_multiplier=plan.noise_multiplier,
                max_grad_norm=plan.max_grad_norm,
                randomness=priv.randomness,
                on_step=report_step,
            )
            losses += probe.losses
            empty += probe.empty
            if probe.nonfinite_at >= 0:
                diverged = f"the head's parameters became non-finite at step {probe.nonfinite_at}"
        self.model.train()
        finetune_steps = 0
        if not diverged:
            snapshot = self._snapshot()
            batches = self._batches(priv.loader)
            for step in range(probe_steps, n_steps):
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
                finetune_steps += 1
                if not self._parameters_finite():
                    self._restore(snapshot)
                    diverged = f"the parameters became non-finite at step {step + 1}"
                    break
                report_step(step + 1, loss)
            optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        # Every fine-tuning step must have gone through the noise + accountant path of the DP
        # optimizer (the probe steps add their noise above; the ledger charged all of them).
        counted = sum(h[2] for h in priv.engine.accountant.history) - history_before
        if counted != finetune_steps:
            raise RuntimeError(f"Opacus accounted {counted} steps for the {finetune_steps} fine-tuning steps taken")
        diverged = divergence_verdict(diverged, losses)
        finite = [loss for loss in losses if not math.isnan(loss)]
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
            mean_loss=float(np.mean(finite)) if finite else float("nan"),
            seconds=seconds,
            probe_steps=probe_steps,
            learning_rates=rates,
            final_loss=final_loss(losses),
            diverged=diverged,
        )

    def train_non_private(self, records: Sequence[Record], *, steps: int | None = None) -> LocalTrainingResult:
        """The same recipe without clipping or noise, nothing charged: a non-private reference
        to compare DP results with (what the records could teach this model). The same schedule
        (Poisson batches at the config's sample rate, probe steps, then adapter and head) and the
        rates a noiseless step uses; batches seeded from ``config.seed``.

        Refused on a trainer prepared for DP training: its model is wrapped by Opacus.
        """
        if self._private is not None:
            raise RuntimeError("this trainer trains with DP; make another for the non-private reference")
        encoded = self.encode(records)
        count = len(records)
        sample_rate = self.config.sample_rate(count)
        n_steps = self.config.steps_per_round(count) if steps is None else int(steps)
        probe_steps = self.config.probe_steps(n_steps) if self.head is not None else 0
        rates = self.step_sizes(0.0, sample_rate * count)
        # Not secret (nothing is private here): batches repeat for a given config seed.
        randomness = DpRandomness.reproducible(f"non-private:{self.config.seed}")
        start = time.perf_counter()
        losses: list[float] = []
        empty = 0
        diverged = ""
        if probe_steps:
            assert self.head is not None
            probe = linear_probe(
                self.head.layer,
                self.pooled_features(records, encoded),
                torch.tensor(encoded.labels, dtype=torch.long),
                steps=probe_steps,
                sample_rate=sample_rate,
                learning_rate=rates["head"],
                momentum=0.9,
                noise_multiplier=None,
                max_grad_norm=self.config.max_grad_norm,
                randomness=randomness,
            )
            losses += probe.losses
            empty += probe.empty
            if probe.nonfinite_at >= 0:
                diverged = f"the head's parameters became non-finite at step {probe.nonfinite_at}"
        optimizer = self.build_optimizer()
        for group in optimizer.param_groups:
            group["lr"] = rates[group["role"]]
        collate = _collate(self.tokenizer.pad_token_id)
        self.model.train()
        if not diverged:
            snapshot = self._snapshot()
            for step in range(probe_steps, n_steps):
                chosen = torch.nonzero(randomness.poisson_mask(count, sample_rate)).flatten().tolist()
                if not chosen:
                    empty += 1
                    losses.append(float("nan"))
                    continue
                optimizer.zero_grad(set_to_none=True)
                batch = collate([(encoded.input_ids[i], encoded.labels[i]) for i in chosen])
                loss = per_sequence_loss(self.config.task, self._forward_logits(self.model, batch), batch)
                # Sum over the batch / expected batch size: the same scale as the DP optimizer's.
                (loss.sum() / (sample_rate * count)).backward()
                optimizer.step()
                losses.append(float(loss.detach().mean()))
                if not self._parameters_finite():
                    self._restore(snapshot)
                    diverged = f"the parameters became non-finite at step {step + 1}"
                    break
            optimizer.zero_grad(set_to_none=True)
        diverged = divergence_verdict(diverged, losses)
        finite = [loss for loss in losses if not math.isnan(loss)]
        return LocalTrainingResult(
            vector=self.adapter_vector(),
            epsilon=float("inf"),
            delta=0.0,
            steps=n_steps,
            total_steps=n_steps,
            noise_multiplier=0.0,
            sample_rate=sample_rate,
            expected_batch_size=int(sample_rate * count),
            max_grad_norm=float("inf"),
            accountant="none",
            clipping="none",
            empty_batches=empty,
            mean_loss=float(np.mean(finite)) if finite else float("nan"),
            seconds=time.perf_counter() - start,
            probe_steps=probe_steps,
            learning_rates=rates,
            final_loss=final_loss(losses),
            diverged=diverged,
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

    def evaluate(self, records: Sequence[Record], *, batch_size: int = 64) -> Evaluation:
        """Accuracy, loss and the majority baseline of the current adapter on ``records``, with the
        per-record probabilities (or token counts) that :meth:`Evaluation.scores` turns into scores."""
        with torch.no_grad():
            return self._evaluate(records, batch_size)

    def _evaluate(self, records: Sequence[Record], batch_size: int) -> Evaluation:
        encoded = self.encode(records)
        # Batches of similar lengths pad little; results go back to the records' own order.
        order = sorted(range(len(records)), key=lambda i: len(encoded.input_ids[i]))
        collate = _collate(self.tokenizer.pad_token_id)
        was_training = self.model.training
        self.model.eval()
        classification = self.config.task == "classification"
        probabilities = np.zeros((len(records), self.config.num_labels)) if classification else None
        loss_sums = np.zeros(len(records))
        token_counts = np.zeros(len(records), dtype=np.int64)
        correct_counts = np.zeros(len(records), dtype=np.int64)
        target_counts: dict[int, int] = {}
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = collate([(encoded.input_ids[i], encoded.labels[i]) for i in idx])
                logits = self.model(input_ids=batch[0], attention_mask=batch[1]).logits
                if classification:
                    assert probabilities is not None
                    labels = batch[2]
                    probabilities[idx] = torch.softmax(logits.double(), dim=-1).numpy()
                    loss_sums[idx] = F.cross_entropy(logits, labels, reduction="none").double().numpy()
                    correct_counts[idx] = (logits.argmax(-1) == labels).long().numpy()
                    token_counts[idx] = 1
                    flat_targets = labels
                else:
                    targets = causal_lm_targets(batch[0], batch[1])
                    valid = targets != -100
                    predictions = logits[:, :-1].argmax(-1)
                    token_loss = F.cross_entropy(
                        logits[:, :-1].reshape(-1, logits.shape[-1]),
                        targets.reshape(-1),
                        ignore_index=-100,
                        reduction="none",
                    ).view(targets.shape)
                    loss_sums[idx] = token_loss.double().sum(dim=1).numpy()
                    correct_counts[idx] = ((predictions == targets) & valid).sum(dim=1).numpy()
                    token_counts[idx] = valid.sum(dim=1).numpy()
                    flat_targets = targets[valid]
                for value, n in zip(*torch.unique(flat_targets, return_counts=True), strict=True):
                    target_counts[int(value)] = target_counts.get(int(value), 0) + int(n)
        finally:
            self.model.train(was_training)
        count = int(token_counts.sum())
        if count == 0:
            raise ValueError("nothing to evaluate")
        return Evaluation(
            accuracy=int(correct_counts.sum()) / count,
            majority_baseline=max(target_counts.values()) / count,
            loss=float(loss_sums.sum()) / count,
            count=count,
            task=self.config.task,
            labels=np.asarray(encoded.labels, dtype=np.int64) if classification else None,
            probabilities=probabilities,
            record_loss_sums=loss_sums,
            record_token_counts=token_counts,
            record_correct_counts=correct_counts,
        )
