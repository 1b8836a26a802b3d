"""`app.batching.MicroBatcher` with a fake model: joining, routing, limits, failures, timeouts and shutdown.

The fake `run_batch` returns each slice's first input value as its probability, so every caller can check it got
its own answers back, and records the size of every batch it was given.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
import pytest

from app.api.handlers import service_error_response
from app.batching import MicroBatcher
from app.errors import InferenceTimeoutError, OverloadedError, TooManySlicesError
from app.inference import SlicePrediction

WAIT_SECONDS = 5.0


class FakeModel:
    """A `run_batch` whose first call can be held until `release()`; records batch sizes and values."""

    def __init__(self, hold_first: bool = False, fail_when: Callable[[np.ndarray], bool] | None = None) -> None:
        self.batches: list[list[float]] = []
        self.started = threading.Event()
        self._gate = threading.Event()
        if not hold_first:
            self._gate.set()
        self._fail_when = fail_when

    def release(self) -> None:
        self._gate.set()

    def __call__(self, inputs: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[SlicePrediction]:
        assert len(inputs) == len(sizes)
        self.started.set()
        if not self._gate.wait(WAIT_SECONDS):
            raise TimeoutError("the test never released the fake model")
        values = [float(value) for value in inputs[:, 0]]
        self.batches.append(values)
        if self._fail_when is not None and self._fail_when(inputs):
            raise RuntimeError("model exploded")
        return [
            SlicePrediction(probability=value, detected=True, mask=np.zeros(size, np.uint8))
            for value, size in zip(values, sizes, strict=True)
        ]

    @property
    def batch_sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]


def slices(*values: float) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Inputs holding `values` (one slice each) and a distinct original size per slice."""
    return np.array([[value] for value in values], np.float32), [
        (10 + index, 20 + index) for index in range(len(values))
    ]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), WAIT_SECONDS * 2))


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.005)


async def hold_worker(batcher: MicroBatcher, model: FakeModel) -> asyncio.Task:
    """Submit one slice (value -1) and wait until the fake model is running it, so later jobs queue up."""
    first = asyncio.create_task(batcher.submit(*slices(-1.0)))
    await until(model.started.is_set)
    return first


def probabilities(predictions: list[SlicePrediction]) -> list[float]:
    return [prediction.probability for prediction in predictions]


def test_submit_returns_predictions_in_order() -> None:
    model = FakeModel()

    async def scenario() -> None:
        batcher = MicroBatcher(model)
        batcher.start()
        inputs, sizes = slices(0.1, 0.2, 0.3)
        predictions = await batcher.submit(inputs, sizes)
        await batcher.stop()

        assert probabilities(predictions) == pytest.approx([0.1, 0.2, 0.3])
        assert [prediction.mask.shape for prediction in predictions] == sizes

    run(scenario)


def test_submit_joins_waiting_jobs_into_one_batch() -> None:
    model = FakeModel(hold_first=True)

    async def scenario() -> None:
        batcher = MicroBatcher(model, max_batch_size=16)
        batcher.start()
        first = await hold_worker(batcher, model)
        waiting = [asyncio.create_task(batcher.submit(*slices(float(value)))) for value in range(1, 5)]
        await until(lambda: batcher.queued_slices == 5)
        model.release()
        results = await asyncio.gather(first, *waiting)
        await batcher.stop()

        assert model.batch_sizes == [1, 4]
        assert [probabilities(result) for result in results] == [[-1.0], [1.0], [2.0], [3.0], [4.0]]

    run(scenario)


