"""``fedmask coordinator run``: a federation of DP adapter rounds under secure aggregation.

    fedmask coordinator run --federation DIR --state DIR --config federation.json [--port P]

``--config`` is a ``FederationConfig`` as JSON (participants, rounds, training settings, clip,
deadlines); it is validated before anything listens, and stored with the run: restarting with
the same ``--state`` resumes after the last committed round (an interrupted round runs again),
and restarting with another configuration is refused. At the end ``STATE/final.json`` holds the
ledger and the participants' final held-out figures; with ``--report DIR`` the coordinator also
writes the demo's report there (report.md with the per-round table, report.json, report.png,
global_adapter/ in PEFT format; no single-party baselines: the coordinator holds no records) and
prints report.md.
Exit status: 0 when every round committed, 3 when a round failed every attempt, 1 on a setup error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import time
import warnings
from pathlib import Path

import click

from fedmask import pki
from fedmask.coordinator import transport as server_transport
from fedmask.coordinator.config import FederationConfig, FederationError
from fedmask.coordinator.federation import Federation
from fedmask.coordinator.round_server import ServerSettings
from fedmask.durable import write_text_atomic

EXIT_FAILED = 3


def check_port_free(host: str, port: int) -> None:
    """A one-line error now if ``host:port`` cannot be listened on, rather than a failure after
    the federation's state has been written."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _echo(line: str) -> None:
    click.echo(f"{dt.datetime.now():%H:%M:%S} coordinator: {line}", err=True)


@click.command("run")
@click.option(
    "--federation",
    "federation_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="The federation directory made by `fedmask pki` (CA, certificates, roster).",
)
@click.option("--name", default="main", show_default=True, help="The coordinator certificate to serve with.")
@click.option(
    "--state",
    "state_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Where the SQLite store and the checkpoints live.",
)
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=7443, show_default=True)
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="A plaintext listener with only the health service, for probes.",
)
@click.option("--token-auth", is_flag=True, help="One-way TLS; participants authenticate with enrolment tokens.")
@click.option("--insecure", is_flag=True, help="Plaintext gRPC (prints a warning). Never in production.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also write the report (per-round table, plot, global adapter) here and print it.",
)
@click.option(
    "--allow-config-change",
    is_flag=True,
    help="Resume a state directory with a changed config (it becomes the next config version).",
)
def run(
    federation_dir: Path,
    name: str,
    state_dir: Path,
    config_path: Path,
    host: str,
    port: int,
    health_port: int | None,
    token_auth: bool,
    insecure: bool,
    report_dir: Path | None,
    allow_config_change: bool,
) -> None:
    """Run every round of the federation described by --config."""
    started = time.monotonic()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecations
    try:
        config = FederationConfig.from_json(json.loads(config_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, FederationError) as exc:
        raise click.ClickException(f"{config_path}: {exc}") from None
    try:
        if insecure:
            pki.warn_insecure("coordinator")
            security = server_transport.insecure_security(federation_dir)
        elif token_auth:
            security = server_transport.token_security(federation_dir, name)
        else:
            security = server_transport.mtls_security(federation_dir, name)
    except (pki.PkiError, OSError) as exc:
        raise click.ClickException(f"{exc} (federation directory {federation_dir})") from None
    identity_keys = dict(security.roster.identity_keys) if security.roster is not None else {}
    for listen_port in (port, health_port):
        if listen_port:  # refused before the store is written (the server binds after loading it)
            check_port_free(host, listen_port)
    settings = ServerSettings(host=host, port=port, health_port=health_port)
    federation = Federation(
        config,
        state_dir,
        security,
        settings=settings,
        progress=_echo,
        identity_keys=identity_keys,
        allow_config_change=allow_config_change,
    )
    try:
        ledger = asyncio.run(federation.run())
    except FederationError as exc:
        _echo(f"stopped: {exc}")
        raise SystemExit(EXIT_FAILED) from None
    final = {
        "ledger": ledger,
        "final_epsilon": {n: r.epsilon for n, r in sorted(federation.service.final_reports.items())},
    }
    write_text_atomic(state_dir / "final.json", json.dumps(final, indent=2, default=str) + "\n")
    _echo(f"done: {len(ledger)} rounds committed; record-level epsilon spent {final['final_epsilon']}")
    if report_dir is not None:
        _write_report(report_dir, state_dir, config, time.monotonic() - started)


def _write_report(report_dir: Path, state_dir: Path, config: FederationConfig, wall_s: float) -> None:
    """The demo's report from STATE/final.json (round-tripped through JSON, as the demo reads it)."""
    from fedmask.demo.report import build_report, write_report

    final = json.loads((state_dir / "final.json").read_text(encoding="utf-8"))
    report = build_report(final, {}, wall_s, wall_s, config.to_json())
    write_report(report, report_dir, final, config.training, state_dir)
    click.echo((report_dir / "report.md").read_text(encoding="utf-8"))
    _echo(f"report: {report_dir / 'report.md'}, report.json, report.png, global_adapter/")
