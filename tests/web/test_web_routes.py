"""GET / and /static/*: the page's files, their media types and security headers (no models needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.routes.web import CONTENT_SECURITY_POLICY
from app.settings import Settings
from tests.web.conftest import create_app_with_page


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    # Not entered as a context manager: the lifespan (model loading) is not needed to serve files.
    yield TestClient(create_app_with_page(Settings(model_dir=tmp_path)))


def test_read_index_serves_page_with_strict_csp(client: TestClient) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'self'; img-src 'self' data: blob:" in CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert 'id="file-input"' in response.text
    assert "Research use only — not for clinical diagnosis" in response.text


@pytest.mark.parametrize(
    ("path", "media_type"),
    [("/static/app.js", "text/javascript; charset=utf-8"), ("/static/style.css", "text/css; charset=utf-8")],
)
def test_read_asset_serves_file_with_media_type(client: TestClient, path: str, media_type: str) -> None:
    response = client.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert len(response.content) > 0


@pytest.mark.parametrize("name", ["index.html", "missing.js", "..%2Fweb.py"])
def test_read_asset_rejects_names_outside_allow_list(client: TestClient, name: str) -> None:
    response = client.get(f"/static/{name}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_read_asset_names_the_missing_file(client: TestClient) -> None:
    response = client.get("/static/missing.js")

    assert response.json() == {"error": {"code": "not_found", "message": "no static file 'missing.js'"}}


def test_page_routes_are_not_in_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    assert "/" not in paths
    assert not any(path.startswith("/static") for path in paths)


@pytest.mark.parametrize("path", ["/static/nope.js", "/openapi.json", "/no/such/path", "/health/live", "/metrics"])
def test_every_answer_is_marked_nosniff_once(client: TestClient, path: str) -> None:
    """attack26 finding 12: JSON answers, errors that echo the path among them (`no static file 'nope.js'`), had no
    X-Content-Type-Options; only the page, its files and the docs did."""
    response = client.get(path)

    assert response.headers.get_list("x-content-type-options") == ["nosniff"]
    assert client.get("/").headers.get_list("x-content-type-options") == ["nosniff"]  # set by its route: not twice
