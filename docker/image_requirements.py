"""Print, one per line, every requirement the container image installs: pyproject.toml's build
requirements, torch (pinned to the CPU build's version), the core dependencies and the given
extras. ``make wheelhouse`` feeds this to ``pip wheel`` so that the image can be built with no
network access (``--build-arg WHEELHOUSE=wheelhouse``).

    python docker/image_requirements.py --extras ml,grpc --torch torch==2.13.0
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def image_requirements(pyproject: dict, extras: list[str], torch: str) -> list[str]:
    optional = pyproject["project"].get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"unknown extras {unknown}; pyproject.toml has {sorted(optional)}")
    lines = [*pyproject["build-system"]["requires"], torch, *pyproject["project"]["dependencies"]]
    for extra in extras:
        lines += optional[extra]
    return list(dict.fromkeys(lines))  # first occurrence wins, order kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="ml,grpc", help="comma-separated extras of fedmask")
    parser.add_argument("--torch", default="torch==2.13.0", help="the torch requirement (CPU build)")
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT)
    args = parser.parse_args()
    pyproject = tomllib.loads(args.pyproject.read_text(encoding="utf-8"))
    extras = [extra.strip() for extra in args.extras.split(",") if extra.strip()]
    print("\n".join(image_requirements(pyproject, extras, args.torch)))


if __name__ == "__main__":
    main()
