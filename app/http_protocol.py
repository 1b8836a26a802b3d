"""uvicorn's HTTP/1.1 protocol (httptools) with the connection limits uvicorn does not enforce itself.

uvicorn bounds keep-alive idle time (`timeout_keep_alive`) and shutdown time (`timeout_graceful_shutdown`), but with
httptools it reads request headers without a size limit (the parser's cost grows faster than the size: a 64 MB
header stalled every other request for seconds), without a time limit (a client sending one byte a second held a
connection forever), and waits on a silent upload for as long as the client likes, shutdown included. This protocol
adds, per connection:

- a cap on open connections: past `max_connections` a new connection is answered 503 (with Retry-After) and
  closed at once, and likewise past `max_connections_per_client` from one address (a trusted proxy's excepted): one
  one client holding slow connections could take all 512, health probes and clients with keys included;
- a cap on the request line plus headers (`max_header_bytes`): past it, 431 before the parser sees more; the
  trailer fields after a chunked body have the same cap (past it, 431 or a close), and are dropped: nothing reads
  them, and uvicorn would add them to the request's headers;
- a cap on a chunked body's framing (its chunk-size lines, chunk extensions included, and trailer fields): at most
  as many bytes as its data plus twice `max_header_bytes`; past it, 413 or a close. Extension bytes are no body
  bytes, so no upload limit sees them: one request limited to 20 MiB could make the server read 11 GB;
- a header deadline (`header_timeout_seconds`), counted from the first byte of a request (from accepting, for a new
  connection): a request whose headers are not all in by then gets 408 and the connection is closed;
- a body idle timeout (`body_timeout_seconds`): a client that pauses longer while sending a body gets 408 and the
  connection is closed; the app sees the client go away. Time the app leaves the body unread does not count;
- an answer the client does not read: when the transport holds more of it than it could send (the kernel's buffers
  full), the client must take some of it every `body_timeout_seconds`, at `min_answer_bytes_per_second` at least,
  or the connection is cut off: otherwise an answer written whole stays in memory, outside every budget, and the
  request's task waits, for as long as the client keeps the connection open without reading, or reads a few bytes
  now and then;
- on shutdown, the body idle timeout drops to `shutdown_idle_upload_seconds`, so idle uploads do not hold the
  shutdown while requests that are being sent or answered finish;
- a request with more than one Host header is 400 (RFC 9112 3.2): a proxy keeping the last and the app the first
  would judge it by different names (`ALLOWED_HOSTS`); so is one with two Content-Type headers (RFC 9110 8.3:
  the app would read the first); a request target in absolute form (`http://host/path`) puts its host in the Host
  header's place, as RFC 9112 3.2.2 says;
- an answer sent before its request body was all in (a refusal: 401 without a key, 413, 404) closes the connection
  `UNWANTED_BODY_SECONDS` later if the body is still coming: the rest is unwanted, and a client trickling it (a byte
  every few seconds keeps clear of the body idle timeout) must not hold the connection: 515 keyless clients doing
  so would keep a client with a key out (503 `too_many_connections`).

The header count is checked in the app (`app.api.middleware`): the byte cap already bounds the parser's work.
`brain-tumor serve` runs uvicorn with this protocol; plain `uvicorn --factory app.main:create_app` runs without these
limits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import httptools
from prometheus_client import Counter
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.audit import AuditLog
from app.security import address_group
from app.settings import Settings

# The ASGI scope extension that says the request's Host header was taken from an absolute-form request target.
HOST_FROM_TARGET = "brain_tumor.host_from_target"

# Header fields a request may hold once, with the rule that says so: a proxy keeping the last of two and the app the
# first would judge the request by different values (the host: ALLOWED_HOSTS; the content type: how the body is read).
SINGLE_FIELDS = {b"host": ("Host", "RFC 9112 3.2"), b"content-type": ("Content-Type", "RFC 9110 8.3")}

logger = logging.getLogger("app.http")


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits one server applies to every connection (see the module docstring)."""

    max_connections: int
    max_header_bytes: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    shutdown_idle_upload_seconds: float
    max_connections_per_client: int | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    min_answer_bytes_per_second: int = 0
    min_upload_bytes_per_second: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_connections=settings.max_connections,
            max_connections_per_client=settings.max_connections_per_client,
            trusted_proxies=tuple(ipaddress.ip_network(item, strict=False) for item in settings.trusted_proxies),
            max_header_bytes=settings.max_header_bytes,
            header_timeout_seconds=settings.header_timeout_seconds,
            body_timeout_seconds=settings.body_timeout_seconds,
            shutdown_idle_upload_seconds=settings.shutdown_idle_upload_seconds,
            min_answer_bytes_per_second=settings.min_answer_bytes_per_second,
            min_upload_bytes_per_second=settings.min_upload_bytes_per_second,
        )


