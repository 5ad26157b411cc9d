"""Assertions about how a ``fedmask`` command failed, for tests that run it through click."""

from __future__ import annotations

from click.testing import Result


def assert_one_line_error(result: Result, *words: str) -> str:
    """The command failed (non-zero exit, handled: no traceback) and its last line is one
    ``Error: ...`` line holding every one of ``words``; returns that line."""
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), f"not handled: {result.exception!r}"
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: "), result.output
    for word in words:
        assert word in last, last
    return last
