"""The container image and the compose demo, for real: build docker/Dockerfile, run
docker/compose.yaml to completion (CA, coordinator, two hospitals and a bank, mutual-TLS gRPC
between containers), and check what it produced.

Needs a container engine: docker with the compose plugin, or podman with podman-compose (on
this project's machines ``../shared/tools/container-engine.sh`` sets those up). It builds an
image of about 2 GB and trains for a few minutes, so it runs only when asked for:
``make test-container`` (FEDMASK_CONTAINER_TESTS=1). When ``wheelhouse/`` holds a wheelhouse
(``make wheelhouse``; ``make test-container`` makes one), the image is built from it with the
network disabled, as an air-gapped site would.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
FEDERATION = json.loads((ROOT / "docker" / "federation.json").read_text(encoding="utf-8"))
PARTIES = sorted(FEDERATION["participants"])
IMAGE = os.environ.get("FEDMASK_IMAGE", "fedmask:latest")


@dataclass(frozen=True)
class Engine:
    cli: str  # docker | podman
    compose: list[str]

    def run(self, *args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([self.cli, *args], capture_output=True, text=True, check=check, timeout=timeout, **kwargs)

    def container(self, project: str, service: str) -> str:
        names = self.run(
            "ps",
            "-a",
            "--filter",
            f"label=com.docker.compose.project={project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
            "--format",
            "{{.Names}}",
        ).stdout.split()
        assert len(names) == 1, f"{service}: containers {names}"
        return names[0]

    def healthy(self, container: str) -> bool:
        if self.cli == "podman":  # no systemd timers here: run the image's check by hand
            return self.run("healthcheck", "run", container, check=False).returncode == 0
        status = self.run("inspect", "--format", "{{.State.Health.Status}}", container, check=False)
        return status.stdout.strip() == "healthy"


def find_engine() -> Engine | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return Engine("docker", ["docker", "compose"])
    if shutil.which("podman") and shutil.which("podman-compose"):
        return Engine("podman", ["podman-compose"])
    return None


@pytest.fixture(scope="module")
def engine() -> Engine:
    if os.environ.get("FEDMASK_CONTAINER_TESTS") != "1":
        pytest.skip(
            "container tests build a ~2 GB image: run them with `make test-container` (FEDMASK_CONTAINER_TESTS=1)"
        )
    found = find_engine()
    if found is None:
        pytest.skip(
            "no container engine: install docker (with compose) or podman + podman-compose "
            "(../shared/tools/container-engine.sh does it on this project's machines)"
        )
    return found


@pytest.fixture(scope="module")
def image(engine: Engine) -> str:
    args = ["build", "-f", "docker/Dockerfile", "-t", IMAGE]
    if any((ROOT / "wheelhouse").glob("*.whl")):
        args += ["--network=none", "--build-arg", "WHEELHOUSE=wheelhouse"]
    env = {**os.environ, "BUILDAH_FORMAT": "docker"}  # podman: keep HEALTHCHECK (OCI images drop it)
    build = engine.run(*args, ".", cwd=ROOT, env=env, check=False, timeout=3000)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    return IMAGE


def test_image_runs_unprivileged_with_a_healthcheck(engine: Engine, image: str):
    user = engine.run("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
    assert user == "fedmask"
    config = json.loads(engine.run("image", "inspect", image).stdout)[0]
    # docker: Config.Healthcheck; podman: a top-level Healthcheck
    healthcheck = (config.get("Config") or {}).get("Healthcheck") or config.get("Healthcheck")
    assert healthcheck and healthcheck["Test"] == ["CMD", "fedmask-healthcheck"], healthcheck
    torch = engine.run(
        "run",
        "--rm",
        "--entrypoint",
        "python",
        image,
        "-c",
        "import torch; print(torch.__version__, torch.version.cuda)",
    ).stdout.split()
    assert torch[0].endswith("+cpu") and torch[1] == "None", torch


def test_compose_demo_runs_every_round(engine: Engine, image: str, tmp_path: Path):
    project = f"fedmask-test-{secrets.token_hex(3)}"
    env = {**os.environ, "FEDMASK_IMAGE": image, "FEDMASK_RECORDS": "200"}
    compose = [*engine.compose, "-p", project, "-f", str(COMPOSE_FILE)]
    if engine.cli == "docker":
        up = [*compose, "up", "--no-build", "--abort-on-container-exit", "--exit-code-from", "coordinator"]
    else:
        # podman-compose 1.0.3 stops waiting as soon as *any* container exits under
        # --exit-code-from (the pki job exits first); plain `up` returns when all have exited.
        up = [*compose, "up", "--no-build"]
    log_path = tmp_path / "compose.log"
    healthy: list[bool] = []
    try:
        with log_path.open("w") as log:
            process = subprocess.Popen(up, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
            watcher = threading.Thread(target=_watch_health, args=(engine, project, process, healthy), daemon=True)
            watcher.start()
            try:
                process.wait(timeout=2400)
            finally:
                if process.poll() is None:
                    process.kill()
            watcher.join(30)
        output = log_path.read_text(errors="replace")
        codes = {
            service: _exit_code(engine, engine.container(project, service))
            for service in ("pki", "coordinator", *PARTIES)
        }
        assert codes == dict.fromkeys(codes, 0), f"exit codes {codes}\n{output[-6000:]}"
        assert healthy == [True], "the coordinator never reported SERVING to its healthcheck"

        # The per-round table, printed by the coordinator.
        header = "| round | survivors |"
        assert header in output, output[-6000:]
        table = output[output.index(header) :].splitlines()
        # The training rounds, then the calibration round that sets the decision threshold.
        rows = [line for line in table[2 : 3 + FEDERATION["rounds"]] if "|" in line]
        labels = [str(r) for r in range(1, FEDERATION["rounds"] + 1)] + ["calibration"]
        assert [row.split("|")[1].strip() for row in rows] == labels

        # The report, read out of its volume.
        report_dir = tmp_path / "report"
        _extract_volume(engine, image, f"{project}_report", report_dir)
        report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
        assert [r["round"] for r in report["rounds"]] == list(range(1, FEDERATION["rounds"] + 2))
        assert report["rounds"][-1]["calibration"] is not None
        epsilon_before = dict.fromkeys(PARTIES, 0.0)
        for round_ in report["rounds"]:
            assert sorted(round_["survivors"]) == PARTIES and round_["dropped"] == {}
            for party in PARTIES:  # record-level epsilon only grows, within each party's budget
                assert epsilon_before[party] < round_["epsilon"][party] <= FEDERATION["training"]["target_epsilon"]
                epsilon_before[party] = round_["epsilon"][party]
        # Scored on the coordinator's public evaluation records (3 kinds of party x 100), never on a
        # participant's held-out split, next to the majority class.
        assert report["results"]["federated"]["count"] == 300
        assert 0.0 <= report["federated_accuracy"] <= 1.0
        assert report["results"]["majority"]["count"] == 300
        assert (report_dir / "report.png").stat().st_size > 0
        assert (report_dir / "global_adapter" / "adapter_config.json").is_file()

        # Each participant made its own keys in its own credentials volume; next to them are only
        # the public files the pki job sent back.
        for party in PARTIES:
            credentials = _files(engine, image, f"{project}_{party}-credentials")
            # The participant's policy is written there on first use, when the node has one.
            credentials.pop(f"participants/{party}/policy.toml", None)
            assert credentials == {
                ".gitignore": "644",
                ".lock": "644",
                "ca/ca.pem": "644",
                "roster.json": "644",
                "roster.sig": "644",
                f"participants/{party}/tls.pem": "644",
                f"participants/{party}/tls.key": "600",
                f"participants/{party}/identity.key": "600",
            }, credentials
            # What travelled between the participant and the pki job: its request, public files back.
            enrolment = _files(engine, image, f"{project}_{party}-enrolment")
            assert sorted(enrolment) == sorted(
                [
                    "request.json",
                    "issued/.ready",
                    "issued/ca/ca.pem",
                    "issued/roster.json",
                    "issued/roster.sig",
                    f"issued/participants/{party}/tls.pem",
                ]
            ), enrolment
        # The pki job never wrote a participant's private key: the CA's and the coordinator's only.
        keys = sorted(path for path in _files(engine, image, f"{project}_pki") if path.endswith(".key"))
        assert keys == ["federation/ca/ca.key", "federation/coordinator/main.key"], keys
    finally:
        subprocess.run([*compose, "down", "-v"], cwd=ROOT, env=env, capture_output=True, timeout=300)
        if engine.cli == "podman":  # podman-compose 1.0.3 leaves the network behind
            subprocess.run(["podman", "network", "rm", "-f", f"{project}_default"], capture_output=True, timeout=60)


def _watch_health(engine: Engine, project: str, process: subprocess.Popen, healthy: list[bool]) -> None:
    """Run the coordinator's healthcheck while the demo runs; record the first success."""
    while process.poll() is None:
        try:
            if engine.healthy(engine.container(project, "coordinator")):
                healthy.append(True)
                return
        except (AssertionError, subprocess.SubprocessError):
            pass  # not created yet
        time.sleep(3)


def _extract_volume(engine: Engine, image: str, volume: str, destination: Path) -> None:
    """Copy a volume's files here, through a throw-away container of the image (``cp`` from a
    stopped container does not see its volumes on every engine)."""
    archive = subprocess.run(
        [
            engine.cli,
            "run",
            "--rm",
            "-v",
            f"{volume}:/volume:ro",
            "--entrypoint",
            "tar",
            image,
            "-C",
            "/volume",
            "-c",
            ".",
        ],
        capture_output=True,
        check=True,
        timeout=300,
    ).stdout
    destination.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(destination, filter="data")


def _files(engine: Engine, image: str, volume: str) -> dict[str, str]:
    """Path (relative to the volume) -> octal mode of every file in a volume."""
    listing = engine.run(
        "run", "--rm", "-v", f"{volume}:/volume:ro", "--entrypoint", "find", image,
        "/volume", "-type", "f", "-printf", "%P %m\\n",
    ).stdout  # fmt: skip
    return dict(line.rsplit(" ", 1) for line in listing.splitlines())


def _exit_code(engine: Engine, container: str) -> int:
    return int(engine.run("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip())
