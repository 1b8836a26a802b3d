"""`bench.measurements`: the one timing loop and median the benchmark scripts share (newcomer review 45 F22)."""

from __future__ import annotations

import time

import pytest

from bench import spool_scale
from bench.measurements import median_ms, time_calls


def test_time_calls_times_each_call_after_the_untimed_warmup() -> None:
    calls = []

    seconds = time_calls(lambda: calls.append(len(calls)), calls=3, warmup=2)

    assert calls == [0, 1, 2, 3, 4]
    assert len(seconds) == 3 and all(duration >= 0 for duration in seconds)


def test_median_of_an_even_count_is_the_mean_of_the_two_middle_values() -> None:
    assert median_ms([0.004, 0.001, 0.003, 0.002]) == 2.5
    assert median_ms([0.0012344]) == 1.234


def test_spool_scale_times_a_step_as_the_median_of_its_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """It took the upper middle value of an even count (3 ms here), where its docstring says median."""
    clock = [0.0]
    step_seconds = iter([0.004, 0.001, 0.003, 0.002])
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def step() -> None:
        clock[0] += next(step_seconds)

    assert spool_scale.timed(step, repeats=4) == 2.5
