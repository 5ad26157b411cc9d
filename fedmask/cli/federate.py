"""``fedmask coordinator run``: a federation of DP adapter rounds under secure aggregation.

    fedmask coordinator run --federation DIR --state DIR --config federation.json [--port P]

``--config`` is a ``FederationConfig`` as JSON (participants, rounds, training settings, clip,
deadlines); it is validated, against the model's shape too (``lora_layers``), before anything
listens or is written (``fedmask doctor coordinator --config`` runs the same validation), and
stored with the run: restarting with the same ``--state`` resumes after the last committed round
(an interrupted round runs again), and restarting with another configuration is refused. At the
end ``STATE/final.json`` holds the ledger and the participants' final held-out figures; with
``--report DIR`` (checked writable at start) the coordinator also writes the demo's report there
(report.md with the per-round table, report.json, report.png, global_adapter/ in PEFT format; no
single-party baselines: the coordinator holds no records) and prints report.md.

For the operator (docs/operations.md): progress goes to stderr and to ``--log-file`` (default
``STATE/coordinator.log``) as text or JSON lines (``--log-format``); ``STATE/status.json`` says what
is happening now (``fedmask coordinator status``); ``--metrics-port`` serves Prometheus metrics;
``--dashboard-port`` serves a read-only web dashboard (loopback only unless ``--dashboard-public``).
SIGTERM or SIGINT (``fedmask coordinator stop``) finishes the attempt in progress and stops; a
second one aborts it at once.

Exit status: 0 when the federation finished, 3 when it could not go on, 4 when it was stopped on
request before its last round (restart with the same ``--state`` to resume), 1 on a setup error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fedmask import pki
from fedmask.adapter.config import TrainingConfig
from fedmask.cli.checks import check_writable_directory
from fedmask.cli.operations import ledger_document, open_store, participants_json, rounds_document, status_document
from fedmask.coordinator import transport as server_transport
from fedmask.coordinator.config import FederationConfig, FederationError, load_federation_config
from fedmask.coordinator.dashboard import DashboardError, is_loopback, serve_dashboard
from fedmask.coordinator.federation import EXIT_FAILED, EXIT_FINISHED, Federation, initial_adapter
from fedmask.coordinator.observability import LOG_FORMATS, PROGRESS_LOGGER, LogFormat, start_logging
from fedmask.coordinator.round_server import ServerSettings
from fedmask.durable import write_text_atomic

if TYPE_CHECKING:
    from fedmask.participant.data import Record

LOG_FILE_NAME = "coordinator.log"


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


def federation_document(state_dir: Path) -> dict[str, Any]:
    """The federation's fixed facts the dashboard shows beside the live ones: its participants,
    rounds and privacy budget (the training target epsilon every participant trains to)."""
    with open_store(state_dir) as store:
        federation_id = store.federation_id()
        config = store.config()
    training = config.get("training") or {}
    defaults = {f.name: f.default for f in dataclasses.fields(TrainingConfig)}
    return {
        "state_dir": str(state_dir),
        "federation_id": federation_id,
        "participants": list(config.get("participants", [])),
        "rounds": config.get("rounds"),
        "target_epsilon": training.get("target_epsilon", defaults["target_epsilon"]),
        "target_delta": training.get("target_delta", defaults["target_delta"]),
        "aggregate_noise": config.get("aggregate_noise", "none"),
        "aggregate_epsilon": config.get("aggregate_epsilon"),
    }


def dashboard_documents(state_dir: Path) -> dict[str, Callable[[], Any]]:
    """What the dashboard serves at /api/NAME.json: the documents ``fedmask coordinator
    status|rounds|participants|ledger --json`` print, built by the same functions, and the
    federation's budget."""
    return {
        "status": lambda: status_document(state_dir),
        "rounds": lambda: rounds_document(state_dir),
        "participants": lambda: participants_json(state_dir),
        "ledger": lambda: ledger_document(state_dir),
        "federation": lambda: federation_document(state_dir),
    }


