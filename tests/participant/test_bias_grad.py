"""Bias-only per-sample gradients: the same numbers as Opacus's own grad samplers, without the
captured layer inputs that made DP-BiTFiT's step 1.5x the plain step's memory."""

from __future__ import annotations

import copy

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from fedmask.participant.bias_grad import (
    BiasOnlyLayerNorm,
    BiasOnlyLinear,
    is_bias_only,
    use_bias_only_grad_samplers,
)

BATCH, TOKENS, WIDTH = 4, 7, 12


class _Block(nn.Module):
    """Bias-only layers (as DP-BiTFiT leaves an encoder) before a fully trainable head."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(WIDTH, 3 * WIDTH)
        self.down = nn.Linear(3 * WIDTH, WIDTH)
        self.norm = nn.LayerNorm(WIDTH)
        self.frozen = nn.Linear(WIDTH, WIDTH)  # nothing trains: left alone
        self.head = nn.Linear(WIDTH, 3)  # weight and bias train: Opacus's own sampler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x + self.down(torch.nn.functional.gelu(self.up(x))))
        return self.head(self.frozen(h).mean(dim=1))


def _bitfit_block(seed: int = 0) -> _Block:
    torch.manual_seed(seed)
    block = _Block()
    for name, p in block.named_parameters():
        p.requires_grad = name.endswith(".bias") and not name.startswith("frozen") or name.startswith("head")
    return block


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, TOKENS, WIDTH, generator=generator), torch.tensor([0, 1, 2, 1])


def _grad_samples(block: nn.Module) -> tuple[dict[str, torch.Tensor], GradSampleModule]:
    wrapped = GradSampleModule(block, batch_first=True, loss_reduction="mean")
    x, y = _inputs()
    nn.functional.cross_entropy(wrapped(x), y).backward()
    samples = {name: p.grad_sample.clone() for name, p in block.named_parameters() if p.requires_grad}
    return samples, wrapped


def test_only_bias_only_linears_and_norms_are_retyped() -> None:
    block = _bitfit_block()
    assert [name for name, m in block.named_modules() if is_bias_only(m)] == ["up", "down", "norm"]
    state = copy.deepcopy(block.state_dict())
    x, _ = _inputs()
    before = block(x)
    assert use_bias_only_grad_samplers(block) == 3
    assert (type(block.up), type(block.down), type(block.norm)) == (BiasOnlyLinear, BiasOnlyLinear, BiasOnlyLayerNorm)
    assert type(block.frozen) is nn.Linear and type(block.head) is nn.Linear
    # Same parameters under the same names, the same function bit for bit.
    assert list(block.state_dict()) == list(state)
    assert all(torch.equal(block.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(block(x), before)
    assert use_bias_only_grad_samplers(block) == 0  # already retyped: nothing to do


def test_per_sample_gradients_equal_opacus_own_bit_for_bit() -> None:
    expected, _ = _grad_samples(_bitfit_block())
    retyped = _bitfit_block()
    use_bias_only_grad_samplers(retyped)
    got, _ = _grad_samples(retyped)
    assert list(got) == list(expected) == ["up.bias", "down.bias", "norm.bias", "head.weight", "head.bias"]
    for name in expected:
        assert got[name].shape[0] == BATCH
        assert torch.equal(got[name], expected[name]), name


def _captured_input_bytes(wrapped: GradSampleModule, block: nn.Module) -> int:
    """What Opacus's forward hooks hold on the bias-only layers after a forward pass."""
    x, _ = _inputs()
    wrapped(x)
    layers = (block.up, block.down, block.norm)
    held = [t for m in layers for captured in getattr(m, "activations", []) for t in captured]
    return sum(t.numel() * t.element_size() for t in held)


def test_bias_only_layers_keep_no_inputs_between_forward_and_backward() -> None:
    plain = _bitfit_block()
    # Without the retyping Opacus keeps every bias-only layer's input (the memory this removes).
    assert _captured_input_bytes(GradSampleModule(plain, batch_first=True), plain) == 4 * BATCH * TOKENS * 5 * WIDTH
    retyped = _bitfit_block()
    use_bias_only_grad_samplers(retyped)
    assert _captured_input_bytes(GradSampleModule(retyped, batch_first=True), retyped) == 0


def test_a_trainable_weight_is_refused() -> None:
    block = _bitfit_block()
    use_bias_only_grad_samplers(block)
    block.up.weight.requires_grad = True
    with pytest.raises(RuntimeError, match="weight trains"):
        _grad_samples(block)
