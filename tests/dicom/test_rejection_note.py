"""The rejection note (IHE IOCM Key Object Selection) that withdraws superseded results: what it names, its UIDs."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pydicom
import pytest

from app.dicom.dicom_seg import build_segmentation, part10_bytes
from app.dicom.dicom_series import prepare_inputs
from app.dicom.dicom_sr import ResultReference, VolumeFindings, build_volume_report
from app.dicom.rejection_note import REJECTION_SERIES_NUMBER, build_rejection_note
from app.errors import ReportInputError
from app.release import service_version
from tests.conftest import TUMOR_SERIES, read_truth
from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.dicom.reading import read_dicom
from tests.dicom.validation import dciodvfy_errors

MODEL_TAGS = {"classifier": "cnn@1.2.3", "segmenter": "resunet@3.4.5"}


@pytest.fixture(scope="module")
def results() -> list[pydicom.Dataset]:
    """A SEG and its SR, read back as the node keeps them (headers only)."""
    inputs = prepare_inputs(
        [frame for dataset in mr_series(tumor_channels()) for frame in read_dicom(to_bytes(dataset))]
    )
    seg = build_segmentation(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)
    findings = VolumeFindings(tumor_detected=True, tumor_volume_ml=1.5, slices_analysed=3, slices_with_tumor=3)
    report = build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS, [seg])
    return [
        pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True) for data in (part10_bytes(seg), to_bytes(report))
    ]


def references(results: list[pydicom.Dataset]) -> list[ResultReference]:
    """The results as a record keeps them."""
    return [ResultReference(item.SeriesInstanceUID, item.SOPClassUID, item.SOPInstanceUID) for item in results]


def test_the_note_names_each_rejected_object_under_the_iocm_title(results: list[pydicom.Dataset]) -> None:
    note = build_rejection_note(references(results), results[-1], MODEL_TAGS, "dicom-node")

    referenced = [item.ReferencedSOPSequence[0] for item in note.ContentSequence]
    assert [(ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) for ref in referenced] == [
        (result.SOPClassUID, result.SOPInstanceUID) for result in results
    ]
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113001", "DCM")
    assert (note.Modality, note.SeriesNumber) == ("KO", REJECTION_SERIES_NUMBER)
    assert (note.PatientID, note.StudyInstanceUID) == (results[0].PatientID, results[0].StudyInstanceUID)
    evidence = note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {item.SeriesInstanceUID for item in evidence} == {result.SeriesInstanceUID for result in results}
    assert dciodvfy_errors(to_bytes(note), "KeyObjectSelectionDocument") == []


def test_the_same_objects_rejected_again_give_the_same_note(results: list[pydicom.Dataset]) -> None:
    study = results[-1]
    first = build_rejection_note(references(results), study, MODEL_TAGS)
    again = build_rejection_note(references(list(reversed(results))), study, MODEL_TAGS)
    fewer = build_rejection_note(references(results[:1]), study, MODEL_TAGS)

    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    assert first.SOPInstanceUID != fewer.SOPInstanceUID


def test_the_note_copies_the_patient_and_study_of_the_results_it_comes_with(results: list[pydicom.Dataset]) -> None:
    """Review 38 F4: highdicom copies only the Type 2 attributes; Issuer of Patient ID is part of the patient's
    identity (an archive keying patients by ID and issuer filed the note under another patient)."""
    study = results[-1].copy()
    study.IssuerOfPatientID, study.StudyDescription = "SYNTH-SITE", "MRI BRAIN"

    note = build_rejection_note(references(results), study, MODEL_TAGS)

    assert (note.IssuerOfPatientID, note.StudyDescription) == ("SYNTH-SITE", "MRI BRAIN")


def test_the_note_is_dated_in_the_study_time_zone_and_names_its_software(results: list[pydicom.Dataset]) -> None:
    """Interop review 44 F1: the note was dated in UTC without an offset (an hour before the results it came with,
    which are in the sources' zone), without Series Date and Time or Software Versions."""
    study = results[-1].copy()
    study.TimezoneOffsetFromUTC = "+1300"  # far from this machine's zone: a time in UTC would not match

    note = build_rejection_note(references(results), study, MODEL_TAGS)

    assert note.TimezoneOffsetFromUTC == "+1300"
    made = datetime.strptime(note.ContentDate + note.ContentTime, "%Y%m%d%H%M%S.%f")
    in_zone = datetime.now(timezone(timedelta(hours=13))).replace(tzinfo=None)
    assert abs((in_zone - made).total_seconds()) < 60
    assert (note.SeriesDate, note.SeriesTime) == (note.ContentDate, note.ContentTime)
    contributions = [item.get("ContributionDateTime") for item in note.get("ContributingEquipmentSequence", [])]
    assert f"{note.ContentDate}{note.ContentTime}+1300" in contributions  # interop review 46 F3
    assert note.SoftwareVersions == service_version()
    assert dciodvfy_errors(to_bytes(note), "KeyObjectSelectionDocument") == []


def test_a_note_needs_something_to_reject(results: list[pydicom.Dataset]) -> None:
    with pytest.raises(ReportInputError, match="at least one object"):
        build_rejection_note([], results[-1], MODEL_TAGS)
