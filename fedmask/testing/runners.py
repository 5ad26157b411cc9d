"""A ``PartRunner`` for tests: runs a call's jobs on the calling thread and records each call."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class RecordingRunner:
    """Runs each call's jobs one after the other (last first with ``reverse``: a result must
    not depend on the order of the parts) and records how many jobs each call had."""

    def __init__(self, parts: int, *, reverse: bool = False) -> None:
        self.parts = parts
        self.reverse = reverse
        self.calls: list[int] = []

    def __call__(self, jobs: Sequence[Callable[[], None]]) -> None:
        self.calls.append(len(jobs))
        for job in reversed(jobs) if self.reverse else jobs:
            job()
