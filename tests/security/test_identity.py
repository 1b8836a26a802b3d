"""Who is asking: every refusal is audited with path, peer and reason; failed keys are throttled per address;
X-Forwarded-For is believed only from configured proxies; request ids are the server's own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.security.conftest import MAX_UPLOAD_BYTES, assert_error, security_settings, wait_until_ready

KEY = "identity-key-0c9b8a7f6e5d4c3b2a19"
PEER = ("203.0.113.7", 40000)
PROXY = ("10.0.0.5", 40000)


def audit_entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def keyed_app(tiny_model_dir: Path, audit_path: Path):
    settings = security_settings(
        tiny_model_dir,
        api_keys=f"alice:{KEY}",
        audit_log_file=audit_path,
        auth_failures_per_minute=3,
        rate_limit_per_minute=30,
        max_header_count=20,
    )
    app = create_app(settings)
    with TestClient(app, client=PEER) as client:
        wait_until_ready(client)
        yield app


@pytest.fixture
def keyed_client(keyed_app) -> Iterator[TestClient]:
    yield TestClient(keyed_app, client=PEER)


def test_every_refusal_is_audited_with_path_peer_and_reason(keyed_client: TestClient, audit_path: Path):
    key = {"X-API-Key": KEY}
    refusals = [
        (keyed_client.get("/v1/models"), 401, "unauthorized", "/v1/models"),
        (
            keyed_client.post(
                "/v1/predict",
                content=b"x",
                headers={**key, "Content-Length": str(MAX_UPLOAD_BYTES * 4), "Content-Type": "image/png"},
            ),
            413,
            "payload_too_large",
            "/v1/predict",
        ),
        (
            keyed_client.post("/v1/predict", files={"file": ("a.gif", b"GIF89a", "image/gif")}, headers=key),
            415,
            "unsupported_media_type",
            "/v1/predict",
        ),
        (
            keyed_client.get("/v1/models", headers={**key, **{f"X-Filler-{n}": "1" for n in range(30)}}),
            431,
            "headers_too_large",
            "/v1/models",
        ),
        (keyed_client.get("/no/such/path", headers=key), 404, None, None),  # not a refusal of who or how much
    ]
    for response, status, code, _ in refusals:
        assert response.status_code == status, response.text
        if code is not None:
            assert_error(response, status, code)

    entries = {entry["request_id"]: entry for entry in audit_entries(audit_path)}
    for response, status, code, path in refusals:
        entry = entries.get(response.headers["X-Request-ID"])
        if code is None:
            assert entry is None
            continue
        assert entry is not None, f"no audit line for the {status}"
        assert (entry["status"], entry["path"], entry["peer"], entry["client"]) == (status, path, PEER[0], PEER[0])
        assert entry["outcome"] == {"error": code}


def test_an_upload_refused_before_routing_is_audited_under_its_route(keyed_client: TestClient, audit_path: Path):
    """Ops review 44 F5: the 415 for a body that is no form and the 413 were audited as endpoint "unmatched"."""
    key = {"X-API-Key": KEY}
    refused = [
        keyed_client.post("/v1/predict", json={}, headers=key),
        keyed_client.post(
            "/v1/predict/batch",
            content=b"x",
            headers={**key, "Content-Length": str(MAX_UPLOAD_BYTES * 400), "Content-Type": "multipart/form-data"},
        ),
    ]
    assert [response.status_code for response in refused] == [415, 413]

    entries = {entry["request_id"]: entry for entry in audit_entries(audit_path)}
    audited = [entries[response.headers["X-Request-ID"]] for response in refused]
    assert [(entry["endpoint"], entry["path"]) for entry in audited] == [
        ("/v1/predict", "/v1/predict"),
        ("/v1/predict/batch", "/v1/predict/batch"),
    ]


def test_failed_keys_are_throttled_per_address(keyed_app, audit_path: Path):
    guesser = TestClient(keyed_app, client=PEER)
    neighbour = TestClient(keyed_app, client=("198.51.100.20", 40000))
    for guess in ("a", "b", "c"):
        assert_error(guesser.get("/v1/models", headers={"X-API-Key": guess}), 401, "unauthorized")

    refused = guesser.get("/v1/models", headers={"X-API-Key": "d"})
    assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Past the budget the right key is refused too, so a guess that hits tells the guesser nothing.
    assert_error(guesser.get("/v1/models", headers={"X-API-Key": KEY}), 429, "rate_limited")
    # Another address is not punished for it.
    assert neighbour.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200

    throttled = [entry for entry in audit_entries(audit_path) if entry["status"] == 429]
    assert len(throttled) == 2 and all(entry["peer"] == PEER[0] for entry in throttled)


def test_failed_keys_from_one_ipv6_subscriber_share_one_budget(keyed_app):
    """Attack review 44 F7: each of 200 addresses guessed without a 429; an IPv6 subscriber holds a /64 of them."""
    guesses = [
        TestClient(keyed_app, client=(f"2001:db8:0:1::{index:x}", 40000)).get("/v1/models", headers={"X-API-Key": "x"})
        for index in range(1, 5)
    ]

    assert [guess.status_code for guess in guesses] == [401, 401, 401, 429]
    other_subscriber = TestClient(keyed_app, client=("2001:db8:0:2::1", 40000))
    assert other_subscriber.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200


def test_requests_without_a_key_do_not_lock_the_address_out(keyed_app):
    """A browser opening /docs, /openapi.json and /metrics sends no key: each is a 401, none of them a guess."""
    browser = TestClient(keyed_app, client=PEER)
    for path in ("/docs", "/openapi.json", "/metrics", "/v1/models", "/v1/models"):
        assert_error(browser.get(path), 401, "unauthorized")
    assert_error(browser.get("/v1/models", headers={"X-API-Key": ""}), 401, "unauthorized")

    assert browser.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200


def test_request_id_is_the_servers_and_the_clients_is_kept_apart(keyed_client: TestClient, audit_path: Path):
    headers = {"X-API-Key": KEY, "X-Request-ID": "same-id"}
    upload = {"file": ("a.gif", b"GIF89a", "image/gif")}
    first = keyed_client.post("/v1/predict", files=upload, headers=headers)
    second = keyed_client.post("/v1/predict", files=upload, headers=headers)

    ids = [first.headers["X-Request-ID"], second.headers["X-Request-ID"]]
    assert len(set(ids)) == 2 and "same-id" not in ids
    entries = audit_entries(audit_path)
    assert [entry["request_id"] for entry in entries] == ids
    assert [entry["client_request_id"] for entry in entries] == ["same-id", "same-id"]


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "client"),
    [
        ([], ("127.0.0.1", 1), "198.51.100.1", "127.0.0.1"),  # default: nobody's header is believed, loopback either
        (["10.0.0.5"], ("127.0.0.1", 1), "198.51.100.1", "127.0.0.1"),  # not a configured proxy
        (["10.0.0.5"], PROXY, "198.51.100.1", "198.51.100.1"),
        (["10.0.0.0/8"], PROXY, "198.51.100.1, 10.0.0.9", "198.51.100.1"),  # a chain of trusted proxies
        (["10.0.0.5"], PROXY, "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # what the client wrote itself is ignored
        (["10.0.0.5"], PROXY, "not-an-address", "10.0.0.5"),
        (["10.0.0.0/8"], PROXY, "10.1.2.3", "10.1.2.3"),  # a client inside the proxy's network (nginx.conf's case)
        # Attack review 44: entries with a port, as some load balancers write them, and an IPv4-mapped address.
        (["10.0.0.5"], PROXY, "203.0.113.7:4711", "203.0.113.7"),
        (["10.0.0.5"], PROXY, "[2001:db8::7]:443", "2001:db8::7"),
        (["10.0.0.5"], PROXY, "::ffff:203.0.113.7", "203.0.113.7"),
    ],
    ids=[
        "default",
        "untrusted-peer",
        "trusted-proxy",
        "proxy-chain",
        "forged-left-entry",
        "malformed",
        "all-trusted",
        "ipv4-with-port",
        "ipv6-with-port",
        "ipv4-mapped",
    ],
)
def test_forwarded_for_is_believed_only_from_trusted_proxies(
    tiny_model_dir: Path, audit_path: Path, trusted: list[str], peer: tuple, forwarded: str, client: str
):
    settings = security_settings(tiny_model_dir, audit_log_file=audit_path, trusted_proxies=",".join(trusted))
    with TestClient(create_app(settings), client=peer) as test_client:
        wait_until_ready(test_client)
        response = test_client.post(
            "/v1/predict", files={"file": ("a.gif", b"GIF89a", "image/gif")}, headers={"X-Forwarded-For": forwarded}
        )
    assert response.status_code == 415
    [entry] = audit_entries(audit_path)
    assert (entry["client"], entry["peer"]) == (client, peer[0])


def test_rotating_forwarded_for_does_not_escape_the_rate_limit(tiny_model_dir: Path):
    settings = security_settings(tiny_model_dir, rate_limit_per_minute=2)
    with TestClient(create_app(settings), client=("127.0.0.1", 1)) as client:
        wait_until_ready(client)
        answers = [
            client.get("/v1/models", headers={"X-Forwarded-For": f"198.51.100.{index}"}).status_code
            for index in range(3)
        ]
    assert answers == [200, 200, 429]


def test_trusted_proxies_setting_refuses_what_is_no_address(tiny_model_dir: Path):
    # The field and the item it cannot read; `get_settings` names it TRUSTED_PROXIES
    # (tests/cli/test_cli_user_errors.py).
    with pytest.raises(ValueError, match=r"(?s)trusted_proxies.*'proxy.internal' is not an IP address or network"):
        security_settings(tiny_model_dir, trusted_proxies="10.0.0.5,proxy.internal")