class _PauseWatchingFlowControl(FlowControl):
    """uvicorn's flow control, telling the protocol when it stops and starts reading again: the upload rate does not
    count that time, as the client could not send while the app left the body unread."""

    def __init__(
        self, transport: asyncio.Transport, on_pause: Callable[[], None], on_resume: Callable[[], None]
    ) -> None:
        super().__init__(transport)
        self._on_pause, self._on_resume = on_pause, on_resume

    def pause_reading(self) -> None:
        if not self.read_paused:
            self._on_pause()
        super().pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self._on_resume()
        super().resume_reading()


UNWANTED_BODY_SECONDS = 2.0
"""How long a connection stays open after its answer for the rest of a body nobody reads: enough for the client to
read the answer before the close (closing with data still arriving may reset the connection)."""

# Refusals the app's audit log records (as `app.api.middleware.AUDITED_REFUSALS` does for the app's own).
AUDITED_STATUSES = frozenset({HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE})


def protocol_with_limits(
    limits: ConnectionLimits, audit: AuditLog | None = None, refusals: Counter | None = None
) -> type[LimitedHttpToolsProtocol]:
    """A protocol class bound to `limits`, for `uvicorn.run(http=...)` (uvicorn builds one instance per
    connection and passes no arguments of ours). With `audit`, the 408 and 431 refusals made here, before any app
    runs, get their audit line as the app's refusals do; with `refusals` (a counter labelled by status and code),
    every refusal made here is counted, as the app counts its requests (an alert on 5xx sees a full server)."""
    attributes = {"limits": limits, "audit": audit, "refusals": refusals}
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), attributes)


CONNECTIONS_RETRY_SECONDS = 5
"""Retry-After of a connection refused because too many are open: idle keep-alive connections close within
`KEEP_ALIVE_TIMEOUT_SECONDS` (5 s by default), and most requests are answered within a few seconds."""


