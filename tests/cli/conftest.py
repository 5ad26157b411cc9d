"""Fixtures the CLI tests share."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A path nothing can be written under (its parent is a regular file): the tests run as root,
    for whom permission bits do not stop a write, but nobody can make a directory inside a file."""
    parent = tmp_path / "a-file"
    parent.write_text("not a directory\n")
    return parent / "out"


@pytest.fixture
def port_in_use() -> Iterator[int]:
    """A loopback port something is listening on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]
