"""The page's fixes from browser review 29: the probability strip of a long series inside its box, the default
window of a slice with a hot pixel, the mouse wheel at 200 % zoom, and the volume of a single DICOM slice and of a
raster series with a failed file."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from app.intensity_range import stretch_range
from tests.conftest import TUMOR_FREE_SLICE, TUMOR_SERIES
from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.web.test_page_series_answers import png_bytes, upload

MAX_FILES = 256  # MAX_BATCH_FILES: the longest series one request takes
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 360, "height": 740}
RASTER_SERIES = [TUMOR_FREE_SLICE, *TUMOR_SERIES]


@pytest.fixture
def laptop_page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=LAPTOP)
    yield context.new_page()
    context.close()


def small_slices(count: int) -> list[dict]:
    """`count` 32x32 grey PNGs, a little different each: the service takes them as one series quickly."""
    rng = np.random.default_rng(0)
    return [
        {
            "name": f"slice_{index:03d}.png",
            "mimeType": "image/png",
            "buffer": png_bytes(Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8))),
        }
        for index in range(count)
    ]


# ------------------------------------------------------------------------------------ F1: the strip's width


def strip_geometry(page: Page) -> dict:
    """The strip's and its last bar's right edges, the page's scroll width, and which facts-column fields a bar
    covers (what `elementFromPoint` finds at the left end of each field and label)."""
    return page.evaluate(
        """() => {
            const strip = document.querySelector("#strip").getBoundingClientRect();
            const bars = document.querySelectorAll("#strip .strip-bar");
            const covered = [];
            for (const field of document.querySelectorAll(".facts-column :is(input, label, dd, select)")) {
                if (field.offsetParent === null) continue; // hidden
                field.scrollIntoView({ block: "center" });
                const box = field.getBoundingClientRect();
                const hit = document.elementFromPoint(box.left + 2, box.top + box.height / 2);
                if (hit?.closest(".strip-bar")) covered.push(field.id || field.htmlFor || field.textContent);
            }
            return {
                bars: bars.length,
                stripRight: strip.right,
                lastBarRight: bars[bars.length - 1].getBoundingClientRect().right,
                scrollWidth: document.scrollingElement.scrollWidth,
                windowWidth: window.innerWidth,
                covered,
            };
        }"""
    )


def test_the_strip_of_a_256_slice_series_stays_inside_its_box_on_a_laptop_and_a_phone(
    laptop_page: Page, live_server: str
) -> None:
    """Bars at least 2 px wide with 1 px gaps ran past the strip from about 135 slices at 1280 px: they painted over
    the spacing fields, took their clicks, and the page scrolled sideways."""
    page = laptop_page
    page.goto(live_server)
    upload(page, small_slices(MAX_FILES))

    for viewport in (LAPTOP, PHONE):
        page.set_viewport_size(viewport)
        geometry = strip_geometry(page)
        assert geometry["bars"] == MAX_FILES
        assert geometry["lastBarRight"] <= geometry["stripRight"], (viewport, geometry)
        assert geometry["scrollWidth"] <= geometry["windowWidth"], (viewport, geometry)
        assert geometry["covered"] == [], (viewport, geometry)

        # A click still picks the slice under it, at the ends and in the middle (the bars are about 1 px wide).
        for share in (0.0, 0.5, 1.0):
            point, under = page.evaluate(
                """share => {
                    const strip = document.querySelector("#strip");
                    strip.scrollIntoView({ block: "center" });
                    const bars = strip.querySelectorAll(".strip-bar");
                    const [first, last] = [bars[0], bars[bars.length - 1]].map((bar) => bar.getBoundingClientRect());
                    const x = Math.floor(first.left + 1 + share * (last.right - first.left - 2));
                    const y = Math.round(first.top + first.height / 2);
                    return [[x, y], Number(document.elementFromPoint(x, y).closest(".strip-bar").dataset.index)];
                }""",
                share,
            )
            assert abs(under - share * (MAX_FILES - 1)) <= 2, (viewport, share, under)
            page.mouse.click(*point)
            expect(page.locator("#slice-number")).to_have_text(f"{under + 1} / {MAX_FILES}")


# ------------------------------------------------------------------------------- F2: the default window


def default_window(page: Page) -> tuple[float, float]:
    """The Level and Width the page chose, as the sliders hold them."""
    level = float(page.locator("#window-level").input_value())
    width = float(page.locator("#window-width").input_value())
    return level, width


def flair_16bit() -> np.ndarray:
    """The FLAIR channel of the tumor slice, scaled into 16-bit values as scanners export them (under 10,200)."""
    return tumor_channels()[2].astype(np.uint16) * 40


def with_pixel(image: np.ndarray, value: float) -> np.ndarray:
    changed = image.copy()
    changed[5, 5] = value
    return changed


def with_hot_pixel(image: np.ndarray) -> np.ndarray:
    return with_pixel(image, 65535)


def with_bright_pixels(image: np.ndarray, count: int) -> np.ndarray:
    """`count` pixels at 25,000, far above the rest (under 10,200) yet inside the server's 8x bound."""
    bright = image.copy()
    bright.flat[[1000 * k + 3 for k in range(count)]] = 25_000
    return bright


