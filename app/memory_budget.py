"""The memory budget of decoding: what a file will cost, computed from its header, and a semaphore counting bytes.

The decoders (`app.imaging`, `app.dicom.dicom_header`) read a file's header, never its pixels, to say how many bytes its
decoding takes; `app.uploads` refuses a file or a request over `DECODE_MEMORY_BYTES` (413, before anything is
decoded) and `MemoryBudget` lets requests decode only while the costs of all of them together fit in the same budget,
so that several bombs at once cannot add up. `HeaderMemory` counts what the DICOM headers parsed before that hold.
No HTTP here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import numpy as np

from app.core.preprocessing import INPUT_SHAPE
from app.errors import OverloadedError, OverMemoryBudgetError
from app.request_client import current_client
from app.settings import MIB

MODEL_INPUT_BYTES = int(np.prod(INPUT_SHAPE)) * np.dtype(np.float32).itemsize
"""Every slice becomes one float32 256x256x3 model input (768 KiB), however small the slice."""

MASK_BYTES_PER_PIXEL = 2
"""A slice's mask, made at the slice's own size and held until the answer is written: the uint8 mask and its cleaned
copy (the series clean-up, or a lone slice's small pieces dropped). Uncounted, a batch of 4096x4096 slices took
20 MiB a slice outside the budget."""

MASK_WORKING_BYTES_PER_PIXEL = 4 + 1 + 1
"""Making one mask (`app.core.gate.probability_to_mask`): the probability map resized to the slice (float32), its
comparison with the threshold and the uint8 mask; one slice at a time."""
BUDGET_SETTING = "DECODE_MEMORY_BYTES"
RETRY_AFTER_SECONDS = (1.0, 60.0)
"""Bounds of the Retry-After a request refused after waiting for the budget is told (as the inference queue's)."""


def mask_bytes(slice_pixels: Sequence[int]) -> int:
    """What the masks of slices of these sizes (pixels each) add to a request's cost: every mask kept, and the
    making of the largest on top."""
    return MASK_BYTES_PER_PIXEL * sum(slice_pixels) + MASK_WORKING_BYTES_PER_PIXEL * max(slice_pixels, default=0)


def describe_bytes(size: int) -> str:
    """`size` for a message: exact bytes, and MiB to read at a glance."""
    return f"{size} bytes ({size / MIB:.1f} MiB)"


def check_cost(subject: str, cost: int, details: str, max_bytes: int) -> None:
    """Raise `OverMemoryBudgetError` if decoding `subject` takes more than `max_bytes`.

    `details` says where the cost comes from (the header's numbers), so that the client can see why.
    """
    if cost > max_bytes:
        raise OverMemoryBudgetError(
            f"{subject} would take {describe_bytes(cost)} to decode ({details}); the memory budget "
            f"({BUDGET_SETTING}) is {describe_bytes(max_bytes)}"
        )


class MemoryBudget:
    """A semaphore counting bytes: requests reserve their decoding cost and wait until it fits beside the
    reservations of the others; among those waiting, the request of the client that holds least goes first (first come,
    first served among equals), so that one client's backlog does not hold up the others (a
    one-slice request would wait behind another key's full batches). The client is `app.request_client.current_client`.

    A count of requests (or the thread pool's 40 workers) would let 40 bombs just under the per-request limit decode
    at once; counting bytes keeps the sum of all decoding within `capacity`.

    Parameters
    ----------
    capacity
        Bytes all reservations together may hold.
    wait_seconds
        Longest a reservation waits for room; then `OverloadedError` (503, retry later). None waits as long as it
        takes.
    """

    def __init__(self, capacity: int, wait_seconds: float | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 byte; got {capacity}")
        self.capacity = capacity
        self.wait_seconds = wait_seconds
        self._used = 0
        self._released = 0  # bytes released since the start: the rate the budget frees room at
        self._waiting: deque[_Waiter] = deque()
        self._held_by_client: Counter[str] = Counter()

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        return self._used

    @asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        """Hold `size` bytes of the budget for the duration of the block.

        Raises
        ------
        OverMemoryBudgetError
            If `size` alone is over the capacity (it could never fit).
        OverloadedError
            If no room came within `wait_seconds`.
        """
        check_cost("this request", size, "all its files together", self.capacity)
        client = current_client.get()
        await self._acquire(max(size, 0), client)
        try:
            yield
        finally:
            self._release(max(size, 0), client)

    async def _acquire(self, size: int, client: str) -> None:
        if not self._waiting and self._used + size <= self.capacity:
            self._take(size, client)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(size, client, granted)
        self._waiting.append(waiter)
        self._grant()  # a client that holds less than those waiting goes first, at once if it fits
        started, released_before = time.monotonic(), self._released
        try:
            await asyncio.wait_for(asyncio.shield(granted), self.wait_seconds)
        except BaseException as error:
            if granted.done() and not granted.cancelled():
                self._release(size, client)  # granted just as the wait ended: hand the bytes on
            else:
                granted.cancel()
                self._waiting.remove(waiter)
                self._grant()  # the head may have left: those behind it may fit now
            if isinstance(error, TimeoutError):
                rate = (self._released - released_before) / max(time.monotonic() - started, 1e-3)
                # Other requests' use is not told: it is theirs.
                raise OverloadedError(
                    f"decoding's memory budget ({BUDGET_SETTING}: {describe_bytes(self.capacity)}) had no room for "
                    f"the {describe_bytes(size)} this request needs within {self.wait_seconds:g} s; retry later",
                    retry_after_seconds=self._retry_after(size, rate),
                ) from None
            raise

    def _retry_after(self, size: int, rate: float) -> float:
        """Seconds until `size` bytes and those waiting would fit, at `rate` bytes freed a second (what the wait
        just seen freed), within `RETRY_AFTER_SECONDS`: a fixed 1 s would send every client refused after a minute's
        wait back at once, behind the same backlog."""
        low, high = RETRY_AFTER_SECONDS
        needed = size + sum(waiter.size for waiter in self._waiting) - (self.capacity - self._used)
        if rate <= 0:
            return high
        return min(high, max(low, needed / rate))

    def _take(self, size: int, client: str) -> None:
        self._used += size
        self._held_by_client[client] += size

    def _release(self, size: int, client: str) -> None:
        self._used -= size
        self._held_by_client[client] -= size
        if self._held_by_client[client] <= 0:
            del self._held_by_client[client]
        self._released += size
        self._grant()

    def _grant(self) -> None:
        """Grant the waiters in turn while the next one fits: the next is that of the client holding least (the
        earliest among equals); one that does not fit keeps the others waiting, so a large request is not passed
        over for good by smaller ones of its own client or of busier ones."""
        while self._waiting:
            head = min(self._waiting, key=lambda waiter: self._held_by_client[waiter.client])  # min keeps the first
            if head.granted.done():  # given up (cancelled) and not yet removed
                self._waiting.remove(head)
                continue
            if self._used + head.size > self.capacity:
                return
            self._waiting.remove(head)
            self._take(head.size, head.client)
            head.granted.set_result(None)


@dataclass(frozen=True)
class _Waiter:
    """A reservation waiting for room in a `MemoryBudget`."""

    size: int
    client: str
    granted: asyncio.Future[None]


HEADER_RETRY_AFTER_SECONDS = 5.0
"""Retry-After of a request refused because the headers of the requests in flight hold their share (as the uploads
held, `MAX_UPLOADS_HELD_BYTES`)."""


class HeaderMemory:
    """The bytes parsed DICOM headers hold past an ordinary header's (`DicomHeader.header_bytes`), counted across the
    requests in flight; past `capacity`, a request is refused at once (503, retry later) instead of waiting.

    A request's headers are parsed before it knows its decoding cost, so they cannot wait in `MemoryBudget` first:
    otherwise each of several concurrent requests could parse up to the whole budget of headers before reserving
    any of it. Headers are memory already taken when counted, so a request never waits here while
    holding them (a waiting holder could block the others for good): it is refused. Thread-safe: the headers are
    parsed in worker threads.
    """

    def __init__(self, capacity: int | None) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be at least 1 byte; got {capacity}")
        self.capacity = capacity  # None: counted, never refused (no budget)
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Bytes the headers of the requests in flight hold now."""
        return self._used

    @contextmanager
    def claim(self) -> Iterator[HeaderClaim]:
        """One request's share, given back when the block ends (when its answer no longer needs the headers)."""
        claim = HeaderClaim(self)
        try:
            yield claim
        finally:
            with self._lock:
                self._used -= claim.size

    def take(self, size: int) -> None:
        """Count `size` more bytes, or raise `OverloadedError` past the capacity (`HeaderClaim.add` calls it)."""
        with self._lock:
            if self.capacity is not None and self._used + size > self.capacity:
                raise OverloadedError(  # other requests' use is not told: it is theirs
                    f"the DICOM headers being read have no room for this request's {describe_bytes(size)} more "
                    f"within {describe_bytes(self.capacity)} ({BUDGET_SETTING}) now; retry later",
                    retry_after_seconds=HEADER_RETRY_AFTER_SECONDS,
                )
            self._used += size


class HeaderClaim:
    """What one request's parsed headers hold of a `HeaderMemory` (`size`), grown header by header."""

    def __init__(self, memory: HeaderMemory) -> None:
        self._memory = memory
        self.size = 0

    def add(self, size: int) -> None:
        """Count `size` more bytes of headers parsed, or raise `OverloadedError` when the requests in flight already
        hold too many."""
        if size > 0:
            self._memory.take(size)
            self.size += size
