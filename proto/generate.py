"""Regenerate the committed Python code of the .proto files: ``python -m fedmask.proto.generate``.

The generated modules are committed (so installing fedmask needs no protoc), and
``tests/proto/test_generate.py`` regenerates them into a temporary directory and
fails if they differ from the committed ones. Needs ``grpcio-tools`` (in the ``test`` extra,
so ``make test`` runs the check).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto"
# Where the folder proto/ is installed: the package ``fedmask.proto``. protoc runs on an include
# root where proto/ appears as fedmask/proto/, so the generated modules import each other as
# ``fedmask.proto...`` and the descriptors name their files fedmask/proto/....
PACKAGE_PATH = Path("fedmask/proto")
# Paths relative to the repository root.
PROTO_FILES = ("proto/secagg/v1/secagg.proto", "proto/fl/v1/fl.proto")
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
        from grpc_tools import protoc  # type: ignore[import-untyped]  # grpcio-tools ships no type information
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("grpcio-tools is needed: pip install 'grpcio-tools>=1.70,<2'") from exc
    import importlib.resources

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        include_root, generated_root = Path(staging) / "include", Path(staging) / "out"
        (include_root / PACKAGE_PATH).parent.mkdir(parents=True)
        (include_root / PACKAGE_PATH).symlink_to(PROTO_DIR, target_is_directory=True)
        generated_root.mkdir()
        staged = [PACKAGE_PATH / Path(p).relative_to("proto") for p in PROTO_FILES]
        args = [
            "grpc_tools.protoc",
            f"--proto_path={include_root}",
            f"--proto_path={well_known}",
            f"--python_out={generated_root}",
            f"--pyi_out={generated_root}",
            f"--grpc_python_out={generated_root}",
            *(str(include_root / p) for p in staged),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(PROTO_FILES)}")
        written = []
        for proto in PROTO_FILES:
            for path in generated_paths(proto):
                target = out_dir / path
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(generated_root / PACKAGE_PATH / Path(path).relative_to("proto"), target)
                written.append(target)
    return written


def normalised(text: str) -> str:
    """Generated code with the tool-release lines blanked out, for comparison."""
    return _TOOL_VERSION_LINES.sub("", text)


def main() -> None:
    written = generate(REPO_ROOT)
    for path in written:
        print(path.relative_to(REPO_ROOT))


if __name__ == "__main__":
    main()
