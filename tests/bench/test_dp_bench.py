"""``fedmask bench dp``: the Qwen2.5-0.5B-shaped model is the published architecture's size."""

from __future__ import annotations

from fedmask.bench.dp_bench import QWEN25_05B_SHAPES


def test_the_qwen25_05b_shapes_give_its_published_parameter_count() -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B_SHAPES))
    parameters = sum(p.numel() for p in model.parameters())  # the tied embedding counted once
    # Qwen2.5-0.5B's model card: 0.49B parameters, 0.36B without the embedding.
    assert round(parameters / 1e9, 2) == 0.49
    embedding = model.get_input_embeddings().weight.numel()
    assert round((parameters - embedding) / 1e9, 2) == 0.36
    assert model.config.num_key_value_heads == 2 and model.config.tie_word_embeddings
