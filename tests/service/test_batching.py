"""`app.batching.MicroBatcher` with fake models: joining, routing, the two stages, limits, failures, timeouts and
shutdown.

The fake classifier gives each slice its first input value as its probability (positive from 0.5), so every caller
can check it got its own answers back; both fake models record every batch they were given.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
import pytest

from app.api.handlers import service_error_response
from app.batching import MicroBatcher
from app.errors import InferenceTimeoutError, OverloadedError, TooManySlicesError
from app.inference import SlicePrediction
from app.request_client import current_client

WAIT_SECONDS = 5.0


class Gate:
    """Holds the calls that pass it until `release()` (open from the start unless `closed`)."""

    def __init__(self, closed: bool) -> None:
        self.reached = threading.Event()
        self._open = threading.Event()
        if not closed:
            self._open.set()

    def release(self) -> None:
        self._open.set()

    def pass_through(self) -> None:
        self.reached.set()
        if not self._open.wait(WAIT_SECONDS):
            raise TimeoutError("the test never released the fake model")


class ModelClock:
    """Seconds that only the fake models move: each slice through the classifier or the segmenter takes its time."""

    def __init__(self, classifier_seconds: float, segmenter_seconds: float) -> None:
        self.now = 0.0
        self.classifier_seconds = classifier_seconds
        self.segmenter_seconds = segmenter_seconds

    def __call__(self) -> float:
        return self.now


class FakeModels:
    """Classifier and segmenter in the shape of `Predictor`; the first classifier call and the first segmenter call
    can be held; `fail_when` makes a model raise on the batches it matches; `clock` is moved by each call."""

    classifier_threshold = 0.5

    def __init__(
        self,
        hold_first: bool = False,
        hold_segmenter: bool = False,
        fail_when: Callable[[np.ndarray], bool] | None = None,
        fail_segmenter_when: Callable[[np.ndarray], bool] | None = None,
        clock: ModelClock | None = None,
    ) -> None:
        self.clock = clock
        self.classified: list[list[float]] = []
        self.segmented: list[list[float]] = []
        self.classifier_gate = Gate(closed=hold_first)
        self.segmenter_gate = Gate(closed=hold_segmenter)
        self._fail_when = fail_when
        self._fail_segmenter_when = fail_segmenter_when

    @property
    def started(self) -> threading.Event:
        return self.classifier_gate.reached

    def release(self) -> None:
        self.classifier_gate.release()

    def classify(self, batch: np.ndarray) -> np.ndarray:
        self.classifier_gate.pass_through()
        if self.clock is not None:
            self.clock.now += self.clock.classifier_seconds * len(batch)
        values = [float(value) for value in batch[:, 0]]
        self.classified.append(values)
        if self._fail_when is not None and self._fail_when(batch):
            raise RuntimeError("model exploded")
        return np.array(values, np.float32)

    def masks(self, batch: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        assert len(batch) == len(sizes)
        self.segmenter_gate.pass_through()
        if self.clock is not None:
            self.clock.now += self.clock.segmenter_seconds * len(batch)
        self.segmented.append([float(value) for value in batch[:, 0]])
        if self._fail_segmenter_when is not None and self._fail_segmenter_when(batch):
            raise RuntimeError("segmenter exploded")
        return [np.ones(size, np.uint8) for size in sizes]

    @property
    def batch_sizes(self) -> list[int]:
        """Sizes of the classifier's batches (every slice goes through it)."""
        return [len(batch) for batch in self.classified]


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


async def hold_worker(batcher: MicroBatcher, model: FakeModels) -> asyncio.Task:
    """Submit one slice (value -1) and wait until the fake model is running it, so later jobs queue up."""
    first = asyncio.create_task(batcher.submit(*slices(-1.0)))
    await until(model.started.is_set)
    return first


def probabilities(predictions: list[SlicePrediction]) -> list[float]:
    return [prediction.probability for prediction in predictions]


def test_submit_returns_predictions_in_order() -> None:
    model = FakeModels()

    async def scenario() -> None:
        batcher = MicroBatcher(model)
        batcher.start()
        inputs, sizes = slices(0.1, 0.7, 0.3, 0.9)
        predictions = await batcher.submit(inputs, sizes)
        await batcher.stop()

        assert probabilities(predictions) == pytest.approx([0.1, 0.7, 0.3, 0.9])
        assert [prediction.detected for prediction in predictions] == [False, True, False, True]
        assert [None if p.mask is None else p.mask.shape for p in predictions] == [None, sizes[1], None, sizes[3]]
        # Only the positives reach the segmenter.
        assert model.segmented == [pytest.approx([0.7, 0.9])]

    run(scenario)


