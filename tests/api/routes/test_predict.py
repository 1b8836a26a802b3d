"""POST /v1/predict: the response contract field by field, every accepted input, and every error status."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.imaging import decode_image
from app.inference import Predictor
from tests.api.service_client import (
    LIMITED_IMAGE_PIXELS,
    LIMITED_UPLOAD_BYTES,
    bbox_of,
    decode_png_mask,
    decode_rle,
    full_range,
    pil_bytes,
    png_bytes,
    resized,
    sample_value,
    tiff_bytes,
    upload,
)
from tests.conftest import EVERY_SLICE, NO_SLICE, TUMOR_SLICE, read_slice

PREDICTION_KEYS = {"tumor_probability", "tumor_detected", "threshold", "mask", "models", "request_id"}
UNSUPPORTED_TEXT = b"hello world, this is not an image"


def predict(client: TestClient, data: bytes, name: str = "slice.png", **params: str):
    return client.post("/v1/predict", params=params, files=upload(data, name))


def assert_still_serving(client: TestClient) -> None:
    """The next good request after an error is answered normally."""
    response = predict(client, TUMOR_SLICE.read_bytes(), "slice.jpg")
    assert response.status_code == 200, response.text
    assert response.json()["tumor_detected"] is True


def grey_flair() -> np.ndarray:
    """The tumor slice's FLAIR channel stretched to 0..255, so 16-bit copies of it stretch back to exactly it."""
    return full_range(read_slice(TUMOR_SLICE)[:, :, 1])


