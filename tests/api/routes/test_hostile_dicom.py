"""Malformed DICOM and raster uploads found by an attack on the service: each gets a 4xx naming what is wrong, never a
500, and no answer quotes a value from the file (the canary CANARY stands in for a patient's name)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from app.dicom.dicom_sr import VolumeFindings, build_volume_report
from app.errors import ReportInputError
from app.imaging import MAX_IMAGE_SIDE
from tests.dicom.builders import (
    SLICE_GAP_MM,
    Study,
    legacy_multiframe,
    mr_series,
    to_bytes,
    tumor_channels,
    with_broken_rle,
)
from tests.dicom.reading import read_dicom
from tests.dicom.validation import dciodvfy_errors

CANARY = "DOE^JOHN"
ENDPOINTS = (("/v1/predict", "file"), ("/v1/overlay", "file"), ("/v1/predict/batch", "files"))


def series() -> list[Dataset]:
    return mr_series(tumor_channels())


def as_files(datasets: list[Dataset]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The series as the `files` parts of one /v1/predict/batch request."""
    return [("files", (f"IM{index}", to_bytes(dataset), "application/dicom")) for index, dataset in enumerate(datasets)]


def with_element(keyword: str, vr: str, value: object) -> bytes:
    dataset = series()[0]
    tag = tag_for_keyword(keyword)
    dataset[tag] = DataElement(tag, vr, value)
    return to_bytes(dataset)


def with_transfer_syntax(uid: str, dataset: Dataset | None = None) -> bytes:
    """Native pixel data (of `dataset`, or a slice of `series`) under another Transfer Syntax UID, one pydicom does
    not know or a compressed one (patched in the file meta's bytes: pydicom writes neither)."""
    data = bytearray(to_bytes(dataset or series()[0]))
    start = data.index(b"\x02\x00\x10\x00UI")
    old_length = struct.unpack("<H", data[start + 6 : start + 8])[0]
    new = uid.encode() + (b"\0" if len(uid) % 2 else b"")
    data[start + 6 : start + 8 + old_length] = struct.pack("<H", len(new)) + new
    return bytes(data)


def with_more_pixels_than_rows_say() -> bytes:
    dataset = series()[0]
    dataset.Rows = dataset.Columns = 1  # the pixel data still holds 256 x 256
    return to_bytes(dataset)