def test_submit_joins_waiting_jobs_into_one_batch() -> None:
    model = FakeModels(hold_first=True)

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
    model = FakeModels(hold_first=True)

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

        assert model.classified[1] == pytest.approx([1.0, 1.1, 1.2, 2.0, 3.0, 3.1])
        for values, result in zip(jobs, results, strict=True):
            assert probabilities(result) == pytest.approx(list(values))
            assert [prediction.mask.shape for prediction in result] == slices(*values)[1]

    run(scenario)


def test_submit_respects_max_batch_size() -> None:
    model = FakeModels(hold_first=True)

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

        # One client's jobs go in order, a batch at a time; a job may span two batches.
        assert model.batch_sizes == [1, 4, 3]
        assert model.classified[1:] == [pytest.approx([1.0, 1.1, 2.0, 2.1]), pytest.approx([3.0, 3.1, 4.0])]
        assert [probabilities(result) for result in results] == [pytest.approx(list(values)) for values in jobs]

    run(scenario)


def test_clients_waiting_take_turns_in_each_batch() -> None:
    """Attack review 44 F8: whole jobs, first come, first served, let one key's full batches make another client's
    one-slice request wait 17 s. Each batch now takes one slice of each client's first job in turn."""
    model = FakeModels(hold_first=True)

    async def scenario() -> None:
        batcher = MicroBatcher(model, max_batch_size=4)
        batcher.start()
        first = await hold_worker(batcher, model)

        def submitted_by(client: str, *values: float) -> asyncio.Task:
            known_as = current_client.set(client)  # as the upload middleware sets it for a request's task
            try:
                return asyncio.create_task(batcher.submit(*slices(*values)))
            finally:
                current_client.reset(known_as)

        hog = [submitted_by("key:hog", 1.0, 1.1, 1.2, 1.3, 1.4), submitted_by("key:hog", 2.0, 2.1, 2.2)]
        await until(lambda: batcher.queued_slices == 9)
        other = submitted_by("key:other", 9.0)
        await until(lambda: batcher.queued_slices == 10)
        model.release()
        await first
        hog_results, other_result = await asyncio.gather(*hog), await other
        await batcher.stop()

        assert model.classified[1] == pytest.approx([1.0, 9.0, 1.1, 1.2])  # the other client's slice in the first
        assert model.classified[2:] == [pytest.approx([1.3, 1.4, 2.0, 2.1]), pytest.approx([2.2])]  # its own order
        assert probabilities(other_result) == pytest.approx([9.0])
        assert [probabilities(result) for result in hog_results] == [
            pytest.approx([1.0, 1.1, 1.2, 1.3, 1.4]),
            pytest.approx([2.0, 2.1, 2.2]),
        ]

    run(scenario)


def test_submit_runs_a_job_larger_than_max_batch_size_in_batches() -> None:
    model = FakeModels()

    async def scenario() -> None:
        batcher = MicroBatcher(model, max_batch_size=2)
        batcher.start()
        result = await batcher.submit(*slices(1.0, 2.0, 3.0, 4.0, 5.0))
        await batcher.stop()

        assert model.batch_sizes == [2, 2, 1]
        assert probabilities(result) == [1.0, 2.0, 3.0, 4.0, 5.0]

    run(scenario)


def test_a_large_job_cancelled_while_the_classifier_runs_stops_after_that_batch() -> None:
    """Browser review 40: a cancelled 232-slice analysis went on through the classifier in one run, and its slices kept
    the next request out of the queue ("232 of 256 slices waiting") until that run ended."""
    model = FakeModels(hold_first=True)

    async def scenario() -> None:
        batcher = MicroBatcher(model, max_batch_size=2, max_queued_slices=6)
        batcher.start()
        large = asyncio.create_task(batcher.submit(*slices(0.1, 0.2, 0.3, 0.4, 0.5, 0.6)))
        await until(model.started.is_set)
        large.cancel()  # the client left
        model.release()
        await until(lambda: batcher.queued_slices == 0)  # after the batch under way: the rest is dropped

        assert probabilities(await batcher.submit(*slices(0.7))) == pytest.approx([0.7])
        await batcher.stop()

        # The rest of the cancelled job never reached the model.
        assert model.classified == [pytest.approx([0.1, 0.2]), pytest.approx([0.7])]
        assert batcher.queued_slices == 0

    run(scenario)


