"""``fedmask participant node``: take part in a federation until it finishes.

    fedmask participant node --federation DIR --name hospital-a --data records.jsonl \
        --state DIR --coordinator HOST:PORT

Local records are loaded, validated, split and PII-scrubbed here and never leave this process;
the coordinator gets the record-level epsilon spent, and the update with the held-out figures
under secure aggregation. Every task and round start is checked against the participant's
policy (``--policy``). ``--state`` keeps the privacy ledger across rounds and restarts.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click

from fedmask.cli.checks import check_target, check_writable_directory, read_token
from fedmask.cli.quiet import quiet_libraries
from fedmask.participant.data import DataError, load_local_data
from fedmask.participant.node import Node, NodeError
from fedmask.participant.setup import SetupError, load_policy, setup_connection


@click.command("node")
@click.option("--federation", "federation_dir", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--name", required=True, help="This participant's name (its certificate's).")
@click.option("--data", "data_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--state", "state_dir", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option(
    "--coordinator", "target", default="localhost:7443", show_default=True, callback=check_target, help="HOST:PORT"
)
@click.option("--tls-server-name", default=None, help="The coordinator's certificate host, if not the target's.")
@click.option(
    "--heldout-fraction",
    type=click.FloatRange(0.05, 0.5),
    default=None,
    help="Share of the records held out when they carry no 'split' field (refused when they do). [default: 0.2]",
)
@click.option("--connect-attempts", type=click.IntRange(1), default=30, show_default=True)
@click.option(
    "--outage-tolerance",
    type=click.FloatRange(1.0, min_open=False),
    default=3600.0,
    show_default=True,
    help="Seconds to keep retrying while the coordinator is unreachable before giving up.",
)
@click.option(
    "--min-bandwidth",
    type=click.FloatRange(0.01),
    default=2.0,
    show_default=True,
    help="The slowest link (Mbit/s) transfer deadlines allow for (adapter download: 30 s + size / this).",
)
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="This participant's policy (TOML; default participants/NAME/policy.toml in the federation directory, "
    "written with safe defaults on first use).",
)
@click.option(
    "--task",
    type=click.Choice(["classification", "causal_lm"]),
    default="classification",
    show_default=True,
    help="What the records are for: labelled classification, or text for causal-LM training.",
)
@click.option("--insecure", is_flag=True, help="Plaintext gRPC (prints a warning). Never in production.")
def node(
    federation_dir: Path,
    name: str,
    data_path: Path,
    state_dir: Path,
    target: str,
    tls_server_name: str | None,
    heldout_fraction: float | None,
    connect_attempts: int,
    outage_tolerance: float,
    min_bandwidth: float,
    token_file: Path | None,
    policy_file: Path | None,
    task: str,
    insecure: bool,
) -> None:
    """Follow the coordinator's federation: train, report, upload under secure aggregation."""
    quiet_libraries(f"{name}: %(message)s")

    def echo(line: str) -> None:
        click.echo(f"{dt.datetime.now():%H:%M:%S} {name}: {line}", err=True)

    token = read_token(token_file)
    try:
        local = setup_connection(
            federation_dir,
            name,
            target,
            token=token,
            tls_server_name=tls_server_name,
            connect_attempts=connect_attempts,
            insecure=insecure,
            min_bandwidth_bytes_per_s=min_bandwidth * 1e6 / 8,
            outage_tolerance_s=outage_tolerance,
        )
        policy = load_policy(policy_file, federation_dir, name, local.roster, announce=echo)
    except SetupError as exc:
        raise click.ClickException(str(exc)) from None
    # The identity, policy and state directory are checked before the records are read and scrubbed.
    check_writable_directory(state_dir, f"the state directory {state_dir}")
    try:
        data = load_local_data(data_path, task=task, heldout_fraction=heldout_fraction)
    except (DataError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    echo(f"{len(data.train)} training and {len(data.heldout)} held-out records; PII scrubbed: {dict(data.pii_counts)}")
    try:
        result = Node(local.connection, local.identity, data, state_dir, progress=echo, policy=policy, task=task).run()
    except NodeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"name": name, **result}))
