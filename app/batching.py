"""Dynamic micro-batching: requests that arrive together go through the models as one batch.

One worker task takes jobs (each one or more preprocessed slices) from a queue, joins slices of those that are
waiting into a batch of at most `max_batch_size` slices (the clients waiting take turns, a slice each: `_collect`),
and runs it on a single inference thread in two stages, as the models are
gated: the classifier on every slice, then the segmenter on the positives only. A slice the classifier calls
negative is answered as soon as the classifier is done; it does not wait for its batch's segmenter run. The event
loop never runs a model. With `max_wait_seconds=0` a batch is whatever queued up while the previous one ran: a lone
request starts at once, and under load the batches grow by themselves.

Under load the segmenter waits for one more classifier batch when it has fewer than half a batch of positives and
new slices are already waiting: the clients whose slices were negative come back with new ones while the segmenter
runs, so without that wait the load splits into two groups that take turns, each running the segmenter on a few
positives (it costs the most per slice at small batches). A lone request never waits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from app.core.gate import classifier_positive
from app.errors import InferenceTimeoutError, OverloadedError, TooManySlicesError
from app.inference import SlicePrediction
from app.request_client import current_client
from app.settings import Settings

logger = logging.getLogger(__name__)


class GatedModels(Protocol):
    """What the batcher runs: `app.inference.Predictor`. Called on the inference thread, one call at a time."""

    @property
    def classifier_threshold(self) -> float: ...

    def classify(self, batch: np.ndarray) -> np.ndarray:
        """Tumor probability per slice, shape (N,), of a preprocessed batch (N, 256, 256, 3)."""
        ...

    def masks(self, batch: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """One uint8 mask per slice, at the slice's original (H, W)."""
        ...


