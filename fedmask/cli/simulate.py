"""``fedmask simulate``: one in-memory round (the protocol harness) with scripted dropouts."""

from __future__ import annotations

import json
import os
import resource
import time

import click

from fedmask.parallel import ThreadPartRunner
from fedmask.secagg import Phase, ProtocolParams, SecurityMode, default_threshold, simulation
from fedmask.secagg.errors import ParameterError
from fedmask.secagg.params import check_graph_degree
from fedmask.secagg.prg import PartRunner, dtype_for_bits
from fedmask.secagg.rand import SeededRandom, random_below
from fedmask.secagg.simulation import DROPPABLE_PHASES, SimulationConfig, droppable_phases

PHASE_NAMES = {p.value: p for p in DROPPABLE_PHASES}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


# Peak memory of an in-memory round, measured (`server_peak_rss_mb`, n = 100 to 1000): every
# party's keys, shares and envelopes live in this one process, about 1.35 KB per participant and
# holder on a complete graph and 3 KB on SecAgg+'s; and about four vectors of `dim` values at once.
BYTES_PER_HOLDER_COMPLETE = 1_500
BYTES_PER_HOLDER_SPARSE = 3_000
VECTORS_AT_ONCE = 4
BASE_BYTES = 64 << 20


def estimated_peak_bytes(params: ProtocolParams, participants: int) -> int:
    per_holder = BYTES_PER_HOLDER_COMPLETE if params.neighbours is None else BYTES_PER_HOLDER_SPARSE
    itemsize = dtype_for_bits(params.modulus_bits).itemsize
    pairs = participants * params.holders_per_secret(participants)
    return BASE_BYTES + per_holder * pairs + VECTORS_AT_ONCE * itemsize * params.dimension


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_in_memory(params: ProtocolParams, participants: int) -> None:
    """One line before the round, not an out-of-memory kill (or hours of swapping) during it."""
    needed, available = estimated_peak_bytes(params, participants), physical_memory_bytes()
    if needed > available:
        holders = params.holders_per_secret(participants)
        raise ParameterError(
            f"this round needs about {needed / 2**30:,.1f} GiB in one process ({participants} participants x"
            f" {holders} holders each, {params.dimension} values) and this machine has"
            f" {available / 2**30:,.1f} GiB: use a smaller --dim, fewer participants or --graph K (SecAgg+)"
        )


def build_config(
    participants: int,
    dim: int,
    dropout: float,
    drop_phase: Phase,
    graph: str,
    mode: SecurityMode,
    threshold: int | None,
    modulus_bits: int,
    seed: int,
    runner: PartRunner | None = None,
) -> SimulationConfig:
    if drop_phase not in droppable_phases(mode):
        # The harness would drop them in the next phase instead and report a round that never ran.
        others = ", ".join(p.value for p in droppable_phases(mode))
        raise ParameterError(
            f"the {mode.value} mode has no {drop_phase.value} phase (only the malicious mode has one):"
            f" drop in one of {others}"
        )
    neighbours = None if graph == "complete" else int(graph)
    check_graph_degree(neighbours, participants)
    params_probe = ProtocolParams(dim, modulus_bits, 2, mode, neighbours)
    holders = params_probe.holders_per_secret(participants)
    t = threshold if threshold is not None else default_threshold(participants, mode, holders)
    params = ProtocolParams(dim, modulus_bits, t, mode, neighbours)
    params.validate(participants)
    # Which participants drop: a seeded choice, so a run can be replayed.
    rng = SeededRandom.from_int(seed + 1)
    count = round(dropout * participants)
    pool = list(range(1, participants + 1))
    chosen = [pool.pop(random_below(rng, len(pool))) for _ in range(count)]
    return SimulationConfig(params, participants, dict.fromkeys(chosen, drop_phase), seed=seed, runner=runner)


@click.command()
@click.option("--participants", "-n", type=click.IntRange(2, 100_000), required=True)
@click.option("--dim", "-d", type=click.IntRange(1, 1 << 31), required=True, help="Values per update.")
@click.option(
    "--dropout",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Fraction of participants that drop out.",
)
@click.option(
    "--drop-phase",
    type=click.Choice(list(PHASE_NAMES)),
    default=Phase.MASKED_INPUT.value,
    show_default=True,
    help="The phase in which they drop (they send nothing from then on); consistency-check: --mode malicious only.",
)
@click.option(
    "--graph",
    default="complete",
    show_default=True,
    help="'complete' (SecAgg) or the SecAgg+ neighbour degree k (2 <= k < n).",
)
@click.option("--mode", type=click.Choice([m.value for m in SecurityMode]), default="semi-honest", show_default=True)
@click.option(
    "--threshold",
    "-t",
    type=click.IntRange(2),
    default=None,
    help="Shares needed per secret [default: floor(2h/3)+1 of the h holders].",
)
@click.option("--modulus-bits", "-b", type=click.IntRange(1, 64), default=32, show_default=True)
@click.option(
    "--seed",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Seeds the simulation's CSPRNG (simulations only; real rounds use the OS CSPRNG).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Threads per mask addition (server unmask and each client's masking), each on a part of the vector.",
)
@click.option(
    "--rehearse",
    is_flag=True,
    help="Run a tiny round first and time the next one warm, as a coordinator and a participant time"
    " theirs (each rehearses before its first round).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def simulate(
    participants: int,
    dim: int,
    dropout: float,
    drop_phase: str,
    graph: str,
    mode: str,
    threshold: int | None,
    modulus_bits: int,
    seed: int,
    workers: int,
    rehearse: bool,
    as_json: bool,
) -> None:
    """Run one secure-aggregation round in memory and check the sum bit for bit."""
    # isdigit() alone lets through digits int() refuses, such as '²'.
    if graph != "complete" and not (graph.isascii() and graph.isdigit()):
        raise click.BadParameter("use 'complete' or a neighbour degree such as 68", param_hint="--graph")
    try:
        config = build_config(
            participants,
            dim,
            dropout,
            PHASE_NAMES[drop_phase],
            graph,
            SecurityMode(mode),
            threshold,
            modulus_bits,
            seed,
            ThreadPartRunner(workers) if workers > 1 else None,
        )
        check_fits_in_memory(config.params, participants)
    except ParameterError as exc:
        raise click.UsageError(str(exc)) from exc
    if rehearse:
        # Without it, the timed round pays OpenSSL's and libsodium's first-use set-up and Python's
        # cold code paths, which no deployed round pays (both roles call this before joining).
        simulation.rehearse(config.runner)
    result = simulate_round(config)
    if as_json:
        click.echo(json.dumps(result))
    else:
        for key, value in result.items():
            click.echo(f"{key:>30}: {value}")
    # The result is printed first (scripts read it); the exit status and the one line on stderr
    # say the round failed, with or without --json (fedmask bench modes shows that line).
    if not result["exact"]:
        reason = result["abort_reason"] or "the coordinator's sum differs from the survivors' inputs"
        raise click.ClickException(f"the round did not give the exact sum: {reason}")


def simulate_round(config: SimulationConfig) -> dict[str, int | float | bool | str | None]:
    result = simulation.simulate(config, clock=time.perf_counter).as_dict()
    result["graph"] = "complete" if config.params.neighbours is None else f"harary-{config.params.neighbours}"
    result["mode"] = config.params.mode.value
    result["mask_workers"] = 1 if config.runner is None else config.runner.parts
    # The whole simulation runs in one process, so this bounds the server's peak from above.
    result["server_peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result
