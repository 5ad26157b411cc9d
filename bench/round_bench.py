"""``fedmask bench round``: where a participant's federated round goes, phase by phase.

One participant of ``fedmask demo`` (same model, records, adapter and training settings, the
demo's first party) runs ``--rounds`` rounds the way ``participant node`` does, in this process,
with every core this process may use (a participant on its own machine). Each row is one round:

- ``load``: building the trainer (model, adapter, tokenizer); the node keeps it across rounds, so
  only the first round pays it. The library code a load imports is imported before round 1, as
  the node does when it starts, and printed apart (``startup``);
- ``evaluate``: the coordinator's adapter on the held-out split (its sums ride in the masked
  vector);
- ``train``: DP-SGD, the linear-probe steps included (``train_adapter`` as the node calls it:
  the trained adapter is not scored, its upload does not wait for that);
- ``encode``: clipping and fixed-point encoding of the update;
- ``secure aggregation``: the round of the demo's n participants and threshold, malicious mode,
  at this update's dimension, in the in-memory harness (what a deployment waits: the slowest
  participant per phase plus the coordinator, network left out);
- ``transport``: the same round over loopback mutual-TLS gRPC with n participant processes,
  minus the in-memory round: what the wire adds.

The next round starts from the adapter this one trained (as if the participant were alone):
the phases cost the same whatever the adapter's values.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click

PHASES = ("load", "evaluate", "train", "encode", "secure_aggregation", "transport")


def secure_aggregation_times(participants: int, threshold: int, dimension: int, workdir: Path) -> dict[str, float]:
    """The demo's round at ``dimension`` in memory and over loopback gRPC, in one run."""
    from fedmask.bench.grpc_bench import run_wire
    from fedmask.cli.simulate import build_config
    from fedmask.secagg import simulation
    from fedmask.secagg.errors import Phase
    from fedmask.secagg.params import SecurityMode
    from fedmask.testing import loopback

    config = build_config(
        participants, dimension, 0.0, Phase.MASKED_INPUT, "complete", SecurityMode.MALICIOUS, threshold, 32, 0
    )
    inmemory = simulation.simulate(config, clock=time.perf_counter)
    if not inmemory.exact:
        raise click.ClickException("the in-memory round was not exact")
    names = loopback.participant_names(participants)
    seeds = {name: i for i, name in enumerate(names, start=1)}
    wire = run_wire(config, names, seeds, workdir, phase_timeout_s=120.0)
    if not wire["exact"]:
        raise click.ClickException("the gRPC round was not exact")
    return {
        "secure_aggregation": inmemory.round_parallel_s,
        "transport": max(0.0, float(wire["round_s"]) - inmemory.round_parallel_s),
        "wire_round_s": float(wire["round_s"]),
    }