def test_predict_returns_every_contract_field(client: TestClient, tiny_manifest: dict) -> None:
    response = client.post(
        "/v1/predict",
        params={"mask_format": "both"},
        files=upload(TUMOR_SLICE.read_bytes(), "slice.jpg", "image/jpeg"),
        headers={"X-Request-ID": "req-0042"},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == PREDICTION_KEYS
    assert 0.0 <= body["tumor_probability"] <= 1.0
    assert body["threshold"] == tiny_manifest["classifier"]["threshold"] == EVERY_SLICE
    assert body["tumor_detected"] is (body["tumor_probability"] >= body["threshold"])
    assert body["models"] == {
        "classifier": f"{tiny_manifest['classifier']['name']}@{tiny_manifest['classifier']['version']}",
        "segmenter": f"{tiny_manifest['segmenter']['name']}@{tiny_manifest['segmenter']['version']}",
    }
    # The server makes the id (a client's could repeat); the client's own id goes to the logs only.
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
    assert response.headers["X-Request-ID"] == body["request_id"]

    mask = body["mask"]
    assert set(mask) == {"size", "rle", "png", "area_pixels", "bbox"}
    assert mask["size"] == [256, 256]
    assert mask["rle"]["size"] == [256, 256]
    from_rle = decode_rle(mask["rle"])
    from_png = decode_png_mask(mask["png"])
    assert from_rle.shape == (256, 256)
    np.testing.assert_array_equal(from_rle, from_png)
    assert from_rle.any(), "the tiny segmenter should mark some pixels of this slice (else bbox is untested)"
    assert mask["area_pixels"] == int(from_rle.sum())
    assert mask["bbox"] == bbox_of(from_rle)


def test_predict_matches_predictor_on_same_bytes(client: TestClient, predictor: Predictor) -> None:
    data = TUMOR_SLICE.read_bytes()

    body = predict(client, data, "slice.jpg").json()
    (expected,) = predictor.predict([decode_image(data)])

    assert body["tumor_probability"] == pytest.approx(expected.probability, abs=1e-6)
    np.testing.assert_array_equal(decode_rle(body["mask"]["rle"]), expected.mask)


def test_predict_returns_rle_only_by_default(client: TestClient) -> None:
    mask = predict(client, TUMOR_SLICE.read_bytes(), "slice.jpg").json()["mask"]

    assert "rle" in mask
    assert "png" not in mask


def test_predict_rle_format_has_no_png_key(client: TestClient) -> None:
    mask = predict(client, TUMOR_SLICE.read_bytes(), "slice.jpg", mask_format="rle").json()["mask"]

    assert set(mask) == {"size", "rle", "area_pixels", "bbox"}


def test_predict_png_format_has_no_rle_key(client: TestClient) -> None:
    mask = predict(client, TUMOR_SLICE.read_bytes(), "slice.jpg", mask_format="png").json()["mask"]

    assert set(mask) == {"size", "png", "area_pixels", "bbox"}
    assert decode_png_mask(mask["png"]).sum() == mask["area_pixels"]


def test_predict_generates_request_id_without_header(client: TestClient) -> None:
    response = predict(client, TUMOR_SLICE.read_bytes(), "slice.jpg")

    request_id = response.json()["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert response.headers["X-Request-ID"] == request_id


def test_predict_replaces_request_id_that_is_not_a_plain_token(client: TestClient) -> None:
    response = client.post(
        "/v1/predict",
        files=upload(TUMOR_SLICE.read_bytes(), "slice.jpg"),
        headers={"X-Request-ID": "patient name; drop table"},
    )

    request_id = response.json()["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert response.headers["X-Request-ID"] == request_id


def test_predict_negative_slice_has_null_mask_and_skips_segmenter(negative_client: TestClient) -> None:
    before = negative_client.get("/metrics").text

    response = predict(negative_client, TUMOR_SLICE.read_bytes(), "slice.jpg", mask_format="both")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["threshold"] == NO_SLICE
    assert body["tumor_detected"] is False
    assert body["mask"] is None
    assert 0.0 <= body["tumor_probability"] < NO_SLICE
    after = negative_client.get("/metrics").text
    runs = "brain_tumor_model_inference_seconds_count"
    assert sample_value(after, runs, model="classifier") == sample_value(before, runs, model="classifier") + 1
    assert sample_value(after, runs, model="segmenter") == sample_value(before, runs, model="segmenter")


@pytest.mark.parametrize(("height", "width"), [(200, 300), (512, 512), (32, 45)])
def test_predict_returns_mask_at_input_size(client: TestClient, height: int, width: int) -> None:
    image = resized(read_slice(TUMOR_SLICE), height, width)

    response = predict(client, png_bytes(image), mask_format="both")

    assert response.status_code == 200, response.text
    mask = response.json()["mask"]
    assert mask["size"] == [height, width]
    assert mask["rle"]["size"] == [height, width]
    from_rle = decode_rle(mask["rle"])
    assert from_rle.shape == (height, width)
    np.testing.assert_array_equal(from_rle, decode_png_mask(mask["png"]))
    assert mask["area_pixels"] == int(from_rle.sum())
    assert mask["bbox"] == bbox_of(from_rle)


GREY_ENCODINGS = {
    "grey8_png": lambda grey: png_bytes(grey),
    "grey8_tiff": lambda grey: tiff_bytes(grey),
    "grey16_png": lambda grey: png_bytes(grey.astype(np.uint16) * 257),
    "grey16_tiff": lambda grey: tiff_bytes(grey.astype(np.uint16) * 257),
    # Scanner-range 16-bit values (1000 + 10 * v) stretch back to the same 8-bit image.
    "grey16_scanner_range_png": lambda grey: png_bytes(1000 + grey.astype(np.uint16) * 10),
    "grey_alpha_png": lambda grey: pil_bytes(np.dstack([grey, np.full_like(grey, 128)]), "PNG"),
}


@pytest.mark.parametrize("encoding", sorted(GREY_ENCODINGS))
def test_predict_treats_grey_slice_as_flair_replicated(client: TestClient, encoding: str) -> None:
    grey = grey_flair()
    replicated = predict(client, png_bytes(np.dstack([grey, grey, grey]))).json()

    response = predict(client, GREY_ENCODINGS[encoding](grey), "slice.bin")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tumor_probability"] == replicated["tumor_probability"]
    assert body["mask"] == replicated["mask"]


def test_predict_drops_alpha_of_rgba_png(client: TestClient) -> None:
    rgb = read_slice(TUMOR_SLICE)
    alpha = np.random.default_rng(0).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    reference = predict(client, png_bytes(rgb)).json()

    response = predict(client, png_bytes(np.dstack([rgb, alpha])))

    assert response.status_code == 200, response.text
    assert response.json()["tumor_probability"] == reference["tumor_probability"]
    assert response.json()["mask"] == reference["mask"]


def test_predict_reads_16_bit_rgb_png_in_rgb_order(client: TestClient) -> None:
    rgb = np.dstack([full_range(read_slice(TUMOR_SLICE)[:, :, channel]) for channel in range(3)])
    reference = predict(client, png_bytes(rgb)).json()

    response = predict(client, png_bytes(rgb.astype(np.uint16) * 257))

    assert response.status_code == 200, response.text
    assert response.json()["tumor_probability"] == reference["tumor_probability"]
    assert response.json()["mask"] == reference["mask"]


def test_predict_judges_type_by_magic_bytes_not_name(client: TestClient) -> None:
    data = png_bytes(read_slice(TUMOR_SLICE))

    response = client.post("/v1/predict", files=upload(data, "notes.txt", "text/plain"))

    assert response.status_code == 200, response.text
    assert response.json()["mask"]["size"] == [256, 256]


def test_predict_rejects_empty_file(client: TestClient) -> None:
    response = predict(client, b"")

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "empty_file",
            "message": "the uploaded file is empty (0 bytes); expected a PNG, JPEG, TIFF or DICOM file",
        }
    }
    assert_still_serving(client)


@pytest.mark.parametrize(
    ("image_format", "encode", "keep_bytes"),
    [
        ("PNG", lambda image: png_bytes(image), 200),
        ("16-bit PNG", lambda image: png_bytes(image.astype(np.uint16) * 257), 200),
        ("JPEG", lambda image: pil_bytes(image, "JPEG"), 600),
        ("TIFF", lambda image: tiff_bytes(image), 100),
    ],
    ids=["png8", "png16", "jpeg", "tiff"],
)
def test_predict_rejects_truncated_image(client: TestClient, image_format: str, encode, keep_bytes: int) -> None:
    data = encode(read_slice(TUMOR_SLICE))[:keep_bytes]

    response = predict(client, data)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message"}
    assert error["code"] == "undecodable_image"
    assert error["message"].startswith(f"{image_format} file cannot be decoded"), error["message"]
    assert_still_serving(client)


def test_predict_rejects_text_file_named_png(client: TestClient) -> None:
    response = client.post("/v1/predict", files=upload(UNSUPPORTED_TEXT, "slice.png", "image/png"))

    assert response.status_code == 415
    assert response.json() == {
        "error": {
            "code": "unsupported_media_type",
            "message": "unsupported file type: the file must start with the PNG, JPEG or TIFF magic bytes, "
            "or be DICOM (DICM at byte 128); it looks like text",
        }
    }
    assert_still_serving(client)


def test_predict_rejects_gif(client: TestClient) -> None:
    gif = pil_bytes(read_slice(TUMOR_SLICE)[:, :, 1], "GIF")

    response = predict(client, gif, "slice.png")

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert response.json()["error"]["message"] == (
        "unsupported file type: the file must start with the PNG, JPEG or TIFF magic bytes, "
        "or be DICOM (DICM at byte 128); it looks like a GIF image"
    )
    assert_still_serving(client)


def test_predict_rejects_multi_page_tiff(client: TestClient) -> None:
    pages = np.stack([read_slice(TUMOR_SLICE)[:, :, 1]] * 2)

    response = predict(client, tiff_bytes(pages), "series.tif")

    assert response.status_code == 400
    assert response.json() == {
        "error": {"code": "invalid_image", "message": "TIFF must hold one page (one slice); it holds 2 pages"}
    }
    assert_still_serving(client)


def test_predict_names_the_part_sent_and_the_part_expected_when_file_is_missing(client: TestClient) -> None:
    """API review 48 F7: a part under the batch's name was answered with advice on the multipart framing."""
    response = client.post("/v1/predict", files={"files": ("slice.png", b"x", "image/png")})

    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "validation_error",
        "message": "body.file: Field required: this endpoint's file part is named `file`; the body has a part named "
        "`files`",
    }
    assert_still_serving(client)


