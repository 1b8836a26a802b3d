"""DICOM over HTTP: the predict endpoints read DICOM series and answer in JSON or as a DICOM SEG."""

from __future__ import annotations

import io
import itertools
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000, JPEG2000Lossless, generate_uid

from app.dicom.dicom_seg import MANUFACTURER, SEG_SERIES_DESCRIPTION, SEGMENT_LABEL
from app.dicom.dicom_seg_reader import read_segmentation_masks
from app.dicom.dicom_series import model_inputs
from app.dicom.dicom_sr import RESEARCH_USE_STATEMENT
from app.dicom.dicom_sr_reader import read_volume_report, report_comments
from app.dicom.slice_order import UNKNOWN_ORDER_NOTE, VOLUME_UNKNOWN_NOTE
from app.inference import Predictor, SlicePrediction
from app.prediction import PredictionService
from app.series import reading as series_reading
from app.series.result import single_slice_answers
from tests.api.service_client import LIMITED_UPLOAD_BYTES, decode_rle
from tests.conftest import TUMOR_SLICE, pyproject_version
from tests.dicom.builders import (
    Study,
    legacy_multiframe,
    mr_series,
    multiframe_secondary_capture,
    secondary_capture_series,
    to_bytes,
    tumor_channels,
    with_broken_rle,
    write_files,
)
from tests.dicom.reading import read_series
from tests.dicom.validation import dciodvfy_errors
from tests.node.node_support import dcmtk


@pytest.fixture(scope="module")
def series_files() -> list[bytes]:
    """Three single-frame MR instances of one series, built from the committed tumor slices' FLAIR channel."""
    return [to_bytes(dataset) for dataset in mr_series(tumor_channels())]


@pytest.fixture(scope="module")
def expected(tiny_model_dir: Path, series_files: list[bytes]) -> list[SlicePrediction]:
    """What the predictor itself says about the series' slices, read and preprocessed as the service does."""
    predictor = Predictor.from_model_dir(tiny_model_dir)
    return predictor.predict_preprocessed(*model_inputs(read_series(series_files, max_pixels=1 << 20).inputs))


def assert_matches(prediction: dict, reference: SlicePrediction) -> None:
    """A JSON prediction says what the predictor says: probability, decision and mask."""
    assert prediction["tumor_probability"] == pytest.approx(reference.probability, abs=1e-6)
    assert prediction["tumor_detected"] is reference.detected
    np.testing.assert_array_equal(decode_rle(prediction["mask"]["rle"]), reference.mask)


def dicom_parts(files: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"IM{index:04d}", data, "application/dicom")) for index, data in enumerate(files)]


def test_predict_reads_one_dicom_instance_as_a_slice(
    client: TestClient, series_files: list[bytes], tiny_model_dir: Path
) -> None:
    response = client.post("/v1/predict", files={"file": ("IM0001", series_files[0], "application/dicom")})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tumor_detected"] is True  # the tiny models call every slice positive
    assert body["mask"]["size"] == [256, 256]
    # Alone, the instance is normalised over itself (not over the series).
    (reference,) = Predictor.from_model_dir(tiny_model_dir).predict_preprocessed(
        *model_inputs(read_series(series_files[:1], max_pixels=1 << 20).inputs)
    )
    assert_matches(body, reference)


def test_predict_batch_of_dicom_series_gives_one_result_per_slice_and_volume(
    client: TestClient, series_files: list[bytes], expected: list[SlicePrediction]
) -> None:
    response = client.post("/v1/predict/batch", files=dicom_parts(series_files))

    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["index"] for item in body["slices"]] == [0, 1, 2]
    assert [item["file_index"] for item in body["slices"]] == [0, 1, 2]
    assert [item["frame_number"] for item in body["slices"]] == [1, 1, 1]
    assert len({item["sop_instance_uid"] for item in body["slices"]}) == 3
    assert body["tumor_detected"] is True
    areas = [item["prediction"]["mask"]["area_pixels"] for item in body["slices"]]
    assert body["tumor_volume_ml"] > 0 and sum(areas) > 0
    assert body["file_errors"] == []
    # Every slice there (5 mm apart); the tumor on the first and last slice sent: it may go on beyond them.
    assert (body["slices_missing"], body["tumor_reaches_series_end"]) == (
        0,
        body["slices"][0]["prediction"]["tumor_detected"],
    )
    for item, reference in zip(body["slices"], expected, strict=True):
        assert_matches(item["prediction"], reference)


def test_a_series_with_slices_missing_says_how_many(client: TestClient) -> None:
    datasets = mr_series(tumor_channels() + tumor_channels())  # 6 slices, 0 to 25 mm
    sent = [datasets[index] for index in (0, 1, 4, 5)]  # 10 and 15 mm left out

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(dataset) for dataset in sent]))

    assert response.status_code == 200, response.text
    assert response.json()["slices_missing"] == 2


def test_each_slice_of_a_series_says_where_it_lies_and_what_is_missing_before_it(client: TestClient) -> None:
    """The count alone did not say where the gap is: a viewer drew the slices either side of it as neighbours."""
    datasets = mr_series(tumor_channels() + tumor_channels())  # 6 slices, 0 to 25 mm
    sent = [datasets[index] for index in (5, 0, 4, 1)]  # out of order; 10 and 15 mm left out

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(dataset) for dataset in sent]))

    assert response.status_code == 200, response.text
    slices = response.json()["slices"]
    normal_positions = [item["position_along_normal_mm"] for item in slices]
    assert normal_positions == pytest.approx([25.0, 0.0, 20.0, 5.0])
    assert [item["slices_missing_before"] for item in slices] == [0, 0, 2, 0]  # the slice at 20 mm, after 5 mm
    # API review 48 F2: the slices come in the order sent, not sorted; position_along_normal_mm sorts them.
    assert [item["file_index"] for item in slices] == [0, 1, 2, 3]


def test_each_slice_names_its_files_position_in_the_request_as_the_rest_of_the_answer_does(
    client: TestClient,
) -> None:
    """API review 48 F2: `index` 0 of `slices` was request file 3 when a series left out came first, while
    file_errors and series_used number the request's files: a client joining by `index` got the wrong file."""
    study = Study()
    left_out = mr_series(tumor_channels(), study, series_number=5, series_description="AX DWI b1000")
    flair = mr_series(tumor_channels(), study, series_number=1, series_description="AX FLAIR")
    sent = [*left_out, *flair]

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(dataset) for dataset in sent]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert [(item["series_description"], item["files"]) for item in body["series_used"]] == [("AX FLAIR", [3, 4, 5])]
    assert [item["index"] for item in body["slices"]] == [0, 1, 2]
    assert [item["file_index"] for item in body["slices"]] == [3, 4, 5]
    assert [sent[item["file_index"]].SOPInstanceUID for item in body["slices"]] == [
        item["sop_instance_uid"] for item in body["slices"]
    ]


def test_predict_batch_dicom_seg_matches_the_json_masks(
    client: TestClient, series_files: list[bytes], expected: list[SlicePrediction], tiny_manifest: dict
) -> None:
    as_json = client.post("/v1/predict/batch", files=dicom_parts(series_files)).json()
    response = client.post("/v1/predict/batch?output=dicom-seg", files=dicom_parts(series_files))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    assert float(response.headers["X-Tumor-Volume-mL"]) == pytest.approx(as_json["tumor_volume_ml"], rel=1e-3)
    masks = read_segmentation_masks(response.content)
    assert sorted(masks) == sorted(item["sop_instance_uid"] for item in as_json["slices"])
    for item, reference in zip(as_json["slices"], expected, strict=True):
        np.testing.assert_array_equal(masks[item["sop_instance_uid"]][0], decode_rle(item["prediction"]["mask"]["rle"]))
        np.testing.assert_array_equal(masks[item["sop_instance_uid"]][0], reference.mask)
    seg = pydicom.dcmread(io.BytesIO(response.content))
    source = pydicom.dcmread(io.BytesIO(series_files[0]))
    assert seg.Modality == "SEG" and seg.Manufacturer == MANUFACTURER
    assert seg.SoftwareVersions == pyproject_version()  # which release made it
    assert seg.SeriesDescription == SEG_SERIES_DESCRIPTION
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert [item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence] == [source.SeriesInstanceUID]
    assert int(seg.NumberOfFrames) == 3  # one frame per source slice, empty ones kept
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == SEGMENT_LABEL
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    segmenter = tiny_manifest["segmenter"]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (segmenter["name"], segmenter["version"])


