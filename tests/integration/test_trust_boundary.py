"""A lying coordinator against real ``fedmask participant join`` processes.

The coordinator here is written from the protobuf schema alone and holds a legitimately issued
coordinator certificate: it announces whatever round it likes. Each attack worked before the
participant held its own policy (see docs/threat-model.md); each is now refused at the round
start, before the participant computes or reveals anything: the coordinator receives a Hello and
an Abort, never a key.
"""

from __future__ import annotations

import queue
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedmask import pki
from fedmask.participant.policy import ParticipantPolicy
from fedmask.participant.setup import load_policy
from fedmask.proto import wire
from fedmask.proto.secagg.v1 import secagg_pb2_grpc as pb_grpc
from fedmask.secagg.params import ProtocolParams, SecurityMode
from fedmask.testing import loopback

pytestmark = pytest.mark.timeout(120)
VICTIM = "victim"


class LyingCoordinator(pb_grpc.SecureAggregationServicer):
    """Answers every Hello with the scripted RoundStart and records what the participant sends."""

    def __init__(self, start: wire.RoundStart) -> None:
        self.start = start
        self.received: queue.SimpleQueue[str] = queue.SimpleQueue()

    def Aggregate(self, request_iterator, context):  # noqa: N802 - the gRPC method name
        for envelope in request_iterator:
            kind = envelope.WhichOneof("body")
            self.received.put(kind)
            if kind == "hello":
                yield wire.server_to_proto(self.start)
            if kind == "abort":
                return

    def kinds(self) -> list[str]:
        seen = []
        while not self.received.empty():
            seen.append(self.received.get())
        return seen


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    """Four enrolled participants; the victim's default policy pins them (as `participant join`
    does on first use)."""
    directory = tmp_path_factory.mktemp("trust") / "federation"
    names = ("ghost", "hospital-b", "bank", VICTIM)
    loopback.make_federation(directory, names, organisations={"ghost": "ghost-org"})
    roster = pki.load_roster(directory, pki.load_ca_certificate(directory))
    load_policy(None, directory, VICTIM, roster)
    return directory


def _serve(federation: Path, start: wire.RoundStart) -> tuple[grpc.Server, int, LyingCoordinator]:
    material = pki.load_tls_material(federation, "coordinator", loopback.COORDINATOR_NAME)
    credentials = grpc.ssl_server_credentials(
        [(material.private_key, material.cert_chain)], root_certificates=material.ca_cert, require_client_auth=True
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = LyingCoordinator(start)
    pb_grpc.add_SecureAggregationServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port, servicer


def _join(federation: Path, port: int, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fedmask.cli.join", "--federation", str(federation), "--name", VICTIM]
    command += ["--coordinator", f"127.0.0.1:{port}", "--tls-server-name", "localhost", "--connect-attempts", "1"]
    return subprocess.run([*command, *extra], capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)


def _round_start(names, mode: SecurityMode, threshold: int, neighbours: int | None = None) -> wire.RoundStart:
    """Parameters as the liar wants them: not validated (an honest coordinator's would be)."""
    names = tuple(sorted(names))
    params = ProtocolParams(1000, 32, threshold, mode, neighbours)
    return wire.RoundStart(b"lying-round", params, names.index(VICTIM) + 1, names, 30.0)


def _attack(federation: Path, start: wire.RoundStart, *extra: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    server, port, servicer = _serve(federation, start)
    try:
        result = _join(federation, port, "--synthetic-seed", "7", *extra)
    finally:
        server.stop(grace=None)
    return result, servicer.kinds()


def test_a_downgraded_round_is_refused_before_any_key_is_sent(federation):
    """Semi-honest mode, n = 2, t = 2, [ghost, victim]: the coordinator plays ghost and would
    have learnt the victim's input as sum - ghost. The victim's own policy (written on first
    use: malicious mode, at least 3 participants) refuses the round."""
    result, kinds = _attack(federation, _round_start(("ghost", VICTIM), SecurityMode.SEMI_HONEST, 2))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "refused by the participant policy (security_mode = malicious)" in result.stdout
    assert "a semi-honest round" in result.stdout
    assert kinds == ["hello", "abort"]  # no AdvertiseKeys: nothing computed, nothing revealed


def test_a_small_malicious_round_is_refused_too(federation):
    result, kinds = _attack(federation, _round_start(("ghost", VICTIM), SecurityMode.MALICIOUS, 2))
    assert result.returncode == 3
    assert "min_participants = 3" in result.stdout and "a round of 2" in result.stdout
    assert kinds == ["hello", "abort"]


def test_a_split_view_threshold_is_refused(federation, tmp_path):
    """n = 4, t = 2: two disjoint pairs of holders could each rebuild a secret. Refused whatever
    the policy allows: here a policy that accepts semi-honest rounds of two."""
    lax = tmp_path / "lax-policy.toml"
    ParticipantPolicy(security_mode=SecurityMode.SEMI_HONEST, min_participants=2, min_organisations=1).save(lax)
    start = _round_start(("ghost", "hospital-b", "bank", VICTIM), SecurityMode.SEMI_HONEST, 2)
    result, kinds = _attack(federation, start, "--policy", str(lax))
    assert result.returncode == 3
    assert "the threshold must exceed half the holders" in result.stdout
    assert kinds == ["hello", "abort"]


def test_a_sparse_graph_is_refused_unless_the_policy_accepts_it(federation, tmp_path):
    """SecAgg+ over the four members with degree 2: each secret shared with two neighbours, and
    which two follows from the key roster the coordinator assembles. The victim's default policy
    refuses it before any key is sent; a policy that accepts sparse graphs lets the round go on
    (here to the liar's silence)."""
    members = ("ghost", "hospital-b", "bank", VICTIM)
    start = _round_start(members, SecurityMode.MALICIOUS, 2, neighbours=2)
    result, kinds = _attack(federation, start)
    assert result.returncode == 3
    assert "refused by the participant policy (allow_sparse_graph = false)" in result.stdout
    assert "a SecAgg+ graph of degree 2 over 4 participants" in result.stdout
    assert kinds == ["hello", "abort"]
    accepting = tmp_path / "sparse-policy.toml"
    ParticipantPolicy.pinned_to(members, 1, allow_sparse_graph=True).save(accepting)
    result, kinds = _attack(federation, start, "--policy", str(accepting), "--round-timeout", "2")
    assert kinds[:2] == ["hello", "advertise_keys"], (kinds, result.stdout)


def test_a_round_with_unknown_members_is_refused(federation, tmp_path):
    """A name the CA holder added after the victim pinned its members (a Sybil)."""
    pki.issue(
        federation, "participant", "sybil-1", operator_generates_keys=True, organisation="ghost-org", valid_days=2
    )
    try:
        result, kinds = _attack(federation, _round_start(("bank", "sybil-1", VICTIM), SecurityMode.MALICIOUS, 2))
    finally:
        pki.remove_participant(federation, "sybil-1")
    assert result.returncode == 3
    assert "participants it does not know: sybil-1" in result.stdout
    assert kinds == ["hello", "abort"]


def test_a_fixed_input_is_not_sent_twice_without_consent(federation, tmp_path):
    """`join --input x.npy --rounds 2`: round 2 without the victim gives sum1 - sum2 = x."""
    path = tmp_path / "x.npy"
    np.save(path, np.arange(1000, dtype=np.uint32))
    result = _join(federation, 1, "--input", str(path), "--rounds", "2")
    assert result.returncode == 1
    assert "allow_repeated_input = false" in result.stderr and "accept-differencing-risk" in result.stderr
    assert "Traceback" not in result.stderr