def test_predict_names_every_part_sent_when_file_is_missing(client: TestClient) -> None:
    files = [("image", ("a.png", b"x", "image/png")), ("note", (None, "x")), ("image", ("b.png", b"x", "image/png"))]

    response = client.post("/v1/predict", files=files)

    assert response.status_code == 422
    assert response.json()["error"]["message"].endswith("the body has parts named `image`, `note`")


@pytest.mark.parametrize(
    ("headers", "content", "named"),
    [
        ({}, b"", "none"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"&" * 10_000, "application/x-www-form-urlencoded"),
        ({"Content-Type": "image/png"}, b"\x89PNG", "image/png"),
        ({"Content-Type": "<script>/x y"}, b"x", "a malformed one"),
    ],
    ids=["no body", "url-encoded", "raw image", "malformed type"],
)
def test_predict_refuses_a_body_that_is_no_form_before_reading_it(
    client: TestClient, headers: dict[str, str], content: bytes, named: str
) -> None:
    """Attack review 34: Starlette parsed a url-encoded body field by field before the route's 422 (at DEBUG,
    python-multipart logged a line per "&")."""
    response = client.post("/v1/predict", content=content, headers=headers)

    assert response.status_code == 415
    assert response.json()["error"] == {
        "code": "unsupported_media_type",
        "message": "the request body must be multipart/form-data, the file in the form field `file`; its "
        f"Content-Type is {named}",
    }
    assert_still_serving(client)


