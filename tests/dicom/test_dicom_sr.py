from __future__ import annotations

import copy
import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from app.dicom.dicom_seg import MANUFACTURER, build_segmentation
from app.dicom.dicom_series import SliceInput, prepare_inputs
from app.dicom.dicom_sr import (
    RESEARCH_USE_STATEMENT,
    SR_SERIES_NUMBER,
    VolumeFindings,
    VolumeReportInputError,
    build_volume_report,
)
from app.dicom.dicom_sr_reader import read_volume_report, report_comments
from app.dicom.tumor_volume import slice_spacing_mm
from tests.conftest import TUMOR_SERIES, read_truth
from tests.dicom.builders import legacy_multiframe, mr_series, to_bytes, tumor_channels
from tests.dicom.reading import read_dicom
from tests.dicom.validation import dciodvfy_errors

MODEL_TAGS = {"classifier": "resnet-classifier@1.2.0", "segmenter": "resunet@3.4.5"}


def series_inputs(datasets: list[Dataset]) -> list[SliceInput]:
    return prepare_inputs([frame for dataset in datasets for frame in read_dicom(to_bytes(dataset))])


def headers(inputs: list[SliceInput]) -> list[Dataset]:
    return [slice_input.reference.header for slice_input in inputs]


def coding_scheme_designators(report: Dataset) -> set[str]:
    """Every Coding Scheme Designator in the report's content tree."""
    found: set[str] = set()
    for item in report.ContentSequence:
        item.walk(lambda _, element: found.add(element.value) if element.keyword == "CodingSchemeDesignator" else None)
    return found


def written(dataset: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(to_bytes(dataset)))


@pytest.fixture(scope="module")
def flair_inputs() -> list[SliceInput]:
    return series_inputs(mr_series(tumor_channels()))


def test_positive_report_holds_volume_slices_models_and_the_seg(flair_inputs: list[SliceInput]) -> None:
    masks = [read_truth(path) for path in TUMOR_SERIES]
    seg = build_segmentation(flair_inputs, masks, MODEL_TAGS)
    notes = ("T1 series left out: no pre-contrast series; FLAIR analysed alone", "2 FLAIR series found")
    findings = VolumeFindings(
        tumor_detected=True, tumor_volume_ml=4.321, slices_analysed=3, slices_with_tumor=3, notes=notes
    )

    report = written(build_volume_report(headers(flair_inputs), findings, MODEL_TAGS, [seg]))

    assert read_volume_report(report) == {
        "finding": "Present",
        "tumor_volume_ml": 4.321,
        "slices_analysed": 3,
        "slices_with_tumor": 3,
        "slices_missing": 0,
        "tumor_reaches_series_end": False,
        "notes": list(notes),
        "algorithm": ("resunet", "3.4.5"),
        "segmentation_sop_instance_uid": seg.SOPInstanceUID,
        "segmentation_sop_instance_uids": [seg.SOPInstanceUID],
    }
    source = flair_inputs[0].reference.header
    assert report.StudyInstanceUID == source.StudyInstanceUID
    assert report.SeriesNumber == SR_SERIES_NUMBER
    assert report.Manufacturer == MANUFACTURER
    assert report.CompletionFlag == "COMPLETE" and report.VerificationFlag == "UNVERIFIED"
    # dicom24: two versions of a result (same series number) could not be told apart by a viewer: when each was made.
    assert (report.SeriesDate, report.SeriesTime) == (report.ContentDate, report.ContentTime)
    assert (seg.SeriesDate, seg.SeriesTime) == (seg.ContentDate, seg.ContentTime)
    evidence = {
        sop.ReferencedSOPInstanceUID
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert evidence == {seg.SOPInstanceUID, *(item.reference.sop_instance_uid for item in flair_inputs)}
    assert dciodvfy_errors(report, "ComprehensiveSR") == []
    # Every private ("99...") coding scheme the content uses is declared, as PS3.16 asks.
    private = {scheme for scheme in coding_scheme_designators(report) if scheme.startswith("99")}
    declared = {item.CodingSchemeDesignator for item in report.get("CodingSchemeIdentificationSequence", [])}
    assert private == {"99BRAINTUMOR"} and private <= declared


def test_negative_report_says_analysed_and_absent(flair_inputs: list[SliceInput]) -> None:
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=3, slices_with_tumor=0)

    report = written(build_volume_report(headers(flair_inputs), findings, MODEL_TAGS))

    assert read_volume_report(report) == {
        "finding": "Absent",
        "tumor_volume_ml": 0.0,
        "slices_analysed": 3,
        "slices_with_tumor": 0,
        "slices_missing": 0,
        "tumor_reaches_series_end": False,
        "notes": [],
        "algorithm": ("resunet", "3.4.5"),
        "segmentation_sop_instance_uid": None,
        "segmentation_sop_instance_uids": [],
    }
    assert dciodvfy_errors(report, "ComprehensiveSR") == []


