"""POST /v1/predict/batch: per-file results in request order, per-file errors, and the batch limits."""

from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from tests.api.service_client import (
    LIMITED_BATCH_FILES,
    LIMITED_QUEUE_SLICES,
    LIMITED_UPLOAD_BYTES,
    batch_upload,
    decode_png_mask,
    decode_rle,
    png_bytes,
    resized,
    upload,
)
from tests.conftest import TUMOR_FREE_SLICE, TUMOR_SERIES, TUMOR_SLICE, read_slice

NOT_AN_IMAGE = b"GIF89a is not accepted here"


def predict_one(client: TestClient, data: bytes) -> dict:
    response = client.post("/v1/predict", files=upload(data, "slice.jpg"))
    assert response.status_code == 200, response.text
    return response.json()


def predict_batch(client: TestClient, items: list[bytes], **params: str):
    return client.post("/v1/predict/batch", params=params, files=batch_upload(items))


def assert_same_prediction(item: dict, single: dict) -> None:
    prediction = item["prediction"]
    assert set(prediction) == {"tumor_probability", "tumor_detected", "threshold", "mask"}
    assert prediction["tumor_probability"] == single["tumor_probability"]
    assert prediction["tumor_detected"] == single["tumor_detected"]
    assert prediction["threshold"] == single["threshold"]
    np.testing.assert_array_equal(decode_rle(prediction["mask"]["rle"]), decode_rle(single["mask"]["rle"]))


def test_predict_batch_returns_results_in_request_order(client: TestClient, tiny_manifest: dict) -> None:
    files = [*TUMOR_SERIES, TUMOR_FREE_SLICE]
    singles = [predict_one(client, path.read_bytes()) for path in files]
    assert len({single["tumor_probability"] for single in singles}) == len(files), "slices must be told apart"

    response = client.post(
        "/v1/predict/batch",
        files=batch_upload([path.read_bytes() for path in reversed(files)]),
        headers={"X-Request-ID": "series-7"},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"results", "notes", "models", "request_id"}
    assert body["notes"] == []  # slices answered alone: their order means nothing
    assert body["request_id"] == response.headers["X-Request-ID"] != "series-7"  # the server's id, not the client's
    assert body["models"] == singles[0]["models"]
    assert [item["index"] for item in body["results"]] == list(range(len(files)))
    assert all(item["ok"] is True for item in body["results"])
    for item, single in zip(body["results"], reversed(singles), strict=True):
        assert_same_prediction(item, single)


def test_predict_batch_reports_bad_file_in_place(client: TestClient) -> None:
    first, last = TUMOR_SERIES[0].read_bytes(), TUMOR_SERIES[2].read_bytes()

    response = predict_batch(client, [first, NOT_AN_IMAGE, last])

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[1] == {
        "index": 1,
        "ok": False,
        "error": {
            "code": "unsupported_media_type",
            "message": "unsupported file type: the file must start with the PNG, JPEG or TIFF magic bytes, "
            "or be DICOM (DICM at byte 128); it looks like a GIF image",
        },
    }
    assert results[0]["index"] == 0 and results[0]["ok"] is True
    assert results[2]["index"] == 2 and results[2]["ok"] is True
    assert_same_prediction(results[0], predict_one(client, first))
    assert_same_prediction(results[2], predict_one(client, last))


def test_predict_batch_reports_empty_and_truncated_files(client: TestClient) -> None:
    good = TUMOR_SLICE.read_bytes()

    response = predict_batch(client, [b"", good, good[:300]])

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["error"]["code"] == "empty_file"
    assert results[0] == {
        "index": 0,
        "ok": False,
        "error": {
            "code": "empty_file",
            "message": "the uploaded file is empty (0 bytes); expected a PNG, JPEG, TIFF or DICOM file",
        },
    }
    assert results[1]["ok"] is True
    assert results[2]["ok"] is False
    assert results[2]["error"]["code"] == "undecodable_image"
    assert set(results[2]) == {"index", "ok", "error"} and results[2]["index"] == 2
    assert results[2]["error"]["message"].startswith("JPEG file cannot be decoded: ")


def test_predict_batch_answers_200_when_every_file_fails(client: TestClient) -> None:
    response = predict_batch(client, [NOT_AN_IMAGE, b""])

    assert response.status_code == 200, response.text
    assert [(item["ok"], item["error"]["code"]) for item in response.json()["results"]] == [
        (False, "unsupported_media_type"),
        (False, "empty_file"),
    ]