MALFORMED = {
    "BitsStored as text": (lambda: with_element("BitsStored", "LO", CANARY), "invalid_dicom_image", "BitsStored"),
    "per-frame groups as text": (
        lambda: with_element("PerFrameFunctionalGroupsSequence", "LO", CANARY),
        "invalid_dicom_image",
        "PerFrameFunctionalGroupsSequence",
    ),
    "shared groups as bytes": (
        lambda: with_element("SharedFunctionalGroupsSequence", "OB", b"\x05\x06"),
        "invalid_dicom_image",
        "SharedFunctionalGroupsSequence",
    ),
    "unknown transfer syntax": (
        lambda: with_transfer_syntax("1.2.3.4.5"),
        "unsupported_dicom",
        "transfer syntax is not a standard one",
    ),
    "more pixels than Rows x Columns": (with_more_pixels_than_rows_say, "invalid_dicom_image", "Rows x Columns"),
    "Number of Frames as text": (
        lambda: with_element("NumberOfFrames", "LO", CANARY),
        "undecodable_dicom",
        "Number of Frames",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize(("path", "field"), ENDPOINTS)
def test_a_malformed_dicom_file_gets_a_400_that_names_the_problem(client: TestClient, case, path, field) -> None:
    build, code, named = MALFORMED[case]

    response = client.post(path, files={field: ("IM0001", build(), "application/dicom")})

    assert response.status_code == (415 if code == "unsupported_dicom" else 400), response.text
    error = response.json()["error"]
    assert error["code"] == code and named in error["message"]
    assert CANARY not in response.text


def test_one_malformed_file_in_a_series_gets_its_own_error_and_the_rest_is_analysed(client: TestClient) -> None:
    datasets = series()
    broken = datasets[1]
    broken[tag_for_keyword("BitsStored")] = DataElement(tag_for_keyword("BitsStored"), "LO", CANARY)
    files = as_files(datasets)

    response = client.post("/v1/predict/batch", files=files)

    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["slices"]) == 2
    assert [(error["index"], error["error"]["code"]) for error in body["file_errors"]] == [(1, "invalid_dicom_image")]


def without_study_uid(dataset: Dataset, index: int) -> None:
    del dataset.StudyInstanceUID


def with_instance_uid_no_uid(dataset: Dataset, index: int) -> None:
    dataset.SOPInstanceUID = f"1.2.abc{index}"  # attack finding: referenced as it came by the SEG and the SR


def with_series_uid_no_uid(dataset: Dataset, index: int) -> None:
    dataset.SeriesInstanceUID = "1.2.x"


@pytest.mark.parametrize(
    ("spoil", "keyword"),
    [
        (without_study_uid, "StudyInstanceUID"),
        (with_instance_uid_no_uid, "SOPInstanceUID"),
        (with_series_uid_no_uid, "SeriesInstanceUID"),
    ],
    ids=["no-study-uid", "instance-uid-not-a-uid", "series-uid-not-a-uid"],
)
@pytest.mark.parametrize("output", ["dicom-seg", "dicom-sr", "dicom-seg-sr"])
def test_a_series_without_usable_uids_gets_a_400_for_dicom_outputs_and_its_json_answer(
    client: TestClient, output: str, spoil, keyword: str
) -> None:
    datasets = series()
    for index, dataset in enumerate(datasets):
        spoil(dataset, index)
    files = as_files(datasets)

    refused = client.post(f"/v1/predict/batch?output={output}", files=files)
    answered = client.post("/v1/predict/batch?output=json", files=files)

    assert refused.status_code == 400, refused.text
    # The SEG comes first; the SR alone (output=dicom-sr) is then tried, and refused for the same reason.
    expected = "invalid_report_input" if output == "dicom-sr" else "invalid_segmentation_input"
    assert refused.json()["error"]["code"] == expected
    assert f"lack {keyword} or hold one that is no UID" in refused.json()["error"]["message"]
    assert answered.status_code == 200 and answered.json()["tumor_detected"] is True


def test_a_file_with_the_sop_instance_uid_of_an_earlier_one_gets_its_own_error(client: TestClient) -> None:
    """Attack finding: two different slices under one SOP Instance UID were answered (and a SEG made) as two slices
    of one instance. The first is read; the second gets an error in its place, as any file that cannot be used."""
    datasets = series()
    datasets[1].SOPInstanceUID = datasets[0].SOPInstanceUID
    files = as_files(datasets)

    answer = client.post("/v1/predict/batch", files=files)
    seg = client.post("/v1/predict/batch?output=dicom-seg", files=files)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [item["sop_instance_uid"] for item in body["slices"]] == [
        str(datasets[0].SOPInstanceUID),
        str(datasets[2].SOPInstanceUID),
    ]
    (failure,) = body["file_errors"]
    assert (failure["index"], failure["error"]["code"]) == (1, "invalid_dicom_image")
    assert failure["error"]["message"] == (
        "the file has the SOP Instance UID of the request's file at index 0 (file 1 as sent; series 1: instance 1); "
        "a UID names one instance, which is read once"
    )
    assert seg.status_code == 200 and seg.headers["x-skipped-file-indices"] == "1"  # a SEG of the two distinct ones


def test_a_report_of_sources_without_study_uid_is_refused_with_a_reason() -> None:
    source = series()[0]
    del source.StudyInstanceUID
    findings = VolumeFindings(tumor_detected=False, tumor_volume_ml=0.0, slices_analysed=1, slices_with_tumor=0)

    with pytest.raises(ReportInputError, match="lack StudyInstanceUID"):
        build_volume_report([source], findings, {"classifier": "c@1", "segmenter": "s@1"})


@pytest.mark.parametrize("spacing", [["1e300", "1e300"], ["1e-300", "1e-300"], [0.0, 0.0], [-1.0, -1.0]])
@pytest.mark.parametrize("output", ["json", "dicom-seg", "dicom-sr", "dicom-seg-sr"])
def test_a_pixel_spacing_no_image_can_have_gives_no_volume(client: TestClient, spacing, output) -> None:
    """JSON answers without a volume; a SEG or SR, which would copy a spacing the standard forbids (0 or below:
    attack finding, objects that fail dciodvfy), is refused naming it. A vanishing one (1e-300) gave a tumor of
    0.0 mL (attack review 37)."""
    datasets = series()
    for dataset in datasets:
        dataset.PixelSpacing = spacing
    files = as_files(datasets)

    response = client.post(f"/v1/predict/batch?output={output}", files=files)

    if output == "dicom-sr" and float(spacing[0]) <= 0:  # the SR alone, no volume, saying why no SEG was made
        assert response.status_code == 200, response.text
        assert "x-tumor-volume-ml" not in response.headers
        assert b"No DICOM SEG was made of this series: " in response.content
        assert b"PixelSpacing must be above 0" in response.content
        return
    if output != "json" and float(spacing[0]) <= 0:
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] in ("invalid_segmentation_input", "invalid_report_input")
        assert "PixelSpacing must be above 0" in response.json()["error"]["message"]
        return
    assert response.status_code == 200, response.text
    if output == "json":
        assert response.json()["tumor_detected"] is True and response.json()["tumor_volume_ml"] is None
    else:
        assert "x-tumor-volume-ml" not in response.headers


