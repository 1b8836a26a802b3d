"""The series view in headless Chromium against the real service: many files in one request, scrolling, the masks
drawn by the page against the API's own, volumes, downloads and accessibility."""

from __future__ import annotations

import base64
import io
import re
import zipfile
from pathlib import Path

import cv2
import httpx
import numpy as np
import pydicom
import pytest
from axe_playwright_python.sync_playwright import Axe
from PIL import Image
from playwright.sync_api import Page, expect

from app.dicom.dicom_seg_reader import read_segmentation_masks
from tests.api.routes.test_predict_dicom import multipart_parts
from tests.conftest import TEST_DATA, TUMOR_FREE_SLICE, TUMOR_SERIES, mask_path_of
from tests.dicom.builders import PIXEL_SPACING_MM, mr_series, secondary_capture_series, to_bytes, tumor_channels
from tests.web.canvas_pixels import canvas_rgba

RESULT_TIMEOUT_MS = 60_000
# Natural file-name order: slice 8 before 20, 21, 22 (a plain string sort would put 8 last).
RASTER_SERIES = [TUMOR_FREE_SLICE, *TUMOR_SERIES]


def is_batch(response) -> bool:
    return "/v1/predict/batch" in response.url and response.request.method == "POST"


def mask_of(prediction: dict) -> np.ndarray:
    """The API's mask as 0/1, an all-zero mask of the slice's size when it sent none."""
    if prediction["mask"] is None:
        return np.zeros((256, 256), dtype=np.uint8)
    return (np.asarray(Image.open(io.BytesIO(base64.b64decode(prediction["mask"]["png"])))) > 127).astype(np.uint8)


def drawn_mask(page: Page) -> np.ndarray:
    """Where the page's mask layer is painted (its alpha), whatever colour and opacity it shows."""
    return (canvas_rgba(page, "#mask-canvas")[..., 3] > 0).astype(np.uint8)


def assert_no_axe_violations(page: Page) -> None:
    results = Axe().run(page)
    assert results.violations_count == 0, results.generate_report()


def upload(page: Page, files: list[Path]) -> dict:
    with page.expect_response(is_batch, timeout=RESULT_TIMEOUT_MS) as answered:
        page.set_input_files("#file-input", files)
    assert answered.value.status == 200
    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    # The new result, not the one shown until it came (kept visible meanwhile, marked previous): drawn slices read
    # right after were the previous series' under load (a CI run).
    expect(page.locator("#result")).not_to_have_class(re.compile(r"\bprevious\b"), timeout=RESULT_TIMEOUT_MS)
    return answered.value.json()


