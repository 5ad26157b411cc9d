"""Multi-host tests: every process in its own network namespace, with its own address, on a bridge.

Skipped, with the reason, where network namespaces cannot be created (not root, no iproute2, or
a sandbox without CAP_SYS_ADMIN). CI runs as root, so there they run.
"""

from __future__ import annotations

import pytest
from netns_topology import NetnsUnavailable, check_available


@pytest.fixture(scope="session")
def netns_available() -> None:
    try:
        check_available()
    except NetnsUnavailable as exc:
        pytest.skip(f"multi-host tests need network namespaces: {exc}")
