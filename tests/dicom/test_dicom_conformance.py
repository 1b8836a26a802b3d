"""Defects 3, 4 and 7 of issue 17: sources without Type 2 attributes, Secondary Captures, 12-bit JPEG Extended."""

from __future__ import annotations

import copy
import io
import tomllib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedMRImageStorage, ImplicitVRLittleEndian, MRImageStorage

from app.dicom.dicom_conformance import (
    TYPE2_PATIENT_STUDY_ATTRIBUTES,
    derived_character_set,
    impossible_lengths,
    invalid_values,
    optional_copied_attributes,
    with_slice_thickness,
    with_type2_attributes,
)
from app.dicom.dicom_seg import build_segmentation
from app.dicom.dicom_seg_reader import read_segmentation_masks
from app.dicom.dicom_series import prepare_inputs
from app.dicom.dicom_sr import VolumeFindings, build_volume_report
from app.errors import ReportInputError, SegmentationInputError, UnsupportedDicomError, builder_reason
from app.settings import REPO_ROOT
from tests.conftest import TUMOR_SERIES, read_truth
from tests.dicom.builders import mr_series, secondary_capture, to_bytes, tumor_channels
from tests.dicom.reading import read_dicom
from tests.dicom.validation import dciodvfy_errors

MODEL_TAGS = {"classifier": "resnet-classifier@1.2.0", "segmenter": "resunet@3.4.5"}


def test_seg_of_sources_without_type2_attributes_is_built_and_valid() -> None:
    series = mr_series(tumor_channels())
    for dataset in series:
        for keyword in TYPE2_PATIENT_STUDY_ATTRIBUTES:
            delattr(dataset, keyword)  # as some de-identification tools leave them
    inputs = prepare_inputs([frame for dataset in series for frame in read_dicom(to_bytes(dataset))])
    masks = [read_truth(path) for path in TUMOR_SERIES]

    seg = build_segmentation(inputs, masks, MODEL_TAGS)

    assert "PatientBirthDate" in seg and not seg.PatientBirthDate and not seg.AccessionNumber  # present, empty
    assert "PatientBirthDate" not in inputs[0].reference.header  # the source headers are left alone
    decoded = read_segmentation_masks(seg)
    np.testing.assert_array_equal(decoded[series[1].SOPInstanceUID][0], masks[1])
    assert dciodvfy_errors(seg, "Segmentation") == []


def test_with_type2_attributes_returns_a_complete_dataset_unchanged() -> None:
    dataset = mr_series(tumor_channels()[:1])[0]

    assert with_type2_attributes(dataset) is dataset


def test_with_slice_thickness_fills_only_an_empty_thickness_and_leaves_the_source_alone() -> None:
    dataset = mr_series(tumor_channels()[:1])[0]
    assert with_slice_thickness(dataset, 4.4) is dataset  # it has its own
    dataset.SliceThickness = None

    filled = with_slice_thickness(dataset, 1 / 3)

    assert float(filled.SliceThickness) == pytest.approx(1 / 3, abs=1e-6) and len(str(filled.SliceThickness)) <= 16
    assert dataset.SliceThickness is None and filled.SOPInstanceUID == dataset.SOPInstanceUID
    assert with_slice_thickness(dataset, None) is dataset  # no spacing known: left for Type 2 completion


def test_a_classic_images_stray_functional_groups_do_not_refuse_its_seg() -> None:
    """Attack review 64 F6: a classic MR image's Shared Functional Groups (a converter's, never copied into its SEG)
    with a Slice Thickness of 0 refused its SEG; an enhanced image's are copied, and still refuse it."""
    dataset = mr_series(tumor_channels()[:1])[0]
    measures = Dataset()
    measures.SliceThickness, measures.PixelSpacing = "0", [0.9375, 0.9375]
    group = Dataset()
    group.PixelMeasuresSequence = [measures]
    dataset.SharedFunctionalGroupsSequence = [group]

    assert impossible_lengths([dataset]) == []
    dataset.SOPClassUID = EnhancedMRImageStorage
    assert impossible_lengths([dataset]) == ["SliceThickness"]


def test_seg_of_one_slice_without_thickness_takes_its_spacing_and_without_either_is_still_built() -> None:
    """One slice has no neighbour to measure: Spacing Between Slices stands in; with neither, the SEG is written
    without a thickness (a dciodvfy error only the source's own value can clear) rather than refused."""
    dataset = mr_series(tumor_channels()[:1])[0]
    del dataset.SliceThickness
    dataset.SpacingBetweenSlices = 3.3

    def seg_thickness() -> object:
        inputs = prepare_inputs(read_dicom(to_bytes(dataset)))
        seg = build_segmentation(inputs, [read_truth(TUMOR_SERIES[0])], MODEL_TAGS)
        return seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].get("SliceThickness")

    assert float(seg_thickness()) == pytest.approx(3.3)
    del dataset.SpacingBetweenSlices
    assert not seg_thickness()