@pytest.mark.parametrize("thickness", [-5.0, 0.0])
@pytest.mark.parametrize(("output", "iod"), [("dicom-seg", "Segmentation"), ("dicom-sr", "ComprehensiveSR")])
def test_a_slice_thickness_of_zero_or_below_is_not_copied_into_the_seg_or_sr(
    client: TestClient, thickness: float, output: str, iod: str
) -> None:
    """Interop review 62: a negative Slice Thickness (Type 2, a legal DS) refused the SEG and the SR, so the DICOM node
    and pacs-sync sent nothing for the study (F1); a 0, which software that knows none writes, was copied into the
    SEG's Pixel Measures, an error to dciodvfy (F2). The SEG's frames take the slices' spacing, as for an empty one,
    and the SR's image library, which would repeat it, is left out."""
    datasets = series()
    for dataset in datasets:
        dataset.SliceThickness = thickness

    made = client.post(f"/v1/predict/batch?output={output}", files=as_files(datasets))
    plain = client.post(f"/v1/predict/batch?output={output}", files=as_files(series()))

    assert made.status_code == 200, made.text
    assert made.headers["x-tumor-volume-ml"] == plain.headers["x-tumor-volume-ml"]
    found = pydicom.dcmread(io.BytesIO(made.content))
    thicknesses = [float(element.value) for element in found.iterall() if element.keyword == "SliceThickness"]
    assert thicknesses == ([SLICE_GAP_MM] if output == "dicom-seg" else [])
    assert dciodvfy_errors(made.content, iod) == []


@pytest.mark.parametrize("thickness", [-5.0, 0.0])
def test_an_enhanced_images_slice_thickness_of_zero_or_below_refuses_its_seg_naming_it(
    client: TestClient, thickness: float
) -> None:
    """Review 71 F7: an enhanced image's 0 went into its SEG's Pixel Measures, an error to dciodvfy (a classic image's
    is left out; the SEG copies an enhanced image's functional groups). The DICOM node then sends the SR alone."""
    multiframe = legacy_multiframe(series())
    multiframe.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness = thickness

    refused = client.post("/v1/predict/batch?output=dicom-seg", files=as_files([multiframe]))
    answered = client.post("/v1/predict/batch?output=json", files=as_files([multiframe]))

    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["message"].startswith("the source's SliceThickness must be above 0")
    assert answered.status_code == 200 and answered.json()["tumor_volume_ml"] is not None


@pytest.mark.parametrize("output", ["dicom-seg", "dicom-sr"])
def test_a_negative_spacing_between_slices_is_left_out_of_the_seg_and_sr(client: TestClient, output) -> None:
    """Interop review 61 F9: a negative Spacing Between Slices (optional, and written so by some software) refused
    the SEG and the SR, so the DICOM node sent nothing for the study, not even its report. The positions give the
    spacing: the value is left out of both, as a contradicted one is."""
    datasets = series()
    for dataset in datasets:
        dataset.SpacingBetweenSlices = -SLICE_GAP_MM
    files = as_files(datasets)

    made = client.post(f"/v1/predict/batch?output={output}", files=files)
    plain = client.post(f"/v1/predict/batch?output={output}", files=as_files(series()))

    assert made.status_code == 200, made.text
    assert made.headers["x-tumor-volume-ml"] == plain.headers["x-tumor-volume-ml"]
    found = pydicom.dcmread(io.BytesIO(made.content))
    spacings = [element.value for element in found.iterall() if element.keyword == "SpacingBetweenSlices"]
    assert all(float(value) >= 0 for value in spacings)