def test_submit_waits_for_more_jobs_within_max_wait() -> None:
    model = FakeModels()

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
    model = FakeModels(hold_first=True)

    async def scenario() -> None:
        batcher = MicroBatcher(model, max_queued_slices=2)
        batcher.start()
        first = await hold_worker(batcher, model)
        second = asyncio.create_task(batcher.submit(*slices(2.0)))
        await until(lambda: batcher.queued_slices == 2)

        with pytest.raises(OverloadedError) as raised:
            await batcher.submit(*slices(3.0))

        assert raised.value.code == "overloaded"
        # No batch has finished yet, so nothing says how long the queue takes: the shortest wait.
        assert raised.value.message == (
            "the inference queue has room for 0 of the 1 slices of this request (2 of 2 waiting); retry in about 1 s"
        )
        assert raised.value.retry_after_seconds == 1
        model.release()
        assert probabilities(await second) == [2.0]
        await first
        # Once the queue drains, new work is accepted again.
        assert probabilities(await batcher.submit(*slices(4.0, 5.0))) == [4.0, 5.0]
        await batcher.stop()

    run(scenario)


@pytest.mark.parametrize(
    ("classifier_seconds", "segmenter_seconds", "expected"),
    [(0.5, 1.0, 4.0), (50.0, 100.0, MicroBatcher.MAX_RETRY_AFTER_SECONDS)],
    ids=["measured", "capped"],
)
def test_full_queue_says_how_long_it_takes_to_drain(
    classifier_seconds: float, segmenter_seconds: float, expected: float
) -> None:
    """attack23b: Retry-After was 1 s however long the queue; clients retrying at once only refill it."""
    clock = ModelClock(classifier_seconds, segmenter_seconds)
    model = FakeModels(clock=clock)

    async def scenario() -> None:
        batcher = MicroBatcher(model, max_queued_slices=4, clock=clock)
        batcher.start()
        # Two negatives and two positives: 4 classifier slices and 2 segmenter slices.
        await batcher.submit(*slices(0.1, 0.9, 0.2, 0.8))
        model.classifier_gate = Gate(closed=True)
        first = await hold_worker(batcher, model)
        second = asyncio.create_task(batcher.submit(*slices(0.3, 0.4, 0.45)))
        await until(lambda: batcher.queued_slices == 4)

        with pytest.raises(OverloadedError) as raised:
            await batcher.submit(*slices(0.5))

        # 4 queued x the first batch's model time (2 s classifier, 2 s segmenter) over its 4 slices; the held batch
        # counts once it is done.
        assert raised.value.retry_after_seconds == pytest.approx(expected)
        assert f"retry in about {math.ceil(expected)} s" in raised.value.message
        model.release()
        await asyncio.gather(first, second)
        await batcher.stop()

    run(scenario)


def test_overloaded_error_maps_to_503_with_retry_after() -> None:
    response = service_error_response(OverloadedError("the inference queue is full", retry_after_seconds=1))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.body == b'{"error":{"code":"overloaded","message":"the inference queue is full"}}'


def test_failed_batch_fails_only_its_callers() -> None:
    model = FakeModels(hold_first=True, fail_when=lambda inputs: bool(np.any(inputs == 13.0)))

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
    model = FakeModels(hold_first=True)

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

        assert model.classified == [[-1.0], [3.0]]  # the timed-out slice never reached the model
        assert batcher.queued_slices == 0

    run(scenario)


def test_stop_finishes_queued_jobs() -> None:
    model = FakeModels(hold_first=True)
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
    model = FakeModels()

    async def scenario() -> None:
        batcher = MicroBatcher(model)
        batcher.start()
        assert await batcher.submit(np.zeros((0, 1), np.float32), []) == []
        await batcher.stop()

    run(scenario)
    assert model.classified == []


def test_submit_rejects_mismatched_sizes() -> None:
    async def scenario() -> None:
        batcher = MicroBatcher(FakeModels())
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
        MicroBatcher(FakeModels(), **arguments)


def test_submit_refuses_a_job_larger_than_the_queue() -> None:
    async def scenario() -> None:
        batcher = MicroBatcher(FakeModels(), max_queued_slices=2)
        batcher.start()
        with pytest.raises(TooManySlicesError, match="at most 2 slices .*got 3"):
            await batcher.submit(*slices(1.0, 2.0, 3.0))
        assert batcher.queued_slices == 0
        await batcher.stop()

    run(scenario)


def test_negative_is_answered_before_its_batch_reaches_the_segmenter_end() -> None:
    model = FakeModels(hold_segmenter=True)

    async def scenario() -> None:
        batcher = MicroBatcher(model)
        batcher.start()
        positive = asyncio.create_task(batcher.submit(*slices(0.9)))
        negative = asyncio.create_task(batcher.submit(*slices(0.1)))
        await until(model.segmenter_gate.reached.is_set)

        # The segmenter is still held, yet the negative slice has its answer.
        (answer,) = await asyncio.wait_for(negative, WAIT_SECONDS)
        assert (answer.probability, answer.detected, answer.mask) == (pytest.approx(0.1), False, None)
        assert not positive.done()
        assert batcher.queued_slices == 1
        model.segmenter_gate.release()
        (answer,) = await positive
        await batcher.stop()

        assert answer.detected and answer.mask.shape == slices(0.9)[1][0]
        assert model.classified == [pytest.approx([0.9, 0.1])]
        assert model.segmented == [pytest.approx([0.9])]

    run(scenario)


