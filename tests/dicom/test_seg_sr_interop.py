"""What a PACS receives of the SEG and the SR (interoperability review dicom22, findings 1 to 3).

1. A positive series of greyscale Secondary Captures (Modality MR, no Frame of Reference) got no SEG and no SR on
   any path, only its negative twin an "Absent" report: it now gets one single-frame SEG per positive slice, in one
   SEG series, and an SR that references each of them (planar ROI groups, TID 1410).
2. The SR stated the volume as complete when the service knew it might not be: it now carries the slices missing and
   whether the tumor reaches the first or last slice analysed.
3. The SR was a Comprehensive 3D SR with no 3D coordinates, which a PACS without that class never got: it is now a
   Comprehensive SR, and a destination that takes only SEG and Comprehensive SR receives it.
"""

from __future__ import annotations

import io
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage, SegmentationStorage

from app.dicom.dicom_seg import SEG_SERIES_NUMBER, build_segmentation, build_segmentations
from app.dicom.dicom_seg_reader import read_segmentation_masks
from app.dicom.dicom_series import SliceInput, prepare_inputs
from app.dicom.dicom_sr import (
    RESEARCH_USE_STATEMENT,
    SLICES_MISSING,
    TUMOR_AT_SERIES_END,
    VolumeFindings,
    VolumeReportInputError,
    build_volume_report,
    series_volume_report,
)
from app.dicom.dicom_sr_reader import read_volume_report, report_comments
from app.inference import Predictor
from app.pacs.pacs_sync import SyncReport, run_pacs_sync
from app.study_analysis import ModelStudyProcessor
from tests.conftest import TUMOR_SERIES, read_truth
from tests.dicom.builders import mr_series, secondary_capture_series, to_bytes, tumor_channels, write_files
from tests.dicom.reading import read_dicom
from tests.dicom.test_dicom_seg import TruthPredictor, segment_series
from tests.dicom.validation import dciodvfy_errors
from tests.node.node_support import (
    QUIET_SECONDS,
    Clock,
    ResultStore,
    ThresholdPredictor,
    dcmtk,
    expected_result,
    free_port,
    process_and_send,
    record,
    storescu,
)
from tests.pacs.orthanc_server import Orthanc
from tests.pacs.pacs_sync_support import config_for

MODEL_TAGS = {"classifier": "resnet-classifier@1.2.0", "segmenter": "resunet@3.4.5"}


def inputs_of(datasets: list[Dataset]) -> list[SliceInput]:
    return prepare_inputs([frame for dataset in datasets for frame in read_dicom(to_bytes(dataset))])


def written(dataset: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(to_bytes(dataset)))