def test_series_view_scrolls_raster_series_and_draws_the_api_masks(
    page: Page, live_server: str, screenshot_dir: Path
) -> None:
    folder = sorted((TEST_DATA / "TCGA_DU_A5TW_19980228").iterdir())  # slices and their ground-truth masks
    page.goto(live_server)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url) if "/v1/" in request.url else None)

    answer = upload(page, folder)

    # One request, no overlay request; several raster files are one series (its clean-up applies). The limit on files
    # is asked for once before (browser review 44 F6).
    assert requests == [f"{live_server}/v1/models", f"{live_server}/v1/predict/batch?mask_format=png&series=true"]
    expect(page.locator("#file-name")).to_contain_text("4 files")
    expect(page.locator("#file-name")).to_contain_text("4 ground-truth mask files left out")
    predictions = [item["prediction"] for item in answer["results"]]
    assert len(predictions) == len(RASTER_SERIES)
    positives = sum(prediction["tumor_detected"] for prediction in predictions)
    expect(page.locator("#decision")).to_have_text(f"Tumor detected ({positives} of 4 slices)")
    expect(page.locator("#strip .strip-bar")).to_have_count(4)
    expect(page.locator("#slice-table tbody tr")).to_have_count(4)

    # Slider to the first slice, then the arrow keys (up: the next slice) and the mouse wheel through the rest.
    page.locator("#slice-slider").fill("1")
    viewer = page.locator("#viewer")
    for index, path in enumerate(RASTER_SERIES):
        if index == 2:
            viewer.hover()
            page.mouse.wheel(0, 50)
        elif index > 0:
            viewer.press("ArrowUp")
        expect(page.locator("#slice-number")).to_have_text(f"{index + 1} / 4")
        expect(page.locator("#caption")).to_contain_text(path.name)
        shown_probability = float(page.locator("#probability").get_attribute("data-value"))
        assert shown_probability == predictions[index]["tumor_probability"]
        np.testing.assert_array_equal(drawn_mask(page), mask_of(predictions[index]))
    viewer.press("Home")
    expect(page.locator("#slice-number")).to_have_text("1 / 4")

    # Volume from the spacing entered: sum of mask pixels x pixel spacing squared x slice spacing.
    expect(page.locator("#volume")).to_contain_text("enter the pixel and slice spacing")
    page.fill("#pixel-spacing", "0.5")
    page.fill("#slice-spacing", "2.5")
    area_pixels = sum(prediction["mask"]["area_pixels"] for prediction in predictions if prediction["mask"])
    expected_ml = area_pixels * 0.5 * 0.5 * 2.5 / 1000
    assert float(page.locator("#volume").get_attribute("data-value")) == pytest.approx(expected_ml, rel=1e-12)
    expect(page.locator("#volume")).to_contain_text(f"{expected_ml:,.2f} mL")

    page.select_option("#mask-style", "outline")
    page.screenshot(path=screenshot_dir / "web-series-raster.png", full_page=True)
    assert_no_axe_violations(page)

    with page.expect_download() as downloaded:
        page.click("#download-masks")
    assert downloaded.value.suggested_filename == "tumor-masks_TCGA_DU_A5TW_19980228_8.zip"  # the first slice
    with zipfile.ZipFile(downloaded.value.path()) as archive:
        assert archive.testzip() is None
        for path, prediction in zip(RASTER_SERIES, predictions, strict=True):
            content = archive.read(f"{path.stem}_predicted_mask.png")
            if prediction["mask"]:
                assert content == base64.b64decode(prediction["mask"]["png"])
            else:
                assert not np.asarray(Image.open(io.BytesIO(content))).any()
        rows = archive.read("slices.csv").decode().splitlines()
    assert rows[0] == (
        "slice,file,mask_file,tumor_probability,tumor_detected,area_pixels,area_mm2,"
        "position_along_normal_mm,slices_missing_before"
    )
    assert len(rows) == 5


def test_a_gapped_dicom_series_says_its_volume_may_fall_short(page: Page, live_server: str, tmp_path: Path) -> None:
    """A browser review found 42.2 mL shown for a series with two slices missing through the tumor, with no sign."""
    datasets = mr_series(tumor_channels() + tumor_channels())  # 6 slices, 5 mm apart
    paths = []
    for index in (0, 1, 4, 5):  # the two in the middle left out
        paths.append(tmp_path / f"IM{index:04d}")
        paths[-1].write_bytes(to_bytes(datasets[index]))
    page.goto(live_server)

    answer = upload(page, paths)

    assert answer["slices_missing"] == 2
    expect(page.locator("#volume")).to_contain_text("it may fall short: 2 slices missing between those analysed")
    # ... and where: two hatched places between the second and third slices (5 and 20 mm), explained in the legend.
    strip = page.locator("#strip > div:not(.strip-threshold)")
    classes = [name.split()[0] for name in strip.evaluate_all("(parts) => parts.map((part) => part.className)")]
    assert classes == ["strip-bar", "strip-bar", "strip-gap", "strip-bar", "strip-bar"]  # one space, two slices wide
    expect(page.locator("#strip-legend-gap")).to_be_visible()
    ends = "tumor on the first or last slice sent (it may go on beyond them)"
    if answer["tumor_reaches_series_end"]:
        expect(page.locator("#volume")).to_contain_text(ends)
    else:
        expect(page.locator("#volume")).not_to_contain_text(ends)