@dataclass(eq=False)  # compared and hashed by identity: each is one caller
class _Job:
    """One `submit` call: its slices, and its predictions as the two stages fill them in."""

    inputs: np.ndarray
    sizes: list[tuple[int, int]]
    future: asyncio.Future[list[SlicePrediction]] = field(repr=False)
    client: str = ""  # `app.request_client.current_client` of its request
    taken: int = 0  # slices handed to the classifier so far (the next one's index)
    predictions: list[SlicePrediction | None] = field(init=False, repr=False)
    unanswered: int = field(init=False)

    def __post_init__(self) -> None:
        self.predictions = [None] * len(self.sizes)
        self.unanswered = len(self.sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def abandoned(self) -> bool:
        """Answered already (failed), timed out or cancelled: nobody waits for the rest of its slices."""
        return self.future.done()

    def answer(self, index: int, prediction: SlicePrediction) -> None:
        self.predictions[index] = prediction
        self.unanswered -= 1
        if not self.unanswered and not self.abandoned:
            self.future.set_result(list(self.predictions))  # type: ignore[arg-type]

    def fail(self, error: Exception) -> None:
        if not self.abandoned:
            self.future.set_exception(error)


@dataclass(frozen=True)
class _Positive:
    """A slice the classifier called positive, waiting for the segmenter."""

    job: _Job
    index: int
    probability: float


class MicroBatcher:
    """Queue of inference jobs served in batches by one worker.

    Parameters
    ----------
    models
        The classifier and segmenter (`Predictor`); called on the inference thread, one batch at a time.
    max_batch_size
        Most slices run through each model at once: jobs are joined into batches of at most this many, and a larger
        job runs in several.
    max_wait_seconds
        How long to hold a batch open for more jobs once the first has arrived.
    max_queued_slices
        Most slices waiting or in the models; `submit` raises `OverloadedError` beyond it instead of letting latency
        grow unbounded.
    on_queue_change
        Called with the number of queued slices whenever it changes (for the queue-depth gauge).
    clock
        Seconds, for timing the models (the refusal of a full queue says how long the queue takes to drain).
    """

    # Each batch's model time counts this much less at the next batch: the estimate follows a change of load.
    TIMING_DECAY = 0.8
    MAX_RETRY_AFTER_SECONDS = 60.0

    def __init__(
        self,
        models: GatedModels,
        max_batch_size: int = Settings.model_fields["inference_batch_size"].default,
        max_wait_seconds: float = 0.0,
        max_queued_slices: int = Settings.model_fields["inference_queue_slices"].default,
        on_queue_change: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1 or max_queued_slices < 1 or max_wait_seconds < 0:
            raise ValueError(
                "max_batch_size and max_queued_slices must be >= 1 and max_wait_seconds >= 0; got "
                f"{max_batch_size}, {max_queued_slices}, {max_wait_seconds}"
            )
        self._models = models
        self.max_batch_size = max_batch_size
        self.max_wait_seconds = max_wait_seconds
        self.max_queued_slices = max_queued_slices
        self._on_queue_change = on_queue_change
        self._waiting: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._positives: deque[_Positive] = deque()
        self._queued_slices = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker: asyncio.Task | None = None
        self._clock = clock
        self._model_seconds = 0.0  # recent time in either model (decayed), over ...
        self._slices_classified = 0.0  # ... the recent slices through the classifier (decayed alike)

    def seconds_to_drain(self) -> float:
        """About how long the slices queued now take to answer: their number times the recent model time per slice
        (the segmenter's share of positives included); 0 before any batch has run."""
        if not self._slices_classified:
            return 0.0
        return self._queued_slices * self._model_seconds / self._slices_classified

    @property
    def queued_slices(self) -> int:
        """Slices submitted and not yet answered (waiting, or in either model): what the tests watch the queue by."""
        return self._queued_slices

    def start(self) -> None:
        """Start the worker on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._serve(), name="micro-batcher")

    async def stop(self) -> None:
        """Finish the jobs already queued, then stop the worker and the inference thread."""
        if self._worker is not None:
            while self._queued_slices and not self._worker.done():
                await asyncio.sleep(0.01)
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        self._executor.shutdown(wait=True)

    async def submit(
        self, inputs: np.ndarray, sizes: Sequence[tuple[int, int]], timeout_seconds: float | None = None
    ) -> list[SlicePrediction]:
        """Queue preprocessed slices and wait for their predictions (in the same order).

        Raises
        ------
        TooManySlicesError
            If the job alone holds more than `max_queued_slices` slices.
        OverloadedError
            If the queue has no room for the job now.
        InferenceTimeoutError
            If the predictions take longer than `timeout_seconds`; the job's slices that have not reached a model
            yet never do.
        """
        if len(inputs) != len(sizes):
            raise ValueError(f"inputs hold {len(inputs)} slices but {len(sizes)} sizes were given")
        if not len(sizes):
            return []
        if len(sizes) > self.max_queued_slices:
            raise TooManySlicesError(
                f"a request may hold at most {self.max_queued_slices} slices (INFERENCE_QUEUE_SLICES); got {len(sizes)}"
            )
        if self._queued_slices + len(sizes) > self.max_queued_slices:
            wait = self._retry_after()
            # "full" only when it is: 7 of 16 waiting has room, not for these 10
            room = self.max_queued_slices - self._queued_slices
            raise OverloadedError(
                f"the inference queue has room for {room} of the {len(sizes)} slices of this request "
                f"({self._queued_slices} of {self.max_queued_slices} waiting); retry in about {math.ceil(wait)} s",
                retry_after_seconds=wait,
            )
        job = _Job(inputs, list(sizes), asyncio.get_running_loop().create_future(), client=current_client.get())
        self._change_queued(len(job))
        self._waiting.append(job)
        self._arrived.set()
        try:
            return await asyncio.wait_for(job.future, timeout_seconds)
        except TimeoutError:
            raise InferenceTimeoutError(
                f"no answer from the models within {timeout_seconds:g} s; the service is busy, retry later",
                retry_after_seconds=self._retry_after(),
            ) from None

    def _retry_after(self) -> float:
        """Seconds a refused client should wait: until the queue has drained, within 1 s to a minute."""
        return min(max(1.0, self.seconds_to_drain()), self.MAX_RETRY_AFTER_SECONDS)

    async def _serve(self) -> None:
        while True:
            await self._classify_slots(await self._collect())
            if self._positives and len(self._positives) < self.max_batch_size // 2 and self._jobs_waiting():
                await self._classify_slots(await self._collect())  # once: a positive never waits for more than this
            while self._positives:
                await self._segment(self._next_positives())

    async def _collect(self) -> list[tuple[_Job, int]]:
        """Wait for a job, then take slices of the jobs waiting (or arriving within the wait) up to the batch size:
        one slice of each client's first job in turn, so that every client waiting has slices in the batch.

        Why in turn: whole jobs first come, first served would let one key's 256-slice batches make another
        client's one-slice request wait 17 s; in turn it waits one batch. A job larger than a batch goes through in
        several, so that one cancelled or timed out stops after the run under way.
        """
        slots: list[tuple[_Job, int]] = []
        deadline: float | None = None
        while True:
            self._drop_abandoned()
            while self._waiting and len(slots) < self.max_batch_size:
                for job in self._first_job_of_each_client():
                    if len(slots) == self.max_batch_size:
                        break
                    slots.append((job, job.taken))
                    job.taken += 1
                    if job.taken == len(job):
                        self._waiting.remove(job)
            if len(slots) >= self.max_batch_size:
                return slots
            timeout = None
            if slots:
                now = asyncio.get_running_loop().time()
                deadline = now + self.max_wait_seconds if deadline is None else deadline
                timeout = deadline - now
                if timeout <= 0:
                    return slots
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return slots

    def _drop_abandoned(self) -> None:
        """Take the jobs nobody waits for any more (timed out or cancelled while queued) out of the queue."""
        for job in [job for job in self._waiting if job.abandoned]:
            self._waiting.remove(job)
            self._change_queued(job.taken - len(job))

    def _first_job_of_each_client(self) -> list[_Job]:
        """The first waiting job of each client, in the order their first jobs came."""
        firsts: dict[str, _Job] = {}
        for job in self._waiting:
            firsts.setdefault(job.client, job)
        return list(firsts.values())

    def _jobs_waiting(self) -> bool:
        return any(not job.abandoned for job in self._waiting)

    async def _classify_slots(self, slots: list[tuple[_Job, int]]) -> None:
        """Run the classifier on one batch of (job, slice index); answer the negatives, line the positives up for
        the segmenter. Slices of jobs nobody waits for any more are dropped."""
        live = [(job, index) for job, index in slots if not job.abandoned]
        self._change_queued(len(live) - len(slots))
        if not live:
            return
        inputs = np.stack([job.inputs[index] for job, index in live])
        try:
            probabilities = await self._timed(self._models.classify, inputs, slices=len(inputs))
            if len(probabilities) != len(inputs):
                raise ValueError(f"the classifier gave {len(probabilities)} probabilities for {len(inputs)} slices")
        except Exception as error:  # a model failure fails these jobs, not the worker
            self._fail(list(dict.fromkeys(job for job, _ in live)), error, len(inputs))
            return
        positive = classifier_positive(probabilities, self._models.classifier_threshold)
        answered = 0
        for (job, index), probability, is_positive in zip(live, probabilities.tolist(), positive, strict=True):
            if is_positive:
                self._positives.append(_Positive(job, index, probability))
            else:
                job.answer(index, SlicePrediction(probability=probability, detected=False, mask=None))
                answered += 1
        self._change_queued(-answered)

    def _next_positives(self) -> list[_Positive]:
        """Up to a batch of positives whose jobs still wait for them (the others are dropped)."""
        batch: list[_Positive] = []
        while self._positives and len(batch) < self.max_batch_size:
            positive = self._positives.popleft()
            if positive.job.abandoned:
                self._change_queued(-1)
            else:
                batch.append(positive)
        return batch

    async def _segment(self, positives: list[_Positive]) -> None:
        if not positives:
            return
        inputs = np.stack([positive.job.inputs[positive.index] for positive in positives])
        sizes = [positive.job.sizes[positive.index] for positive in positives]
        try:
            masks = await self._timed(self._models.masks, inputs, sizes)
            if len(masks) != len(inputs):
                raise ValueError(f"the segmenter gave {len(masks)} masks for {len(inputs)} slices")
        except Exception as error:
            self._fail([positive.job for positive in positives], error, len(positives))
            return
        for positive, mask in zip(positives, masks, strict=True):
            prediction = SlicePrediction(probability=positive.probability, detected=True, mask=mask)
            positive.job.answer(positive.index, prediction)
        self._change_queued(-len(positives))

    async def _timed(self, function: Callable[..., Any], *arguments: object, slices: int = 0) -> Any:
        """Run a model on the inference thread, adding its time to the recent model time; a classifier batch
        (`slices` > 0) first decays what came before. Counted once it is done: a batch still running would count its
        slices without its time (the queue is full mostly then), and the estimate would fall short."""
        started = self._clock()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *arguments)
        finally:
            if slices:
                self._model_seconds *= self.TIMING_DECAY
                self._slices_classified = self._slices_classified * self.TIMING_DECAY + slices
            self._model_seconds += self._clock() - started

    def _fail(self, jobs: list[_Job], error: Exception, slices: int) -> None:
        logger.error("inference batch failed", exc_info=error, extra={"fields": {"slices": slices}})
        for job in jobs:
            job.fail(error)
        self._change_queued(-slices)

    def _change_queued(self, delta: int) -> None:
        if delta:
            self._queued_slices += delta
            if self._on_queue_change is not None:
                self._on_queue_change(self._queued_slices)