def test_a_hot_pixel_leaves_the_default_window_of_a_16_bit_png_as_it_was(page: Page, live_server: str) -> None:
    """The page's default window spanned the raw minimum to maximum: one pixel at 65535 drew the slice almost black
    (Level 32,768 / Width 65,535 against 3,860 / 7,720), while the server saturates that pixel."""
    page.goto(live_server)
    windows = []
    for image in (flair_16bit(), with_hot_pixel(flair_16bit())):
        upload(page, [{"name": "flair16.png", "mimeType": "image/png", "buffer": png_bytes(Image.fromarray(image))}])
        expect(page.locator("#window-controls")).to_be_visible()
        windows.append(default_window(page))
    clean, hot = windows
    assert hot == pytest.approx(clean, abs=1), windows
    assert clean[1] < 20_000  # the slice's own range, not the type's


def dicom_files(images: list[np.ndarray], window: tuple[float, float] | None = None) -> list[dict]:
    datasets = mr_series(images)
    if window is not None:
        for dataset in datasets:
            dataset.WindowCenter, dataset.WindowWidth = window
    return [
        {"name": f"IM{index:04d}", "mimeType": "application/dicom", "buffer": to_bytes(dataset)}
        for index, dataset in enumerate(datasets)
    ]


def test_a_hot_pixel_leaves_the_default_window_of_a_dicom_series_as_it_was(page: Page, live_server: str) -> None:
    """Without Window Center/Width the window is the server's stretch over the whole series; with them, theirs."""
    clean = [channel.astype(np.uint16) * 40 for channel in tumor_channels()]
    hot = [clean[0], with_hot_pixel(clean[1]), clean[2]]  # one hot pixel in one slice darkened them all
    page.goto(live_server)
    windows = []
    for images in (clean, hot):
        upload(page, dicom_files(images))
        windows.append(default_window(page))
    assert windows[1] == pytest.approx(windows[0], abs=1), windows
    assert windows[0][1] < 20_000

    upload(page, dicom_files(hot, window=(3000, 5000)))  # the file's own window keeps precedence
    assert default_window(page) == (3000, 5000)


@pytest.mark.parametrize(
    "case",
    [
        "clean",
        "hot pixel",
        "cold pixel",
        "four isolated pixels",
        "five isolated pixels",
        "constant",
        "two slices",
        "34 slices",
    ],
)
def test_the_page_default_window_range_is_the_server_stretch_range(page: Page, live_server: str, case: str) -> None:
    """stretchRange in app.js mirrors stretch_range in app/intensity_range.py, value for value."""
    base = tumor_channels()[2].astype(np.float64) * 40
    arrays = {
        "clean": [base],
        "hot pixel": [with_hot_pixel(base)],
        "cold pixel": [with_pixel(base, -5000)],
        "four isolated pixels": [with_bright_pixels(base, 4)],
        "five isolated pixels": [with_bright_pixels(base, 5)],
        "constant": [np.full((8, 8), 7.0)],
        "two slices": [base, with_hot_pixel(base * 0.5)],
        # Over SAMPLE_PIXELS values: the percentiles come from every second one.
        "34 slices": [base] * 33 + [with_hot_pixel(base)],
    }[case]
    page.goto(live_server)
    ids = list(dict.fromkeys(id(array) for array in arrays))  # each array sent once
    distinct = [next(array for array in arrays if id(array) == key) for key in ids]
    low, high = page.evaluate(
        """async ([distinct, order]) => {
            const { stretchRange } = await import("/static/app.js");
            const typed = distinct.map((values) => Float32Array.from(values));
            return stretchRange(order.map((at) => typed[at]));
        }""",
        [[array.ravel().tolist() for array in distinct], [ids.index(id(array)) for array in arrays]],
    )
    assert (low, high) == pytest.approx(stretch_range(arrays), rel=1e-6)


# ----------------------------------------------------------------------------- F3: the wheel at 200 % zoom


