"""The audit log file follows a rotation: logrotate renames the file, and the next record goes to a new one."""

from __future__ import annotations

import json
from pathlib import Path

from app.audit import AuditLog


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
