"""The audit log file follows a rotation (logrotate renames the file, and the next record goes to a new one), and a
file the disk cannot take is reported, not printed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from app import audit as audit_module
from app.audit import AuditLog
from app.settings import Settings
from tests.api.service_client import running_client, sample_value, upload
from tests.conftest import TUMOR_SLICE


def record(audit: AuditLog, request_id: str) -> None:
    audit.record(
        request_id=request_id,
        endpoint="/v1/predict",
        status=200,
        key_id=None,
        client="127.0.0.1",
        input_sha256=[],
        models={},
        outcome={"positive": 1},
    )


def request_ids(path: Path) -> list[str]:
    return [json.loads(line)["request_id"] for line in path.read_text().splitlines()]


def test_a_record_after_the_file_was_renamed_goes_to_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    try:
        record(audit, "before")
        rotated = path.rename(tmp_path / "audit.jsonl.1")
        record(audit, "after")
    finally:
        audit.close()

    assert request_ids(rotated) == ["before"]
    assert request_ids(path) == ["after"]


def test_a_record_the_disk_cannot_take_is_counted_said_once_and_never_printed(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Operations review: on a full disk, logging's own error handler printed a traceback ending in the audit record
    to standard error, once per request, and nothing said the audit log was failing. /dev/full answers every write
    with ENOSPC, as a full disk does."""
    audit = AuditLog(Path("/dev/full"))
    try:
        with caplog.at_level(logging.WARNING, logger="app.audit"):
            record(audit, "lost-1")
            record(audit, "lost-2")
    finally:
        audit.close()

    assert audit.write_failures == 2
    captured = capsys.readouterr()
    assert "lost-1" not in captured.err + captured.out and "Traceback" not in captured.err
    (said,) = [entry for entry in caplog.records if entry.name == "app.audit"]
    assert said.getMessage().startswith("audit record not written")
    assert said.fields == {"error": "No space left on device"}  # type: ignore[attr-defined]
    assert "lost" not in said.getMessage()


def test_the_service_is_not_ready_while_its_audit_log_cannot_be_written(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_module, "MIN_FREE_BYTES_TO_RETRY", 1 << 62)  # the folder stays full
    with running_client(Settings(model_dir=tiny_model_dir, audit_log_file=Path("/dev/full"))) as client:
        assert client.get("/health/ready").status_code == 200
        assert client.post("/v1/predict", files={"file": ("a.jpg", b"not an image")}).status_code == 415

        ready = client.get("/health/ready")

        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "audit_unavailable"
        monkeypatch.setattr(audit_module, "MIN_FREE_BYTES_TO_RETRY", 0)  # space again
        assert client.get("/health/ready").status_code == 200


def test_inference_is_refused_and_the_ready_gauge_is_0_while_the_audit_log_cannot_be_written(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ops review 44 F1: with the disk full, uploads went on being analysed and answered 200, their records lost,
    and `brain_tumor_ready` stayed 1 while /health/ready answered 503."""
    monkeypatch.setattr(audit_module, "MIN_FREE_BYTES_TO_RETRY", 1 << 62)  # the folder stays full
    slice_upload = upload(TUMOR_SLICE.read_bytes(), "slice.jpg")
    with running_client(Settings(model_dir=tiny_model_dir, audit_log_file=Path("/dev/full"))) as client:
        assert sample_value(client.get("/metrics").text, "brain_tumor_ready") == 1.0
        # The first record lost is the one that tells: its request was answered before the record was written.
        assert client.post("/v1/predict", files=slice_upload).status_code == 200

        refused = [
            client.post("/v1/predict", files=slice_upload),
            client.post("/v1/overlay", files=slice_upload),
            client.post("/v1/predict/batch", files=[("files", ("slice.jpg", TUMOR_SLICE.read_bytes()))]),
        ]
        metrics = client.get("/metrics").text

        for response in refused:
            assert response.status_code == 503
            assert response.json()["error"] == {
                "code": "audit_unavailable",
                "message": "the audit log cannot be written (AUDIT_LOG_FILE: disk full or unwritable)",
            }
        assert sample_value(metrics, "brain_tumor_ready") == 0.0
        assert sample_value(metrics, "brain_tumor_predictions_total", result="positive") == 1.0  # the first only
        monkeypatch.setattr(audit_module, "MIN_FREE_BYTES_TO_RETRY", 0)  # space again
        assert sample_value(client.get("/metrics").text, "brain_tumor_ready") == 1.0
        assert client.post("/v1/predict", files=slice_upload).status_code == 200