def seg_and_sr_of_a_series_with(keyword: str, value: str) -> tuple[Dataset, Dataset, Dataset]:
    """A SEG and an SR of the tumor series whose every slice holds `value` in `keyword`, and the first slice's
    header as the service read it."""
    series = mr_series(tumor_channels())
    for dataset in series:
        setattr(dataset, keyword, value)
    inputs = prepare_inputs([frame for dataset in series for frame in read_dicom(to_bytes(dataset))])
    seg = build_segmentation(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=3, slices_with_tumor=0)
    report = build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS)
    return seg, report, inputs[0].reference.header


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("PatientName", "Doe^Jane\x00\r\nInjected"),  # control characters
        ("StudyTime", "25:99:99"),  # no time of day; highdicom failed on it naming nothing
        ("PatientSex", "m"),  # the enumerated values are upper case
        ("PatientBirthDate", "19700000"),  # no date
        ("AccessionNumber", "ACC\r\n1"),  # an identifier broken otherwise than by its length
    ],
)
def test_seg_and_sr_leave_empty_type2_source_values_that_break_their_type(keyword: str, value: str) -> None:
    """Interop review 35: such a value refused the SEG and SR, so the study got no result and the node sent
    nothing. Type 2 lets a value be empty when unknown: the SEG and SR carry it empty; the sources keep theirs."""
    seg, report, source = seg_and_sr_of_a_series_with(keyword, value)

    for made in (seg, report):
        assert keyword in made and not made[keyword].value
        assert made.PatientID == source.PatientID and made.StudyInstanceUID == source.StudyInstanceUID
    assert source[keyword].value  # the source as it came
    assert dciodvfy_errors(seg, "Segmentation") == []


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("AccessionNumber", "A" * 20),  # an SH holds 16; RIS numbers can be longer
        ("StudyID", "S" * 17),
        ("PatientID", "P" * 70),  # an LO holds 64
    ],
)
def test_seg_and_sr_copy_an_identifier_that_is_only_too_long_as_it_came(keyword: str, value: str) -> None:
    """A PACS or RIS matches a result to its study by these: shortened or emptied, they would match nothing."""
    seg, report, _ = seg_and_sr_of_a_series_with(keyword, value)

    for made in (seg, report):
        assert made[keyword].value == value
        written = pydicom.dcmread(io.BytesIO(to_bytes(made)))
        assert written[keyword].value == value


def seg_and_sr_of_a_series_with_element(keyword: str, vr: str, value: str) -> tuple[Dataset, Dataset]:
    """As `seg_and_sr_of_a_series_with`, the element written under `vr` (Explicit VR files)."""
    series = mr_series(tumor_channels())
    for dataset in series:
        dataset.add_new(keyword, vr, value)
    inputs = prepare_inputs([frame for dataset in series for frame in read_dicom(to_bytes(dataset))])
    seg = build_segmentation(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=3, slices_with_tumor=0)
    report = build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS)
    return seg, report


@pytest.mark.parametrize(
    ("keyword", "vr", "value", "copied"),
    [
        ("PatientSex", "LO", "male", ""),  # no CS value: emptied
        ("StudyTime", "LO", "noon", ""),
        ("StudyDate", "LO", "2024/01/01", "20240101"),  # an ACR-NEMA date, written in the standard's form
        ("AccessionNumber", "UT", "ACC\n123", ""),  # a line break, which UT allows and SH does not
        ("PatientID", "UT", "P" * 70, "P" * 70),  # only too long for an LO: copied, under LO
    ],
)
def test_a_type2_value_under_another_vr_is_judged_and_written_under_the_standard_one(
    keyword: str, vr: str, value: str, copied: str
) -> None:
    """Review 36b: written under another VR than the dictionary's, such a value refused the SEG and SR (highdicom
    read Patient's Sex "male" under LO), or was copied as it came under that VR (dciodvfy: UT where LO is required)."""
    seg, report = seg_and_sr_of_a_series_with_element(keyword, vr, value)

    for made in (seg, report):
        assert dictionary_VR(made[keyword].tag) == made[keyword].VR
        assert (made[keyword].value or "") == copied
    if copied != value:  # an identifier copied as it came breaks its length in the SEG as in the source
        assert dciodvfy_errors(seg, "Segmentation") == []