def multipart_file_part(data: bytes) -> bytes:
    return (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="slice.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + data + b"\r\n"
    )


def test_predict_says_why_a_body_with_a_preamble_cannot_be_read(client: TestClient) -> None:
    body = b"text before the first boundary\r\n" + multipart_file_part(png_bytes(grey_flair())) + b"--xyz--\r\n"

    response = client.post("/v1/predict", content=body, headers={"Content-Type": "multipart/form-data; boundary=xyz"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert error["message"].startswith("the multipart/form-data body could not be read (Expected boundary character")
    assert "must start with its boundary line (--BOUNDARY, with nothing before it)" in error["message"]
    assert_still_serving(client)


def test_predict_says_a_body_without_its_closing_boundary_has_no_complete_part(client: TestClient) -> None:
    body = multipart_file_part(png_bytes(grey_flair()))  # cut before "--xyz--"

    response = client.post("/v1/predict", content=body, headers={"Content-Type": "multipart/form-data; boundary=xyz"})

    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert message.startswith("body.file: Field required (no complete part of this name in the multipart body;")
    assert message.endswith("and end with --BOUNDARY--)")
    assert_still_serving(client)


def test_predict_rejects_file_field_sent_as_text(client: TestClient) -> None:
    response = client.post("/v1/predict", files={"file": (None, "slice.png")})  # a form's text field

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert response.json()["error"]["message"] == (
        "body.file: expected a file, got a text field (send the image as a multipart/form-data file part with a "
        "filename=\"...\" parameter; filename* alone is not read) (got 'slice.png')"
    )
    assert_still_serving(client)


def test_a_file_named_only_by_rfc_2231_filename_star_is_told_which_parameter_is_read(client: TestClient) -> None:
    """attack30 (a note): such a part did carry a file name, and was told to send one."""
    body = (
        b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename*=UTF-8''sl%C3%AFce.png\r\n"
        b"Content-Type: image/png\r\n\r\n" + TUMOR_SLICE.read_bytes() + b"\r\n--b--\r\n"
    )
    response = client.post("/v1/predict", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})

    assert response.status_code == 422
    assert 'with a filename="..." parameter; filename* alone is not read' in response.json()["error"]["message"]


def test_predict_rejects_unknown_mask_format(client: TestClient) -> None:
    response = predict(client, TUMOR_SLICE.read_bytes(), "slice.jpg", mask_format="svg")

    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "code": "validation_error",
            "message": "query.mask_format: Input should be 'rle', 'png' or 'both' (got 'svg')",
        }
    }
    assert_still_serving(client)


def test_predict_rejects_file_over_max_upload_bytes(limited_client: TestClient) -> None:
    # Over the per-file limit but under the request-body limit (file limit + 64 KiB of multipart framing).
    data = b"\x89PNG\r\n\x1a\n" + bytes(LIMITED_UPLOAD_BYTES + 1000)

    response = predict(limited_client, data)

    assert response.status_code == 413
    assert response.json() == {
        "error": {
            "code": "payload_too_large",
            "message": f"file must be at most {LIMITED_UPLOAD_BYTES} bytes; got more than {LIMITED_UPLOAD_BYTES} bytes",
        }
    }
    assert_still_serving(limited_client)


def test_predict_rejects_body_over_limit_before_reading_it(limited_client: TestClient) -> None:
    data = bytes(3 * LIMITED_UPLOAD_BYTES)

    response = predict(limited_client, data)

    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "payload_too_large"
    assert re.fullmatch(
        rf"request body must be at most {LIMITED_UPLOAD_BYTES + 64 * 1024} bytes \(MAX_UPLOAD_BYTES and 64 KiB for "
        r"the form around the file\); Content-Length is \d+",
        error["message"],
    ), error["message"]
    assert response.headers["X-Request-ID"]
    assert_still_serving(limited_client)


