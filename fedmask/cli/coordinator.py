"""``fedmask coordinator serve``: run secure-aggregation rounds over gRPC.

    fedmask coordinator serve --federation DIR --participants a,b,c --dim D [--threshold T]
        [--port P] [--phase-timeout S] [--mode semi-honest|malicious] [--rounds 1] ...

Prints one line per event (who joined, each phase with who is in, dropouts and why) and, at the
end, the sum summary of every round. The sum itself is written only where ``--output`` says.
Exit status: 0 when every round completed, 3 when a round aborted, 1 on a usage or setup error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from fedmask import pki
from fedmask.cli.checks import check_writable_directory
from fedmask.cli.federate import check_port_free
from fedmask.coordinator import transport as server_transport
from fedmask.coordinator.round_server import (
    DEFAULT_JOIN_TIMEOUT_S,
    DEFAULT_PHASE_TIMEOUT_S,
    CoordinatorServer,
    MessageLimits,
    RoundConfig,
    RoundOutcome,
    ServerSettings,
    new_round_id,
)
from fedmask.durable import write_atomic
from fedmask.secagg.errors import ParameterError
from fedmask.secagg.params import ProtocolParams, SecurityMode, check_graph_degree, default_threshold

EXIT_ABORTED = 3


def _echo(line: str) -> None:
    click.echo(f"{dt.datetime.now():%H:%M:%S} {line}")


def _participant_names(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if len(set(names)) != len(names):
        raise click.BadParameter("a participant is listed twice", param_hint="--participants")
    if len(names) < 2:
        raise click.BadParameter("at least 2 participants", param_hint="--participants")
    return tuple(sorted(names))


def check_writable_output(output: Path) -> None:
    """A one-line error if the sum cannot be written to ``output`` (its folder made if missing)."""
    check_writable_directory(output.parent, f"--output {output}")
    if output.exists() and not os.access(output, os.W_OK):
        raise click.ClickException(f"cannot write --output {output}: Permission denied")


def _output_path(output: Path, index: int, rounds: int) -> Path:
    if rounds == 1:
        return output
    return output.with_name(f"{output.stem}-round{index}{output.suffix or '.npy'}")


@click.group("coordinator")
def coordinator() -> None:
    """The coordinator: runs secure-aggregation rounds; participants dial in."""


@coordinator.command("serve")
@click.option(
    "--federation",
    "federation_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("federation"),
    envvar="FEDMASK_PKI_DIR",
    show_default=True,
    help="Federation directory from `fedmask pki` (CA, coordinator certificate, roster).",
)
@click.option("--name", "coordinator_name", default="main", show_default=True, help="Coordinator certificate name.")
@click.option(
    "--participants",
    default=None,
    help="Comma-separated names selected for the round(s) (default: everyone in the roster); "
    "ids are their sorted positions.",
)
@click.option("--dim", "dimension", type=click.IntRange(1, 1 << 31), required=True, help="Vector length d.")
@click.option(
    "--threshold", type=click.IntRange(2), default=None, help="t (default: floor(2h/3)+1 of the h share holders)."
)
@click.option("--modulus-bits", type=click.IntRange(1, 64), default=32, show_default=True, help="Arithmetic mod 2^b.")
@click.option(
    "--neighbours", type=click.IntRange(2), default=None, help="SecAgg+ graph degree k, even (default: complete graph)."
)
@click.option("--mode", type=click.Choice([m.value for m in SecurityMode]), default="malicious", show_default=True)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for every interface)."
)
@click.option("--port", type=click.IntRange(0, 65535), default=50051, show_default=True, help="0 picks a free port.")
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Also serve the gRPC health service in plaintext on this port (for probes without a client certificate).",
)
@click.option(
    "--join-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_JOIN_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for the participants to join.",
)
@click.option(
    "--phase-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_PHASE_TIMEOUT_S,
    show_default=True,
    help="Seconds each protocol phase waits for messages.",
)
@click.option(
    "--rounds", type=click.IntRange(1), default=1, show_default=True, help="Rounds to run, one after the other."
)
@click.option(
    "--auth",
    type=click.Choice(["mtls", "token"]),
    default="mtls",
    show_default=True,
    help="mtls: client certificates; token: one-way TLS + enrolment tokens.",
)
@click.option("--insecure", is_flag=True, help="Plaintext, unauthenticated gRPC (loopback experiments only).")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write each round's sum here (.npy; round number added when --rounds > 1).",
)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line summarising every round.")
@click.option("-v", "--verbose", is_flag=True, help="Log transport details to stderr.")
def serve(
    federation_dir: Path,
    coordinator_name: str,
    participants: str | None,
    dimension: int,
    threshold: int | None,
    modulus_bits: int,
    neighbours: int | None,
    mode: str,
    host: str,
    port: int,
    health_port: int | None,
    join_timeout: float,
    phase_timeout: float,
    rounds: int,
    auth: str,
    insecure: bool,
    output: Path | None,
    as_json: bool,
    verbose: bool,
) -> None:
    """Run secure-aggregation rounds for the selected participants."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:  # pki.warn_insecure both prints and logs its warning: show it once
        logging.getLogger(pki.__name__).setLevel(logging.ERROR)
    security_mode = SecurityMode(mode)
    try:
        if insecure:
            pki.warn_insecure("coordinator")
            with_roster = security_mode is SecurityMode.MALICIOUS or participants is None
            security = server_transport.insecure_security(federation_dir if with_roster else None)
        elif auth == "token":
            security = server_transport.token_security(federation_dir, coordinator_name)
        else:
            security = server_transport.mtls_security(federation_dir, coordinator_name)
    except (pki.PkiError, OSError) as exc:
        raise click.ClickException(pki.in_federation_directory(exc, federation_dir)) from exc

    if participants is not None:
        names = _participant_names(participants)
    else:
        names = tuple(security.roster.names) if security.roster is not None else ()
        if len(names) < 2:
            raise click.UsageError("the roster has fewer than 2 participants: enrol more or give --participants")
    identity_keys: dict[str, bytes] = {}
    if security.roster is not None:
        unknown = [n for n in names if n not in security.roster]
        if unknown:
            raise click.ClickException(f"not in the federation roster: {', '.join(unknown)}")
        identity_keys = dict(security.roster.identity_keys)

    if neighbours is not None and neighbours % 2 == 1 and neighbours < len(names) - 1:
        # Harary graphs of odd degree need an even count: one participant missing the key phase
        # would abort the round.
        raise click.BadParameter(
            f"use an even degree: an odd one ({neighbours}) needs an even number of participants, and one"
            " missing the key phase would abort the round",
            param_hint="--neighbours",
        )
    try:
        check_graph_degree(neighbours, len(names))
        if threshold is None:
            holders = ProtocolParams(dimension, modulus_bits, 2, security_mode, neighbours).holders_per_secret(
                len(names)
            )
            threshold = default_threshold(len(names), security_mode, holders)
        params = ProtocolParams(dimension, modulus_bits, threshold, security_mode, neighbours)
        params.validate(len(names))
        configs = [
            RoundConfig(new_round_id(), params, names, join_timeout, phase_timeout, identity_keys)
            for _ in range(rounds)
        ]
    except (ParameterError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc

    # Refused now in one line: gRPC would print its own error line first, and a sum that cannot be
    # written would be lost only after every participant had sent its input.
    check_port_free(host, port)
    if health_port is not None:
        check_port_free(host, health_port)
    if output is not None:
        check_writable_output(output)

    limits = MessageLimits.for_round(params, len(names))
    server = CoordinatorServer(
        security,
        limits,
        settings=ServerSettings(host, port, health_port),
        max_participants=len(names),
        progress=_echo,
    )

    def listening(bound: int) -> None:
        health = f"; health (plaintext) on {host}:{server.health_port}" if server.health_port else ""
        _echo(
            f"listening on {host}:{bound} ({security.authenticator.description}){health}; "
            f"{len(names)} participants, d={dimension}, b={modulus_bits}, t={threshold}, "
            f"{security_mode.value}, {rounds} round(s); max message {limits.receive_bytes} bytes"
        )

    try:
        outcomes = asyncio.run(_serve(server, configs, listening))
    except OSError as exc:
        raise click.ClickException(str(exc)) from exc

    summaries = []
    for index, outcome in enumerate(outcomes, start=1):
        summary = outcome.summary()
        summary["round"] = index
        if outcome.result is not None and output is not None:
            path = _output_path(output, index, rounds)
            encoded = io.BytesIO()
            np.save(encoded, outcome.result)
            write_atomic(path, encoded.getvalue())
            summary["output"] = str(path)
        summaries.append(summary)
        _report(index, outcome, summary)
    if as_json:
        click.echo(json.dumps({"rounds": summaries, "transport": _transport_name(insecure, auth)}))
    if not all(o.completed for o in outcomes):
        raise SystemExit(EXIT_ABORTED)


async def _serve(
    server: CoordinatorServer, configs: list[RoundConfig], listening: Callable[[int], None]
) -> list[RoundOutcome]:
    listening(await server.start())
    outcomes = []
    try:
        for index, config in enumerate(configs, start=1):
            if len(configs) > 1:
                _echo(f"round {index}/{len(configs)}: {config.round_id.decode()}")
            outcomes.append(await server.run_round(config))
    finally:
        await server.stop()
    return outcomes


def _transport_name(insecure: bool, auth: str) -> str:
    return "insecure" if insecure else ("tls+token" if auth == "token" else "mtls")


def _report(index: int, outcome: RoundOutcome, summary: dict[str, Any]) -> None:
    if outcome.completed:
        if outcome.result is None:
            raise RuntimeError(f"round {index} completed without a sum")
        _echo(
            f"round {index}: completed in {outcome.round_s:.3f} s with {len(outcome.survivors)}/"
            f"{len(outcome.participants)} survivors"
        )
        _echo(
            f"round {index}: sum of d={outcome.result.shape[0]} values mod 2^b, sha256 {summary['sum_sha256']}, "
            f"first values {summary['sum_preview']}"
            + (f", written to {summary['output']}" if "output" in summary else "")
        )
    else:
        phase = outcome.abort_phase.value if outcome.abort_phase else "join"
        _echo(f"round {index}: ABORTED in {phase}: {outcome.abort_reason}")
    for name, reason in sorted(outcome.dropped.items()):
        _echo(f"round {index}: dropped {name}: {reason}")


from fedmask.cli.federate import run  # noqa: E402 - `fedmask coordinator run` lives with the federation loop

coordinator.add_command(run)

from fedmask.cli.operations import OPERATIONS_COMMANDS, STATE_ENV  # noqa: E402 - the operator's view of a running federation

for _command in OPERATIONS_COMMANDS:
    coordinator.add_command(_command)


_state_option = click.option(
    "--state",
    "state_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    envvar=STATE_ENV,
    required=True,
    help=f"The coordinator's state directory (as given to `coordinator run --state`; or ${STATE_ENV}).",
)
# `restore` replaces the store's database: it takes its target only from the command line.
_restore_state_option = click.option(
    "--state",
    "state_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="The coordinator's state directory to restore into (named explicitly: the environment is not read).",
)


@coordinator.command("verify")
@_state_option
def verify_command(state_dir: Path) -> None:
    """Check the store: SQLite's integrity, every checkpoint re-hashed, the ledger readable."""
    import sqlite3

    from fedmask.coordinator.store import FederationStore, StoreError

    database = state_dir / "federation.db"
    try:
        with FederationStore(database, read_only=True) as store:
            problems = store.verify()
            rounds, ledger = store.rounds(), store.ledger()
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.Error as exc:  # damage integrity_check cannot even get past
        raise click.ClickException(f"{database} is damaged: {exc}") from None
    for problem in problems:
        click.echo(f"problem: {problem}")
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) in {state_dir}")
    committed = sum(1 for r in rounds if r.state.value == "committed")
    click.echo(f"ok: {committed} committed round(s), {len(ledger)} ledger entries, every checkpoint intact")


