"""``fedmask bench pii``: a cases file that is not one labelled case a line ends in one line that
names the file and the line, before anything is scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedmask.bench import pii_bench
from fedmask.cli import main
from fedmask.testing.cli import assert_one_line_error

GOOD = {"id": "c1", "lang": "en", "category": "email", "text": "mail a@example.com", "spans": []}


@pytest.mark.parametrize(
    ("second_line", "why"),
    [
        ("not json", "Expecting value"),
        ("[1, 2]", "a JSON list, not an object"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "spans"}), "missing field 'spans'"),
        (json.dumps({**GOOD, "text": 7}), "text is not a string"),
        (json.dumps({**GOOD, "spans": [{"start": 0, "end": 99, "type": "email"}]}), "bad span (0, 99, 'email')"),
        (json.dumps({**GOOD, "spans": [{"start": 5, "end": 18, "type": "ssn"}]}), "bad span (5, 18, 'ssn')"),
    ],
)
def test_a_bad_line_is_named_in_one_error_line(tmp_path: Path, second_line: str, why: str) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps(GOOD) + "\n" + second_line + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["bench", "pii", "--cases", str(cases), "--no-heldout", "--no-presidio"])
    assert_one_line_error(result, f"{cases}:2: not a labelled case", why)


def test_a_file_that_is_not_text_is_refused(tmp_path: Path) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(pii_bench.CaseFileError, match="cannot read the cases"):
        pii_bench.load_cases(cases)


def test_the_shipped_sets_load() -> None:
    spans = [span for case in pii_bench.load_cases() for span in case.spans]
    assert spans and all(kind in pii_bench.PII_TYPES for _, _, kind in spans)
    assert pii_bench.load_cases(pii_bench.HELDOUT_PATH)
