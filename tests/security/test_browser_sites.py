"""Browser review 29, finding 8: without API keys, any website a user visits could make their browser submit work
to the service on their machine (a multipart POST needs no CORS preflight), and after DNS rebinding read the answers.
Requests of other sites' pages are refused; with ALLOWED_HOSTS, so are other Host names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.middleware import host_name
from app.main import create_app
from tests.conftest import TUMOR_SLICE
from tests.security.conftest import assert_error, security_settings, wait_until_ready


def upload() -> dict:
    return {"file": ("slice.jpg", TUMOR_SLICE.read_bytes(), "image/jpeg")}


@pytest.mark.parametrize("site", ["cross-site", "Cross-Site"])
def test_an_upload_from_another_sites_page_is_refused(client: TestClient, site: str) -> None:
    response = client.post(
        "/v1/predict", files=upload(), headers={"Sec-Fetch-Site": site, "Origin": "http://evil.example"}
    )

    assert_error(response, 403, "cross_site_request")


@pytest.mark.parametrize("site", [None, "same-origin", "same-site", "none"])
def test_programs_and_the_services_own_page_are_answered(client: TestClient, site: str | None) -> None:
    headers = {"Sec-Fetch-Site": site} if site else {}

    response = client.post("/v1/predict", files=upload(), headers=headers)

    assert response.status_code == 200, response.text


def test_reading_from_another_sites_page_is_left_to_the_browser(client: TestClient) -> None:
    """A GET changes nothing, and without CORS headers another site's page cannot read the answer."""
    response = client.get("/v1/models", headers={"Sec-Fetch-Site": "cross-site"})

    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


@pytest.fixture(scope="module")
def named_client(tiny_model_dir: Path) -> Iterator[TestClient]:
    settings = security_settings(tiny_model_dir, allowed_hosts="localhost, 127.0.0.1, ::1")
    with TestClient(create_app(settings), base_url="http://localhost:8000") as test_client:
        wait_until_ready(test_client)
        yield test_client


@pytest.mark.parametrize("host", ["localhost:8000", "LOCALHOST", "127.0.0.1:8000", "[::1]:8000"])
def test_allowed_host_names_are_answered(named_client: TestClient, host: str) -> None:
    response = named_client.post("/v1/predict", files=upload(), headers={"Host": host})

    assert response.status_code == 200, response.text


@pytest.mark.parametrize("host", ["evil.example:8000", "evil.example", "localhost.evil.example", ""])
def test_a_host_name_not_allowed_is_refused(named_client: TestClient, host: str) -> None:
    """DNS rebinding: evil.example re-pointed at 127.0.0.1 is same-origin to the browser, but says evil.example."""
    response = named_client.post("/v1/predict", files=upload(), headers={"Host": host})

    assert_error(response, 403, "host_not_allowed")
    assert response.json()["error"]["message"] == "the Host header names no host in ALLOWED_HOSTS"
    assert named_client.get("/v1/models", headers={"Host": host}).status_code == 403


@pytest.mark.parametrize("hosts", [("localhost", "evil.example"), ("evil.example", "localhost")])
def test_two_host_headers_are_refused_whichever_comes_first(named_client: TestClient, hosts: tuple[str, str]) -> None:
    """Attack review 34, finding 4: the check read the first of two Host headers, a proxy may route by the last.
    (`brain-tumor serve` refuses them earlier, at the protocol; a plain uvicorn reaches this check.)"""
    headers = [("Host", host) for host in hosts]

    response = named_client.post("/v1/predict", files=upload(), headers=headers)

    assert_error(response, 403, "host_not_allowed")
    assert "more than one Host header" in response.json()["error"]["message"]


def test_health_probes_and_the_page_answer_any_host_name(named_client: TestClient) -> None:
    """The container's health check calls 127.0.0.1 whatever ALLOWED_HOSTS says; the page holds no data."""
    assert named_client.get("/health/live", headers={"Host": "evil.example"}).status_code == 200
    assert named_client.get("/", headers={"Host": "evil.example"}).status_code == 200


SCRAPER_KEY = "scraper-key-0123456789abcdef"


def test_metrics_answer_a_keyed_scrape_by_any_host_name_but_nothing_else_does(tiny_model_dir: Path) -> None:
    """Review 69 F2: Prometheus scrapes each replica by its own address (Host: 10.244.1.17:8000), which no
    ALLOWED_HOSTS entry names: GET /metrics got 403 in the Kubernetes manifests. With keys set it needs one, so it
    is read by any name; other routes, and anything but a read of it, are still held to the names."""
    settings = security_settings(tiny_model_dir, allowed_hosts="localhost", api_keys=f"prometheus:{SCRAPER_KEY}")
    keyed = {"Host": "10.244.1.17:8000", "X-API-Key": SCRAPER_KEY}
    with TestClient(create_app(settings), base_url="http://localhost:8000") as client:
        assert client.get("/metrics", headers=keyed).status_code == 200
        assert client.get("/metrics", headers={"Host": "10.244.1.17:8000"}).status_code == 401
        assert client.post("/metrics", headers=keyed).status_code == 403
        assert client.get("/v1/models", headers=keyed).status_code == 403


def test_without_keys_metrics_keep_the_host_check(named_client: TestClient) -> None:
    """Attack review 62 F5: with ALLOWED_HOSTS and no keys (Compose's default), a DNS-rebound page was refused the
    API but read /metrics, and learnt from its counts when the user analysed a slice and whether it was positive."""
    refused = named_client.get("/metrics", headers={"Host": "evil.example", "Sec-Fetch-Site": "same-origin"})

    assert_error(refused, 403, "host_not_allowed")
    assert named_client.get("/metrics", headers={"Host": "localhost:8000"}).status_code == 200


def test_allowed_hosts_is_read_from_a_comma_separated_variable(tiny_model_dir: Path) -> None:
    settings = security_settings(tiny_model_dir, allowed_hosts="localhost, , 127.0.0.1,")

    assert settings.allowed_hosts == ["localhost", "127.0.0.1"]


@pytest.mark.parametrize(
    ("header", "name"),
    [("localhost:8000", "localhost"), ("[::1]:8000", "::1"), ("[::1]", "::1"), ("Example.ORG", "example.org")],
)
def test_host_name_leaves_out_the_port(header: str, name: str) -> None:
    assert host_name(header) == name