def test_an_identifier_far_too_long_is_left_empty_not_copied() -> None:
    """Review 36b: a 3,000-character Accession Number was copied; past four times its value type's length it is no
    identifier a RIS matches by."""
    seg, report, _ = seg_and_sr_of_a_series_with("AccessionNumber", "A" * 3000)

    assert not seg.AccessionNumber and not report.AccessionNumber


@pytest.mark.parametrize("value", ["P1\x00\r\nInjected", "P1\\P2"])
def test_seg_and_sr_refuse_a_patient_id_that_breaks_its_type_naming_it_not_quoting_it(value: str) -> None:
    """The one Type 2 value never left empty: a PACS files the result under the patient by it (Orthanc hashes it
    into the study's identifier), so an empty one would file the SEG and SR as another patient's study."""
    series = mr_series(tumor_channels())
    for dataset in series:
        dataset.PatientID = value
    inputs = prepare_inputs([frame for dataset in series for frame in read_dicom(to_bytes(dataset))])

    with pytest.raises(SegmentationInputError) as raised:
        build_segmentation(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)
    assert "PatientID" in raised.value.message and "P1" not in raised.value.message
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=3, slices_with_tumor=0)
    with pytest.raises(ReportInputError) as raised:
        build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS)
    assert "PatientID" in raised.value.message and "P1" not in raised.value.message


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyDescription", "Brain MRI " * 300),  # an LO holds 64 characters
        ("PatientAge", "54"),  # an AS is three digits and a unit: "054Y"
        ("PatientWeight", "72.123456789012345"),  # a DS holds 16 characters
    ],
)
def test_seg_and_sr_leave_out_optional_source_values_that_break_their_type(keyword: str, value: str) -> None:
    """Interop review 35: a Type 3 patient or study attribute the SEG and SR copy (Patient's Age without its unit)
    refused both, so the study got no result; it is left out of them instead. The sources are left as they came."""
    series = mr_series(tumor_channels())
    for dataset in series:
        dataset.PatientSex = "F"  # a valid neighbour is copied as before
        setattr(dataset, keyword, value)
    inputs = prepare_inputs([frame for dataset in series for frame in read_dicom(to_bytes(dataset))])

    seg = build_segmentation(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=3, slices_with_tumor=0)
    report = build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS)

    for made in (seg, report):
        assert keyword not in made and made.PatientSex == "F"
    assert str(inputs[0].reference.header.get(keyword)) == value.strip()  # DICOM pads, pydicom strips


def test_seg_and_sr_leave_out_an_optional_sequence_of_no_item() -> None:
    """Interop review 61 F6: an empty Other Patient IDs Sequence (some RIS exports write one) was copied into the SEG
    and SR, which dciodvfy reports (a Type 3 sequence, when present, holds one or more items); a sequence with items
    is copied as it came."""
    series = mr_series(tumor_channels())
    for dataset in series:
        dataset.OtherPatientIDsSequence = []
    inputs = prepare_inputs([frame for dataset in series for frame in read_dicom(to_bytes(dataset))])
    item = Dataset()
    item.PatientID, item.TypeOfPatientID = "OTHER-1", "TEXT"
    with_item = copy.deepcopy(inputs[0].reference.header)
    with_item.OtherPatientIDsSequence = [item]

    seg = build_segmentation(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=3, slices_with_tumor=0)
    report = build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS)
    report_of_items = build_volume_report([with_item], findings, MODEL_TAGS)

    assert "OtherPatientIDsSequence" not in seg and "OtherPatientIDsSequence" not in report
    assert report_of_items.OtherPatientIDsSequence[0].PatientID == "OTHER-1"


def test_seg_and_sr_refer_to_a_study_uid_with_leading_zero_components() -> None:
    """Interop review 35: legacy scanners wrote UIDs like 1.2.840.0123.4; the SEG and SR of such a study were
    refused, though they must refer to the UID that exists (and the series' and instances' were accepted)."""
    series = mr_series(tumor_channels())
    study_uid = "1.2.840.0113654.2.70.1.123"
    for dataset in series:
        dataset.StudyInstanceUID = study_uid
    inputs = prepare_inputs([frame for dataset in series for frame in read_dicom(to_bytes(dataset))])

    seg = build_segmentation(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=3, slices_with_tumor=0)
    report = build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS)

    assert seg.StudyInstanceUID == report.StudyInstanceUID == study_uid


