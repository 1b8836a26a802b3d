"""A SEG and an SR carry the patient's and study's names as the source wrote them, whatever its character set.

A review found that a series in Japanese (`\\ISO 2022 IR 87`, the standard's own example) or Korean
(`ISO 2022 IR 6\\ISO 2022 IR 149`) got no SEG at all: highdicom refuses those Specific Character Set values. They
are now written in UTF-8 (ISO_IR 192); a character set highdicom takes is kept as it is. The node's rejection note,
made from a source header when a study is refused, is written the same way (interop review 48 F2).
"""

from __future__ import annotations

import io
import warnings

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ComprehensiveSRStorage, generate_uid

from app.dicom.dicom_seg import build_segmentation, part10_bytes
from app.dicom.dicom_series import SliceInput, prepare_inputs
from app.dicom.dicom_sr import ResultReference, VolumeFindings, build_volume_report
from app.dicom.rejection_note import build_rejection_note
from app.errors import SegmentationInputError
from tests.conftest import TUMOR_SERIES, read_truth
from tests.dicom.builders import Study, mr_series, to_bytes, tumor_channels
from tests.dicom.reading import read_dicom
from tests.dicom.validation import dciodvfy_errors

MODEL_TAGS = {"classifier": "cnn@1.2.3", "segmenter": "resunet@3.4.5"}

# (Specific Character Set of the source, patient name, study description, what the SEG and SR are written in)
CASES = {
    "japanese": (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", "頭部", "ISO_IR 192"),
    "korean": (["ISO 2022 IR 6", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동", "머리", "ISO_IR 192"),
    "latin1 with code extensions": ("ISO 2022 IR 100", "Müller^Jörg", "Tête", "ISO_IR 192"),
    "latin1": ("ISO_IR 100", "Müller^Jörg", "Tête", "ISO_IR 100"),
    "cyrillic": ("ISO_IR 144", "Иванов^Иван", "Голова", "ISO_IR 144"),
    "default repertoire": (None, "Doe^John", "Head", None),
}


def source_series(character_set: str | list[str] | None, name: str, description: str) -> list[SliceInput]:
    datasets = mr_series(tumor_channels(), Study())
    for dataset in datasets:
        if character_set is not None:
            dataset.SpecificCharacterSet = character_set
        dataset.PatientName = name
        dataset.StudyDescription = description
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a value that cannot be encoded in the source's character set
        files = [to_bytes(dataset) for dataset in datasets]
    return prepare_inputs([frame for data in files for frame in read_dicom(data)])


def written(dataset: Dataset | bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(dataset if isinstance(dataset, bytes) else to_bytes(dataset)))


@pytest.mark.parametrize("case", list(CASES))
def test_seg_and_sr_keep_names_in_any_character_set(case: str) -> None:
    character_set, name, description, written_in = CASES[case]
    inputs = source_series(character_set, name, description)
    masks = [read_truth(path) for path in TUMOR_SERIES]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seg = build_segmentation(inputs, masks, MODEL_TAGS)
        seg_bytes = part10_bytes(seg)
        findings = VolumeFindings(tumor_detected=True, tumor_volume_ml=1.5, slices_analysed=3, slices_with_tumor=3)
        report = build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS, [seg])
        report_bytes = to_bytes(report)

    for data, iod in ((seg_bytes, "Segmentation"), (report_bytes, "ComprehensiveSR")):
        found = written(data)
        assert found.get("SpecificCharacterSet") == written_in
        assert str(found.PatientName) == name
        assert found.StudyDescription == description
        assert dciodvfy_errors(data, iod) == []


def with_raw_value(keyword: str, vr: str, value: bytes, character_set: str | None) -> list[SliceInput]:
    """The series with `value` written as bytes, whatever `character_set` (declared; None: not) says of them."""
    datasets = mr_series(tumor_channels(), Study())
    tag = Tag(keyword)
    padded = value + (b" " if len(value) % 2 else b"")
    placeholder = b"Q" * len(padded)  # pydicom re-encodes a value it can decode (ESC ( B as nothing): bytes put after
    files = []
    for dataset in datasets:
        if character_set is not None:
            dataset.SpecificCharacterSet = character_set
        dataset[tag] = RawDataElement(tag, vr, len(placeholder), placeholder, 0, False, True)
        data = to_bytes(dataset)
        assert data.count(placeholder) == 1
        files.append(data.replace(placeholder, padded))
    return prepare_inputs([frame for data in files for frame in read_dicom(data)])


UNDECODABLE = {
    "latin-1 under utf-8": (b"M\xfcller^Hans", "ISO_IR 192"),
    "an escape iso 2022 has not": (b"M\x1b$Zller^Hans", "ISO 2022 IR 100"),
    "an escape without code extensions": (b"M\x1b(Bller^Hans", None),
    "an escape under latin-1 without code extensions": (b"M\x1b(Bller^Hans", "ISO_IR 100"),
}


@pytest.mark.parametrize("case", list(UNDECODABLE))
def test_a_name_that_does_not_decode_in_its_character_set_is_left_empty(case: str) -> None:
    """Attack review 37: a Latin-1 "Müller" declared UTF-8 reached the SEG and SR as "M\\ufffdller", with no note;
    an escape sequence ISO 2022 does not have was copied as raw ESC characters into a UTF-8 object."""
    value, character_set = UNDECODABLE[case]
    inputs = with_raw_value("PatientName", "PN", value, character_set)
    masks = [read_truth(path) for path in TUMOR_SERIES]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom says it could not decode the name: that is the case here
        seg = part10_bytes(build_segmentation(inputs, masks, MODEL_TAGS))
        findings = VolumeFindings(tumor_detected=True, tumor_volume_ml=1.5, slices_analysed=3, slices_with_tumor=3)
        report = to_bytes(
            build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS, [written(seg)])
        )

    for data, iod in ((seg, "Segmentation"), (report, "ComprehensiveSR")):
        assert str(written(data).PatientName) == ""
        assert dciodvfy_errors(data, iod) == []


@pytest.mark.parametrize(
    ("value", "character_set"),
    [(b"M\xfcller-1", "ISO_IR 192"), (b"AB\x1b(BCD", None), (b"AB\x1b(BCD", "ISO_IR 100")],
    ids=["latin-1 under utf-8", "escape without character set", "escape under latin-1"],
)
def test_a_patient_id_that_does_not_decode_in_its_character_set_refuses_the_seg(
    value: bytes, character_set: str | None
) -> None:
    """Left empty, the SEG would be filed as another patient's (the rule for a Patient ID broken otherwise). Attack
    review 38: an escape sequence where none is allowed was followed, and the SEG filed under Patient ID "ABCD"."""
    inputs = with_raw_value("PatientID", "LO", value, character_set)
    masks = [read_truth(path) for path in TUMOR_SERIES]

    with warnings.catch_warnings(), pytest.raises(SegmentationInputError, match="PatientID") as refused:
        warnings.simplefilter("ignore")
        build_segmentation(inputs, masks, MODEL_TAGS)
    assert "ller" not in str(refused.value)


def test_a_chinese_name_under_iso_2022_ir_58_reaches_the_seg_and_sr() -> None:
    """Interop review 61 F4: GB2312 by code extension (ESC $ ) A before each run, PS3.5 6.1.2.5) kept its escape
    sequences when pydicom decoded it, so the name and description were left out of the SEG and SR as broken."""
    gb = b"\x1b$)A"  # ESC $ ) A: GB2312 into G1
    name = b"Zhang^SanFeng=" + gb + "张".encode("gb2312") + b"^" + gb + "三丰".encode("gb2312")
    inputs = with_raw_value("PatientName", "PN", name, ["", "ISO 2022 IR 58"])
    masks = [read_truth(path) for path in TUMOR_SERIES]

    seg = part10_bytes(build_segmentation(inputs, masks, MODEL_TAGS))
    findings = VolumeFindings(tumor_detected=True, tumor_volume_ml=1.5, slices_analysed=3, slices_with_tumor=3)
    report = to_bytes(
        build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS, [written(seg)])
    )

    for data, iod in ((seg, "Segmentation"), (report, "ComprehensiveSR")):
        found = written(data)
        assert (found.SpecificCharacterSet, str(found.PatientName)) == ("ISO_IR 192", "Zhang^SanFeng=张^三丰")
        assert dciodvfy_errors(data, iod) == []


