"""Third attack round, from the outside: what the earlier rounds did not cover.

Findings fixed here, one test each:
- a trailing slash was answered with a redirect to an absolute URL built from the client's `Host` header
  (`/health/live/` with `Host: evil.example` -> `Location: http://evil.example/health/live`), without a key;
- a request refused by the server itself (a body that stalls, headers too slow or too large) was missing from the
  audit log, or logged with what the app answered to the disconnect (400 `bad_request`) instead of the client's 408;
- a WebSocket upgrade request was handed to the WebSocket handshake, outside the key check, the JSON errors and the
  audit log (a plain-text 403), although no route takes a WebSocket.

The round's fourth finding, formulas in `brain-tumor predict --format csv`, is tested in
`tests/cli/test_predict_output.py`.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.security.conftest import ServerProcess, assert_error, security_settings, start_server

KEY = "round3-key-5f4e3d2c1b0a"
HEADER_TIMEOUT_SECONDS = 1.0
BODY_TIMEOUT_SECONDS = 1.0
MAX_HEADER_BYTES = 4096


# -- Host header: no redirect built from it ------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_client(tiny_model_dir: Path) -> Iterator[TestClient]:
    """The app without its lifespan: routing and middleware only, no models needed."""
    app = create_app(security_settings(tiny_model_dir, api_keys=f"alice:{KEY}"))
    yield TestClient(app, base_url="http://evil.example", follow_redirects=False)


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/health/live/", {}),
        ("GET", "/health/ready/", {}),
        ("GET", "/static/app.js/", {}),
        ("GET", "/v1/models/", {"X-API-Key": KEY}),
        ("POST", "/v1/predict/", {"X-API-Key": KEY}),
    ],
)
def test_a_trailing_slash_is_not_redirected_to_the_clients_host(
    keyed_client: TestClient, method: str, path: str, headers: dict[str, str]
):
    response = keyed_client.request(method, path, headers={"Host": "evil.example", **headers})
    assert "location" not in response.headers, response.headers
    assert_error(response, 404, "not_found")


# -- Refusals made by the server before (or instead of) the app are audited as sent --------------------------


@pytest.fixture(scope="module")
def audited_server(tiny_model_dir: Path, tmp_path_factory) -> Iterator[tuple[ServerProcess, Path]]:
    log_dir = tmp_path_factory.mktemp("round3_server")
    audit_path = log_dir / "audit.jsonl"
    server = start_server(
        tiny_model_dir,
        log_dir,
        API_KEYS=f"alice:{KEY}",
        AUDIT_LOG_FILE=str(audit_path),
        HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT_SECONDS),
        BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT_SECONDS),
        MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
    )
    yield server, audit_path
    server.stop()


def exchange(server: ServerProcess, request: bytes, timeout: float = 10.0) -> bytes:
    """Send `request` and read until the server closes the connection."""
    host, port = server.base_url.removeprefix("http://").split(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def wait_for_entries(audit_path: Path, count: int, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        lines = audit_path.read_text().splitlines() if audit_path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)


def test_a_stalled_upload_is_audited_and_logged_as_the_408_it_got(audited_server: tuple[ServerProcess, Path]):
    server, audit_path = audited_server
    before = len(wait_for_entries(audit_path, 0, timeout=0))
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"X-API-Key: {KEY}\r\nContent-Length: 100000\r\n\r\n--b\r\n"
    ).encode()
    answer = exchange(server, head)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]

    entry = wait_for_entries(audit_path, before + 1)[before]
    assert (entry["status"], entry["endpoint"], entry["outcome"]) == (408, "/v1/predict", {"error": "request_timeout"})
    access = [
        json.loads(line)
        for line in server.stderr().splitlines()
        if line.startswith("{") and json.loads(line).get("request_id") == entry["request_id"]
    ]
    assert [(line["status"], line["error_code"]) for line in access] == [(408, "request_timeout")]


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a", 408, "request_timeout"),
        (b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * MAX_HEADER_BYTES, 431, "headers_too_large"),
    ],
    ids=["slow_headers", "huge_headers"],
)
def test_a_refusal_before_the_app_leaves_an_audit_line(
    audited_server: tuple[ServerProcess, Path], request_bytes: bytes, status: int, code: str
):
    server, audit_path = audited_server
    before = len(wait_for_entries(audit_path, 0, timeout=0))
    answer = exchange(server, request_bytes)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]

    entries = wait_for_entries(audit_path, before + 1)[before:]
    assert len(entries) == 1, entries
    entry = entries[0]
    assert (entry["status"], entry["peer"], entry["client"]) == (status, "127.0.0.1", "127.0.0.1")
    assert entry["outcome"] == {"error": code}
    assert len(entry["request_id"]) == 32


def test_a_websocket_upgrade_is_answered_as_plain_http(audited_server: tuple[ServerProcess, Path]):
    """It got a plain-text 403 from the WebSocket handshake, outside the key check and the audit log."""
    server, audit_path = audited_server
    before = len(wait_for_entries(audit_path, 0, timeout=0))
    upgrade = (
        b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    refused = exchange(server, upgrade + b"Connection: close\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 401 "), refused[:200]
    assert json.loads(refused.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "unauthorized"
    assert [entry["outcome"] for entry in wait_for_entries(audit_path, before + 1)[before:]] == [
        {"error": "unauthorized"}
    ]
    served = exchange(server, upgrade + f"X-API-Key: {KEY}\r\nConnection: close\r\n\r\n".encode())
    assert served.startswith(b"HTTP/1.1 200 "), served[:200]
