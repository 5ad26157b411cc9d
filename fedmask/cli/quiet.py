"""Library chatter that says nothing about a fedmask run, silenced in the processes that train."""

from __future__ import annotations

import logging
import warnings


def quiet_libraries(log_format: str = "%(message)s") -> None:
    """Drop deprecation warnings and Opacus's accountant note on its alpha grid, and print
    fedmask's own warnings as plain lines in ``log_format``. (Opacus's "Secure RNG turned off" is
    dropped where the trainer makes its PrivacyEngine: the noise is fedmask's own CSPRNG.) Call it
    before Opacus is imported: Opacus installs its own log format on first import."""
    logging.basicConfig(level=logging.WARNING, format=log_format)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
