"""Dynamic micro-batching: requests that arrive together go through the models as one batch.

One worker task takes jobs (each one or more preprocessed slices) from a queue, joins those that are waiting into a
batch of at most `max_batch_size` slices, runs the batch on a single inference thread, and hands each job its own
results. The event loop never runs a model. With `max_wait_seconds=0` the batch is whatever queued up while the
previous batch ran: a lone request starts at once, and under load the batches grow by themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from app.errors import InferenceTimeoutError, OverloadedError, TooManySlicesError
from app.inference import SlicePrediction

logger = logging.getLogger(__name__)

BatchRunner = Callable[[np.ndarray, Sequence[tuple[int, int]]], list[SlicePrediction]]
"""`Predictor.predict_preprocessed`: (batch (N,256,256,3), original sizes) -> one prediction per slice."""


@dataclass
class _Job:
    inputs: np.ndarray
    sizes: list[tuple[int, int]]
    future: asyncio.Future[list[SlicePrediction]] = field(repr=False)

    def __len__(self) -> int:
        return len(self.sizes)


class MicroBatcher:
    """Queue of inference jobs served in batches by one worker.

    Parameters
    ----------
    run_batch
        Runs the models on a batch; called on the inference thread, one batch at a time.
    max_batch_size
        Most slices joined into one batch (a single larger job still runs whole).
    max_wait_seconds
        How long to hold a batch open for more jobs once the first has arrived.
    max_queued_slices
        Most slices waiting; `submit` raises `OverloadedError` beyond it instead of letting latency grow unbounded.
    on_queue_change
        Called with the number of queued slices whenever it changes (for the queue-depth gauge).
    """

    def __init__(
        self,
        run_batch: BatchRunner,
        max_batch_size: int = 16,
        max_wait_seconds: float = 0.0,
        max_queued_slices: int = 256,
        on_queue_change: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queued_slices < 1 or max_wait_seconds < 0:
            raise ValueError(
                "max_batch_size and max_queued_slices must be >= 1 and max_wait_seconds >= 0; got "
                f"{max_batch_size}, {max_queued_slices}, {max_wait_seconds}"
            )
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_seconds = max_wait_seconds
        self.max_queued_slices = max_queued_slices
        self._on_queue_change = on_queue_change
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._queued_slices = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker: asyncio.Task | None = None

    @property
    def queued_slices(self) -> int:
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
            If the predictions take longer than `timeout_seconds`; the job is dropped if it has not started.
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
            raise OverloadedError(
                f"the inference queue is full ({self._queued_slices} of {self.max_queued_slices} slices waiting); "
                "retry shortly",
                retry_after_seconds=1.0,
            )
        job = _Job(inputs, list(sizes), asyncio.get_running_loop().create_future())
        self._change_queued(len(job))
        self._queue.put_nowait(job)
        try:
            return await asyncio.wait_for(job.future, timeout_seconds)
        except TimeoutError:
            raise InferenceTimeoutError(
                f"no answer from the models within {timeout_seconds:g} s; the service is busy, retry later",
                retry_after_seconds=1.0,
            ) from None

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            try:
                inputs = jobs[0].inputs if len(jobs) == 1 else np.concatenate([job.inputs for job in jobs])
                sizes = [size for job in jobs for size in job.sizes]
                predictions = await loop.run_in_executor(self._executor, self._run_batch, inputs, sizes)
            except Exception as error:  # a model failure fails these jobs, not the worker
                logger.exception("inference batch failed", extra={"fields": {"slices": sum(map(len, jobs))}})
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
            else:
                start = 0
                for job in jobs:
                    if not job.future.done():  # the client may have gone away
                        job.future.set_result(predictions[start : start + len(job)])
                    start += len(job)
            finally:
                self._change_queued(-sum(map(len, jobs)))

    async def _collect(self) -> list[_Job]:
        """Wait for one job, then add the ones already queued (or arriving within the wait) up to the batch size."""
        jobs = [await self._next_live_job()]
        count = len(jobs[0])
        deadline = asyncio.get_running_loop().time() + self.max_wait_seconds
        while count < self.max_batch_size:
            if not self._queue.empty():
                job = self._queue.get_nowait()
            else:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if job.future.done():  # timed out or cancelled while queued: nobody waits for it
                self._change_queued(-len(job))
                continue
            if count + len(job) > self.max_batch_size:
                # Too big to join: it leads the next batch instead.
                self._requeue_first(job)
                break
            jobs.append(job)
            count += len(job)
        return jobs

    async def _next_live_job(self) -> _Job:
        while True:
            job = await self._queue.get()
            if not job.future.done():
                return job
            self._change_queued(-len(job))

    def _requeue_first(self, job: _Job) -> None:
        waiting = [job]
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for item in waiting:
            self._queue.put_nowait(item)

    def _change_queued(self, delta: int) -> None:
        self._queued_slices += delta
        if self._on_queue_change is not None:
            self._on_queue_change(self._queued_slices)