def test_accept_header_asks_for_a_dicom_seg(client: TestClient, series_files: list[bytes]) -> None:
    response = client.post(
        "/v1/predict",
        files={"file": ("IM0001", series_files[0], "application/dicom")},
        headers={"Accept": "application/dicom"},
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    assert response.content[128:132] == b"DICM"
    assert response.headers["X-Tumor-Detected"] == "true"
    assert pydicom.dcmread(io.BytesIO(response.content)).Modality == "SEG"


def test_negative_series_gives_json_and_no_seg(negative_client: TestClient, series_files: list[bytes]) -> None:
    response = negative_client.post("/v1/predict/batch?output=dicom-seg", files=dicom_parts(series_files))

    assert response.status_code == 200
    body = response.json()
    assert body["tumor_detected"] is False
    assert all(item["prediction"]["mask"] is None for item in body["slices"])


@pytest.mark.parametrize(
    ("path", "query", "headers"),
    [
        ("/v1/predict", "?output=dicom-seg", {}),
        ("/v1/predict", "", {"Accept": "application/dicom"}),
        ("/v1/predict/batch", "?output=dicom-seg", {}),
        ("/v1/predict/batch", "", {"Accept": "application/dicom"}),
    ],
)
def test_a_seg_asked_of_a_tumor_free_slice_or_series_is_json_marked_tumor_free(
    negative_client: TestClient, series_files: list[bytes], path: str, query: str, headers: dict[str, str]
) -> None:
    """API review 48 F5: the JSON that answers a SEG request without tumor carries X-Tumor-Detected: false, as a SEG
    does, for a client that stores the body as DICOM."""
    parts = dicom_parts(series_files) if path.endswith("batch") else {"file": ("IM0001", series_files[0])}
    response = negative_client.post(path + query, files=parts, headers=headers)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["tumor_detected"] is False
    assert response.headers["X-Tumor-Detected"] == "false"


def test_unreadable_dicom_in_a_series_is_reported_in_place(client: TestClient, series_files: list[bytes]) -> None:
    broken = b"\0" * 128 + b"DICM" + b"\x02\x00"
    response = client.post("/v1/predict/batch", files=dicom_parts([series_files[0], broken, series_files[2]]))

    assert response.status_code == 200
    body = response.json()
    assert len(body["slices"]) == 2
    assert [(item["index"], item["file_index"]) for item in body["slices"]] == [(0, 0), (1, 2)]
    assert [error["index"] for error in body["file_errors"]] == [1]
    assert body["file_errors"][0]["error"] == {
        "code": "undecodable_dicom",
        "message": "DICOM file ends in or right after its file meta group (0002), at byte 134 (truncated)",
    }


def lossy_copy(data: bytes, original: bytes) -> bytes:
    """`data` under a new SOP Instance UID, naming `original` in its Source Image Sequence."""
    copy, named = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(original))
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = named.SOPClassUID, named.SOPInstanceUID
    copy.SourceImageSequence = [source]
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return to_bytes(copy)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))), ids=str)
def test_a_chain_of_copies_is_left_out_whatever_order_it_comes_in(
    client: TestClient, series_files: list[bytes], order: tuple[int, ...]
) -> None:
    """Review 36b: with B a copy of A and C a copy of B, C was read beside A (a 400) whenever B came before C."""
    first = series_files[0]
    second = lossy_copy(first, first)
    third = lossy_copy(first, second)
    chain = [first, second, third]

    response = client.post("/v1/predict/batch", files=dicom_parts([*(chain[at] for at in order), *series_files[1:]]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["file_errors"] == []
    (copies,) = body["series_left_out"]
    assert (
        sorted(order[index] for index in copies["files"]) == [1, 2] and "2 copies of files read" in copies["evidence"]
    )
    assert len(body["slices"]) == 3


def test_a_copy_is_read_when_its_original_does_not_decode(client: TestClient, series_files: list[bytes]) -> None:
    """Review 36b: the copy was left out at planning, so an original that then failed to decode lost its slice, and
    the copy's reason said the original was read."""
    broken = to_bytes(with_broken_rle(pydicom.dcmread(io.BytesIO(series_files[1]))))  # its header passes every check
    copy = lossy_copy(series_files[1], broken)

    response = client.post("/v1/predict/batch", files=dicom_parts([series_files[0], broken, series_files[2], copy]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert [error["index"] for error in body["file_errors"]] == [1]
    assert body["file_errors"][0]["error"]["code"] == "undecodable_dicom"
    assert len(body["slices"]) == 3 and body["slices_missing"] == 0
    assert [item["file_index"] for item in body["slices"]] == [0, 3, 2]  # the copy's pixels, in its original's place


def test_a_copy_of_a_file_refused_as_a_repeated_instance_is_read_in_its_place(
    client: TestClient, series_files: list[bytes]
) -> None:
    """Attack review 38: the middle slice carried the first's SOP Instance UID (refused: a UID is read once) and its
    lossy copy was left out for it, as if it had been read: the slice was lost, the volume wrong."""
    repeated = pydicom.dcmread(io.BytesIO(series_files[1]))
    repeated.SOPInstanceUID = repeated.file_meta.MediaStorageSOPInstanceUID = pydicom.dcmread(
        io.BytesIO(series_files[0])
    ).SOPInstanceUID
    copy = lossy_copy(series_files[1], to_bytes(repeated))

    response = client.post(
        "/v1/predict/batch", files=dicom_parts([series_files[0], to_bytes(repeated), series_files[2], copy])
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert [error["index"] for error in body["file_errors"]] == [1]
    assert "has the SOP Instance UID of" in body["file_errors"][0]["error"]["message"]
    assert body["series_left_out"] == [] and body["series_used"][0]["files"] == [0, 1, 2, 3]  # 1 in file_errors
    assert len(body["slices"]) == 3 and body["slices_missing"] == 0


@pytest.mark.parametrize("vr", ["LO", "UI"])
def test_a_source_image_sequence_stored_as_text_is_no_sequence(
    client: TestClient, series_files: list[bytes], vr: str
) -> None:
    """Attack review 38: (0008,2112) written as text was walked character by character: a 500 on every DICOM path."""
    odd = pydicom.dcmread(io.BytesIO(series_files[1]))
    odd.add_new(0x00082112, vr, "1.2.3")

    for route, files in (
        ("/v1/predict/batch", dicom_parts([series_files[0], to_bytes(odd), series_files[2]])),
        ("/v1/predict", {"file": ("IM0001", to_bytes(odd), "application/dicom")}),
    ):
        response = client.post(route, files=files)
        assert response.status_code == 200, (route, response.text)
    assert (
        len(client.post("/v1/predict/batch", files=dicom_parts([series_files[0], to_bytes(odd)])).json()["slices"]) == 2
    )


def test_a_copy_that_names_its_original_many_times_is_compared_with_it_once_a_pass(
    client: TestClient, series_files: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack review 38: each Source Image Sequence item cost a comparison of every frame, so a copy naming its
    original 5,000 times kept a core busy a minute after its client left."""
    copy = pydicom.dcmread(io.BytesIO(lossy_copy(series_files[0], series_files[0])))
    copy.SourceImageSequence = [copy.SourceImageSequence[0]] * 5000
    compared = []
    original_same_place = series_reading._same_place
    monkeypatch.setattr(series_reading, "_same_place", lambda *args: compared.append(1) or original_same_place(*args))

    response = client.post("/v1/predict/batch", files=dicom_parts([*series_files, to_bytes(copy)]))

    assert response.status_code == 200, response.text
    assert response.json()["series_left_out"][0]["files"] == [3]
    assert len(compared) <= 2  # once for the slice count, once for the files still read: not once per name


def test_a_file_without_a_sop_instance_uid_in_a_series_is_answered(
    client: TestClient, series_files: list[bytes]
) -> None:
    """Attack review 38: a batch whose middle file lacked (0008,0018) was a 500; /v1/predict answered it."""
    nameless = pydicom.dcmread(io.BytesIO(series_files[1]))
    del nameless.SOPInstanceUID

    response = client.post(
        "/v1/predict/batch", files=dicom_parts([series_files[0], to_bytes(nameless), series_files[2]])
    )

    assert response.status_code == 200, response.text
    assert [item["sop_instance_uid"] for item in response.json()["slices"]][1] == ""


def test_the_same_files_in_another_order_give_the_same_seg(client: TestClient, series_files: list[bytes]) -> None:
    """Attack review 38: the SEG's UIDs followed the order of the files, so a client re-posting a retrieval (whose
    order no PACS promises) got a second SEG, and an SR made of one order named a SEG the other did not return."""
    made = []
    for order in (series_files, series_files[::-1], [series_files[1], series_files[0], series_files[2]]):
        response = client.post("/v1/predict/batch?output=dicom-seg", files=dicom_parts(order))
        assert response.status_code == 200, response.text
        seg = pydicom.dcmread(io.BytesIO(response.content))
        made.append((seg.SOPInstanceUID, seg.SeriesInstanceUID))

    assert len(set(made)) == 1


def test_files_that_name_one_another_are_refused_as_one_slice_sent_twice(
    client: TestClient, series_files: list[bytes]
) -> None:
    """A loop has no original: neither file is left out for the other (which one was depended on their order). The
    copy differs in a pixel, as a lossy one does (identical ones are read once: a series sent twice)."""
    first = pydicom.dcmread(io.BytesIO(series_files[0]))
    other = pydicom.dcmread(io.BytesIO(lossy_copy(series_files[0], series_files[0])))
    pixels = other.pixel_array.copy()
    pixels[0, 0] += 1
    other.PixelData = pixels.tobytes()
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = other.SOPClassUID, other.SOPInstanceUID
    first.SourceImageSequence = [source]

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(first), to_bytes(other)]))

    assert response.status_code == 400, response.text
    assert "the same slice arrived more than once" in response.json()["error"]["message"]


def test_a_slice_that_names_another_slice_of_its_series_as_its_source_is_still_read(
    client: TestClient, series_files: list[bytes]
) -> None:
    """Only a copy lying where its original lies is left out: a slice elsewhere that names a source (a derived
    image of the series) is a slice of its own."""
    derived = pydicom.dcmread(io.BytesIO(series_files[1]))
    original = pydicom.dcmread(io.BytesIO(series_files[0]))
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = original.SOPClassUID, original.SOPInstanceUID
    derived.SourceImageSequence = [source]

    response = client.post(
        "/v1/predict/batch", files=dicom_parts([series_files[0], to_bytes(derived), series_files[2]])
    )

    assert response.status_code == 200, response.text
    assert response.json()["file_errors"] == [] and len(response.json()["slices"]) == 3


def test_a_series_of_non_square_pixels_says_so_in_its_notes(client: TestClient) -> None:
    """Interop review 35: the models read pixels as square; a series whose pixels are not (0.9375 x 1.25 mm) was
    answered without a word about it. It is now resampled for the models (`tests/dicom/test_square_pixels.py`), its
    masks answered on the stored grid, and the note says so."""
    datasets = mr_series(tumor_channels())
    for dataset in datasets:
        dataset.PixelSpacing = [1.25, 0.9375]  # rows 1.25 mm apart: each pixel taller than wide

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(dataset) for dataset in datasets]))
    square = client.post(
        "/v1/predict/batch", files=dicom_parts([to_bytes(dataset) for dataset in mr_series(tumor_channels())])
    )

    assert response.status_code == 200, response.text
    (note,) = [note for note in response.json()["selection_notes"] if "pixels are not square" in note]
    assert "each 1.33 times as tall as wide" in note and "resampled to square pixels" in note and "1.25" not in note
    masks = [item["prediction"]["mask"] for item in response.json()["slices"]]
    assert masks and all(mask["size"] == [256, 256] for mask in masks)  # the tiny models call every slice positive
    assert not any("pixels are not square" in note for note in square.json()["selection_notes"])


@pytest.mark.parametrize(
    ("spacings", "reason"),
    [
        (
            ([1.25, 0.9375], [0.9375, 0.9375], [0.9375, 1.25]),
            "the slices of one series must share one Pixel Spacing (their masks are joined into one volume); got "
            "0.9375 x 0.9375, 0.9375 x 1.25, 1.25 x 0.9375 mm: send each as a request of its own",
        ),
        (([0.5, 0.5], [0.9375, 0.9375], [0.9375, 0.9375]), "must share one Pixel Spacing"),
        (([0.9375, 0.9375], None, [0.9375, 0.9375]), "must all have a Pixel Spacing or all lack it; 1 of 3 lack it"),
    ],
)
def test_slices_of_one_series_at_different_scales_are_refused(
    client: TestClient, spacings: tuple[list[float] | None, ...], reason: str
) -> None:
    """Attack review 38: slices of 1.25 x 0.9375, square and 0.9375 x 1.25 mm pixels (or square ones of 0.5 and
    0.9375 mm) were answered as one volume, their masks joined by the series clean-up at different scales."""
    datasets = mr_series(tumor_channels())
    for dataset, spacing in zip(datasets, spacings, strict=True):
        if spacing is None:
            del dataset.PixelSpacing
        else:
            dataset.PixelSpacing = spacing

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(dataset) for dataset in datasets]))

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_dicom_image"
    assert reason in response.json()["error"]["message"]


def test_spacings_that_differ_by_rounding_are_one_scale(client: TestClient) -> None:
    datasets = mr_series(tumor_channels())
    datasets[1].PixelSpacing = [0.9375 * 1.005, 0.9375]

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(dataset) for dataset in datasets]))

    assert response.status_code == 200, response.text


@pytest.mark.parametrize("row_spacing", [3.75, 7.5])
def test_a_pixel_spacing_wider_than_any_head_is_refused(client: TestClient, row_spacing: float) -> None:
    """Attack review 38: 256 x 256 tumor slices whose header says rows 4 to 8 times as far apart as columns (a field
    of view of 960-1,900 mm, a slip in Pixel Spacing) were resampled into slivers and answered "no tumor, 0.0 mL";
    past 8.4:1 the same pixels were read as stored and the tumor found."""
    datasets = mr_series(tumor_channels())
    for dataset in datasets:
        dataset.PixelSpacing = [row_spacing, 0.9375]

    for path in ("/v1/predict/batch", "/v1/predict/batch?output=dicom-seg"):
        response = client.post(path, files=dicom_parts([to_bytes(dataset) for dataset in datasets]))

        assert response.status_code == 400, response.text
        message = response.json()["error"]["message"]
        assert message.startswith(f"Pixel Spacing gives the slices a field of view of {256 * row_spacing:.0f} x 240 mm")
    single = client.post("/v1/predict", files={"file": ("slice.dcm", to_bytes(datasets[0]), "application/dicom")})
    assert single.status_code == 400 and "wider than any head slice" in single.json()["error"]["message"]


@pytest.mark.parametrize(
    ("row_spacing", "column_spacing"), [(1.95, 0.4875), (1.95, 0.25), (0.4875, 1.95), (0.65, 1.625)]
)
def test_a_pixel_spacing_that_gives_no_head_slice_proportions_is_refused(
    client: TestClient, row_spacing: float, column_spacing: float
) -> None:
    """Attack review 40: 256 x 256 tumor slices at 1.95 x 0.4875 mm (a 499 x 125 mm field of view, under the 500 mm
    limit) were resampled into slivers and answered "no tumor, 0.0 mL"; attack review 41: so were 166 x 416 mm ones."""
    datasets = mr_series(tumor_channels())
    for dataset in datasets:
        dataset.PixelSpacing = [row_spacing, column_spacing]

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(dataset) for dataset in datasets]))

    assert response.status_code == 400, response.text
    height, width = 256 * row_spacing, 256 * column_spacing
    assert response.json()["error"]["message"].startswith(
        f"Pixel Spacing gives the slices a field of view of {height:.0f} x {width:.0f} mm, "
        f"{max(height, width) / min(height, width):.1f} times as long one way as the other"
    )


def test_pixels_truly_four_times_as_tall_as_wide_are_read(client: TestClient) -> None:
    """The limit is the field of view, not the pixels' shape: 64 rows of 3.75 mm (240 mm) are a head slice."""
    channels = [np.ascontiguousarray(image[::4]) for image in tumor_channels()]
    datasets = mr_series(channels)
    for dataset in datasets:
        dataset.PixelSpacing = [3.75, 0.9375]

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(dataset) for dataset in datasets]))

    assert response.status_code == 200, response.text
    (note,) = [note for note in response.json()["selection_notes"] if "pixels are not square" in note]
    assert "each 4.00 times as tall as wide" in note and "resampled to square pixels" in note


def test_lossy_copies_beside_their_originals_are_left_out_and_the_originals_read(
    client: TestClient, series_files: list[bytes], expected: list[SlicePrediction]
) -> None:
    """Interop review 35: a series sent again after lossy compression has new SOP Instance UIDs and names its
    originals in Source Image Sequence; beside the originals, every position held two files and the request failed."""
    copies = []
    for data in series_files:
        copy = pydicom.dcmread(io.BytesIO(data))
        source = Dataset()
        source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = copy.SOPClassUID, copy.SOPInstanceUID
        copy.SourceImageSequence = [source]
        copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        copy.LossyImageCompression = "01"
        copy.PixelData = (copy.pixel_array // 2 * 2).astype(copy.pixel_array.dtype).tobytes()  # not the same pixels
        copies.append(to_bytes(copy))

    response = client.post("/v1/predict/batch", files=dicom_parts([copies[0], *series_files, *copies[1:]]))

    assert response.status_code == 200, response.text
    body = response.json()
    # Left out, not unreadable (interop review 37: counted as files not read, they made a study's note say slices
    # were missing from its result).
    assert body["file_errors"] == []
    (left_out,) = body["series_left_out"]
    assert left_out["role"] == "FLAIR" and left_out["files"] == [0, 4, 5]
    assert left_out["evidence"].startswith("3 copies of files read: each names its original in its Source Image")
    assert [item["files"] for item in body["series_used"]] == [[1, 2, 3]]
    for item, reference in zip(body["slices"], expected, strict=True):
        assert_matches(item["prediction"], reference)


@pytest.mark.parametrize("output", ["json", "dicom-seg"])
@pytest.mark.parametrize(
    ("stray", "code"),
    [(b"", "empty_file"), (b"see the viewer on this CD\n", "unsupported_media_type")],
    ids=["empty file", "text file"],
)
def test_a_file_that_is_no_image_beside_a_series_keeps_its_own_error(
    client: TestClient, series_files: list[bytes], output: str, stray: bytes, code: str
) -> None:
    """Attack review 34: a patient CD's folder holds empty lock files and README.TXT; such a file failed the whole
    series as `mixed_input`, while a broken DICOM file beside it was skipped with its own error."""
    files = dicom_parts([*series_files[:2], stray, series_files[2]])

    response = client.post(f"/v1/predict/batch?output={output}", files=files)

    assert response.status_code == 200, response.text
    if output == "json":
        assert len(response.json()["slices"]) == 3
        assert [(error["index"], error["error"]["code"]) for error in response.json()["file_errors"]] == [(2, code)]
    else:
        assert (response.headers["X-Files-Skipped"], response.headers["X-Skipped-File-Indices"]) == ("1", "2")
        assert len(read_segmentation_masks(response.content)) == 3


@pytest.mark.parametrize("output", ["dicom-seg", "dicom-sr", "dicom-seg-sr"])
@pytest.mark.parametrize(
    ("only", "status", "code"),
    [
        (b"\0" * 128 + b"DICM" + bytes(LIMITED_UPLOAD_BYTES), 413, "payload_too_large"),
        (b"", 400, "empty_file"),
    ],
    ids=["over the size limit", "empty"],
)
def test_a_seg_or_sr_of_a_batch_whose_files_are_all_unreadable_gives_their_reason(
    limited_client: TestClient, output: str, only: bytes, status: int, code: str
) -> None:
    """Attack review 34: a lone DICOM file over MAX_UPLOAD_BYTES was told its output "needs DICOM input"."""
    response = limited_client.post(f"/v1/predict/batch?output={output}", files=dicom_parts([only]))

    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize("output", ["json", "dicom-seg", "dicom-sr"])
def test_a_series_whose_slices_lie_in_two_planes_is_refused_for_every_output(client: TestClient, output: str) -> None:
    datasets = mr_series(tumor_channels())
    datasets[2].ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # sagittal among axial slices

    response = client.post(f"/v1/predict/batch?output={output}", files=dicom_parts([to_bytes(d) for d in datasets]))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_dicom_image"
    assert response.json()["error"]["message"].startswith("the slices of one series must lie in one plane; they have 2")


@pytest.mark.parametrize("output", ["json", "dicom-seg", "dicom-sr"])
@pytest.mark.parametrize(
    ("second_half", "reason"),
    [
        (generate_uid(), "the slices of one series must share one Frame of Reference UID (their positions are "),
        (
            "",
            "the slices of one series must all have a Frame of Reference UID (their positions are coordinates in it) "
            "or all lack it; 2 of 4 lack it",
        ),
    ],
    ids=["two", "half-without"],
)
def test_a_series_whose_slices_name_two_frames_of_reference_is_refused_for_every_output(
    client: TestClient, output: str, second_half: str, reason: str
) -> None:
    """Interop review 42: positions of two coordinate systems were stacked as one series (a 122 mL tumor answered
    59 mL with no note), and the DICOM outputs were refused with highdicom's words on series and sizes."""
    datasets = mr_series(tumor_channels() + tumor_channels()[:1])
    for dataset in datasets[2:]:
        if second_half:
            dataset.FrameOfReferenceUID = second_half
        else:
            del dataset.FrameOfReferenceUID

    response = client.post(f"/v1/predict/batch?output={output}", files=dicom_parts([to_bytes(d) for d in datasets]))

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_dicom_image"
    assert response.json()["error"]["message"].startswith(reason)


def test_a_series_whose_slices_differ_in_size_is_refused(client: TestClient) -> None:
    channels = tumor_channels()
    datasets = mr_series([channels[0], channels[1][:128, :128].copy(), channels[2]])

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(d) for d in datasets]))

    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid_dicom_image",
        "message": "the slices of one series must share rows x columns; got 128 x 128, 256 x 256",
    }