def test_seg_and_sr_write_legacy_dates_and_times_in_the_standards_form() -> None:
    """Attack review 33: a Study Date of "2024/01/01" (ACR-NEMA's form, with the separators archives use) refused the
    SEG and the SR, and the node sent nothing for the study. The copies are written in the standard's form; the
    sources are left as they came."""
    series = mr_series(tumor_channels())
    for dataset in series:
        dataset.StudyDate, dataset.PatientBirthDate, dataset.StudyTime = "2024/01/01", "1970-01-01", "12:30:00"
    inputs = prepare_inputs([frame for dataset in series for frame in read_dicom(to_bytes(dataset))])

    seg = build_segmentation(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=3, slices_with_tumor=0)
    report = build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS)

    for made in (seg, report):
        assert (made.StudyDate, made.PatientBirthDate, made.StudyTime) == ("20240101", "19700101", "123000")
    assert inputs[0].reference.header.StudyDate == "2024/01/01"
    assert dciodvfy_errors(seg, "Segmentation") == []


def test_values_that_fit_their_type_pass_the_check() -> None:
    dataset = mr_series(tumor_channels()[:1])[0]
    dataset.StudyDescription = "Hirn MRT, Übersicht"  # non-ASCII letters are text, not control characters
    dataset.PatientComments = "first line\r\nsecond line"  # an LT may hold line breaks

    assert invalid_values(dataset) == []


def test_seg_of_an_mr_secondary_capture_is_valid() -> None:
    capture = secondary_capture(mr_series(tumor_channels()[:1])[0], "MR")
    inputs = prepare_inputs(read_dicom(to_bytes(capture)))

    seg = build_segmentation(inputs, [read_truth(TUMOR_SERIES[0])], MODEL_TAGS)

    assert "PatientOrientation" in seg
    assert dciodvfy_errors(seg, "Segmentation") == []


@pytest.mark.parametrize(
    ("modality", "found"),
    [
        ("NM", "got Modality NM"),
        ("OT", "got Modality OT"),
        ("", "got no Modality"),
        ("DOE^JANE", "got another Modality"),
    ],
)
def test_non_mr_secondary_capture_is_unsupported_naming_only_a_standard_modality(modality: str, found: str) -> None:
    """Attack finding: any Modality value was quoted, a patient's name put there too, in the answer and the node's
    log and Error Comment."""
    capture = secondary_capture(mr_series(tumor_channels()[:1])[0], modality)

    with pytest.raises(UnsupportedDicomError) as caught:
        read_dicom(to_bytes(capture))

    assert caught.value.message == (
        f"a DICOM Secondary Capture is read only as a capture of an MR slice (Modality MR); {found}"
    )


def test_nm_secondary_capture_test_file_is_unsupported() -> None:
    data = Path(get_testdata_file("JPEG-lossy.dcm")).read_bytes()  # pydicom's NM Secondary Capture

    with pytest.raises(UnsupportedDicomError, match="got Modality NM"):
        read_dicom(data)


def test_12_bit_jpeg_extended_is_unsupported_not_undecodable() -> None:
    dataset = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))  # 12-bit JPEG Extended (1.2.840.10008.1.2.4.51)
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = MRImageStorage
    dataset.Modality = "MR"

    with pytest.raises(UnsupportedDicomError) as caught:
        read_dicom(to_bytes(dataset))

    assert caught.value.code == "unsupported_dicom"
    assert caught.value.message.startswith(
        "DICOM transfer syntax JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51) with 12 bits stored cannot be "
        "decoded by this service"
    )


def test_a_highdicom_refusal_names_a_missing_attribute_but_no_value() -> None:
    """highdicom reads what it needs with attribute access: pydicom's AttributeError names the DICOM keyword, which
    is no file content and the one useful part of the message; quoted values stay out."""
    dataset = Dataset()
    dataset.PatientName = "Secret^Name"
    with pytest.raises(AttributeError) as raised:
        _ = dataset.SliceThickness

    assert builder_reason(raised.value) == "a source image lacks SliceThickness"
    assert builder_reason(ValueError("value 'Secret^Name' is invalid")) == "value '...' is invalid"
    assert (
        builder_reason(AttributeError("'str' object has no attribute 'secret'"))
        == "'...' object has no attribute '...'"
    )


def test_several_values_where_the_dictionary_allows_one_are_refused() -> None:
    """Attack finding: a source with two Patient IDs gave a SEG and an SR with two (dciodvfy: bad multiplicity)."""
    dataset = mr_series(tumor_channels()[:1])[0]
    dataset.PatientID = ["ID-1", "ID-2"]
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "M"]  # 2-n: several are its form

    assert invalid_values(dataset) == ["PatientID"]


