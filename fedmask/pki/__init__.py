"""Federation PKI: the CA, TLS certificates, the signed roster of identity keys, enrolment tokens.

Modules: ``layout`` (the directory, file writes, names), ``roster``, ``enrolment`` (a participant's
own keys and its request; the public files handed back), ``issuance`` (CA, certificates),
``peers`` (identity from a verified certificate), ``tokens``, ``loaders`` (what the gRPC layer
loads), ``preflight`` (a party's checks of its own certificates; the TLS handshake probe that
tells which side refused which certificate). This package re-exports their public API, except
``preflight``'s, which is imported from there.

Who makes which key: the operator (``init_federation``, ``issue``) makes the CA key and the
coordinator's TLS key. A participant makes its own TLS key and Ed25519 identity key with
``enrol`` in its own federation directory; the operator issues its certificate from the request
(``issue(..., request=...)``) without ever seeing a private key, and sends back the public files
(``export_participant``). ``issue(..., operator_generates_keys=True)`` is for demos and tests.

Everything here is generated at run time into a *federation directory* (default ``./federation``)
and must never be committed. Layout::

    federation/
      ca/ca.key                       0600  CA private key (ECDSA P-256). Keep it with the
                                            federation operator, off the coordinator host: in
                                            malicious-coordinator mode whoever holds it can
                                            rewrite the roster.
      ca/ca.pem                             CA certificate: the trust anchor everyone gets.
      coordinator/NAME.key            0600  coordinator TLS key (ECDSA P-256)
      coordinator/NAME.pem                  coordinator TLS certificate (serverAuth, DNS/IP SANs)
      participants/NAME/tls.key       0600  participant TLS key (ECDSA P-256); made by ``enrol``
                                            on the participant's machine
      participants/NAME/tls.pem             participant TLS certificate (clientAuth)
      participants/NAME/identity.key  0600  Ed25519 identity key; made by ``enrol``
      participants/NAME/request.json        the enrolment request (public)
      roster.json                           canonical JSON: name -> Ed25519 public key, TLS cert
                                            fingerprint, expiry, organisation; plus federation
                                            name and version
      roster.sig                            base64 CA signature over roster.json
      tokens.json                     0600  enrolment-token hashes (never the tokens)
      .lock                                 serialises concurrent ``issue``/``token`` runs
      .gitignore                            ``*``: git ignores the whole directory

Identity scheme: a certificate names its holder three ways that must agree -- subject CN = NAME,
and exactly one URI SAN ``urn:fedmask:<role>:<NAME>`` where role is ``participant`` or
``coordinator``. Participant certificates carry only the clientAuth EKU, coordinator certificates
only serverAuth, so neither can stand in for the other. A participant's id in the protocol is the
NAME taken from its verified certificate (``identity_from_peer_cert``), never a claimed field.

Names match ``[a-z0-9][a-z0-9-]{0,62}`` (a DNS label, lower case).

Private key files are written 0600 through a temporary file and ``os.replace``, so a reader never
sees a partial key and a key never exists with wider permissions. No function here logs a secret.
"""

from fedmask.pki.enrolment import (
    ENROLMENT_REQUEST_FORMAT,
    EnrolmentRequest,
    enrol,
    export_participant,
    load_enrolment_request,
    verify_csr,
)
from fedmask.pki.issuance import IssuedCertificate, init_federation, issue, remove_participant
from fedmask.pki.layout import (
    DEFAULT_CA_DAYS,
    DEFAULT_COORDINATOR_HOSTS,
    DEFAULT_LEAF_DAYS,
    DEFAULT_TOKEN_DAYS,
    MAX_VALIDITY_DAYS,
    NAME_PATTERN,
    ROLES,
    FederationPaths,
    PeerIdentityError,
    PkiError,
    Role,
    RosterError,
    certificate_fingerprint,
    identity_uri,
    in_federation_directory,
    load_ca_certificate,
    load_certificate_file,
)
from fedmask.pki.loaders import TlsMaterial, insecure_warning, load_identity_key, load_tls_material, warn_insecure
from fedmask.pki.peers import identity_from_peer_cert
from fedmask.pki.roster import Roster, RosterEntry, load_roster
from fedmask.pki.tokens import issue_token, verify_token

__all__ = [
    "DEFAULT_CA_DAYS",
    "DEFAULT_COORDINATOR_HOSTS",
    "DEFAULT_LEAF_DAYS",
    "DEFAULT_TOKEN_DAYS",
    "ENROLMENT_REQUEST_FORMAT",
    "MAX_VALIDITY_DAYS",
    "NAME_PATTERN",
    "ROLES",
    "EnrolmentRequest",
    "FederationPaths",
    "IssuedCertificate",
    "PeerIdentityError",
    "PkiError",
    "Role",
    "Roster",
    "RosterEntry",
    "RosterError",
    "TlsMaterial",
    "certificate_fingerprint",
    "enrol",
    "export_participant",
    "identity_from_peer_cert",
    "identity_uri",
    "in_federation_directory",
    "init_federation",
    "insecure_warning",
    "issue",
    "issue_token",
    "load_ca_certificate",
    "load_certificate_file",
    "load_enrolment_request",
    "load_identity_key",
    "load_roster",
    "load_tls_material",
    "remove_participant",
    "verify_csr",
    "verify_token",
    "warn_insecure",
]