def test_predict_rejects_chunked_body_over_limit(limited_client: TestClient) -> None:
    def chunks():
        for _ in range(4):
            yield bytes(LIMITED_UPLOAD_BYTES)

    response = limited_client.post(
        "/v1/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=xyz"}
    )

    assert response.status_code == 413
    assert response.json() == {
        "error": {
            "code": "payload_too_large",
            "message": f"request body must be at most {LIMITED_UPLOAD_BYTES + 64 * 1024} bytes (MAX_UPLOAD_BYTES "
            "and 64 KiB for the form around the file); got more",
        }
    }
    assert_still_serving(limited_client)


def test_predict_rejects_image_over_max_image_pixels(limited_client: TestClient) -> None:
    # The FLAIR channel on a black 512x512 canvas: over the pixel limit, under the byte limit.
    image = np.zeros((512, 512), np.uint8)
    image[:256, :256] = read_slice(TUMOR_SLICE)[:, :, 1]
    data = png_bytes(image)
    assert len(data) < LIMITED_UPLOAD_BYTES

    response = predict(limited_client, data)

    assert response.status_code == 413
    assert response.json() == {
        "error": {
            "code": "image_too_large",
            "message": f"image is 512x512 = 262144 pixels; the limit is {LIMITED_IMAGE_PIXELS} pixels",
        }
    }
    assert_still_serving(limited_client)


def test_predict_accepts_image_at_max_image_pixels(limited_client: TestClient) -> None:
    data = pil_bytes(resized(read_slice(TUMOR_SLICE), 300, 300), "JPEG", quality=90)
    assert len(data) < LIMITED_UPLOAD_BYTES

    response = predict(limited_client, data)

    assert response.status_code == 200, response.text
    assert response.json()["mask"]["size"] == [300, 300]