def dcmtk_reads(report: Dataset, directory: Path) -> str:
    """dsrdump's text of the report, after dsr2xml too has read it without error."""
    path = directory / "report.dcm"
    path.write_bytes(to_bytes(report))
    for tool in ("dsrdump", "dsr2xml"):
        result = subprocess.run([dcmtk(tool), str(path)], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, f"{tool}: {result.stderr}"
    return subprocess.run([dcmtk("dsrdump"), str(path)], capture_output=True, text=True, timeout=60, check=True).stdout


def planar_references(report: Dataset) -> list[tuple[str, str]]:
    """(SEG SOP Instance UID, source SOP Instance UID) of each planar ROI group (TID 1410), as highdicom reads them."""
    content = hd.sr.ComprehensiveSR.from_dataset(report).content
    pairs = []
    for group in content.get_planar_roi_measurement_groups():
        frame = group.referenced_segmentation_frame
        seg_item, source_item = frame[0], frame[1]
        pairs.append(
            (
                str(seg_item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
                str(source_item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
            )
        )
    return pairs


def evidence_uids(report: Dataset) -> set[str]:
    return {
        sop.ReferencedSOPInstanceUID
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


# -- 1. Secondary Captures: one SEG per positive slice, and an SR that references them ---------------------------


def test_a_secondary_capture_series_gets_one_seg_per_positive_slice_in_one_series() -> None:
    series = secondary_capture_series(tumor_channels())
    truth = [read_truth(path) for path in TUMOR_SERIES]
    masks: list[np.ndarray | None] = [None, truth[1], truth[2]]
    # Sent in reverse: the SEGs still follow the slices' Instance Numbers.
    segmentations = build_segmentations(inputs_of(series[::-1]), masks[::-1], MODEL_TAGS)

    assert len(segmentations) == 2  # the negative slice gets none
    assert len({seg.SeriesInstanceUID for seg in segmentations}) == 1
    assert segmentations[0].SeriesInstanceUID != series[0].SeriesInstanceUID
    assert [int(seg.InstanceNumber) for seg in segmentations] == [1, 2]
    for seg, source, mask in zip(segmentations, series[1:], truth[1:], strict=True):
        assert seg.SeriesNumber == SEG_SERIES_NUMBER and int(seg.NumberOfFrames) == 1
        assert "FrameOfReferenceUID" not in seg and seg.StudyInstanceUID == source.StudyInstanceUID
        assert [item.ReferencedSOPInstanceUID for item in seg.SourceImageSequence] == [source.SOPInstanceUID]
        decoded = read_segmentation_masks(to_bytes(seg))
        assert list(decoded) == [source.SOPInstanceUID]
        np.testing.assert_array_equal(decoded[source.SOPInstanceUID][0], mask)
        assert dciodvfy_errors(seg, "Segmentation") == []


def test_slices_in_the_patient_s_coordinates_still_share_one_seg() -> None:
    truth = [read_truth(path) for path in TUMOR_SERIES]

    (seg,) = build_segmentations(inputs_of(mr_series(tumor_channels())), [None, truth[1], truth[2]], MODEL_TAGS)

    assert int(seg.NumberOfFrames) == 3 and "FrameOfReferenceUID" in seg


def test_the_report_of_a_secondary_capture_series_references_each_seg_and_its_slice(tmp_path: Path) -> None:
    series = secondary_capture_series(tumor_channels())
    inputs = inputs_of(series)
    segmentations = build_segmentations(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)
    findings = VolumeFindings(tumor_detected=True, tumor_volume_ml=None, slices_analysed=3, slices_with_tumor=3)

    report = written(
        build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS, segmentations)
    )

    figures = read_volume_report(report)
    assert (figures["finding"], figures["tumor_volume_ml"], figures["slices_with_tumor"]) == ("Present", None, 3)
    assert figures["segmentation_sop_instance_uids"] == [seg.SOPInstanceUID for seg in segmentations]
    assert planar_references(report) == [
        (seg.SOPInstanceUID, source.SOPInstanceUID) for seg, source in zip(segmentations, series, strict=True)
    ]
    assert evidence_uids(report) == {seg.SOPInstanceUID for seg in segmentations} | {
        dataset.SOPInstanceUID for dataset in series
    }
    assert dciodvfy_errors(report, "ComprehensiveSR") == []
    assert dcmtk_reads(report, tmp_path).count('IMAGE:(,,"Referenced Segmentation Frame")') == 3


def test_dcmtk_shows_the_research_use_statement_of_a_negative_report(tmp_path: Path) -> None:
    """Docs review 45 F5: an "Absent" report said nothing of research use in the content a viewer shows."""
    inputs = inputs_of(mr_series(tumor_channels()))
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=3, slices_with_tumor=0)

    report = written(build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS))

    assert '<contains TEXT:(,,"Comment")="Research use only - not for...">' in dcmtk_reads(report, tmp_path)
    in_full = subprocess.run(
        [dcmtk("dsrdump"), "+Pl", "+Pc", str(tmp_path / "report.dcm")], capture_output=True, text=True, check=True
    ).stdout
    assert f'<contains TEXT:(121106,DCM,"Comment")="{RESEARCH_USE_STATEMENT}">' in in_full


def test_several_segs_are_refused_for_slices_one_seg_covers() -> None:
    inputs = inputs_of(mr_series(tumor_channels()))
    masks = [read_truth(path) for path in TUMOR_SERIES]
    segmentations = [build_segmentation(inputs, masks, MODEL_TAGS) for _ in range(2)]
    findings = VolumeFindings(tumor_detected=True, tumor_volume_ml=1.0, slices_analysed=3, slices_with_tumor=3)

    with pytest.raises(VolumeReportInputError, match="one SEG covers slices placed in the patient's coordinates"):
        build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS, segmentations)


