"""``fedmask bench dp``: what DP-SGD costs per training step, next to plain training of the same
adapter measured in the same process.

For each model (all-MiniLM-L6-v2 classification; a tiny Qwen2 causal LM; on request a causal LM
of Qwen2.5-0.5B's shapes with random weights) and adapter (LoRA, BiTFiT) one child process builds
the plain trainer and one Opacus trainer per per-sample gradient mode (``ew``, ``hooks``,
``ghost``), each on its own copy of the model, and times their steps interleaved (the order
rotating every round), so that load from other processes on a shared machine falls on all of them
alike. A step is forward, backward (per-sample gradients and clipping for DP) and the optimizer
step (noise for DP) on one fixed batch: 16 sequences of 64 tokens (``--batch`` changes the count;
a 0.5B-parameter step on 2 CPUs takes seconds per sequence).

Memory is the step's own peak: before each step free memory is returned to the OS
(``malloc_trim``) and the peak-RSS counter reset (``/proc/self/clear_refs``), and the step's peak
is the high-water mark minus the RSS before it. Weights and optimizer state are outside it; what
DP adds (per-sample gradients, clipping, noise) is inside.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import torch

    from fedmask.adapter.config import TrainingConfig
    from fedmask.participant.data import Record

BATCH, SEQ = 16, 64
MODELS = ("minilm", "qwen2")  # the default set
QWEN25_05B = "qwen2.5-0.5b"  # Qwen2.5-0.5B's shapes, random weights: only when asked for
ALL_MODELS = (*MODELS, QWEN25_05B)
# Qwen2.5-0.5B's published architecture (config.json of Qwen/Qwen2.5-0.5B): 494M parameters,
# 136M of them in the tied embedding. Built here with random weights: no download.
QWEN25_05B_SHAPES = {
    "vocab_size": 151_936,
    "hidden_size": 896,
    "intermediate_size": 4_864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32_768,
    "rope_theta": 1_000_000.0,
    "tie_word_embeddings": True,
}
MODES = ("lora", "bitfit")
DP_VARIANTS = ("ew", "hooks", "ghost")


# --------------------------------------------------------------------------- memory probes


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:  # pragma: no cover - not Linux
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def _trim_and_reset_peak() -> int:
    """Give free heap memory back to the OS, reset the peak counter; return RSS in kB."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS")


# --------------------------------------------------------------------------- the child


def _fixed_batch(
    vocab_size: int, first_id: int, batch: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(first_id, vocab_size, (batch, SEQ), generator=generator)
    mask = torch.ones(batch, SEQ, dtype=torch.long)
    labels = torch.randint(0, 2, (batch,), generator=generator)
    return ids, mask, labels


def _pool(count: int) -> list[Record]:
    from fedmask.demo.data import generate_records
    from fedmask.participant.data import Record

    return [Record(text=r["text"], label=r["label"]) for r in generate_records("hospital-a", count, seed=11)]


def _config(model: str, mode: str, clipping: str, model_path: str, batch: int) -> TrainingConfig:
    from fedmask.adapter.config import TrainingConfig

    return TrainingConfig(
        model_path=model_path,
        task="classification" if model == "minilm" else "causal_lm",
        mode=mode,
        clipping=clipping,
        accountant="rdp",
        batch_size=batch,
        max_seq_len=SEQ,
        local_steps=100,
        noise_seed=0,
    )


def _plain_step(model: str, mode: str, model_path: str, size: int) -> tuple[Callable[[], None], int]:
    """The same model and adapter trained without DP: the same optimizer, on the mean loss."""
    from fedmask.participant.trainer import LocalTrainer, per_sequence_loss

    trainer = LocalTrainer(_config(model, mode, "auto", model_path, size))
    optimizer = trainer.build_optimizer()
    batch = _fixed_batch(len(trainer.tokenizer), 1000 if model == "minilm" else 1, size)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = trainer.model(batch[0], batch[1]).logits
        per_sequence_loss(trainer.config.task, logits, batch).mean().backward()
        optimizer.step()

    return step, trainer.spec.size


def _dp_step(
    model: str, mode: str, clipping: str, model_path: str, pool: list[Record], size: int
) -> tuple[Callable[[], None], int]:
    from fedmask.participant.trainer import LocalTrainer

    trainer = LocalTrainer(_config(model, mode, clipping, model_path, size))
    trainer.prepare(pool)  # Opacus wrapping, noise multiplier for 100 steps at rate 0.01
    private = trainer._private
    assert private is not None and private.clipping == clipping
    batch = _fixed_batch(len(trainer.tokenizer), 1000 if model == "minilm" else 1, size)

    def step() -> None:
        private.optimizer.zero_grad(set_to_none=True)
        trainer._backward(batch)
        private.optimizer.step()

    return step, trainer.spec.size


def child(model: str, mode: str, model_path: str, steps: int, warmup: int, batch: int) -> dict[str, Any]:
    from fedmask.participant.training import configure_threads

    threads = configure_threads()
    pool = _pool(batch * 100)
    runners = {"non-DP": _plain_step(model, mode, model_path, batch)}
    for variant in DP_VARIANTS:
        runners[f"DP {variant}"] = _dp_step(model, mode, variant, model_path, pool, batch)
    names = list(runners)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    peak_kb: dict[str, int] = {n: 0 for n in names}
    for round_number in range(warmup + steps):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            step, _ = runners[name]
            before = _trim_and_reset_peak()
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            peak = _status_kb("VmHWM") - before
            if round_number >= warmup:
                seconds[name].append(elapsed)
                peak_kb[name] = max(peak_kb[name], peak)
    base_s = statistics.median(seconds["non-DP"])
    base_kb = max(peak_kb["non-DP"], 1)
    rows = []
    for name in names:
        median_s = statistics.median(seconds[name])
        rows.append(
            {
                "model": model,
                "mode": mode,
                "variant": name,
                "adapter_params": runners[name][1],
                "step_ms": round(median_s * 1e3, 2),
                "time_ratio": round(median_s / base_s, 3),
                "step_peak_mb": round(peak_kb[name] / 1024, 1),
                "memory_ratio": round(peak_kb[name] / base_kb, 3),
                "threads": threads,
            }
        )
    return {"rows": rows}


# --------------------------------------------------------------------------- the command


def _run_child(model: str, mode: str, model_path: str, steps: int, warmup: int, batch: int) -> list[dict[str, Any]]:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        # A fixed mmap threshold: freed tensors go back to the OS, so each step's peak
        # is its own and not hidden by memory an earlier step left in the heap.
        MALLOC_MMAP_THRESHOLD_="131072",
        MALLOC_TRIM_THRESHOLD_="131072",
    )
    spec = json.dumps(
        {"model": model, "mode": mode, "model_path": model_path, "steps": steps, "warmup": warmup, "batch": batch}
    )
    completed = subprocess.run(
        [sys.executable, "-m", "fedmask.bench.dp_bench", spec], capture_output=True, text=True, env=env, check=False
    )
    if completed.returncode != 0:
        raise click.ClickException(f"{model}/{mode} failed:\n{completed.stderr[-3000:]}")
    rows: list[dict[str, Any]] = json.loads(completed.stdout.strip().splitlines()[-1])["rows"]
    return rows


