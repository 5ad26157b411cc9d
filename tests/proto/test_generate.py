"""The committed generated code matches the .proto files: regenerate into a temporary directory
with grpcio-tools and compare (the lines naming the tool release are ignored). To fix a failure:
``python -m fedmask.proto.generate`` and commit the result."""

from __future__ import annotations

from pathlib import Path

import grpc_tools  # noqa: F401 - in the test extra; without it this test must fail, not skip
import pytest

from fedmask.proto import generate


@pytest.mark.parametrize("proto_file", generate.PROTO_FILES)
def test_generated_code_is_up_to_date(proto_file, tmp_path):
    generate.generate(tmp_path)
    for relative in generate.generated_paths(proto_file):
        committed = generate.REPO_ROOT / relative
        fresh = tmp_path / relative
        assert committed.is_file(), f"{relative} is missing: run `python -m fedmask.proto.generate`"
        assert generate.normalised(committed.read_text()) == generate.normalised(fresh.read_text()), (
            f"{relative} is stale: run `python -m fedmask.proto.generate` and commit the result"
        )


def test_normalisation_only_hides_tool_versions():
    text = "# Protobuf Python Version: 7.35.1\nGRPC_GENERATED_VERSION = '1.85.1'\n    7,\nclass X: pass\n"
    assert generate.normalised(text).split() == ["class", "X:", "pass"]


def test_every_package_directory_is_importable():
    for proto_file in generate.PROTO_FILES:
        directory = (generate.REPO_ROOT / proto_file).parent
        while directory != generate.REPO_ROOT:
            assert (directory / "__init__.py").is_file(), f"{directory} needs an __init__.py"
            directory = directory.parent


def test_the_service_is_versioned():
    from fedmask.proto.secagg.v1 import secagg_pb2

    assert secagg_pb2.DESCRIPTOR.package == "fedmask.secagg.v1"
    assert "SecureAggregation" in secagg_pb2.DESCRIPTOR.services_by_name
    assert Path(secagg_pb2.__file__).name == "secagg_pb2.py"