def test_a_positive_secondary_capture_study_is_analysed_with_its_segs_and_report(tmp_path: Path) -> None:
    """The node's and pacs-sync's shared step (`ModelStudyProcessor`): before, the study was "failed", nothing sent."""
    series = secondary_capture_series(tumor_channels())
    expected = expected_result(series)

    analysis = ModelStudyProcessor(ThresholdPredictor())(write_files(series, tmp_path))  # type: ignore[arg-type]

    assert analysis.status == "analysed", analysis.reason
    *segmentations, report = analysis.datasets
    assert [dataset.Modality for dataset in segmentations] == ["SEG"] * len(expected.segmentations)
    assert segmentations and report.Modality == "SR"
    figures = read_volume_report(report)
    assert figures["finding"] == "Present"
    assert figures["segmentation_sop_instance_uids"] == [seg.SOPInstanceUID for seg in segmentations]
    assert analysis.summary["segmentations"] == len(segmentations)
    assert report_comments(report) == [RESEARCH_USE_STATEMENT]  # docs review 45 F5: the node's and pacs-sync's too
    assert dciodvfy_errors(report, "ComprehensiveSR") == []


def test_the_node_delivers_each_seg_and_the_report_of_a_positive_secondary_capture_study(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    node = make_node()
    series = secondary_capture_series(tumor_channels())
    assert storescu(node, write_files(series, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)

    assert len(process_and_send(node)) == 1

    (run,) = record(node)["runs"]
    assert run["status"] == "analysed", run["reason"]
    segmentations = sorted(results.by_modality("SEG"), key=lambda seg: int(seg.InstanceNumber))
    (report,) = results.by_modality("SR")
    assert len(segmentations) == len(expected_result(series).segmentations) > 0
    assert read_volume_report(report)["segmentation_sop_instance_uids"] == [seg.SOPInstanceUID for seg in segmentations]
    assert {entry["status"] for entry in node.spool.sent_log()} == {"sent"}
    assert dciodvfy_errors(report, "ComprehensiveSR") == []
    assert all(dciodvfy_errors(seg, "Segmentation") == [] for seg in segmentations)


def test_pacs_sync_stores_each_seg_and_the_report_of_a_positive_secondary_capture_study(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    series = secondary_capture_series(tumor_channels())
    study_uid = series[0].StudyInstanceUID
    config = config_for(orthanc, tmp_path / "state.json")  # sees the changes from here on
    study_id = orthanc.study_of(orthanc.upload(series))

    report = run_pacs_sync(config, predictor, once=True)

    assert report == SyncReport(positive=1)  # the tiny models call every slice positive
    segmentations = orthanc.results(study_uid, "SEG")
    (sr,) = orthanc.results(study_uid, "SR")
    assert len(segmentations) == 3 and len({seg.SeriesInstanceUID for seg in segmentations}) == 1
    figures = read_volume_report(sr)
    assert figures["finding"] == "Present"
    assert sorted(figures["segmentation_sop_instance_uids"]) == sorted(seg.SOPInstanceUID for seg in segmentations)
    stored = orthanc.record(study_id)
    assert stored["status"] == "positive"
    assert sorted(stored["seg_sop_instance_uids"]) == sorted(seg.SOPInstanceUID for seg in segmentations)
    assert dciodvfy_errors(sr, "ComprehensiveSR") == []


# -- 2. The SR says when the volume may fall short ----------------------------------------------------------------


def test_the_report_says_when_the_volume_may_fall_short(tmp_path: Path) -> None:
    inputs = inputs_of(mr_series(tumor_channels()))
    seg = build_segmentation(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)
    findings = VolumeFindings(
        tumor_detected=True,
        tumor_volume_ml=4.5,
        slices_analysed=3,
        slices_with_tumor=3,
        slices_missing=2,
        tumor_reaches_series_end=True,
    )

    report = written(build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS, [seg]))

    figures = read_volume_report(report)
    assert (figures["slices_missing"], figures["tumor_reaches_series_end"]) == (2, True)
    text = dcmtk_reads(report, tmp_path)
    assert f'NUM:(,,"{SLICES_MISSING.meaning}")="2' in text
    assert f'CODE:(,,"{TUMOR_AT_SERIES_END.meaning}")=(373066001,SCT,"Yes")' in text
    assert dciodvfy_errors(report, "ComprehensiveSR") == []


def test_a_negative_report_says_no_slice_missing_and_no_tumor_at_the_series_end(tmp_path: Path) -> None:
    inputs = inputs_of(mr_series(tumor_channels()))
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=3, slices_with_tumor=0)

    report = written(build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS))

    figures = read_volume_report(report)
    assert (figures["finding"], figures["slices_missing"], figures["tumor_reaches_series_end"]) == ("Absent", 0, False)
    assert f'CODE:(,,"{TUMOR_AT_SERIES_END.meaning}")=(373067005,SCT,"No")' in dcmtk_reads(report, tmp_path)