def test_orientations_that_differ_by_rounding_noise_are_one_plane(client: TestClient) -> None:
    datasets = mr_series(tumor_channels())
    datasets[1].ImageOrientationPatient = [1.0, 0.00001, 0.0, -0.00001, 1.0, 0.0]

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(d) for d in datasets]))

    assert response.status_code == 200, response.text
    assert len(response.json()["slices"]) == 3


def test_seg_answer_counts_the_files_left_out(client: TestClient, series_files: list[bytes]) -> None:
    broken = b"\0" * 128 + b"DICM" + b"\x02\x00"
    whole = client.post("/v1/predict/batch?output=dicom-seg", files=dicom_parts(series_files))
    response = client.post(
        "/v1/predict/batch?output=dicom-seg", files=dicom_parts([series_files[0], broken, series_files[2]])
    )

    assert whole.status_code == 200 and whole.headers["X-Files-Skipped"] == "0"
    assert "X-Skipped-File-Indices" not in whole.headers
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    assert response.headers["X-Files-Skipped"] == "1"
    assert response.headers["X-Skipped-File-Indices"] == "1"
    assert len(read_segmentation_masks(response.content)) == 2


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/overlay"])
def test_a_multi_frame_file_sent_as_one_slice_is_told_where_to_go(client: TestClient, path: str) -> None:
    """Attack finding: the overlay was told to "ask for output=dicom-seg", a parameter it refuses."""
    volume = to_bytes(legacy_multiframe(mr_series(tumor_channels())))

    response = client.post(path, files={"file": ("volume.dcm", volume, "application/dicom")})

    assert response.status_code == 400, response.text
    assert response.json()["error"] == {
        "code": "invalid_image",
        "message": "the DICOM file holds 3 slices; send it to /v1/predict/batch for one result per slice (or to "
        "/v1/predict with output=dicom-seg for its SEG)",
    }
    seg = client.post("/v1/predict?output=dicom-seg", files={"file": ("volume.dcm", volume, "application/dicom")})
    assert seg.status_code == 200 and seg.headers["content-type"] == "application/dicom"  # the advice holds


