"""Helpers to drive a round by hand, so a test can play a lying server between honest clients."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmask.secagg import Client, ClientConfig, ProtocolParams, SecurityMode, Server, ServerConfig
from fedmask.secagg.rand import SeededRandom
from fedmask.secagg.simulation import random_input


class Round:
    """n honest clients and an honest server, stepped one phase at a time."""

    def __init__(self, n: int, *, t: int, mode=SecurityMode.SEMI_HONEST, dimension: int = 32, bits: int = 32, seed: int = 0):
        self.params = ProtocolParams(dimension, bits, t, mode)
        rng = SeededRandom.from_int(seed)
        self.ids = tuple(range(1, n + 1))
        self.identity = {u: Ed25519PrivateKey.from_private_bytes(rng.random_bytes(32)) for u in self.ids}
        self.identity_public = {
            u: k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            for u, k in self.identity.items()
        }
        malicious = mode is SecurityMode.MALICIOUS
        self.server = Server(
            ServerConfig(b"round-1", self.params, self.ids, self.identity_public if malicious else {})
        )
        self.inputs = {u: random_input(rng, dimension, bits) for u in self.ids}
        self.clients = {
            u: Client(
                ClientConfig(
                    u,
                    b"round-1",
                    self.params,
                    self.identity[u] if malicious else None,
                    self.identity_public if malicious else {},
                ),
                rng.spawn(),
                self.inputs[u],
            )
            for u in self.ids
        }

    def advertise(self, who=None):
        for u in who or self.ids:
            self.server.receive(self.clients[u].start())
        return self.server.close_phase()

    def answer(self, outgoing, who=None):
        """Deliver server messages to clients; feed their replies back; return the replies."""
        replies = {}
        for u, message in outgoing.items():
            if who is not None and u not in who:
                continue
            reply = self.clients[u].receive(message)
            replies[u] = reply
            if reply is not None and not type(reply).__name__ == "Abort":
                self.server.receive(reply)
        return replies

    def expected_sum(self, survivors):
        total = np.zeros(self.params.dimension, dtype=np.uint64)
        for u in survivors:
            total += self.inputs[u]
        return (total & np.uint64((1 << self.params.modulus_bits) - 1)).astype(self.inputs[1].dtype)


@pytest.fixture
def make_round():
    return Round
