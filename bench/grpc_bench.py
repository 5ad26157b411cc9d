"""``fedmask bench grpc``: one secure-aggregation round over loopback mTLS gRPC -- a coordinator
and N participants as separate OS processes, certificates made on the fly -- next to the same
round in the in-memory harness (``fedmask.secagg.simulation``), in one run.

What is compared:

- time: ``wall_s`` is the coordinator's round time, from sending RoundStart to holding the sum
  (participants draw their inputs, mask, upload; the coordinator unmasks). Process start-up and
  joining are reported apart (``join_s``): they are not part of a round. ``inmemory_wall_s`` is
  the harness's round time for the same (n, d, t, dropouts), every party in one process.
- bytes: ``bytes_per_participant`` is what a surviving participant uploads as gRPC messages
  (protobuf plus gRPC's 5-byte frame prefix, as counted by the coordinator);
  ``inmemory_bytes_per_participant`` is the harness's yardstick (every field at its natural
  width, ``secagg.simulation.payload_bytes``). HTTP/2 frame headers (9 bytes per 16 KiB) and
  TLS records (22 bytes per 16 KiB) come on top of both: about 0.2 %.
- exactness: the coordinator's sum is compared bit for bit with the plaintext sum of the
  survivors' inputs, recomputed here from their seeds.

Dropouts (``--dropout F``): round(F * N) participants, chosen as ``fedmask simulate`` chooses
them, exit abruptly just before sending their masked input, as in the harness's default.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from fedmask.cli.simulate import build_config
from fedmask.parallel import usable_cpus
from fedmask.secagg import simulation
from fedmask.secagg.errors import Phase
from fedmask.secagg.params import SecurityMode
from fedmask.testing import loopback

TIME_TARGET = 1.30  # the wire may add at most 30 % to the in-memory round time
BYTES_TARGET = 1.02  # and at most 2 % to the bytes


def run_inmemory(config: simulation.SimulationConfig) -> simulation.SimulationResult:
    # Warm, as the wire's processes are when their round starts (each rehearses first).
    simulation.rehearse()
    return simulation.simulate(config, clock=time.perf_counter)


def run_wire(
    config: simulation.SimulationConfig, names: list[str], seeds: dict[str, int], workdir: Path, phase_timeout_s: float
) -> dict[str, Any]:
    """One round with real processes; returns the coordinator's summary plus what we checked."""
    params = config.params
    dropping = {names[pid - 1] for pid in config.drop_at}
    started = time.perf_counter()
    federation = loopback.make_federation(workdir / "federation", names)
    pki_s = time.perf_counter() - started
    output = workdir / "sum.npy"
    processes: list[loopback.Process] = []
    try:
        coordinator = loopback.start_coordinator(
            federation,
            names,
            dimension=params.dimension,
            threshold=params.threshold,
            mode=params.mode.value,
            phase_timeout_s=phase_timeout_s,
            join_timeout_s=max(120.0, 2.0 * len(names)),
            output=output,
            start_timeout_s=60,
        )
        processes.append(coordinator)
        for name in names:
            processes.append(
                loopback.start_participant(
                    federation,
                    name,
                    coordinator.port,
                    seed=seeds[name],
                    drop_before=Phase.MASKED_INPUT if name in dropping else None,
                    drop_how="exit",
                )
            )
        summary = coordinator.summary(timeout_s=600)
        participant_cpu_s: list[float] = []
        for process in processes[1:]:
            process.wait(60)
            if process.name not in dropping:
                participant_cpu_s.append(float(process.json_summary()["rounds"][0]["cpu_s"]))
    finally:
        loopback.stop_all(processes)
    rounds: list[dict[str, Any]] = summary["rounds"]  # the coordinator's JSON summary
    (round_,) = rounds
    exact = False
    if round_["completed"]:
        expected = loopback.expected_sum((seeds[n] for n in round_["survivors"]), params.dimension, params.modulus_bits)
        exact = bool(np.array_equal(np.load(output), expected))
    round_["exact"] = exact
    round_["pki_s"] = pki_s
    round_["transport"] = summary["transport"]
    round_["participant_cpu_s"] = participant_cpu_s
    return round_


def cpu_bound(coordinator_cpu_s: float, participant_cpu_s: list[float], wall_s: float, cpus: int) -> dict[str, Any]:
    """What the processes' CPU time allows: with every process on this machine, the round
    cannot take less than their CPU time together spread over its cores. A wall time close to
    this bound means the round waits for CPU (the wire's per-process cost), not for the wire."""
    total = coordinator_cpu_s + sum(participant_cpu_s)
    bound = total / cpus
    return {
        "participant_cpu_s": statistics.median(participant_cpu_s) if participant_cpu_s else None,
        "cpu_s_total": total,
        "cpu_bound_s": bound,
        "wall_over_cpu_bound": wall_s / bound if bound > 0 else None,
    }