def test_predict_batch_honours_mask_format(client: TestClient) -> None:
    response = predict_batch(client, [TUMOR_SLICE.read_bytes()] * 2, mask_format="png")

    assert response.status_code == 200, response.text
    for item in response.json()["results"]:
        mask = item["prediction"]["mask"]
        assert "rle" not in mask
        assert decode_png_mask(mask["png"]).sum() == mask["area_pixels"]


def test_predict_batch_names_the_part_sent_and_the_part_expected_when_files_is_missing(client: TestClient) -> None:
    """API review 48 F7: a part under /v1/predict's name was answered with advice on the multipart framing."""
    response = client.post("/v1/predict/batch", files={"file": ("slice.png", b"x", "image/png")})

    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "validation_error",
        "message": "body.files: Field required: this endpoint's file part is named `files`; the body has a part "
        "named `file`",
    }


def test_predict_batch_refuses_a_body_that_is_no_form_naming_its_field(client: TestClient) -> None:
    response = client.post("/v1/predict/batch", json={"files": []})

    assert response.status_code == 415
    assert response.json()["error"]["message"] == (
        "the request body must be multipart/form-data, the files in the form field `files`; its Content-Type is "
        "application/json"
    )


def test_a_raster_series_of_slices_of_two_sizes_is_refused_and_the_same_slices_alone_are_answered(
    client: TestClient,
) -> None:
    tumor = TUMOR_SLICE.read_bytes()
    smaller = png_bytes(resized(read_slice(TUMOR_SLICE), 128, 128))

    series = predict_batch(client, [tumor, smaller, tumor], series="true")
    alone = predict_batch(client, [tumor, smaller, tumor])

    assert series.status_code == 400
    assert series.json()["error"] == {
        "code": "invalid_image",
        "message": "the slices of one series must share one size; got 128 x 128, 256 x 256 (height x width): the "
        "request's file at index 1 (file 2 as sent) differs from the other 1",
    }
    assert alone.status_code == 200
    assert [item["ok"] for item in alone.json()["results"]] == [True, True, True]


def test_a_file_sent_twice_in_a_raster_series_is_one_slice(client: TestClient) -> None:
    """Browser review: a "(copy).jpg" beside its original was one more tumor slice, and 22 % more volume, without a
    word. In a series the copy gets an error in its place; sent as separate slices, both are answered."""
    slices = [path.read_bytes() for path in TUMOR_SERIES]
    files = [slices[0], slices[1], slices[1], *slices[2:]]

    series = predict_batch(client, files, series="true")
    alone = predict_batch(client, files)

    assert series.status_code == 200, series.text
    results = series.json()["results"]
    assert [item["ok"] for item in results] == [True, True, False, *[True] * (len(slices) - 2)]
    assert results[2]["error"] == {
        "code": "repeated_slice",  # browser review 44: no failed slice, so that a client counts no gap for it
        "message": "the file holds the same pixels as the request's file at index 1 (file 2 as sent); a slice of a "
        "series is read once",
    }
    assert results[3]["prediction"] == predict_batch(client, slices, series="true").json()["results"][2]["prediction"]
    assert [item["ok"] for item in alone.json()["results"]] == [True] * len(files)


def test_a_slice_saved_again_in_other_bytes_is_still_the_same_slice(client: TestClient) -> None:
    """Attack review 39: the same pixels saved again at another PNG compression level were one more slice (+22 % of
    the tumor's area): slices are compared on what the models read, not on the file's bytes."""
    pixels = read_slice(TUMOR_SERIES[1])
    again = io.BytesIO()
    Image.fromarray(pixels).save(again, format="PNG", compress_level=1)
    files = [
        png_bytes(read_slice(TUMOR_SERIES[0])),
        png_bytes(pixels),
        again.getvalue(),
        png_bytes(read_slice(TUMOR_SERIES[2])),
    ]
    assert files[1] != files[2]

    response = predict_batch(client, files, series="true")

    assert response.status_code == 200, response.text
    assert [item["ok"] for item in response.json()["results"]] == [True, True, False, True]
    assert "the same pixels" in response.json()["results"][2]["error"]["message"]


