"""The documentation points only at what exists: every test it cites (``tests/x.py::name``), every
repository file it links, every anchor within its own pages. A renamed test or a moved file
otherwise leaves the operator's guide sending readers nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
TEST_REFERENCE = re.compile(r"\btests/[\w/]+\.py(?:::\w+)*")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=_relative)
def test_every_cited_test_exists(page: Path) -> None:
    missing = []
    for reference in sorted(set(TEST_REFERENCE.findall(page.read_text(encoding="utf-8")))):
        path, *names = reference.split("::")
        source = ROOT / path
        if not source.is_file():
            missing.append(reference)
        elif names and not re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{names[-1]}\b", source.read_text(), re.M):
            missing.append(reference)
    assert missing == [], f"{_relative(page)} cites what does not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_relative)
def test_every_link_inside_the_repository_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):  # https:, mailto: ... : not the repository's
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
        elif not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target} (no such heading)")
    assert broken == [], f"{_relative(page)} links to what does not exist: {broken}"
