"""The base model with its adapter, built the same way by every party.

The participant trains this model; the coordinator builds it once to make the initial adapter
(:func:`initial_adapter`); anyone loads a trained adapter onto it (:func:`load_trained_model`).
Encoders classify from the masked mean of their token states (:func:`use_mean_pooling`), the
pooling all-MiniLM-L6-v2 was trained for.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmask.adapter.config import DEFAULT_LORA_TARGETS, ConfigError, TrainingConfig
from fedmask.adapter.vector import (
    VectorSpec,
    model_vector,
    spec_of,
    trainable_named_parameters,
)

_HEAD_NAMES = ("classifier", "score", "lm_head")

# What building any model here imports, whatever its architecture: transformers' model and
# generation base classes, attention masks, fast tokenizers and AutoTokenizer's tables, and peft
# for the adapter.
MODEL_CODE = (
    "transformers.modeling_utils",
    "transformers.generation.utils",
    "transformers.masking_utils",
    "transformers.tokenization_utils_fast",
    "transformers.models.auto.tokenization_auto",
    "peft",
)


def import_model_code() -> float:
    """Import :data:`MODEL_CODE`, reading no model; returns the seconds it took.

    A process's first model load is mostly Python importing this code (1.2-1.5 s of MiniLM's
    1.7 s on a 2-core machine; with it imported, MiniLM with its adapter builds in 0.3 s). A
    participant node imports it when it starts, before it asks for its first task, so round 1
    does not wait for it. A module this transformers release lacks is skipped: its import
    happens at load time, as before.
    """
    started = time.perf_counter()
    for name in MODEL_CODE:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    return time.perf_counter() - started


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars off, for loads whose notices are expected here."""
    # Loading a classification head prints a "newly initialized" report; it is expected here.
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def local_model_directory(path: str) -> str:
    """``path`` if it is a model directory here (models are never downloaded), or a ConfigError."""
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"no model directory at {path} (a folder with config.json; models are never downloaded)")
    return path


def load_tokenizer(config: TrainingConfig) -> Any:
    from transformers import AutoTokenizer

    path = local_model_directory(config.resolved_model_path)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer at {path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(config: TrainingConfig, pad_token_id: int) -> nn.Module:
    """The pretrained model for the task, float32, dropout off, in train mode."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path = config.resolved_model_path
    if not Path(path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError(f"model path {path} does not exist (and the hub is offline)")
    with quiet_transformers():
        if config.task == "classification":
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=config.num_labels, dtype=torch.float32
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            model.config.use_cache = False
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id
    # How the classifier reads the sequence; the report records it (see use_mean_pooling).
    model.fedmask_pooling = "mean" if config.task == "classification" and use_mean_pooling(model) else "model"
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    for attr in ("attention_probs_dropout_prob", "attention_dropout", "hidden_dropout_prob"):
        if hasattr(model.config, attr):
            setattr(model.config, attr, 0.0)
    model.train()
    return model


def _masked_mean_pooling(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
    hidden = output.last_hidden_state
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]
    if mask is None:
        output.pooler_output = hidden.mean(dim=1)
    else:
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        output.pooler_output = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return output


def use_mean_pooling(model: nn.Module) -> bool:
    """Classify from the mean of the token states instead of a pooler on the first token.

    A BERT-style encoder's pooler (a dense layer on [CLS]) was trained for next-sentence
    prediction, and sentence encoders such as all-MiniLM-L6-v2 were tuned for mean pooling. On
    mean-pooled features a DP-trained head separates the demo task far better than on the
    pooler's output (docs/dp-training.md), and the pooler's 148K weights need not be carried.
    Returns whether the model has such a pooler (decoder models classify from the last token).
    """
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if encoder is None or getattr(encoder, "pooler", None) is None:
        return False
    encoder.pooler = None
    encoder.register_forward_hook(_masked_mean_pooling, with_kwargs=True)
    return True


def lora_targets_for(model: nn.Module, config: TrainingConfig) -> tuple[str, ...]:
    targets = _configured_lora_targets(model, config)
    _check_lora_rank(model, targets, config.lora_rank)
    return targets


def _configured_lora_targets(model: nn.Module, config: TrainingConfig) -> tuple[str, ...]:
    if config.lora_targets is not None:
        _check_lora_targets(model, config.lora_targets)
        return config.lora_targets
    model_type = getattr(model.config, "model_type", None)
    if model_type in DEFAULT_LORA_TARGETS:
        return DEFAULT_LORA_TARGETS[model_type]
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return tuple(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    raise ConfigError(f"no default LoRA target modules for model type {model_type!r}; set lora_targets")


def _check_lora_rank(model: nn.Module, targets: tuple[str, ...], rank: int) -> None:
    """A rank above a target layer's smaller dimension adds parameters (rank x (in + out) a layer,
    all of them noised under DP) and nothing a full-rank update could not do; a typo such as
    100000 would first exhaust the memory."""
    widths = [
        min(module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    ]
    if widths and rank > min(widths):
        raise ConfigError(
            f"lora_rank {rank} exceeds the smaller dimension of the LoRA target layers ({min(widths)}): "
            f"use at most {min(widths)} (8 to 64 is usual)"
        )


def _check_lora_targets(model: nn.Module, targets: tuple[str, ...]) -> None:
    """Every target names a linear layer of ``model`` as peft matches them (the whole name or its
    last dotted parts): peft itself stops on the first miss with a multi-line error."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name in linears)]
    if missing:
        known = sorted({name.rsplit(".", 1)[-1] for name in linears})
        raise ConfigError(
            f"lora_targets: the model has no linear layer named {', '.join(missing)} "
            f"(its linear layers: {', '.join(known)})"
        )