@pytest.mark.parametrize(
    ("detected", "missing", "at_end", "message"),
    [
        (True, -1, False, "slices_missing must be >= 0; got -1"),
        (False, 0, True, "tumor_reaches_series_end needs a tumor; got it without one"),
    ],
)
def test_findings_refuse_an_impossible_gap_or_series_end(
    detected: bool, missing: int, at_end: bool, message: str
) -> None:
    with pytest.raises(VolumeReportInputError, match=message):
        VolumeFindings(
            tumor_detected=detected,
            tumor_volume_ml=1.0 if detected else 0.0,
            slices_analysed=3,
            slices_with_tumor=int(detected),
            slices_missing=missing,
            tumor_reaches_series_end=at_end,
        )


def test_the_series_report_carries_the_flow_s_slices_missing_and_series_end() -> None:
    datasets = mr_series(tumor_channels() + tumor_channels())  # 6 slices, 0 to 25 mm
    sent = [datasets[index] for index in (0, 1, 4, 5)]  # 10 and 15 mm left out
    truth = [read_truth(path) for path in TUMOR_SERIES]
    result = segment_series(TruthPredictor([truth[0], truth[1], truth[1], truth[2]]), inputs_of(sent))  # type: ignore[arg-type]

    figures = read_volume_report(written(series_volume_report(result, MODEL_TAGS)))

    assert (result.slices_missing, result.tumor_reaches_series_end) == (2, True)
    assert (figures["slices_missing"], figures["tumor_reaches_series_end"]) == (2, True)


def test_the_node_s_report_carries_the_slices_missing_and_the_series_end(
    make_node: Any, results: ResultStore, clock: Clock, tmp_path: Path
) -> None:
    node = make_node()
    datasets = mr_series(tumor_channels() + tumor_channels())
    sent = [datasets[index] for index in (0, 1, 4, 5)]
    assert storescu(node, write_files(sent, tmp_path / "in")).returncode == 0
    clock.advance(QUIET_SECONDS)

    assert len(process_and_send(node)) == 1

    summary = record(node)["runs"][-1]["summary"]
    (report,) = results.by_modality("SR")
    figures = read_volume_report(report)
    assert figures["slices_missing"] == summary["slices_missing"] == 2
    assert figures["tumor_reaches_series_end"] is summary["tumor_reaches_series_end"]


def test_pacs_sync_s_report_carries_the_slices_missing_and_the_series_end(
    orthanc: Orthanc, predictor: Predictor, tmp_path: Path
) -> None:
    datasets = mr_series(tumor_channels() + tumor_channels())
    sent = [datasets[index] for index in (0, 1, 4, 5)]
    config = config_for(orthanc, tmp_path / "state.json")
    study_id = orthanc.study_of(orthanc.upload(sent))

    assert run_pacs_sync(config, predictor, once=True) == SyncReport(positive=1)

    (report,) = orthanc.results(sent[0].StudyInstanceUID, "SR")
    figures = read_volume_report(report)
    summary = orthanc.record(study_id)["summary"]
    assert figures["slices_missing"] == summary["slices_missing"] == 2
    assert figures["tumor_reaches_series_end"] is summary["tumor_reaches_series_end"] is True


# -- 3. A Comprehensive SR, which every PACS takes -----------------------------------------------------------------


def test_the_report_is_a_comprehensive_sr_that_highdicom_and_dcmtk_read(tmp_path: Path) -> None:
    inputs = inputs_of(mr_series(tumor_channels()))
    seg = build_segmentation(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)
    findings = VolumeFindings(tumor_detected=True, tumor_volume_ml=4.5, slices_analysed=3, slices_with_tumor=3)

    report = written(build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS, [seg]))

    assert report.SOPClassUID == ComprehensiveSRStorage != Comprehensive3DSRStorage
    assert report.file_meta.MediaStorageSOPClassUID == ComprehensiveSRStorage
    value_types: set[str] = set()
    report.walk(lambda _, element: value_types.add(element.value) if element.keyword == "ValueType" else None)
    assert "SCOORD3D" not in value_types
    path = tmp_path / "sr.dcm"
    path.write_bytes(to_bytes(report))
    assert isinstance(hd.sr.srread(path), hd.sr.ComprehensiveSR)
    assert dcmtk_reads(report, tmp_path).startswith("Comprehensive SR Document")
    assert dciodvfy_errors(report, "ComprehensiveSR") == []


