"""Pure ASGI middleware: request ids, access log and request metrics; upload size limits before the body is read."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.handlers import service_error_response
from app.errors import PayloadTooLargeError
from app.metrics import ServiceMetrics

access_logger = logging.getLogger("app.access")

REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The path template of the route that served a request (`/v1/predict`), never the raw path, to bound labels.

    The router records the matched route in the scope; requests refused before routing (413 from the upload limit,
    unknown paths) are `unmatched`.
    """
    return getattr(scope.get("route"), "path", UNMATCHED)


class RequestContextMiddleware:
    """Give each request an id (the client's `X-Request-ID` when it is a plain token, else a new uuid4), echo it
    in the response, count and time the request, and write one access log line."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = offered if _CLIENT_REQUEST_ID.match(offered) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            endpoint = route_template(scope)
            self.metrics.observe_request(endpoint, scope["method"], status, seconds)
            fields = {
                "request_id": request_id,
                "method": scope["method"],
                "endpoint": endpoint,
                "status": status,
                "latency_ms": round(seconds * 1000, 2),
            }
            for key in ("input_sha256", "error_code"):
                if key in state:
                    fields[key] = state[key]
            access_logger.info("request", extra={"fields": fields})


class UploadLimitMiddleware:
    """Refuse request bodies over a size limit with 413, before the multipart parser reads (and spools) them.

    The `Content-Length` header is checked first; a body sent without one (chunked) is counted as it streams, and
    cut off with 413 once it passes the limit. `limits` maps exact paths to their limit; others get
    `default_limit`.
    """

    def __init__(self, app: ASGIApp, default_limit: int, limits: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = dict(limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default_limit)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            error = PayloadTooLargeError(f"request body must be at most {limit} bytes; Content-Length is {declared}")
            await self._reject(scope, receive, send, error)
            return

        received = 0
        response_started = False
        rejected = False

        async def counting_receive() -> Message:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and not response_started:
                    rejected = True
                    error = PayloadTooLargeError(f"request body must be at most {limit} bytes; got more")
                    await self._reject(scope, receive, send, error)
                    # The app sees the client go away; whatever it answers is dropped by `guarded_send`.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if rejected:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    @staticmethod
    async def _reject(scope: Scope, receive: Receive, send: Send, error: PayloadTooLargeError) -> None:
        scope.setdefault("state", {})["error_code"] = error.code
        await service_error_response(error)(scope, receive, send)