@pytest.mark.parametrize("magic", [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*"])
@pytest.mark.parametrize("seed", range(3))
def test_predict_answers_garbage_after_magic_bytes_with_4xx(client: TestClient, magic: bytes, seed: int) -> None:
    garbage = np.random.default_rng(seed).integers(0, 256, 2048, dtype=np.uint8).tobytes()

    response = predict(client, magic + garbage)

    assert response.status_code in (400, 413), response.text
    assert response.json()["error"]["code"] in {"undecodable_image", "invalid_image", "image_too_large"}
    assert_still_serving(client)


def test_predict_answers_unknown_path_with_error_body(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")

    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "code": "not_found",
            "message": "no endpoint at this path (the API is described at /docs; paths take no trailing slash)",
        }
    }


def test_predict_answers_wrong_method_with_error_body(client: TestClient) -> None:
    response = client.get("/v1/predict")

    assert response.status_code == 405
    assert response.json() == {
        "error": {"code": "method_not_allowed", "message": "GET is not allowed on this path; it takes POST"}
    }


def test_predict_logs_input_hash_never_file_name(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    data = TUMOR_SLICE.read_bytes()
    file_name = "DOE^JANE_1961-02-03.jpg"

    with caplog.at_level("INFO"):
        response = client.post("/v1/predict", files=upload(data, file_name), headers={"X-Request-ID": "log-check"})

    assert response.status_code == 200
    access = [record for record in caplog.records if record.name == "app.access"]
    fields = [record.fields for record in access if record.fields.get("client_request_id") == "log-check"]
    assert len(fields) == 1
    assert fields[0]["endpoint"] == "/v1/predict"
    assert fields[0]["request_id"] == response.headers["X-Request-ID"]
    assert fields[0]["status"] == 200
    assert fields[0]["input_sha256"] == hashlib.sha256(data).hexdigest()
    for record in caplog.records:
        assert "DOE^JANE" not in record.getMessage()
        assert "DOE^JANE" not in repr(vars(record))


@pytest.mark.parametrize(
    ("path", "query", "message"),
    [
        (
            "/v1/predict",
            "mask_fromat=png",
            "query.mask_fromat: not a parameter of this endpoint (it takes mask_format, output)",
        ),
        (
            "/v1/predict",
            "series=true",
            "query.series: not a parameter of this endpoint (it takes mask_format, output)",
        ),
        ("/v1/predict", "output=json&output=dicom-seg", "query.output: given 2 times; give it once"),
        (
            "/v1/predict/batch",
            "mask_format=png&Series=true",
            "query.Series: not a parameter of this endpoint (it takes mask_format, output, series)",
        ),
        ("/v1/predict/batch", "series=true&series=false", "query.series: given 2 times; give it once"),
        (
            "/v1/overlay",
            "mask_format=png",
            "query.mask_format: not a parameter of this endpoint (it takes no query parameters)",
        ),
        (
            "/v1/predict",
            "x" * 100,
            f"query.{'x' * 40}...: not a parameter of this endpoint (it takes mask_format, output)",
        ),
    ],
)
def test_unknown_or_repeated_query_parameters_are_refused(
    client: TestClient, path: str, query: str, message: str
) -> None:
    """A misspelt parameter was answered with the defaults, and of a repeated one the last counted."""
    field = "files" if path.endswith("batch") else "file"
    response = client.post(f"{path}?{query}", files={field: ("slice.jpg", TUMOR_SLICE.read_bytes(), "image/jpeg")})

    assert response.status_code == 422
    assert response.json() == {"error": {"code": "validation_error", "message": message}}
    assert_still_serving(client)


def test_every_query_parameter_a_route_documents_is_taken(client: TestClient) -> None:
    """The refusal's list of known parameters and the routes' own parameters are one list."""
    values = {"mask_format": "rle", "output": "json", "series": "true"}
    expected = {"/v1/predict": ["mask_format", "output"], "/v1/predict/batch": ["mask_format", "output", "series"]}
    documented = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/overlay"):
        names = [item["name"] for item in documented[path]["post"].get("parameters", []) if item["in"] == "query"]
        assert names == expected.get(path, [])
        field = "files" if path.endswith("batch") else "file"
        response = client.post(
            path,
            params={name: values[name] for name in names},
            files={field: ("slice.jpg", TUMOR_SLICE.read_bytes(), "image/jpeg")},
        )
        assert response.status_code == 200, (path, response.text)


@pytest.mark.parametrize("path", ["/v1/models", "/health/live", "/health/ready"])
def test_the_read_routes_refuse_query_parameters_too(client: TestClient, path: str) -> None:
    """attack26 finding 10: they answered `?x=1` as if it were not there, where the POST routes refuse it."""
    response = client.get(f"{path}?verbose=1")

    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        "query.verbose: not a parameter of this endpoint (it takes no query parameters)"
    )
    assert client.get(path).status_code == 200


@pytest.mark.parametrize(
    ("path", "fields", "message"),
    [
        ("/v1/predict/batch", ["files", "file"], "body.file: not a field of this endpoint (it takes `files`)"),
        ("/v1/predict", ["file", "other"], "body.other: not a field of this endpoint (it takes `file`)"),
        ("/v1/overlay", ["file", "files"], "body.files: not a field of this endpoint (it takes `file`)"),
    ],
)
def test_a_file_part_under_another_name_is_refused_not_dropped(
    client: TestClient, path: str, fields: list[str], message: str
) -> None:
    """attack26 finding 10: the batch answered for its `files` and dropped a part sent as `file` without a word."""
    data = TUMOR_SLICE.read_bytes()
    parts = [(name, (f"{index}.jpg", data, "image/jpeg")) for index, name in enumerate(fields)]

    response = client.post(path, files=parts)

    assert response.status_code == 422
    assert response.json() == {"error": {"code": "validation_error", "message": message}}
    assert_still_serving(client)


def test_answers_are_never_kept_by_a_cache(client: TestClient) -> None:
    """attack30 (a note): a prediction, an overlay PNG or an error is derived from a patient's image; caches do not
    keep a POST's answer by default, and `no-store` says so for every cache on the way. Files that set their own
    Cache-Control (the page) keep it."""
    image = TUMOR_SLICE.read_bytes()
    answers = [
        client.post("/v1/predict", files={"file": ("slice.jpg", image, "image/jpeg")}),
        client.post("/v1/predict/batch", files=[("files", ("slice.jpg", image, "image/jpeg"))]),
        client.post("/v1/overlay", files={"file": ("slice.jpg", image, "image/jpeg")}),
        client.post("/v1/predict", files={"file": ("notes.png", b"not an image", "image/png")}),
        client.get("/v1/models"),
    ]

    assert [response.status_code for response in answers] == [200, 200, 200, 415, 200]
    assert [response.headers.get_list("cache-control") for response in answers] == [["no-store"]] * len(answers)
    assert client.get("/").headers.get_list("cache-control") == ["no-cache"]