@click.command("grpc")
@click.option("--participants", "-n", type=click.IntRange(2, 1000), required=True)
@click.option("--dim", "-d", type=click.IntRange(1, 1 << 31), required=True, help="Values per update.")
@click.option(
    "--dropout",
    type=click.FloatRange(0.0, 0.9),
    default=0.0,
    show_default=True,
    help="Fraction of participants that drop out before sending their masked input.",
)
@click.option("--mode", type=click.Choice([m.value for m in SecurityMode]), default="semi-honest", show_default=True)
@click.option("--threshold", "-t", type=click.IntRange(2), default=None, help="Default: floor(2n/3)+1.")
@click.option("--phase-timeout", type=click.FloatRange(min=1), default=300.0, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def grpc_bench(
    participants: int,
    dim: int,
    dropout: float,
    mode: str,
    threshold: int | None,
    phase_timeout: float,
    seed: int,
    as_json: bool,
) -> None:
    """One round over loopback mTLS gRPC (separate processes) next to the in-memory harness."""
    cpus = usable_cpus()
    config = build_config(
        participants, dim, dropout, Phase.MASKED_INPUT, "complete", SecurityMode(mode), threshold, 32, seed
    )
    names = loopback.participant_names(participants)
    seeds = {name: seed * 1_000_003 + i for i, name in enumerate(names, start=1)}

    if not as_json:
        click.echo(f"in-memory round: n={participants} d={dim} ...", err=True)
    inmemory = run_inmemory(config)
    if not as_json:
        click.echo(f"gRPC round: coordinator + {participants} participant processes over loopback mTLS ...", err=True)
    workdir = Path(tempfile.mkdtemp(prefix="fedmask-bench-grpc-"))
    try:
        wire = run_wire(config, names, seeds, workdir, phase_timeout)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    survivors = wire["survivors"]
    uploads = [wire["bytes_received"][n] for n in survivors]
    bytes_per_participant = sum(uploads) / max(1, len(uploads))
    report = {
        "exact": bool(wire["exact"] and inmemory.exact),
        "wire_exact": wire["exact"],
        "inmemory_exact": inmemory.exact,
        "transport": wire["transport"],
        "participants": participants,
        "dim": dim,
        "threshold": config.params.threshold,
        "mode": mode,
        "dropout": dropout,
        "survivors": len(survivors),
        "inmemory_survivors": len(inmemory.survivors),
        "wall_s": wire["round_s"],
        "inmemory_wall_s": inmemory.round_s,
        "time_ratio": wire["round_s"] / inmemory.round_s if inmemory.round_s else None,
        "bytes_per_participant": bytes_per_participant,
        "inmemory_bytes_per_participant": inmemory.upload_bytes_per_participant,
        "bytes_ratio": bytes_per_participant / inmemory.upload_bytes_per_participant,
        "join_s": wire["join_s"],
        "phase_s": wire["phase_s"],
        "coordinator_cpu_s": wire["coordinator_cpu_s"],
        "pki_s": wire["pki_s"],
        "cpus": cpus,
        **cpu_bound(wire["coordinator_cpu_s"], wire["participant_cpu_s"], wire["round_s"], cpus),
    }
    report["time_target_met"] = report["time_ratio"] is not None and report["time_ratio"] <= TIME_TARGET
    report["bytes_target_met"] = report["bytes_ratio"] <= BYTES_TARGET
    if not wire["completed"]:
        report["abort_reason"] = wire.get("abort_reason")
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(
            f"exact {report['exact']}, {report['survivors']}/{participants} survivors; "
            f"round {report['wall_s']:.3f} s over gRPC vs {report['inmemory_wall_s']:.3f} s in memory "
            f"({report['time_ratio']:.2f}x, target <= {TIME_TARGET}); "
            f"upload {report['bytes_per_participant']:.0f} B vs {report['inmemory_bytes_per_participant']:.0f} B "
            f"({report['bytes_ratio']:.4f}x, target <= {BYTES_TARGET})"
        )
        if report["participant_cpu_s"] is not None and report["wall_over_cpu_bound"] is not None:
            click.echo(
                f"CPU {report['cpu_s_total'] * 1e3:.0f} ms in all "
                f"(coordinator {report['coordinator_cpu_s'] * 1e3:.0f} ms, "
                f"a participant {report['participant_cpu_s'] * 1e3:.1f} ms): "
                f"at least {report['cpu_bound_s']:.3f} s on {cpus} core(s); "
                f"the round took {report['wall_over_cpu_bound']:.2f}x that"
            )
    if not report["exact"]:
        raise SystemExit(1)


if __name__ == "__main__":  # pragma: no cover
    grpc_bench()