def test_series_view_of_dicom_series_shows_the_api_volume_and_downloads_its_seg(
    page: Page, live_server: str, screenshot_dir: Path, tmp_path: Path
) -> None:
    paths = []
    for index, dataset in enumerate(mr_series(tumor_channels())):
        path = tmp_path / f"IM{index:04d}"  # no extension, as DICOM files often come
        path.write_bytes(to_bytes(dataset))
        paths.append(path)
    uids = [pydicom.dcmread(path).SOPInstanceUID for path in paths]
    page.goto(live_server)

    answer = upload(page, paths)

    assert answer["tumor_volume_ml"] is not None
    assert float(page.locator("#volume").get_attribute("data-value")) == answer["tumor_volume_ml"]
    expect(page.locator("#volume")).to_contain_text(f"{answer['tumor_volume_ml']:,.2f} mL (from the DICOM geometry)")
    expect(page.locator("#spacing-controls")).to_be_hidden()
    expect(page.locator("#window-controls")).to_be_visible()  # DICOM values: window and level apply

    viewer = page.locator("#viewer")
    viewer.focus()
    viewer.press("Home")
    pixel_mm2 = PIXEL_SPACING_MM[0] * PIXEL_SPACING_MM[1]
    for index, item in enumerate(answer["slices"]):
        if index > 0:
            viewer.press("ArrowRight")
        expect(page.locator("#slice-number")).to_have_text(f"{index + 1} / 3")
        expect(page.locator("#caption")).to_contain_text(paths[uids.index(item["sop_instance_uid"])].name)
        np.testing.assert_array_equal(drawn_mask(page), mask_of(item["prediction"]))
        if item["prediction"]["mask"]:
            area_mm2 = item["prediction"]["mask"]["area_pixels"] * pixel_mm2
            expect(page.locator("#area")).to_contain_text(f"{area_mm2:,.1f} mm²")

    # The picture is drawn from the DICOM values: a narrow window turns it nearly black and white.
    page.locator("#window-width").fill("10")
    page.screenshot(path=screenshot_dir / "web-series-dicom-narrow-window.png", full_page=True)
    page.click("#window-reset")
    page.screenshot(path=screenshot_dir / "web-series-dicom.png", full_page=True)
    assert_no_axe_violations(page)

    with page.expect_download(timeout=RESULT_TIMEOUT_MS) as downloaded:
        page.click("#download-seg")
    assert downloaded.value.suggested_filename == "tumor-seg_series-1_AX-FLAIR.dcm"
    files = [("files", (path.name, path.read_bytes(), "application/dicom")) for path in paths]
    from_api = httpx.post(f"{live_server}/v1/predict/batch?output=dicom-seg", files=files, timeout=60)
    assert from_api.status_code == 200
    shown = read_segmentation_masks(Path(downloaded.value.path()).read_bytes())
    expected = read_segmentation_masks(from_api.content)
    assert shown.keys() == expected.keys()
    for key, mask in expected.items():
        np.testing.assert_array_equal(shown[key], mask)


def test_series_view_says_no_tumor_for_a_tumor_free_slice(
    page: Page, negative_live_server: str, screenshot_dir: Path
) -> None:
    page.goto(negative_live_server)

    upload(page, [TUMOR_FREE_SLICE])

    expect(page.locator("#decision")).to_have_text("No tumor detected")
    caption = page.locator("#caption")
    expect(caption).to_have_text(f"{TUMOR_FREE_SLICE.name}: no tumor predicted on this slice")
    expect(page.locator("#result")).not_to_contain_text("outline")
    assert not drawn_mask(page).any()
    expect(page.locator("#slider-row")).to_be_hidden()
    page.screenshot(path=screenshot_dir / "web-single-tumor-free.png", full_page=True)


def test_series_view_fits_a_phone_screen(phone_page: Page, live_server: str, screenshot_dir: Path) -> None:
    phone_page.goto(live_server)

    upload(phone_page, RASTER_SERIES)

    width = phone_page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone: {width} px wide"
    phone_page.screenshot(path=screenshot_dir / "web-series-phone.png", full_page=True)
    assert_no_axe_violations(phone_page)


def test_series_view_accepts_a_zip_of_slices(page: Page, live_server: str, tmp_path: Path) -> None:
    archive_path = tmp_path / "series.zip"
    with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in RASTER_SERIES:
            archive.write(path, f"patient/{path.name}")
            archive.write(mask_path_of(path), f"patient/{mask_path_of(path).name}")
    page.goto(live_server)

    answer = upload(page, [archive_path])

    assert len(answer["results"]) == 4
    expect(page.locator("#slice-number")).to_contain_text("/ 4")
    expect(page.locator("#slice-table tbody tr").first).to_contain_text(RASTER_SERIES[0].name)


