"""The ``fedmask`` root command: what becomes one ``Error:`` line and what stays a traceback."""

from __future__ import annotations

import errno

import click
import grpc
import pytest
from click.testing import CliRunner

from fedmask.cli import main, one_line_error
from fedmask.coordinator.store import StoreError


class _FailedCall(grpc.RpcError):
    """What a stub raises when the coordinator answers with an error status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (OSError(errno.EROFS, "Read-only file system", "/srv/state"), "Read-only file system: /srv/state"),
        (RuntimeError("Failed to bind to address 0.0.0.0:7443; ..."), "cannot listen on 0.0.0.0:7443"),
        (StoreError("the store\n  is damaged"), "the store is damaged"),
        (_FailedCall(grpc.StatusCode.PERMISSION_DENIED, "not in the roster"), "gRPC call failed: PERMISSION_DENIED"),
    ],
)
def test_failures_a_user_can_act_on_become_one_line(exc, line):
    assert one_line_error(exc) is not None and one_line_error(exc).startswith(line)


def test_a_bug_keeps_its_traceback():
    assert one_line_error(KeyError("x")) is None
    assert one_line_error(ZeroDivisionError()) is None


@click.command("fails")
def _fails() -> None:
    raise _FailedCall(grpc.StatusCode.UNAVAILABLE, "connection refused")


def test_a_grpc_failure_that_escapes_a_command_is_one_line(monkeypatch):
    monkeypatch.setitem(main.commands_by_name, "fails", f"{__name__}:_fails")
    result = CliRunner().invoke(main, ["fails"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output == "Error: gRPC call failed: UNAVAILABLE: connection refused\n"