@pytest.mark.parametrize("detected", [True, False])
def test_every_report_states_research_use_in_its_content_tree(flair_inputs: list[SliceInput], detected: bool) -> None:
    """Docs review 45 F5: only the Series Description said so, which SR viewers seldom show beside the finding."""
    segmentations = [build_segmentation(flair_inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)]
    findings = VolumeFindings(
        tumor_detected=detected,
        tumor_volume_ml=4.321 if detected else 0.0,
        slices_analysed=3,
        slices_with_tumor=3 if detected else 0,
    )

    report = written(build_volume_report(headers(flair_inputs), findings, MODEL_TAGS, segmentations))

    assert report_comments(report) == [RESEARCH_USE_STATEMENT]
    assert RESEARCH_USE_STATEMENT.startswith("Research use only - not for clinical diagnosis.")
    assert dciodvfy_errors(report, "ComprehensiveSR") == []


def test_the_same_findings_give_the_same_report_uids_and_other_findings_new_ones(
    flair_inputs: list[SliceInput],
) -> None:
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=3, slices_with_tumor=0)
    fewer = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=2, slices_with_tumor=0)

    first = build_volume_report(headers(flair_inputs), findings, MODEL_TAGS)
    again = build_volume_report(headers(flair_inputs), findings, MODEL_TAGS)
    other = build_volume_report(headers(flair_inputs[:2]), fewer, MODEL_TAGS)

    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    assert first.SOPInstanceUID != other.SOPInstanceUID and first.SeriesInstanceUID != other.SeriesInstanceUID


@pytest.mark.parametrize("keyword", ["PatientID", "IssuerOfPatientID", "StudyInstanceUID"])
def test_the_same_findings_under_another_patient_or_study_get_report_uids_of_their_own(
    flair_inputs: list[SliceInput], keyword: str
) -> None:
    """Attack review 37: a negative report names no SEG; the same images under a corrected Patient ID (or in another
    study) got the first report's UIDs and tracking UID."""
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=3, slices_with_tumor=0)
    refiled = [copy.deepcopy(header) for header in headers(flair_inputs)]
    for header in refiled:
        setattr(header, keyword, "1.2.3.4" if keyword == "StudyInstanceUID" else "CORRECTED")

    first = build_volume_report(headers(flair_inputs), findings, MODEL_TAGS)
    other = build_volume_report(refiled, findings, MODEL_TAGS)

    assert first.SOPInstanceUID != other.SOPInstanceUID and first.SeriesInstanceUID != other.SeriesInstanceUID
    assert tracking_uids(first).isdisjoint(tracking_uids(other))


def tracking_uids(report: Dataset) -> set[str]:
    """The values of the report's Tracking Unique Identifier items (DCM 112040)."""
    found: set[str] = set()

    def visit(item: Dataset, element) -> None:
        names = item.get("ConceptNameCodeSequence") or []
        if element.keyword == "UID" and names and names[0].CodeValue == "112040":
            found.add(str(element.value))

    report.walk(visit)
    assert found, "the report names no tracking UID"
    return found


def test_report_of_pydicom_mr_test_file_without_type2_attributes() -> None:
    source = pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
    del source.PatientBirthDate, source.StudyID, source.AccessionNumber  # as after de-identification
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=1, slices_with_tumor=0)

    report = written(build_volume_report([source], findings, MODEL_TAGS))

    assert "PatientBirthDate" not in source  # the caller's dataset is left alone
    assert report.PatientBirthDate == "" and report.StudyID == ""
    assert dciodvfy_errors(report, "ComprehensiveSR") == []


def test_unknown_volume_is_left_out(flair_inputs: list[SliceInput]) -> None:
    seg = build_segmentation(flair_inputs, [np.ones((256, 256), np.uint8), None, None], MODEL_TAGS)
    findings = VolumeFindings(tumor_detected=True, tumor_volume_ml=None, slices_analysed=3, slices_with_tumor=1)

    report = written(build_volume_report(headers(flair_inputs), findings, MODEL_TAGS, [seg]))

    assert read_volume_report(report)["tumor_volume_ml"] is None
    assert dciodvfy_errors(report, "ComprehensiveSR") == []


