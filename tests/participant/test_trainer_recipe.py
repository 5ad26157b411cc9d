"""The DP training recipe's defences: the linear probe is a subsampled Gaussian mechanism at the
accounted noise and rate (clipped per record, noised at sigma * C, charged to the ledger), step
sizes scale with the noise, divergence is detected and reported, non-finite parameters are put
back, and a model that does not beat the majority baseline says so."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch
from torch import nn

from fedmask.adapter.config import (
    DEFAULT_LEARNING_RATES,
    STEP_NOISE,
    TrainingConfig,
    noise_calibrated_learning_rate,
)
from fedmask.participant.data import Record
from fedmask.participant.dp_random import DpRandomness
from fedmask.participant.ledger import PrivacyLedger, compute_epsilon
from fedmask.participant.probe import FeatureCache, linear_probe, loss_divergence
from fedmask.participant.trainer import LocalTrainer, _draw_from_csprng
from fedmask.participant.training import train_adapter, training_warnings


def _head(inputs: int, labels: int = 2) -> nn.Linear:
    head = nn.Linear(inputs, labels)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    return head


def _flat(head: nn.Linear) -> torch.Tensor:
    return torch.cat([head.weight.detach().flatten(), head.bias.detach().flatten()])


def _probe(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, **overrides) -> object:
    settings = dict(
        steps=1,
        sample_rate=1.0,
        learning_rate=1.0,
        momentum=0.0,
        noise_multiplier=1e-12,
        max_grad_norm=1.0,
        randomness=DpRandomness.reproducible("probe test"),
    )
    settings.update(overrides)
    return linear_probe(head, features, labels, **settings)


# --------------------------------------------------------------------------- the probe's mechanism


@pytest.mark.parametrize("max_grad_norm", [0.5, 1.0, 3.0])
def test_the_probe_clips_each_record_jointly_on_weight_and_bias(max_grad_norm: float) -> None:
    # One record with an enormous feature vector: unclipped, its gradient would move the head by
    # ~1e6. Clipped per record (weight and bias together), it moves it by lr * C / B at most.
    features = torch.zeros(8, 16)
    features[0] = 1e6
    labels = torch.zeros(8, dtype=torch.long)
    head = _head(16)
    before = _flat(head)
    _probe(head, features, labels, learning_rate=0.7, max_grad_norm=max_grad_norm)
    moved = float((_flat(head) - before).norm())
    bound = 0.7 * max_grad_norm * 8 / 8  # at most every record clipped at C, summed, / B = 8
    assert 0 < moved <= bound * (1 + 1e-5)
    # The huge record alone: its clipped gradient has norm C (the bias's share counted), so the
    # step is exactly lr * C / B -- clipping neither skipped nor applied to the weight only.
    alone = _head(16)
    _probe(alone, features[:1], labels[:1], learning_rate=0.7, max_grad_norm=max_grad_norm)
    assert float(_flat(alone).norm()) == pytest.approx(0.7 * max_grad_norm, rel=1e-4)


def test_without_noise_the_probe_step_is_the_mean_clipped_gradient() -> None:
    # Small inputs are not clipped: the step is plain SGD on the mean cross-entropy.
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(6, 5, generator=generator) * 0.05
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    head = _head(5)
    reference = _head(5)
    nn.functional.cross_entropy(reference(features), labels).backward()
    _probe(head, features, labels, learning_rate=0.5, max_grad_norm=100.0)
    expected = -0.5 * torch.cat([reference.weight.grad.flatten(), reference.bias.grad.flatten()])
    assert torch.allclose(_flat(head), expected, atol=1e-6)


def test_the_probe_adds_gaussian_noise_of_std_lr_sigma_c_over_b() -> None:
    # Zero gradient: features 0 and a bias that already predicts every label with certainty,
    # so the whole update is noise: each coordinate N(0, (lr * sigma * C / B)^2).
    inputs, count = 2000, 4
    features = torch.zeros(count, inputs)
    labels = torch.zeros(count, dtype=torch.long)
    head = _head(inputs)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([1e4, -1e4]))
    before = _flat(head)
    lr, sigma, clip = 0.3, 2.0, 0.5
    _probe(head, features, labels, learning_rate=lr, noise_multiplier=sigma, max_grad_norm=clip)
    update = _flat(head) - before
    coordinates = update.numel()  # 2 * 2000 + 2
    expected = lr * sigma * clip / count
    # The sample std of k normal values has relative standard error ~ 1 / sqrt(2k) (~1.1% here);
    # 5 standard errors either side.
    tolerance = 5 / math.sqrt(2 * coordinates)
    assert float(update.std()) == pytest.approx(expected, rel=tolerance)
    assert abs(float(update.mean())) < 5 * expected / math.sqrt(coordinates)
    # The noise comes from the randomness given: the same key draws the same noise.
    again = _head(inputs)
    with torch.no_grad():
        again.bias.copy_(torch.tensor([1e4, -1e4]))
    _probe(again, features, labels, learning_rate=lr, noise_multiplier=sigma, max_grad_norm=clip)
    assert torch.equal(_flat(again), _flat(head))


def _opacus_parts(noise_multiplier: float, max_grad_norm: float, parameter: nn.Parameter):
    from types import SimpleNamespace

    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    optimizer = DPOptimizer(
        torch.optim.SGD([parameter], lr=1.0),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=8,
    )
    loader = SimpleNamespace(batch_sampler=UniformWithReplacementSampler(num_samples=50, sample_rate=0.1))
    return optimizer, loader


def test_opacus_steps_add_noise_of_std_sigma_c_from_the_rounds_randomness() -> None:
    """The fine-tuning steps' noise is drawn by the trainer (not Opacus's generator): each
    coordinate of a clipped gradient sum gets N(0, (sigma * C)^2)."""
    parameter = nn.Parameter(torch.zeros(200, 100))
    sigma, clip = 1.7, 0.3
    optimizer, loader = _opacus_parts(sigma, clip, parameter)
    randomness = DpRandomness.reproducible("opacus noise")
    _draw_from_csprng(optimizer, loader, lambda: randomness)
    parameter.summed_grad = torch.zeros_like(parameter)
    optimizer.add_noise()
    noise = parameter.grad.flatten()
    count = noise.numel()
    # The sample std of n normals has relative standard error ~ 1 / sqrt(2n): 5 of them.
    assert float(noise.std()) == pytest.approx(sigma * clip, rel=5 / math.sqrt(2 * count))
    assert abs(float(noise.mean())) < 5 * sigma * clip / math.sqrt(count)
    expected = DpRandomness.reproducible("opacus noise").gaussian(parameter.shape, sigma * clip, torch.float32)
    assert torch.equal(parameter.grad, expected)


def test_opacus_batches_are_drawn_from_the_rounds_randomness() -> None:
    optimizer, loader = _opacus_parts(1.0, 1.0, nn.Parameter(torch.zeros(3)))
    randomness = DpRandomness.reproducible("opacus batches")
    _draw_from_csprng(optimizer, loader, lambda: randomness)
    batches = list(loader.batch_sampler)
    again = DpRandomness.reproducible("opacus batches")
    assert len(batches) == 10  # Opacus's steps per pass: 1 / sample_rate
    assert batches == [again.poisson_mask(50, 0.1).nonzero().reshape(-1).tolist() for _ in range(10)]


def test_an_optimizer_that_adds_its_own_noise_is_refused() -> None:
    from types import SimpleNamespace

    from opacus.optimizers import AdaClipDPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    adaptive = AdaClipDPOptimizer(
        torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=1.0),
        noise_multiplier=1.0,
        target_unclipped_quantile=0.5,
        clipbound_learning_rate=0.2,
        max_clipbound=10.0,
        min_clipbound=0.1,
        unclipped_num_std=1.0,
        max_grad_norm=1.0,
        expected_batch_size=8,
    )
    loader = SimpleNamespace(batch_sampler=UniformWithReplacementSampler(num_samples=5, sample_rate=0.5))
    with pytest.raises(RuntimeError, match="AdaClipDPOptimizer adds its noise its own way"):
        _draw_from_csprng(adaptive, loader, DpRandomness.fresh)


def test_the_probe_samples_records_by_poisson_sampling_at_the_rate_given() -> None:
    # Each step includes each record independently with probability q (Opacus's sampler):
    # with q = 0.25 over 400 steps of 40 records, about 10 per step and some steps with none.
    count, steps, rate = 40, 400, 0.25
    seen: list[float] = []
    features = torch.zeros(count, 3)
    labels = torch.zeros(count, dtype=torch.long)
    run = _probe(_head(3), features, labels, steps=steps, sample_rate=rate, on_step=lambda s, loss: seen.append(loss))
    assert len(seen) == steps
    empty_expected = steps * (1 - rate) ** count  # ~0.004 steps: a nearly empty count
    assert run.empty <= max(2, 10 * empty_expected)  # type: ignore[attr-defined]
    tiny = _probe(_head(3), features[:2], labels[:2], steps=steps, sample_rate=rate)
    expected_empty = steps * (1 - rate) ** 2  # 225
    assert abs(tiny.empty - expected_empty) < 5 * math.sqrt(steps * 0.5625 * 0.4375)  # type: ignore[attr-defined]


def test_non_finite_head_parameters_are_put_back_and_the_probe_stops() -> None:
    features = torch.full((4, 8), 1e30)
    labels = torch.tensor([0, 1, 0, 1])
    head = _head(8)
    with torch.no_grad():
        head.weight.normal_()
    start = _flat(head).clone()
    run = _probe(head, features, labels, steps=5, learning_rate=1e38, noise_multiplier=1.0, max_grad_norm=1e38)
    assert run.nonfinite_at >= 1  # type: ignore[attr-defined]
    assert torch.equal(_flat(head), start)


# --------------------------------------------------------------------------- step sizes, divergence


def test_noise_calibrated_learning_rate_keeps_the_noise_step_constant() -> None:
    rate = noise_calibrated_learning_rate(
        2.0, 0.3, noise_multiplier=2.4, max_grad_norm=1.0, expected_batch_size=16, parameters=770
    )
    noise_norm = 2.4 * 1.0 * math.sqrt(770) / 16
    assert rate == pytest.approx(0.3 / noise_norm)
    assert rate * noise_norm == pytest.approx(0.3)
    # Four times the batch or a quarter of the noise: four times the rate (the noise step is the same).
    bigger = noise_calibrated_learning_rate(
        2.0, 0.3, noise_multiplier=2.4, max_grad_norm=1.0, expected_batch_size=64, parameters=770
    )
    quieter = noise_calibrated_learning_rate(
        2.0, 0.3, noise_multiplier=0.6, max_grad_norm=1.0, expected_batch_size=16, parameters=770
    )
    assert bigger == pytest.approx(4 * rate) and quieter == pytest.approx(4 * rate)
    # Capped by what a noiseless step uses; no noise at all: the cap.
    assert noise_calibrated_learning_rate(
        2.0, 0.3, noise_multiplier=0.01, max_grad_norm=1.0, expected_batch_size=5000, parameters=770
    ) == pytest.approx(2.0)
    assert (
        noise_calibrated_learning_rate(
            2.0, 0.3, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=64, parameters=770
        )
        == 2.0
    )


def test_loss_divergence_on_rising_flat_and_non_finite_losses() -> None:
    assert loss_divergence([0.7, 0.69, 0.71, 0.68, 0.7, 0.69, 0.7, 0.66]) == ""  # flat
    assert loss_divergence([0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.3]) == ""  # learning
    rising = loss_divergence([0.7, 0.8, 1.5, 3.0, 8.0, 20.0, 60.0, 200.0])
    assert rising.startswith("the loss rose from")
    assert loss_divergence([0.7, 0.7, float("inf"), 0.7]) == "the loss became infinite"
    # Empty Poisson batches (NaN) are skipped, not read as divergence; short runs say nothing.
    assert loss_divergence([0.7, float("nan"), 0.69, float("nan"), 0.68, 0.7]) == ""
    assert loss_divergence([0.7, 50.0]) == ""
    # Noise wobble around a level loss is not divergence: twice and one nat above are both needed.
    assert loss_divergence([0.1, 0.1, 0.25, 0.25]) == ""  # 2.5x but +0.15
    assert loss_divergence([2.0, 2.0, 3.5, 3.5]) == ""  # +1.5 but 1.75x


def test_the_warning_says_when_the_model_does_not_beat_the_majority() -> None:
    scores = {
        "task": "classification",
        "num_labels": 2,
        "balanced_accuracy": 0.52,
        "ci95": {"balanced_accuracy": [0.47, 0.57]},
        "count": 200,
    }
    lines = training_warnings("", scores)
    assert len(lines) == 1 and "does NOT beat the majority baseline" in lines[0]
    assert training_warnings("", {**scores, "ci95": {"balanced_accuracy": [0.55, 0.65]}}) == []
    diverged = training_warnings("the loss became infinite", None)
    assert diverged == ["training diverged: the loss became infinite"]


def test_the_feature_cache_keeps_the_latest_encoder_states_only() -> None:
    cache = FeatureCache(max_states=2)
    for state in ("round-1", "round-2", "round-3"):
        cache.put(state, "a record", torch.ones(3))
    assert cache.get("round-1", "a record") is None
    assert cache.get("round-3", "a record") is not None and len(cache) == 2


# --------------------------------------------------------------------------- end to end


def test_probe_steps_are_charged_and_a_model_without_signal_says_so(minilm_path: str, demo_records) -> None:
    # Random labels: nothing to learn, so the held-out scores cannot lie above chance, and the
    # report must say so. Every step of the round -- the probe's included -- is charged.
    rng = random.Random(5)
    train = [Record(text=r.text, label=rng.randrange(2)) for r in demo_records("bank", 60, seed=3)]
    heldout = [Record(text=r.text, label=rng.randrange(2)) for r in demo_records("bank", 100, seed=4, split=None)]
    config = TrainingConfig(
        model_path=minilm_path,
        mode="bitfit",
        accountant="rdp",
        batch_size=8,
        local_steps=8,
        max_seq_len=24,
        noise_seed=2,
    )
    ledger = PrivacyLedger(accountant="rdp", epsilon_budget=config.target_epsilon, delta=config.target_delta)
    trainer = LocalTrainer(config, ledger=ledger)
    head_before = _flat(trainer.head.layer).clone()  # type: ignore[union-attr]
    result = train_adapter(config, train, heldout=heldout, ledger=ledger, trainer=trainer)
    report = result.report
    plan = ledger.plan
    assert plan is not None
    assert report["steps"] == 8 and report["probe_steps"] == 6
    assert ledger.steps == 8
    assert report["epsilon"] == pytest.approx(
        compute_epsilon("rdp", [(plan.noise_multiplier, plan.sample_rate, 8)], config.target_delta), rel=1e-9
    )
    # Opacus's own accountant saw the fine-tuning steps only: the probe's are the ledger's alone.
    assert sum(h[2] for h in trainer._private.engine.accountant.history) == 2  # type: ignore[union-attr]
    assert not torch.equal(_flat(trainer.head.layer), head_before)  # type: ignore[union-attr]
    # Rates left unset are scaled to the noise: the head's step of pure noise is STEP_NOISE long.
    head_params = trainer.head.layer.weight.numel() + trainer.head.layer.bias.numel()  # type: ignore[union-attr]
    expected_batch = plan.sample_rate * plan.num_records
    assert report["step_sizes"]["head"] == pytest.approx(
        min(
            DEFAULT_LEARNING_RATES["sgd"]["head"],
            STEP_NOISE["head"] * expected_batch / (plan.noise_multiplier * plan.max_grad_norm * math.sqrt(head_params)),
        )
    )
    assert 0 < report["step_sizes"]["adapter"] <= DEFAULT_LEARNING_RATES["sgd"]["bitfit"]
    # Rates given are used as they are.
    trainer.config = dataclasses.replace(config, learning_rate=0.05, head_learning_rate=1.5)
    assert trainer.step_sizes(plan.noise_multiplier, expected_batch) == {"adapter": 0.05, "head": 1.5}
    assert report["beats_majority"] is False
    assert any("does NOT beat the majority baseline" in line for line in report["warnings"])
    assert report["diverged"] is None


def test_non_finite_parameters_in_fine_tuning_are_put_back(tiny_qwen2_path: str, demo_records) -> None:
    # An absurd rate overflows the adapter on the first step: the parameters go back to where
    # the phase started, the rest of the round is skipped, the report says so -- and the
    # steps stay charged.
    config = TrainingConfig(
        model_path=tiny_qwen2_path,
        task="causal_lm",
        mode="lora",
        accountant="rdp",
        batch_size=1,
        local_steps=3,
        max_seq_len=16,
        lora_rank=2,
        learning_rate=1e38,
        noise_seed=0,
    )
    trainer = LocalTrainer(config)
    before = trainer.adapter_vector().copy()
    result = trainer.train(demo_records("bank", 50, seed=1))
    assert result.diverged.startswith("the parameters became non-finite at step")
    assert (trainer.adapter_vector() == before).all()
    assert trainer.ledger.steps == 3
