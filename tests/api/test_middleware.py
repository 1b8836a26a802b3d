"""`app.api.middleware` on a bare Starlette app: request ids, API keys and body limits, each with the whole answer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from app.api.middleware import AccessControlMiddleware, RequestContextMiddleware, UploadLimitMiddleware, is_public
from app.metrics import ServiceMetrics
from app.security import ApiKeyStore


async def echo(request: Request) -> PlainTextResponse:
    try:
        body = await request.body()
    except ClientDisconnect:  # the upload limit cut the body off; this answer is dropped
        return PlainTextResponse("cut off", status_code=499)
    return PlainTextResponse(f"{len(body)} bytes, key {getattr(request.state, 'key_id', None)}")


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = Starlette(routes=[Route("/v1/predict", echo, methods=["POST"]), Route("/health/live", echo)])
    app.add_middleware(UploadLimitMiddleware, default_limit=10)
    app.add_middleware(AccessControlMiddleware, keys=ApiKeyStore.from_settings([], None))
    app.add_middleware(RequestContextMiddleware, metrics=ServiceMetrics())
    with TestClient(app) as test_client:
        yield test_client


def test_the_request_id_is_made_by_the_server_even_when_the_client_offers_one(client: TestClient) -> None:
    response = client.post("/v1/predict", content=b"abc", headers={"X-Request-ID": "client-1.2_3"})

    assert response.status_code == 200
    # A client-chosen id could repeat and collide in the audit log; the client's id is kept apart (audited).
    assert len(response.headers["X-Request-ID"]) == 32
    assert response.headers["X-Request-ID"] != "client-1.2_3"
    assert response.text == "3 bytes, key None"


def test_a_request_id_that_is_no_plain_token_is_replaced(client: TestClient) -> None:
    response = client.post("/v1/predict", content=b"abc", headers={"X-Request-ID": "bad id\twith spaces"})

    assert len(response.headers["X-Request-ID"]) == 32
    assert response.headers["X-Request-ID"] != "bad id\twith spaces"


def test_a_body_over_the_declared_limit_is_refused_before_it_is_read(client: TestClient) -> None:
    response = client.post("/v1/predict", content=b"x" * 11)

    assert response.status_code == 413
    assert response.json() == {
        "error": {"code": "payload_too_large", "message": "request body must be at most 10 bytes; Content-Length is 11"}
    }
    assert "X-Request-ID" in response.headers


def test_a_streamed_body_is_cut_off_at_the_limit(client: TestClient) -> None:
    response = client.post("/v1/predict", content=iter([b"x" * 6, b"x" * 6]))

    assert response.status_code == 413
    assert response.json() == {
        "error": {"code": "payload_too_large", "message": "request body must be at most 10 bytes; got more"}
    }


def test_with_keys_a_request_without_a_valid_key_is_refused() -> None:
    app = Starlette(routes=[Route("/v1/predict", echo, methods=["POST"]), Route("/health/live", echo)])
    app.add_middleware(AccessControlMiddleware, keys=ApiKeyStore.from_settings(["lab:lab-key-7f3a9c2e5b8d1f40"], None))
    with TestClient(app) as client:
        refused = client.post("/v1/predict", content=b"a")
        wrong = client.post("/v1/predict", content=b"a", headers={"X-API-Key": "nope"})
        accepted = client.post("/v1/predict", content=b"a", headers={"X-API-Key": "lab-key-7f3a9c2e5b8d1f40"})
        public = client.get("/health/live")

    assert refused.status_code == wrong.status_code == 401
    assert refused.json() == {"error": {"code": "unauthorized", "message": "a valid X-API-Key header is required"}}
    assert accepted.status_code == 200 and accepted.text == "1 bytes, key lab"
    assert public.status_code == 200


@pytest.mark.parametrize(
    ("path", "public"),
    [("/health/ready", True), ("/", True), ("/static/app.js", True), ("/v1/predict", False), ("/metrics", False)],
)
def test_is_public(path: str, public: bool) -> None:
    assert is_public(path) is public


@pytest.mark.parametrize(("offered", "kept"), [(b"client-1", True), (b"client-1\n", False), (b"x" * 65, False)])
def test_only_a_plain_token_is_kept_as_the_clients_request_id(offered: bytes, kept: bool) -> None:
    """The whole header must be the token: a trailing newline (which `$` lets through) would reach the log lines."""
    seen: dict = {}

    async def inner(scope, receive, send) -> None:
        seen.update(scope["state"])
        await PlainTextResponse("ok")(scope, receive, send)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        pass

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/health/live",
        "raw_path": b"/health/live",
        "query_string": b"",
        "headers": [(b"x-request-id", offered)],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
    }
    asyncio.run(RequestContextMiddleware(inner, metrics=ServiceMetrics())(scope, receive, send))

    assert ("client_request_id" in seen) is kept


def test_a_body_that_would_take_the_uploads_held_past_their_limit_waits_its_turn() -> None:
    """Attack review 32: 12 batches of 114 MB at once, each file tiny to decode, held +1.76 GiB; nothing refused.
    The bytes requests in flight hold together are capped: past the cap a request gets 503 with Retry-After, whether
    it declares its length or streams its body, and is taken once the others have answered."""
    release = asyncio.Event()

    async def held(request: Request) -> PlainTextResponse:
        try:
            body = await request.body()
        except ClientDisconnect:  # refused while streaming; this answer is dropped
            return PlainTextResponse("cut off", status_code=499)
        await release.wait()  # still holding its body, as a batch does until its answer
        return PlainTextResponse(f"{len(body)} bytes")

    app = Starlette(routes=[Route("/v1/predict", held, methods=["POST"])])
    app.add_middleware(UploadLimitMiddleware, default_limit=1000, max_held_bytes=100)

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        other = httpx.ASGITransport(app=app, client=("198.51.100.9", 123))  # another client: the pool, not a share
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
            httpx.AsyncClient(transport=other, base_url="http://test") as other_client,
        ):
            first = asyncio.create_task(other_client.post("/v1/predict", content=b"x" * 60))
            await asyncio.sleep(0.05)  # the first holds its 60 bytes
            declared = await client.post("/v1/predict", content=b"x" * 50)

            async def chunks():
                yield b"x" * 30
                yield b"x" * 30

            streamed = await client.post("/v1/predict", content=chunks())
            release.set()
            answered = await first
            after = await client.post("/v1/predict", content=b"x" * 50)
            return [declared, streamed, answered, after]

    declared, streamed, answered, after = asyncio.run(scenario())

    for refused in (declared, streamed):
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "5"
        error = refused.json()["error"]
        assert error["code"] == "overloaded"
        # Attack review 44 F12: the message gave the bytes the other requests held (here 60), which tells any client
        # how much other users upload.
        assert error["message"] == (
            "the uploads in flight would hold more than MAX_UPLOADS_HELD_BYTES with this one; retry later"
        )
    assert (answered.status_code, answered.text) == (200, "60 bytes")
    assert (after.status_code, after.text) == (200, "50 bytes")


def test_one_client_may_hold_at_most_half_of_the_uploads_held_while_others_come_in() -> None:
    """Attack review 44 F4: one key's slow uploads held the whole pool for as long as it liked; every other client's
    upload got 503. A client's only request is judged by the pool alone."""
    release = asyncio.Event()

    async def held(request: Request) -> PlainTextResponse:
        try:
            body = await request.body()
        except ClientDisconnect:
            return PlainTextResponse("cut off", status_code=499)
        await release.wait()
        return PlainTextResponse(f"{len(body)} bytes")

    app = Starlette(routes=[Route("/v1/predict", held, methods=["POST"])])
    app.add_middleware(UploadLimitMiddleware, default_limit=1000, max_held_bytes=100)

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, list[httpx.Response]]:
        hog = httpx.ASGITransport(app=app, client=("203.0.113.1", 1))
        other = httpx.ASGITransport(app=app, client=("198.51.100.9", 2))
        async with (
            httpx.AsyncClient(transport=hog, base_url="http://test") as hog_client,
            httpx.AsyncClient(transport=other, base_url="http://test") as other_client,
        ):
            first = asyncio.create_task(hog_client.post("/v1/predict", content=b"x" * 30))
            await asyncio.sleep(0.05)
            second = await asyncio.wait_for(hog_client.post("/v1/predict", content=b"x" * 30), 5)  # 60 > 50 (half)
            served = asyncio.create_task(other_client.post("/v1/predict", content=b"x" * 30))
            await asyncio.sleep(0.05)
            release.set()
            answered = [await first, await served]
            lone = await hog_client.post("/v1/predict", content=b"x" * 80)  # alone: the pool's 100 allow it
            return answered, second, [lone]

    answered, refused, (lone,) = asyncio.run(scenario())

    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert refused.json()["error"]["message"].startswith("this client's requests in flight hold 30 bytes")
    assert [(response.status_code, response.text) for response in answered] == [(200, "30 bytes")] * 2
    assert (lone.status_code, lone.text) == (200, "80 bytes")
