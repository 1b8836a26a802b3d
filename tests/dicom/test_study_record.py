"""The record of an analysed study (the DICOM node's `record.json`, pacs-sync's metadata in Orthanc) says which series
the models read: interop review 55 F3 found T1 series marked used where the flow read FLAIR alone."""

from __future__ import annotations

from pathlib import Path

from app.study_analysis import ModelStudyProcessor
from tests.dicom.builders import Study, mr_series, tumor_channels, write_files
from tests.node.node_support import ThresholdPredictor


def test_t1_series_left_out_by_the_flow_are_not_recorded_as_used(tmp_path: Path) -> None:
    """FLAIR has a slice where the T1 series have none, so the flow reads FLAIR alone (its slices do not pair)."""
    study = Study()
    flair = mr_series(tumor_channels(1), study, series_number=4, series_description="AX T2 FLAIR")
    pre = mr_series(tumor_channels(0)[:2], study, series_number=2, series_description="AX T1 PRE")
    post = mr_series(tumor_channels(2)[:2], study, series_number=7, series_description="AX T1 POST GAD")

    analysis = ModelStudyProcessor(ThresholdPredictor())(write_files([*pre, *flair, *post], tmp_path))

    assert analysis.status == "analysed", analysis.reason
    assert analysis.summary["channels"] == 1
    assert any("FLAIR analysed alone" in note for note in analysis.summary["notes"])
    used = {item["series_number"]: item["used"] for item in analysis.summary["series"]}
    assert used == {2: False, 4: True, 7: False}
