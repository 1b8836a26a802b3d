"""Layout and page behaviour a browser review flagged, in headless Chromium against the real service: the slice table
on a phone, the result brought into view with keyboard focus, the probability strip's legend, the outline's width on
screen, and the API key field's form."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from tests.conftest import TUMOR_FREE_SLICE, TUMOR_SERIES, TUMOR_SLICE
from tests.web.canvas_pixels import canvas_rgba
from tests.web.test_page_series_answers import upload

RESULT_TIMEOUT_MS = 60_000
FOCUS_TIMEOUT_MS = 5_000
RASTER_SERIES = [TUMOR_FREE_SLICE, *TUMOR_SERIES]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def ax_roles(page: Page, selector: str) -> list[str]:
    """Chromium's accessibility roles of the elements that match `selector`, as screen readers get them."""
    cdp = page.context.new_cdp_session(page)
    try:
        root = cdp.send("DOM.getDocument")["root"]["nodeId"]
        roles = []
        for node_id in cdp.send("DOM.querySelectorAll", {"nodeId": root, "selector": selector})["nodeIds"]:
            (node, *_) = cdp.send("Accessibility.getPartialAXTree", {"nodeId": node_id, "fetchRelatives": False})[
                "nodes"
            ]
            roles.append(node.get("role", {}).get("value"))
    finally:
        cdp.detach()
    return roles


@pytest.fixture(params=[PHONE, DESKTOP], ids=["390x844", "1280x900"])
def sized_page(request: pytest.FixtureRequest, browser: Browser) -> Iterator[Page]:
    """A fresh tab at a phone's size (touch, as phones are) or at a laptop's."""
    phone = request.param is PHONE
    context = browser.new_context(viewport=request.param, is_mobile=phone, has_touch=phone)
    yield context.new_page()
    context.close()


# ----------------------------------------------------------------------------------------- the slice table


def test_slice_table_fits_a_phone_with_every_result_in_full_view(phone_page: Page, live_server: str) -> None:
    """A review found the Result column outside a scroll area with no cue at 390 px, squeezed to a sliver."""
    width = PHONE["width"]
    phone_page.goto(live_server)
    upload(phone_page, RASTER_SERIES)

    phone_page.locator("details.slice-table-block summary").click()
    expect(phone_page.locator("#slice-table")).to_be_visible()
    cells = phone_page.evaluate(
        """() => {
            const headers = [...document.querySelectorAll("#slice-table thead th")].map((th) => th.textContent);
            const column = headers.indexOf("Result") + 1;
            return [...document.querySelectorAll(`#slice-table tbody tr > :nth-child(${column})`)].map((cell) => {
                const box = cell.getBoundingClientRect();
                const range = document.createRange();
                range.selectNodeContents(cell);
                const lines = new Set([...range.getClientRects()].map((rect) => Math.round(rect.top))).size;
                return { text: cell.textContent, left: box.left, right: box.right, lines,
                         clipped: cell.scrollWidth > cell.clientWidth };
            });
        }"""
    )
    assert len(cells) == len(RASTER_SERIES)
    for cell in cells:
        assert cell["text"].startswith(("Tumor", "No tumor")), cell
        assert cell["left"] >= 0 and cell["right"] <= width, cell  # in view, not behind a horizontal scroll
        assert not cell["clipped"] and cell["lines"] <= 2, cell  # readable words, not a sliver of letters
    scroll = phone_page.eval_on_selector(".table-scroll", "box => [box.scrollWidth, box.clientWidth]")
    assert scroll[0] <= scroll[1]  # nothing of the table hides behind a scroll either
    assert phone_page.evaluate("document.scrollingElement.scrollWidth") <= width
    # Laid out as blocks on a phone, it is still a table to a screen reader, its column headers included.
    assert ax_roles(phone_page, "#slice-table") == ["table"]
    assert set(ax_roles(phone_page, "#slice-table thead th")) == {"columnheader"}
    assert set(ax_roles(phone_page, "#slice-table tbody td")) == {"cell"}


# ------------------------------------------------------------------------------------- result into view


def test_result_heading_is_brought_into_view_and_takes_keyboard_focus(sized_page: Page, live_server: str) -> None:
    """A review found the result below the fold (off screen on a phone) with nothing scrolled or focused."""
    sized_page.goto(live_server)
    upload(sized_page, RASTER_SERIES)

    heading = sized_page.locator("#result-heading")
    expect(heading).to_be_focused(timeout=FOCUS_TIMEOUT_MS)
    expect(heading).to_be_in_viewport()
    assert heading.get_attribute("tabindex") == "-1"  # focusable from the page, but no extra Tab stop


