"""POST /v1/overlay: a PNG of the slice at its own size, the predicted outline in green, the probability in a header."""

from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from tests.api.service_client import decode_rle, png_bytes, resized, upload
from tests.conftest import TUMOR_SLICE, read_slice

GREEN = np.array([0, 255, 0], np.uint8)


def overlay(client: TestClient, data: bytes):
    return client.post("/v1/overlay", files=upload(data))


def decode_overlay(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    assert image.mode == "RGB"
    return np.asarray(image)


def test_overlay_returns_png_of_input_size_with_probability(client: TestClient) -> None:
    image = resized(read_slice(TUMOR_SLICE), 200, 300)
    data = png_bytes(image)
    prediction = client.post("/v1/predict", files=upload(data)).json()

    response = overlay(client, data)

    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["X-Tumor-Probability"] == f"{prediction['tumor_probability']:.6f}"
    assert response.headers["X-Tumor-Detected"] == "true"
    assert response.headers["X-Request-ID"]
    assert decode_overlay(response.content).shape == (200, 300, 3)


def test_overlay_changes_only_outline_pixels_to_green(client: TestClient) -> None:
    image = read_slice(TUMOR_SLICE)
    data = png_bytes(image)
    mask = decode_rle(client.post("/v1/predict", files=upload(data)).json()["mask"]["rle"])
    assert mask.any()

    drawn = decode_overlay(overlay(client, data).content)

    changed = np.any(drawn != image, axis=2)
    assert changed.any()
    assert np.all(drawn[changed] == GREEN)
    # The outline runs along the mask: every changed pixel is within one pixel of a tumor pixel.
    near_mask = np.zeros_like(mask, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near_mask |= np.roll(np.roll(mask, dy, axis=0), dx, axis=1).astype(bool)
    assert np.all(near_mask[changed])


def test_overlay_of_grey_slice_is_grey_rgb(client: TestClient) -> None:
    grey = read_slice(TUMOR_SLICE)[:, :, 1]

    drawn = decode_overlay(overlay(client, png_bytes(grey)).content)

    unchanged = ~np.all(drawn == GREEN, axis=2)
    for channel in range(3):
        np.testing.assert_array_equal(drawn[:, :, channel][unchanged], grey[unchanged])


def test_overlay_of_negative_slice_is_the_slice_unchanged(negative_client: TestClient) -> None:
    image = read_slice(TUMOR_SLICE)

    response = overlay(negative_client, png_bytes(image))

    assert response.status_code == 200, response.text
    assert response.headers["X-Tumor-Detected"] == "false"
    np.testing.assert_array_equal(decode_overlay(response.content), image)


def test_overlay_rejects_text_file(client: TestClient) -> None:
    response = overlay(client, b"plain text")

    assert response.status_code == 415
    assert response.json() == {
        "error": {
            "code": "unsupported_media_type",
            "message": "unsupported file type: the file must start with the PNG, JPEG or TIFF magic bytes, "
            "or be DICOM (DICM at byte 128); it looks like text",
        }
    }
    assert response.headers["Content-Type"] == "application/json"


def test_overlay_rejects_empty_file(client: TestClient) -> None:
    response = overlay(client, b"")

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "empty_file",
            "message": "the uploaded file is empty (0 bytes); expected a PNG, JPEG, TIFF or DICOM file",
        }
    }


def test_overlay_names_the_part_sent_and_the_part_expected_when_file_is_missing(client: TestClient) -> None:
    """API review 48 F7: a misnamed part was answered with advice on the multipart framing."""
    response = client.post("/v1/overlay", files={"image": ("slice.png", b"x", "image/png")})

    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "validation_error",
        "message": "body.file: Field required: this endpoint's file part is named `file`; the body has a part named "
        "`image`",
    }