def test_submit_routes_multi_slice_jobs_back_to_their_callers() -> None:
    model = FakeModel(hold_first=True)

    async def scenario() -> None:
        batcher = MicroBatcher(model, max_batch_size=16)
        batcher.start()
        first = await hold_worker(batcher, model)
        jobs = [(1.0, 1.1, 1.2), (2.0,), (3.0, 3.1)]
        tasks = [asyncio.create_task(batcher.submit(*slices(*values))) for values in jobs]
        await until(lambda: batcher.queued_slices == 7)
        model.release()
        await first
        results = await asyncio.gather(*tasks)
        await batcher.stop()

        assert model.batches[1] == pytest.approx([1.0, 1.1, 1.2, 2.0, 3.0, 3.1])
        for values, result in zip(jobs, results, strict=True):
            assert probabilities(result) == pytest.approx(list(values))
            assert [prediction.mask.shape for prediction in result] == slices(*values)[1]

    run(scenario)


def test_submit_respects_max_batch_size() -> None:
    model = FakeModel(hold_first=True)

    async def scenario() -> None:
        batcher = MicroBatcher(model, max_batch_size=4)
        batcher.start()
        first = await hold_worker(batcher, model)
        jobs = [(1.0, 1.1), (2.0, 2.1), (3.0, 3.1), (4.0,)]
        tasks = [asyncio.create_task(batcher.submit(*slices(*values))) for values in jobs]
        await until(lambda: batcher.queued_slices == 8)
        model.release()
        await first
        results = await asyncio.gather(*tasks)
        await batcher.stop()

        # A job that would overflow the batch leads the next one; order is kept.
        assert model.batch_sizes == [1, 4, 3]
        assert model.batches[1:] == [pytest.approx([1.0, 1.1, 2.0, 2.1]), pytest.approx([3.0, 3.1, 4.0])]
        assert [probabilities(result) for result in results] == [pytest.approx(list(values)) for values in jobs]

    run(scenario)


def test_submit_runs_job_larger_than_max_batch_size_whole() -> None:
    model = FakeModel()

    async def scenario() -> None:
        batcher = MicroBatcher(model, max_batch_size=2)
        batcher.start()
        result = await batcher.submit(*slices(1.0, 2.0, 3.0, 4.0, 5.0))
        await batcher.stop()

        assert model.batch_sizes == [5]
        assert probabilities(result) == [1.0, 2.0, 3.0, 4.0, 5.0]

    run(scenario)


def test_submit_waits_for_more_jobs_within_max_wait() -> None:
    model = FakeModel()

    async def scenario() -> None:
        # The batch closes when full (2 slices), well before the wait ends.
        batcher = MicroBatcher(model, max_batch_size=2, max_wait_seconds=3.0)
        batcher.start()
        first = asyncio.create_task(batcher.submit(*slices(1.0)))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(batcher.submit(*slices(2.0)))
        results = await asyncio.gather(first, second)
        await batcher.stop()

        assert model.batch_sizes == [2]
        assert [probabilities(result) for result in results] == [[1.0], [2.0]]

    run(scenario)


def test_submit_raises_overloaded_when_queue_is_full() -> None:
    model = FakeModel(hold_first=True)

    async def scenario() -> None:
        batcher = MicroBatcher(model, max_queued_slices=2)
        batcher.start()
        first = await hold_worker(batcher, model)
        second = asyncio.create_task(batcher.submit(*slices(2.0)))
        await until(lambda: batcher.queued_slices == 2)

        with pytest.raises(OverloadedError) as raised:
            await batcher.submit(*slices(3.0))

        assert raised.value.code == "overloaded"
        assert raised.value.message == "the inference queue is full (2 of 2 slices waiting); retry shortly"
        assert raised.value.retry_after_seconds == 1
        model.release()
        assert probabilities(await second) == [2.0]
        await first
        # Once the queue drains, new work is accepted again.
        assert probabilities(await batcher.submit(*slices(4.0, 5.0))) == [4.0, 5.0]
        await batcher.stop()

    run(scenario)


def test_overloaded_error_maps_to_503_with_retry_after() -> None:
    response = service_error_response(OverloadedError("the inference queue is full", retry_after_seconds=1))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.body == b'{"error":{"code":"overloaded","message":"the inference queue is full"}}'