def _with_undeclared_name(dataset: Dataset, name: bytes) -> bytes:
    """`dataset` as a file that declares no character set and holds `name` (even length) as its Patient's Name."""
    if "SpecificCharacterSet" in dataset:
        del dataset.SpecificCharacterSet
    dataset.PatientName = "Q" * len(name)
    data = to_bytes(dataset)
    assert data.count(b"Q" * len(name)) == 1
    return data.replace(b"Q" * len(name), name)


@pytest.mark.parametrize(
    "name", [b"M\xc3\xbcller^J\xc3\xb6rg ", b"M\xfcller^J\xf6rgen"], ids=["UTF-8 bytes", "Latin-1 bytes"]
)
def test_an_undeclared_name_reaches_the_seg_and_sr_as_its_bytes_meant_it(name: bytes) -> None:
    """Interop review 35: UTF-8 bytes in a file without a Specific Character Set (as many modalities write them) were
    read as Latin-1 and copied as "MÃ¼ller"; Latin-1 bytes, which are no valid UTF-8, are read as Latin-1 still."""
    expected = "Müller^Jörg" if name.startswith(b"M\xc3") else "Müller^Jörgen"
    series = mr_series(tumor_channels())
    frames = [frame for dataset in series for frame in read_dicom(_with_undeclared_name(dataset, name))]
    inputs = prepare_inputs(frames)

    seg = build_segmentation(inputs, [read_truth(path) for path in TUMOR_SERIES], MODEL_TAGS)
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=3, slices_with_tumor=0)
    report = build_volume_report([item.reference.header for item in inputs], findings, MODEL_TAGS)

    for made in (seg, report):
        assert made.SpecificCharacterSet == "ISO_IR 192"
        assert str(pydicom.dcmread(io.BytesIO(to_bytes(made))).PatientName) == expected


def test_a_source_without_a_character_set_but_with_latin_1_text_gives_utf_8_objects() -> None:
    """Attack finding: such names were copied into objects declaring the default repertoire, which cannot hold
    them; pydicom read them as Latin-1, so UTF-8 holds them as read."""
    dataset = mr_series(tumor_channels()[:1])[0]
    assert "SpecificCharacterSet" not in dataset or not dataset.SpecificCharacterSet
    assert derived_character_set(dataset) is None  # ASCII only: the default repertoire still holds it

    dataset.PatientName = "Müller^Jürgen"
    assert derived_character_set(dataset) == "ISO_IR 192"


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_the_checks_of_a_header_read_no_value_they_do_not_check(implicit: bool) -> None:
    """Attack review 66 F3: checking a Patient ID, or whether the text is ASCII, read every element of the header: a
    DS element of 32,767 values is 32,767 Python objects, and 300 of them in a 20 MB upload took 4 GB. Only the
    elements checked are read; a Latin-1 name in an element still unread still asks for UTF-8."""
    dataset = mr_series(tumor_channels()[:1])[0]
    many = 0x00331000
    dataset.add_new(many, "DS", "\\".join(["1.5"] * 5000))  # private: never copied, never checked
    dataset.add_new(0x00181164, "DS", "\\".join(["0.5"] * 5000))  # Imager Pixel Spacing: not copied either
    dataset.PatientID = "ID\\TWO"
    if implicit:
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian

    read = pydicom.dcmread(io.BytesIO(to_bytes(dataset)))
    assert invalid_values(read, ["PatientID", "PatientName"]) == ["PatientID"]
    assert derived_character_set(read) is None
    assert all(isinstance(read.get_item(tag), RawDataElement) for tag in (many, 0x00181164))

    dataset.PatientName = "Müller^Jürgen"
    latin_1 = pydicom.dcmread(io.BytesIO(to_bytes(dataset)))
    assert isinstance(latin_1.get_item(0x00100010), RawDataElement)
    assert derived_character_set(latin_1) == "ISO_IR 192"


def test_optional_copied_attributes_are_read_from_highdicom() -> None:
    """Newcomer review 45 F23: the tables come from highdicom's private `_standard_utils`; a release that moves them
    fails here, not at the first SEG built from a source with an invalid optional value."""
    attributes = optional_copied_attributes()

    assert {"PatientAge", "PatientWeight", "StudyDescription"} <= attributes  # Type 3
    assert "PatientID" not in attributes and "StudyDate" not in attributes  # Type 2


def test_highdicom_is_pinned_exactly_for_its_private_tables() -> None:
    """A range pin let any minor release move the private module `optional_copied_attributes` imports."""
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]

    assert [item for item in dependencies if item.startswith("highdicom")] == ["highdicom==0.28.2"]
