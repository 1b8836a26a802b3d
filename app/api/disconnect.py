"""Requests whose client has gone: their prediction call is cancelled rather than finished for nobody.

A request waiting for the decoding memory budget or for the models gives up its place; CPU work already in a thread
ends first (`app.prediction.PredictionService._cpu`). The request is logged and audited with status 499.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")
CLIENT_GONE = 499
"""The status a request whose client disconnected before its answer is logged with (nginx's "client closed
request"); nobody receives it."""


class ClientGone(Exception):
    """The client disconnected before the answer was ready; the work for it was cancelled (`app.api.handlers`
    answers it with `CLIENT_GONE`)."""


async def unless_client_gone(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or `ClientGone` once the client disconnects first (the work is cancelled: a request waiting
    for memory or for the models gives up its place; CPU work already in a thread ends first, see
    `PredictionService._cpu`). Called once the request's body has been read."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientGone


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.1)  # a server that repeats empty body messages must not make this spin
