"""API keys, rate limit and the audit log: every protected endpoint refuses a missing or wrong key, keys never reach
a log (their ids do), and the audit log holds one line per inference with hashes, never pixels or file names."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import cli
from app.logging_config import JsonFormatter
from app.main import create_app
from app.security import hash_key
from tests.security.conftest import assert_error, security_settings, wait_until_ready

PLAIN_KEY = "plain-key-5f0c1d9e8b7a6f4e3d2c1b0a"  # given in API_KEYS
FILE_KEY = "file-key-a1b2c3d4e5f60718293a4b5c6d"  # only its sha256 is in API_KEYS_FILE
PATIENT_FILE_NAME = "DOE^JOHN.png"
AUDIT_FIELDS = {
    "time",
    "request_id",
    "client_request_id",
    "endpoint",
    "path",
    "status",
    "key_id",
    "client",
    "peer",
    "input_sha256",
    "models",
    "outcome",
}


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Everything logged at DEBUG and above, rendered as the service renders it (JSON lines)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def keyed_client(tiny_model_dir: Path, tmp_path: Path, audit_path: Path, captured_logs) -> Iterator[TestClient]:
    keys_file = tmp_path / "api_keys"
    keys_file.write_text(f"# ops team\nops:{hash_key(FILE_KEY)}\n")
    settings = security_settings(
        tiny_model_dir, api_keys=f"alice:{PLAIN_KEY}", api_keys_file=keys_file, audit_log_file=audit_path
    )
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        yield client


def protected_endpoints(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every endpoint of the app but /health/*, read from the app itself.

    FastAPI 0.165 keeps included routers nested in `app.routes` (as private `_IncludedRouter` objects), so the
    operations come from the app's own OpenAPI document and the top-level routes (schema and docs pages) from
    `app.routes`.
    """
    endpoints = {
        (method.upper(), path) for path, operations in client.app.openapi()["paths"].items() for method in operations
    }
    for route in client.app.routes:
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD":
                endpoints.add((method, route.path))
    return sorted(endpoint for endpoint in endpoints if not endpoint[1].startswith("/health/"))


def test_protected_endpoints_cover_every_resource(keyed_client: TestClient):
    endpoints = protected_endpoints(keyed_client)
    assert {("POST", "/v1/predict"), ("POST", "/v1/predict/batch"), ("POST", "/v1/overlay")} <= set(endpoints)
    assert {("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs")} <= set(endpoints)
    assert all("{" not in path for _, path in endpoints)  # no path parameters to fill in


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": ""},
        {"X-API-Key": "wrong"},
        {"X-API-Key": PLAIN_KEY[:-1]},
        {"X-API-Key": PLAIN_KEY + " "},
        {"X-API-Key": "alice"},  # the key id is no key
        {"X-API-Key": hash_key(FILE_KEY)},  # nor is the hash stored in the keys file
        {"Authorization": f"Bearer {PLAIN_KEY}"},  # the key belongs in X-API-Key only
    ],
    ids=["none", "empty", "wrong", "truncated", "padded", "key-id", "stored-hash", "bearer"],
)
def test_every_protected_endpoint_refuses_missing_or_wrong_key(keyed_client: TestClient, headers: dict):
    for method, path in protected_endpoints(keyed_client):
        response = keyed_client.request(method, path, headers=headers)
        assert_error(response, 401, "unauthorized")
        assert PLAIN_KEY not in response.text


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [("GET", "/v1/models", {}), ("GET", "/metrics", {}), ("POST", "/v1/predict", {"X-API-Key": "wrong"})],
    ids=["route", "metrics", "wrong-key"],
)
def test_unauthorized_names_the_key_header_in_www_authenticate(
    keyed_client: TestClient, method: str, path: str, headers: dict
):
    """API review 48 F6: RFC 9110 15.5.2 requires WWW-Authenticate on a 401; clients key their auth handling on it."""
    response = keyed_client.request(method, path, headers=headers)

    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == 'ApiKey header="X-API-Key"'


@pytest.mark.parametrize("second", [PLAIN_KEY, "wrong"], ids=["same-key-twice", "valid-then-wrong"])
def test_two_key_headers_are_refused_not_read_first_wins(keyed_client: TestClient, second: str):
    """A proxy that reads the last header and a service that reads the first would disagree on who is asking."""
    response = keyed_client.get("/v1/models", headers=[("X-API-Key", PLAIN_KEY), ("X-API-Key", second)])

    assert_error(response, 401, "unauthorized")
    assert "exactly one X-API-Key header" in response.json()["error"]["message"]
    assert keyed_client.get("/v1/models", headers={"X-API-Key": PLAIN_KEY}).status_code == 200


def test_health_endpoints_need_no_key(keyed_client: TestClient):
    assert keyed_client.get("/health/live").status_code == 200
    assert keyed_client.get("/health/ready").status_code == 200


@pytest.mark.parametrize("key", [PLAIN_KEY, FILE_KEY], ids=["API_KEYS", "API_KEYS_FILE"])
def test_valid_key_reaches_every_endpoint(keyed_client: TestClient, good_jpeg: bytes, key: str):
    headers = {"X-API-Key": key}
    for path in ("/v1/models", "/metrics", "/openapi.json", "/docs", "/redoc"):
        assert keyed_client.get(path, headers=headers).status_code == 200, path
    upload = {"file": ("slice.jpg", good_jpeg, "image/jpeg")}
    assert keyed_client.post("/v1/predict", files=upload, headers=headers).status_code == 200
    assert keyed_client.post("/v1/overlay", files=upload, headers=headers).status_code == 200
    batch = [("files", ("a.jpg", good_jpeg, "image/jpeg"))] * 2
    assert keyed_client.post("/v1/predict/batch", files=batch, headers=headers).status_code == 200