def test_result_does_not_take_focus_from_a_field_being_typed_in(page: Page, live_server: str) -> None:
    page.goto(live_server)
    page.focus("#api-key")
    page.keyboard.type("abc")

    upload(page, RASTER_SERIES)

    page.wait_for_timeout(300)
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.keyboard.type("d")
    expect(page.locator("#api-key")).to_have_value("abcd")


# ------------------------------------------------------------------------------------------- strip legend


def test_probability_strip_legend_names_every_mark_it_draws(page: Page, live_server: str) -> None:
    """The strip draws a threshold line, bars by height and in two colours (a blue one can stand above the line: a
    slice cleared by the series clean-up), dots over slices close to the threshold and an outline round the slice
    shown: a review found only the line explained."""
    page.goto(live_server)
    upload(page, RASTER_SERIES)

    legend = page.locator("#strip-legend")
    expect(legend).to_be_visible()
    text = " ".join(legend.inner_text().lower().split())
    for words in (
        "dashed line",
        "decision threshold",
        "bar height",
        "tumor probability",
        "orange bar",
        "tumor detected",
        "blue bar",
        "no tumor",
        "above the line",
        "series clean-up",
        "dot",
        "close to the threshold",
        "outlined bar",
        "slice shown",
    ):
        assert words in text, f"{words!r} missing from the legend: {text!r}"
    # Words, not only swatches, and in the accessibility tree: the strip (a slider) is described by the legend.
    assert legend.evaluate("element => element.closest('[aria-hidden=true]') === null")
    described_by = page.get_attribute("#strip", "aria-describedby") or ""
    assert "strip-legend" in described_by.split()


# ----------------------------------------------------------------------------------------- outline width


def square_mask_png(size: int, start: int, end: int) -> bytes:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[start:end, start:end] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("size", [256, 512])
def test_outline_is_at_least_one_and_a_half_css_pixels_wide_and_stays_on_the_mask_border(
    page: Page, live_server: str, size: int
) -> None:
    """A review found a 512 px slice's outline one canvas pixel wide, so under one CSS pixel at the viewer's 416 px."""
    image = io.BytesIO()
    Image.open(TUMOR_SLICE).convert("L").resize((size, size)).save(image, format="PNG")
    picture = image.getvalue()
    answer = httpx.post(
        f"{live_server}/v1/predict/batch?mask_format=png", files={"files": ("slice.png", picture)}, timeout=60
    ).json()
    # The service's own answer, with a square mask whose edge can be measured.
    start, end = size // 4, 3 * size // 4
    prediction = answer["results"][0]["prediction"]
    prediction["tumor_detected"] = True
    prediction["mask"] = {
        "size": [size, size],
        "png": base64.b64encode(square_mask_png(size, start, end)).decode(),
        "area_pixels": (end - start) ** 2,
        "bbox": [start, start, end - start, end - start],
    }
    page.route(
        "**/v1/predict/batch*",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(answer)),
    )
    page.goto(live_server)
    upload(page, [{"name": "slice.png", "mimeType": "image/png", "buffer": picture}])

    page.select_option("#mask-style", "outline")
    expect(page.locator("#caption")).to_contain_text("outlined")
    drawn = canvas_rgba(page, "#mask-canvas")[..., 3] > 0
    shown_width = page.evaluate('() => document.querySelector("#mask-canvas").getBoundingClientRect().width')
    inside = np.zeros((size, size), dtype=bool)
    inside[start:end, start:end] = True
    assert not (drawn & ~inside).any()  # on the mask's own pixels: not moved out
    assert drawn[start, start:end].all() and drawn[start:end, start].all()  # its border pixels all drawn
    assert not drawn[size // 2, size // 2]  # an outline, not a fill
    middle = drawn[size // 2, start:end]
    band = int(np.argmin(middle))  # drawn pixels from the left edge inwards
    assert band >= (2 if size == 512 else 1)
    assert band * shown_width / size >= 1.5, (band, shown_width)


# --------------------------------------------------------------------------------------------- API key form


def test_api_key_field_is_in_a_form_that_never_submits(browser: Browser, live_server: str) -> None:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    messages: list[ConsoleMessage] = []
    page.on("console", lambda message: messages.append(message))
    try:
        page.goto(live_server)
        page.wait_for_load_state("load")
        page.wait_for_timeout(300)
        assert [message.text for message in messages if "[DOM]" in message.text] == []
        assert page.eval_on_selector("#api-key", "field => field.form !== null")

        page.evaluate("window.__samePage = true")
        navigations: list[str] = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))
        page.focus("#api-key")
        page.keyboard.type("research-key-1")
        page.keyboard.press("Enter")
        page.wait_for_timeout(500)
        assert navigations == []
        assert page.evaluate("window.__samePage") is True
        expect(page.locator("#api-key")).to_have_value("research-key-1")
        assert [message.text for message in messages if message.type == "error"] == []  # no blocked form action
    finally:
        context.close()