def test_an_escape_under_code_extensions_is_read_as_the_standard_says() -> None:
    """ESC ( B designates ASCII, which ISO 2022 IR 6 allows: the Patient ID is "ABCD" and the SEG is made."""
    inputs = with_raw_value("PatientID", "LO", b"AB\x1b(BCD", "ISO 2022 IR 6")
    masks = [read_truth(path) for path in TUMOR_SERIES]

    seg = written(part10_bytes(build_segmentation(inputs, masks, MODEL_TAGS)))

    assert seg.PatientID == "ABCD"


@pytest.mark.parametrize("case", list(CASES))
def test_a_rejection_note_made_from_a_source_keeps_its_names_in_any_character_set(case: str) -> None:
    """Interop review 48 F2: a study refused after it was answered gets a note made from a source header; a Japanese
    or Korean one (ISO 2022 code extensions, which highdicom refuses) got none, and its earlier results stood."""
    character_set, name, description, written_in = CASES[case]
    header = source_series(character_set, name, description)[0].reference.header
    earlier_sr = ResultReference(generate_uid(), ComprehensiveSRStorage, generate_uid())

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        note = to_bytes(build_rejection_note([earlier_sr], header, MODEL_TAGS, "dicom-node"))

    found = written(note)
    assert found.get("SpecificCharacterSet") == written_in
    assert str(found.PatientName) == name
    assert found.StudyDescription == description
    assert dciodvfy_errors(note, "KeyObjectSelectionDocument") == []