def test_a_dicom_series_of_tall_pixels_is_drawn_at_its_true_proportions(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Pixels 1.25 mm tall and 0.9375 mm wide drawn pixel for pixel showed the head squeezed to three quarters of its
    height; the server reads them resampled (app/dicom/square_pixels.py), and so does the viewer draw them."""
    paths = []
    for index, dataset in enumerate(mr_series(tumor_channels())):
        dataset.PixelSpacing = [1.25, 0.9375]
        paths.append(tmp_path / f"IM{index:04d}")
        paths[-1].write_bytes(to_bytes(dataset))
    page.goto(live_server)

    answer = upload(page, paths)

    sizes = page.evaluate(
        "() => ['#slice-canvas', '#mask-canvas'].map((id) => [document.querySelector(id).width,"
        " document.querySelector(id).height])"
    )
    assert sizes == [[192, 256], [192, 256]]  # 256 x 1.25 mm tall, 256 x 0.9375 mm wide
    page.locator("#viewer").focus()
    page.locator("#viewer").press("Home")  # the page shows the answer's slices in its order
    expected = cv2.resize(mask_of(answer["slices"][0]["prediction"]), (192, 256), interpolation=cv2.INTER_NEAREST)
    drawn = drawn_mask(page)
    assert drawn.any() and np.mean(drawn == expected) > 0.99
    assert "resampled to square pixels" in " ".join(answer["selection_notes"])
    # A sentence of its own (browser review 39: "… 3 files). the slices' pixels are not square …").
    expect(page.locator("#series-choice")).to_contain_text("files). The slices' pixels are not square (each 1.33")


def test_series_view_shows_dicom_slices_in_anatomical_order_whatever_order_they_are_chosen_in(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Files named by UID come in no order at all: the viewer scrolls from one end of the volume to the other, by
    Image Position along the slice normal, as the service orders them for its clean-up."""
    datasets = mr_series(tumor_channels())  # positions 0, 5, 10 mm along the normal
    paths = []
    for name, index in (("b", 2), ("a", 0), ("c", 1)):  # chosen in name order: the last slice first
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(to_bytes(datasets[index]))
        paths.append(path)
    page.goto(live_server)

    upload(page, sorted(paths))

    viewer = page.locator("#viewer")
    viewer.focus()
    viewer.press("Home")
    for step, name in enumerate(["a.dcm", "c.dcm", "b.dcm"]):  # positions 0, 5, 10 mm
        if step:
            viewer.press("ArrowRight")
        expect(page.locator("#slice-number")).to_have_text(f"{step + 1} / 3")
        expect(page.locator("#caption")).to_contain_text(name)


def test_a_secondary_capture_series_downloads_its_seg_per_slice_as_a_zip(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    # Secondary Captures have no patient coordinate system: the server answers one SEG per positive slice in one
    # multipart body, which the page must save as those SEG files (a zip), not as one broken .dcm.
    paths = []
    for index, dataset in enumerate(secondary_capture_series(tumor_channels())):
        path = tmp_path / f"SC{index:04d}.dcm"
        path.write_bytes(to_bytes(dataset))
        paths.append(path)
    files = [("files", (path.name, path.read_bytes(), "application/dicom")) for path in paths]
    from_api = httpx.post(f"{live_server}/v1/predict/batch?output=dicom-seg", files=files, timeout=60)
    assert from_api.status_code == 200
    assert from_api.headers["content-type"].startswith("multipart/related")
    page.goto(live_server)
    upload(page, paths)

    with page.expect_download(timeout=RESULT_TIMEOUT_MS) as downloaded:
        page.click("#download-seg")

    assert downloaded.value.suggested_filename == "tumor-seg_series-1_AX-FLAIR.zip"
    with zipfile.ZipFile(downloaded.value.path()) as archive:
        names = archive.namelist()
        segs = [archive.read(name) for name in names]
    expected = [read_segmentation_masks(part) for _, part in multipart_parts(from_api)]
    assert names == [f"tumor-seg-{number:04d}.dcm" for number in range(1, len(expected) + 1)]
    assert len(segs) == len(expected) >= 2
    for seg, masks in zip(segs, expected, strict=True):
        shown = read_segmentation_masks(seg)
        assert shown.keys() == masks.keys()
        for key, mask in masks.items():
            np.testing.assert_array_equal(shown[key], mask)
    expect(page.locator("#seg-status")).to_contain_text(f"{len(expected)} DICOM SEG files downloaded")
