"""docker/entrypoint.sh's dispatch, without a container: which words start a role and which are
fedmask's own commands (``docker run fedmask pki show --dir ...`` must run ``fedmask pki show``,
not the pki job). A stand-in ``fedmask`` on PATH prints the arguments it was given."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedmask.cli.participant import participant

ENTRYPOINT = Path(__file__).resolve().parents[2] / "docker" / "entrypoint.sh"
NOBODY = 65534


@pytest.fixture
def bin_dir() -> Iterator[Path]:
    # World-readable, outside pytest's private tmp_path: as root the script runs as nobody.
    directory = Path(tempfile.mkdtemp(prefix="fedmask-entrypoint-"))
    try:
        directory.chmod(0o755)
        shutil.copy(ENTRYPOINT, directory / "entrypoint.sh")
        fake = directory / "fedmask"
        fake.write_text('#!/bin/sh\necho "fedmask $*"\n')
        for script in (fake, directory / "entrypoint.sh"):
            script.chmod(0o755)
        yield directory
    finally:
        shutil.rmtree(directory)


def run_entrypoint(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The roles' waits give up at once: a role shows itself by what it waits for.
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FEDMASK_CREDENTIALS_WAIT_S": "0"}
    command = ["bash", str(bin_dir / "entrypoint.sh"), *args]
    if os.geteuid() == 0:  # only the pki role may start as root; the others run as the image's user
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *command]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=30, cwd=bin_dir)


@pytest.mark.parametrize(
    "args",
    [
        ("pki", "show", "--dir", "/var/lib/fedmask/credentials"),
        ("coordinator", "status", "--state", "/var/lib/fedmask/state"),
        ("participant", "enrol", "--name", "bank"),
        ("participant", "node", "--help"),
        ("version",),
    ],
)
def test_a_command_after_a_role_word_is_fedmask_s_command(bin_dir, args):
    result = run_entrypoint(bin_dir, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"fedmask {' '.join(args)}\n"


@pytest.mark.parametrize(
    ("args", "waits_for"),
    [
        (("coordinator",), "test -f /var/lib/fedmask/credentials/.ready"),
        (("coordinator", "--rounds", "2"), "test -f /var/lib/fedmask/credentials/.ready"),
        (("participant", "bank"), "test -w /var/lib/fedmask/enrolment"),
        (("participant", "bank", "--epochs", "1"), "test -w /var/lib/fedmask/enrolment"),
    ],
)
def test_a_role_word_alone_or_with_options_starts_the_role(bin_dir, args, waits_for):
    result = run_entrypoint(bin_dir, *args)
    assert result.returncode == 1 and result.stdout == ""
    assert f"still waiting after 0 s for: {waits_for}" in result.stderr


def test_the_pki_role_takes_no_arguments(bin_dir):
    result = run_entrypoint(bin_dir, "pki")
    assert result.returncode != 0 and result.stdout == ""
    assert "set FEDMASK_PARTICIPANTS" in result.stderr


def test_the_entrypoint_knows_every_participant_subcommand():
    listed = next(line for line in ENTRYPOINT.read_text().splitlines() if line.startswith("PARTICIPANT_COMMANDS="))
    assert sorted(listed.split("=", 1)[1].strip("()").split()) == sorted(participant.commands)
