"""fedmask installs as one package, ``fedmask``, and nothing else: in particular not a top-level
``proto``, which is the import name of proto-plus (used by every google-cloud client library).

The wheel is built from this tree and installed into a scratch virtual environment next to
proto-plus; both must import. Dependencies come from this test run's own environment through a
.pth file, so nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed() -> None:
    """pyproject lists its packages by hand (the folders map onto fedmask.*): none may be missing."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping, listed = config["package-dir"], set(config["packages"])
    found = set()
    for package, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            found.add(".".join([package, *relative.parts]))
    assert found == listed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), REPO],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("fedmask-*.whl")
    return path


def test_the_wheel_holds_only_the_fedmask_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"fedmask"}
    for expected in ("fedmask/secagg/client.py", "fedmask/proto/wire.py", "fedmask/proto/secagg/v1/secagg.proto"):
        assert expected in names


def _install_proto_plus(site_packages: Path) -> Path:
    """Copy the proto-plus distribution of this environment into ``site_packages``."""
    distribution = importlib.metadata.distribution("proto-plus")
    for file in distribution.files or ():
        source = Path(distribution.locate_file(file))
        if source.is_file():
            target = site_packages / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return site_packages / "proto" / "__init__.py"


def test_fedmask_installs_next_to_proto_plus(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    proto_plus_init = _install_proto_plus(site_packages)
    before = hashlib.sha256(proto_plus_init.read_bytes()).hexdigest()
    # The wheel, installed as pip would: its files under site-packages.
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site_packages)
    # numpy, cryptography, protobuf, grpc: from this environment, after the venv's own packages.
    (site_packages / "zz-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    assert hashlib.sha256(proto_plus_init.read_bytes()).hexdigest() == before
    here = str(site_packages)
    check = (
        "import proto, fedmask.proto.wire, fedmask.secagg, fedmask.pki;"
        f"assert proto.Message and proto.__file__.startswith({here!r}), proto.__file__;"
        f"assert fedmask.proto.wire.__file__.startswith({here!r});"
        "print('ok')"
    )
    result = subprocess.run(
        [python, "-c", check],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository, whose proto/ folder would shadow both
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
