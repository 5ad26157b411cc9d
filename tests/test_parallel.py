"""The thread runner secure aggregation's vector work is handed."""

from __future__ import annotations

import threading

import pytest

from fedmask.parallel import ThreadPartRunner, default_runner, usable_cpus


def test_jobs_run_on_separate_threads_and_all_finish() -> None:
    runner = ThreadPartRunner(2)
    both_started = threading.Barrier(2, timeout=10)  # deadlocks if the jobs ran one by one
    seen: list[str] = []

    def job() -> None:
        both_started.wait()
        seen.append(threading.current_thread().name)

    runner([job, job])
    assert len(seen) == 2 and len(set(seen)) == 2
    runner.close()


def test_the_caller_runs_the_first_job_and_the_pool_the_rest() -> None:
    runner = ThreadPartRunner(3)
    seen: dict[int, str] = {}
    runner([lambda i=i: seen.__setitem__(i, threading.current_thread().name) for i in range(3)])
    assert seen[0] == threading.current_thread().name
    assert all(seen[i].startswith("fedmask-mask") for i in (1, 2))
    runner.close()


def test_an_exception_in_a_job_is_raised_to_the_caller() -> None:
    def bad() -> None:
        raise RuntimeError("part 2 failed")

    with pytest.raises(RuntimeError, match="part 2 failed"):
        ThreadPartRunner(2)([lambda: None, bad])


def test_the_caller_s_failure_is_raised_only_once_every_other_job_has_ended() -> None:
    # The jobs write into one buffer: returning while a part still runs would hand the caller
    # a buffer that is still changing.
    release = threading.Event()
    ended: list[str] = []

    def fails_at_once() -> None:
        release.set()
        raise RuntimeError("part 1 failed")

    def slow() -> None:
        release.wait(10)
        threading.Event().wait(0.05)
        ended.append("part 2")

    with pytest.raises(RuntimeError, match="part 1 failed"):
        ThreadPartRunner(2)([fails_at_once, slow])
    assert ended == ["part 2"]


def test_one_part_runs_inline_and_zero_parts_are_refused() -> None:
    caller = threading.current_thread().name
    seen: list[str] = []
    ThreadPartRunner(1)([lambda: seen.append(threading.current_thread().name)])
    assert seen == [caller]
    with pytest.raises(ValueError, match="at least 1"):
        ThreadPartRunner(0)


def test_the_default_runner_has_a_part_per_usable_core() -> None:
    runner = default_runner()
    assert (runner is None) if usable_cpus() == 1 else (runner is not None and runner.parts == usable_cpus())