def test_failed_batch_fails_only_its_callers() -> None:
    model = FakeModel(hold_first=True, fail_when=lambda inputs: bool(np.any(inputs == 13.0)))

    async def scenario() -> None:
        batcher = MicroBatcher(model)
        batcher.start()
        first = await hold_worker(batcher, model)
        doomed = [asyncio.create_task(batcher.submit(*slices(value))) for value in (13.0, 14.0)]
        await until(lambda: batcher.queued_slices == 3)
        model.release()

        assert probabilities(await first) == [-1.0]
        for task in doomed:
            with pytest.raises(RuntimeError, match="model exploded"):
                await task
        # The worker survives and serves the next job.
        assert probabilities(await batcher.submit(*slices(15.0))) == [15.0]
        assert batcher.queued_slices == 0
        await batcher.stop()

        assert model.batch_sizes == [1, 2, 1]

    run(scenario)


def test_submit_times_out_and_drops_job_not_started() -> None:
    model = FakeModel(hold_first=True)

    async def scenario() -> None:
        batcher = MicroBatcher(model)
        batcher.start()
        first = await hold_worker(batcher, model)

        with pytest.raises(InferenceTimeoutError) as raised:
            await batcher.submit(*slices(2.0), timeout_seconds=0.05)

        assert raised.value.code == "inference_timeout"
        assert raised.value.retry_after_seconds is not None
        model.release()
        await first
        assert probabilities(await batcher.submit(*slices(3.0))) == [3.0]
        await batcher.stop()

        assert model.batches == [[-1.0], [3.0]]  # the timed-out slice never reached the model
        assert batcher.queued_slices == 0

    run(scenario)


def test_stop_finishes_queued_jobs() -> None:
    model = FakeModel(hold_first=True)
    depths: list[int] = []

    async def scenario() -> None:
        batcher = MicroBatcher(model, on_queue_change=depths.append)
        batcher.start()
        first = await hold_worker(batcher, model)
        queued = [asyncio.create_task(batcher.submit(*slices(value))) for value in (2.0, 3.0)]
        await until(lambda: batcher.queued_slices == 3)
        stopping = asyncio.create_task(batcher.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()
        model.release()
        await stopping

        assert probabilities(await first) == [-1.0]
        assert [probabilities(await task) for task in queued] == [[2.0], [3.0]]
        assert batcher.queued_slices == 0

    run(scenario)
    assert depths[:3] == [1, 2, 3]
    assert depths[-1] == 0


def test_submit_of_nothing_returns_nothing() -> None:
    model = FakeModel()

    async def scenario() -> None:
        batcher = MicroBatcher(model)
        batcher.start()
        assert await batcher.submit(np.zeros((0, 1), np.float32), []) == []
        await batcher.stop()

    run(scenario)
    assert model.batches == []


def test_submit_rejects_mismatched_sizes() -> None:
    async def scenario() -> None:
        batcher = MicroBatcher(FakeModel())
        with pytest.raises(ValueError, match="inputs hold 2 slices but 1 sizes were given"):
            await batcher.submit(np.zeros((2, 1), np.float32), [(1, 1)])
        await batcher.stop()

    run(scenario)


@pytest.mark.parametrize(
    "arguments",
    [{"max_batch_size": 0}, {"max_queued_slices": 0}, {"max_wait_seconds": -0.1}],
    ids=["batch_size", "queued_slices", "wait"],
)
def test_batcher_rejects_invalid_limits(arguments: dict) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        MicroBatcher(FakeModel(), **arguments)


def test_submit_refuses_a_job_larger_than_the_queue() -> None:
    async def scenario() -> None:
        batcher = MicroBatcher(FakeModel(), max_queued_slices=2)
        batcher.start()
        with pytest.raises(TooManySlicesError, match="at most 2 slices .*got 3"):
            await batcher.submit(*slices(1.0, 2.0, 3.0))
        assert batcher.queued_slices == 0
        await batcher.stop()

    run(scenario)
