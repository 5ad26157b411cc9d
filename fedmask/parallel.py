"""Threads for secure aggregation's vector work, which ``fedmask.secagg`` leaves to its caller.

The protocol core starts no threads (it stays sans-I/O); where a vector can be cut into parts,
it takes a ``PartRunner`` (``fedmask.secagg.prg``) and hands it one job per part. This module is
the runner the coordinator, the participant and ``fedmask simulate`` give it: a pool of threads,
one per usable core. AES (OpenSSL) and numpy release the GIL, so the parts run side by side.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class ThreadPartRunner:
    """Runs a call's jobs on ``parts`` threads (kept for the runner's lifetime) and waits for
    all of them; the first exception a job raised is raised here."""

    def __init__(self, parts: int) -> None:
        if parts < 1:
            raise ValueError(f"parts must be at least 1, got {parts}")
        self.parts = parts
        self._pool = ThreadPoolExecutor(parts, thread_name_prefix="fedmask-mask") if parts > 1 else None

    def __call__(self, jobs: Sequence[Callable[[], None]]) -> None:
        if self._pool is None:
            for job in jobs:
                job()
            return
        futures = [self._pool.submit(job) for job in jobs]
        for future in futures:
            future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def default_runner() -> ThreadPartRunner | None:
    """One part per usable core; ``None`` (no threads) on a single core."""
    cpus = usable_cpus()
    return ThreadPartRunner(cpus) if cpus > 1 else None
