"""Rewrite the state diagrams in docs/design.md from the secagg transition tables.

    python docs/update_diagrams.py           # rewrite the blocks in place
    python docs/update_diagrams.py --check   # exit 1 if a block is stale, change nothing

Each diagram lives between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in a mermaid fence;
the names and generators are ``fedmask.secagg.diagram.DIAGRAMS``. Everything outside the markers
is left as it is.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

from fedmask.secagg.diagram import DIAGRAMS

DESIGN = pathlib.Path(__file__).resolve().parent / "design.md"


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n)(.*?)(<!-- END {re.escape(name)} -->)", re.DOTALL)


def fenced(diagram: str) -> str:
    """What belongs between the markers: the diagram in a mermaid fence."""
    return f"```mermaid\n{diagram}```\n"


def committed_blocks(document: str) -> dict[str, str]:
    """The text between each pair of markers, by diagram name."""
    blocks = {}
    for name in DIAGRAMS:
        found = _block(name).findall(document)
        if len(found) != 1:
            raise ValueError(f"{DESIGN.name} must have exactly one {name} block, found {len(found)}")
        blocks[name] = found[0][1]
    return blocks


def updated(document: str) -> str:
    """``document`` with every block regenerated."""
    committed_blocks(document)  # refuses missing or repeated markers before anything is replaced
    for name, generate in DIAGRAMS.items():
        block = fenced(generate())
        document = _block(name).sub(lambda match, block=block: match.group(1) + block + match.group(3), document)
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale diagrams without rewriting them")
    args = parser.parse_args(argv)
    document = DESIGN.read_text(encoding="utf-8")
    new = updated(document)
    if new == document:
        print(f"{DESIGN.name}: diagrams are current")
        return 0
    if args.check:
        print(f"{DESIGN.name}: diagrams are stale; run `python docs/update_diagrams.py`", file=sys.stderr)
        return 1
    DESIGN.write_text(new, encoding="utf-8")
    print(f"{DESIGN.name}: diagrams rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
