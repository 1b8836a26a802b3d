"""pacs-sync against a real Orthanc, on review 24's finding 1: a series left out because its first file is over the
instance limit (then MAX_UPLOAD_BYTES, now PACS_MAX_INSTANCE_BYTES) was mentioned only in the log. A study whose
FLAIR was that series was recorded "not_analysed ... found: no series" and never tried again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from app.inference import Predictor
from app.pacs.pacs_sync import SyncReport, run_pacs_sync
from app.pacs.pacs_sync_state import SyncState
from tests.dicom.builders import Study, mr_series, to_bytes, tumor_channels
from tests.pacs.orthanc_server import Orthanc
from tests.pacs.pacs_sync_support import config_for

FLAIR_FILE_BYTES = len(to_bytes(mr_series(tumor_channels())[0]))  # 256 x 256 x 1 byte and a header
# The FLAIR's files are over it (their size varies by a few bytes with the length of their random UIDs: a limit of
# one byte less than one series' file let another series' through now and then); every JSON answer of Orthanc's is
# far below.
LIMIT = FLAIR_FILE_BYTES - 1024


def left_out_note(limit: int) -> str:
    return f"1 MR series left out: its first file is over the instance limit of {limit} bytes (PACS_MAX_INSTANCE_BYTES)"


def text_values(dataset: Dataset) -> Iterator[str]:
    """Every TEXT value in an SR's content tree."""
    for item in dataset.get("ContentSequence", []):
        if "TextValue" in item:
            yield str(item.TextValue)
        yield from text_values(item)


def test_a_study_whose_only_flair_is_over_the_instance_limit_fails_naming_the_limit(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """Recorded `failed` (retried), not `not_analysed` with "found: no series"."""
    series = mr_series(tumor_channels())
    state_file = tmp_path / "state.json"
    config = config_for(orthanc, state_file, max_instance_bytes=LIMIT)
    series_id = orthanc.upload(series)
    study_id = orthanc.study_of(series_id)

    report = run_pacs_sync(config, predictor, once=True)

    assert report == SyncReport(failed=1)
    record = orthanc.record(study_id)
    assert (record["status"], record["attempts"]) == ("failed", 1)
    # operations review 68 F11: with its code, for the log line and the failure metric's label
    assert record["error"] == f"too_large: {left_out_note(LIMIT)}; no other MR series"
    assert record["series_left_out_for_size"] == 1
    assert record["orthanc_series_left_out_for_size"] == [series_id]
    assert record["max_instance_bytes"] == LIMIT
    assert "found: no series" not in str(record)
    assert study_id in SyncState.load(state_file).retries  # scheduled for a retry like any failure
    assert orthanc.results(series[0].StudyInstanceUID, "SR") == []


def test_a_study_failed_for_the_instance_limit_is_analysed_once_the_limit_is_raised(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    """A study that used up its attempts is only watched for new instances; a raised limit starts it afresh."""
    state_file = tmp_path / "state.json"
    small = config_for(orthanc, state_file, max_instance_bytes=LIMIT, max_attempts=1)
    study_id = orthanc.study_of(orthanc.upload(mr_series(tumor_channels())))
    assert run_pacs_sync(small, predictor, once=True) == SyncReport(failed=1)

    same_limit = run_pacs_sync(small, predictor, once=True)
    again = run_pacs_sync(small, predictor, once=True)
    raised = run_pacs_sync(config_for(orthanc, state_file, max_attempts=1), predictor, once=True)

    assert same_limit == SyncReport(gave_up=1)
    # operations review 68 F2: watched at every backoff, but given up once (an alert on the rise of gave_up cleared)
    assert again == SyncReport(already_done=1)
    assert raised == SyncReport(positive=1)
    record = orthanc.record(study_id)
    assert record["status"] == "positive" and "series_left_out_for_size" not in record


def test_a_series_left_out_beside_an_analysed_flair_is_counted_in_the_record_and_noted_in_the_sr(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    limit = FLAIR_FILE_BYTES * 3 // 2
    config = config_for(orthanc, tmp_path / "state.json", max_instance_bytes=limit)
    study = Study()
    wide = [np.zeros((256, 512), np.uint8)] * 2  # twice the FLAIR's pixels: over the limit
    other_id = orthanc.upload(mr_series(wide, study=study, series_number=2, series_description="AX T2"))
    study_id = orthanc.study_of(orthanc.upload(mr_series(tumor_channels(), study=study)))
    note = left_out_note(limit)

    report = run_pacs_sync(config, predictor, once=True)

    assert report == SyncReport(positive=1)
    record = orthanc.record(study_id)
    assert (record["series_left_out_for_size"], record["orthanc_series_left_out_for_size"]) == (1, [other_id])
    assert note in record["summary"]["notes"]
    (sr,) = orthanc.results(study.study_uid, "SR")
    assert note in list(text_values(sr))