def test_segmenter_waits_for_one_more_classifier_batch_when_slices_are_waiting() -> None:
    model = FakeModels(hold_first=True)

    async def scenario() -> None:
        batcher = MicroBatcher(model, max_batch_size=8)
        batcher.start()
        first = asyncio.create_task(batcher.submit(*slices(0.9)))
        await until(model.started.is_set)
        later = [asyncio.create_task(batcher.submit(*slices(value))) for value in (0.8, 0.1)]
        await until(lambda: batcher.queued_slices == 3)
        model.release()
        results = await asyncio.gather(first, *later)
        await batcher.stop()

        # One positive is less than half a batch and slices were waiting: they went through the classifier first,
        # so the segmenter ran once, on both positives.
        assert model.classified == [pytest.approx([0.9]), pytest.approx([0.8, 0.1])]
        assert model.segmented == [pytest.approx([0.9, 0.8])]
        assert [[p.detected for p in result] for result in results] == [[True], [True], [False]]

    run(scenario)


def test_segmenter_waits_for_at_most_one_more_classifier_batch() -> None:
    model = FakeModels(hold_first=True)

    async def scenario() -> None:
        batcher = MicroBatcher(model, max_batch_size=4)
        batcher.start()
        first = asyncio.create_task(batcher.submit(*slices(0.9)))
        await until(model.started.is_set)
        negatives = asyncio.create_task(batcher.submit(*slices(0.1, 0.2, 0.3, 0.4)))
        last = asyncio.create_task(batcher.submit(*slices(0.7)))
        await until(lambda: batcher.queued_slices == 6)
        model.release()
        await asyncio.gather(first, negatives, last)
        await batcher.stop()

        # After the full batch of negatives, the first positive goes to the segmenter although a slice still waits.
        assert model.classified == [pytest.approx([0.9]), pytest.approx([0.1, 0.2, 0.3, 0.4]), pytest.approx([0.7])]
        assert model.segmented == [pytest.approx([0.9]), pytest.approx([0.7])]

    run(scenario)


def test_failed_segmenter_batch_fails_only_the_jobs_in_it() -> None:
    model = FakeModels(fail_segmenter_when=lambda inputs: bool(np.any(inputs == 0.75)))

    async def scenario() -> None:
        batcher = MicroBatcher(model)
        batcher.start()
        with pytest.raises(RuntimeError, match="segmenter exploded"):
            # The job's negative slice is answered, but the job as a whole fails with its positive.
            await batcher.submit(*slices(0.1, 0.75))
        assert probabilities(await batcher.submit(*slices(0.8, 0.2))) == pytest.approx([0.8, 0.2])
        assert batcher.queued_slices == 0
        await batcher.stop()

    run(scenario)


def test_positives_of_a_timed_out_job_are_dropped_before_the_segmenter() -> None:
    model = FakeModels(hold_segmenter=True)

    async def scenario() -> None:
        # Batches of one: the job's two positives need two segmenter runs; it times out during the first.
        batcher = MicroBatcher(model, max_batch_size=1)
        batcher.start()
        with pytest.raises(InferenceTimeoutError):
            # 2 s: the held segmenter outlasts any timeout; a short one could fire before the job got to it
            await batcher.submit(*slices(0.9, 0.95), timeout_seconds=2.0)
        assert model.segmenter_gate.reached.is_set()
        model.segmenter_gate.release()
        assert probabilities(await batcher.submit(*slices(0.7))) == pytest.approx([0.7])
        await batcher.stop()

        # Its second slice waited for the next batch (slices are taken a batch at a time, in turns between clients):
        # nobody waited for it any more, and it reached neither model.
        assert model.classified == [pytest.approx([0.9]), pytest.approx([0.7])]
        assert model.segmented == [pytest.approx([0.9]), pytest.approx([0.7])]
        assert batcher.queued_slices == 0

    run(scenario)


def test_classifier_giving_too_few_probabilities_fails_its_jobs_not_the_worker() -> None:
    class ShortClassifier(FakeModels):
        def classify(self, batch: np.ndarray) -> np.ndarray:
            probabilities = super().classify(batch)
            return probabilities[:-1] if len(batch) > 1 else probabilities

    model = ShortClassifier()

    async def scenario() -> None:
        batcher = MicroBatcher(model)
        batcher.start()
        with pytest.raises(ValueError, match="the classifier gave 1 probabilities for 2 slices"):
            await batcher.submit(*slices(0.1, 0.9))
        assert probabilities(await batcher.submit(*slices(0.2))) == pytest.approx([0.2])
        assert batcher.queued_slices == 0
        await batcher.stop()

    run(scenario)
