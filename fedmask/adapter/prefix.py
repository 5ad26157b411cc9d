"""Replaying the outputs of an encoder's frozen lower layers.

With LoRA in the top layers only (``TrainingConfig.lora_layers``), every layer below the lowest
adapted one is the base model, frozen: its output for a record never changes while the adapter
trains. :class:`FrozenPrefix` keeps that output per token sequence the first time a batch runs
through the whole model, and from then on starts the encoder at the first adapted layer with the
kept states. Evaluation, the probe's features and every DP-SGD step then run only the adapted
layers (a third of MiniLM's six with ``lora_layers: 2``). Gradients are unchanged: nothing below
the first adapted layer has a trainable parameter, so its output is a constant of the step.

Only real (attended) positions are kept; a replayed batch has zeros at its padding positions,
which the attention mask keeps out of every real position's computation. An encoder whose
forward does not walk its layer list in order would not be fooled correctly, so a replay is
checked against the full forward once, on a fixed batch, before it is trusted
(:meth:`FrozenPrefix.verify`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# Kept states stop growing past this (about 10,000 records of 64 tokens at MiniLM's width).
DEFAULT_MAX_BYTES = 1 << 30


class _LayerStack(nn.ModuleList):  # type: ignore[misc]  # torch is typed as Any here
    """An encoder's layer list that, while ``skip`` is set, leaves out its first ``skip`` layers
    when iterated (as the encoder's forward does). Modules, names and state dict are unchanged."""

    skip = 0

    def __iter__(self) -> Iterator[nn.Module]:
        return itertools.islice(super().__iter__(), self.skip, None)


def _layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList] | None:
    """The module holding the model's transformer layers, the attribute name and the list."""
    total = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == total:
                return module, name, child
    return None


def first_trainable_layer(model: nn.Module, is_head: Callable[[str], bool]) -> int | None:
    """The index of the lowest transformer layer with a trainable parameter, when everything
    trainable lies in the layers from there on or in the task head (``is_head(name)``, after
    the encoder); None otherwise (a trainable embedding, say: no output below it is constant)."""
    found = _layer_list(model)
    if found is None:
        return None
    _, _, layers = found
    in_layers = {id(p): index for index, layer in enumerate(layers) for p in layer.parameters()}
    first = len(layers)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in in_layers:
            first = min(first, in_layers[id(p)])
        elif not is_head(name):
            return None
    return first


class FrozenPrefix:
    """Keeps and replays the output of an encoder's layers ``0 .. first - 1`` (hooked into a
    model by :meth:`install`)."""

    def __init__(self, encoder: nn.Module, layers: _LayerStack, first: int, max_bytes: int) -> None:
        self.first = first
        self.max_bytes = max_bytes
        self.enabled = True
        self.replayed_batches = 0
        self._layers = layers
        self._states: dict[bytes, torch.Tensor] = {}
        self._bytes = 0
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None  # input ids, attention mask
        self._keys: list[bytes] | None = None
        encoder.register_forward_pre_hook(self._replay, with_kwargs=True)
        encoder.register_forward_hook(self._done)
        layers[first - 1].register_forward_hook(self._keep)

    @classmethod
    def install(cls, model: nn.Module, first: int, max_bytes: int = DEFAULT_MAX_BYTES) -> FrozenPrefix | None:
        """Hook a replay of layers below ``first`` into ``model``'s encoder; None where the model
        has no layer list to replay or ``first`` is 0 (every layer adapts)."""
        found = _layer_list(model)
        if found is None or first < 1:
            return None
        owner, name, layers = found
        if first >= len(layers):
            return None
        stack = layers if isinstance(layers, _LayerStack) else _LayerStack(list(layers))
        setattr(owner, name, stack)
        prefix = cls(owner, stack, first, max_bytes)
        top = model.base_model if hasattr(model, "base_model") else model
        top.register_forward_pre_hook(prefix._inputs, with_kwargs=True)
        return prefix

    # --- hooks ---------------------------------------------------------------------------------

    def _inputs(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """The batch's token ids and mask, as the model is called with them."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self._batch = (ids, mask) if isinstance(ids, torch.Tensor) else None

    def _row_keys(self) -> list[bytes] | None:
        if self._batch is None:
            return None
        ids, mask = self._batch
        if mask is None:
            mask = torch.ones_like(ids)
        # The attended tokens and where they start (positions enter the embeddings).
        keys = []
        for row, attended in zip(ids, mask.bool(), strict=True):
            start = int(attended.nonzero()[0, 0]) if bool(attended.any()) else 0
            keys.append(start.to_bytes(4, "little") + row[attended].numpy().tobytes())
        return keys

    def _replay(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Every forward starts with the whole layer list: a forward that raised after a replay
        # never reached _done, and must not leave its skip to the next one.
        self._layers.skip = 0
        keys = self._row_keys() if self.enabled else None
        self._keys = keys
        if keys is None or any(key not in self._states for key in keys):
            return None  # the whole forward runs; _keep stores what layer first - 1 returns
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        assert self._batch is not None and isinstance(hidden, torch.Tensor)
        _, mask = self._batch
        replayed = torch.zeros_like(hidden)
        for row, key in enumerate(keys):
            positions = mask[row].bool() if mask is not None else slice(None)
            replayed[row, positions] = self._states[key]
        self._layers.skip = self.first
        self.replayed_batches += 1
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": replayed}
        return (replayed, *args[1:]), kwargs

    def _keep(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        keys, batch = self._keys, self._batch
        if keys is None or batch is None or self._bytes >= self.max_bytes:
            return
        states = output[0] if isinstance(output, tuple) else output
        _, mask = batch
        for row, key in enumerate(keys):
            if key not in self._states:
                positions = mask[row].bool() if mask is not None else slice(None)
                kept = states[row, positions].detach().clone()
                self._states[key] = kept
                self._bytes += kept.numel() * kept.element_size()

    def _done(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._layers.skip = 0
        self._batch = None
        self._keys = None

    # --- trust ---------------------------------------------------------------------------------

    def verify(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> bool:
        """Run ``model`` on a batch twice, whole and replayed, and keep replaying only if both give
        the same output (to float32 rounding). The batch's kept states are dropped afterwards."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                whole = _first_tensor(model(input_ids=input_ids, attention_mask=attention_mask))
                before = self.replayed_batches
                replayed = _first_tensor(model(input_ids=input_ids, attention_mask=attention_mask))
                ran = self.replayed_batches == before + 1
        finally:
            model.train(was_training)
            self.clear()
            self.replayed_batches = 0
        scale = float(whole.abs().max()) + 1.0
        agrees = ran and bool(torch.allclose(whole, replayed, rtol=0.0, atol=1e-5 * scale))
        if not agrees:
            self.enabled = False
            log.warning("replaying the frozen layers' outputs does not reproduce this model's forward: not used")
        return agrees

    def clear(self) -> None:
        self._states.clear()
        self._bytes = 0


def _first_tensor(output: Any) -> torch.Tensor:
    value = getattr(output, "logits", None)
    if value is None:
        value = output[0] if isinstance(output, tuple) else output
    return value.detach()