@pytest.mark.parametrize(
    ("keyword", "value", "reason"),
    [
        ("ImagePositionPatient", ["1.0", "2.0"], "must hold 3 numbers; it holds 2"),
        ("ImagePositionPatient", "text", "must hold 3 decimal numbers"),
        # finite, but past what float arithmetic on it survives: an internal error before (attack review)
        ("ImagePositionPatient", ["0.0", "0.0", "1e307"], "within 1000000 mm of the origin in each coordinate"),
        ("ImageOrientationPatient", [1.0, 0.0, 0.0, 0.0, 1.0], "must hold 6 numbers; it holds 5"),
        ("ImageOrientationPatient", [0.0] * 6, "two unit-length, orthogonal direction cosines"),
        ("ImageOrientationPatient", [2.0, 0.0, 0.0, 0.0, 2.0, 0.0], "two unit-length, orthogonal direction cosines"),
        ("ImageOrientationPatient", [1.0, 0.0, 0.0, 0.7071, 0.7071, 0.0], "two unit-length, orthogonal"),
        ("PixelSpacing", [0.5], "must hold 2 numbers; it holds 1"),
    ],
)
@pytest.mark.parametrize("output", ["json", "dicom-seg"])
def test_a_malformed_geometry_value_is_refused_naming_the_element(client: TestClient, keyword, value, reason, output):
    """Attack finding: such values were taken as absent for JSON (an orientation of length 2 even gave a tumor
    volume four times too large) and failed the SEG with a library's message."""
    datasets = series()
    setattr(datasets[1], keyword, [9.25, 9.5, 9.75] if value == "text" else value)
    files = as_files(datasets)
    if value == "text":  # pydicom will not write it: patched in the bytes
        patched = files[1][1][1].replace(b"9.25\\9.5\\9.75", b"9.25\\9.5\\9.7x")
        assert patched != files[1][1][1]
        files[1] = ("files", ("IM1", patched, "application/dicom"))

    alone = client.post(f"/v1/predict?output={output}", files={"file": files[1][1]})
    in_series = client.post(f"/v1/predict/batch?output={output}", files=files)

    assert alone.status_code == 400, alone.text
    assert alone.json()["error"]["code"] == "invalid_dicom_image"
    assert keyword in alone.json()["error"]["message"] and reason in alone.json()["error"]["message"]
    assert in_series.status_code == 200  # in a series, that file is left out and counted, as any broken file
    if output == "json":
        assert len(in_series.json()["slices"]) == len(datasets) - 1
    else:
        assert in_series.headers["X-Files-Skipped"] == "1"


@pytest.mark.parametrize(
    ("keyword", "written"),
    [
        ("SliceThickness", b"5,000 "),
        ("SpacingBetweenSlices", b"5.0mm "),
        ("SliceThickness", b"inf   "),  # interop review 63 F3: not finite, or two values, failed SEG and SR
        ("SliceThickness", b"1e400 "),
        ("SliceThickness", b"5\\5   "),
        ("SpacingBetweenSlices", b"5\\5   "),
    ],
    ids=["comma", "unit", "inf", "overflow", "two-thicknesses", "two-spacings"],
)
@pytest.mark.parametrize("output", ["json", "dicom-seg", "dicom-sr"])
def test_a_slice_length_that_reads_as_no_number_is_taken_as_absent(
    client: TestClient, keyword: str, written: bytes, output: str
) -> None:
    """Interop review 61 F10: a Slice Thickness written "5,0" (a decimal comma) or a Spacing Between Slices "5mm"
    refused the whole series on every path, though the slices' positions give their spacing; and neither may be
    copied into a SEG or SR as it came."""
    datasets = series()
    for dataset in datasets:
        setattr(dataset, keyword, 9.125)
    files = as_files(datasets)
    for index, (field, (name, data, content_type)) in enumerate(files):
        patched = data.replace(b"9.125 ", written)  # pydicom will not write it: patched in the bytes, as long
        assert patched != data
        files[index] = (field, (name, patched, content_type))

    answered = client.post(f"/v1/predict/batch?output={output}", files=files)
    plain = client.post(f"/v1/predict/batch?output={output}", files=as_files(series()))

    assert answered.status_code == 200, answered.text
    if output == "json":
        assert answered.json()["tumor_volume_ml"] == plain.json()["tumor_volume_ml"] is not None
        return
    assert answered.headers["x-tumor-volume-ml"] == plain.headers["x-tumor-volume-ml"]
    made = pydicom.dcmread(io.BytesIO(answered.content))
    assert written.strip() not in answered.content or written.strip() == b"inf"  # words hold "inf": dciodvfy judges
    assert dciodvfy_errors(answered.content, "Segmentation" if output == "dicom-seg" else "ComprehensiveSR") == []
    assert made.Modality == ("SEG" if output == "dicom-seg" else "SR")