def test_mixed_dicom_and_png_batch_is_refused(client: TestClient, series_files: list[bytes]) -> None:
    files = [*dicom_parts(series_files[:1]), ("files", ("slice.jpg", TUMOR_SLICE.read_bytes(), "image/jpeg"))]
    response = client.post("/v1/predict/batch", files=files)

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "mixed_input",
            "message": (
                "a batch must hold either DICOM files or PNG/JPEG/TIFF images; got 1 DICOM and 1 PNG/JPEG/TIFF files"
            ),
        }
    }


def test_dicom_seg_of_a_png_is_refused(client: TestClient) -> None:
    response = client.post(
        "/v1/predict?output=dicom-seg", files={"file": ("slice.jpg", TUMOR_SLICE.read_bytes(), "image/jpeg")}
    )

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "invalid_segmentation_input",  # the image is fine; the SEG asked for cannot cover it
            "message": "output=dicom-seg and output=dicom-sr need DICOM input: a DICOM SEG or SR must reference the "
            "DICOM instances it describes",
        }
    }


def test_overlay_of_a_dicom_instance_is_a_png(
    client: TestClient, series_files: list[bytes], tiny_model_dir: Path
) -> None:
    response = client.post("/v1/overlay", files={"file": ("IM0001", series_files[1], "application/dicom")})

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
    overlay = Image.open(io.BytesIO(response.content))
    assert (overlay.mode, overlay.size) == ("RGB", (256, 256))
    (reference,) = Predictor.from_model_dir(tiny_model_dir).predict_preprocessed(
        *model_inputs(read_series(series_files[1:2], max_pixels=1 << 20).inputs)
    )
    assert float(response.headers["X-Tumor-Probability"]) == pytest.approx(reference.probability, abs=1e-6)
    assert response.headers["X-Tumor-Detected"] == "true"


