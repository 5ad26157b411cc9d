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

Beside it, measured in the same run, the Ed25519 work that malicious mode puts on the critical
path whatever else is done (``ed25519_floor_s``; ``signature_floor``): the coordinator checks
the n advertisements, a participant checks its n - 1 neighbours' and signs its n - 1 envelopes,
signs the survivor list, and checks t signatures on it, each check batch on ``--workers``
threads as the round does. ``semi-honest + floor`` is the round malicious mode cannot beat
without fewer signatures.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from fedmask.secagg import keys
from fedmask.secagg.params import SecurityMode, default_threshold

ROWS = ((10, 100_000), (100, 100_000))
MODES = ("semi-honest", "malicious")
FIGURES = ("round_parallel_s", "round_s", "server_unmask_s", "client_share_s", "client_mask_s")


@dataclass(frozen=True)
class SignatureWork:
    """The Ed25519 operations malicious mode adds to a complete-graph round's critical path."""

    coordinator_checks: int  # the advertisements
    participant_checks: tuple[int, ...]  # in its share stage (neighbours), in its unmask (t)
    participant_signatures: tuple[int, ...]  # its envelopes, the survivor list

    @classmethod
    def of_round(cls, participants: int) -> SignatureWork:
        threshold = default_threshold(participants, SecurityMode.MALICIOUS)
        others = participants - 1
        return cls(participants, (others, threshold), (others, 1))


def signature_floor(work: SignatureWork, workers: int, repeats: int = 31) -> float:
    """Seconds the Ed25519 operations of ``work`` take here, one batch after another, each batch
    of checks in ``workers`` parts as the protocol's ``verify_many`` runs them; medians of
    ``repeats`` timings of each batch."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedmask.parallel import ThreadPartRunner

    runner = ThreadPartRunner(workers) if workers > 1 else None
    identity = Ed25519PrivateKey.generate()
    signer = keys.Signer(identity)
    public = identity.public_key().public_bytes_raw()
    payload = secrets.token_bytes(160)  # about an envelope's signed payload; Ed25519 hardly minds
    check = (public, signer.sign(payload), payload)

    def timed(action: Callable[[], object]) -> float:
        action()  # the first call of each kind warms up
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            action()
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    try:
        total = 0.0
        for count in (work.coordinator_checks, *work.participant_checks):
            total += timed(functools.partial(keys.verify_many, [check] * count, runner))
        for count in work.participant_signatures:
            total += timed(functools.partial(sign_many, signer, payload, count))
        return total
    finally:
        if runner is not None:
            runner.close()


def sign_many(signer: keys.Signer, payload: bytes, count: int) -> list[bytes]:
    return [signer.sign(payload) for _ in range(count)]


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
        floors: list[float] = []
        work = SignatureWork.of_round(participants)
        for repeat in range(repeats):
            for mode in MODES:
                if not as_json:
                    click.echo(f"n={participants} d={dim:.0e} {mode} run {repeat + 1}/{repeats} ...", err=True)
                runs[mode].append(simulate(participants, dim, mode, seed=repeat, workers=workers))
            # Between the rounds, so that the host's speed weighs on it as on them.
            floors.append(signature_floor(work, workers))
        medians = {
            mode: {figure: statistics.median(r[figure] for r in runs[mode]) for figure in FIGURES} for mode in MODES
        }
        semi_honest = medians["semi-honest"]["round_parallel_s"]
        ratio = medians["malicious"]["round_parallel_s"] / semi_honest
        serial = medians["malicious"]["round_s"] / medians["semi-honest"]["round_s"]
        floor = statistics.median(floors)
        rows.append(
            {
                "participants": participants,
                "dim": dim,
                **{mode: medians[mode] for mode in MODES},
                "malicious_over_semi_honest": ratio,
                "malicious_over_semi_honest_serial": serial,
                "target_met": ratio <= 1.2,
                "ed25519_floor_s": floor,
                "semi_honest_plus_floor_over_semi_honest": (semi_honest + floor) / semi_honest,
                "malicious_over_semi_honest_plus_floor": medians["malicious"]["round_parallel_s"]
                / (semi_honest + floor),
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
        lines.append(f"| | | Ed25519 on the critical path | {row['ed25519_floor_s']:.4f} | | | | |")
        lines.append(
            f"| | | (semi-honest + Ed25519) / semi-honest | "
            f"{row['semi_honest_plus_floor_over_semi_honest']:.2f} | | | | |"
        )
        lines.append(
            f"| | | malicious / (semi-honest + Ed25519) | {row['malicious_over_semi_honest_plus_floor']:.2f} | | | | |"
        )
    click.echo("\n".join(lines))


if __name__ == "__main__":  # pragma: no cover
    modes()
