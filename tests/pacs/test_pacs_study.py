"""One study through pacs-sync on a stand-in client: records of the wrong shape are processed again, never fatal."""

from __future__ import annotations

from typing import Any

import pytest

from app.pacs.orthanc_errors import OrthancError
from app.pacs.pacs_study import FAILED, UNREADABLE, StudySync, fingerprint, readable_record
from app.pacs.pacs_sync_config import PacsSyncConfig
from app.pacs.pacs_sync_state import SyncState

SERIES = {"ID": "s1", "Instances": ["i1", "i2"], "MainDicomTags": {"Modality": "MR", "SeriesInstanceUID": "1.2"}}
STUDY_FINGERPRINT = fingerprint([SERIES])


class RecordClient:
    """Holds one MR study with a given record; fetching an instance fails, so a processing shows in the record."""

    def __init__(self, record: Any) -> None:
        self.config = PacsSyncConfig("http://orthanc.invalid", max_attempts=3, retry_seconds=10.0)
        self.record = record
        self.fetched: list[str] = []
        self.written: list[dict[str, Any]] = []

    def study(self, study_id: str) -> dict[str, Any]:
        return {"ID": study_id}

    def sync_record(self, study_id: str) -> Any:
        return self.record

    def study_series(self, study_id: str) -> list[dict[str, Any]]:
        return [SERIES]

    def instance_file(self, instance_id: str) -> bytes:
        self.fetched.append(instance_id)
        raise OrthancError(f"GET /instances/{instance_id}/file failed after 5 attempts: ConnectionError")

    def write_sync_record(self, study_id: str, record: dict[str, Any]) -> None:
        self.written.append(record)


@pytest.mark.parametrize(
    "record",
    [
        {"attempts": "n/a", "status": FAILED},
        {"attempts": None, "status": FAILED},
        {"attempts": [1], "status": FAILED},
        {"attempts": float("inf"), "status": FAILED},  # what json.loads makes of 1e400
        {"attempts": float("nan"), "status": FAILED},
        {"status": ["positive"]},
        {"status": {"done": True}},
    ],
    ids=["text", "null", "array", "infinite", "nan", "status-array", "status-object"],
)
@pytest.mark.parametrize("retry", [False, True], ids=["change", "retry"])
def test_study_sync_processes_again_a_study_whose_record_has_wrong_types(record: dict[str, Any], retry: bool) -> None:
    client = RecordClient(record | {"study_fingerprint": STUDY_FINGERPRINT})
    state = SyncState()
    studies = StudySync(client, analyser=None, clock=lambda: 1000.0)  # type: ignore[arg-type]

    outcome = studies.process("st1", state, retry=retry)

    assert outcome == FAILED
    assert client.fetched == ["i1"]  # processed again, as for a record that is not JSON
    (written,) = client.written  # and the record overwritten
    assert (written["status"], written["attempts"], written["study_fingerprint"]) == (FAILED, 1, STUDY_FINGERPRINT)
    assert state.retries == {"st1": 1010.0}


@pytest.mark.parametrize(
    "record",
    [
        ["not", "an", "object"],
        {"attempts": 2},
        {"status": 3},
        {"status": None},
        {"status": "failed"},
        {"status": "failed", "attempts": True},
        {"status": "failed", "attempts": -1},
        {"status": "failed", "attempts": 1.0},
        {"status": "positive", "study_fingerprint": 42},
        {"status": "positive", "study_fingerprint": "ab", "input_fingerprint": ["ab"]},
    ],
)
def test_readable_record_calls_a_record_of_the_wrong_types_unreadable(record: Any) -> None:
    assert readable_record(record) == UNREADABLE


@pytest.mark.parametrize(
    "record",
    [
        {"status": "positive", "study_fingerprint": "ab", "input_fingerprint": "cd", "summary": {"slices": 3}},
        {"status": "failed", "attempts": 2, "study_fingerprint": "ab", "error": "OrthancError: ..."},
        {"status": "not_analysed", "reason": "the study has no FLAIR series"},
        {"status": "unreadable"},
    ],
)
def test_readable_record_keeps_a_record_this_service_writes(record: dict[str, Any]) -> None:
    assert readable_record(record) == record
    assert readable_record(None) == {}
