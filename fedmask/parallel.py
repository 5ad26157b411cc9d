"""Threads for secure aggregation's vector work, which ``fedmask.secagg`` leaves to its caller.

The protocol core starts no threads (it stays sans-I/O); where a vector can be cut into parts,
it takes a ``PartRunner`` (``fedmask.secagg.prg``) and hands it one job per part. This module is
the runner the coordinator, the participant and ``fedmask simulate`` give it: the calling thread
and a pool thread for each further usable core. AES (OpenSSL), numpy and libsodium release the
GIL, so the parts run side by side.
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
    """Runs a call's jobs on ``parts`` threads and waits for all of them; the first exception a
    job raised (in job order) is raised here, once every job has ended.

    The calling thread runs the first job itself and ``parts - 1`` pool threads (kept for the
    runner's lifetime) the others: the caller would only wait otherwise, and handing a job to a
    thread costs tens of microseconds, as much as a signature check (``fedmask.secagg.keys``)."""

    def __init__(self, parts: int) -> None:
        if parts < 1:
            raise ValueError(f"parts must be at least 1, got {parts}")
        self.parts = parts
        self._pool = ThreadPoolExecutor(parts - 1, thread_name_prefix="fedmask-mask") if parts > 1 else None

    def __call__(self, jobs: Sequence[Callable[[], None]]) -> None:
        if self._pool is None or len(jobs) <= 1:
            for job in jobs:
                job()
            return
        futures = [self._pool.submit(job) for job in jobs[1:]]
        first: BaseException | None = None
        try:
            jobs[0]()
        except BaseException as exc:  # re-raised below, once no job still writes into shared buffers
            first = exc
        for future in futures:
            error = future.exception()
            if first is None:
                first = error
        if first is not None:
            raise first

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def default_runner() -> ThreadPartRunner | None:
    """One part per usable core; ``None`` (no threads) on a single core."""
    cpus = usable_cpus()
    return ThreadPartRunner(cpus) if cpus > 1 else None
