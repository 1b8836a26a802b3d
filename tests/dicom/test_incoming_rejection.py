"""Reading an incoming IHE IOCM rejection note (interop review 48 F1): which instances it withdraws, and when it
withdraws none."""

from __future__ import annotations

import zlib

import pytest
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from app.dicom.incoming_rejection import (
    MAX_NOTE_BYTES,
    REJECTION_TITLES,
    RejectionNoteTooLargeError,
    incoming_rejection,
    may_be_rejection_note,
    read_rejection_note,
    title_unknown,
)
from app.dicom.part10 import read_file_meta
from app.errors import UndecodableDicomError
from tests.dicom.builders import Study, deflated_and_padded, key_object_selection, mr_series, to_bytes, tumor_channels


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


def padded_note(series: list[Dataset], padding: int, transfer_syntax: str) -> bytes:
    """A rejection note of the series' last instance carrying `padding` zero bytes in a private element."""
    note = key_object_selection(series, series[-1:])
    note.add_new(0x00290010, "LO", "PADDING")
    note.add_new(0x00291010, "OB", bytes(padding))
    note.file_meta.TransferSyntaxUID = transfer_syntax
    return to_bytes(note)


def test_a_note_is_read_back_whole_deflated_or_not(series: list[Dataset]) -> None:
    for transfer_syntax in (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian):
        rejection = incoming_rejection(read_rejection_note(padded_note(series, 1000, transfer_syntax)))
        assert rejection is not None and rejection.sop_instance_uids == {series[-1].SOPInstanceUID}


def test_a_deflated_note_inflating_past_the_limit_is_refused_before_it_is_held(series: list[Dataset]) -> None:
    """Review 48r F1: a deflated KOS of 1 MB inflating to 1 GiB was read whole by pynetdicom (+2 GiB, 29 s)."""
    data = padded_note(series, MAX_NOTE_BYTES + 1, DeflatedExplicitVRLittleEndian)
    assert len(data) < MAX_NOTE_BYTES // 100

    with pytest.raises(RejectionNoteTooLargeError, match="once inflated"):
        read_rejection_note(data)


def test_a_note_over_the_limit_as_sent_is_refused(series: list[Dataset]) -> None:
    with pytest.raises(RejectionNoteTooLargeError):
        read_rejection_note(padded_note(series, MAX_NOTE_BYTES, ExplicitVRLittleEndian))


def test_a_key_object_selection_cut_before_its_title_may_be_a_note(series: list[Dataset]) -> None:
    """Style review 63 F1: read whole, pydicom keeps what comes before the cut, and the note read as an untitled KOS
    that withdraws nothing; the DICOM node answered Success, the API analysed the images it withdraws."""
    data = to_bytes(key_object_selection(series, series[-1:]))
    cut = data[: data.rindex(b"\x10\x00\x20\x00LO") + 9]  # inside the Patient ID, before the Document Title

    assert may_be_rejection_note(cut)
    with pytest.raises(UndecodableDicomError, match="cut short"):
        read_rejection_note(cut)
    at_a_boundary = read_rejection_note(data[: data.rindex(b"\x10\x00\x20\x00LO")])  # no element cut: read whole
    with pytest.raises(UndecodableDicomError, match="without its Document Title"):
        incoming_rejection(at_a_boundary)


@pytest.mark.parametrize("into_title", [12, 16, 24, 43, 100, 300, 700, -1])
def test_a_note_cut_inside_or_after_its_title_is_never_read_as_whole(series: list[Dataset], into_title: int) -> None:
    """Review 64 F3, F4: pydicom keeps what comes before a cut, as if the file were whole: a note cut inside its title
    read as an untitled selection, one cut in its content as a note naming nothing, and the images it withdraws were
    analysed (the API's 200, the node's Success). A cut note is refused wherever it is cut."""
    data = to_bytes(key_object_selection(series, series[-1:]))
    cut = data[: data.index(b"\x40\x00\x43\xa0") + into_title] if into_title >= 0 else data[:-1]

    assert may_be_rejection_note(cut)
    with pytest.raises(UndecodableDicomError):
        incoming_rejection(read_rejection_note(cut))


def test_a_key_image_selection_cut_after_its_title_withdraws_nothing(series: list[Dataset]) -> None:
    data = to_bytes(key_object_selection(series, series[-1:], codes.DCM.OfInterest))
    cut = data[: data.index(b"\x40\x00\x43\xa0") + 300]

    assert not may_be_rejection_note(cut)
    assert incoming_rejection(read_rejection_note(cut)) is None


@pytest.mark.parametrize(
    "code", [{"LongCodeValue": "L" * 70, "CodingSchemeDesignator": "99LOCAL"}, {"URNCodeValue": "urn:oid:1.2.3"}]
)
def test_a_title_of_a_long_or_urn_code_value_is_told(series: list[Dataset], code: dict[str, str]) -> None:
    """Review 65 F1: only a Code Value was taken for a title; a key object selection titled by a Long Code Value or
    a URN Code Value, which DICOM allows, was refused everywhere as one whose title is untold."""
    selection = key_object_selection(series, series[-1:], codes.DCM.OfInterest)
    title = selection.ConceptNameCodeSequence[0]
    del title.CodeValue, title.CodingSchemeDesignator
    for keyword, value in code.items():
        setattr(title, keyword, value)

    assert not title_unknown(selection)
    assert not may_be_rejection_note(to_bytes(selection))
    assert incoming_rejection(read_rejection_note(to_bytes(selection))) is None


def test_a_deflated_note_whose_inflated_data_is_cut_is_never_read_as_whole(series: list[Dataset]) -> None:
    """Review 65 F4: the deflate stream whole, the data set in it cut inside an element: read as a note withdrawing
    part of what it names (the API's 200), where the same cut not deflated was refused."""
    data = deflated_and_padded(key_object_selection(series, series[-1:]))
    meta_end, _ = read_file_meta(data)
    inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[meta_end:])
    cut = inflated[: inflated.rindex(b"\x08\x00\x99\x11SQ") + 20]  # inside the content's references
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    cut_note = data[:meta_end] + packer.compress(cut) + packer.flush()

    assert may_be_rejection_note(cut_note)
    with pytest.raises(UndecodableDicomError, match="cut short"):
        read_rejection_note(cut_note)


def test_the_three_readers_decide_damaged_selections_alike(series: list[Dataset]) -> None:
    """Review 66 F2, F4, F6: a note without SOP Class UID was refused by the node only; a key image selection whose
    title lacks its scheme was refused everywhere; a note whose image item lost its reference withdrew the rest."""
    note = key_object_selection(series, series)
    del note.SOPClassUID
    assert may_be_rejection_note(to_bytes(note))
    with pytest.raises(UndecodableDicomError):
        incoming_rejection(read_rejection_note(to_bytes(note)))

    selection = key_object_selection(series, series[-1:], codes.DCM.OfInterest)
    del selection.ConceptNameCodeSequence[0].CodingSchemeDesignator
    assert not may_be_rejection_note(to_bytes(selection))
    assert incoming_rejection(read_rejection_note(to_bytes(selection))) is None

    note = key_object_selection(series, series)
    del note.ContentSequence[1].ReferencedSOPSequence
    with pytest.raises(UndecodableDicomError, match="without its reference"):
        incoming_rejection(read_rejection_note(to_bytes(note)))
