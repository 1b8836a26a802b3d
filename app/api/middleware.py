"""Pure ASGI middleware: the client's address (X-Forwarded-For only from trusted proxies); request ids, the header
count limit, access and audit logs, request metrics; requests of other sites' pages and unknown Host names refused;
API keys, failed-key throttling and rate limits; upload size limits, and upload routes' bodies that are no form,
refused before the body is read; HEAD answered as GET without its body."""

from __future__ import annotations

import email.message
import ipaddress
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.handlers import API_KEY_HEADER, REQUEST_ID_HEADER, reject, service_error_response
from app.audit import AuditLog
from app.errors import (
    AuthenticationError,
    CrossSiteRequestError,
    HeadersTooLargeError,
    HostNotAllowedError,
    OverloadedError,
    PayloadTooLargeError,
    RateLimitedError,
    ServiceError,
    UnsupportedMediaTypeError,
)
from app.http_protocol import HOST_FROM_TARGET
from app.metrics import ServiceMetrics
from app.request_client import current_client
from app.security import ApiKeyStore, RateLimiter, address_group

HELD_UPLOADS_RETRY_SECONDS = 5.0
"""Retry-After of a request refused because the uploads in flight hold too much: a few seconds frees what a batch
holds (most answer within them)."""

access_logger = logging.getLogger("app.access")

INFERENCE_ENDPOINTS = frozenset({"/v1/predict", "/v1/predict/batch", "/v1/overlay"})
UPLOAD_FORM_FIELDS = {"/v1/predict/batch": "files"}  # the form field of each upload route's files; others `file`
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}")
UNMATCHED = "unmatched"
# Refusals that never reach a route, or reach one and are refused for who or how much is asking: each is audited.
AUDITED_REFUSALS = frozenset({401, 403, 408, 413, 415, 429, 431})
_MAX_LOGGED_PATH = 256
_ADDRESS_WITH_PORT = re.compile(r"\[([0-9A-Fa-f:.]+)\]:\d{1,5}|([0-9.]+):\d{1,5}")
# What Starlette's router writes into the scope of a request it matched.
ROUTING_KEYS = ("route", "endpoint", "path_params", "app_root_path")


def route_template(scope: Scope) -> str:
    """The path template of the route that served a request (`/v1/predict`), never the raw path, to bound labels.

    The router records the matched route in the scope. A request refused before routing (415 for a body that is no
    form, 413 from the upload limit, 401 without a key) to an upload route is labelled with that route's path, which
    is its template: as `unmatched`, the same refusal on one route would land in two series and a per-endpoint alert
    would miss it. Other paths refused before routing, and unknown paths, are `unmatched`. Starlette's own routes
    (FastAPI's /docs, /redoc, /openapi.json) record only their endpoint, whose route names the template, so they are
    not counted as unknown.
    """
    route = scope.get("route")
    if route is not None:
        return route.path
    endpoint = scope.get("endpoint")
    if endpoint is not None:
        for candidate in getattr(scope.get("app"), "routes", ()):
            if getattr(candidate, "endpoint", None) is endpoint:
                return str(candidate.path)
    return scope["path"] if scope.get("path") in INFERENCE_ENDPOINTS else UNMATCHED