def test_direction_cosines_rounded_as_scanners_write_them_are_read() -> None:
    datasets = series()
    for dataset in datasets:
        dataset.ImageOrientationPatient = [0.999999, 0.001, 0.0, -0.001, 0.999999, 0.0]

    for dataset in datasets:
        (frame,) = read_dicom(to_bytes(dataset))
        assert frame.image_orientation == (0.999999, 0.001, 0.0, -0.001, 0.999999, 0.0)


@pytest.mark.parametrize("keyword", ["PatientSex", "PatientBirthDate", "StudyTime"])
def test_type2_values_that_break_their_type_are_left_empty_not_copied(client: TestClient, keyword) -> None:
    dataset = series()[0]
    setattr(dataset, keyword, CANARY)

    response = client.post(
        "/v1/predict?output=dicom-seg", files={"file": ("IM0001", to_bytes(dataset), "application/dicom")}
    )

    assert response.status_code == 200, response.text
    seg = pydicom.dcmread(io.BytesIO(response.content))
    assert keyword in seg and not seg[keyword].value
    assert CANARY.encode() not in response.content


def test_a_broken_patient_id_is_refused_without_quoting_it(client: TestClient) -> None:
    dataset = series()[0]
    dataset.PatientID = CANARY + "\r\n"  # a line break: an LO allows none

    response = client.post(
        "/v1/predict?output=dicom-seg", files={"file": ("IM0001", to_bytes(dataset), "application/dicom")}
    )

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_segmentation_input"
    assert "PatientID" in response.text and CANARY not in response.text and "DOE" not in response.text


@pytest.mark.parametrize(("width", "height"), [(MAX_IMAGE_SIDE + 1, 1), (1, MAX_IMAGE_SIDE + 1)])
@pytest.mark.parametrize(("path", "field"), ENDPOINTS)
def test_an_image_with_a_side_over_the_limit_is_refused_as_too_large(
    client: TestClient, width, height, path, field
) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width), np.uint8)).save(buffer, format="PNG")

    response = client.post(path, files={field: ("long.png", buffer.getvalue(), "image/png")})

    if path == "/v1/predict/batch":  # a raster batch answers each image on its own
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        assert result["ok"] is False
        error = result["error"]
    else:
        assert response.status_code == 413, response.text
        error = response.json()["error"]
    assert error["code"] == "image_too_large" and str(MAX_IMAGE_SIDE) in error["message"]


def test_a_decoder_failure_is_told_in_one_line_without_pydicoms_dispatch_preamble(client: TestClient) -> None:
    """attack26 finding 3: the message carried pydicom's "Unable to decode as exceptions were raised by all
    available plugins:" and a newline before each plugin's report."""
    files = [
        ("files", (f"{index}.dcm", to_bytes(with_broken_rle(dataset)), "application/dicom"))
        for index, dataset in enumerate(series())
    ]

    response = client.post("/v1/predict/batch", files=files)

    assert response.status_code == 400 and response.json()["error"]["code"] == "undecodable_dicom"
    assert response.json()["error"]["message"] == (
        "none of the 3 files could be used, each for the same reason: DICOM pixel data cannot be decoded: pydicom: "
        "The amount of decoded RLE segment data doesn't match the expected amount (3 vs. 65536 bytes)"
    )


