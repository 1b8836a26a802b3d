"""Liveness, readiness (before and after the models load), startup refusal on bad model files, and /metrics."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core import model_store
from app.core.model_store import ModelStoreError
from app.inference import Predictor
from app.main import create_app
from app.settings import Settings
from tests.api.service_client import sample_value, upload, wait_until_ready
from tests.conftest import TUMOR_SLICE

STILL_LOADING = {
    "error": {
        "code": "model_unavailable",
        "message": "the models are still loading; retry in a few seconds "
        "(GET /health/ready answers 200 once they are ready)",
    }
}


@pytest.fixture
def copied_model_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "models"))


def gate_model_loading(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make the lifespan's model loading wait until the returned event is set."""
    gate = threading.Event()
    load = Predictor.from_model_dir

    def gated_load(model_dir, observer=None, runtime="keras", manifest=None):
        if not gate.wait(timeout=60):
            raise ModelStoreError("test gate was never opened")
        return load(model_dir, observer, runtime, manifest)

    monkeypatch.setattr(Predictor, "from_model_dir", gated_load)
    return gate


def test_a_passed_probe_is_logged_at_debug_a_failed_one_at_info(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Operations review 68 F12: every probe was an INFO access line, about 4 MB a pod a day before any request."""
    with caplog.at_level("DEBUG", logger="app.access"):
        client.get("/health/live")
        client.get("/health/nothing-here")  # 404: not a probe that passed
        client.get("/v1/models")

    levels = {record.fields["path"]: record.levelname for record in caplog.records if record.name == "app.access"}
    assert levels == {"/health/live": "DEBUG", "/health/nothing-here": "INFO", "/v1/models": "INFO"}


def test_read_liveness(client: TestClient) -> None:
    response = client.get("/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/metrics", "/", "/v1/models"])
def test_head_is_answered_like_get_without_the_body(client: TestClient, path: str) -> None:
    get = client.get(path)
    head = client.head(path)

    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    if "Content-Length" in get.headers:  # a fixed page; /metrics can grow between the two calls
        assert path == "/metrics" or head.headers["Content-Length"] == get.headers["Content-Length"]


def test_head_on_a_post_endpoint_is_405_and_counted_as_head(client: TestClient) -> None:
    def head() -> None:
        response = client.head("/v1/predict")
        assert response.status_code == 405
        assert response.headers["Allow"] == "POST"
        assert response.content == b""

    labels = {"endpoint": "/v1/predict", "method": "HEAD", "status": "405"}
    assert counter_delta(client, head, "brain_tumor_http_requests_total", **labels) == 1


def test_a_method_a_get_path_does_not_take_is_405_naming_get_and_head(client: TestClient) -> None:
    response = client.delete("/health/live")

    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert response.json() == {
        "error": {"code": "method_not_allowed", "message": "DELETE is not allowed on this path; it takes GET, HEAD"}
    }


def test_head_of_liveness_is_counted_as_head(client: TestClient) -> None:
    def head() -> None:
        assert client.head("/health/live").status_code == 200

    labels = {"endpoint": "/health/live", "method": "HEAD", "status": "200"}
    assert counter_delta(client, head, "brain_tumor_http_requests_total", **labels) == 1


def test_read_readiness_when_loaded(client: TestClient) -> None:
    response = client.get("/health/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_read_readiness_is_503_until_models_load(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = gate_model_loading(monkeypatch)
    try:
        with TestClient(create_app(Settings(model_dir=tiny_model_dir))) as client:
            live = client.get("/health/live")
            ready = client.get("/health/ready")
            prediction = client.post("/v1/predict", files=upload(TUMOR_SLICE.read_bytes(), "slice.jpg"))
            models = client.get("/v1/models")
            ready_gauge = sample_value(client.get("/metrics").text, "brain_tumor_ready")

            assert live.status_code == 200
            assert ready.status_code == 503
            assert ready.json() == STILL_LOADING
            assert prediction.status_code == 503
            assert prediction.json() == STILL_LOADING
            assert prediction.headers["Retry-After"] == "5"  # the page can say when to try again
            assert models.status_code == 200  # the manifest is read (and verified) before serving starts
            assert ready_gauge == 0.0

            gate.set()
            wait_until_ready(client)

            assert client.get("/health/ready").json() == {"status": "ready"}
            after = client.post("/v1/predict", files=upload(TUMOR_SLICE.read_bytes(), "slice.jpg"))
            assert after.status_code == 200, after.text
            assert sample_value(client.get("/metrics").text, "brain_tumor_ready") == 1.0
    finally:
        gate.set()


def test_serve_asks_for_gpu_memory_growth_before_loading_the_models(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Newcomer review 45 F2: the service loads its models through `app.inference.load_predictor`, as the commands
    do, so every one of them asks for memory growth."""
    steps: list[str] = []
    monkeypatch.setattr("app.inference.enable_gpu_memory_growth", lambda: steps.append("memory growth") or 0)

    def no_models(model_dir, observer=None, runtime="keras", manifest=None):
        steps.append("models")
        raise ModelStoreError("no models here")

    monkeypatch.setattr(Predictor, "from_model_dir", no_models)
    with TestClient(create_app(Settings(model_dir=tiny_model_dir))):
        deadline = time.monotonic() + 30
        while len(steps) < 2 and time.monotonic() < deadline:  # the models load in the background
            time.sleep(0.02)

    assert steps == ["memory growth", "models"]


def test_read_readiness_says_loading_failed_and_keeps_the_reason_for_the_log(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def failing_load(model_dir, observer=None, runtime="keras", manifest=None):
        raise ModelStoreError(f"cannot load {model_dir}/tumor_classifier.weights.h5: bad weights")

    monkeypatch.setattr(Predictor, "from_model_dir", failing_load)
    # Readiness takes no API key: anyone who reaches it learns that loading failed, not the paths or the reason.
    expected = {
        "error": {
            "code": "model_unavailable",
            "message": "the models failed to load (the server's log says why): fix them and restart",
        }
    }
    with TestClient(create_app(Settings(model_dir=tiny_model_dir))) as client:
        deadline = time.monotonic() + 30
        while (response := client.get("/health/ready")).json() != expected and time.monotonic() < deadline:
            time.sleep(0.02)

        assert response.status_code == 503
        assert response.json() == expected
        assert client.get("/health/live").status_code == 200
    failures = [record for record in caplog.records if record.getMessage() == "model loading failed"]
    assert failures and "bad weights" in failures[0].fields["error"]


def start_app(model_dir: Path) -> None:
    """Run the app's startup (and shutdown); raises what the lifespan raises."""
    with TestClient(create_app(Settings(model_dir=model_dir))):
        pass


def append_byte(path: Path) -> None:
    with path.open("ab") as stream:
        stream.write(b"\0")


@pytest.mark.parametrize("file_name", ["tumor_classifier.weights.h5", "tumor_segmenter.weights.h5"])
def test_startup_refuses_tampered_weights(copied_model_dir: Path, file_name: str) -> None:
    path = copied_model_dir / file_name
    recorded = hashlib.sha256(path.read_bytes()).hexdigest()
    append_byte(path)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()

    with pytest.raises(ModelStoreError) as raised:
        start_app(copied_model_dir)

    assert str(raised.value) == (
        f"sha256 mismatch for {path}: manifest says {recorded}, file has {actual}; "
        "refusing to load a model file that changed after export"
    )


def test_startup_hashes_each_model_file_once(copied_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[str] = []
    sha256_of = model_store.sha256_of

    def counted_sha256_of(path: Path) -> str:
        hashed.append(Path(path).name)
        return sha256_of(path)

    monkeypatch.setattr(model_store, "sha256_of", counted_sha256_of)
    with TestClient(create_app(Settings(model_dir=copied_model_dir))) as client:
        wait_until_ready(client)

    files = [name for name in os.listdir(copied_model_dir) if name != "manifest.json"]
    assert sorted(hashed) == sorted(files)  # checked before serving, and not again when loading


def test_startup_refuses_tampered_architecture(copied_model_dir: Path) -> None:
    path = copied_model_dir / "tumor_segmenter.json"
    path.write_text(path.read_text() + "\n")  # still valid JSON, same model: only the hash tells

    with pytest.raises(ModelStoreError, match=r"^sha256 mismatch for .*tumor_segmenter\.json: manifest says"):
        start_app(copied_model_dir)


def test_startup_refuses_missing_manifest(copied_model_dir: Path) -> None:
    (copied_model_dir / "manifest.json").unlink()

    with pytest.raises(ModelStoreError) as raised:
        start_app(copied_model_dir)

    assert str(raised.value) == f"model manifest not found: {copied_model_dir / 'manifest.json'}"


def test_startup_refuses_missing_weights_file(copied_model_dir: Path) -> None:
    path = copied_model_dir / "tumor_classifier.weights.h5"
    path.unlink()

    with pytest.raises(ModelStoreError) as raised:
        start_app(copied_model_dir)

    assert str(raised.value) == f"model file listed in the manifest is missing: {path}"


def test_startup_refuses_invalid_manifest(copied_model_dir: Path) -> None:
    (copied_model_dir / "manifest.json").write_text("{not json")

    with pytest.raises(ModelStoreError, match=r"^model manifest .*manifest\.json is invalid: "):
        start_app(copied_model_dir)


def counter_delta(client: TestClient, action: Callable[[], object], sample: str, **labels: str) -> float:
    before = sample_value(client.get("/metrics").text, sample, **labels)
    action()
    return sample_value(client.get("/metrics").text, sample, **labels) - before


def test_read_metrics_counts_requests_by_endpoint_and_status(client: TestClient) -> None:
    requests = "brain_tumor_http_requests_total"

    def good() -> None:
        assert client.post("/v1/predict", files=upload(TUMOR_SLICE.read_bytes(), "slice.jpg")).status_code == 200

    def unsupported() -> None:
        assert client.post("/v1/predict", files=upload(b"text", "slice.png")).status_code == 415

    labels = {"endpoint": "/v1/predict", "method": "POST"}
    assert counter_delta(client, good, requests, status="200", **labels) == 1
    assert counter_delta(client, unsupported, requests, status="415", **labels) == 1
    assert counter_delta(client, good, "brain_tumor_http_request_duration_seconds_count", status="200", **labels) == 1


def test_read_metrics_labels_methods_the_service_does_not_serve_as_other(client: TestClient) -> None:
    """attack25b: each of the ~35 methods the HTTP parser takes (MKCALENDAR, SOURCE ...) became a label value, without
    a key: a sweep grew every scrape from 19 KB to 1 MB."""
    for method in ("MKCALENDAR", "SOURCE", "PROPFIND"):
        client.request(method, "/v1/predict")
    text = client.get("/metrics").text

    assert "MKCALENDAR" not in text and "SOURCE" not in text and "PROPFIND" not in text
    assert 'method="other"' in text


def test_read_metrics_times_each_model(client: TestClient) -> None:
    def good() -> None:
        assert client.post("/v1/predict", files=upload(TUMOR_SLICE.read_bytes(), "slice.jpg")).status_code == 200

    for model in ("classifier", "segmenter"):
        assert counter_delta(client, good, "brain_tumor_model_inference_seconds_count", model=model) == 1
    assert counter_delta(client, good, "brain_tumor_positive_predictions_total") == 1


def test_read_metrics_shows_model_info_and_queue(client: TestClient, tiny_manifest: dict) -> None:
    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    classifier, segmenter = (
        f"{tiny_manifest[role]['name']}@{tiny_manifest[role]['version']}" for role in ("classifier", "segmenter")
    )
    info = {"classifier": classifier, "segmenter": segmenter, "preprocessing": tiny_manifest["preprocessing"]}
    assert sample_value(response.text, "brain_tumor_model_info", **info) == 1.0
    assert "brain_tumor_inference_queue_slices" in response.text
    assert sample_value(response.text, "brain_tumor_inference_queue_slices") == 0.0
    assert sample_value(response.text, "brain_tumor_ready") == 1.0


@pytest.mark.parametrize(
    ("request_arguments", "status"),
    [
        ({"files": upload(bytes(1 << 20))}, 413),
        ({"json": {}}, 415),  # refused before routing: no multipart/form-data
        ({"files": upload(b"GIF89a", "a.gif", "image/gif")}, 415),  # refused by the route
    ],
    ids=["too-large", "no-form", "gif"],
)
def test_read_metrics_labels_an_upload_refused_before_routing_with_its_route(
    request_arguments: dict, status: int, limited_client: TestClient
) -> None:
    """Ops review 44 F5: the 413 and the 415 for a body that is no form were counted as `unmatched`, the 415 for a
    GIF under /v1/predict: one error of one route in two series."""

    def refused() -> None:
        assert limited_client.post("/v1/predict", **request_arguments).status_code == status

    labels = {"method": "POST", "status": str(status)}
    requests = "brain_tumor_http_requests_total"
    assert counter_delta(limited_client, refused, requests, endpoint="/v1/predict", **labels) == 1
    assert counter_delta(limited_client, refused, requests, endpoint="unmatched", **labels) == 0


def test_a_request_refused_before_routing_on_an_unknown_path_is_unmatched(client: TestClient) -> None:
    def refused() -> None:
        assert client.post("/v1/nowhere", json={}).status_code == 404

    labels = {"endpoint": "unmatched", "method": "POST", "status": "404"}
    assert counter_delta(client, refused, "brain_tumor_http_requests_total", **labels) == 1


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_the_documentation_is_counted_under_its_own_path(client: TestClient, path: str) -> None:
    """Attack review 61 F6: counted as `unmatched`, as if unknown paths were asked."""

    def read() -> None:
        assert client.get(path).status_code == 200

    labels = {"method": "GET", "status": "200"}
    assert counter_delta(client, read, "brain_tumor_http_requests_total", endpoint=path, **labels) == 1
    assert counter_delta(client, read, "brain_tumor_http_requests_total", endpoint="unmatched", **labels) == 0


def test_metrics_show_the_process_and_the_audit_records_lost(client: TestClient) -> None:
    """Operations review: no memory, CPU or start-time series (a restart or an out-of-memory kill did not show), a
    `_created` twin for every series, and nothing counted audit records lost to a full disk."""
    text = client.get("/metrics").text

    assert sample_value(text, "process_resident_memory_bytes") > 0
    assert sample_value(text, "process_start_time_seconds") > 0
    assert sample_value(text, "brain_tumor_audit_records_lost") == 0
    assert "_created" not in text
