"""What a participant reads from its own machine before it talks to the coordinator: its
credentials and identity key, the CA-signed roster, its policy, and (for ``participant join``)
its encoded input. The CLI only parses flags and calls these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmask import pki
from fedmask.participant.grpc_client import (
    Connection,
    Identity,
    TlsFiles,
    mtls_credentials,
    one_way_tls_credentials,
)
from fedmask.participant.policy import POLICY_FILE_NAME, ParticipantPolicy, PolicyError, PolicyViolation
from fedmask.proto import transport, wire
from fedmask.secagg import prg
from fedmask.secagg.messages import ModularVector
from fedmask.secagg.rand import SeededRandom
from fedmask.secagg.simulation import random_input


class SetupError(Exception):
    """The participant cannot start (the message says why and what to fix)."""


@dataclass(frozen=True)
class LocalSetup:
    connection: Connection
    identity: Identity
    roster: pki.Roster | None


def setup_connection(
    federation_dir: Path,
    name: str,
    target: str,
    *,
    token: str | None = None,
    tls_server_name: str | None = None,
    connect_attempts: int = 8,
    round_timeout_s: float = 3600.0,
    insecure: bool = False,
    min_bandwidth_bytes_per_s: float = 250_000.0,
    outage_tolerance_s: float = 3600.0,
) -> LocalSetup:
    """Credentials, call metadata, identity key and the CA-signed roster from the federation
    directory. The roster is what the participant checks every round against, in every mode."""
    metadata: tuple[tuple[str, str], ...] = ()
    tls_files: TlsFiles | None = None
    paths = pki.FederationPaths(federation_dir)
    try:
        if insecure:
            pki.warn_insecure("participant")
            credentials = None
            metadata = ((transport.METADATA_PARTICIPANT, name),)
        elif token:
            credentials = one_way_tls_credentials(paths.ca_cert.read_bytes())
            metadata = ((transport.METADATA_PARTICIPANT, name), (transport.METADATA_TOKEN, token))
            tls_files = TlsFiles(paths.ca_cert)
        else:
            # Refuses an expired (or not yet valid, or foreign) certificate of this participant
            # here, in one line, before any connection is attempted.
            credentials = mtls_credentials(pki.load_tls_material(federation_dir, "participant", name))
            tls_files = TlsFiles(paths.ca_cert, paths.tls_cert("participant", name), paths.tls_key("participant", name))
        roster = None
        if paths.ca_cert.is_file():
            roster = pki.load_roster(federation_dir, pki.load_ca_certificate(federation_dir))
        identity_key = pki.load_identity_key(federation_dir, name) if paths.identity_key(name).is_file() else None
    except (pki.PkiError, OSError) as exc:
        raise SetupError(pki.in_federation_directory(exc, federation_dir)) from exc
    connection = Connection(
        target,
        credentials,
        metadata,
        tls_server_name=tls_server_name,
        connect_attempts=connect_attempts,
        round_timeout_s=round_timeout_s,
        min_bandwidth_bytes_per_s=min_bandwidth_bytes_per_s,
        outage_tolerance_s=outage_tolerance_s,
        tls_files=tls_files,
    )
    enrolled = dict(roster.identity_keys) if roster is not None else {}
    organisations = roster.organisations() if roster is not None else {}
    return LocalSetup(connection, Identity(name, identity_key, enrolled, organisations), roster)


def policy_path(federation_dir: Path, name: str) -> Path:
    """Where a participant keeps its policy: next to its own keys."""
    return pki.FederationPaths(federation_dir).identity_key(name).parent / POLICY_FILE_NAME


def load_policy(
    path: Path | None,
    federation_dir: Path,
    name: str,
    roster: pki.Roster | None,
    *,
    announce: Callable[[str], None] = lambda line: None,
) -> ParticipantPolicy:
    """The participant's policy from ``path`` (or its default place). When there is none yet,
    write the safe default with the federation's current members pinned (trust on first use,
    like ssh's known_hosts) and say so; a member the CA holder adds later is then refused until
    this participant's operator edits the file. Checks the roster against what it pinned."""
    target = path or policy_path(federation_dir, name)
    try:
        if target.is_file():
            policy = ParticipantPolicy.load(target)
        elif path is not None:
            raise SetupError(f"no policy file at {path}")
        else:
            if roster is None:
                raise SetupError(f"no policy at {target} and no CA-signed roster to pin: run `fedmask pki` first")
            if len(roster.entries) < 2:
                # Pinned now, the policy would refuse every round for good: wait for the others.
                raise SetupError(
                    f"no policy at {target}, and the roster (version {roster.version}) lists "
                    f"{len(roster.entries)} participant(s), too few to pin (secure aggregation needs 2 or more): "
                    "fetch the roster again once the operator has issued everyone's certificates, or write the policy"
                )
            if name not in roster.entries:
                # A mistyped --name would otherwise leave a policy behind for a participant that is none.
                raise SetupError(
                    f"{name} is not in the roster (version {roster.version}: {', '.join(roster.names)}): "
                    "check --name, or ask the operator to issue this participant's certificate"
                )
            policy = ParticipantPolicy.pinned_to(roster.entries, roster.version)
            policy.save(target)
            announce(
                f"wrote the default policy {target}: malicious-coordinator mode, record-level epsilon <= "
                f"{policy.max_epsilon:g}, members pinned to the {len(roster.entries)} of roster version "
                f"{roster.version}"
            )
        if roster is not None:
            policy.check_roster(roster.version)
    except (PolicyError, PolicyViolation, OSError) as exc:
        raise SetupError(str(exc)) from exc
    return policy


_NPY_MAGIC = b"\x93NUMPY"


def read_input(path: Path) -> np.ndarray:
    """The input file's array, checked for all that does not depend on the round: one .npy array
    of integers. Read before joining, so that a bad file fails this participant alone rather than
    a round it has joined."""
    try:
        with path.open("rb") as file:
            head = file.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head != _NPY_MAGIC:  # numpy would call anything else pickled data
        raise ValueError(f"{path} is not a .npy file (write one with numpy.save)")
    try:
        values: np.ndarray = np.load(path, allow_pickle=False)  # one array: the header said .npy
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if values.ndim != 1:
        raise ValueError(f"{path} holds shape {values.shape}, an input is one row of integers")
    if values.dtype.kind not in "iu":
        raise ValueError(f"{path} holds {values.dtype}, an input is integers mod 2^b")
    return values


def load_input(path: Path, start: wire.RoundStart) -> ModularVector:
    """An encoded input from a .npy file: d integers in [0, 2^b)."""
    params = start.params
    values = read_input(path)
    if values.shape != (params.dimension,):
        raise ValueError(f"{path} holds shape {values.shape}, the round needs ({params.dimension},)")
    if values.size and (int(values.min()) < 0 or int(values.max()) >> params.modulus_bits):
        raise ValueError(f"{path} has values outside [0, 2^{params.modulus_bits})")
    return values.astype(prg.dtype_for_bits(params.modulus_bits))


def synthetic_input(seed: int, start: wire.RoundStart) -> ModularVector:
    """A uniformly random input mod 2^b from ``seed`` (demos and tests: anyone knowing the seed
    can recompute it, which is the point there)."""
    return random_input(SeededRandom.from_int(seed), start.params.dimension, start.params.modulus_bits)