def test_blank_slices_may_repeat_in_a_raster_series(client: TestClient) -> None:
    """The empty slices at a volume's ends can be byte-identical files: they add nothing, and are answered."""
    blank = png_bytes(np.zeros((256, 256), np.uint8))

    response = predict_batch(client, [blank, blank, TUMOR_SERIES[0].read_bytes(), blank], series="true")

    assert response.status_code == 200, response.text
    assert [item["ok"] for item in response.json()["results"]] == [True] * 4


def test_predict_batch_names_a_text_field_sent_where_a_file_belongs(client: TestClient) -> None:
    response = client.post("/v1/predict/batch", files=[("files", (None, "slice.png"))])

    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("body.files.0: expected a file, got a text field")


def test_predict_batch_reports_file_over_max_upload_bytes_in_place(limited_client: TestClient) -> None:
    oversized = b"\x89PNG\r\n\x1a\n" + bytes(LIMITED_UPLOAD_BYTES)

    response = predict_batch(limited_client, [TUMOR_SLICE.read_bytes(), oversized])

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["ok"] is True
    assert results[1] == {
        "index": 1,
        "ok": False,
        "error": {
            "code": "payload_too_large",
            "message": f"file must be at most {LIMITED_UPLOAD_BYTES} bytes; got more than {LIMITED_UPLOAD_BYTES} bytes",
        },
    }


def test_predict_batch_rejects_more_than_max_batch_files(limited_client: TestClient) -> None:
    files = [TUMOR_SLICE.read_bytes()] * (LIMITED_BATCH_FILES + 1)

    response = predict_batch(limited_client, files)

    assert response.status_code == 413
    assert response.json() == {
        "error": {
            "code": "too_many_files",
            "message": f"a batch may hold at most {LIMITED_BATCH_FILES} files (MAX_BATCH_FILES); "
            f"got {LIMITED_BATCH_FILES + 1}",
        }
    }
    follow_up = predict_batch(limited_client, [TUMOR_SLICE.read_bytes()] * LIMITED_QUEUE_SLICES)
    assert follow_up.status_code == 200, follow_up.text


def test_predict_batch_over_queue_capacity_is_too_large(limited_client: TestClient) -> None:
    # More decodable slices than the inference queue can ever hold: 413, since retrying could never succeed.
    files = [TUMOR_SLICE.read_bytes()] * (LIMITED_QUEUE_SLICES + 1)

    response = predict_batch(limited_client, files)

    assert response.status_code == 413
    assert response.json() == {
        "error": {
            "code": "too_many_slices",
            "message": f"a request may hold at most {LIMITED_QUEUE_SLICES} slices (INFERENCE_QUEUE_SLICES); "
            f"got {LIMITED_QUEUE_SLICES + 1}",
        }
    }
    follow_up = predict_batch(limited_client, [TUMOR_SLICE.read_bytes()] * LIMITED_QUEUE_SLICES)
    assert follow_up.status_code == 200, follow_up.text
    assert [item["ok"] for item in follow_up.json()["results"]] == [True] * LIMITED_QUEUE_SLICES


def test_a_raster_series_whose_file_names_disagree_with_the_order_sent_says_so(client: TestClient) -> None:
    """ML audit 48 F4: files listed as text sort `_1, _10, _2` and were read as a scrambled volume without a word.
    The order sent stays the series' order; the answer notes that the names number the slices otherwise."""
    slices = [path.read_bytes() for path in TUMOR_SERIES]

    def send(names: list[str], **params: str) -> dict:
        files = [("files", (name, data, "image/jpeg")) for name, data in zip(names, slices, strict=True)]
        response = client.post("/v1/predict/batch", params=params, files=files)
        assert response.status_code == 200, response.text
        return response.json()

    as_text = send(["slice_1.jpg", "slice_10.jpg", "slice_2.jpg"], series="true")
    in_order = send(["slice_1.jpg", "slice_2.jpg", "slice_10.jpg"], series="true")
    alone = send(["slice_1.jpg", "slice_10.jpg", "slice_2.jpg"])

    assert len(as_text["notes"]) == 1
    assert "file 2 is numbered 10 and file 3 2" in as_text["notes"][0]
    assert as_text["results"] == in_order["results"]  # read in the order sent, as documented
    assert in_order["notes"] == [] and alone["notes"] == []  # slices answered alone have no order
