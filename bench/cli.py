"""``fedmask bench ...``: benchmarks. Each benchmark lives in its own module of bench/."""

from __future__ import annotations

import click

from coordinator.cli import LazyGroup


class _BenchGroup(LazyGroup):
    commands_by_name = {
        "secagg": "bench.secagg_bench:secagg",
        "grpc": "bench.grpc_bench:grpc_bench",
        "dp": "bench.dp_bench:dp",
        "ddp": "bench.ddp_bench:ddp",
    }


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Benchmarks; each prints its figures next to a reference measured in the same run."""
