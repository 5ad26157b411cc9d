"""Replaying the frozen lower layers' outputs (fedmask.adapter.prefix).

The replay must not change what is computed: the same logits, per-record gradients and trained
adapter. A replayed batch differs from the whole forward only at its padding positions, which the
attention mask and mean pooling weigh by exactly zero, so every real position gets the same
numbers; the kernels may still round them differently (measured here: equal bit for bit in
evaluation, within 6e-7 relative in training), so gradients are compared normwise within the
float32 rounding bound of ``fedmask.testing.tolerances`` (1.5e-4 for MiniLM), which a real fault
(a layer run twice, a wrong record) exceeds by orders of magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedmask.adapter.config import ConfigError, TrainingConfig
from fedmask.adapter.model import _is_head_parameter, build_adapter_model
from fedmask.adapter.prefix import FrozenPrefix, first_trainable_layer
from fedmask.adapter.vector import trainable_named_parameters
from fedmask.participant.trainer import LocalTrainer, _collate
from fedmask.testing.tolerances import normwise_errors, rounding_tolerance


def _trainer(minilm_path: str, **settings) -> LocalTrainer:
    config = TrainingConfig(model_path=minilm_path, lora_layers=2, noise_seed=0, accountant="rdp", **settings)
    trainer = LocalTrainer(config)
    # Off the initialisation: with LoRA-B at zero the adapted layers would change nothing.
    shift = np.random.default_rng(1).normal(0, 0.05, trainer.spec.size).astype(np.float32)
    trainer.set_adapter_vector(trainer.initial_vector + shift)
    return trainer


def _batch(trainer: LocalTrainer, records) -> tuple[torch.Tensor, ...]:
    encoded = trainer.encode(records)
    return _collate(trainer.tokenizer.pad_token_id)(list(zip(encoded.input_ids, encoded.labels, strict=True)))


def test_lora_layers_adapts_only_the_top_layers(minilm_path: str) -> None:
    built = build_adapter_model(TrainingConfig(model_path=minilm_path, lora_layers=2))
    names = [name for name, _ in trainable_named_parameters(built.model)]
    layers = {int(name.split(".encoder.layer.")[1].split(".")[0]) for name in names if ".encoder.layer." in name}
    assert layers == {4, 5}
    assert all(".encoder.layer." in name or _is_head_parameter(name) for name in names)
    assert first_trainable_layer(built.model, _is_head_parameter) == 4
    with pytest.raises(ConfigError, match="lora_layers is 7, but the model has 6 layers"):
        build_adapter_model(TrainingConfig(model_path=minilm_path, lora_layers=7))
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="lora_layers must be a positive number of layers"):
            TrainingConfig(lora_layers=bad)
    for bad in (True, 1.5):
        with pytest.raises(ConfigError, match=f"lora_layers: expected an integer or null, got {bad}"):
            TrainingConfig(lora_layers=bad)
    with pytest.raises(ConfigError, match="lora_layers applies to LoRA; mode 'bitfit'"):
        TrainingConfig(mode="bitfit", lora_layers=2)


def test_every_layer_adapting_or_a_trainable_embedding_means_no_replay(minilm_path: str) -> None:
    everywhere = LocalTrainer(TrainingConfig(model_path=minilm_path))
    assert everywhere.prefix is None
    built = build_adapter_model(TrainingConfig(model_path=minilm_path, lora_layers=2))
    embeddings = next(m for name, m in built.model.named_modules() if name.endswith("embeddings"))
    embeddings.LayerNorm.bias.requires_grad = True  # feeds the layers below the adapted ones
    assert first_trainable_layer(built.model, _is_head_parameter) is None


def test_a_replayed_forward_gives_the_whole_forwards_logits(minilm_path: str, demo_records) -> None:
    trainer = _trainer(minilm_path)
    assert trainer.prefix is not None and trainer.prefix.first == 4
    batch = _batch(trainer, demo_records("bank", 40, seed=3))  # lengths differ: padding in the batch
    assert bool((batch[1] == 0).any())
    trainer.model.eval()
    with torch.no_grad():
        whole = trainer.model(input_ids=batch[0], attention_mask=batch[1]).logits
        replayed_before = trainer.prefix.replayed_batches
        replayed = trainer.model(input_ids=batch[0], attention_mask=batch[1]).logits
    assert trainer.prefix.replayed_batches == replayed_before + 1
    errors = normwise_errors({"logits": replayed}, {"logits": whole})
    assert bool((errors <= rounding_tolerance(trainer.model.config)).all()), errors.tolist()


def test_a_wrong_replay_is_caught_before_it_is_used(minilm_path: str, monkeypatch) -> None:
    """An encoder that does not walk its layer list in order (here: the skip is ignored, so the
    kept states would go through the lower layers again) fails the check, and is not replayed."""
    from fedmask.adapter import prefix as prefix_module

    monkeypatch.setattr(prefix_module._LayerStack, "__iter__", nn.ModuleList.__iter__)
    trainer = LocalTrainer(TrainingConfig(model_path=minilm_path, lora_layers=2))
    assert trainer.prefix is None


@pytest.mark.parametrize("clipping", ["ew", "hooks"])
def test_per_record_gradients_are_the_same_with_the_replay(minilm_path: str, demo_records, clipping: str) -> None:
    records = demo_records("hospital-b", 60, seed=2)
    pool, probe = records[:50], records[:6]
    trainer = _trainer(minilm_path, batch_size=8, max_grad_norm=0.05, clipping=clipping)
    trainer.prepare(pool)
    assert trainer.clipping == clipping
    assert trainer.prefix is not None
    trainer.prefix.enabled = False
    whole = trainer.per_sample_gradients(probe)
    trainer.prefix.enabled = True
    trainer.evaluate(probe)  # keeps their lower layers' outputs
    replayed_before = trainer.prefix.replayed_batches
    replayed = trainer.per_sample_gradients(probe)
    assert trainer.prefix.replayed_batches > replayed_before
    errors = normwise_errors(replayed, whole)
    tolerance = rounding_tolerance(trainer.model.config)
    assert bool((errors <= tolerance).all()), errors.tolist()
    # The comparison has teeth: kept states 1% off (a stale or wrong prefix) move every record.
    for key in list(trainer.prefix._states):
        trainer.prefix._states[key] = trainer.prefix._states[key] * 1.01
    stale = normwise_errors(trainer.per_sample_gradients(probe), whole)
    assert bool((stale > 10 * tolerance).all()), stale.tolist()


def test_a_training_round_is_the_same_with_the_replay(minilm_path: str, demo_records) -> None:
    records = demo_records("hospital-a", 120, seed=5)
    updates = []
    for replay in (False, True):
        trainer = _trainer(minilm_path, batch_size=32, epochs=2.0)
        assert trainer.prefix is not None
        trainer.prefix.enabled = replay
        start = trainer.adapter_vector()
        trainer.train(records)
        updates.append(torch.from_numpy(trainer.adapter_vector() - start)[None])
        assert (trainer.prefix.replayed_batches > 0) is replay
    # The same start, sampling and noise: rounding apart, the same update (probe and adapter steps).
    moved, replayed = {"update": updates[0]}, {"update": updates[1]}
    error = normwise_errors(replayed, moved)
    assert float(error) <= rounding_tolerance(trainer.model.config), float(error)


def test_kept_states_stop_at_the_memory_cap(minilm_path: str, demo_records) -> None:
    trainer = _trainer(minilm_path)
    prefix = trainer.prefix
    assert isinstance(prefix, FrozenPrefix)
    prefix.max_bytes = 1  # the first batch's states, then nothing more
    trainer.evaluate(demo_records("bank", 10, seed=1), batch_size=5)
    kept = len(prefix._states)
    assert kept == 5


def test_a_forward_that_fails_after_a_replay_leaves_no_skip_behind(minilm_path: str, demo_records) -> None:
    from fedmask.adapter.prefix import _layer_list

    trainer = _trainer(minilm_path)
    seen = _batch(trainer, demo_records("bank", 8, seed=3))
    fresh = _batch(trainer, demo_records("hospital-a", 8, seed=4))
    found = _layer_list(trainer.model)
    assert found is not None and trainer.prefix is not None
    top_layer = found[2][5]

    def fail(module: nn.Module, args: tuple) -> None:
        raise RuntimeError("out of memory in the top layer")

    trainer.model.eval()
    with torch.no_grad():
        trainer.prefix.enabled = False
        expected = trainer.model(input_ids=fresh[0], attention_mask=fresh[1]).logits
        trainer.prefix.enabled = True
        trainer.model(input_ids=seen[0], attention_mask=seen[1])  # keeps their lower layers' outputs
        hook = top_layer.register_forward_pre_hook(fail)
        with pytest.raises(RuntimeError, match="out of memory"):
            trainer.model(input_ids=seen[0], attention_mask=seen[1])  # replayed, then fails
        hook.remove()
        got = trainer.model(input_ids=fresh[0], attention_mask=fresh[1]).logits  # not kept: runs whole
    errors = normwise_errors({"logits": got}, {"logits": expected})
    assert bool((errors <= rounding_tolerance(trainer.model.config)).all()), errors.tolist()
