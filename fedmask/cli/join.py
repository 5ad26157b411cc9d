"""``fedmask participant join``: take part in the coordinator's secure-aggregation round.

    fedmask participant join --federation DIR --name NAME --coordinator HOST:PORT
        (--input FILE.npy | --synthetic-seed N)

The participant dials out (it never listens), authenticates with its client certificate from
the federation directory (or ``--token-file`` over one-way TLS, or ``--insecure``), and uploads
its input masked: the coordinator learns only the sum. Exit status: 0 when the round completed,
3 when it aborted or this participant was dropped, 1 on a usage or setup error.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

from fedmask import pki
from fedmask.cli.checks import TOKEN_ENV, check_target, read_token
from fedmask.participant.grpc_client import Outcome, take_part
from fedmask.participant.policy import PolicyViolation
from fedmask.participant.setup import (
    SetupError,
    load_input,
    load_policy,
    read_input,
    setup_connection,
    synthetic_input,
)
from fedmask.proto import wire

EXIT_ABORTED = 3


def _echo(line: str) -> None:
    click.echo(f"{dt.datetime.now():%H:%M:%S} {line}")


def _prefixed(prefix: str) -> Callable[[str], None]:
    """``_echo`` with ``prefix`` before every line."""
    return lambda line: _echo(prefix + line)


@click.command("join")
@click.option(
    "--federation",
    "federation_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("federation"),
    envvar="FEDMASK_PKI_DIR",
    show_default=True,
    help="Federation directory holding ca/ca.pem, participants/NAME/ and the roster.",
)
@click.option("--name", required=True, help="This participant's name (as in its certificate).")
@click.option("--coordinator", "target", required=True, callback=check_target, help="HOST:PORT of the coordinator.")
@click.option(
    "--input",
    "input_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Encoded input: .npy of d integers in [0, 2^b).",
)
@click.option(
    "--synthetic-seed",
    type=click.IntRange(0),
    default=None,
    help="Contribute a random input derived from this seed instead (demos, tests: anyone knowing the "
    "seed knows the input).",
)
@click.option(
    "--rounds", type=click.IntRange(1), default=1, show_default=True, help="Take part in this many consecutive rounds."
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help=f"Enrolment token (one-way TLS instead of a client certificate); or env {TOKEN_ENV}.",
)
@click.option(
    "--tls-server-name", default=None, help="Expected name in the coordinator certificate, when HOST differs."
)
@click.option(
    "--connect-attempts",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Attempts to reach the coordinator (exponential backoff with jitter, 0.5 s doubling to 8 s).",
)
@click.option(
    "--round-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=3600.0,
    show_default=True,
    help="Seconds one round may take, joining included.",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="This participant's policy (TOML; default participants/NAME/policy.toml in the federation directory, "
    "written with safe defaults on first use). Every round start is checked against it.",
)
@click.option(
    "--accept-differencing-risk",
    is_flag=True,
    help="With --input and --rounds > 1: send the same input every round anyway (two sums that differ by one "
    "participant reveal its input).",
)
@click.option("--insecure", is_flag=True, help="Plaintext, unauthenticated gRPC (loopback experiments only).")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line describing each round's outcome.")
@click.option("-v", "--verbose", is_flag=True, help="Log transport details to stderr.")
def join(
    federation_dir: Path,
    name: str,
    target: str,
    input_path: Path | None,
    synthetic_seed: int | None,
    rounds: int,
    token_file: Path | None,
    tls_server_name: str | None,
    connect_attempts: int,
    round_timeout: float,
    policy_file: Path | None,
    accept_differencing_risk: bool,
    insecure: bool,
    as_json: bool,
    verbose: bool,
) -> None:
    """Join the coordinator's round and contribute an input under secure aggregation."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:  # pki.warn_insecure both prints and logs its warning: show it once
        logging.getLogger(pki.__name__).setLevel(logging.ERROR)
    if wire.PARTICIPANT_NAME.fullmatch(name) is None:
        raise click.BadParameter("names are lower-case DNS labels: [a-z0-9][a-z0-9-]{0,62}", param_hint="--name")
    if (input_path is None) == (synthetic_seed is None):
        raise click.UsageError("give exactly one of --input FILE.npy and --synthetic-seed N")
    if input_path is not None:
        try:
            read_input(input_path)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--input") from None
    token = read_token(token_file)
    try:
        local = setup_connection(
            federation_dir, name, target, token=token, tls_server_name=tls_server_name,
            connect_attempts=connect_attempts, round_timeout_s=round_timeout, insecure=insecure,
        )  # fmt: skip
        policy = load_policy(policy_file, federation_dir, name, local.roster, announce=_echo)
        if input_path is not None:
            policy.check_repeated_input(rounds, accept_differencing_risk)
    except (SetupError, PolicyViolation) as exc:
        raise click.ClickException(str(exc)) from None

    def input_for_round(start: wire.RoundStart) -> np.ndarray:
        if input_path is not None:
            return load_input(input_path, start)
        assert synthetic_seed is not None  # one of the two was given
        return synthetic_input(synthetic_seed, start)

    outcomes: list[Outcome] = []
    for index in range(1, rounds + 1):
        prefix = f"[{name} round {index}/{rounds}] " if rounds > 1 else f"[{name}] "
        outcome = take_part(
            local.connection,
            local.identity,
            input_for_round,
            progress=_prefixed(prefix),
            policy=policy,
        )
        outcomes.append(outcome)
        if outcome.completed:
            _echo(
                f"{prefix}done: the coordinator holds the sum over {len(outcome.survivors)} participants; "
                f"sent {outcome.bytes_sent} bytes"
            )
        else:
            _echo(f"{prefix}not completed: {outcome.reason}")
            break
    if as_json:
        click.echo(json.dumps({"name": name, "rounds": [o.summary() for o in outcomes]}))
    if not all(o.completed for o in outcomes) or len(outcomes) < rounds:
        raise SystemExit(EXIT_ABORTED)


if __name__ == "__main__":  # pragma: no cover - `python -m fedmask.cli.join ...`
    join()