def _echo(line: str) -> None:
    """A line of the coordinator's log (stderr and the log file, in the chosen format)."""
    logging.getLogger(PROGRESS_LOGGER).info(line)


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
    "--evaluate",
    "evaluate_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Public records the coordinator holds (JSONL or CSV, the participants' format; never a party's own "
    "data): the --report scores the global adapter on every one of them, next to the majority class.",
)
@click.option(
    "--allow-config-change",
    is_flag=True,
    help="Resume a state directory with a changed config (it becomes the next config version).",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="text: one line per event; json: one JSON object per line (for log shippers).",
)
@click.option(
    "--log-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=f"Also write the log here (appended; rotated files are followed) [default: STATE/{LOG_FILE_NAME}].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on this port at /metrics (off by default; 0 picks a free port).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics endpoint listens on.",
)
@click.option(
    "--dashboard-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve a read-only web dashboard on this port (off by default; 0 picks a free port).",
)
@click.option(
    "--dashboard-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the dashboard listens on (loopback unless --dashboard-public).",
)
@click.option(
    "--dashboard-public",
    is_flag=True,
    help="Allow a --dashboard-host that is not loopback (it has no authentication: put it behind your own TLS).",
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
    evaluate_path: Path | None,
    allow_config_change: bool,
    log_format: LogFormat,
    log_file: Path | None,
    metrics_port: int | None,
    metrics_host: str,
    dashboard_port: int | None,
    dashboard_host: str,
    dashboard_public: bool,
) -> None:
    """Run every round of the federation described by --config."""
    started = time.monotonic()
    if dashboard_port is not None and not dashboard_public and not is_loopback(dashboard_host):
        raise click.ClickException(
            f"--dashboard-host {dashboard_host} is not loopback and the dashboard has no authentication: "
            "add --dashboard-public to serve it there (behind your own TLS and authentication)"
        )
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecations
    try:
        config = load_federation_config(config_path)
    except FederationError as exc:
        raise click.ClickException(str(exc)) from None
    # Read before any round runs: a bad evaluation file must not surface after hours of training.
    evaluation = _evaluation_records(evaluate_path, report_dir, config) if evaluate_path is not None else None
    try:
        if insecure:
            pki.warn_insecure("coordinator")
            security = server_transport.insecure_security(federation_dir)
        elif token_auth:
            security = server_transport.token_security(federation_dir, name)
        else:
            security = server_transport.mtls_security(federation_dir, name)
        # The roster is read again before every round: `fedmask pki revoke`/`issue` need no restart.
        roster_loader = None
        if security.roster is not None:
            roster_loader = functools.partial(pki.load_roster, federation_dir, pki.load_ca_certificate(federation_dir))
    except (pki.PkiError, OSError) as exc:
        raise click.ClickException(pki.in_federation_directory(exc, federation_dir)) from None
    identity_keys = dict(security.roster.identity_keys) if security.roster is not None else {}
    listeners = ((host, port), (host, health_port), (metrics_host, metrics_port), (dashboard_host, dashboard_port))
    for listen_host, listen_port in listeners:
        if listen_port is not None:  # refused before the store is written (the server binds after loading it)
            check_port_free(listen_host, listen_port)
    # Refused before anything is written or trained: the report is written only at the very end.
    check_writable_directory(state_dir, f"--state {state_dir}")
    if log_file is not None:
        check_writable_directory(log_file.parent, f"--log-file {log_file}")
    if report_dir is not None:
        check_writable_directory(report_dir, f"--report {report_dir}")
    settings = ServerSettings(host=host, port=port, health_port=health_port)
    log_file = log_file or state_dir / LOG_FILE_NAME
    # A new federation's initial adapter is built before its state is written: a setting only the
    # built model can refuse (a LoRA target it lacks) then leaves no state behind to block a rerun.
    initial = None if (state_dir / "federation.db").exists() else initial_adapter(config.training_config())
    with contextlib.ExitStack() as cleanup:
        dashboard_url = None
        if dashboard_port is not None:  # it reads the state directory per request: no store needed yet
            try:
                dashboard = serve_dashboard(
                    dashboard_documents(state_dir), dashboard_host, dashboard_port, public=dashboard_public
                )
            except DashboardError as exc:
                raise click.ClickException(str(exc)) from None
            cleanup.callback(dashboard.close)
            dashboard_url = dashboard.url
        federation = Federation(
            config,
            state_dir,
            security,
            settings=settings,
            identity_keys=identity_keys,
            initial=initial,
            allow_config_change=allow_config_change,
            roster_loader=roster_loader,
            metrics_endpoint=(metrics_host, metrics_port) if metrics_port is not None else None,
            dashboard_url=dashboard_url,
            log_file=log_file,
            handle_signals=True,
        )
        # Logging starts once the federation is set up: a refused start writes no log file.
        logs = start_logging(log_format, log_file)
        cleanup.callback(logs.close)
        _run_federation(federation, state_dir, config, report_dir, started, evaluation)