def test_keys_never_reach_the_logs_but_their_ids_do(
    keyed_client: TestClient, good_jpeg: bytes, captured_logs: io.StringIO, audit_path: Path
):
    upload = {"file": (PATIENT_FILE_NAME, good_jpeg, "image/png")}
    for key in (PLAIN_KEY, FILE_KEY, PLAIN_KEY[:-1]):
        keyed_client.post("/v1/predict", files=upload, headers={"X-API-Key": key})
        keyed_client.get("/v1/models", headers={"X-API-Key": key})
    logs = captured_logs.getvalue() + audit_path.read_text()
    for secret in (PLAIN_KEY, FILE_KEY, PLAIN_KEY[:-1], hash_key(PLAIN_KEY)):
        assert secret not in logs
    access = [json.loads(line) for line in captured_logs.getvalue().splitlines() if '"logger": "app.access"' in line]
    assert {entry.get("key_id") for entry in access} >= {"alice", "ops"}
    assert any(entry["status"] == 401 and "key_id" not in entry for entry in access)


def test_audit_log_has_one_line_per_inference_without_patient_data(
    keyed_client: TestClient, good_jpeg: bytes, captured_logs: io.StringIO, audit_path: Path
):
    headers = {"X-API-Key": FILE_KEY}
    upload = {"file": (PATIENT_FILE_NAME, good_jpeg, "image/png")}
    answers = [
        keyed_client.post("/v1/predict", files=upload, headers=headers),
        keyed_client.post("/v1/overlay", files=upload, headers=headers),
        keyed_client.post(
            "/v1/predict/batch", files=[("files", (PATIENT_FILE_NAME, good_jpeg, "image/png"))] * 2, headers=headers
        ),
        keyed_client.post("/v1/predict", files={"file": (PATIENT_FILE_NAME, b"GIF89a", "image/gif")}, headers=headers),
        keyed_client.post("/v1/predict", files=upload),  # refused: no key
    ]
    keyed_client.get("/v1/models", headers=headers)  # no inference: no audit line
    assert [answer.status_code for answer in answers] == [200, 200, 200, 415, 401]

    lines = audit_path.read_text().splitlines()
    assert len(lines) == len(answers)
    entries = [json.loads(line) for line in lines]
    # The request refused for want of a key never reached a route: its line names the path, the peer, the reason.
    refused = entries.pop()
    answers.pop()
    assert set(refused) == AUDIT_FIELDS
    assert (refused["status"], refused["path"], refused["peer"]) == (401, "/v1/predict", "testclient")
    assert refused["outcome"] == {"error": "unauthorized"} and refused["key_id"] is None
    digest = hashlib.sha256(good_jpeg).hexdigest()
    for entry, answer in zip(entries, answers, strict=True):
        assert set(entry) == AUDIT_FIELDS
        assert entry["request_id"] == answer.headers["X-Request-ID"]
        assert entry["status"] == answer.status_code
        assert entry["client"] == "testclient"
        assert entry["time"].endswith("+00:00")
        assert len(json.dumps(entry)) < 1024, "no pixel data, no masks"
    assert [entry["key_id"] for entry in entries] == ["ops"] * 4
    assert [entry["input_sha256"] for entry in entries[:3]] == [[digest], [digest], [digest, digest]]
    assert entries[3]["input_sha256"] == [hashlib.sha256(b"GIF89a").hexdigest()]
    assert entries[0]["models"] == {
        "classifier": "tumor_classifier@0.0.0-test",
        "segmenter": "tumor_segmenter@0.0.0-test",
    }
    for entry in entries[:3]:  # counts or flags only
        assert entry["outcome"] and all(isinstance(value, bool | int) for value in entry["outcome"].values())
    assert "unsupported_media_type" in json.dumps(entries[3]["outcome"])
    logs = captured_logs.getvalue() + audit_path.read_text()
    assert "DOE" not in logs and "JOHN" not in logs
    assert not any("audit" in json.loads(line)["logger"] for line in captured_logs.getvalue().splitlines())


@pytest.fixture
def rate_limited_client(tiny_model_dir: Path) -> Iterator[TestClient]:
    settings = security_settings(tiny_model_dir, api_keys=f"alice:{PLAIN_KEY},bob:{FILE_KEY}", rate_limit_per_minute=2)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        yield client


def test_rate_limit_answers_429_with_retry_after(rate_limited_client: TestClient):
    alice = {"X-API-Key": PLAIN_KEY}
    assert [rate_limited_client.get("/v1/models", headers=alice).status_code for _ in range(2)] == [200, 200]
    refused = rate_limited_client.get("/v1/models", headers=alice)
    assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Per key: another key still has its own budget; health probes are never limited.
    assert rate_limited_client.get("/v1/models", headers={"X-API-Key": FILE_KEY}).status_code == 200
    assert all(rate_limited_client.get("/health/live").status_code == 200 for _ in range(5))
    # A wrong key is refused as unauthorized before it can spend any key's budget.
    assert_error(rate_limited_client.get("/v1/models", headers={"X-API-Key": "nope"}), 401, "unauthorized")


def test_requests_without_a_valid_key_spend_their_address_budget(rate_limited_client: TestClient):
    """attack23b: requests without a key were never limited; 905 a second each wrote their log lines."""
    statuses = [rate_limited_client.get("/v1/models").status_code for _ in range(3)]

    assert statuses == [401, 401, 429]
    assert rate_limited_client.get("/v1/models", headers={"X-API-Key": PLAIN_KEY}).status_code == 200


def test_hash_key_command_prints_a_keys_file_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(FILE_KEY + "\n"))
    assert cli.main(["hash-key", "ops"]) == 0
    assert capsys.readouterr().out.strip() == f"ops:{hash_key(FILE_KEY)}"
