"""DICOM over HTTP: the predict endpoints read DICOM series and answer in JSON or as a DICOM SEG."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.dicom_seg_reader import read_segmentation_masks
from tests.api.utils import decode_rle
from tests.conftest import TUMOR_SLICE
from tests.dicom.builders import mr_series, to_bytes, tumor_channels


@pytest.fixture(scope="module")
def series_files() -> list[bytes]:
    """Three single-frame MR instances of one series, built from the committed tumor slices' FLAIR channel."""
    return [to_bytes(dataset) for dataset in mr_series(tumor_channels())]


def dicom_parts(files: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"IM{index:04d}", data, "application/dicom")) for index, data in enumerate(files)]


def test_predict_reads_one_dicom_instance_as_a_slice(client: TestClient, series_files: list[bytes]) -> None:
    response = client.post("/v1/predict", files={"file": ("IM0001", series_files[0], "application/dicom")})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tumor_detected"] is True  # the tiny models call every slice positive
    assert body["mask"]["size"] == [256, 256]


def test_predict_batch_of_dicom_series_gives_one_result_per_slice_and_volume(
    client: TestClient, series_files: list[bytes]
) -> None:
    response = client.post("/v1/predict/batch", files=dicom_parts(series_files))

    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["index"] for item in body["slices"]] == [0, 1, 2]
    assert [item["frame_number"] for item in body["slices"]] == [1, 1, 1]
    assert len({item["sop_instance_uid"] for item in body["slices"]}) == 3
    assert body["tumor_detected"] is True
    areas = [item["prediction"]["mask"]["area_pixels"] for item in body["slices"]]
    assert body["tumor_volume_ml"] > 0 and sum(areas) > 0
    assert body["file_errors"] == []


def test_predict_batch_dicom_seg_matches_the_json_masks(client: TestClient, series_files: list[bytes]) -> None:
    as_json = client.post("/v1/predict/batch", files=dicom_parts(series_files)).json()
    response = client.post("/v1/predict/batch?output=dicom-seg", files=dicom_parts(series_files))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    assert float(response.headers["X-Tumor-Volume-mL"]) == pytest.approx(as_json["tumor_volume_ml"], rel=1e-3)
    masks = read_segmentation_masks(response.content)
    for item in as_json["slices"]:
        expected = decode_rle(item["prediction"]["mask"]["rle"])
        np.testing.assert_array_equal(masks[item["sop_instance_uid"]][0], expected)


def test_accept_header_asks_for_a_dicom_seg(client: TestClient, series_files: list[bytes]) -> None:
    response = client.post(
        "/v1/predict",
        files={"file": ("IM0001", series_files[0], "application/dicom")},
        headers={"Accept": "application/dicom"},
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    assert response.content[128:132] == b"DICM"


def test_negative_series_gives_json_and_no_seg(negative_client: TestClient, series_files: list[bytes]) -> None:
    response = negative_client.post("/v1/predict/batch?output=dicom-seg", files=dicom_parts(series_files))

    assert response.status_code == 200
    body = response.json()
    assert body["tumor_detected"] is False
    assert all(item["prediction"]["mask"] is None for item in body["slices"])


def test_unreadable_dicom_in_a_series_is_reported_in_place(client: TestClient, series_files: list[bytes]) -> None:
    broken = b"\0" * 128 + b"DICM" + b"\x02\x00"
    response = client.post("/v1/predict/batch", files=dicom_parts([series_files[0], broken, series_files[2]]))

    assert response.status_code == 200
    body = response.json()
    assert len(body["slices"]) == 2
    assert [error["index"] for error in body["file_errors"]] == [1]
    assert body["file_errors"][0]["error"]["code"] == "undecodable_dicom"


def test_mixed_dicom_and_png_batch_is_refused(client: TestClient, series_files: list[bytes]) -> None:
    files = [*dicom_parts(series_files[:1]), ("files", ("slice.jpg", TUMOR_SLICE.read_bytes(), "image/jpeg"))]
    response = client.post("/v1/predict/batch", files=files)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "mixed_input"


def test_dicom_seg_of_a_png_is_refused(client: TestClient) -> None:
    response = client.post(
        "/v1/predict?output=dicom-seg", files={"file": ("slice.jpg", TUMOR_SLICE.read_bytes(), "image/jpeg")}
    )

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "invalid_image",
            "message": "output=dicom-seg needs DICOM input: a DICOM SEG must reference the DICOM instances it segments",
        }
    }


def test_overlay_of_a_dicom_instance_is_a_png(client: TestClient, series_files: list[bytes]) -> None:
    response = client.post("/v1/overlay", files={"file": ("IM0001", series_files[1], "application/dicom")})

    assert response.status_code == 200
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
