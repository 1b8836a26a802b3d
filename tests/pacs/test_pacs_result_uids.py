"""Which UIDs pacs-sync's results get when the same findings come again (`reports_to_supersede`, then
`supersede_earlier_reports`, as `PacsStudy._store_and_record` uses them): they stand under the current results'
UIDs, after a revision (interop review 55 F1) and after a revision that followed a withdrawal (review 56 F2: they went
back under the UIDs the failure had withdrawn, and the current revision was deleted)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from app.dicom.dicom_sr import supersede_earlier_reports
from app.dicom.dicom_sr_reader import predecessors
from app.pacs.pacs_sync_records import recorded_report, reports_to_supersede, result_record_fields
from app.study_analysis import ModelStudyProcessor
from tests.dicom.builders import mr_series, tumor_channels, write_files
from tests.node.node_support import ThresholdPredictor


def stored(files: list[Path], record: dict[str, Any]) -> tuple[dict[str, Any], Dataset]:
    """The record of a success and its report, as `_store_and_record` makes them from `record` (the same
    `result_record_fields`: review 58 F4, a copy of them here let a field the fix needs go unnoticed)."""
    datasets = ModelStudyProcessor(ThresholdPredictor())(files).datasets
    built_report_uid = str(datasets[-1].SOPInstanceUID)
    earlier, withdrawn = reports_to_supersede(record, datasets[-1])
    supersede_earlier_reports(datasets, earlier, withdrawn)
    return result_record_fields(datasets, built_report_uid, withdrawn), datasets[-1]


def test_the_same_findings_after_a_withdrawal_stand_under_the_revision_they_made(tmp_path: Path) -> None:
    files = write_files(mr_series(tumor_channels()), tmp_path)
    first, first_report = stored(files, {})
    failure = {"withdrawn_reports": [asdict(reference) for reference in recorded_report(first)]}  # results deleted
    revision, revised_report = stored(files, failure)
    assert revised_report.SOPInstanceUID != first_report.SOPInstanceUID  # never again under a withdrawn UID
    assert predecessors(revised_report) == [first_report.SOPInstanceUID]

    _, again = stored(files, revision)  # e.g. lossy copies of the slices arrived: nothing the analysis reads

    assert again.SOPInstanceUID == revised_report.SOPInstanceUID
    assert predecessors(again) == [first_report.SOPInstanceUID]


def test_the_same_findings_after_a_plain_revision_stand_too(tmp_path: Path) -> None:
    files = write_files(mr_series(tumor_channels()), tmp_path)
    first, first_report = stored(files, {})
    same, same_report = stored(files, first)
    assert same_report.SOPInstanceUID == first_report.SOPInstanceUID and predecessors(same_report) == []