def test_positive_report_needs_its_seg(flair_inputs: list[SliceInput]) -> None:
    findings = VolumeFindings(tumor_detected=True, tumor_volume_ml=1.0, slices_analysed=3, slices_with_tumor=1)

    with pytest.raises(VolumeReportInputError, match="a positive finding must come with its SEG; got none"):
        build_volume_report(headers(flair_inputs), findings, MODEL_TAGS)


def test_report_covers_one_series() -> None:
    inputs = series_inputs(mr_series(tumor_channels()[:1])) + series_inputs(mr_series(tumor_channels()[1:2]))
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=2, slices_with_tumor=0)

    with pytest.raises(VolumeReportInputError, match="covers one series; the source images come from 2"):
        build_volume_report(headers(inputs), findings, MODEL_TAGS)


@pytest.mark.parametrize(
    ("detected", "volume", "analysed", "with_tumor", "message"),
    [
        (True, 1.0, 3, 4, "slices_with_tumor must be between 0 and slices_analysed; got 4 of 3"),
        (False, 0.0, 3, 1, "tumor_detected must be True exactly when slices_with_tumor > 0; got False with 1"),
        (True, -1.0, 3, 1, "tumor_volume_ml must be >= 0; got -1.0"),
    ],
)
def test_findings_are_validated(detected: bool, volume: float, analysed: int, with_tumor: int, message: str) -> None:
    with pytest.raises(VolumeReportInputError, match=message.replace("(", r"\(")):
        VolumeFindings(detected, volume, analysed, with_tumor)


@pytest.mark.parametrize(
    ("keyword", "how"),
    [
        ("SliceThickness", "empty"),  # Type 2: legal, and it made the SR fail
        ("SliceThickness", "absent"),  # a de-identifier's doing: it made the SEG fail too
        ("SpacingBetweenSlices", "empty"),
        ("Modality", "absent"),
    ],
)
def test_seg_and_report_of_slices_with_an_empty_or_missing_plane_attribute(keyword: str, how: str) -> None:
    datasets = mr_series(tumor_channels())
    for dataset in datasets:
        if how == "empty":
            setattr(dataset, keyword, None)
        else:
            delattr(dataset, keyword)
    inputs = series_inputs(datasets)
    findings = VolumeFindings(tumor_detected=True, tumor_volume_ml=1.5, slices_analysed=3, slices_with_tumor=3)

    seg = build_segmentation(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)
    report = written(build_volume_report(headers(inputs), findings, MODEL_TAGS, [seg]))

    assert read_volume_report(report)["tumor_volume_ml"] == 1.5
    assert dciodvfy_errors(report, "ComprehensiveSR") == []
    # A SEG's frames need a thickness (Type 1C): without the source's, the slices' spacing, the slab each mask
    # stands for in the tumor volume; the caller's datasets keep theirs empty or absent.
    assert dciodvfy_errors(seg, "Segmentation") == []
    thickness = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness
    if keyword == "SliceThickness":
        assert float(thickness) == pytest.approx(slice_spacing_mm([item.reference for item in inputs]))
        assert all(not dataset.get(keyword) for dataset in datasets)
    else:
        assert float(thickness) == float(datasets[0].SliceThickness)


def test_the_report_lists_its_images_in_its_image_library_when_they_describe_their_plane(
    flair_inputs: list[SliceInput],
) -> None:
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=3, slices_with_tumor=0)

    report = written(build_volume_report(headers(flair_inputs), findings, MODEL_TAGS))

    (library,) = [
        item for item in report.ContentSequence if item.ConceptNameCodeSequence[0].CodeMeaning == "Image Library"
    ]
    (group,) = library.ContentSequence
    listed = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in group.ContentSequence}
    assert listed == {item.reference.sop_instance_uid for item in flair_inputs}


def test_an_enhanced_multiframe_series_gets_its_report() -> None:
    """Enhanced MR keeps each frame's plane in its functional groups: highdicom's image library, which reads the top
    level, failed on it, so such a series (what current scanners send) got a SEG but no SR."""
    multiframe = legacy_multiframe(mr_series(tumor_channels()))
    inputs = series_inputs([multiframe])
    seg = build_segmentation(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)
    findings = VolumeFindings(tumor_detected=True, tumor_volume_ml=2.5, slices_analysed=3, slices_with_tumor=3)

    report = written(build_volume_report([inputs[0].reference.header], findings, MODEL_TAGS, [seg]))

    assert read_volume_report(report)["segmentation_sop_instance_uid"] == seg.SOPInstanceUID
    assert dciodvfy_errors(report, "ComprehensiveSR") == []
