"""Regenerate the committed Python code of the .proto files: ``python -m proto.generate``.

The generated modules are committed (so installing fedmask needs no protoc), and
``tests/coordinator/test_proto_generated.py`` regenerates them into a temporary directory and
fails if they differ from the committed ones. Needs ``grpcio-tools`` (in the ``test`` extra,
so ``make test`` runs the check).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Paths relative to the repository root, which is protoc's include root: the generated modules
# then import each other as ``proto.fedmask...``, inside the ``proto`` package.
PROTO_FILES = ("proto/fedmask/secagg/v1/secagg.proto", "proto/fedmask/fl/v1/fl.proto")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

# Lines that only record which protoc/grpcio-tools release ran. They differ between tool
# releases without any change to the schema, so the staleness check ignores them.
_TOOL_VERSION_LINES = re.compile(
    r"^(# Protobuf Python Version: .*"
    r"|\s*\d+,\s*$"
    r"|GRPC_GENERATED_VERSION = .*)$",
    re.MULTILINE,
)


def generated_paths(proto_file: str) -> list[str]:
    stem = proto_file.removesuffix(".proto")
    return [stem + suffix for suffix in GENERATED_SUFFIXES]


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on PROTO_FILES, writing under ``out_dir``."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("grpcio-tools is needed: pip install 'grpcio-tools>=1.70,<2'") from exc
    import importlib.resources

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={REPO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(REPO_ROOT / p) for p in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(PROTO_FILES)}")
    return [out_dir / path for proto in PROTO_FILES for path in generated_paths(proto)]


def normalised(text: str) -> str:
    """Generated code with the tool-release lines blanked out, for comparison."""
    return _TOOL_VERSION_LINES.sub("", text)


def main() -> None:
    written = generate(REPO_ROOT)
    for path in written:
        print(path.relative_to(REPO_ROOT))


if __name__ == "__main__":
    sys.exit(main())
