"""``fedmask doctor``: one ``ok|warn|FAIL  check: ...`` line a check, exit status 1 on a FAIL,
against a live loopback coordinator (mutual TLS, in this process)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from fedmask import pki
from fedmask.cli import main
from fedmask.coordinator.round_server import BackgroundCoordinator, CoordinatorServer, MessageLimits, ServerSettings
from fedmask.coordinator.transport import MtlsAuthenticator, ServerSecurity, mtls_security
from fedmask.secagg.params import ProtocolParams, SecurityMode
from fedmask.testing import loopback

pytestmark = pytest.mark.timeout(60)
PARAMS = ProtocolParams(10, 32, 2, SecurityMode.SEMI_HONEST)
LONG_AGO = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
# make_federation's certificates last 2 days: warn only about those expiring within 1.
QUIET = ["--expiry-warning-days", "1"]


@pytest.fixture(scope="module")
def federations(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("doctor")
    home = loopback.make_federation(root / "home", ["alice", "bob"])
    other = loopback.make_federation(root / "other", ["alice"])
    expired = root / "expired"
    shutil.copytree(home, expired)
    request = pki.enrol(expired, "alice", organisation="alice", force=True)
    pki.issue(expired, "participant", "alice", request=request, valid_days=1, force=True, now=LONG_AGO)
    return {"home": home, "other": other, "expired": expired}


def _serve(security: ServerSecurity):
    server = CoordinatorServer(security, MessageLimits.for_round(PARAMS, 2), settings=ServerSettings(join_wait_s=0.2))
    return BackgroundCoordinator(server)


@pytest.fixture(scope="module")
def coordinator(federations):
    with _serve(mtls_security(federations["home"], loopback.COORDINATOR_NAME)) as background:
        yield f"127.0.0.1:{background.server.port}"


@pytest.fixture(scope="module")
def foreign_coordinator(federations):
    """A coordinator of another federation (its own CA and certificate)."""
    with _serve(mtls_security(federations["other"], loopback.COORDINATOR_NAME)) as background:
        yield f"127.0.0.1:{background.server.port}"


def doctor(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["doctor", *args])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output.splitlines()


def participant(directory: Path, target: str, *extra: str) -> tuple[int, list[str]]:
    return doctor("participant", "--federation", str(directory), "--name", "alice", "--coordinator", target, *extra)


def line(lines: list[str], check: str) -> str:
    """The one line of ``check`` (after the 6-character level column)."""
    found = [text for text in lines if text[6:].startswith(f"{check}:")]
    assert len(found) == 1, lines
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_healthy_participant_is_ok_on_every_line(federations, coordinator, tmp_path):
    code, lines = participant(federations["home"], coordinator, "--state", str(tmp_path / "state"), *QUIET)
    assert code == 0, lines
    checks = ["certificate", "key", "ca", "roster", "identity key", "coordinator", "clock", "disk", "model"]
    for check in checks:
        assert line(lines, check).startswith("ok    "), lines
    assert len(lines) == len(checks)
    assert "TLS handshake accepted both ways" in line(lines, "coordinator")


def test_json_lists_the_same_checks(federations, coordinator):
    result = CliRunner().invoke(
        main, ["doctor", "participant", "--federation", str(federations["home"]), "--name", "alice",
               "--coordinator", coordinator, "--json", *QUIET],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    checks = json.loads(result.output)
    assert [c["check"] for c in checks][:2] == ["certificate", "key"]
    assert {c["level"] for c in checks} == {"ok"} and all(c["message"] for c in checks)


def test_an_expired_participant_certificate_fails_on_both_sides(federations, coordinator):
    code, lines = participant(federations["expired"], coordinator, *QUIET)
    assert code == 1
    assert line(lines, "certificate").startswith("FAIL  certificate:") and "expired on" in line(lines, "certificate")
    assert "fedmask pki issue participant alice --force" in line(lines, "certificate")
    assert line(lines, "coordinator").startswith("FAIL  coordinator: TLS: the coordinator refused your certificate")


def test_another_federations_ca_on_the_participant_side(federations, coordinator, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(federations["home"], mixed)
    shutil.copy(pki.FederationPaths(federations["other"]).ca_cert, pki.FederationPaths(mixed).ca_cert)
    code, lines = participant(mixed, coordinator, *QUIET)
    assert code == 1
    assert line(lines, "ca").startswith("FAIL  ca:") and "was not issued by the CA in" in line(lines, "ca")
    assert line(lines, "roster").startswith("FAIL  roster:")  # signed by the home CA, not the one held
    assert line(lines, "coordinator").startswith(
        "FAIL  coordinator: TLS: the coordinator's certificate is not signed by your federation CA (you refused it)"
    )


def test_a_coordinator_of_another_ca_is_refused_by_the_participant(federations, foreign_coordinator):
    code, lines = participant(federations["home"], foreign_coordinator, *QUIET)
    assert code == 1
    assert line(lines, "certificate").startswith("ok")  # nothing wrong on this side
    assert line(lines, "coordinator").startswith(
        "FAIL  coordinator: TLS: the coordinator's certificate is not signed by your federation CA (you refused it)"
    )
    # The coordinator's own doctor sees it: its certificate is not its federation CA's.
    mixed = federations["home"].parent / "coordinator-mixed"
    shutil.copytree(federations["home"], mixed)
    other = pki.FederationPaths(federations["other"])
    for path in (other.tls_cert("coordinator", "main"), other.tls_key("coordinator", "main")):
        shutil.copy(path, mixed / "coordinator" / path.name)
    code, lines = doctor("coordinator", "--federation", str(mixed), "--state", str(mixed / "state"), *QUIET)
    assert code == 1
    assert line(lines, "ca").startswith("FAIL  ca:") and "was not issued by the CA in" in line(lines, "ca")


def test_a_coordinator_that_trusts_another_ca_refuses_the_participant(federations):
    home, other = pki.FederationPaths(federations["home"]), pki.FederationPaths(federations["other"])
    material = pki.load_tls_material(home.root, "coordinator", loopback.COORDINATOR_NAME)
    credentials = grpc.ssl_server_credentials(
        [(material.private_key, material.cert_chain)],
        root_certificates=other.ca_cert.read_bytes(),
        require_client_auth=True,
    )
    roster = pki.load_roster(home.root, material.ca_cert)
    with _serve(ServerSecurity(credentials, MtlsAuthenticator(material.ca_cert, roster), roster)) as background:
        code, lines = participant(home.root, f"127.0.0.1:{background.server.port}", *QUIET)
    assert code == 1
    assert line(lines, "certificate").startswith("ok")
    assert line(lines, "coordinator").startswith("FAIL  coordinator: TLS: the coordinator refused your certificate")


def test_an_unreachable_port_is_a_tcp_failure(federations):
    code, lines = participant(federations["home"], f"127.0.0.1:{free_port()}", *QUIET)
    assert code == 1
    assert line(lines, "coordinator").startswith("FAIL  coordinator: TCP connect failed")
    assert line(lines, "clock").startswith("warn  clock: not checked")  # nothing to compare with: said so


def test_a_missing_model_directory_fails(federations, coordinator, tmp_path):
    code, lines = participant(federations["home"], coordinator, "--model", str(tmp_path / "nowhere"), *QUIET)
    assert code == 1
    assert line(lines, "model").startswith(f"FAIL  model: no model directory at {tmp_path / 'nowhere'}")
    empty = tmp_path / "empty-model"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    code, lines = participant(federations["home"], coordinator, "--model", str(empty), *QUIET)
    assert code == 1 and "has config.json but no weights" in line(lines, "model")


def test_the_coordinator_form(federations, tmp_path):
    code, lines = doctor("coordinator", "--federation", str(federations["home"]), "--state", str(tmp_path), *QUIET)
    assert code == 0, lines
    assert all(text.startswith("ok") for text in lines), lines
    checks = [text[6:].split(":", 1)[0] for text in lines]
    assert checks == ["certificate", "key", "ca", "roster", "clock", "disk", "model"]
    expired = tmp_path / "expired-coordinator"
    shutil.copytree(federations["home"], expired)
    pki.issue(expired, "coordinator", loopback.COORDINATOR_NAME, valid_days=1, force=True, now=LONG_AGO)
    code, lines = doctor("coordinator", "--federation", str(expired), "--state", str(tmp_path), *QUIET)
    assert code == 1
    assert line(lines, "certificate").startswith("FAIL  certificate:") and "expired on" in line(lines, "certificate")
    # Members' certificates that expire soon are named (default: within 30 days).
    code, lines = doctor("coordinator", "--federation", str(federations["home"]), "--state", str(tmp_path))
    assert code == 0 and line(lines, "members").startswith("warn  members:") and "alice" in line(lines, "members")


def _coordinator_config(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "federation.json"
    path.write_text(json.dumps({"participants": ["alice", "bob"], "rounds": 1, **changes}))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"threshold": 5}, "threshold must be in [2, 2] (shares per secret), got 5"),
        ({"training": {"target_epsilon": -1}}, "training: target_epsilon must be positive and at most 100, got -1"),
        ({"training": {"lora_layers": 99}}, "training: lora_layers is 99, but the model has 6 layers"),
    ],
    ids=["threshold-above-participants", "negative-epsilon", "lora-layers-beyond-the-model"],
)
def test_the_coordinator_config_fails_as_coordinator_run_refuses_it(federations, tmp_path, changes, message):
    config = _coordinator_config(tmp_path, **changes)
    args = ["coordinator", "--federation", str(federations["home"]), "--state", str(tmp_path / "state")]
    code, lines = doctor(*args, "--config", str(config), *QUIET)
    assert code == 1
    assert line(lines, "config") == f"FAIL  config: {config}: {message}"
    assert line(lines, "model").startswith("ok")  # the model itself is fine: only the settings are not
    # The same words as `coordinator run`'s one line: one validation, not a copy of it.
    run = CliRunner().invoke(main, ["coordinator", "run", *args[1:], "--config", str(config), "--insecure"])
    assert run.exit_code == 1 and run.output.strip().splitlines()[-1] == f"Error: {config}: {message}"
    assert not (tmp_path / "state").exists()


def test_a_valid_coordinator_config_is_ok(federations, tmp_path):
    config = _coordinator_config(tmp_path, threshold=2)
    args = ["coordinator", "--federation", str(federations["home"]), "--state", str(tmp_path / "state")]
    code, lines = doctor(*args, "--config", str(config), *QUIET)
    assert code == 0, lines
    assert line(lines, "config") == f"ok    config: {config}: 2 participants, 1 round(s), threshold 2"
    unreadable = tmp_path / "broken.json"
    unreadable.write_text("{not json")
    code, lines = doctor(*args, "--config", str(unreadable), *QUIET)
    assert code == 1 and line(lines, "config").startswith(f"FAIL  config: {unreadable}: Expecting property name")


# --- each check's own failure: what it says, on the side that has the problem --------------------


def test_a_tampered_roster_fails_its_signature(federations, coordinator, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(federations["home"], tampered)
    roster = pki.FederationPaths(tampered).root / "roster.json"
    roster.write_text(roster.read_text().replace("bob", "bab"))  # one member renamed after signing
    code, lines = participant(tampered, coordinator, *QUIET)
    assert code == 1
    assert line(lines, "roster").startswith("FAIL  roster:"), lines
    assert line(lines, "certificate").startswith("ok")  # the certificate itself is fine


def test_an_identity_key_that_is_not_the_enrolled_one_fails(federations, coordinator, tmp_path):
    swapped = tmp_path / "swapped"
    shutil.copytree(federations["home"], swapped)
    paths = pki.FederationPaths(swapped)
    shutil.copy(paths.identity_key("bob"), paths.identity_key("alice"))  # bob's key where alice's was
    code, lines = participant(swapped, coordinator, *QUIET)
    assert code == 1
    assert line(lines, "identity key").startswith("FAIL  identity key:")
    assert "is not the identity key the roster enrols for this participant" in line(lines, "identity key")
    paths.identity_key("alice").write_bytes(b"not a key")
    code, lines = participant(swapped, coordinator, *QUIET)
    assert code == 1 and line(lines, "identity key").startswith("FAIL  identity key:")


def test_too_little_free_disk_is_a_warning(federations, coordinator, tmp_path):
    code, lines = participant(
        federations["home"], coordinator, "--state", str(tmp_path), "--min-free-gb", "1000000000", *QUIET
    )
    assert code == 0, lines  # a warning, not a failure
    assert line(lines, "disk").startswith("warn  disk:"), lines


def test_a_port_in_use_is_named_by_the_coordinator_form(federations, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = doctor(
            "coordinator", "--federation", str(federations["home"]), "--state", str(tmp_path), "--port", str(port),
            *QUIET,
        )  # fmt: skip
    assert line(lines, "port").startswith(("warn  port:", "FAIL  port:")), lines
    assert str(port) in line(lines, "port")
