"""The participant's DP-SGD trainer: base model + adapter + Opacus wrapping + privacy ledger.

See :mod:`fedmask.participant.training` for the choices that matter for the guarantee.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmask.adapter.config import ConfigError, TrainingConfig
from fedmask.adapter.model import _is_head_parameter, build_adapter_model
from fedmask.adapter.scores import DEFAULT_RESAMPLES, DEFAULT_SEED, causal_lm_scores, classification_scores
from fedmask.adapter.vector import (
    VectorSpec,
    load_model_vector,
    model_vector,
    trainable_named_parameters,
)
from fedmask.participant.data import Record
from fedmask.participant.ledger import PrivacyLedger, PrivacyPlan


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
    sampling_generator: torch.Generator
    noise_generator: torch.Generator


@dataclass
class _Encoded:
    input_ids: list[torch.Tensor] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


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
            dataset,
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
        head: list[nn.Parameter] = []
        adapter: list[nn.Parameter] = []
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
