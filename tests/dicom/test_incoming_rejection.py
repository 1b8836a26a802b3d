"""Reading an incoming IHE IOCM rejection note (interop review 48 F1): which instances it withdraws, and when it
withdraws none."""

from __future__ import annotations

import pytest
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from app.dicom.incoming_rejection import REJECTION_TITLES, incoming_rejection
from tests.dicom.builders import Study, key_object_selection, mr_series, tumor_channels


@pytest.fixture(scope="module")
def series() -> list[Dataset]:
    return mr_series(tumor_channels())


@pytest.mark.parametrize("code", sorted(REJECTION_TITLES))
def test_a_note_of_cid_7011_rejects_the_instances_its_content_names(series: list[Dataset], code: str) -> None:
    note = key_object_selection(series, series[1:], CodedConcept(code, "DCM", REJECTION_TITLES[code]))

    rejection = incoming_rejection(note)

    assert rejection is not None
    assert rejection.study_instance_uid == series[0].StudyInstanceUID
    assert rejection.sop_instance_uids == {dataset.SOPInstanceUID for dataset in series[1:]}
    assert rejection.reason == f"{code} {REJECTION_TITLES[code]}"


def test_an_ordinary_key_image_selection_rejects_nothing(series: list[Dataset]) -> None:
    assert incoming_rejection(key_object_selection(series, series[:1], codes.DCM.OfInterest)) is None


def test_a_note_of_another_study_rejects_nothing(series: list[Dataset]) -> None:
    """Its content names instances its evidence lists under another study than the note's own."""
    other = mr_series(tumor_channels(), Study())
    note = key_object_selection(series, series[:1])
    note.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID = other[0].StudyInstanceUID

    assert incoming_rejection(note) is None


def test_an_image_rejects_nothing(series: list[Dataset]) -> None:
    assert incoming_rejection(series[0]) is None
