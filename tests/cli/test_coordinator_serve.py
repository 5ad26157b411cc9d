"""``fedmask coordinator serve``: what it cannot listen on or write to is refused at start, in one
line, before any participant is waited for (gRPC's own error line never shows)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedmask.cli import main
from fedmask.testing.cli import assert_one_line_error

PARTIES = ["hospital-a", "hospital-b", "bank"]


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    from fedmask.testing.loopback import make_federation

    return make_federation(tmp_path_factory.mktemp("pki") / "fed", PARTIES)


def _serve_args(federation: Path, *extra: str) -> list[str]:
    return ["coordinator", "serve", "--federation", str(federation), "--dim", "4", "--join-timeout", "0.5", *extra]


@pytest.mark.parametrize("listener", ["port", "health-port", "host"])
def test_what_it_cannot_listen_on_is_one_line_on_stderr(federation, port_in_use, listener):
    extra = {
        "port": ["--port", str(port_in_use)],
        "health-port": ["--port", "0", "--health-port", str(port_in_use)],
        "host": ["--port", "0", "--host", "no-such-host.invalid"],
    }[listener]
    # A child process: gRPC's C core writes its error line to file descriptor 2 directly.
    child = subprocess.run(
        [sys.executable, "-m", "fedmask.cli", *_serve_args(federation, *extra)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 1 and child.stdout == "", child
    assert len(child.stderr.splitlines()) == 1, child.stderr
    address = "no-such-host.invalid:0" if listener == "host" else f"127.0.0.1:{port_in_use}"
    assert child.stderr.startswith(f"Error: cannot listen on {address}: "), child.stderr


def test_an_output_that_cannot_be_written_is_refused_before_listening(federation, tmp_path):
    parent = tmp_path / "a-file"  # nothing can be made under a regular file, not even by root
    parent.write_text("not a directory\n")
    output = parent / "sums" / "sum.npy"
    result = CliRunner().invoke(main, _serve_args(federation, "--port", "0", "--output", str(output)))
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: cannot write --output {output}: Not a directory\n"  # no "listening on" first


def test_a_read_only_output_file_is_refused_before_listening(federation, tmp_path, monkeypatch):
    import fedmask.cli.coordinator

    output = tmp_path / "sum.npy"
    output.write_bytes(b"")
    access = os.access

    def read_only_output(path, mode):  # root may write any file: play a read-only one
        return access(path, mode) and not (Path(path) == output and mode & os.W_OK)

    monkeypatch.setattr(fedmask.cli.coordinator.os, "access", read_only_output)
    result = CliRunner().invoke(main, _serve_args(federation, "--port", "0", "--output", str(output)))
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: cannot write --output {output}: Permission denied\n"


def test_a_missing_output_folder_is_no_refusal(federation, tmp_path):
    """It is made when the sum is written (here the round times out with nobody joining)."""
    output = tmp_path / "sums" / "sum.npy"
    result = CliRunner().invoke(main, _serve_args(federation, "--port", "0", "--output", str(output)))
    assert result.exit_code == 3, result.output  # aborted: nobody joined
    assert "listening on 127.0.0.1:" in result.output and "Error" not in result.output
    assert not (tmp_path / "sums").exists()  # no sum, nothing written


def test_a_graph_degree_the_participants_cannot_have_is_refused_before_listening(federation):
    result = CliRunner().invoke(main, _serve_args(federation, "--port", "0", "--neighbours", "3"))
    assert result.exit_code == 1, result.output
    assert (
        result.output
        == "Error: the SecAgg+ graph on 3 participants needs degree < 3 (each has at most 2 neighbours), got 3\n"
    )


def test_an_odd_graph_degree_is_refused_before_listening():
    """An odd degree needs an even number of participants: one who misses the key phase would
    abort the round (the SecAgg+ degrees fedmask chooses are even)."""
    args = ["coordinator", "serve", "--insecure", "--mode", "semi-honest", "--participants", "a,b,c,d,e,f"]
    result = CliRunner().invoke(main, [*args, "--dim", "4", "--port", "0", "--neighbours", "3"])
    assert_one_line_error(result, "use an even degree: an odd one (3) needs an even number of participants")
    assert "listening" not in result.output