def test_predict_batch_dicom_sr_reports_the_json_volume_and_references_the_seg(
    client: TestClient, series_files: list[bytes]
) -> None:
    as_json = client.post("/v1/predict/batch", files=dicom_parts(series_files)).json()
    response = client.post("/v1/predict/batch?output=dicom-sr", files=dicom_parts(series_files))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    report = read_volume_report(pydicom.dcmread(io.BytesIO(response.content)))
    assert report["finding"] == "Present"
    assert report["tumor_volume_ml"] == pytest.approx(as_json["tumor_volume_ml"], rel=1e-3)
    assert report["slices_analysed"] == len(as_json["slices"])
    assert report["slices_with_tumor"] == sum(item["prediction"]["tumor_detected"] for item in as_json["slices"])
    assert report["segmentation_sop_instance_uid"] is not None
    assert float(response.headers["X-Tumor-Volume-mL"]) == pytest.approx(as_json["tumor_volume_ml"], rel=1e-3)
    assert dciodvfy_errors(response.content, "ComprehensiveSR") == []


def test_the_seg_an_sr_alone_refers_to_is_the_one_dicom_seg_answers(
    client: TestClient, series_files: list[bytes]
) -> None:
    """Before, every answer made its SEG and SR with new UIDs: an SR asked for alone named a SEG nobody could get."""
    report_alone = pydicom.dcmread(
        io.BytesIO(client.post("/v1/predict/batch?output=dicom-sr", files=dicom_parts(series_files)).content)
    )
    seg_answer = client.post("/v1/predict/batch?output=dicom-seg", files=dicom_parts(series_files))
    (_, seg_bytes), (_, sr_bytes) = multipart_parts(
        client.post("/v1/predict/batch?output=dicom-seg-sr", files=dicom_parts(series_files))
    )

    seg = pydicom.dcmread(io.BytesIO(seg_answer.content))
    assert read_volume_report(report_alone)["segmentation_sop_instance_uid"] == seg.SOPInstanceUID
    again = pydicom.dcmread(io.BytesIO(seg_bytes))
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (seg.SOPInstanceUID, seg.SeriesInstanceUID)
    report = pydicom.dcmread(io.BytesIO(sr_bytes))
    assert (report.SOPInstanceUID, report.SeriesInstanceUID) == (
        report_alone.SOPInstanceUID,
        report_alone.SeriesInstanceUID,
    )
    assert seg.SOPInstanceUID not in {
        dataset.SOPInstanceUID for dataset in map(pydicom.dcmread, map(io.BytesIO, series_files))
    }


def test_predict_batch_dicom_sr_of_a_negative_series_says_analysed_without_tumor(
    negative_client: TestClient, series_files: list[bytes]
) -> None:
    response = negative_client.post("/v1/predict/batch?output=dicom-sr", files=dicom_parts(series_files))

    assert response.status_code == 200
    assert response.headers["X-Tumor-Detected"] == "false"
    dataset = pydicom.dcmread(io.BytesIO(response.content))
    report = read_volume_report(dataset)
    assert report["finding"] == "Absent"
    assert report_comments(dataset) == [RESEARCH_USE_STATEMENT]  # docs review 45 F5
    assert report["slices_with_tumor"] == 0
    assert report["segmentation_sop_instance_uid"] is None


def test_dicom_sr_is_refused_for_one_slice_and_for_raster_images(client: TestClient, series_files: list[bytes]) -> None:
    single = client.post("/v1/predict?output=dicom-sr", files={"file": ("a.dcm", series_files[0], "application/dicom")})
    raster = client.post(
        "/v1/predict/batch?output=dicom-sr", files=[("files", ("a.jpg", TUMOR_SLICE.read_bytes(), "image/jpeg"))]
    )

    assert single.status_code == 422
    assert single.json() == {
        "error": {
            "code": "validation_error",
            "message": "query.output: dicom-sr reports on a whole series; send it to /v1/predict/batch",
        }
    }
    assert raster.status_code == 400
    assert raster.json()["error"]["message"].startswith("output=dicom-seg and output=dicom-sr need DICOM input")


