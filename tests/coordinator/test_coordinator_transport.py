"""Who is at the other end of a call (``fedmask.coordinator.transport``): each authenticator
refuses a peer it cannot name, with the gRPC status to answer. The round-level versions (real
TLS handshakes, wrong tokens, certificates outside the roster) are in test_round_server.py and
test_status.py; these are the checks a handshake alone would not catch."""

from __future__ import annotations

import grpc
import pytest

from fedmask.coordinator.transport import (
    AuthError,
    InsecureAuthenticator,
    MtlsAuthenticator,
    TokenAuthenticator,
)
from fedmask.proto.transport import METADATA_PARTICIPANT, METADATA_TOKEN


class Context:
    """The two things an authenticator reads from a servicer context."""

    def __init__(self, metadata=(), certificates=None):
        self.metadata = tuple(metadata)
        self.certificates = certificates

    def invocation_metadata(self):
        return self.metadata

    def auth_context(self):
        return {} if self.certificates is None else {"x509_pem_cert": self.certificates}


def test_mutual_tls_names_nobody_without_a_client_certificate():
    """``require_client_auth`` refuses such a peer in the handshake; the authenticator does not
    rely on that: a server built with other credentials still names nobody."""
    authenticator = MtlsAuthenticator(ca_cert=b"", roster=None)  # type: ignore[arg-type]
    for context in (Context(), Context(certificates=[])):
        with pytest.raises(AuthError, match="no client certificate: mutual TLS is required") as refused:
            authenticator.identify(context)  # type: ignore[arg-type]
        assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "no participant name"),
        (((METADATA_PARTICIPANT, "Alice"),), "malformed participant name"),
        (((METADATA_PARTICIPANT, "../alice"),), "malformed participant name"),
        (((METADATA_PARTICIPANT, "alice"), (METADATA_PARTICIPANT, "bob")), "given more than once"),
    ],
)
def test_a_claimed_name_must_be_one_well_formed_name(metadata, message):
    for authenticator in (InsecureAuthenticator(), TokenAuthenticator(federation_dir=None)):  # type: ignore[arg-type]
        with pytest.raises(AuthError, match=message) as refused:
            authenticator.identify(Context(metadata))  # type: ignore[arg-type]
        assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED


def test_a_token_is_required_and_given_once():
    authenticator = TokenAuthenticator(federation_dir=None)  # type: ignore[arg-type]
    named = (METADATA_PARTICIPANT, "alice")
    with pytest.raises(AuthError, match="no enrolment token"):
        authenticator.identify(Context([named]))  # type: ignore[arg-type]
    with pytest.raises(AuthError, match=f"metadata '{METADATA_TOKEN}' given more than once"):
        authenticator.identify(Context([named, (METADATA_TOKEN, "a"), (METADATA_TOKEN, "b")]))  # type: ignore[arg-type]
    assert InsecureAuthenticator().identify(Context([named])) == "alice"  # type: ignore[arg-type]
