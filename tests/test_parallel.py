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


def test_an_exception_in_a_job_is_raised_to_the_caller() -> None:
    def bad() -> None:
        raise RuntimeError("part 2 failed")

    with pytest.raises(RuntimeError, match="part 2 failed"):
        ThreadPartRunner(2)([lambda: None, bad])


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