def multipart_parts(response: Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related answer, read by hand (RFC 2046)."""
    media_type, *parameters = (item.strip() for item in response.headers["content-type"].split(";"))
    assert media_type == "multipart/related"
    values = dict(item.split("=", 1) for item in parameters)
    assert values["type"] == '"application/dicom"'
    delimiter = b"--" + values["boundary"].encode("ascii")
    body = response.content
    assert body.endswith(delimiter + b"--\r\n")
    parts = []
    for chunk in body[: -len(delimiter + b"--\r\n")].split(delimiter)[1:]:
        headers, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        assert content.endswith(b"\r\n")
        parts.append((headers.decode("ascii").removeprefix("Content-Type: "), content[:-2]))
    return parts


@pytest.mark.parametrize(
    ("query", "accept"),
    [("?output=dicom-seg-sr", None), ("", 'multipart/related; type="application/dicom"')],
    ids=["query", "accept"],
)
def test_predict_batch_answers_seg_and_sr_as_multipart(
    client: TestClient, series_files: list[bytes], query: str, accept: str | None
) -> None:
    as_json = client.post("/v1/predict/batch", files=dicom_parts(series_files)).json()
    headers = {"Accept": accept} if accept else {}
    response = client.post(f"/v1/predict/batch{query}", files=dicom_parts(series_files), headers=headers)

    assert response.status_code == 200, response.text
    (seg_type, seg_bytes), (sr_type, sr_bytes) = multipart_parts(response)
    assert seg_type == sr_type == "application/dicom"
    seg, sr = pydicom.dcmread(io.BytesIO(seg_bytes)), pydicom.dcmread(io.BytesIO(sr_bytes))
    assert (seg.Modality, sr.Modality) == ("SEG", "SR")
    report = read_volume_report(sr)
    assert report["segmentation_sop_instance_uid"] == seg.SOPInstanceUID
    assert report["tumor_volume_ml"] == pytest.approx(as_json["tumor_volume_ml"], rel=1e-3)
    masks = read_segmentation_masks(seg_bytes)
    for item in as_json["slices"]:
        np.testing.assert_array_equal(masks[item["sop_instance_uid"]][0], decode_rle(item["prediction"]["mask"]["rle"]))
    assert response.headers["X-Tumor-Detected"] == "true" and response.headers["X-Series-Used"] == "FLAIR=1"
    assert dciodvfy_errors(seg_bytes, "Segmentation") == []
    assert dciodvfy_errors(sr_bytes, "ComprehensiveSR") == []


def test_multipart_answer_of_a_negative_series_holds_the_sr_alone(
    negative_client: TestClient, series_files: list[bytes]
) -> None:
    response = negative_client.post("/v1/predict/batch?output=dicom-seg-sr", files=dicom_parts(series_files))

    assert response.status_code == 200
    ((part_type, sr_bytes),) = multipart_parts(response)
    assert part_type == "application/dicom"
    report = read_volume_report(pydicom.dcmread(io.BytesIO(sr_bytes)))
    assert report["finding"] == "Absent" and report["segmentation_sop_instance_uid"] is None
    assert dciodvfy_errors(sr_bytes, "ComprehensiveSR") == []


def test_a_secondary_capture_series_gets_a_seg_per_positive_slice_and_a_report(client: TestClient) -> None:
    """Review dicom22, finding 1: such a series (Modality MR, no Frame of Reference) got 400 for the SEG and the SR."""
    captures = secondary_capture_series(tumor_channels())
    files = dicom_parts([to_bytes(dataset) for dataset in captures])
    as_json = client.post("/v1/predict/batch", files=files).json()
    positive = [item["sop_instance_uid"] for item in as_json["slices"] if item["prediction"]["tumor_detected"]]

    seg_answer = client.post("/v1/predict/batch?output=dicom-seg", files=files)
    both = client.post("/v1/predict/batch?output=dicom-seg-sr", files=files)
    report_answer = client.post("/v1/predict/batch?output=dicom-sr", files=files)

    assert seg_answer.status_code == both.status_code == report_answer.status_code == 200, seg_answer.text
    segmentations = [pydicom.dcmread(io.BytesIO(data)) for _, data in multipart_parts(seg_answer)]
    assert len(positive) == len(segmentations) > 1  # the tiny models call every slice positive
    for seg, item in zip(segmentations, as_json["slices"], strict=True):
        masks = read_segmentation_masks(to_bytes(seg))
        np.testing.assert_array_equal(masks[item["sop_instance_uid"]][0], decode_rle(item["prediction"]["mask"]["rle"]))
    *seg_parts, (_, sr_bytes) = multipart_parts(both)
    delivered = [pydicom.dcmread(io.BytesIO(data)) for _, data in seg_parts]
    report = read_volume_report(pydicom.dcmread(io.BytesIO(sr_bytes)))
    assert report["finding"] == "Present" and report["tumor_volume_ml"] is None  # no pixel spacing: no volume
    assert report["segmentation_sop_instance_uids"] == [seg.SOPInstanceUID for seg in delivered]
    assert read_volume_report(pydicom.dcmread(io.BytesIO(report_answer.content)))["finding"] == "Present"
    assert dciodvfy_errors(sr_bytes, "ComprehensiveSR") == []
    assert all(dciodvfy_errors(data, "Segmentation") == [] for _, data in seg_parts)


def test_unplaced_slices_say_their_gaps_and_volume_are_unknown(client: TestClient) -> None:
    """Interop review 42 F3: Secondary Captures numbered 1, 2, 5 were reported "0 slices missing" (COMPLETE) though
    the numbers skip two, and a positive series without Pixel Spacing got no volume with no word why."""
    captures = secondary_capture_series(tumor_channels())
    for dataset, number in zip(captures, [1, 2, 5], strict=True):
        dataset.InstanceNumber = number
    files = dicom_parts([to_bytes(dataset) for dataset in captures])

    body = client.post("/v1/predict/batch", files=files).json()
    report = read_volume_report(
        pydicom.dcmread(io.BytesIO(client.post("/v1/predict/batch?output=dicom-sr", files=files).content))
    )

    assert body["tumor_detected"] and body["tumor_volume_ml"] is None  # the tiny models call every slice positive
    assert body["slices_missing"] is None
    assert body["selection_notes"] == [
        "slice positions unknown (no Image Position): slices missing between those sent are not counted; their "
        "Instance Numbers skip 2, which may be slices not sent",
        VOLUME_UNKNOWN_NOTE,
    ]
    assert report["slices_missing"] is None and report["notes"] == body["selection_notes"]
    assert client.post("/v1/predict/batch?output=dicom-seg", files=files).headers["X-Slices-Missing"] == "unknown"
    placed = client.post("/v1/predict/batch", files=dicom_parts(map(to_bytes, mr_series(tumor_channels())))).json()
    assert (placed["slices_missing"], placed["selection_notes"]) == (0, [])


@pytest.mark.parametrize("numbers", [[1, 1, 1], [None, None, None]], ids=["all-one", "none"])
def test_slices_in_no_known_order_are_answered_each_alone_and_the_answer_says_so(
    client: TestClient, tiny_model_dir: Path, numbers: list[int | None]
) -> None:
    """attack23: Secondary Captures numbered alike (or not at all) got the series clean-up and the series-end flag in
    the order they were sent, without a word."""
    captures = secondary_capture_series(tumor_channels())
    for dataset, number in zip(captures, numbers, strict=True):
        if number is None:
            del dataset.InstanceNumber
        else:
            dataset.InstanceNumber = number
    files = [to_bytes(dataset) for dataset in captures]

    body = client.post("/v1/predict/batch", files=dicom_parts(files)).json()

    predictor = Predictor.from_model_dir(tiny_model_dir)
    raw = predictor.predict_preprocessed(*model_inputs(read_series(files, max_pixels=1 << 20).inputs))
    alone = single_slice_answers(
        raw, predictor.single_slice_mask_min_probability, predictor.single_slice_min_component_pixels
    )
    assert UNKNOWN_ORDER_NOTE in body["selection_notes"]
    assert body["tumor_reaches_series_end"] is False
    for item, expected in zip(body["slices"], alone, strict=True):
        assert item["prediction"]["tumor_detected"] == expected.detected
        mask = item["prediction"]["mask"]
        if expected.mask is None:
            assert mask is None
        else:
            np.testing.assert_array_equal(decode_rle(mask["rle"]), expected.mask)
    numbered = client.post(
        "/v1/predict/batch", files=dicom_parts(map(to_bytes, secondary_capture_series(tumor_channels())))
    )
    assert UNKNOWN_ORDER_NOTE not in numbered.json()["selection_notes"]
    # The SR says so too, for the radiologist who sees only the PACS (it had no notes before).
    report = client.post("/v1/predict/batch?output=dicom-sr", files=dicom_parts(files))
    assert report.status_code == 200, report.text
    assert read_volume_report(pydicom.dcmread(io.BytesIO(report.content)))["notes"] == body["selection_notes"]
    assert dciodvfy_errors(report.content, "ComprehensiveSR") == []


def test_a_multi_frame_secondary_capture_gets_its_segs_and_report(client: TestClient) -> None:
    """Before, its positive frames got no SEG and no SR (400 for both); the DICOM node recorded it failed."""
    capture = multiframe_secondary_capture(tumor_channels())
    files = dicom_parts([to_bytes(capture)])
    as_json = client.post("/v1/predict/batch", files=files).json()

    response = client.post("/v1/predict/batch?output=dicom-seg-sr", files=files)

    assert response.status_code == 200, response.text
    *seg_parts, (_, sr_bytes) = multipart_parts(response)
    positive = [item for item in as_json["slices"] if item["prediction"]["tumor_detected"]]
    assert len(seg_parts) == len(positive) == 3  # the tiny models call every slice positive
    segmentations = [pydicom.dcmread(io.BytesIO(data)) for _, data in seg_parts]
    for seg, item in zip(segmentations, positive, strict=True):
        assert seg.SourceImageSequence[0].ReferencedFrameNumber == item["frame_number"]
        mask = read_segmentation_masks(to_bytes(seg))[capture.SOPInstanceUID][0]
        np.testing.assert_array_equal(mask, decode_rle(item["prediction"]["mask"]["rle"]))
    report = read_volume_report(pydicom.dcmread(io.BytesIO(sr_bytes)))
    assert report["finding"] == "Present"
    assert report["segmentation_sop_instance_uids"] == [seg.SOPInstanceUID for seg in segmentations]
    assert dciodvfy_errors(sr_bytes, "ComprehensiveSR") == []


def test_the_dicom_sr_and_headers_say_when_the_volume_may_fall_short(client: TestClient) -> None:
    """Review dicom22, finding 2: the SR said "Volume N ml, Present" and nothing of a gap or a cut-off tumor."""
    datasets = mr_series(tumor_channels() + tumor_channels())  # 6 slices, 0 to 25 mm
    files = dicom_parts([to_bytes(datasets[index]) for index in (0, 1, 4, 5)])  # 10 and 15 mm left out
    as_json = client.post("/v1/predict/batch", files=files).json()

    response = client.post("/v1/predict/batch?output=dicom-sr", files=files)

    assert response.status_code == 200
    report = read_volume_report(pydicom.dcmread(io.BytesIO(response.content)))
    assert (report["slices_missing"], report["tumor_reaches_series_end"]) == (
        as_json["slices_missing"],
        as_json["tumor_reaches_series_end"],
    )
    assert report["slices_missing"] == 2
    assert response.headers["X-Slices-Missing"] == "2"
    assert response.headers["X-Tumor-Reaches-Series-End"] == str(as_json["tumor_reaches_series_end"]).lower()


def test_multipart_answer_is_refused_for_one_slice(client: TestClient, series_files: list[bytes]) -> None:
    response = client.post(
        "/v1/predict?output=dicom-seg-sr", files={"file": ("IM0001", series_files[0], "application/dicom")}
    )

    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "validation_error",
        "message": "query.output: dicom-seg-sr reports on a whole series; send it to /v1/predict/batch",
    }


def test_dicom_cut_inside_its_header_is_400_undecodable(client: TestClient, series_files: list[bytes]) -> None:
    data = series_files[0]
    buffer = io.BytesIO(data)
    pydicom.dcmread(buffer, stop_before_pixels=True)
    pixel_start = buffer.tell()

    for kept in (132, 200, 400, pixel_start // 2 + 1, pixel_start - 1):
        response = client.post("/v1/predict", files={"file": ("IM0001", data[:kept], "application/dicom")})

        assert response.status_code == 400, (kept, response.text)
        assert response.json()["error"]["code"] == "undecodable_dicom", kept


def test_a_japanese_series_gets_its_seg_and_sr_with_the_patient_name_intact(client: TestClient) -> None:
    """`\\ISO 2022 IR 87` (the standard's example for Japanese) once made the SEG fail: highdicom refuses it."""
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    datasets = mr_series(tumor_channels())
    for dataset in datasets:
        dataset.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        dataset.PatientName = name

    response = client.post(
        "/v1/predict/batch?output=dicom-seg-sr", files=dicom_parts([to_bytes(dataset) for dataset in datasets])
    )

    assert response.status_code == 200, response.text
    for _, data in multipart_parts(response):
        found = pydicom.dcmread(io.BytesIO(data))
        assert found.SpecificCharacterSet == "ISO_IR 192" and str(found.PatientName) == name


def test_a_multi_frame_object_beside_its_lossy_copy_is_read_once(client: TestClient) -> None:
    """Interop review 37: a 3D FLAIR archived as one Enhanced MR object and forwarded beside its lossy copy got a
    400 ("2 frames lie at one slice position"): only single-frame copies were left out."""
    original = to_bytes(legacy_multiframe(mr_series(tumor_channels())))
    alone = client.post("/v1/predict/batch", files=dicom_parts([original]))

    response = client.post("/v1/predict/batch", files=dicom_parts([lossy_copy(original, original), original]))

    assert alone.status_code == response.status_code == 200, response.text
    body = response.json()
    assert body["file_errors"] == [] and [item["files"] for item in body["series_left_out"]] == [[0]]
    assert [item["prediction"] for item in body["slices"]] == [item["prediction"] for item in alone.json()["slices"]]
    assert [(item["file_index"], item["frame_number"]) for item in body["slices"]] == [(1, 1), (1, 2), (1, 3)]


def resent_under_new_uids(datasets: list[Dataset]) -> list[Dataset]:
    """`datasets` as a PACS sends them again after a re-import: the same content, new SOP Instance UIDs."""
    copies = [pydicom.dcmread(io.BytesIO(to_bytes(dataset))) for dataset in datasets]
    for copy in copies:
        copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return copies


def test_a_series_sent_again_under_new_instance_uids_is_read_once(client: TestClient) -> None:
    """Interop review 58 F1: two identical images at each position were refused ("2 frames lie at one slice
    position"), and the DICOM node and pacs-sync withdrew the study's results. Each slice is read once now, from the
    file of the lower SOP Instance UID, whatever the order; the others are left out with the reason."""
    series = mr_series(tumor_channels())
    again = resent_under_new_uids(series)
    alone = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(dataset) for dataset in series]))

    for order in ([*series, *again], [*again[::-1], *series]):
        response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(dataset) for dataset in order]))

        assert response.status_code == 200, response.text
        body = response.json()
        read = {min(first.SOPInstanceUID, second.SOPInstanceUID) for first, second in zip(series, again, strict=True)}
        assert {item["sop_instance_uid"] for item in body["slices"]} == read
        by_place = {item["position_along_normal_mm"]: item["prediction"] for item in body["slices"]}
        assert by_place == {item["position_along_normal_mm"]: item["prediction"] for item in alone.json()["slices"]}
        (left_out,) = body["series_left_out"]
        assert sorted(left_out["files"] + body["series_used"][0]["files"]) == list(range(len(order)))
        assert len(left_out["files"]) == len(series) and body["file_errors"] == []
        assert left_out["evidence"].startswith(f"{len(series)} files repeat files read pixel for pixel")


