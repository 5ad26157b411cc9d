"""Library chatter that says nothing about a fedmask run, silenced in the processes that train."""

from __future__ import annotations

import logging
import warnings


def quiet_libraries(log_format: str = "%(message)s") -> None:
    """Drop deprecation warnings and Opacus's note that its noise comes from torch's generator
    (fedmask draws the noise and the batches from a CSPRNG itself: docs/dp-training.md), and print
    fedmask's own warnings as plain lines in ``log_format``. Call it before Opacus is imported:
    Opacus installs its own log format on first import."""
    logging.basicConfig(level=logging.WARNING, format=log_format)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
