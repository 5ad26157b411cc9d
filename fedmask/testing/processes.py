"""``fedmask`` commands as separate processes, started as an operator would start them, for the
end-to-end tests: offline, one library thread each, no stdin, output appended to a log file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

# No model hub, unbuffered output (a log read mid-run is current), one thread per process (several
# share two cores).
CLI_ENVIRONMENT: Mapping[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def spawn_cli(args: Iterable[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m fedmask.cli ARGS`` with stdout and stderr appended to ``log``."""
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "fedmask.cli", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **CLI_ENVIRONMENT},
        )


def log_tails(logs: Iterable[Path], chars: int = 2500) -> str:
    """The end of each log that exists, under its name: what a failed assertion should show."""
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}" for log in logs if log.exists())
