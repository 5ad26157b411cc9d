"""A tiny Qwen2 causal LM with a locally trained tokenizer, built without any download.

Tests and ``fedmask bench dp`` use it to exercise the decoder path (GQA, RoPE, SwiGLU, RMSNorm,
qkv bias: the architecture of Qwen2.5-7B) at a size that trains on a laptop CPU. The weights are
random (seeded); the tokenizer is a small BPE trained on the given texts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"


def build_tokenizer(texts: Iterable[str], directory: str | Path, *, vocab_size: int = 512) -> Path:
    """Train a byte-level BPE (Qwen2's kind) on ``texts``; save it as a Hugging Face tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)
    directory = Path(directory)
    fast.save_pretrained(directory)
    return directory


def build_tiny_qwen2(
    directory: str | Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised tiny Qwen2ForCausalLM and its tokenizer to ``directory``."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    directory = Path(directory)
    build_tokenizer(texts, directory, vocab_size=vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen2ForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.save_pretrained(directory)
    return directory
