"""Opacus's per-record gradients and clipping against an explicit per-record loop.

A fast but wrong per-sample gradient is how Opacus + peft silently corrupted LoRA training
(opacus#820): the DP guarantee and the learning both rest on these numbers, so each mode that
can run is compared here, for both adapters and both model families.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from participant.adapter_vector import trainable_named_parameters
from participant.training import LocalTrainer, TrainingConfig, _collate, per_sequence_loss

CLIP = 0.05  # small enough that every record's gradient is clipped


def _config(model: str, task: str, mode: str, clipping: str) -> TrainingConfig:
    # Prepared on 50 records at batch size 1 (sample rate 0.02: a quick noise search).
    return TrainingConfig(
        model_path=model, task=task, mode=mode, clipping=clipping, accountant="rdp",
        local_steps=1, batch_size=1, max_seq_len=24, max_grad_norm=CLIP, noise_seed=0,
        lora_rank=4,
    )


def _explicit_per_record_gradients(trainer: LocalTrainer, records: list) -> dict[str, torch.Tensor]:
    """One forward/backward per record through the plain (unwrapped) peft model."""
    encoded = trainer.encode(records)
    collate = _collate(trainer.tokenizer.pad_token_id)
    params = trainable_named_parameters(trainer.model)
    rows: dict[str, list[torch.Tensor]] = {name: [] for name, _ in params}
    for ids, label in zip(encoded.input_ids, encoded.labels, strict=True):
        trainer.model.zero_grad(set_to_none=True)
        batch = collate([(ids, label)])
        logits = trainer.model(input_ids=batch[0], attention_mask=batch[1]).logits
        per_sequence_loss(trainer.config.task, logits, batch)[0].backward()
        for name, p in params:
            rows[name].append(p.grad.detach().clone())
    trainer.model.zero_grad(set_to_none=True)
    return {name: torch.stack(grads) for name, grads in rows.items()}


def _clipped_sum(per_record: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per_record.values()]).norm(dim=0)
    factor = (CLIP / (norms + 1e-6)).clamp(max=1.0)
    assert bool((factor < 1).all()), "the test needs every record clipped"
    return {name: torch.einsum("i,i...->...", factor, g) for name, g in per_record.items()}


# The default mode (ew) on every model and adapter; the others on one each in the default
# suite, all of them in the slow one.
_QUICK = {("qwen2", "lora", "ghost"), ("qwen2", "bitfit", "hooks")}
CASES = [
    pytest.param(
        model, task, mode, clipping, id=f"{model}-{mode}-{clipping}",
        marks=() if clipping == "ew" or (model, mode, clipping) in _QUICK else pytest.mark.slow,
    )
    for model, task in (("minilm", "classification"), ("qwen2", "causal_lm"))
    for mode in ("lora", "bitfit")
    for clipping in ("ew", "hooks", "ghost")
]


@pytest.mark.parametrize(("model", "task", "mode", "clipping"), CASES)
def test_opacus_matches_per_record_loop(
    model: str, task: str, mode: str, clipping: str, minilm_path: str, tiny_qwen2_path: str,
    demo_records,
) -> None:
    path = minilm_path if model == "minilm" else tiny_qwen2_path
    party = "hospital-a" if model == "minilm" else "bank"
    pool = demo_records(party, 80, seed=4)[:50]
    records = pool[:5]
    trainer = LocalTrainer(_config(path, task, mode, clipping))
    # Move off the initialisation: with LoRA-B at zero, LoRA-A's gradient is zero too.
    shift = np.random.default_rng(1).normal(0, 0.05, trainer.spec.size).astype(np.float32)
    trainer.set_adapter_vector(trainer.initial_vector + shift)
    # The reference first, on the model before Opacus wraps it.
    expected = _explicit_per_record_gradients(trainer, records)
    assert all(bool(g.abs().sum() > 0) for g in expected.values())
    trainer.prepare(pool)
    assert trainer.clipping == clipping

    if clipping != "ghost":  # ghost clipping never builds per-record gradients
        got = trainer.per_sample_gradients(records)
        assert list(got) == list(expected)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-7,
                                       msg=lambda m, name=name: f"{name}: {m}")

    clipped = trainer.clipped_gradient_sum(records)
    reference = _clipped_sum(expected)
    for name in reference:
        torch.testing.assert_close(clipped[name], reference[name], rtol=1e-4, atol=1e-8,
                                   msg=lambda m, name=name: f"{name}: {m}")