def top_layers(model: nn.Module, count: int | None) -> list[int] | None:
    """The indices of the model's top ``count`` transformer layers (None: all of them)."""
    if count is None:
        return None
    total = _checked_depth(count, getattr(model.config, "num_hidden_layers", None))
    return list(range(total - count, total))


def check_lora_layers(config: TrainingConfig) -> None:
    """Refuse a ``lora_layers`` deeper than the model from its config.json alone, before
    anything is loaded or written (the model's own check runs again when it is built)."""
    if config.lora_layers is None:
        return
    path = Path(local_model_directory(config.resolved_model_path)) / "config.json"
    try:
        total = json.loads(path.read_text(encoding="utf-8")).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    _checked_depth(config.lora_layers, total)


def _checked_depth(count: int, total: object) -> int:
    if not isinstance(total, int):
        raise ConfigError("lora_layers: this model's config does not say how many layers it has")
    if count > total:
        raise ConfigError(f"lora_layers is {count}, but the model has {total} layers")
    return total


def _is_head(name: str) -> bool:
    return name.split(".")[0] in _HEAD_NAMES


def _bias_layers(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of (Linear layers with a bias, LayerNorm layers with a bias), heads excluded."""
    linears, norms = [], []
    for name, module in model.named_modules():
        if _is_head(name) or getattr(module, "bias", None) is None:
            continue
        if isinstance(module, nn.Linear):
            linears.append(name)
        elif isinstance(module, nn.LayerNorm):
            norms.append(name)
    return linears, norms


def attach_adapter(model: nn.Module, config: TrainingConfig) -> nn.Module:
    """Wrap ``model`` in a fresh peft adapter; only the adapter's tensors require gradients."""
    from peft import BeftConfig, LoraConfig, TaskType, get_peft_model

    task_type = TaskType.SEQ_CLS if config.task == "classification" else TaskType.CAUSAL_LM
    if config.mode == "lora":
        peft_config = LoraConfig(
            task_type=task_type,
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=0.0,
            target_modules=list(lora_targets_for(model, config)),
            layers_to_transform=top_layers(model, config.lora_layers),
            bias="none",
        )
        return get_peft_model(model, peft_config)

    linears, norms = _bias_layers(model)
    if not linears and not norms:
        raise ConfigError("DP-BiTFiT: the model has no bias terms to train")
    # Bias deltas of Linear layers travel as BEFT vectors; norm layers are saved whole (their
    # weights stay frozen, only the bias trains).
    peft_config = BeftConfig(task_type=task_type, target_modules=linears, modules_to_save=norms or None)
    peft_model = get_peft_model(model, peft_config)
    for name, param in peft_model.named_parameters():
        param.requires_grad = _is_bitfit_trainable(name)
    return peft_model


def _is_head_parameter(name: str) -> bool:
    """A task head's trainable copy (peft's ``modules_to_save`` of classifier/score/lm_head)."""
    return any(f".{head}.modules_to_save." in name for head in _HEAD_NAMES)


@dataclass(frozen=True)
class ClassificationHead:
    """A classifier's head that reads one pooled vector per record: ``layer`` is the trainable
    Linear (peft's ``modules_to_save`` copy), ``module`` the module the model calls with the pooled
    features (a forward pre-hook on it sees them)."""

    module: nn.Module
    layer: nn.Linear


def classification_head(model: nn.Module, pooling: str) -> ClassificationHead | None:
    """The head of a classifier that pools to one vector per record before it (encoders with mean
    pooling: ``classifier(pooled)``); ``None`` for other models (decoders score every position and
    pick the last token afterwards, so their head's input is not one vector per record)."""
    if pooling != "mean":
        return None
    for name, module in model.named_modules():
        if name.split(".")[-1] not in _HEAD_NAMES or not hasattr(module, "modules_to_save"):
            continue
        layer = module.modules_to_save["default"]
        if isinstance(layer, nn.Linear):
            return ClassificationHead(module=module, layer=layer)
    return None


def _is_bitfit_trainable(name: str) -> bool:
    if ".beft_bias." in name:
        return False  # stays zero while training; filled with the delta on export
    if ".modules_to_save." in name:
        return _is_head_parameter(name) or name.endswith(".bias")
    return name.endswith(".base_layer.bias")


@dataclass
class AdapterModel:
    """A tokenizer and a base model with its adapter attached; ``spec`` lays out the trainable
    tensors as the flat vector secure aggregation carries."""

    tokenizer: Any
    model: nn.Module
    pooling: str  # "mean" (encoders) or "model" (the architecture's own)
    spec: VectorSpec


def build_adapter_model(config: TrainingConfig) -> AdapterModel:
    """The tokenizer, base model and adapter of ``config`` (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)  # the head's and the adapter's initialisation
    tokenizer = load_tokenizer(config)
    base = load_base_model(config, tokenizer.pad_token_id)
    pooling: str = base.fedmask_pooling
    model = attach_adapter(base, config)
    return AdapterModel(tokenizer, model, pooling, spec_of(trainable_named_parameters(model)))


def initial_adapter(config: TrainingConfig) -> tuple[np.ndarray, list[dict[str, object]]]:
    """The adapter every participant starts from (LoRA-B at zero, the head's initialisation)
    as a float32 vector and its layout."""
    built = build_adapter_model(config)
    return model_vector(built.model, built.spec).astype(np.float32), built.spec.to_json()


def load_trained_model(config: TrainingConfig, adapter_dir: str | Path) -> nn.Module:
    """The base model of ``config`` with the adapter saved in ``adapter_dir``, in eval mode.

    The base comes from :func:`load_base_model`, so encoders pool as in training (mean pooling);
    a plain ``AutoModelForSequenceClassification`` would load the adapter but pool differently.
    """
    from peft import PeftModel

    tokenizer = load_tokenizer(config)
    base = load_base_model(config, tokenizer.pad_token_id)
    with quiet_transformers():
        return PeftModel.from_pretrained(base, str(adapter_dir)).eval()