@dataclasses.dataclass(frozen=True)
class _Evaluation:
    """The coordinator's own public evaluation records (scrubbed as participants scrub theirs)."""

    path: Path
    records: list[Record]


def _evaluation_records(path: Path, report_dir: Path | None, config: FederationConfig) -> _Evaluation:
    from fedmask.participant.data import DataError, load_records, scrub_records

    if report_dir is None:
        raise click.UsageError("--evaluate scores the global adapter for the report: add --report DIR")
    training = TrainingConfig.create(**config.training_config())
    try:
        records = load_records(path, task=training.task, num_labels=training.num_labels)
    except (DataError, OSError) as exc:
        raise click.ClickException(f"--evaluate {path}: {exc}") from None
    if not records:
        raise click.ClickException(f"--evaluate {path}: the file has no records")
    scrubbed, _counts = scrub_records(records)
    return _Evaluation(path, scrubbed)


def _run_federation(
    federation: Federation,
    state_dir: Path,
    config: FederationConfig,
    report_dir: Path | None,
    started: float,
    evaluation: _Evaluation | None = None,
) -> None:
    try:
        ledger = asyncio.run(federation.run())
    except FederationError as exc:
        _echo(f"stopped: {exc}")
        raise SystemExit(EXIT_FAILED) from None
    if federation.exit_code not in (None, EXIT_FINISHED):
        _echo(federation.exit_message or "stopped")
        raise SystemExit(federation.exit_code)
    final = {
        "ledger": ledger,
        "final_epsilon": {n: r.epsilon for n, r in sorted(federation.service.final_reports.items())},
    }
    write_text_atomic(state_dir / "final.json", json.dumps(final, indent=2, default=str) + "\n")
    calibrated = any(entry["round"] > config.rounds for entry in ledger)
    committed = f"{len(ledger) - calibrated} rounds" + (" and the calibration round" if calibrated else "")
    _echo(f"done: {committed} committed; record-level epsilon spent {final['final_epsilon']}")
    if report_dir is not None:
        _write_report(report_dir, state_dir, config, time.monotonic() - started, evaluation)


def _write_report(
    report_dir: Path, state_dir: Path, config: FederationConfig, wall_s: float, evaluation: _Evaluation | None
) -> None:
    """The demo's report from STATE/final.json (round-tripped through JSON, as the demo reads it);
    with ``evaluation``, the global adapter's scores on those records and the majority class's."""
    from fedmask.adapter.scores import majority_scores
    from fedmask.demo.data import LABEL_NAMES
    from fedmask.demo.report import build_report, evaluate_global_adapter, write_report

    final = json.loads((state_dir / "final.json").read_text(encoding="utf-8"))
    training = config.training_config()
    records = evaluation.records if evaluation is not None else []
    federated = evaluate_global_adapter(training, state_dir, records) if records else None
    labels = [int(r.label) for r in records if r.label is not None]
    settings = TrainingConfig.create(**training)
    majority = majority_scores(labels, settings.num_labels) if settings.task == "classification" and labels else None
    label_names = LABEL_NAMES if settings.num_labels == len(LABEL_NAMES) else None
    report = build_report(
        final, {}, wall_s, wall_s, config.to_json(), federated, majority=majority, label_names=label_names
    )
    description = (
        f"{len(records)} public evaluation records held by the coordinator ({evaluation.path.name})"
        if evaluation is not None
        else ""
    )
    write_report(
        report,
        report_dir,
        final,
        training,
        state_dir,
        heldout=records or None,
        label_names=label_names,
        data_description=description,
    )
    click.echo((report_dir / "report.md").read_text(encoding="utf-8"))
    _echo(f"report: {report_dir / 'report.md'}, report.json, report.png, global_adapter/")