@coordinator.command("backup")
@_state_option
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
def backup_command(state_dir: Path, out_path: Path) -> None:
    """Write a consistent copy of the store's database (safe while the coordinator runs)."""
    from fedmask.coordinator.store import FederationStore, StoreError

    try:
        with FederationStore(state_dir / "federation.db", read_only=True) as store:
            written = store.backup(out_path)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"backup written to {written}; to restore: fedmask coordinator restore --state {state_dir} --from {written}"
    )


@coordinator.command("restore")
@_restore_state_option
@click.option("--from", "backup_path", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True)
def restore_command(state_dir: Path, backup_path: Path) -> None:
    """Put a backup in place of the store's database (stop the coordinator first). Rounds
    committed after the backup are run again."""
    from fedmask.coordinator.store import StoreError, restore_backup

    try:
        problems = restore_backup(backup_path, state_dir / "federation.db")
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    for problem in problems:
        click.echo(f"problem: {problem}")
    if problems:
        raise click.ClickException(f"restored, but {len(problems)} problem(s) remain in {state_dir}")
    click.echo(f"restored {state_dir}/federation.db from {backup_path}; every indexed checkpoint intact")


if __name__ == "__main__":  # pragma: no cover - `python -m fedmask.cli.coordinator serve ...`
    coordinator()