def participant_rounds(
    rounds: int, records: int, workdir: Path, echo: Callable[[str], None]
) -> tuple[list[dict[str, float]], int, float]:
    """Time ``rounds`` node-style rounds of the demo's first party; returns the rows, the
    masked vector's dimension and the start-up import's seconds."""
    import numpy as np

    from fedmask.adapter.config import TrainingConfig
    from fedmask.adapter.metrics import RoundMetrics, encode_metrics
    from fedmask.adapter.model import import_model_code
    from fedmask.cli.demo import federation_settings, party_names
    from fedmask.coordinator.config import FederationConfig
    from fedmask.demo.data import generate_records, write_records
    from fedmask.participant.data import load_local_data
    from fedmask.participant.ledger import PrivacyLedger
    from fedmask.participant.trainer import LocalTrainer
    from fedmask.participant.training import train_adapter
    from fedmask.secagg.encoding import encode
    from fedmask.secagg.rand import SystemRandom

    parties = party_names(3)
    federation = FederationConfig.from_json(federation_settings(parties, rounds))
    config = TrainingConfig.create(**federation.training_config())
    encoding = federation.encoding()
    data_path = write_records(generate_records(parties[0], records, seed=0), workdir / "records.jsonl")
    data = load_local_data(data_path)
    startup = import_model_code()  # as Node.run does before it asks for a task
    rows: list[dict[str, float]] = []
    trainer: LocalTrainer | None = None
    ledger: PrivacyLedger | None = None
    global_vector: np.ndarray | None = None
    for number in range(1, rounds + 1):
        echo(f"round {number}/{rounds}: {len(data.train)} training, {len(data.heldout)} held-out records ...")
        row: dict[str, float] = {"round": number}
        started = time.perf_counter()
        if trainer is None:
            ledger = PrivacyLedger.open(
                workdir / "privacy_ledger.json",
                accountant=config.accountant,
                epsilon_budget=config.target_epsilon,
                delta=config.target_delta,
            )
            trainer = LocalTrainer(config, ledger=ledger)
            global_vector = trainer.adapter_vector()
        row["load"] = time.perf_counter() - started
        assert ledger is not None and global_vector is not None

        started = time.perf_counter()
        trainer.set_adapter_vector(global_vector)
        before = trainer.evaluate(data.heldout)
        row["evaluate"] = time.perf_counter() - started

        started = time.perf_counter()
        result = train_adapter(
            config, data, global_adapter_state=global_vector, ledger=ledger, trainer=trainer, score_heldout=False
        )
        row["train"] = time.perf_counter() - started

        started = time.perf_counter()
        update = result.vector.astype(np.float64) - global_vector.astype(np.float64)
        encoded = encode(update, encoding, SystemRandom())
        metrics = RoundMetrics(
            heldout_correct=round(before.accuracy * before.count),
            heldout_count=before.count,
            heldout_loss_sum=before.loss * before.count,
            train_records=len(data.train),
        )
        masked_input = np.concatenate([encoded, encode_metrics(metrics, encoding.modulus_bits, len(parties))])
        row["encode"] = time.perf_counter() - started
        rows.append(row)
        global_vector = result.vector
    return rows, int(masked_input.size), startup


@click.command("round")
@click.option("--rounds", type=click.IntRange(1, 10), default=2, show_default=True)
@click.option(
    "--records",
    type=click.IntRange(50, 100_000),
    default=None,
    help="Records of the participant (train and held-out). Default: the demo's.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def round_bench(rounds: int, records: int | None, as_json: bool) -> None:
    """A demo participant's round, phase by phase: load, evaluate, train, encode, secure
    aggregation, transport."""
    from fedmask.cli.demo import DEFAULT_RECORDS, demo_threshold
    from fedmask.cli.quiet import quiet_libraries

    quiet_libraries()
    from fedmask.participant.training import configure_threads

    records = records or DEFAULT_RECORDS
    threads = configure_threads()

    def echo(line: str) -> None:
        if not as_json:
            click.echo(line, err=True)

    workdir = Path(tempfile.mkdtemp(prefix="fedmask-bench-round-"))
    try:
        rows, dimension, startup = participant_rounds(rounds, records, workdir, echo)
        echo(f"secure aggregation of 3 participants at d={dimension}, in memory and over loopback gRPC ...")
        aggregation = secure_aggregation_times(3, demo_threshold(3), dimension, workdir / "grpc")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for row in rows:
        row["secure_aggregation"] = aggregation["secure_aggregation"]
        row["transport"] = aggregation["transport"]
        row["total"] = sum(row[phase] for phase in PHASES)
    report = {
        "records": records,
        "dimension": dimension,
        "torch_threads": threads,
        "cpus": os.cpu_count(),
        "wire_round_s": aggregation["wire_round_s"],
        "startup_s": startup,
        "rounds": rows,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    header = "| round | " + " | ".join(p.replace("_", " ") + " s" for p in PHASES) + " | total s |"
    lines = [
        f"one participant of the demo ({records} records), {threads} torch threads; "
        f"masked vector d={dimension}; secure aggregation: 3 participants, malicious mode",
        "",
        header,
        "|" + "---|" * (len(PHASES) + 2),
    ]
    for row in rows:
        cells = " | ".join(f"{row[p]:.2f}" if row[p] >= 0.01 else f"{row[p]:.4f}" for p in PHASES)
        lines.append(f"| {int(row['round'])} | {cells} | {row['total']:.2f} |")
    lines += ["", f"start-up, before round 1 (the node imports the model code when it starts): {startup:.2f} s"]
    click.echo("\n".join(lines))


if __name__ == "__main__":  # pragma: no cover
    round_bench()
