"""Opacus's per-record gradients and clipping against an explicit per-record loop.

A fast but wrong per-sample gradient is how Opacus + peft silently corrupted LoRA training
(opacus#820): the DP guarantee and the learning both rest on these numbers, so each mode that
can run is compared here, for both adapters and both model families.

The reference runs in float64, so its own rounding is negligible, and the comparison is
normwise per record: ||g_opacus - g_ref|| <= tol * ||g_ref||. Opacus (float32, its own summation
order, BLAS kernels of the machine) may differ from a per-record loop element by element by
more than any fixed absolute tolerance on small entries; what it may not do is move a record's
gradient vector. ``rounding_tolerance`` says how far float32 rounding alone can move it.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fedmask.adapter.config import TrainingConfig
from fedmask.adapter.vector import trainable_named_parameters
from fedmask.participant.trainer import LocalTrainer, _collate, per_sequence_loss
from fedmask.testing.tolerances import normwise_errors, rounding_tolerance

CLIP = 0.05  # small enough that every record's gradient is clipped


def _config(model: str, task: str, mode: str, clipping: str) -> TrainingConfig:
    # Prepared on 50 records at batch size 1 (sample rate 0.02: a quick noise search).
    return TrainingConfig(
        model_path=model,
        task=task,
        mode=mode,
        clipping=clipping,
        accountant="rdp",
        local_steps=1,
        batch_size=1,
        max_seq_len=24,
        max_grad_norm=CLIP,
        noise_seed=0,
        lora_rank=4,
    )


def _explicit_per_record_gradients(trainer: LocalTrainer, records: list) -> dict[str, torch.Tensor]:
    """One forward/backward per record through a float64 copy of the plain (unwrapped) peft
    model: the reference, with rounding errors some 10^9 times below float32's."""
    model = copy.deepcopy(trainer.model).double()
    encoded = trainer.encode(records)
    collate = _collate(trainer.tokenizer.pad_token_id)
    params = trainable_named_parameters(model)
    rows: dict[str, list[torch.Tensor]] = {name: [] for name, _ in params}
    for ids, label in zip(encoded.input_ids, encoded.labels, strict=True):
        model.zero_grad(set_to_none=True)
        batch = collate([(ids, label)])
        logits = model(input_ids=batch[0], attention_mask=batch[1]).logits
        per_sequence_loss(trainer.config.task, logits, batch)[0].backward()
        for name, p in params:
            rows[name].append(p.grad.detach().clone())
    return {name: torch.stack(grads) for name, grads in rows.items()}


def _clipped_sum(per_record: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per_record.values()]).norm(dim=0)
    factor = (CLIP / (norms + 1e-6)).clamp(max=1.0)
    assert bool((factor < 1).all()), "the test needs every record clipped"
    return {name: torch.einsum("i,i...->...", factor, g) for name, g in per_record.items()}


# What "auto" picks: expanded weights for LoRA, hooks with bias-only grad samplers for BiTFiT
# (they keep no layer inputs). Each model and adapter runs its default through "auto" in the
# default suite, one other mode of each adapter too; every mode runs in the slow suite.
DEFAULT_CLIPPING = {"lora": "ew", "bitfit": "hooks"}
_QUICK = {("qwen2", "lora", "ghost"), ("qwen2", "bitfit", "ew")}
CASES = [
    pytest.param(
        model,
        task,
        mode,
        clipping,
        id=f"{model}-{mode}-{clipping}" + ("-auto" if clipping == DEFAULT_CLIPPING[mode] else ""),
        marks=() if clipping == DEFAULT_CLIPPING[mode] or (model, mode, clipping) in _QUICK else pytest.mark.slow,
    )
    for model, task in (("minilm", "classification"), ("qwen2", "causal_lm"))
    for mode in ("lora", "bitfit")
    for clipping in ("ew", "hooks", "ghost")
]


@pytest.mark.parametrize(("model", "task", "mode", "clipping"), CASES)
def test_opacus_matches_per_record_loop(
    model: str,
    task: str,
    mode: str,
    clipping: str,
    minilm_path: str,
    tiny_qwen2_path: str,
    demo_records,
) -> None:
    path = minilm_path if model == "minilm" else tiny_qwen2_path
    party = "hospital-a" if model == "minilm" else "bank"
    pool = demo_records(party, 80, seed=4)[:50]
    records = pool[:5]
    asked = "auto" if clipping == DEFAULT_CLIPPING[mode] else clipping
    trainer = LocalTrainer(_config(path, task, mode, asked))
    # Move off the initialisation: with LoRA-B at zero, LoRA-A's gradient is zero too.
    shift = np.random.default_rng(1).normal(0, 0.05, trainer.spec.size).astype(np.float32)
    trainer.set_adapter_vector(trainer.initial_vector + shift)
    # The reference first, on the model before Opacus wraps it.
    expected = _explicit_per_record_gradients(trainer, records)
    assert all(bool(g.abs().sum() > 0) for g in expected.values())
    trainer.prepare(pool)
    assert trainer.clipping == clipping

    tolerance = rounding_tolerance(trainer.model.config)

    if clipping != "ghost":  # ghost clipping never builds per-record gradients
        got = trainer.per_sample_gradients(records)
        errors = normwise_errors(got, expected)
        assert bool((errors <= tolerance).all()), f"per-record errors {errors.tolist()} > {tolerance:.2e}"

    # The clipped sum: every record contributes a vector of norm CLIP, so float32 rounding can
    # move the sum by at most tolerance * len(records) * CLIP.
    clipped = trainer.clipped_gradient_sum(records)
    reference = _clipped_sum(expected)
    error = normwise_errors({k: v[None] for k, v in clipped.items()}, {k: v[None] for k, v in reference.items()})
    reference_norm = torch.cat([v.flatten() for v in reference.values()]).norm()
    bound = tolerance * len(records) * CLIP / reference_norm
    assert float(error) <= float(bound), f"clipped-sum error {float(error):.2e} > {float(bound):.2e}"


def test_the_comparison_catches_real_bugs(minilm_path: str, demo_records) -> None:
    """The normwise check fails on the bugs it exists for: a record's gradient given to another
    record, and gradients scaled by 1% (a wrong batch-size or clip factor)."""
    trainer = LocalTrainer(_config(minilm_path, "classification", "lora", "ew"))
    shift = np.random.default_rng(1).normal(0, 0.05, trainer.spec.size).astype(np.float32)
    trainer.set_adapter_vector(trainer.initial_vector + shift)
    expected = _explicit_per_record_gradients(trainer, demo_records("hospital-a", 80, seed=4)[:3])
    tolerance = rounding_tolerance(trainer.model.config)
    float32 = {name: g.float() for name, g in expected.items()}
    assert bool((normwise_errors(float32, expected) <= tolerance).all())  # rounding alone passes
    swapped = {name: g[[1, 0, 2]] for name, g in float32.items()}
    assert bool((normwise_errors(swapped, expected)[:2] > 100 * tolerance).all())
    scaled = {name: 1.01 * g for name, g in float32.items()}
    assert bool((normwise_errors(scaled, expected) > 10 * tolerance).all())
