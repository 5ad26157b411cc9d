"""The classification head's linear probe on frozen pooled features, the cache those features
are kept in between trainers of one process, and the guards that read a run of losses."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmask.participant.dp_random import DpRandomness

log = logging.getLogger(__name__)


class FeatureCache:
    """Pooled features of records under one encoder state, shared by trainers of one process.

    The head's probe steps need every training record's pooled features under the encoder as the
    round starts. While the encoder is unchanged (the initial adapter: LoRA-B at zero, BiTFiT's
    biases as loaded) they are the same for every trainer of the same base model, so the demo's
    comparison runs compute each record's features once. Keys: the encoder state (model, sequence
    length and the adapter's encoder tensors, hashed) and the record's text. Only the features
    of the ``max_states`` encoder states used last are kept: a participant's encoder changes
    every round, and features of past rounds are never read again.
    """

    def __init__(self, max_states: int = 2) -> None:
        if max_states < 1:
            raise ValueError(f"max_states must be >= 1, got {max_states}")
        self.max_states = max_states
        self._features: dict[str, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return sum(len(by_text) for by_text in self._features.values())

    def get(self, encoder_state: str, text: str) -> torch.Tensor | None:
        by_text = self._features.get(encoder_state)
        return None if by_text is None else by_text.get(text)

    def put(self, encoder_state: str, text: str, features: torch.Tensor) -> None:
        by_text = self._features.pop(encoder_state, {})
        by_text[text] = features
        self._features[encoder_state] = by_text  # the most recently used state last
        while len(self._features) > self.max_states:
            del self._features[next(iter(self._features))]


def loss_divergence(losses: Sequence[float]) -> str:
    """Why a run of per-step losses diverged, in a few words; "" when it did not.

    Diverged: a non-finite loss, or a last quarter whose mean is both twice the first quarter's
    and a nat above it (cross-entropy of a run that learns falls or stays level; DP noise moves a
    quarter's mean by far less than that).
    """
    values = [value for value in losses if not math.isnan(value)]
    if any(not math.isfinite(value) for value in values):
        return "the loss became infinite"
    if len(values) < 4:
        return ""
    window = max(1, len(values) // 4)
    first, last = float(np.mean(values[:window])), float(np.mean(values[-window:]))
    if last > max(2.0 * first, first + 1.0):
        return f"the loss rose from {first:.3g} (first {window} steps) to {last:.3g} (last {window})"
    return ""


def divergence_verdict(guarded: str, losses: Sequence[float]) -> str:
    """How a round diverged ("" if it did not), logged: the non-finite guard's finding
    (``guarded``, which acted) or else what the losses show (which is only reported)."""
    if guarded:
        verdict = f"{guarded}; the adapter was put back to where that phase started and the rest of the round skipped"
    else:
        verdict = loss_divergence(losses)
    if verdict:
        log.warning("training diverged: %s", verdict)
    return verdict


def final_loss(losses: Sequence[float]) -> float:
    values = [value for value in losses if not math.isnan(value)]
    if not values:
        return float("nan")
    return float(np.mean(values[-max(1, len(values) // 4) :]))


@dataclass
class _ProbeRun:
    """The head's probe steps of one round: the batch losses (NaN for empty batches), the empty
    batches, and the step at which parameters stopped being finite (-1: never)."""

    losses: list[float]
    empty: int
    nonfinite_at: int


def linear_probe(
    head: nn.Linear,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    sample_rate: float,
    learning_rate: float,
    momentum: float,
    noise_multiplier: float | None,
    max_grad_norm: float,
    randomness: DpRandomness,
    on_step: Callable[[int, float], None] | None = None,
) -> _ProbeRun:
    """Train ``head`` on fixed ``features`` with DP-SGD, exactly as Opacus would on the head alone.

    Each step: Poisson sampling at ``sample_rate`` (each record in with probability q, as Opacus's
    sampler; coin flips and noise from ``randomness``, the round's CSPRNG),
    per-record gradients of the cross-entropy (for a linear layer: the error times the input,
    computed in closed form), each clipped to ``max_grad_norm`` (weight and bias together),
    summed, Gaussian noise of std ``noise_multiplier * max_grad_norm`` added, divided by the
    expected batch size, then SGD with momentum. ``noise_multiplier`` ``None``: no clipping and no
    noise (the non-private reference). The head ends at the mean of its iterates over the second
    half of the steps: averaging is post-processing, and cuts the noise a final iterate carries.
    """
    count = int(features.shape[0])
    expected_batch = max(count * sample_rate, 1e-12)
    weight, bias = head.weight, head.bias
    velocity_w, velocity_b = torch.zeros_like(weight), torch.zeros_like(bias)
    sum_w, sum_b, averaged = torch.zeros_like(weight), torch.zeros_like(bias), 0
    onehot = F.one_hot(labels, num_classes=weight.shape[0]).to(features.dtype)
    input_norms = features.pow(2).sum(dim=1).add(1.0).sqrt()  # |[x, 1]|: the bias sees a constant 1
    losses: list[float] = []
    empty = 0
    nonfinite_at = -1
    start_w, start_b = weight.detach().clone(), bias.detach().clone()
    with torch.no_grad():
        for step in range(steps):
            chosen = randomness.poisson_mask(count, sample_rate)
            x, y = features[chosen], onehot[chosen]
            if x.shape[0] == 0:
                empty += 1
                losses.append(float("nan"))
                grad_w, grad_b = torch.zeros_like(weight), torch.zeros_like(bias)
            else:
                logits = x @ weight.T + bias
                losses.append(float(F.cross_entropy(logits, y.argmax(dim=1))))
                error = torch.softmax(logits, dim=1) - y
                if noise_multiplier is not None:
                    norms = error.norm(dim=1) * input_norms[chosen]
                    error = error * (max_grad_norm / (norms + 1e-6)).clamp(max=1.0).unsqueeze(1)
                grad_w, grad_b = error.T @ x, error.sum(dim=0)
            if noise_multiplier is not None:
                std = noise_multiplier * max_grad_norm
                grad_w = grad_w + randomness.gaussian(grad_w.shape, std, grad_w.dtype)
                grad_b = grad_b + randomness.gaussian(grad_b.shape, std, grad_b.dtype)
            velocity_w.mul_(momentum).add_(grad_w / expected_batch)
            velocity_b.mul_(momentum).add_(grad_b / expected_batch)
            weight.sub_(learning_rate * velocity_w)
            bias.sub_(learning_rate * velocity_b)
            if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
                # Acting on the parameters only (post-processing of what DP released): back to
                # where the probe started, and no more steps on these features.
                weight.copy_(start_w)
                bias.copy_(start_b)
                nonfinite_at = step + 1
                return _ProbeRun(losses, empty, nonfinite_at)
            if step >= steps // 2:
                sum_w.add_(weight)
                sum_b.add_(bias)
                averaged += 1
            if on_step is not None:
                on_step(step + 1, losses[-1])
        if averaged:
            weight.copy_(sum_w / averaged)
            bias.copy_(sum_b / averaged)
    return _ProbeRun(losses, empty, nonfinite_at)