class ClientAddressMiddleware:
    """Set the request's client address to the one the request came from, as far as trusted proxies tell.

    `X-Forwarded-For` is believed only from a peer in `trusted_proxies`; its entries are then read from the right
    (the entry each proxy appended), skipping trusted proxies, and the first untrusted one is the client (the
    leftmost, if all are trusted). From any other peer the header is ignored: anyone can write it. The socket's own
    peer stays in `state["peer"]`.
    """

    def __init__(self, app: ASGIApp, trusted_proxies: Iterable[str] = ()) -> None:
        self.app = app
        self.trusted = tuple(ipaddress.ip_network(item, strict=False) for item in trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            peer = client[0] if client else None
            scope.setdefault("state", {})["peer"] = peer
            if self.trusted and peer is not None and self.is_trusted(peer):
                forwarded = self.forwarded_client(Headers(scope=scope).getlist("x-forwarded-for"))
                if forwarded is not None:
                    scope["client"] = (forwarded, 0)
        await self.app(scope, receive, send)

    def is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def forwarded_client(self, values: list[str]) -> str | None:
        entries = [entry.strip() for value in values for entry in value.split(",")]
        address = None
        for entry in reversed(entries):
            address = forwarded_address(entry)
            if address is None:
                return None  # a malformed hop: stop believing the chain there, keep the peer
            if not self.is_trusted(address):
                return address
        return address  # every hop is trusted (a client inside the proxies' network): the furthest one


def forwarded_address(entry: str) -> str | None:
    """The IP address of one `X-Forwarded-For` entry, None when it names none: an address, or an address with a port
    as some load balancers write it (``203.0.113.7:4711``, ``[2001:db8::1]:443``), an IPv4-mapped IPv6 address read as
    IPv4. Why: read as malformed, an entry with a port would make every client behind such a proxy its address, one
    budget of failed keys for all of them."""
    matched = _ADDRESS_WITH_PORT.fullmatch(entry)
    text = (matched.group(1) or matched.group(2)) if matched else entry
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


class RequestContextMiddleware:
    """Give each request a server-made id (a uuid4, echoed in `X-Request-ID`; the client's own `X-Request-ID`, when
    a plain token, is kept as `client_request_id`), mark every answer `X-Content-Type-Options: nosniff`, refuse more
    than `max_header_count` headers (431), count and time the request, write one access log line, and one audit line
    per inference and per refusal (401, 403, 408, 413, 415, 429, 431) with the path, the peer and the reason."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        audit: AuditLog | None = None,
        max_header_count: int | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.audit = audit
        self.max_header_count = max_header_count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        offered = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        if _CLIENT_REQUEST_ID.fullmatch(offered):  # `$` would let a trailing newline through
            state["client_request_id"] = offered
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append(REQUEST_ID_HEADER, request_id)
                if "x-content-type-options" not in headers:  # JSON that echoes input is never sniffed as HTML
                    headers.append("X-Content-Type-Options", "nosniff")
                if "cache-control" not in headers:  # answers derived from a patient's images: no cache keeps them
                    headers.append("Cache-Control", "no-store")
            await send(message)

        try:
            if self.max_header_count is not None and len(scope["headers"]) > self.max_header_count:
                error = HeadersTooLargeError(
                    f"a request may have at most {self.max_header_count} headers; got {len(scope['headers'])}"
                )
                state["error_code"] = error.code
                await service_error_response(error, close=True)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            if "answered" in state:  # the server refused the request itself (a stalled body: app.http_protocol)
                status, state["error_code"] = state["answered"]
            endpoint = route_template(scope)
            self.metrics.observe_request(endpoint, scope["method"], status, seconds)
            client = scope.get("client")
            fields = {
                "request_id": request_id,
                "method": scope["method"],
                "endpoint": endpoint,
                "path": logged_path(scope),
                "status": status,
                "latency_ms": round(seconds * 1000, 2),
                "client": client[0] if client else None,
                "peer": state.get("peer", client[0] if client else None),
            }
            for key in ("client_request_id", "input_sha256", "error_code", "key_id"):
                if key in state:
                    fields[key] = state[key]
            # A probe answered well is logged at DEBUG: Kubernetes' probes alone make 13,000 lines a pod a day.
            probe_passed = endpoint.startswith("/health/") and status < 400
            access_logger.log(logging.DEBUG if probe_passed else logging.INFO, "request", extra={"fields": fields})
            if self.audit is not None and (endpoint in INFERENCE_ENDPOINTS or status in AUDITED_REFUSALS):
                self._audit(scope, state, request_id, endpoint, status)

    def _audit(self, scope: Scope, state: dict, request_id: str, endpoint: str, status: int) -> None:
        manifest = getattr(getattr(scope.get("app"), "state", None), "manifest", None)
        hashes = state.get("input_sha256", [])
        client = scope.get("client")
        self.audit.record(
            request_id=request_id,
            client_request_id=state.get("client_request_id"),
            endpoint=endpoint,
            path=logged_path(scope),
            status=status,
            key_id=state.get("key_id"),
            client=client[0] if client else None,
            peer=state.get("peer", client[0] if client else None),
            input_sha256=hashes if isinstance(hashes, list) else [hashes],
            models={"classifier": manifest.classifier.tag, "segmenter": manifest.segmenter.tag} if manifest else {},
            outcome=state.get("outcome") or {"error": state.get("error_code", f"http_{status}")},
        )


def logged_path(scope: Scope) -> str:
    """The request's path, cut to a bounded length (it is the client's text); never the query string."""
    return str(scope.get("path", ""))[:_MAX_LOGGED_PATH]


def is_public(path: str) -> bool:
    """Paths reachable without an API key: health probes, and the web page with its static files (no data)."""
    return path.startswith("/health/") or path == "/" or path.startswith("/static/")


class BrowserSiteMiddleware:
    """Refuse what a browser does on behalf of another site, before keys and limits are looked at (403):

    - a request that changes something (not GET, HEAD or OPTIONS) whose `Sec-Fetch-Site` is `cross-site`: every
      current browser sends it, so another site's page cannot submit uploads to a service on the user's machine
      (the service has no CORS, so it could not read the answer, but the work and the audit line would be done);
    - with `allowed_hosts`, a Host header naming none of them: after DNS rebinding, a page of evil.example reaches
      127.0.0.1 as evil.example, same-origin, and could read the answers too (behind `brain-tumor serve`, the host of
      an absolute-form request target stands in the Host header's place, and the message says so); and two Host
      headers, which a proxy and this check could read differently.

    The public paths (health probes, the page and its files) are left alone: they hold no data, and the container's
    health check calls 127.0.0.1. So is `GET /metrics` when `metrics_keyed` (API keys are set, and it needs one):
    Prometheus scrapes each replica by its own address, which no ALLOWED_HOSTS entry names. Without keys it keeps the
    Host check: its counts (positive slices, requests by endpoint) would tell a rebound page when the user ran an
    analysis and what it found.
    """

    SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = (), metrics_keyed: bool = False) -> None:
        self.app = app
        self.allowed_hosts = frozenset(host.lower() for host in allowed_hosts)
        self.metrics_keyed = metrics_keyed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scraped = self.metrics_keyed and scope.get("method") in self.SAFE_METHODS and scope.get("path") == "/metrics"
        if scope["type"] != "http" or is_public(scope["path"]) or scraped:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        error: ServiceError | None = None
        if scope["method"] not in self.SAFE_METHODS and headers.get("sec-fetch-site", "").lower() == "cross-site":
            error = CrossSiteRequestError(
                "a request from another site's page (Sec-Fetch-Site: cross-site) is refused; call the API from a "
                "program, or from this service's own page"
            )
        elif self.allowed_hosts and len(headers.getlist("host")) > 1:
            # `brain-tumor serve` refuses these at the protocol (400); a server without that protocol reaches here.
            error = HostNotAllowedError("the request has more than one Host header; ALLOWED_HOSTS needs exactly one")
        elif self.allowed_hosts and host_name(headers.get("host", "")) not in self.allowed_hosts:
            judged = (
                "the request target (absolute form)"
                if scope.get("extensions", {}).get(HOST_FROM_TARGET)
                else "the Host header"
            )
            error = HostNotAllowedError(f"{judged} names no host in ALLOWED_HOSTS")
        if error is None:
            await self.app(scope, receive, send)
            return
        await reject(scope, receive, send, error)


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port, in lower case (`[::1]:8000` -> `::1`)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class AccessControlMiddleware:
    """With API keys configured, refuse requests without a valid `X-API-Key` (401), and throttle wrong keys per
    client address (a missing or empty header is no guess and is not counted): once an address has spent its
    `failed_keys` budget, all its requests get 429 until the budget refills, before any key is checked (a right key
    then gains a guesser nothing). Then apply the per-client rate limit (429 with `Retry-After`). The client of the
    rate limit is the key id, or the address without keys or without a valid key (a flood of refused requests is
    throttled too)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: ApiKeyStore,
        limiter: RateLimiter | None = None,
        failed_keys: RateLimiter | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.failed_keys = failed_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        client = scope.get("client")
        address = address_group(client[0]) if client else "unknown"  # an IPv6 client's /64 counts as one
        key_id = None
        if self.keys.enabled:
            if self.failed_keys is not None:
                wait = self.failed_keys.wait_seconds(address)
                if wait > 0:
                    error = RateLimitedError(
                        "too many failed API keys from this address; retry later", retry_after_seconds=wait
                    )
                    await reject(scope, receive, send, error)
                    return
            presented_keys = Headers(scope=scope).getlist(API_KEY_HEADER)
            # Two headers are refused, not read first-wins: a proxy and a client would disagree on which one counts.
            presented = presented_keys[0] if len(presented_keys) == 1 else None
            key_id = self.keys.authenticate(presented)
            if key_id is None:
                # Only a wrong key is a guess: a browser opening /docs without one must not lock its address out.
                if self.failed_keys is not None and any(presented_keys):
                    self.failed_keys.acquire(address)
                # Refusals count against the address's rate limit too: a flood without a key is throttled.
                wait = self.limiter.acquire(address) if self.limiter is not None else 0.0
                if wait > 0:
                    error = RateLimitedError("too many requests for this client; retry later", retry_after_seconds=wait)
                    await reject(scope, receive, send, error)
                    return
                reason = (
                    f"exactly one {API_KEY_HEADER} header is allowed; got {len(presented_keys)}"
                    if len(presented_keys) > 1
                    else f"a valid {API_KEY_HEADER} header is required"
                )
                await reject(scope, receive, send, AuthenticationError(reason))
                return
            state["key_id"] = key_id
        if self.limiter is not None:
            wait = self.limiter.acquire(key_id or address)
            if wait > 0:
                error = RateLimitedError("too many requests for this client; retry later", retry_after_seconds=wait)
                await reject(scope, receive, send, error)
                return
        await self.app(scope, receive, send)


class UploadLimitMiddleware:
    """Refuse request bodies over a size limit with 413, before the multipart parser reads (and spools) them, and
    bodies that would take the bytes all requests in flight hold past `max_held_bytes` with 503.

    The `Content-Length` header is checked first; a body sent without one (chunked) is counted as it streams, and
    cut off once it passes a limit. `limits` maps exact paths to their limit; others get `default_limit`. `sources`
    says where a path's limit comes from (its settings), so that the refusal tells the client which setting to look
    at ("" for the default limit). A request holds its body until its answer (the routes read each file whole), so
    its bytes count until then: otherwise 12 batches of 114 MB at once, each file tiny to decode, hold +1.76 GiB
    outside the decoding budget.
    """

    def __init__(
        self,
        app: ASGIApp,
        default_limit: int,
        limits: Mapping[str, int] | None = None,
        sources: Mapping[str, str] | None = None,
        max_held_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = dict(limits or {})
        self.sources = dict(sources or {})
        self.max_held_bytes = max_held_bytes
        self.held_bytes = 0  # by the requests in flight (one event loop: no lock)
        self.held_by_client: Counter[str] = Counter()  # the same, by client (`_client_of`)

    def _over_held(self, more: int, client: str, own: int) -> OverloadedError | None:
        """The refusal of `more` bytes for a request of `client` that holds `own` already, or None.

        Beside the pool, a client whose other requests in flight hold bytes may not take more than half of it: one
        key's five slow uploads could hold all 512 MiB for as long as it liked, and every other client would get 503.
        A client's only request is judged by the pool alone, so a lone large batch is never refused."""
        if self.max_held_bytes is None:
            return None
        share = self.max_held_bytes // 2
        others_of_client = self.held_by_client[client] - own
        if others_of_client > 0 and self.held_by_client[client] + more > share:
            return OverloadedError(
                f"this client's requests in flight hold {self.held_by_client[client]} bytes of uploads, and this one "
                f"would take them past {share}, half of MAX_UPLOADS_HELD_BYTES; retry once they are answered",
                retry_after_seconds=HELD_UPLOADS_RETRY_SECONDS,
            )
        if self.held_bytes + more <= self.max_held_bytes:
            return None
        # Not how many bytes the others hold: that would tell any client how much other users upload right now.
        return OverloadedError(
            "the uploads in flight would hold more than MAX_UPLOADS_HELD_BYTES with this one; retry later",
            retry_after_seconds=HELD_UPLOADS_RETRY_SECONDS,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default_limit)
        source = self.sources.get(scope["path"] if scope["path"] in self.limits else "")
        at_most = f"request body must be at most {limit} bytes" + (f" ({source})" if source else "")
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            error = PayloadTooLargeError(f"{at_most}; Content-Length is {declared}")
            await reject(scope, receive, send, error)
            return
        client = _client_of(scope)
        busy = self._over_held(int(declared), client, 0) if declared is not None and declared.isdigit() else None
        if busy is not None:
            await reject(scope, receive, send, busy)
            return

        received = held = 0
        response_started = False
        rejected = False

        async def counting_receive() -> Message:
            nonlocal received, held, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                error: ServiceError | None = None
                if received + size > limit:
                    error = PayloadTooLargeError(f"{at_most}; got more")
                else:
                    error = self._over_held(size, client, held)
                received += size
                if error is None:
                    self.held_bytes += size
                    self.held_by_client[client] += size
                    held += size
                elif not response_started:
                    rejected = True
                    await reject(scope, receive, send, error)
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

        known_as = current_client.set(client)  # the budget and the models share their time by it
        try:
            await self.app(scope, counting_receive, guarded_send)
        finally:
            current_client.reset(known_as)
            self.held_bytes -= held
            self.held_by_client[client] -= held
            if self.held_by_client[client] <= 0:
                del self.held_by_client[client]


def _client_of(scope: Scope) -> str:
    """Who a request counts against: its API key's id, else its address's group (`address_group`)."""
    key_id = scope.get("state", {}).get("key_id")
    if key_id:
        return f"key:{key_id}"
    client = scope.get("client")
    return "address:" + (address_group(client[0]) if client else "unknown")


class UploadFormMiddleware:
    """Refuse with 415 a POST to an upload route (`INFERENCE_ENDPOINTS`) whose body is not multipart/form-data,
    before any parser reads it.

    Those routes take files from a form and answer any other body 422 in the end, but Starlette parses a url-encoded
    body field by field first: at LOG_LEVEL=DEBUG python-multipart writes a line per "&", 152 MB of log and an 18-s
    stall of the event loop for a 1 MB body.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in INFERENCE_ENDPOINTS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-type", "")
        media_type = declared.split(";", 1)[0].strip()
        # Every Content-Encoding field: otherwise one of `identity` before one of gzip would hide it.
        problem = _coding_or_boundary_problem(", ".join(headers.getlist("content-encoding")), declared)
        if problem:
            await reject(scope, receive, send, UnsupportedMediaTypeError(problem))
            return
        if media_type.lower() == "multipart/form-data":
            await self.app(scope, receive, send)
            return
        got = media_type if _MEDIA_TYPE.fullmatch(media_type) else "none" if not declared else "a malformed one"
        field = UPLOAD_FORM_FIELDS.get(scope["path"], "file")
        error = UnsupportedMediaTypeError(
            f"the request body must be multipart/form-data, the file{'s' if field == 'files' else ''} in the form "
            f"field `{field}`; its Content-Type is {got}"
        )
        await reject(scope, receive, send, error)


def _coding_or_boundary_problem(content_encoding: str, content_type: str) -> str | None:
    """Why an upload's body cannot be read as it is declared, or None: a Content-Encoding (gzip, br ...) is not
    decoded here, and a Content-Type naming its boundary twice is read by one part of the chain with the first and
    by another with the last."""
    codings = [coding.strip().lower() for coding in content_encoding.split(",") if coding.strip()]
    if any(coding != "identity" for coding in codings):
        said = content_encoding.strip()[:64]
        return f"the request body must be sent as it is, without a Content-Encoding; it says {said}"
    # Parameters as the email package parses them: quoted values kept whole (a `;boundary=` inside another
    # parameter's quotes is not a boundary), `boundary =A` and `boundary*=` read as boundaries.
    parsed = email.message.Message()
    parsed["content-type"] = content_type
    boundaries = [name for name, _ in parsed.get_params(failobj=[])[1:] if name.lower() == "boundary"]
    if len(boundaries) > 1:
        return "the request's Content-Type names its boundary more than once"
    return None


class HeadAsGetMiddleware:
    """Answer HEAD like GET, headers only: HTTP/1.1 servers must (RFC 9110, 9.1), and uptime monitors and load
    balancers probe `/health/live` and `/` with it. FastAPI routes declared for GET answer HEAD with 405.

    The app below sees a copy of the scope that says GET; the server's own scope still says HEAD, so it sends no body
    and expects none (uvicorn checks the body against Content-Length unless the request is HEAD), and logs and
    metrics outside still say HEAD.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        as_get = {**scope, "method": "GET"}  # "state" stays the one dict: request id and error codes are shared
        try:
            await self.app(as_get, receive, send_headers_only)
        finally:
            for key in ROUTING_KEYS:  # what the router found, for the access log and metrics outside
                if key in as_get:
                    scope[key] = as_get[key]
