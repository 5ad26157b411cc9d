"""``fedmask bench modes``: the malicious-coordinator round next to the semi-honest one.

Malicious mode adds signed key advertisements, signed share envelopes and the consistency check
(each participant signs the survivor list and checks t signatures). Both modes run with
``--workers`` threads per party (default: the usable cores), as the coordinator and the
participants do: masks are added, and a phase's signatures checked, in parts. Both modes carry the
commitments that let the coordinator check every share and name a liar. Each row runs both modes
``--repeats`` times, the two modes taking turns (``fedmask simulate --rehearse --json`` in a fresh
process, 10% dropout at the masked input), and reports medians. The timed round follows a tiny
rehearsal round, as in a deployment (the coordinator and each participant rehearse before their
first round): a cold process would add the first use of each primitive, which weighs more on the
malicious mode's signatures and no deployed round pays.

Figures:

- ``round_parallel_s``: what a deployment waits, participants on their own machines at the same
  time: for each phase, the slowest participant plus the coordinator (network left out);
- ``round_s``: this one process doing every participant's work in turn (the in-memory harness);
- the coordinator's unmask and a participant's share and mask stages.

The ratio malicious / semi-honest of ``round_parallel_s`` is the figure to read; the target is
<= 1.2.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

import click

ROWS = ((10, 100_000), (100, 100_000))
MODES = ("semi-honest", "malicious")
FIGURES = ("round_parallel_s", "round_s", "server_unmask_s", "client_share_s", "client_mask_s")


def simulate(participants: int, dim: int, mode: str, seed: int, workers: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "fedmask.cli", "simulate", "-n", str(participants), "-d", str(dim)]
    command += ["--dropout", "0.1", "--mode", mode, "--seed", str(seed), "--workers", str(workers), "--json"]
    # Warm, as a deployed round is: the coordinator and every participant rehearse first.
    command += ["--rehearse"]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise click.ClickException(f"{' '.join(command)} failed:\n{completed.stderr[-2000:]}")
    row: dict[str, Any] = json.loads(completed.stdout)
    if not row["exact"]:
        raise click.ClickException(f"n={participants} {mode}: the sum was not exact")
    return row


@click.command("modes")
@click.option("--repeats", type=click.IntRange(1, 20), default=5, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Threads for each party's parallel parts (masks, signature checks). Default: the usable cores.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def modes(repeats: int, workers: int | None, as_json: bool) -> None:
    """The malicious-mode round next to the semi-honest one (n = 10 and 100, d = 1e5)."""
    from fedmask.parallel import usable_cpus

    workers = workers or usable_cpus()
    rows: list[dict[str, Any]] = []
    for participants, dim in ROWS:
        # The modes take turns, so that a change in the machine's load weighs on both alike.
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for repeat in range(repeats):
            for mode in MODES:
                if not as_json:
                    click.echo(f"n={participants} d={dim:.0e} {mode} run {repeat + 1}/{repeats} ...", err=True)
                runs[mode].append(simulate(participants, dim, mode, seed=repeat, workers=workers))
        medians = {
            mode: {figure: statistics.median(r[figure] for r in runs[mode]) for figure in FIGURES} for mode in MODES
        }
        ratio = medians["malicious"]["round_parallel_s"] / medians["semi-honest"]["round_parallel_s"]
        serial = medians["malicious"]["round_s"] / medians["semi-honest"]["round_s"]
        rows.append(
            {
                "participants": participants,
                "dim": dim,
                **{mode: medians[mode] for mode in MODES},
                "malicious_over_semi_honest": ratio,
                "malicious_over_semi_honest_serial": serial,
                "target_met": ratio <= 1.2,
            }
        )
    report = {"repeats": repeats, "cpus": os.cpu_count(), "workers": workers, "rows": rows}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    lines = [
        f"medians of {repeats} runs; 10% dropout; {workers} worker thread(s) per party; "
        "round = slowest participant + coordinator, per phase",
        "",
        "| n | d | mode | round s | serial round s | coordinator unmask s | participant share s | participant mask s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for mode in MODES:
            m = row[mode]
            lines.append(
                f"| {row['participants']} | {row['dim']:.0e} | {mode} | {m['round_parallel_s']:.3f} "
                f"| {m['round_s']:.2f} | {m['server_unmask_s']:.3f} | {m['client_share_s']:.4f} "
                f"| {m['client_mask_s']:.4f} |"
            )
        lines.append(
            f"| | | malicious / semi-honest | {row['malicious_over_semi_honest']:.2f} "
            f"| {row['malicious_over_semi_honest_serial']:.2f} | | | |"
        )
    click.echo("\n".join(lines))


if __name__ == "__main__":  # pragma: no cover
    modes()