def test_a_flair_series_that_does_not_decode_gives_way_to_another_flair_series(client: TestClient) -> None:
    """attack26 finding 4: the FLAIR series chosen from the headers had pixel data no decoder could read, and the
    request failed (400) though a readable FLAIR series was sent beside it."""
    study = Study()
    broken = [with_broken_rle(dataset) for dataset in mr_series(tumor_channels(), study, series_number=1)]
    readable = mr_series(tumor_channels(), study, series_number=2)
    files = [
        ("files", (f"{index}.dcm", to_bytes(dataset), "application/dicom"))
        for index, dataset in enumerate(broken + readable)
    ]

    response = client.post("/v1/predict/batch", files=files)

    assert response.status_code == 200, response.text
    body = response.json()
    assert {item["sop_instance_uid"] for item in body["slices"]} == {str(item.SOPInstanceUID) for item in readable}
    assert (
        "the series chosen first could not be read (3 files); the next one the rules choose was read"
        in (body["selection_notes"])
    )
    assert len(body["file_errors"]) == 3


def spacings_between_slices(dataset: Dataset) -> list[float]:
    """Every Spacing Between Slices a SEG (its Pixel Measures) or an SR (its image library) states."""
    found: list[float] = []

    def collect(_: Dataset, element: DataElement) -> None:
        if element.keyword == "SpacingBetweenSlices" and element.value not in (None, ""):
            found.append(float(element.value))
        elif element.keyword == "ContentSequence":
            for item in element.value:
                name = item.get("ConceptNameCodeSequence")
                if name and name[0].CodeMeaning == "Spacing between slices":
                    found.append(float(item.MeasuredValueSequence[0].NumericValue))

    dataset.walk(collect)
    return found


@pytest.mark.parametrize("output", ["dicom-seg", "dicom-sr"])
@pytest.mark.parametrize(("stated", "copied"), [(SLICE_GAP_MM / 2, False), (SLICE_GAP_MM, True)])
def test_a_spacing_between_slices_the_positions_contradict_is_not_copied(
    client: TestClient, output: str, stated: float, copied: bool
) -> None:
    """Attack finding: slices 5 mm apart whose Spacing Between Slices says 2.5 gave a SEG and an SR that repeated
    2.5 mm beside frames 5 mm apart. The value is optional in both: left out of the sources they are made from when
    the positions contradict it."""
    datasets = series()
    for dataset in datasets:
        dataset.SpacingBetweenSlices = stated
    files = as_files(datasets)

    response = client.post(f"/v1/predict/batch?output={output}", files=files)

    assert response.status_code == 200, response.text
    result = pydicom.dcmread(io.BytesIO(response.content))
    stated_in_result = spacings_between_slices(result)
    assert set(stated_in_result) <= {SLICE_GAP_MM}  # highdicom writes the positions' spacing in a SEG without one
    if copied:
        assert stated_in_result, "a spacing that agrees with the positions is copied as before"


def test_native_pixels_under_a_compressed_transfer_syntax_get_a_400_that_quotes_no_pixel(client: TestClient) -> None:
    """Attack review 37: pydicom's "Found unexpected tag (CDAB,12EF) instead of (FFFE,E000)" reached the answer, the
    "tag" being the first four bytes of the pixels."""
    dataset = series()[0]
    pixels = bytearray(dataset.PixelData)
    pixels[:4] = bytes.fromhex("ABCDEF12")
    dataset.PixelData = bytes(pixels)
    data = with_transfer_syntax(pydicom.uid.JPEGBaseline8Bit, dataset)  # the pixels stay native

    response = client.post("/v1/predict", files={"file": ("IM0", data, "application/dicom")})

    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "CDAB" not in message.upper() and "12EF" not in message.upper() and "cannot be decoded" in message


def with_garbled_vr(data: bytes, element: bytes, vr: bytes) -> bytes:
    """`data` (explicit VR little endian) with the VR of the element whose tag bytes and VR are `element` made `ES`,
    a VR DICOM does not define, as one garbled byte pair makes it."""
    garbled = bytearray(data)
    at = garbled.index(element + vr)
    garbled[at + 4 : at + 6] = b"ES"
    return bytes(garbled)


PATIENT_ID_LO = (b"\x10\x00\x20\x00", b"LO")
SERIES_NUMBER_IS = (b"\x20\x00\x11\x00", b"IS")


