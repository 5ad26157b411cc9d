"""Bonawitz-style secure aggregation (with the SecAgg+ sparse graph), sans I/O.

No grpc, no torch, no sockets, no clocks, no global randomness: time, randomness and
transport are the caller's. One module per concern:

params      round parameters and their validation (wrap-around headroom included)
graph       complete graph and SecAgg+ Harary graph; (k, t) finder
prg         AES-CTR mask expansion into uint32/uint64 vectors
shamir      t-of-n sharing over GF(2^256 + 297)
keys        X25519, HKDF, AES-GCM share transport, Ed25519 signatures
encoding    floats <-> integers mod 2^b
messages    the protocol's messages (plain dataclasses)
session     session id and neighbourhoods derived from the key roster
client      the participant's state machine
server      the coordinator's state machine
simulation  an in-memory round with scripted dropouts (the protocol harness)
"""

from .client import Client, ClientConfig, ClientState
from .errors import AbortKind, DropKind, InvalidMessage, ParameterError, Phase, ProtocolAbort, Rejection, SecAggError
from .params import EncodingParams, ProtocolParams, SecurityMode, default_threshold
from .rand import RandomSource, SeededRandom, SystemRandom
from .server import Server, ServerConfig, ServerState

__all__ = [
    "AbortKind",
    "Client",
    "ClientConfig",
    "ClientState",
    "DropKind",
    "EncodingParams",
    "InvalidMessage",
    "ParameterError",
    "Phase",
    "ProtocolAbort",
    "ProtocolParams",
    "Rejection",
    "RandomSource",
    "SecAggError",
    "SecurityMode",
    "SeededRandom",
    "Server",
    "ServerConfig",
    "ServerState",
    "SystemRandom",
    "default_threshold",
]
