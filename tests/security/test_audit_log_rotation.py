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


def record(audit: AuditLog, request_id: str, status: int = 200) -> None:
    audit.record(
        request_id=request_id,
        endpoint="/v1/predict",
        status=status,
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


def full_disk(path: Path) -> None:
    """Make `path` a file the disk will not take: a link to /dev/full, which answers every write with ENOSPC."""
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/full")


def space_again(path: Path) -> None:
    path.unlink()


def test_a_record_the_disk_cannot_take_is_said_once_and_never_printed(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Operations review: on a full disk, logging's own error handler printed a traceback ending in the audit record
    to standard error, once per request, and nothing said the audit log was failing."""
    audit = AuditLog(Path("/dev/full"))
    with caplog.at_level(logging.WARNING, logger="app.audit"):
        record(audit, "held-1")
        record(audit, "held-2")
        assert not audit.writable
        audit.close()

    assert audit.records_lost == 2  # held until the exit, which the disk did not take either
    captured = capsys.readouterr()
    assert "held-1" not in captured.err + captured.out and "Traceback" not in captured.err
    said, at_exit = [entry for entry in caplog.records if entry.name == "app.audit"]
    assert said.getMessage().startswith("audit record not written")
    assert said.fields == {"error": "No space left on device"}  # type: ignore[attr-defined]
    assert at_exit.fields == {"records_lost": 2}  # type: ignore[attr-defined]
    assert "held" not in said.getMessage() + at_exit.getMessage()


def test_records_the_disk_did_not_take_are_written_in_order_once_it_does(tmp_path: Path) -> None:
    """Browser review 44 F8: the records were lost, and a check of free space said the log was writable again while
    it took nothing (/dev/full sits on a file system with space)."""
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    record(audit, "before")
    full_disk(path)
    record(audit, "held-1")
    record(audit, "held-2")
    assert (audit.writable, audit.records_held) == (False, 2)

    space_again(path)
    assert audit.writable
    record(audit, "after")
    audit.close()

    assert request_ids(path) == ["held-1", "held-2", "after"]  # "before" is in the file the link replaced
    assert (audit.records_held, audit.records_lost) == (0, 0)


def test_past_the_records_it_holds_the_oldest_are_lost_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_module, "MAX_HELD_RECORDS", 2)
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    full_disk(path)
    for request_id in ("first", "second", "third"):
        record(audit, request_id)
    space_again(path)
    audit.close()

    assert request_ids(path) == ["second", "third"]
    assert audit.records_lost == 1


def test_refusals_while_the_disk_is_full_never_push_out_the_records_of_answered_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack review 46 F5: a client without a key, answered 429 thousands of times, pushed the held records of real
    inference requests out of memory within seconds; refusals now take at most half of what is held."""
    monkeypatch.setattr(audit_module, "MAX_HELD_RECORDS", 4)
    monkeypatch.setattr(audit_module, "MAX_HELD_REFUSALS", 2)
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    full_disk(path)
    record(audit, "answered-1")
    for number in range(10):
        record(audit, f"refused-{number}", status=429)
    record(audit, "answered-2")
    space_again(path)
    audit.close()

    assert request_ids(path) == ["answered-1", "refused-0", "refused-1", "answered-2"]
    assert audit.records_lost == 8


def test_while_the_disk_is_full_a_record_tries_one_short_write_not_every_held_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack review 46 F5: each audited request joined and tried to write every held record (up to 10,000, some
    5 MB) on the event loop: 1 ms a request became 12 ms, health probes included."""
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    full_disk(path)
    for number in range(100):
        record(audit, f"held-{number}")
    tried: list[int] = []
    original_append = audit._append
    monkeypatch.setattr(audit, "_append", lambda text: tried.append(text.count("\n")) or original_append(text))

    record(audit, "one-more")
    assert not audit.writable

    assert tried == [1, 1]  # the oldest held record alone, at each try
    space_again(path)
    audit.close()
    assert request_ids(path) == [f"held-{number}" for number in range(100)] + ["one-more"]


def test_a_line_cut_short_stays_apart_from_the_next_record(tmp_path: Path) -> None:
    """A disk that filled mid-write, or a kill, leaves a last line without its newline: the next record must not be
    glued to it, or a reader loses both."""
    path = tmp_path / "audit.jsonl"
    path.write_text('{"request_id": "cut-sh')
    audit = AuditLog(path)
    record(audit, "next")
    audit.close()

    cut, written = path.read_text().splitlines()
    assert cut == '{"request_id": "cut-sh'
    assert json.loads(written)["request_id"] == "next"


def test_the_service_is_not_ready_while_its_audit_log_cannot_be_written(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with running_client(Settings(model_dir=tiny_model_dir, audit_log_file=path)) as client:
        assert client.get("/health/ready").status_code == 200
        full_disk(path)
        assert client.post("/v1/predict", files={"file": ("a.jpg", b"not an image")}).status_code == 415

        ready = client.get("/health/ready")

        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "audit_unavailable"
        space_again(path)
        assert client.get("/health/ready").status_code == 200
    assert [json.loads(line)["status"] for line in path.read_text().splitlines()] == [415]


def test_inference_is_refused_and_the_ready_gauge_is_0_while_the_audit_log_cannot_be_written(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Ops review 44 F1: with the disk full, uploads went on being analysed and answered 200, their records lost,
    and `brain_tumor_ready` stayed 1 while /health/ready answered 503."""
    path = tmp_path / "audit.jsonl"
    slice_upload = upload(TUMOR_SLICE.read_bytes(), "slice.jpg")
    with running_client(Settings(model_dir=tiny_model_dir, audit_log_file=path)) as client:
        assert sample_value(client.get("/metrics").text, "brain_tumor_ready") == 1.0
        full_disk(path)
        # The first record held tells: its request was answered before the record was written.
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
        assert sample_value(metrics, "brain_tumor_audit_records_held") == 4.0
        assert sample_value(metrics, "brain_tumor_predictions_total", result="positive") == 1.0  # the first only
        space_again(path)
        assert sample_value(client.get("/metrics").text, "brain_tumor_ready") == 1.0
        assert client.post("/v1/predict", files=slice_upload).status_code == 200
    statuses = [json.loads(line)["status"] for line in path.read_text().splitlines()]
    assert statuses == [200, 503, 503, 503, 200]  # nothing lost: the held records first, then the next


def test_audit_unavailable_says_when_to_retry_like_the_other_503s(tiny_model_dir: Path, tmp_path: Path) -> None:
    """API review 48 F9: every other 503 carries Retry-After; audit_unavailable had none."""
    path = tmp_path / "audit.jsonl"
    with running_client(Settings(model_dir=tiny_model_dir, audit_log_file=path)) as client:
        full_disk(path)
        assert client.post("/v1/predict", files={"file": ("a.jpg", b"not an image")}).status_code == 415  # held

        refused = [client.get("/health/ready"), client.post("/v1/predict", files=upload(b"x", "a.jpg"))]

        for response in refused:
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "audit_unavailable"
            assert response.headers["Retry-After"] == "30"
        space_again(path)