def test_a_multi_frame_object_sent_again_under_a_new_uid_is_read_once(client: TestClient) -> None:
    original = legacy_multiframe(mr_series(tumor_channels()))
    (again,) = resent_under_new_uids([original])

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(original), to_bytes(again)]))

    assert response.status_code == 200, response.text
    body = response.json()
    kept = 0 if original.SOPInstanceUID < again.SOPInstanceUID else 1
    assert [item["file_index"] for item in body["slices"]] == [kept] * 3
    assert [item["files"] for item in body["series_left_out"]] == [[1 - kept]]


@pytest.mark.parametrize("copy_uid", ["1.2.3", "2.25.9"], ids=["sorts-first", "sorts-last"])
def test_a_single_frame_copy_of_one_frame_of_a_multi_frame_file_is_left_out_whatever_its_uid(
    client: TestClient, copy_uid: str
) -> None:
    """Review 61 F7: at each place the frame of the SOP Instance UID sorting first was read, so the copy was left out
    or the study refused by the UIDs' order. The file of the most frames is read at a place now."""
    original = legacy_multiframe(mr_series(tumor_channels()))
    copy = pydicom.dcmread(io.BytesIO(to_bytes(mr_series(tumor_channels())[1])))
    copy.SeriesInstanceUID, copy.FrameOfReferenceUID = original.SeriesInstanceUID, original.FrameOfReferenceUID
    copy.StudyInstanceUID = original.StudyInstanceUID
    position = original.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0].ImagePositionPatient
    copy.ImagePositionPatient = list(position)
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = copy_uid

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(original), to_bytes(copy)]))

    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["file_index"] for item in body["slices"]] == [0, 0, 0]
    assert [item["files"] for item in body["series_left_out"]] == [[1]]


def test_two_identical_slices_of_a_series_without_positions_are_both_read(client: TestClient) -> None:
    """Review 62 F2: Secondary Captures say nowhere where they lie, and the repeats' check took two identical (blank)
    slices of one such series for a series sent twice: one was left out."""
    captures = secondary_capture_series(tumor_channels())
    captures[2].PixelData = captures[0].PixelData

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(dataset) for dataset in captures]))

    assert response.status_code == 200, response.text
    assert [item["file_index"] for item in response.json()["slices"]] == [0, 1, 2]
    assert response.json()["series_left_out"] == []


