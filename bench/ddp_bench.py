"""``fedmask bench ddp``: what distributed DP costs a participant, and what it costs in accuracy.

1. Encoding cost for one update of d values on one core (the process pins itself to one CPU and
   counts its own CPU time, so that other load on a shared machine does not inflate it; its
   memory allocator is first left as a participant's is after training, ``warm_allocator``):
   clip + rotation, scaling + conditional randomised rounding, the exact noise share, reduction
   mod 2^b -- next to the masking the participant does anyway (``secagg.prg.add_masks`` with the
   10 seeds of a 10-participant round: 9 pairwise masks and the self mask) on the same vector.
   Randomness: the OS CSPRNG keys an AES-256-CTR stream, as in ``encode_with_noise``.
2. Mean-squared error of the decoded average against the noiseless average of the clipped
   updates, for n participants at epsilon in {1, 3, 8} (one round, delta = 1e-5, calibrated
   for t = n), next to the central-DP Gaussian mechanism at the same (epsilon, delta) under the
   same accounting (RDP, same orders and conversion). The encodings are summed mod 2^b directly:
   the pairwise and self masks cancel bit for bit (tests/secagg/test_ddp.py runs the same
   pipeline through a masked round with dropouts), so they change nothing here but the time.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar, TypeVarTuple

import click
import numpy as np
from rich.progress import Progress

from fedmask.ddp import mechanism as distributed_dp
from fedmask.ddp import rotation
from fedmask.ddp import samplers as dpnoise
from fedmask.ddp.mechanism import AggregateNoise, AggregateNoiseConfig, BudgetScope
from fedmask.secagg import prg
from fedmask.secagg.encoding import clip_l2, to_modular
from fedmask.secagg.errors import ParameterError
from fedmask.secagg.rand import SeededRandom, SystemRandom

DELTA = 1e-5
EPSILONS = (1.0, 3.0, 8.0)
PARTICIPANTS = (3, 10, 100)
NOISY = (AggregateNoise.SKELLAM, AggregateNoise.DISCRETE_GAUSSIAN)

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


def pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu}"


def warm_allocator() -> None:
    """Leave this process's memory allocator as a participant's is when it encodes: after
    training. glibc maps fresh zeroed pages for each allocation above its mmap threshold
    (128 KiB at start) and raises the threshold to the size of the largest such block freed (up
    to 32 MiB). A participant has freed tensors of tens of MB while training, so the encoder's
    temporaries then come from the heap; in a fresh process each one pays page faults instead
    (about 1,300 a call at d = 65,536, which doubled the encoding's time)."""
    block = np.empty(3 << 20)  # 24 MiB, as a MiniLM training step's activations
    del block


def _config(
    mechanism: AggregateNoise, n: int, t: int, epsilon: float, dimension: int, bits: int
) -> AggregateNoiseConfig:
    return AggregateNoiseConfig(
        mechanism=mechanism,
        clip_norm=1.0,
        dimension=dimension,
        modulus_bits=bits,
        max_participants=n,
        min_survivors=t,
        epsilon=epsilon,
        delta=DELTA,
        rounds=1,
        budget_scope=BudgetScope.RUN,
    )


def _timed(fn: Callable[[*_Ts], _T], *args: *_Ts) -> tuple[_T, float]:
    """fn(*args) and the CPU seconds of this (single-threaded, pinned) process it took: robust to
    other load on the machine."""
    start = time.process_time()
    out = fn(*args)
    return out, time.process_time() - start


def encoding_cost(dimension: int, repeats: int, mechanism: AggregateNoise) -> dict[str, Any]:
    """Median seconds of each encoding stage for one update, and of the masking."""
    plan = distributed_dp.calibrate(_config(mechanism, 10, 10, 3.0, dimension, 32))
    seed = rotation.rotation_seed(b"bench-ddp")
    rng = SystemRandom()
    # the stages draw from the same kind of stream encode_with_noise uses (AES-256-CTR keyed by the OS)
    stream = SeededRandom(rng.random_bytes(32))
    update = np.random.default_rng(0).normal(size=dimension)
    stages: dict[str, list[float]] = {"rotate": [], "round": [], "noise": [], "reduce": [], "total": []}
    sampler = dpnoise.skellam if mechanism is AggregateNoise.SKELLAM else dpnoise.discrete_gaussian
    # Once untimed: the samplers' per-variance constants are computed with exact arithmetic
    # once per process (a few milliseconds), and would otherwise land in the first repeat.
    distributed_dp.encode_with_noise(update, plan, seed, rng)
    for _ in range(repeats):
        clipped_rotated, t_rotate = _timed(lambda: rotation.rotate(clip_l2(update, 1.0)[0], seed))
        rounded, t_round = _timed(
            lambda x: distributed_dp.conditional_round(x * plan.scale, plan.l2_sensitivity_sq, stream), clipped_rotated
        )
        noise, t_noise = _timed(lambda: sampler(plan.local_variance, plan.padded_dimension, stream))
        _, t_reduce = _timed(lambda x, z: to_modular(x + z, 32), rounded, noise)
        _, t_total = _timed(lambda: distributed_dp.encode_with_noise(update, plan, seed, rng))
        for key, value in zip(stages, (t_rotate, t_round, t_noise, t_reduce, t_total), strict=True):
            stages[key].append(value)
    return {
        "mechanism": mechanism.value,
        "dimension": dimension,
        "padded_dimension": plan.padded_dimension,
        "local_noise_variance": plan.local_variance,
        **{f"{k}_s": statistics.median(v) for k, v in stages.items()},
    }


def masking_cost(length: int, repeats: int, seeds: int = 10) -> float:
    rng = SystemRandom()
    keys = [rng.random_bytes(prg.SEED_BYTES) for _ in range(seeds)]
    times: list[float] = []
    for _ in range(repeats):
        vector = np.zeros(length, dtype=np.uint32)
        _, elapsed = _timed(lambda v: prg.add_masks(v, keys[: seeds // 2], keys[seeds // 2 :]), vector)
        times.append(elapsed)
    return statistics.median(times)


def _updates(n: int, dimension: int, seed: int) -> list[np.ndarray]:
    """n updates of norm 1.3 around a common direction (so that the average is not ~0); clipped to 1."""
    g = np.random.default_rng(seed)
    common = g.normal(size=dimension)
    out = []
    for _ in range(n):
        v = common + g.normal(size=dimension)
        out.append(1.3 * v / np.linalg.norm(v))
    return out


def mse_row(
    mechanism: AggregateNoise, n: int, epsilon: float, dimension: int, bits: int, seed: int
) -> dict[str, object]:
    head = {"mechanism": mechanism.value, "n": n, "epsilon": epsilon, "bits": bits, "dimension": dimension}
    try:
        plan = distributed_dp.calibrate(_config(mechanism, n, n, epsilon, dimension, bits))
    except ParameterError as exc:
        return {**head, "refused": str(exc)}
    updates = _updates(n, dimension, seed)
    truth = np.mean([clip_l2(u, 1.0)[0] for u in updates], axis=0)
    round_seed = rotation.rotation_seed(b"bench-mse-%d" % seed)
    rng = SeededRandom.from_int(seed)
    total = np.zeros(plan.padded_dimension, dtype=prg.dtype_for_bits(bits))
    for u in updates:
        total += distributed_dp.encode_with_noise(u, plan, round_seed, rng)
    prg.reduce_modulus(total, bits)
    decoded = distributed_dp.decode_sum(total, plan, round_seed, n)
    measured = float(np.mean((decoded - truth) ** 2))
    central_variance = distributed_dp.central_gaussian_variance(epsilon, DELTA, 1, 1.0)
    central = central_variance / n**2
    gaussian_noise = np.random.default_rng(seed + 1).normal(scale=math.sqrt(central_variance), size=dimension)
    central_measured = float(np.mean((gaussian_noise / n) ** 2))
    tolerant = distributed_dp.calibrate(_config(mechanism, n, math.ceil(2 * n / 3), epsilon, dimension, bits))
    return {
        **head,
        "scale": plan.scale,
        "headroom_bits": plan.headroom_bits,
        "round_epsilon": plan.round_epsilon,
        "mse": measured,
        "mse_predicted": plan.expected_mse(n),
        "central_mse": central,
        "central_mse_measured": central_measured,
        "ratio": measured / central,
        "ratio_predicted": plan.expected_mse(n) / central,
        "ratio_if_t_two_thirds": tolerant.expected_mse(n) / central,
    }


@click.command()
@click.option(
    "--dimension", type=click.IntRange(1024), default=1_000_000, show_default=True, help="d for the encoding cost."
)
@click.option(
    "--mse-dimension", type=click.IntRange(256), default=32_768, show_default=True, help="d for the MSE table."
)
@click.option(
    "--bits",
    "bits_list",
    type=click.IntRange(8, 64),
    multiple=True,
    default=(32, 16),
    show_default=True,
    help="Modulus bits for the MSE table (repeatable).",
)
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True)
@click.option("--quick", is_flag=True, help="d = 2^16 for the cost, d = 4096 for the MSE, b = 32 only.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def ddp(
    dimension: int,
    mse_dimension: int,
    bits_list: tuple[int, ...],
    repeats: int,
    quick: bool,
    seed: int,
    as_json: bool,
) -> None:
    """Distributed DP: encoding cost next to masking, and MSE next to central DP."""
    if quick:
        dimension, mse_dimension, bits_list = 1 << 16, 4096, (32,)
    pinned = pin_to_one_core()
    warm_allocator()
    rows_todo = [(m, n, e, b) for b in bits_list for m in NOISY for n in PARTICIPANTS for e in EPSILONS]
    with Progress(disable=as_json, transient=True) as progress:
        task = progress.add_task("encoding cost", total=len(NOISY) + 1 + len(rows_todo))
        costs = []
        for mechanism in NOISY:
            costs.append(encoding_cost(dimension, repeats, mechanism))
            progress.advance(task)
        masking = masking_cost(costs[0]["padded_dimension"], repeats)
        progress.advance(task)
        rows = []
        for mechanism, n, epsilon, bits in rows_todo:
            progress.update(task, description=f"MSE {mechanism.value} n={n} eps={epsilon:g} b={bits}")
            rows.append(mse_row(mechanism, n, epsilon, mse_dimension, bits, seed))
            progress.advance(task)
    for cost in costs:
        cost["masking_s"] = masking
        cost["encoding_over_masking"] = cost["total_s"] / masking
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = {"cpu": pinned, "load_average": load, "delta": DELTA, "encoding": costs, "masking_seeds": 10, "mse": rows}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(render(report))


def render(report: dict[str, Any]) -> str:
    lines = [
        f"CPU milliseconds to encode one update on one core ({report['cpu']}; load average "
        f"{', '.join(f'{x:.1f}' for x in report['load_average'] or ())}); masking = add_masks with "
        f"{report['masking_seeds']} seeds on the same padded vector",
        "",
        "| noise | d | padded | rotate | round | noise | mod | encode total | masking | encode / mask |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["encoding"]:
        lines.append(
            f"| {c['mechanism']} | {c['dimension']:,} | {c['padded_dimension']:,} | {1e3 * c['rotate_s']:.2f} "
            f"| {1e3 * c['round_s']:.2f} | {1e3 * c['noise_s']:.2f} | {1e3 * c['reduce_s']:.2f} "
            f"| {1e3 * c['total_s']:.2f} | {1e3 * c['masking_s']:.2f} | {c['encoding_over_masking']:.1f}x |"
        )
    lines += [
        "",
        f"MSE of the decoded average vs the noiseless average (one round, delta = {report['delta']:g}, "
        "calibrated for t = n); central = Gaussian mechanism on the sum at the same (epsilon, delta)",
        "",
        "| noise | b | n | eps | scale | MSE measured | MSE predicted | central MSE | measured / central "
        "| predicted / central | predicted / central if t = 2n/3 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["mse"]:
        if "refused" in r:
            lines.append(f"| {r['mechanism']} | {r['bits']} | {r['n']} | {r['epsilon']:g} | refused: {r['refused']} |")
            continue
        lines.append(
            f"| {r['mechanism']} | {r['bits']} | {r['n']} | {r['epsilon']:g} | {r['scale']:.4g} | {r['mse']:.4g} "
            f"| {r['mse_predicted']:.4g} | {r['central_mse']:.4g} | {r['ratio']:.3f} | {r['ratio_predicted']:.4f} "
            f"| {r['ratio_if_t_two_thirds']:.3f} |"
        )
    return "\n".join(lines)
