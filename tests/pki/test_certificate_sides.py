"""Each side names its own certificate problems: an expired certificate is refused where it is
held (before connecting, or before listening), a failed TLS handshake says which side refused
which certificate, and ``pki show`` exits non-zero on a certificate that is not valid now."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedmask import pki
from fedmask.cli import main
from fedmask.coordinator.round_server import BackgroundCoordinator, CoordinatorServer, MessageLimits, ServerSettings
from fedmask.coordinator.transport import mtls_security
from fedmask.participant.grpc_client import Connection, Identity, TlsFiles, mtls_credentials, take_part
from fedmask.participant.setup import SetupError, setup_connection
from fedmask.secagg.params import ProtocolParams, SecurityMode
from fedmask.testing import loopback

pytestmark = pytest.mark.timeout(60)
PARAMS = ProtocolParams(10, 32, 2, SecurityMode.SEMI_HONEST)
LONG_AGO = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)


def expire_participant(directory: Path, name: str) -> None:
    """Re-enrol ``name`` and issue it a certificate that expired nine days ago."""
    request = pki.enrol(directory, name, organisation=name, force=True)
    pki.issue(directory, "participant", name, request=request, valid_days=1, force=True, now=LONG_AGO)


@pytest.fixture(scope="module")
def federations(tmp_path_factory) -> dict[str, Path]:
    """``home``: the coordinator's federation; ``other``: another federation (its own CA);
    ``expired``: a copy of home whose alice holds an expired certificate."""
    root = tmp_path_factory.mktemp("sides")
    home = loopback.make_federation(root / "home", ["alice", "bob"])
    other = loopback.make_federation(root / "other", ["alice"])
    expired = root / "expired"
    shutil.copytree(home, expired)
    expire_participant(expired, "alice")
    return {"home": home, "other": other, "expired": expired}


@pytest.fixture(scope="module")
def coordinator(federations):
    server = CoordinatorServer(
        mtls_security(federations["home"], loopback.COORDINATOR_NAME),
        MessageLimits.for_round(PARAMS, 2),
        settings=ServerSettings(join_wait_s=0.2),
    )
    with BackgroundCoordinator(server) as background:
        yield background


def files_of(directory: Path, name: str) -> TlsFiles:
    paths = pki.FederationPaths(directory)
    return TlsFiles(paths.ca_cert, paths.tls_cert("participant", name), paths.tls_key("participant", name))


def unchecked_connection(directory: Path, name: str, port: int, *, with_files: bool) -> Connection:
    """A connection with ``name``'s files as they are (the local checks bypassed)."""
    files = files_of(directory, name)
    assert files.cert is not None and files.key is not None
    material = pki.TlsMaterial(files.ca_cert.read_bytes(), files.cert.read_bytes(), files.key.read_bytes())
    return Connection(
        f"127.0.0.1:{port}",
        mtls_credentials(material),
        connect_attempts=1,
        tls_files=files if with_files else None,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_expired_participant_certificate_is_refused_before_connecting(federations):
    with pytest.raises(SetupError) as refused:
        setup_connection(federations["expired"], "alice", f"127.0.0.1:{free_port()}")
    message = str(refused.value)
    assert "this participant's own certificate" in message and "expired on" in message
    assert "fedmask pki issue participant alice --force" in message
    assert "\n" not in message


def test_a_participant_certificate_of_another_ca_than_the_one_held_is_refused_locally(federations, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(federations["home"], mixed)
    shutil.copy(pki.FederationPaths(federations["other"]).ca_cert, pki.FederationPaths(mixed).ca_cert)
    with pytest.raises(pki.PkiError, match="was not issued by the federation CA it holds"):
        pki.load_tls_material(mixed, "participant", "alice")


def test_the_coordinator_refuses_to_start_with_its_own_expired_certificate(federations, tmp_path):
    directory = tmp_path / "federation"
    shutil.copytree(federations["home"], directory)
    pki.issue(directory, "coordinator", loopback.COORDINATOR_NAME, valid_days=1, force=True, now=LONG_AGO)
    with pytest.raises(pki.PkiError, match=r"this coordinator's own certificate .* expired on"):
        mtls_security(directory, loopback.COORDINATOR_NAME)
    result = CliRunner().invoke(
        main, ["coordinator", "serve", "--federation", str(directory), "--dim", "4", "--port", "0"]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "this coordinator's own certificate" in error[0] and "expired on" in error[0]


def test_a_participant_of_another_federation_is_told_it_refused_the_coordinator(federations, coordinator):
    setup = setup_connection(federations["other"], "alice", f"127.0.0.1:{coordinator.server.port}", connect_attempts=1)
    outcome = take_part(setup.connection, Identity("alice"), lambda start: None)
    assert not outcome.completed and outcome.reason is not None
    assert "this participant refused the coordinator's TLS certificate" in outcome.reason
    assert "not signed by your federation CA" in outcome.reason
    assert "coordinator refused" not in outcome.reason


def test_without_its_files_the_participant_reads_the_refusal_from_grpc(federations, coordinator):
    target = unchecked_connection(federations["other"], "alice", coordinator.server.port, with_files=False)
    outcome = take_part(target, Identity("alice"), lambda start: None)
    assert outcome.reason is not None
    assert "this participant refused the coordinator's TLS certificate" in outcome.reason
    assert "coordinator refused" not in outcome.reason


@pytest.mark.parametrize("with_files", [True, False])
def test_a_participant_whose_certificate_the_coordinator_refuses_is_told_so(federations, coordinator, with_files):
    target = unchecked_connection(federations["expired"], "alice", coordinator.server.port, with_files=with_files)
    outcome = take_part(target, Identity("alice"), lambda start: None)
    assert outcome.reason is not None
    if with_files:
        assert "the coordinator refused this participant's TLS certificate" in outcome.reason
        assert "expired on" in outcome.reason  # and why, from its own check
    else:
        assert "the coordinator closed the connection during the TLS handshake" in outcome.reason
    assert "participant refused the coordinator" not in outcome.reason


def test_an_accepted_handshake_or_a_closed_port_claims_no_certificate_refusal(federations, coordinator):
    accepted = setup_connection(
        federations["home"], "alice", f"127.0.0.1:{coordinator.server.port}", connect_attempts=1
    )
    outcome = take_part(accepted.connection, Identity("alice"), lambda start: None)
    assert outcome.reason is not None and "no round is open" in outcome.reason
    closed = setup_connection(federations["home"], "alice", f"127.0.0.1:{free_port()}", connect_attempts=1)
    outcome = take_part(closed.connection, Identity("alice"), lambda start: None)
    assert outcome.reason is not None and "refused" in outcome.reason  # "Connection refused", from TCP
    assert "TLS certificate" not in outcome.reason


def test_pki_show_exits_non_zero_on_an_expired_certificate(federations):
    runner = CliRunner()
    healthy = runner.invoke(main, ["pki", "show", "--dir", str(federations["home"])])
    assert healthy.exit_code == 0, healthy.output
    expired = runner.invoke(main, ["pki", "show", "--dir", str(federations["expired"])])
    assert expired.exit_code == 1
    assert "EXPIRED" in expired.output
    assert "Error: not valid now: participant alice" in expired.output


def test_a_node_says_which_side_refused_while_it_retries_and_when_it_gives_up(federations, coordinator, tmp_path):
    from fedmask.participant.data import LocalData
    from fedmask.participant.node import Node, NodeError

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    setup = setup_connection(federations["other"], "alice", f"127.0.0.1:{coordinator.server.port}")
    connection = dataclasses.replace(setup.connection, outage_tolerance_s=5.0, max_backoff_s=1.0)
    data = LocalData(train=[], heldout=[], pii_counts={}, pii_scrubbed=True, heldout_source="given")
    logs: list[str] = []
    node = Node(connection, Identity("alice"), data, tmp_path, sleep=sleep, clock=lambda: now[0], progress=logs.append)
    with pytest.raises(NodeError) as gave_up:
        node.get_task()
    assert "this participant refused the coordinator's TLS certificate" in str(gave_up.value)
    assert "this participant refused the coordinator's TLS certificate" in logs[0]
