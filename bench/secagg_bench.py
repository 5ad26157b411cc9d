"""``fedmask bench secagg``: the secure-aggregation round at the sizes that matter, next to the
raw AES-CTR throughput of this machine measured in the same run.

Each configuration runs in a fresh process (``fedmask simulate --json``) so that its peak RSS is
its own. The "PRG floor" of the server's unmask is the time the machine needs just to produce
the keystream the unmask must regenerate: (survivors + dropped * their neighbours) masks of
d values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedmask.parallel import usable_cpus

DEFAULT_ROWS = [
    # (participants, dim, graph)
    (10, 100_000, "complete"),
    (10, 1_000_000, "complete"),
    (50, 100_000, "complete"),
    (50, 1_000_000, "complete"),
    (100, 100_000, "complete"),
    (100, 1_000_000, "complete"),
    (1000, 100_000, "secagg+"),
]


# Bytes per AES-CTR call tried for the keystream limit; the fastest one counts.
_LIMIT_CHUNKS = (1 << 16, 1 << 19, 1 << 20)


def aes_ctr_throughput_gbps(megabytes: int = 256, chunks: tuple[int, ...] = _LIMIT_CHUNKS, threads: int = 1) -> float:
    """Keystream bytes per second into preallocated buffers, at the call size that is fastest
    here: one core's (the single-core limit every unmask time is put against), or, with
    ``threads``, that many threads' together (each its own key and ``megabytes``)."""

    def stream(chunk: int) -> None:
        encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor()
        zeros, out = bytes(chunk), bytearray(chunk + 16)
        for _ in range(megabytes * (1 << 20) // chunk):
            encryptor.update_into(zeros, out)

    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for chunk in chunks:
            start = time.perf_counter()
            list(pool.map(stream, [chunk] * threads))
            elapsed = time.perf_counter() - start
            best = max(best, threads * (megabytes * (1 << 20) // chunk) * chunk / elapsed / 1e9)
    return best


def secagg_plus_degree(participants: int, dropout: float) -> tuple[int, int]:
    from fedmask.secagg.graph import find_secagg_plus_parameters

    return find_secagg_plus_parameters(participants, dropout_fraction=dropout, corruption_fraction=1 / 3)


def run_row(participants: int, dim: int, graph: str, dropout: float, seed: int, workers: int = 1) -> dict[str, Any]:
    """One ``fedmask simulate --json`` run in a fresh process: its JSON object."""
    command = [
        sys.executable,
        "-m",
        "fedmask.cli",
        "simulate",
        "-n",
        str(participants),
        "-d",
        str(dim),
        "--dropout",
        str(dropout),
        "--seed",
        str(seed),
        "--workers",
        str(workers),
        "--json",
    ]
    if graph == "secagg+":
        k, t = secagg_plus_degree(participants, dropout)
        command += ["--graph", str(k), "--threshold", str(t)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise click.ClickException(f"{' '.join(command)} failed:\n{completed.stderr[-2000:]}")
    row = json.loads(completed.stdout)
    if not isinstance(row, dict):
        raise click.ClickException(f"{' '.join(command)} printed {type(row).__name__}, not a JSON object")
    return row


def keystream_bytes(row: dict[str, Any]) -> int:
    """The keystream the row's unmask must regenerate: (survivors + dropped * their surviving
    neighbours) masks of d values, 4 bytes each."""
    survivors, dropped = row["survivors"], row["dropped"]
    degree = row["participants"] - 1 if row["graph"] == "complete" else int(row["graph"].split("-")[1])
    expansions = survivors + dropped * min(degree, survivors)
    return int(expansions * row["dim"] * 4)


def prg_floor_s(row: dict[str, Any], throughput_gbps: float) -> float:
    return keystream_bytes(row) / (throughput_gbps * 1e9)


@click.command()
@click.option("--dropout", type=click.FloatRange(0, 0.9), default=0.1, show_default=True)
@click.option("--quick", is_flag=True, help="Only the rows with d = 1e5 and n <= 100.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Threads per mask addition (server and clients) [default: the usable cores].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def secagg(dropout: float, quick: bool, seed: int, workers: int | None, as_json: bool) -> None:
    """Client masking, share stage, server unmask, upload and peak RSS for several (n, d)."""
    rows = [r for r in DEFAULT_ROWS if not quick or (r[1] == 100_000 and r[0] <= 100)]
    throughput = aes_ctr_throughput_gbps()
    workers = workers or usable_cpus()
    results = []
    for participants, dim, graph in rows:
        if not as_json:
            click.echo(f"running n={participants} d={dim:.0e} {graph} ...", err=True)
        # The limits are measured right before each row: on a shared machine they drift over a run.
        one_core = aes_ctr_throughput_gbps(megabytes=64)
        all_workers = aes_ctr_throughput_gbps(megabytes=64, threads=workers) if workers > 1 else one_core
        row = run_row(participants, dim, graph, dropout, seed, workers)
        row["aes_ctr_gbps"] = one_core
        row["aes_ctr_workers_gbps"] = all_workers
        row["prg_floor_s"] = prg_floor_s(row, one_core)
        row["unmask_over_prg_floor"] = row["server_unmask_s"] / row["prg_floor_s"]
        row["prg_workers_floor_s"] = prg_floor_s(row, all_workers)
        row["unmask_over_workers_floor"] = row["server_unmask_s"] / row["prg_workers_floor_s"]
        results.append(row)
    report = {
        "aes_ctr_gbps": throughput,
        "dropout": dropout,
        "cpus": os.cpu_count(),
        "workers": workers,
        "rows": results,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(render_table(report))


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"AES-256-CTR keystream on one core of this machine: {report['aes_ctr_gbps']:.2f} GB/s "
        f"(measured in this run); dropout {report['dropout']:.0%}; "
        f"{report.get('workers', 1)} mask thread(s) on {report['cpus']} CPU(s); each row's floors "
        "measured right before it",
        "",
        "| n | d | graph | t | exact | client share s | client mask s | server unmask s | PRG floor s "
        "| unmask / floor | floor on all mask threads s | unmask / that floor "
        "| responses checked on receipt s | round s | upload B/value | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['participants']} | {r['dim']:.0e} | {r['graph']} | {r['threshold']} | {r['exact']} "
            f"| {r['client_share_s']:.3f} | {r['client_mask_s']:.3f} | {r['server_unmask_s']:.3f} "
            f"| {r['prg_floor_s']:.3f} | {r['unmask_over_prg_floor']:.2f} "
            f"| {r['prg_workers_floor_s']:.3f} | {r['unmask_over_workers_floor']:.2f} "
            f"| {r['server_unmask_receive_s']:.3f} "
            f"| {r['round_s']:.1f} "
            f"| {r['upload_bytes_per_value']:.3f} | {r['server_peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    secagg()
