"""The page's fixes from browser review 29: the probability strip of a long series inside its box, the default
window of a slice with a hot pixel, the mouse wheel at 200 % zoom, and the volume of a single DICOM slice and of a
raster series with a failed file."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from tests.web.test_page_series_answers import png_bytes, upload

MAX_FILES = 256  # MAX_BATCH_FILES: the longest series one request takes
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 360, "height": 740}


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
