"""Pure ASGI middleware: request ids, access and audit logs, request metrics; API keys and rate limits; upload size
limits before the body is read."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.handlers import service_error_response
from app.audit import AuditLog
from app.errors import AuthenticationError, PayloadTooLargeError, RateLimitedError, ServiceError
from app.metrics import ServiceMetrics
from app.security import ApiKeyStore, RateLimiter

access_logger = logging.getLogger("app.access")

REQUEST_ID_HEADER = "X-Request-ID"
API_KEY_HEADER = "X-API-Key"
INFERENCE_ENDPOINTS = frozenset({"/v1/predict", "/v1/predict/batch", "/v1/overlay"})
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
    in the response, count and time the request, write one access log line, and one audit line per inference."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, audit: AuditLog | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.audit = audit

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
            for key in ("input_sha256", "error_code", "key_id"):
                if key in state:
                    fields[key] = state[key]
            access_logger.info("request", extra={"fields": fields})
            if self.audit is not None and endpoint in INFERENCE_ENDPOINTS:
                self._audit(scope, state, request_id, endpoint, status)

    def _audit(self, scope: Scope, state: dict, request_id: str, endpoint: str, status: int) -> None:
        manifest = getattr(getattr(scope.get("app"), "state", None), "manifest", None)
        hashes = state.get("input_sha256", [])
        client = scope.get("client")
        self.audit.record(
            request_id=request_id,
            endpoint=endpoint,
            status=status,
            key_id=state.get("key_id"),
            client=client[0] if client else None,
            input_sha256=hashes if isinstance(hashes, list) else [hashes],
            models={"classifier": manifest.classifier.tag, "segmenter": manifest.segmenter.tag} if manifest else {},
            outcome=state.get("outcome") or {"error": state.get("error_code", f"http_{status}")},
        )


def is_public(path: str) -> bool:
    """Paths reachable without an API key: health probes, and the web page with its static files (no data)."""
    return path.startswith("/health/") or path == "/" or path.startswith("/static/")


class AccessControlMiddleware:
    """With API keys configured, refuse requests without a valid `X-API-Key` (401); then apply the per-client rate
    limit (429 with `Retry-After`). The client of the rate limit is the key id, or the address without keys."""

    def __init__(self, app: ASGIApp, keys: ApiKeyStore, limiter: RateLimiter | None = None) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        key_id = None
        if self.keys.enabled:
            key_id = self.keys.authenticate(Headers(scope=scope).get(API_KEY_HEADER))
            if key_id is None:
                await self._reject(
                    scope, receive, send, AuthenticationError(f"a valid {API_KEY_HEADER} header is required")
                )
                return
            state["key_id"] = key_id
        if self.limiter is not None:
            client = scope.get("client")
            wait = self.limiter.acquire(key_id or (client[0] if client else "unknown"))
            if wait > 0:
                error = RateLimitedError("too many requests for this client; retry later", retry_after_seconds=wait)
                await self._reject(scope, receive, send, error)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _reject(scope: Scope, receive: Receive, send: Send, error: ServiceError) -> None:
        scope.setdefault("state", {})["error_code"] = error.code
        await service_error_response(error)(scope, receive, send)


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
