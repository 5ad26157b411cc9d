"""``fedmask participant ...``: what a data holder runs.

``train`` trains a DP adapter on local records without federation (the same code a federated
round runs locally); other commands (``join``) register themselves at the bottom of this file.
Heavy imports (torch, transformers, opacus) happen inside the commands.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fedmask.cli.checks import check_writable_directory
from fedmask.cli.quiet import quiet_libraries


@click.group()
def participant() -> None:
    """Local work of a participant: DP adapter training, joining a federation."""


def _parse_targets(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if not names:
        raise click.BadParameter("give at least one module name, comma-separated")
    return names


def _no_empty_output_left_on_failure(command: Callable[..., None]) -> Callable[..., None]:
    """A failed command leaves no ``out_dir`` it made itself, as long as it is empty."""

    @functools.wraps(command)
    def wrapper(**options: Any) -> None:
        out_dir: Path = options["out_dir"]
        existed = out_dir.exists()
        try:
            command(**options)
        except BaseException:
            if not existed:
                with contextlib.suppress(OSError):
                    out_dir.rmdir()  # only if empty: never removes what was written
            raise

    return wrapper


@participant.command()
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Local records, .jsonl or .csv (fields: text, label[, split]).",
)
@click.option(
    "--model",
    "model_path",
    default=None,
    help="Hugging Face model directory or id. Default: the offline all-MiniLM-L6-v2.",
)
@click.option("--task", type=click.Choice(["classification", "causal_lm"]), default="classification", show_default=True)
@click.option(
    "--mode",
    type=click.Choice(["lora", "bitfit"]),
    default="lora",
    show_default=True,
    help="Adapter: LoRA matrices, or bias terms only (DP-BiTFiT).",
)
@click.option(
    "--epsilon",
    type=float,
    default=8.0,
    show_default=True,
    help="Record-level epsilon budget for the whole planned schedule.",
)
@click.option("--delta", type=float, default=1e-5, show_default=True)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Output directory: adapter/ (PEFT format), model/ (sentence-transformers) and report.json.",
)
@click.option("--accountant", type=click.Choice(["prv", "rdp"]), default="prv", show_default=True)
@click.option(
    "--clipping",
    type=click.Choice(["auto", "ew", "hooks", "ghost"]),
    default="auto",
    show_default=True,
    help=(
        "Per-sample gradient mode; auto = expanded weights for LoRA (hooks if ew cannot run), "
        "hooks with bias-only grad samplers for BiTFiT (no layer inputs kept)."
    ),
)
@click.option(
    "--epochs",
    type=float,
    default=None,
    help="Local training per round, in expected passes over the data [default: 4].",
)
@click.option("--local-steps", type=int, default=None, help="Local DP-SGD steps per round (instead of --epochs).")
@click.option(
    "--rounds",
    "planned_rounds",
    type=int,
    default=1,
    show_default=True,
    help="Planned rounds the budget is spread over (noise covers rounds x steps).",
)
@click.option("--batch-size", type=int, default=None, help="Expected Poisson batch size [default: 64].")
@click.option(
    "--lr",
    "learning_rate",
    type=float,
    default=None,
    help="The adapter's learning rate [default: per optimizer and mode].",
)
@click.option(
    "--head-lr",
    "head_learning_rate",
    type=float,
    default=None,
    help="A classification head's learning rate [default: per optimizer].",
)
@click.option(
    "--optimizer",
    type=click.Choice(["sgd", "adamw"]),
    default="sgd",
    show_default=True,
    help="SGD with momentum 0.9, or AdamW.",
)
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True)
@click.option("--max-seq-len", type=int, default=64, show_default=True)
@click.option("--lora-rank", type=int, default=8, show_default=True)
@click.option("--lora-targets", default=None, help="Comma-separated module names for LoRA [default: per architecture].")
@click.option(
    "--lora-layers",
    type=int,
    default=None,
    help="LoRA in the top N transformer layers only; the frozen layers below run once per record "
    "[default: every layer].",
)
@click.option("--num-labels", type=int, default=2, show_default=True)
@click.option(
    "--heldout-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Share of the records held out when they carry no 'split' field (refused when they do). [default: 0.2]",
)
@click.option(
    "--ledger",
    "ledger_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Privacy ledger file to charge (persists epsilon across runs). "
    "Default: a fresh ledger written to OUT/ledger.json.",
)
@click.option("--no-scrub", is_flag=True, help="Do not scrub PII (reported).")
@click.option(
    "--label-names",
    default=None,
    help="Comma-separated names of the labels 0, 1, ... for the exported model [default: the numbers].",
)
@click.option(
    "--base-model-name",
    default=None,
    help="Public name of --model for the model card and adapter config "
    "[default: sentence-transformers/all-MiniLM-L6-v2 for the bundled model].",
)
@click.option(
    "--no-export",
    is_flag=True,
    help="Do not write OUT/model/ (the classifier as a sentence-transformers folder).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed for the adapter's initialisation and the held-out split.",
)
@click.option(
    "--reproducible-noise",
    type=int,
    default=None,
    metavar="SEED",
    help="Draw DP noise and batches from this seed: for tests only, not private.",
)
@_no_empty_output_left_on_failure
def train(
    data_path: Path,
    model_path: str | None,
    task: str,
    mode: str,
    epsilon: float,
    delta: float,
    out_dir: Path,
    accountant: str,
    clipping: str,
    epochs: float | None,
    local_steps: int | None,
    planned_rounds: int,
    batch_size: int | None,
    learning_rate: float | None,
    head_learning_rate: float | None,
    optimizer: str,
    max_grad_norm: float,
    max_seq_len: int,
    lora_rank: int,
    lora_targets: str | None,
    lora_layers: int | None,
    num_labels: int,
    heldout_fraction: float | None,
    ledger_path: Path | None,
    no_scrub: bool,
    label_names: str | None,
    base_model_name: str | None,
    no_export: bool,
    seed: int,
    reproducible_noise: int | None,
) -> None:
    """Train a DP adapter on local records; write OUT/adapter/, OUT/model/ and OUT/report.json.

    OUT/model/ (classifiers) loads with sentence-transformers alone: see docs/dp-training.md.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_libraries()  # before Opacus is imported
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedmask.adapter.config import ConfigError, TrainingConfig
    from fedmask.adapter.export import ExportError
    from fedmask.adapter.model import check_lora_layers, local_model_directory
    from fedmask.adapter.scores import summary_line
    from fedmask.participant.data import DataError, load_local_data
    from fedmask.participant.ledger import LedgerError, PrivacyBudgetExceeded, PrivacyLedger
    from fedmask.participant.training import configure_threads, train_adapter, write_training_outputs

    console = Console(stderr=True)
    names = _parse_label_names(label_names, num_labels)
    export = task == "classification" and not no_export
    try:
        config = TrainingConfig.create(
            model_path=model_path,
            task=task,
            mode=mode,
            num_labels=num_labels,
            target_epsilon=epsilon,
            target_delta=delta,
            accountant=accountant,
            clipping=clipping,
            epochs=epochs,
            local_steps=local_steps,
            planned_rounds=planned_rounds,
            batch_size=batch_size,
            learning_rate=learning_rate,
            head_learning_rate=head_learning_rate,
            optimizer=optimizer,
            max_grad_norm=max_grad_norm,
            max_seq_len=max_seq_len,
            lora_rank=lora_rank,
            lora_targets=_parse_targets(lora_targets),
            lora_layers=lora_layers,
            seed=seed,
            noise_seed=reproducible_noise,
        )
        local_model_directory(config.resolved_model_path)  # before the records are read and scrubbed
        check_lora_layers(config)
        data = load_local_data(
            data_path,
            task=task,
            num_labels=num_labels,
            heldout_fraction=heldout_fraction,
            seed=seed,
            scrub_pii=not no_scrub,
        )
        ledger = PrivacyLedger.open(
            ledger_path if ledger_path is not None else out_dir / "ledger.json",
            accountant=accountant,
            epsilon_budget=epsilon,
            delta=delta,
        )
    except (ConfigError, DataError, LedgerError) as exc:
        raise click.ClickException(str(exc)) from None
    check_writable_directory(out_dir, f"the output directory {out_dir}")  # before minutes of training

    threads = configure_threads()
    console.print(
        f"[bold]{len(data.train)}[/] training and {len(data.heldout)} held-out records "
        f"(held-out from {data.heldout_source}); PII replaced: "
        + (", ".join(f"{k} {v}" for k, v in data.pii_counts.items()) if not no_scrub else "off")
    )
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task(f"DP-SGD ({mode}, {threads} threads)", total=None, loss="-")

        def on_step(step: int, total: int, loss: float) -> None:
            shown = "-" if loss != loss else f"{loss:.3f}"  # NaN: an empty Poisson batch
            progress.update(bar, completed=step, total=total, loss=shown)

        try:
            # The last planned round ends with the decision threshold's calibration.
            last_round = ledger.training_charges + 1 >= config.planned_rounds
            result = train_adapter(config, data, ledger=ledger, on_step=on_step, calibrate=last_round)
        except PrivacyBudgetExceeded as exc:
            raise click.ClickException(str(exc)) from None
        except (ConfigError, DataError, LedgerError) as exc:
            raise click.ClickException(str(exc)) from None

    try:
        write_training_outputs(
            result,
            out_dir,
            export=export,
            label_names=names,
            base_model_name=base_model_name,
            data_description=f"{len(data.train)} training records from {data_path.name} "
            f"({len(data.heldout)} held out: {data.heldout_source})",
        )
    except ExportError as exc:
        raise click.ClickException(f"the adapter and report are written; the export failed: {exc}") from None
    report = result.report
    console.print(
        f"epsilon {report['epsilon']:.4g} (delta {report['delta']:g}, {report['accountant']}), "
        f"noise multiplier {report['noise_multiplier']:.4g}, {report['steps']} steps "
        f"({report['probe_steps']} of them the head's linear probe), clipping {report['clipping']}"
    )
    if report["calibration"] is not None:
        console.print(
            f"decision threshold calibrated from one DP release over the training records: margin shift "
            f"{report['calibration']['shift']:+.3f} (included in the epsilon above)"
        )
    if report["diverged"]:
        click.echo(f"WARNING: training diverged: {report['diverged']}", err=True)
    if report["scores"] is not None:
        click.echo(summary_line(report["scores"], names), err=True)  # one line, never wrapped
    paths = {"adapter": str(out_dir / "adapter"), "report": str(out_dir / "report.json")}
    if export:
        paths["model"] = str(out_dir / "model")
    click.echo(json.dumps(paths))


def _parse_label_names(value: str | None, num_labels: int) -> list[str]:
    if value is None:
        return [str(index) for index in range(num_labels)]
    names = [name.strip() for name in value.split(",")]
    if len(names) != num_labels or not all(names) or len(set(names)) != len(names):
        raise click.BadParameter(
            f"give {num_labels} distinct, non-empty names, comma-separated; got {value!r}", param_hint="--label-names"
        )
    return names


from fedmask.cli.join import join  # noqa: E402 - `fedmask participant join` lives with the gRPC client

participant.add_command(join)

from fedmask.cli.node import node  # noqa: E402 - `fedmask participant node` lives with the node loop

participant.add_command(node)

from fedmask.cli.enrol import enrol  # noqa: E402 - `fedmask participant enrol` makes this participant's keys

participant.add_command(enrol)
