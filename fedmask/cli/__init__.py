"""The ``fedmask`` command: one entry point for every role.

Each area owns its commands in its own module; this file only wires them together, importing
them lazily so that ``fedmask simulate`` does not pay for importing torch.

Every failure a user can cause or fix (a file that cannot be read or written, a port in use, a
bad setting, a refused task) ends in one ``Error: ...`` line and a non-zero exit: fedmask's own
exceptions say why in their message, and so do the operating system's. Anything else is a bug
and keeps its traceback. A reader that closes the pipe early (``fedmask pki show | head``) chose to
stop reading: no error, and the exit status of a command killed by SIGPIPE.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from typing import NoReturn

import click

# What a shell reports for a command killed by SIGPIPE.
EXIT_CLOSED_PIPE = 128 + signal.SIGPIPE

# command name -> "module:attribute" of a click command or group
_COMMANDS: dict[str, str] = {
    "simulate": "fedmask.cli.simulate:simulate",
    "bench": "fedmask.cli.bench:bench",
    "pki": "fedmask.cli.pki:pki",
    "coordinator": "fedmask.cli.coordinator:coordinator",
    "participant": "fedmask.cli.participant:participant",
    "data": "fedmask.cli.data:data",
    "demo": "fedmask.cli.demo:demo",
    "predict": "fedmask.cli.predict:predict",
    "doctor": "fedmask.cli.doctor:doctor",
    "audit": "fedmask.cli.audit:audit",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use from ``commands_by_name``."""

    commands_by_name: dict[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in self.commands_by_name if self.get_command(ctx, name))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = self.commands_by_name.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A command whose module is not part of this installation is simply not offered;
            # any other import failure is a real bug and must surface.
            if exc.name == module_name:
                return None
            raise
        command = getattr(module, attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is {type(command).__name__}, not a click command")
        return command


class _RootGroup(LazyGroup):
    commands_by_name = _COMMANDS

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            closed_pipe_exit()
        except Exception as exc:
            message = one_line_error(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None


def closed_pipe_exit() -> NoReturn:
    # What is still buffered for stdout would fail again when Python flushes it at exit.
    with contextlib.suppress(OSError, ValueError):  # not a real file (click's test runner)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    sys.exit(EXIT_CLOSED_PIPE)


def one_line_error(exc: BaseException) -> str | None:
    """The one line to print for a failure the user can act on, or None for a bug."""
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    if isinstance(exc, RuntimeError) and str(exc).startswith("Failed to bind to address"):
        # gRPC's way of saying the port is taken (or the address is not this machine's)
        address = str(exc).removeprefix("Failed to bind to address ").split(";")[0]
        return f"cannot listen on {address}: the port is in use, or the address is not this machine's"
    if type(exc).__module__.startswith("fedmask."):
        return " ".join(str(exc).split()) or type(exc).__name__
    # A gRPC call that failed where no command turned it into its own words. grpc is looked up,
    # not imported: only a process that imported it can raise its errors.
    grpc = sys.modules.get("grpc")
    if grpc is not None and isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        details = exc.details() if callable(getattr(exc, "details", None)) else ""
        return f"gRPC call failed: {exc.code().name}: {' '.join(str(details or '').split())}".rstrip(": ")
    return None


@click.group(cls=_RootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fedmask")
def main() -> None:
    """fedmask: differentially private adapters under secure aggregation."""


if __name__ == "__main__":  # pragma: no cover
    main()