def _tiny_qwen2(directory: Path) -> str:
    from fedmask.demo.data import PARTIES, generate_records
    from fedmask.testing.tiny_models import build_tiny_qwen2

    texts = [str(r["text"]) for party in PARTIES for r in generate_records(party, 300, seed=9)]
    return str(build_tiny_qwen2(directory, texts))


def _qwen25_05b_shapes(directory: Path) -> str:
    """A causal LM of Qwen2.5-0.5B's shapes with random (seeded) weights, and a small tokenizer:
    the step costs depend on the shapes, not on what the weights or token ids are."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from fedmask.demo.data import PARTIES, generate_records
    from fedmask.testing.tiny_models import build_tokenizer

    texts = [str(r["text"]) for party in PARTIES for r in generate_records(party, 300, seed=9)]
    build_tokenizer(texts, directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = Qwen2Config(
        **QWEN25_05B_SHAPES,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = Qwen2ForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(directory)
    return str(directory)


@click.command()
@click.option(
    "--steps", type=click.IntRange(3), default=20, show_default=True, help="Timed steps per variant (after warm-up)."
)
@click.option("--warmup", type=click.IntRange(1), default=3, show_default=True)
@click.option(
    "--model",
    "models",
    type=click.Choice(ALL_MODELS),
    multiple=True,
    help=f"Only these models (repeatable). Default: {', '.join(MODELS)}. {QWEN25_05B}: Qwen2.5-0.5B's shapes "
    "with random weights (about 8 GB of memory; try --batch 4 --steps 3 --warmup 1).",
)
@click.option(
    "--batch", type=click.IntRange(1), default=BATCH, show_default=True, help="Sequences (of 64 tokens) per step."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def dp(steps: int, warmup: int, models: tuple[str, ...], batch: int, as_json: bool) -> None:
    """DP-SGD step time and peak memory next to plain training (LoRA, BiTFiT; MiniLM, Qwen2)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fedmask.adapter.config import default_model_path

    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    builders = {"qwen2": _tiny_qwen2, QWEN25_05B: _qwen25_05b_shapes}
    with tempfile.TemporaryDirectory(prefix="fedmask-bench-dp-") as tmp:
        paths = {"minilm": default_model_path()}
        for model in models or MODELS:
            if model not in paths:
                if not as_json:
                    click.echo(f"{model}: building the model (random weights) ...", err=True)
                paths[model] = builders[model](Path(tmp) / model)
            for mode in MODES:
                if not as_json:
                    click.echo(f"{model} {mode}: {steps} steps per variant ...", err=True)
                rows.extend(_run_child(model, mode, paths[model], steps, warmup, batch))
    result = {
        "batch": batch,
        "seq_len": SEQ,
        "steps": steps,
        "warmup": warmup,
        "cpu_count": len(os.sched_getaffinity(0)),
        "wall_s": round(time.perf_counter() - started, 1),
        "versions": _versions(),
        "rows": rows,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(render_table(result))


def _versions() -> dict[str, str]:
    import opacus
    import peft
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "opacus": opacus.__version__,
    }


def render_table(result: dict[str, Any]) -> str:
    lines = [
        f"batch {result['batch']} x seq {result['seq_len']}, median of {result['steps']} steps, "
        f"{result['cpu_count']} CPUs, {result['wall_s']} s; "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "",
        "| model | adapter | variant | adapter params | step ms | x non-DP | step peak MB | x non-DP |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['variant']} | {r['adapter_params']:,} | "
            f"{r['step_ms']:.1f} | {r['time_ratio']:.2f} | {r['step_peak_mb']:.1f} | "
            f"{r['memory_ratio']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    print(
        json.dumps(
            child(
                settings["model"],
                settings["mode"],
                settings["model_path"],
                settings["steps"],
                settings["warmup"],
                settings["batch"],
            )
        )
    )