@pytest.fixture
def zoomed_page(browser: Browser) -> Iterator[Page]:
    """A 1280x800 laptop at 200 % zoom: 640x400 CSS pixels at device scale 2."""
    context = browser.new_context(viewport={"width": 640, "height": 400}, device_scale_factor=2)
    yield context.new_page()
    context.close()


def scroll_y(page: Page) -> float:
    return page.evaluate("window.scrollY")


def test_the_wheel_over_the_viewer_scrolls_the_page_past_either_end_of_the_series_at_200_percent_zoom(
    zoomed_page: Page, live_server: str
) -> None:
    """The viewer was taller than the window and took every wheel event, even at the last slice: the page never
    scrolled while the pointer was over it."""
    page = zoomed_page
    page.goto(live_server)
    upload(page, RASTER_SERIES)
    number = page.locator("#slice-number")

    # The viewer fits in the window, with room to spare beside it.
    viewer_height = page.locator("#viewer").evaluate("viewer => viewer.getBoundingClientRect().height")
    assert viewer_height <= page.viewport_size["height"], viewer_height

    page.locator("#viewer").press("End")
    expect(number).to_have_text("4 / 4")
    page.locator("#viewer").scroll_into_view_if_needed()
    page.locator("#mask-canvas").hover()
    before = scroll_y(page)
    page.mouse.wheel(0, 100)  # a notch down at the last slice: the page, not the slice
    page.wait_for_function("before => window.scrollY > before", arg=before)
    expect(number).to_have_text("4 / 4")

    page.locator("#viewer").press("Home")
    expect(number).to_have_text("1 / 4")
    page.locator("#viewer").scroll_into_view_if_needed()
    page.locator("#mask-canvas").hover()
    before = scroll_y(page)
    assert before > 0
    page.mouse.wheel(0, -100)  # a notch up at the first slice: the page again
    page.wait_for_function("before => window.scrollY < before", arg=before)
    expect(number).to_have_text("1 / 4")

    # In between, the wheel still moves through the slices and leaves the page where it is.
    page.locator("#mask-canvas").hover()
    before = scroll_y(page)
    page.mouse.wheel(0, 100)
    expect(number).to_have_text("2 / 4")
    assert scroll_y(page) == before


# ------------------------------------------------------------------------- F6, F7: what the volume line says


def test_a_single_dicom_slice_gets_no_volume_as_a_single_raster_slice_gets_none(page: Page, live_server: str) -> None:
    """One DICOM slice was given "Tumor volume 19.83 mL" (its area x slice thickness), one JPEG "not computed"."""
    page.goto(live_server)
    answer = upload(page, dicom_files(tumor_channels()[2:]))
    assert answer["tumor_volume_ml"] is not None  # the API's figure, which the page leaves out

    volume = page.locator("#volume")
    expect(volume).to_have_text("not computed for a single slice (send the slices of a series together)")
    assert volume.get_attribute("data-value") is None
    expect(page.locator("#area")).to_contain_text("mm²")  # its area, from the DICOM pixel spacing, still shows

    upload(page, [TUMOR_SERIES[2]])
    expect(volume).to_have_text("not computed for a single slice (send the slices of a series together)")


def test_a_raster_series_with_a_failed_file_says_its_volume_may_fall_short(page: Page, live_server: str) -> None:
    """A damaged middle slice dropped the volume from typed spacing (41.93 to 32.63 mL) with no caveat, where a DICOM
    series says "may fall short" for its missing slices."""
    cut_short = TUMOR_SERIES[1].read_bytes()[:3000]
    damaged = {"name": TUMOR_SERIES[1].name, "mimeType": "image/jpeg", "buffer": cut_short}
    files = [
        {"name": path.name, "mimeType": "image/jpeg", "buffer": path.read_bytes()}
        for path in (TUMOR_FREE_SLICE, TUMOR_SERIES[0], TUMOR_SERIES[2])
    ]
    page.goto(live_server)
    answer = upload(page, [*files[:2], damaged, files[2]])
    assert [result["ok"] for result in answer["results"]] == [True, True, False, True]

    page.fill("#pixel-spacing", "0.94")
    page.fill("#slice-spacing", "3")
    expect(page.locator("#volume")).to_contain_text(
        "mL (from the spacing entered); it may fall short: 1 file of the series could not be analysed"
    )

    upload(page, files)  # nothing failed: no caveat of failed files
    page.fill("#pixel-spacing", "0.94")
    page.fill("#slice-spacing", "3")
    expect(page.locator("#volume")).to_contain_text("mL (from the spacing entered)")
    expect(page.locator("#volume")).not_to_contain_text("could not be analysed")