def test_a_destination_without_comprehensive_3d_sr_receives_the_report(
    make_node: Any, clock: Clock, tmp_path: Path
) -> None:
    older_pacs = ResultStore(free_port(), (SegmentationStorage, ComprehensiveSRStorage))  # no 3D SR, as many
    try:
        node = make_node(destination_port=older_pacs.port)
        assert storescu(node, write_files(mr_series(tumor_channels()), tmp_path / "in")).returncode == 0
        clock.advance(QUIET_SECONDS)

        assert len(process_and_send(node)) == 1

        (report,) = older_pacs.by_modality("SR")
        assert report.SOPClassUID == ComprehensiveSRStorage
        sent = {(entry["modality"], entry["sop_class_uid"], entry["status"]) for entry in node.spool.sent_log()}
        assert ("SR", ComprehensiveSRStorage, "sent") in sent and all(status == "sent" for *_, status in sent)
    finally:
        older_pacs.close()


# -- Interop review 30, finding 3: one time zone in each result --------------------------------------------------


def test_seg_and_sr_write_their_own_times_in_the_sources_time_zone() -> None:
    """The source's study times were in +0900 and the results' own in the process's clock (UTC in a container),
    with no offset: a Tokyo site saw a result made "before" its images."""
    series = mr_series(tumor_channels())
    for dataset in series:
        dataset.TimezoneOffsetFromUTC = "+0900"
    inputs = inputs_of(series)
    seg = written(build_segmentation(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS))
    findings = VolumeFindings(tumor_detected=True, tumor_volume_ml=4.5, slices_analysed=3, slices_with_tumor=3)
    report = written(build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS, [seg]))
    tokyo_now = datetime.now(timezone(timedelta(hours=9)))

    for result in (seg, report):
        assert result.TimezoneOffsetFromUTC == "+0900"
        for prefix in ("InstanceCreation", "Content", "Series"):
            made = datetime.strptime(
                f"{getattr(result, f'{prefix}Date')}{getattr(result, f'{prefix}Time')}", "%Y%m%d%H%M%S.%f"
            ).replace(tzinfo=tokyo_now.tzinfo)
            assert abs((tokyo_now - made).total_seconds()) < 120, prefix
        # Interop review 46 F3: highdicom's own contribution was dated in the process's clock, without an offset.
        contribution = result.ContributingEquipmentSequence[-1].ContributionDateTime
        assert contribution == f"{result.ContentDate}{result.ContentTime}+0900"
    assert dciodvfy_errors(seg, "Segmentation") == []
    assert dciodvfy_errors(report, "ComprehensiveSR") == []


@pytest.mark.parametrize("offset", [None, "+9900", "-2400", "+0099", "-1300", "+1401"])
def test_without_a_real_offset_in_the_sources_the_results_declare_none(offset: str | None) -> None:
    """Attack review 61 F2: "+9900" has the offset's form and made every SEG and SR of its study a 500; "+0099"
    dated them 1 h 39 min from UTC. Past -12:00 to +14:00, or past 59 minutes, it is no offset."""
    series = mr_series(tumor_channels())
    for dataset in series:
        if offset is not None:
            dataset.TimezoneOffsetFromUTC = offset
    inputs = inputs_of(series)
    seg = build_segmentation(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)
    findings = VolumeFindings(tumor_detected=True, tumor_volume_ml=4.5, slices_analysed=3, slices_with_tumor=3)
    report = build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS, [seg])

    assert "TimezoneOffsetFromUTC" not in seg and "TimezoneOffsetFromUTC" not in report
    assert (seg.SeriesDate, seg.SeriesTime) == (seg.ContentDate, seg.ContentTime)
    assert seg.ContributingEquipmentSequence[-1].ContributionDateTime == f"{seg.ContentDate}{seg.ContentTime}"
