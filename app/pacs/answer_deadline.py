"""A deadline for an HTTP answer's headers, for requests sessions that talk to a PACS (`AnswerDeadlineAdapter`).

urllib3's timeouts bound each wait for bytes, not the whole answer: a server that sends its status line and headers
a byte at a time, each within the read timeout, holds the caller for as long as it likes. The adapter gives every
request it sends `seconds` to get its headers in; past that the connection is shut, and the call fails as a read
timeout (`requests.ReadTimeout`), which callers already retry. The body is the caller's to bound
(`app.pacs.orthanc_client` reads it within what is left of the same time).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from contextvars import ContextVar
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

# When the request being sent on this thread must have its answer's headers (set by the adapter around each send).
_headers_deadline: ContextVar[float | None] = ContextVar("headers_deadline", default=None)


class _HeadersDeadline:
    """Mixed into urllib3's connections: shut the socket if the answer's headers are not in by the deadline."""

    sock: socket.socket | None

    def getresponse(self) -> Any:
        deadline = _headers_deadline.get()
        if deadline is None:
            return super().getresponse()  # type: ignore[misc]
        cut = threading.Event()
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._cut, args=(cut,))
        timer.daemon = True
        timer.start()
        try:
            return super().getresponse()  # type: ignore[misc]
        except Exception as error:
            if cut.is_set():  # urllib3 turns a TimeoutError into its read timeout
                raise TimeoutError("answer headers not complete before the call's deadline") from error
            raise
        finally:
            timer.cancel()

    def _cut(self, cut: threading.Event) -> None:
        cut.set()
        if self.sock is not None:
            with contextlib.suppress(OSError):  # already closed
                self.sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once


class _HTTPConnection(_HeadersDeadline, HTTPConnection):
    pass


class _HTTPSConnection(_HeadersDeadline, HTTPSConnection):
    pass


class _HTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class AnswerDeadlineAdapter(HTTPAdapter):
    """requests' adapter, each request's answer headers due within `seconds` of sending it (direct connections;
    through a proxy only the per-read timeout applies)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        token = _headers_deadline.set(time.monotonic() + self.seconds)
        try:
            return super().send(request, *args, **kwargs)
        finally:
            _headers_deadline.reset(token)
