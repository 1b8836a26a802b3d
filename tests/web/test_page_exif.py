"""EXIF orientation in headless Chromium against the real service: the server reads pixels in stored order and never
rotates by EXIF, so the page must draw them in stored order too, or its masks no longer lie on the slice."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

RESULT_TIMEOUT_MS = 60_000
WIDTH, HEIGHT = 300, 256  # not square: a rotation by EXIF would swap them
BLOCK = (0, 0, 60, 40)  # bright, in the stored top-left corner
EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6  # "rotate 90° clockwise to display": what phones write for a portrait photo


def oriented_image(image_format: str) -> bytes:
    """A 300 x 256 grey image, bright in its stored top-left corner, whose EXIF says to show it turned."""
    image = Image.new("L", (WIDTH, HEIGHT), 20)
    image.paste(230, BLOCK)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize(("image_format", "mime_type"), [("JPEG", "image/jpeg"), ("PNG", "image/png")])
def test_page_draws_stored_pixel_order_whatever_the_exif_orientation(
    page: Page, live_server: str, image_format: str, mime_type: str
) -> None:
    data = oriented_image(image_format)
    assert Image.open(io.BytesIO(data)).getexif()[EXIF_ORIENTATION] == ROTATE_90_CW
    page.goto(live_server)

    with page.expect_response(lambda response: "/v1/predict/batch" in response.url, timeout=RESULT_TIMEOUT_MS) as got:
        page.set_input_files("#file-input", files=[{"name": "turned.img", "mimeType": mime_type, "buffer": data}])
    assert got.value.status == 200
    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    prediction = got.value.json()["results"][0]["prediction"]

    drawn = page.evaluate(
        """() => {
            const slice = document.querySelector("#slice-canvas");
            const mask = document.querySelector("#mask-canvas");
            const grey = (x, y) => slice.getContext("2d").getImageData(x, y, 1, 1).data[0];
            const [w, h] = [slice.width, slice.height];
            return { slice: [w, h], mask: [mask.width, mask.height],
                     corners: [grey(5, 5), grey(w - 5, 5), grey(5, h - 5), grey(w - 5, h - 5)] };
        }"""
    )
    assert drawn["slice"] == [WIDTH, HEIGHT]  # not turned to 256 x 300
    assert drawn["mask"] == drawn["slice"]
    if prediction["mask"]:
        assert prediction["mask"]["size"] == [HEIGHT, WIDTH]  # the server's mask, in the same stored order
    top_left, *others = drawn["corners"]
    assert top_left > 150 and all(value < 80 for value in others), drawn["corners"]