@pytest.mark.parametrize(("endpoint", "field"), ENDPOINTS)
@pytest.mark.parametrize("element", [PATIENT_ID_LO, SERIES_NUMBER_IS], ids=["PatientID", "SeriesNumber"])
def test_an_element_of_a_value_representation_dicom_does_not_define_gets_a_400(
    client: TestClient, endpoint: str, field: str, element: tuple[bytes, bytes]
) -> None:
    """Attack review 59 F5: pydicom kept the element raw and raised NotImplementedError when the series choice read
    it, after the header's checks: a 500 for the request."""
    data = with_garbled_vr(to_bytes(series()[0]), *element)

    response = client.post(endpoint, files=[(field, ("IM0", data, "application/dicom"))])

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "undecodable_dicom"
    assert "value representation 'ES', which DICOM does not define" in response.json()["error"]["message"]


def test_a_garbled_value_representation_fails_its_file_only_at_any_depth(client: TestClient) -> None:
    """One file of a batch, its VR garbled inside a sequence item: that file is refused, the rest analysed."""
    datasets = series()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113000", "DCM", "Of Interest"
    datasets[1].AnatomicRegionSequence = [code]
    files = as_files(datasets)
    data = files[1][1][1]
    files[1] = ("files", ("IM1", with_garbled_vr(data, b"\x08\x00\x04\x01", b"LO"), "application/dicom"))  # CodeMeaning

    response = client.post("/v1/predict/batch", files=files)

    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["slices"]) == 2
    assert [(error["index"], error["error"]["code"]) for error in body["file_errors"]] == [(1, "undecodable_dicom")]


def test_a_private_element_of_a_vr_pydicom_does_not_know_is_left_alone(client: TestClient) -> None:
    """Review 61 F4: the check refused a vendor's private element of its own VR (or one newer than pydicom), which the
    service never reads: a file analysed before became a 400."""
    dataset = series()[0]
    dataset.add_new(0x00090010, "LO", "ACME")
    dataset.add_new(0x00091001, "LO", "VENDOR")
    data = with_garbled_vr(to_bytes(dataset), b"\x09\x00\x01\x10", b"LO")

    response = client.post("/v1/predict", files={"file": ("IM0", data, "application/dicom")})

    assert response.status_code == 200, response.text


def test_a_file_whose_slice_thickness_is_written_as_a_time_fails_alone_and_the_report_is_made(
    client: TestClient,
) -> None:
    """Attack review 60 F1: a defined VR other than the element's (SliceThickness as TM) read as text where the SR
    needs a number; the whole series' SR failed for that one file. The file is refused alone now."""
    files = as_files(series())
    broken = bytearray(files[1][1][1])
    at = broken.index(b"\x18\x00\x50\x00DS")
    broken[at + 4 : at + 6] = b"TM"
    files[1] = ("files", ("IM1", bytes(broken), "application/dicom"))

    response = client.post("/v1/predict/batch?output=dicom-seg-sr", files=files)

    assert response.status_code == 200, response.text
    assert response.headers["X-Skipped-File-Indices"] == "1"


def test_an_implicit_vr_file_whose_pixel_representation_breaks_its_length_fails_alone(client: TestClient) -> None:
    """Review 62 F1: the repeats' key read Pixel Representation before any check: a 500 for the request (and a
    crashed study at the node). Implicit VR elements the flow reads are checked by their dictionary VR now."""
    dataset = series()[0]
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    data = bytearray(to_bytes(dataset))
    at = data.index(b"\x28\x00\x03\x01\x02\x00\x00\x00")  # (0028,0103), length 2
    data[at + 4 : at + 10] = (3).to_bytes(4, "little") + data[at + 8 : at + 10] + b"\x00"

    response = client.post("/v1/predict/batch", files=[("files", ("IM0", bytes(data), "application/dicom"))])

    assert response.status_code == 400, response.text
    assert "(0028,0103) has value representation 'US' and a length of 3 bytes" in response.json()["error"]["message"]


def test_an_element_the_flow_never_reads_keeps_its_odd_length(client: TestClient) -> None:
    """Review 62 F5: an Acquisition Matrix of 7 bytes (old scanners write such) was refused with its file, though
    nothing reads it."""
    dataset = series()[0]
    dataset.add_new(0x00181310, "US", [256, 0, 0, 256])
    data = bytearray(to_bytes(dataset))
    at = data.index(b"\x18\x00\x10\x13US\x08\x00")
    data[at + 6 : at + 8] = (7).to_bytes(2, "little")
    data[at + 15 : at + 16] = b""  # 7 bytes of value

    response = client.post("/v1/predict", files={"file": ("IM0", bytes(data), "application/dicom")})

    assert response.status_code == 200, response.text
