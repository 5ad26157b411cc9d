"""``fedmask bench ...``: benchmarks. Each benchmark lives in its own module of bench/."""

from __future__ import annotations

import click

from fedmask.cli import LazyGroup


class _BenchGroup(LazyGroup):
    commands_by_name = {
        "secagg": "fedmask.bench.secagg_bench:secagg",
        "grpc": "fedmask.bench.grpc_bench:grpc_bench",
        "dp": "fedmask.bench.dp_bench:dp",
        "ddp": "fedmask.bench.ddp_bench:ddp",
        "pii": "fedmask.bench.pii_bench:pii",
        "modes": "fedmask.bench.modes_bench:modes",
        "recipe": "fedmask.bench.recipe_bench:recipe",
        "round": "fedmask.bench.round_bench:round_bench",
        "fedavg": "fedmask.bench.fedavg_bench:fedavg",
    }


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Benchmarks; each prints its figures next to a reference measured in the same run."""