def test_a_copy_whose_pixel_padding_differs_is_no_repeat(client: TestClient) -> None:
    """Review 62 F4: Pixel Padding Value shapes what a file decodes to, and was not in the repeats' key."""
    series = mr_series(tumor_channels())
    (again,) = resent_under_new_uids(series[:1])
    again.add_new(0x00280120, "US", 0)  # Pixel Padding Value

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(dataset) for dataset in [*series, again]]))

    assert response.status_code == 400, response.text
    assert "2 frames lie at one slice position" in response.json()["error"]["message"]


def test_a_copy_under_a_new_uid_that_differs_in_one_pixel_is_still_refused(client: TestClient) -> None:
    """Two different images at one position: which one is the slice is not for the service to guess."""
    series = mr_series(tumor_channels())
    again = resent_under_new_uids(series[:1])
    pixels = again[0].pixel_array.copy()
    pixels[0, 0] += 1
    again[0].PixelData = pixels.tobytes()

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(dataset) for dataset in [*series, *again]]))

    assert response.status_code == 400, response.text
    assert "2 frames lie at one slice position" in response.json()["error"]["message"]


def test_a_multi_frame_object_is_no_copy_of_one_whose_frames_lie_elsewhere(client: TestClient) -> None:
    """A derived multi-frame object whose frames lie elsewhere (another slab) is no copy: both are read."""
    original = legacy_multiframe(mr_series(tumor_channels()))
    shifted = pydicom.dcmread(io.BytesIO(lossy_copy(to_bytes(original), to_bytes(original))))
    for group in shifted.PerFrameFunctionalGroupsSequence:
        position = group.PlanePositionSequence[0]
        position.ImagePositionPatient = [*position.ImagePositionPatient[:2], position.ImagePositionPatient[2] + 100.0]

    response = client.post("/v1/predict/batch", files=dicom_parts([to_bytes(original), to_bytes(shifted)]))

    assert response.status_code == 200, response.text
    assert response.json()["series_left_out"] == [] and len(response.json()["slices"]) == 6


def test_the_report_of_a_series_is_the_same_in_any_file_order(client: TestClient) -> None:
    """Interop review 44 F4: the SR's image library followed the request's file order (the node's and pacs-sync's
    followed Instance Numbers): one SR UID, two contents."""
    files = [to_bytes(dataset) for dataset in mr_series(tumor_channels())]

    reports = [
        pydicom.dcmread(io.BytesIO(client.post("/v1/predict/batch?output=dicom-sr", files=dicom_parts(order)).content))
        for order in (files, files[::-1])
    ]

    libraries = [
        [
            item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for group in report.ContentSequence
            if group.ConceptNameCodeSequence[0].CodeValue == "111028"  # Image Library
            for entry in group.ContentSequence
            for item in entry.ContentSequence
        ]
        for report in reports
    ]
    assert len(libraries[0]) == 3
    assert libraries[0] == libraries[1]
    assert reports[0].SOPInstanceUID == reports[1].SOPInstanceUID


def test_the_report_alone_of_a_series_no_seg_can_cover_is_made_saying_why(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interop review 63 F7: `output=dicom-sr` was refused where no SEG can be made (here slices without a Frame of
    Reference UID), while the DICOM node and pacs-sync send the SR alone: a site calling the API got no report. The
    models run once for it (review 72 F3: the first answer was dropped and the series analysed again)."""
    datasets = mr_series(tumor_channels())
    for dataset in datasets:
        del dataset.FrameOfReferenceUID
    files = dicom_parts([to_bytes(d) for d in datasets])
    counted: list[int] = []
    count = PredictionService._count
    monkeypatch.setattr(
        PredictionService, "_count", lambda self, said, *args: counted.append(len(said)) or count(self, said, *args)
    )

    refused = client.post("/v1/predict/batch?output=dicom-seg", files=files)
    counted.clear()
    report = client.post("/v1/predict/batch?output=dicom-sr", files=files)

    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_segmentation_input"
    assert report.status_code == 200, report.text
    assert report.headers["X-Tumor-Detected"] == "true"
    sr = pydicom.dcmread(io.BytesIO(report.content))
    assert sr.Modality == "SR"
    assert "No DICOM SEG was made of this series: " in report.content.decode("latin-1")
    assert dciodvfy_errors(report.content, "ComprehensiveSR") == []
    assert counted == [len(datasets)]  # one analysis


def test_a_seg_of_slices_that_came_lossy_compressed_without_saying_so_says_they_were(
    client: TestClient, tmp_path: Path
) -> None:
    """Interop review 63 F9: slices sent in JPEG Baseline by a sender that did not set Lossy Image Compression gave a
    SEG saying "00", never lossy compressed, of masks drawn on lossy pixels (PS3.3 C.7.6.1.1.5: once "01", never
    reset)."""
    compressed = []
    paths = write_files(mr_series(tumor_channels()), tmp_path / "in")
    for path in paths:
        target = tmp_path / f"{path.name}.jpg.dcm"
        subprocess.run([dcmtk("dcmcjpeg"), "+eb", str(path), str(target)], check=True, capture_output=True, timeout=60)
        subprocess.run(
            [dcmtk("dcmodify"), "-nb", "-ea", "(0028,2110)", "-ea", "(0028,2112)", "-ea", "(0028,2114)", str(target)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        compressed.append(target.read_bytes())
    assert b"ISO_10918_1" not in compressed[0]

    response = client.post("/v1/predict/batch?output=dicom-seg", files=dicom_parts(compressed))

    assert response.status_code == 200, response.text
    seg = pydicom.dcmread(io.BytesIO(response.content))
    assert seg.LossyImageCompression == "01"
    assert "ISO_10918_1" in seg.LossyImageCompressionMethod

    # Interop review 64 F1: JPEG 2000 coded with the irreversible wavelet is lossy too; coded reversibly, it may not be.
    for ratio, expected in (([20], ("01", "ISO_15444_1")), (None, ("00", None))):
        j2k = []
        for dataset in mr_series(tumor_channels()):
            dataset = pydicom.dcmread(io.BytesIO(to_bytes(dataset)))
            if ratio:
                dataset.compress(JPEG2000, j2k_cr=ratio)
            else:  # a reversible codestream under the syntax that may be lossy
                dataset.compress(JPEG2000Lossless)
                dataset.file_meta.TransferSyntaxUID = JPEG2000
            for keyword in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
                dataset.pop(keyword, None)
            j2k.append(to_bytes(dataset))
        response = client.post("/v1/predict/batch?output=dicom-seg", files=dicom_parts(j2k))
        assert response.status_code == 200, response.text
        seg = pydicom.dcmread(io.BytesIO(response.content))
        assert (seg.LossyImageCompression, seg.get("LossyImageCompressionMethod")) == expected, ratio

    # Review 73 F4: a method or ratio unfit to copy is left out, not the SEG refused.
    odd = mr_series(tumor_channels())
    odd[-1].LossyImageCompression, odd[-1].LossyImageCompressionMethod = "01", "jpeg lossy"
    odd[-1].add_new(0x00282112, "DS", "12.34567890123456")  # Lossy Image Compression Ratio: 17 characters
    response = client.post("/v1/predict/batch?output=dicom-seg", files=dicom_parts([to_bytes(item) for item in odd]))
    assert response.status_code == 200, response.text
    seg = pydicom.dcmread(io.BytesIO(response.content))
    assert seg.LossyImageCompression == "01"
    assert "LossyImageCompressionMethod" not in seg and "LossyImageCompressionRatio" not in seg

    # Interop review 64 F3: highdicom copies the first source's flag; one lossy slice among them is enough.
    originals = [path.read_bytes() for path in paths]
    for lossy_at in (len(originals) - 1, 0):
        mixed = [compressed[index] if index == lossy_at else data for index, data in enumerate(originals)]
        response = client.post("/v1/predict/batch?output=dicom-seg", files=dicom_parts(mixed))
        assert response.status_code == 200, response.text
        seg = pydicom.dcmread(io.BytesIO(response.content))
        assert (seg.LossyImageCompression, seg.get("LossyImageCompressionMethod")) == ("01", "ISO_10918_1"), lossy_at
