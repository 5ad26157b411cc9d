"""Per-sample gradients of bias-only layers without keeping their inputs (DP-BiTFiT's memory).

When only a layer's bias trains (DP-BiTFiT: every Linear and LayerNorm of the encoder, their
weights frozen), a record's bias gradient is its output gradient summed over positions; the
layer's input is not needed. Plain autograd knows this and keeps no such input. Opacus's hooks do
not: their forward hook stores every trainable layer's positional inputs for the grad sampler to
read, one ``batch x tokens x width`` tensor per layer (about 50 MB per step for MiniLM at 16 x 64
tokens, half again the plain step's peak).

:func:`use_bias_only_grad_samplers` retypes such layers in place to subclasses that (1) pass their
input to ``forward`` by keyword, which Opacus's forward hook (it sees positional arguments only)
does not capture, (2) record the batch size that Opacus otherwise reads off the captured input,
and (3) have a grad sampler registered that reads only the output gradient. Parameters, names,
state dict and the computed function are unchanged; only what is kept between forward and
backward differs. Only Opacus's ``hooks`` mode uses it: expanded weights (``ew``) and ghost
clipping capture inputs by other means.
"""

from __future__ import annotations

import warnings

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn

__all__ = ["BiasOnlyLayerNorm", "BiasOnlyLinear", "is_bias_only", "use_bias_only_grad_samplers"]


class BiasOnlyLinear(nn.Linear):  # type: ignore[misc]  # torch is untyped for mypy here
    """A Linear whose weight is frozen: Opacus computes its bias's per-sample gradient from the
    output gradient alone (see the module's docstring)."""

    def __call__(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Linear's name
        self.max_batch_len = input.shape[0]  # read by Opacus in place of the uncaptured input
        return super().__call__(input=input)


class BiasOnlyLayerNorm(nn.LayerNorm):  # type: ignore[misc]
    """A LayerNorm whose weight is frozen; as :class:`BiasOnlyLinear`."""

    def __call__(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.LayerNorm's name
        self.max_batch_len = input.shape[0]
        return super().__call__(input=input)


# Expected, not a fault: a retyped layer's input reaches forward by keyword, so its backward hook
# fires on the output gradient alone, which is all a bias needs.
warnings.filterwarnings(
    "ignore", message="Full backward hook is firing when gradients are computed with respect to module outputs"
)

_RETYPED: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: BiasOnlyLinear,
    nn.LayerNorm: BiasOnlyLayerNorm,
}


@register_grad_sampler([BiasOnlyLinear, BiasOnlyLayerNorm])  # type: ignore[untyped-decorator]
def _bias_grad_sample(
    layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """d loss_i / d bias = the record's output gradient summed over every position (Opacus's own
    formula for a Linear's or LayerNorm's bias)."""
    if activations:
        raise RuntimeError(f"{type(layer).__name__} was called with a captured input; expected none")
    bias = layer.bias
    if layer.weight is not None and layer.weight.requires_grad:
        raise RuntimeError(f"{type(layer).__name__}'s weight trains; only its bias may")
    if bias is None or not bias.requires_grad:
        return {}
    return {bias: torch.einsum("n...k->nk", backprops)}


def is_bias_only(module: nn.Module) -> bool:
    """A Linear or LayerNorm (exactly those types) whose bias trains and whose weight does not."""
    if type(module) not in _RETYPED:
        return False
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    return bias is not None and bias.requires_grad and (weight is None or not weight.requires_grad)


def use_bias_only_grad_samplers(model: nn.Module) -> int:
    """Retype every bias-only Linear and LayerNorm of ``model`` in place; return how many."""
    layers = [module for module in model.modules() if is_bias_only(module)]
    for module in layers:
        module.__class__ = _RETYPED[type(module)]
    return len(layers)