def raw_error_response(status: HTTPStatus, code: str, message: str, retry_after_seconds: int | None = None) -> bytes:
    """A complete HTTP/1.1 response with the service's error body, written before any app runs."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    retry_after = "" if retry_after_seconds is None else f"retry-after: {retry_after_seconds}\r\n"
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"{retry_after}"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_METHOD_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64} ")  # RFC 9110's token, then the space


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """One connection; see the module docstring for the limits."""

    limits: ClassVar[ConnectionLimits]
    audit: ClassVar[AuditLog | None] = None
    refusals: ClassVar[Counter | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_headers = True
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_activity = 0.0
        # Where the upload rate's window began (`_upload_too_slow`): its time (moved on by the time reading was
        # paused), the body bytes read by then, and since when reading is paused (None: it is not).
        self._rate_window_start = 0.0
        self._rate_window_bytes = 0
        self._paused_since: float | None = None
        self._draining = False
        # The request whose body the parser has read to its end. uvicorn never marks the body of a request answered
        # before it was in as complete (its `more_body` stays true), so this is what says the body stopped coming.
        self._body_complete_for: object | None = None
        # Trailer fields (after a chunked body's last chunk) are read by no one, yet httptools holds each one whole
        # and uvicorn adds it to the request's headers: they are dropped, and their bytes capped (`_count_trailers`).
        self._chunk_events = 0  # chunk headers, body bytes and message ends parsed so far
        self._after_chunk_header = False  # a chunk header parsed and no data after it yet: the last chunk's, if so
        self._trailer_bytes = 0
        self._body_bytes_parsed = 0  # body bytes the parser handed on, over the connection's life
        self._messages_completed = 0
        self._request_body_bytes = 0  # of the request being read
        self._body_bytes_left: int | None = None  # of its Content-Length; None for a chunked body
        self._framing_bytes = 0  # bytes of its body that were no data: chunk-size lines, extensions, trailers
        self._header_chunk = b""  # the bytes of the request line and headers handed to the parser last
        self._single_fields: list[bytes] = []  # `SINGLE_FIELDS` names of the request being read, as they come
        self._answer_timer: asyncio.TimerHandle | None = None
        self._answer_taken = False  # the transport's buffer fell below its low-water mark since the last check
        self._invalid_reason: str | None = None  # why this protocol, not httptools, found the request invalid

    # Connection lifecycle
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _PauseWatchingFlowControl(transport, self._reading_paused, self._reading_resumed)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "too_many_connections",
                f"the server holds its maximum of {self.limits.max_connections} connections; retry later",
                retry_after_seconds=CONNECTIONS_RETRY_SECONDS,
            )
            return
        most = self.limits.max_connections_per_client
        if most is not None and self._held_by_this_client() > most:
            self._refuse(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "too_many_connections",
                f"this client address holds the most connections one may ({most}); retry later",
                retry_after_seconds=CONNECTIONS_RETRY_SECONDS,
            )
            return
        self._arm_header_timer()

    def _held_by_this_client(self) -> int:
        """Open connections from this connection's address, itself included, an IPv6 client's /64 network counted as
        one address (`address_group`: one subscriber holds 2^64 addresses); 0 for a trusted proxy
        (its clients are many) or an address the transport does not give."""
        address = self.client[0] if self.client else None
        if address is None:
            return 0
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return 0
        if any(ip in network for network in self.limits.trusted_proxies):
            return 0
        group = address_group(address)
        return sum(
            1 for connection in self.connections if connection.client and address_group(connection.client[0]) == group
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        super().shutdown()
        self._draining = True
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._check_body()  # an upload already idle past the grace period goes now

    # Bytes in
    def data_received(self, data: bytes) -> None:
        while data and not self.transport.is_closing():
            if not self._reading_headers:
                size = self.limits.max_header_bytes
                if self._body_bytes_left is not None:  # feed no more than the body: what follows is the next request
                    size = max(1, min(size, self._body_bytes_left))
                feed, data = data[:size], data[size:]
                self._parse_body_bytes(feed)
                continue
            room = self.limits.max_header_bytes - self._header_bytes
            if room <= 0:
                self._refuse_large_headers()
                return
            if self._header_timer is None:
                self._arm_header_timer()
            size = self._head_feed_size(data, room)
            chunk, data = data[:size], data[size:]
            self._header_bytes += len(chunk)
            self._header_chunk = chunk
            super().data_received(chunk)

    def _head_feed_size(self, data: bytes, room: int) -> int:
        """How much of `data` to hand the parser as request line and headers: `room`, or less if the blank line that
        ends them comes first, so that what follows (a body, the next request) goes through the counting of its own.

        Why: a pipelined request whose headers come in one read with the end of the previous request would go to the
        parser uncounted, and a 100 KB header pass the 32 KiB cap."""
        seen = self._header_chunk[-3:] if self._header_bytes else b""  # the blank line may straddle two reads
        end = (seen + data[:room]).find(b"\r\n\r\n")
        return room if end < 0 else end + 4 - len(seen)

    def _parse_body_bytes(self, feed: bytes) -> None:
        """Parse bytes that come after a request's headers, and count those that are no body data. Fed at most
        `max_header_bytes` at a time, so that the framing cap overshoots by one such feed at most, and the next
        request's line and headers, if they begin in `feed`, are within the cap when they also end in it."""
        events = self._chunk_events
        messages = self._messages_completed
        body_before = self._body_bytes_parsed
        super().data_received(feed)
        self._count_trailers(len(feed), events)
        not_body = len(feed) - (self._body_bytes_parsed - body_before)
        if self._messages_completed == messages:  # all of `feed` belongs to the request being read
            self._count_framing(not_body)
        elif self._reading_headers and not self.transport.is_closing():
            # A chunked request ended in `feed` (a Content-Length body is fed to its end, no further), and the next
            # one's line and headers began there: count what was no body as theirs (its last framing counts too).
            self._header_bytes = not_body
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse_large_headers()

    # Parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._single_fields = []
        self._request_body_bytes = self._framing_bytes = 0

    def on_headers_complete(self) -> None:
        repeated = [name for name in SINGLE_FIELDS if self._single_fields.count(name) > 1]
        if repeated:
            # Raised inside a parser callback, it reaches uvicorn as an HttpParserError: `send_400_response`.
            field, rule = SINGLE_FIELDS[repeated[0]]
            self._invalid_reason = f"the request has more than one {field} header ({rule} makes that a 400)"
            raise ValueError(self._invalid_reason)
        codings = [
            coding.strip().lower()
            for name, value in self.headers
            if name == b"transfer-encoding"
            for coding in value.decode("latin-1").split(",")
        ]
        if codings and codings != ["chunked"]:
            # httptools reads "gzip, chunked" as chunked and hands on the gzip bytes.
            said = ", ".join(codings)[:64]
            self._invalid_reason = f"the request's Transfer-Encoding must be chunked alone; it is {said}"
            raise ValueError(self._invalid_reason)
        self._take_host_from_target()
        self._reading_headers = False
        self._body_bytes_left = self._declared_body_bytes()
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()
        self._body_activity = self.loop.time()
        self._restart_rate_window()
        self._arm_body_timer(self._body_timeout())

    def _take_host_from_target(self) -> None:
        """A request target in absolute form (`GET http://evil.example/v1/models`) names the request's host, and the
        Host header is then to be ignored (RFC 9112 3.2.2): its authority takes the Host header's place, so that
        ALLOWED_HOSTS judges the host the request names: with only the Host header read, a proxy routing by the
        target could pass another host's request."""
        if not self.url or self.url[:1] in (b"/", b"*"):  # origin form, or `OPTIONS *`
            return
        try:
            target = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            return
        if not target.host:
            return
        host = b"[" + target.host + b"]" if b":" in target.host else target.host
        authority = host if target.port is None else host + b":%d" % target.port
        self.headers[:] = [(name, value) for name, value in self.headers if name != b"host"] + [(b"host", authority)]
        # So that a refusal names what was judged: the request target, not the Host header.
        self.scope.setdefault("extensions", {})[HOST_FROM_TARGET] = True

    def _declared_body_bytes(self) -> int | None:
        """The request body's length from its headers (httptools has checked them), or None when it is chunked."""
        if any(name == b"transfer-encoding" for name, _ in self.headers):
            return None
        lengths = [value for name, value in self.headers if name == b"content-length"]
        try:
            return int(lengths[0]) if lengths else 0
        except ValueError:
            return None

    def on_body(self, body: bytes) -> None:
        self._body_activity = self.loop.time()
        self._body_bytes_parsed += len(body)
        self._request_body_bytes += len(body)
        if self._body_bytes_left is not None:
            self._body_bytes_left -= len(body)
        self._chunk_events += 1
        self._after_chunk_header = False
        super().on_body(body)

    def on_chunk_header(self) -> None:
        self._chunk_events += 1
        self._after_chunk_header = True
        self._trailer_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._reading_headers:  # else a trailer field: dropped
            if name.lower() in SINGLE_FIELDS:
                self._single_fields.append(name.lower())
            super().on_header(name, value)

    def _count_trailers(self, size: int, events_before: int) -> None:
        """Count `size` bytes just parsed as trailer bytes when they all came after the last chunk's header (no chunk
        event while they were parsed); past `max_header_bytes`, end the request and the connection. (The bytes of
        the feed in which that header came are not counted: at most one feed more.)"""
        if not self._after_chunk_header or self._chunk_events != events_before or self.transport.is_closing():
            return
        self._trailer_bytes += size
        if self._trailer_bytes > self.limits.max_header_bytes:
            message = f"trailer fields after a chunked body must be at most {self.limits.max_header_bytes} bytes"
            if self.cycle is None or self.cycle.response_complete:
                self._log(message, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large")
                self.transport.close()
            else:
                self._end_request(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", message)

    def _count_framing(self, size: int) -> None:
        """Count `size` bytes of the request's body that were no data; past the data's bytes plus twice
        `max_header_bytes` (trailer fields have a cap of their own: the other half is for chunk-size lines), end the
        request and the connection.

        Why: chunk extensions (`1;x=...` with no end) are no body bytes, so neither the upload limits nor the body
        idle timeout sees them: the server could read 11 GB for one request limited to 20 MiB. A real
        client's chunk-size lines are a few bytes for each chunk of data."""
        if size <= 0 or self.transport.is_closing():
            return
        self._framing_bytes += size
        most = self._request_body_bytes + 2 * self.limits.max_header_bytes
        if self._framing_bytes <= most:
            return
        message = (
            "a chunked body's framing (chunk-size lines with their extensions, trailer fields) must take at most "
            f"{2 * self.limits.max_header_bytes} bytes more than its data"
        )
        if self.cycle is None or self.cycle.response_complete:
            self._log(message, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large")
            self.transport.close()
        else:
            self._end_request(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large", message)

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            self.loop.call_later(UNWANTED_BODY_SECONDS, self._close_unwanted_body, cycle)

    def _close_unwanted_body(self, cycle: Any) -> None:
        # Still on that request (no next request has begun) and its body still comes: nobody will read it.
        if cycle is self.cycle and self._body_complete_for is not cycle and not self.transport.is_closing():
            fields = {"peer": self._peer(), "path": str(cycle.scope.get("path", ""))[:256]}
            logger.info("connection closed: request body still coming after the answer", extra={"fields": fields})
            self.transport.close()

    def on_message_complete(self) -> None:
        self._body_complete_for = self.cycle
        self._messages_completed += 1
        self._chunk_events += 1
        self._after_chunk_header = False
        super().on_message_complete()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._reading_headers = True  # whatever comes next is the next request's line and headers
        self._header_bytes = 0

    # Timers
    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout_seconds, self._headers_timed_out)

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if not self._reading_headers or self.transport.is_closing():
            return
        if self._header_bytes == 0 and self.cycle is None:  # connected and said nothing: no one to answer
            self._log("connection closed: no request", HTTPStatus.REQUEST_TIMEOUT, "request_timeout")
            self.transport.close()
            return
        self._refuse(
            HTTPStatus.REQUEST_TIMEOUT,
            "request_timeout",
            f"request headers must arrive within {self.limits.header_timeout_seconds:g} s",
        )

    def _body_timeout(self) -> float:
        if self._draining:
            return min(self.limits.body_timeout_seconds, self.limits.shutdown_idle_upload_seconds)
        return self.limits.body_timeout_seconds

    def _arm_body_timer(self, delay: float) -> None:
        self._body_timer = self.loop.call_later(max(delay, 0.0), self._check_body)

    def _check_body(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the app has not read what came: the wait is ours, not the client's
            self._body_activity = now
        idle = now - self._body_activity
        timeout = self._body_timeout()
        if idle >= timeout:
            self._drop_upload(timeout)
            return
        slow = self._upload_too_slow(now)
        if slow is not None:
            self._end_request(HTTPStatus.REQUEST_TIMEOUT, "request_timeout", slow)
            return
        if self.limits.min_upload_bytes_per_second <= 0 or self._paused_since is not None:
            self._arm_body_timer(timeout - idle)
        else:  # the window's end, unless the pause limit comes first
            window_left = self.limits.body_timeout_seconds - (now - self._rate_window_start)
            self._arm_body_timer(min(timeout - idle, window_left))

    def _restart_rate_window(self) -> None:
        now = self.loop.time()
        self._rate_window_start = now
        self._rate_window_bytes = self._request_body_bytes
        if self._paused_since is not None:
            self._paused_since = now

    def _reading_paused(self) -> None:
        self._paused_since = self.loop.time()

    def _reading_resumed(self) -> None:
        if self._paused_since is not None:
            self._rate_window_start += self.loop.time() - self._paused_since
            self._paused_since = None

    def _upload_too_slow(self, now: float) -> str | None:
        """Why the body came slower than `min_upload_bytes_per_second` over the window now ended (all that was left
        of it, if less), or None (and a new window begins) when it came fast enough or the window is not over.

        Why a rate beside the pause limit: two clients that send two batches each up to their last bytes, then a
        byte every 20 s, would hold every byte MAX_UPLOADS_HELD_BYTES allows for as long as they liked, and every
        other client get 503. The time the app leaves the body unread (reading paused) is not counted, and the
        window is not judged while it lasts."""
        if self.limits.min_upload_bytes_per_second <= 0 or self._paused_since is not None:
            return None
        elapsed = now - self._rate_window_start  # its start moved on by each pause that ended (`_reading_resumed`)
        if elapsed < self.limits.body_timeout_seconds:
            return None
        came = self._request_body_bytes - self._rate_window_bytes
        wanted = int(self.limits.min_upload_bytes_per_second * elapsed)
        if self._body_bytes_left is not None:  # a declared length: no more than what was left of it
            wanted = min(wanted, self._body_bytes_left + came)
        self._restart_rate_window()
        if came >= wanted:
            return None
        return (
            f"the request body came at {came / elapsed:.0f} bytes/s over {elapsed:.0f} s, slower than "
            f"{self.limits.min_upload_bytes_per_second} bytes/s (MIN_UPLOAD_BYTES_PER_SECOND)"
        )

    def _drop_upload(self, timeout: float) -> None:
        message = f"the request body paused for more than {timeout:g} s"
        if self._draining:
            message += " while the server is shutting down"
        self._end_request(HTTPStatus.REQUEST_TIMEOUT, "request_timeout", message)

    def _end_request(self, status: HTTPStatus, code: str, message: str) -> None:
        """Answer the request in progress with an error, unless its answer has begun, and close the connection."""
        cycle = self.cycle
        if not cycle.response_started:
            self.transport.write(raw_error_response(status, code, message))
            # The app's access and audit lines must say what the client got, not what the app answers to the
            # disconnect it reads next (a 400 `bad_request` from the half-read multipart body).
            cycle.scope.setdefault("state", {})["answered"] = (status.value, code)
        # The app reads a disconnect and whatever it answers is dropped (uvicorn's cycle ignores sends then).
        cycle.disconnected = True
        cycle.message_event.set()
        self._log(message, status, code, path=cycle.scope.get("path"))
        self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer, self._answer_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = self._answer_timer = None

    # Bytes out
    def pause_writing(self) -> None:
        """The transport holds more of an answer than the kernel took: watch that the client reads it."""
        super().pause_writing()
        if self._answer_timer is None:
            self._arm_answer_timer(self.transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        super().resume_writing()
        self._answer_taken = True

    def _arm_answer_timer(self, buffered: int) -> None:
        self._answer_taken = False
        self._answer_timer = self.loop.call_later(self.limits.body_timeout_seconds, self._check_answer_taken, buffered)

    def _check_answer_taken(self, buffered_before: int) -> None:
        """Cut off a client that took less of its answer since the last check than `min_answer_bytes_per_second`
        asks (none, at least); watch on while some is buffered.

        Why a rate: a client that takes 4 KiB every 20 s would keep a 50 MB answer in memory for days, eight
        connections 367 MiB, outside every budget."""
        self._answer_timer = None
        buffered = self.transport.get_write_buffer_size()
        if self.transport.is_closing() or buffered == 0:
            return
        window = self.limits.body_timeout_seconds
        wanted = max(1, min(buffered_before, int(self.limits.min_answer_bytes_per_second * window)))
        taken = buffered_before - buffered
        if self._answer_taken or taken >= wanted:
            self._arm_answer_timer(buffered)
            return
        path = self.cycle.scope.get("path") if self.cycle is not None else None
        fields = {"peer": self._peer(), "path": str(path or "")[:256], "bytes_unsent": buffered}
        message = (
            f"connection cut off: the client read none of its answer for {window:g} s"
            if taken <= 0
            else f"connection cut off: the client read {taken} bytes of its answer in {window:g} s, slower than "
            f"{self.limits.min_answer_bytes_per_second} bytes/s"
        )
        logger.info(message, extra={"fields": fields})
        self.transport.abort()  # drops the buffered answer; the app, if still sending, sees the client gone

    # Refusals
    def send_400_response(self, msg: str) -> None:
        """httptools could not parse the request (a control character in a header, a broken request line): the
        JSON error body and the log line every other refusal has, instead of uvicorn's plain text.

        A method httptools does not know (``FOO``: a legal token, RFC 9110 9.1) is no malformed request but one this
        server does not implement: 501. uvicorn calls this inside its ``except httptools.HttpParserError``, so the
        error at hand says the method was not known; the request line says whether it was a token at all (a TLS
        hello is not).
        """
        unknown_method = isinstance(sys.exc_info()[1], httptools.HttpParserInvalidMethodError)
        if unknown_method and _METHOD_TOKEN.match(self._header_chunk):
            self._refuse(
                HTTPStatus.NOT_IMPLEMENTED,
                "method_not_implemented",
                "the request's method is not an HTTP method this server knows (its routes take GET, HEAD and POST)",
            )
            return
        self._refuse(
            HTTPStatus.BAD_REQUEST,
            "invalid_http_request",
            self._invalid_reason or "the request is not valid HTTP/1.1 (a malformed request line or header)",
        )

    def _refuse_large_headers(self) -> None:
        self._refuse(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            f"request line and headers must be at most {self.limits.max_header_bytes} bytes",
        )

    def _refuse(self, status: HTTPStatus, code: str, message: str, retry_after_seconds: int | None = None) -> None:
        self._cancel_timers()
        self.transport.write(raw_error_response(status, code, message, retry_after_seconds))
        self.transport.close()
        self._log(message, status, code)
        if self.audit is not None and status in AUDITED_STATUSES:
            peer = self._peer()
            self.audit.record(
                request_id=uuid.uuid4().hex,  # no app ever saw the request: the id only names this line
                endpoint="unmatched",
                status=status.value,
                key_id=None,
                client=peer,  # the headers were never read, so no proxy's X-Forwarded-For either
                peer=peer,
                input_sha256=[],
                models={},
                outcome={"error": code},
            )

    def _log(self, message: str, status: HTTPStatus, code: str, path: str | None = None) -> None:
        if self.refusals is not None:
            self.refusals.labels(status=str(status.value), code=code).inc()
        fields: dict[str, object] = {"status": status.value, "error_code": code, "peer": self._peer()}
        if path is not None:
            fields["path"] = path[:256]
        logger.warning(message, extra={"fields": fields})

    def _peer(self) -> str | None:
        return self.client[0] if self.client else None
