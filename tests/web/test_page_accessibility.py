"""The upload page for keyboard and screen-reader users, at phone width and 200 % zoom, and by its colours: in headless
Chromium against the real service, reading what Chromium itself computes (focus, accessibility tree, styles)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import TUMOR_FREE_SLICE, TUMOR_SERIES, TUMOR_SLICE
from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.web.conftest import raster_ends_caveat

RESULT_TIMEOUT_MS = 60_000
RASTER_SERIES = [TUMOR_FREE_SLICE, *TUMOR_SERIES]
TEXT_FILE = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image\n"}
LONG_NAME = "TCGA_DU_A5TW_19980228_flair_axial_reconstructed_series_0022_slice_without_any_spaces.jpg"

# Every element with text of its own, visible: its contrast with the first opaque background behind it (WCAG 1.4.3:
# 4.5:1, or 3:1 for large text), and the border contrast of the controls whose border shows where they are (1.4.11).
CONTRAST_SCRIPT = """() => {
  const rgba = (text) => {
    const parts = text.match(/rgba?\\(([^)]+)\\)/)[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return [parts[0], parts[1], parts[2], parts.length > 3 ? parts[3] : 1];
  };
  const luminance = ([r, g, b]) => {
    const linear = (v) => (v / 255 <= 0.03928 ? v / 255 / 12.92 : ((v / 255 + 0.055) / 1.055) ** 2.4);
    return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
  };
  const ratio = (a, b) => {
    const [high, low] = [luminance(a), luminance(b)].sort((x, y) => y - x);
    return (high + 0.05) / (low + 0.05);
  };
  const backgroundOf = (element) => {
    for (let at = element; at; at = at.parentElement) {
      const colour = rgba(getComputedStyle(at).backgroundColor);
      if (colour[3] > 0) return colour;
    }
    return [255, 255, 255, 1];
  };
  const describe = (element, value) => {
    const where = `${element.tagName.toLowerCase()}#${element.id}.${element.className}`;
    return `${where} "${element.textContent.trim().slice(0, 40)}" ${value.toFixed(2)}`;
  };
  const text = [];
  for (const element of document.querySelectorAll("body *")) {
    const ownText = [...element.childNodes].some((node) => node.nodeType === Node.TEXT_NODE && node.textContent.trim());
    if (!ownText || !element.checkVisibility() || element.closest(".visually-hidden, option")) continue;
    const style = getComputedStyle(element);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (Number(style.fontWeight) >= 700 && size >= 18.66);
    const value = ratio(rgba(style.color), backgroundOf(element));
    if (value < (large ? 3 : 4.5)) text.push(describe(element, value));
  }
  const borders = [];
  for (const element of document.querySelectorAll("#drop-zone, #api-key, select, input[inputmode=decimal]")) {
    if (!element.checkVisibility()) continue;
    const value = ratio(rgba(getComputedStyle(element).borderTopColor), backgroundOf(element.parentElement));
    if (value < 3) borders.push(describe(element, value));
  }
  return { text, borders };
}"""


def upload(page: Page, files) -> dict:
    with page.expect_response(lambda response: "/v1/predict/batch" in response.url, timeout=RESULT_TIMEOUT_MS) as got:
        page.set_input_files("#file-input", files)
    assert got.value.status == 200
    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    # The new result, not the one shown until it came (kept visible meanwhile, marked previous): drawn slices read
    # right after were the previous series' under load (a CI run).
    expect(page.locator("#result")).not_to_have_class(re.compile(r"\bprevious\b"), timeout=RESULT_TIMEOUT_MS)
    return got.value.json()


def as_buffers(paths: list[Path], names: list[str] | None = None) -> list[dict]:
    names = names or [path.name for path in paths]
    return [
        {"name": name, "mimeType": "image/jpeg", "buffer": path.read_bytes()}
        for path, name in zip(paths, names, strict=True)
    ]


def ax_node(page: Page, selector: str) -> dict:
    """Chromium's accessibility node of the element: role, name, description and properties (live, focusable...)."""
    cdp = page.context.new_cdp_session(page)
    try:
        root = cdp.send("DOM.getDocument")["root"]["nodeId"]
        node_id = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        (node, *_) = cdp.send("Accessibility.getPartialAXTree", {"nodeId": node_id, "fetchRelatives": False})["nodes"]
    finally:
        cdp.detach()
    return {
        "role": node.get("role", {}).get("value"),
        "name": node.get("name", {}).get("value", ""),
        "description": node.get("description", {}).get("value", ""),
        **{item["name"]: item["value"].get("value") for item in node.get("properties", [])},
    }


def unnamed_focusable_elements(page: Page) -> list[str]:
    """Elements that take keyboard focus but whose accessible name, as Chromium computes it, is empty."""
    cdp = page.context.new_cdp_session(page)
    try:
        unnamed = []
        for node in cdp.send("Accessibility.getFullAXTree")["nodes"]:
            properties = {item["name"]: item["value"].get("value") for item in node.get("properties", [])}
            if node.get("ignored") or not properties.get("focusable"):
                continue
            if not node.get("name", {}).get("value", "").strip():
                described = cdp.send("DOM.describeNode", {"backendNodeId": node["backendDOMNodeId"]})["node"]
                attributes = described.get("attributes", [])
                element_id = attributes[attributes.index("id") + 1] if "id" in attributes else ""
                unnamed.append(f"{described['localName']}#{element_id} ({node['role']['value']})")
    finally:
        cdp.detach()
    return unnamed


def focused(page: Page) -> str:
    return page.evaluate("(() => { const e = document.activeElement; return e.id || e.tagName.toLowerCase(); })()")


def focus_is_drawn(page: Page) -> bool:
    """The focused element, or the label drawn for a visually hidden input, shows an outline."""
    return page.evaluate(
        """(() => {
            const element = document.activeElement;
            const shown = element.classList.contains("visually-hidden") ? element.nextElementSibling : element;
            const style = getComputedStyle(shown);
            return style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0;
        })()"""
    )


def test_keyboard_reaches_and_operates_every_control_in_order(page: Page, live_server: str) -> None:
    page.goto(live_server)
    upload(page, RASTER_SERIES)
    clicks = "window.__fileClicks"
    page.evaluate(
        f"document.querySelector('#file-input').addEventListener('click', () => {clicks} = ({clicks} ?? 0) + 1)"
    )
    page.click("h1")  # the sequential focus starting point: the top of the page

    stops = []
    for _ in range(20):
        page.keyboard.press("Tab")
        if focused(page) == "body":
            break  # past the last stop: out of the page, so no trap
        assert focus_is_drawn(page), f"no visible focus indicator on {focused(page)}"
        stops.append(focused(page))
    assert stops == [
        "file-input",
        "folder-input",
        "api-key",
        "viewer",
        "slice-slider",
        "strip",
        "mask-style",
        "mask-colour",
        "mask-opacity",
        "pixel-spacing",
        "slice-spacing",
        "download-masks",
        "summary",
        "a",
    ]

    page.focus("#file-input")
    page.keyboard.press("Enter")
    page.keyboard.press("Space")
    assert page.evaluate(clicks) == 2  # both keys open the file chooser

    page.focus("#viewer")
    page.keyboard.press("End")
    expect(page.locator("#slice-number")).to_have_text("4 / 4")
    page.keyboard.press("ArrowDown")
    expect(page.locator("#slice-number")).to_have_text("3 / 4")
    page.keyboard.press("Tab")
    assert focused(page) == "slice-slider"
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#slice-number")).to_have_text("2 / 4")
    page.keyboard.press("Shift+Tab")
    assert focused(page) == "viewer"

    page.focus(".slice-table-block summary")
    page.keyboard.press("Enter")
    expect(page.locator("#slice-table")).to_be_visible()
    page.focus("#download-masks")
    with page.expect_download() as downloaded:
        page.keyboard.press("Enter")
    assert downloaded.value.suggested_filename == f"tumor-masks_{RASTER_SERIES[0].stem}.zip"


def test_every_control_has_an_accessible_name_and_the_page_its_language_title_and_headings(
    page: Page, live_server: str
) -> None:
    page.goto(live_server)
    upload(page, RASTER_SERIES)

    assert unnamed_focusable_elements(page) == []
    assert ax_node(page, "#viewer")["name"] == "MRI slice viewer"
    # The file choice is named by the drop zone's title; its hint is the description, not read twice.
    file_input = ax_node(page, "#file-input")
    assert file_input["name"] == "Drop MRI slices, a folder or a zip here, or choose files"
    assert file_input["description"].startswith("PNG, JPEG, TIFF or DICOM")
    # The series opens on its largest predicted tumor (here the tiny models' on the last slice).
    assert ax_node(page, "#slice-canvas")["name"].startswith(f"MRI Slice 4 of 4 ({RASTER_SERIES[3].name})")
    assert ax_node(page, "#mask-canvas")["role"] in (None, "none")  # decorative copy of the caption's words
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.title()
    levels = page.eval_on_selector_all("h1, h2, h3, h4, h5, h6", "all => all.map((h) => Number(h.tagName[1]))")
    assert levels[0] == 1 and all(b - a <= 1 for a, b in zip(levels, levels[1:], strict=False)), levels
    actions = page.eval_on_selector_all(
        "#cancel, #download-masks, #download-seg, #window-reset", "all => all.map(e => e.tagName)"
    )
    assert set(actions) == {"BUTTON"}


def test_slice_changed_from_the_viewer_keys_is_announced(page: Page, live_server: str) -> None:
    page.goto(live_server)
    upload(page, RASTER_SERIES)

    page.focus("#viewer")
    page.keyboard.press("Home")
    page.keyboard.press("ArrowUp")

    caption = ax_node(page, "#caption")
    assert caption.get("live") == "polite"
    expect(page.locator("#caption")).to_contain_text(f"Slice 2 of 4 ({RASTER_SERIES[1].name})")
    # The bare "2 / 4" beside the slider is not announced on top of the caption.
    assert ax_node(page, "#slice-number").get("live") in (None, "off")


def test_per_slice_bars_are_a_slider_that_the_keys_and_the_mouse_operate(page: Page, live_server: str) -> None:
    page.goto(live_server)
    answer = upload(page, RASTER_SERIES)
    predictions = [item["prediction"] for item in answer["results"]]
    strip = page.locator("#strip")

    node = ax_node(page, "#strip")
    assert node["role"] == "slider"
    assert node["name"] == "Tumor probability per slice (line: threshold)"
    assert node.get("focusable")
    page.focus("#slice-slider")
    page.keyboard.press("Tab")
    assert focused(page) == "strip"
    assert focus_is_drawn(page)

    def shown(number: int) -> None:
        prediction = predictions[number - 1]
        result = "tumor" if prediction["tumor_detected"] else "no tumor"
        probability = f"{100 * prediction['tumor_probability']:.1f} %"
        expect(page.locator("#slice-number")).to_have_text(f"{number} / 4")
        expect(strip).to_have_attribute("aria-valuenow", str(number))
        expect(strip).to_have_attribute("aria-valuetext", f"Slice {number} of 4: {result}, probability {probability}")

    # Slider keys: right and up go to the next slice, Page Down ten back (stopping at the first), Home and End.
    for key, number in [("End", 4), ("ArrowLeft", 3), ("Home", 1), ("ArrowRight", 2), ("ArrowUp", 3), ("PageDown", 1)]:
        page.keyboard.press(key)
        shown(number)
    assert strip.get_attribute("aria-valuemin") == "1" and strip.get_attribute("aria-valuemax") == "4"
    expect(page.locator("#caption")).to_contain_text(f"Slice 1 of 4 ({RASTER_SERIES[0].name})")

    page.locator("#strip .strip-bar").nth(2).click()  # the mouse still picks a slice by its bar
    shown(3)
    expect(page.locator("#strip .strip-bar.current")).to_have_attribute("data-index", "2")


def test_a_volume_recomputed_from_the_spacing_is_announced_once_and_scrolling_slices_is_not(
    page: Page, live_server: str
) -> None:
    page.goto(live_server)
    answer = upload(page, RASTER_SERIES)
    area_pixels = sum(
        item["prediction"]["mask"]["area_pixels"] for item in answer["results"] if item["prediction"]["mask"]
    )
    expected_ml = area_pixels * 0.5 * 0.5 * 2.5 / 1000
    announcement = page.locator("#volume-status")
    expect(announcement).to_have_text("")  # the status line announces the result itself
    # Every text the live region is given, so that one announcement per change can be counted.
    page.evaluate(
        """() => {
            window.__volumeSaid = [];
            const region = document.querySelector("#volume-status");
            new MutationObserver((records) => records.forEach(() => window.__volumeSaid.push(region.textContent)))
                .observe(region, { childList: true, characterData: true, subtree: true });
        }"""
    )

    page.focus("#viewer")
    page.keyboard.press("End")
    page.keyboard.press("ArrowDown")
    page.focus("#pixel-spacing")
    page.keyboard.type("0.5")  # the volume needs both spacings: nothing changed yet
    page.wait_for_timeout(1000)  # past the page's pause before an announcement
    assert page.evaluate("window.__volumeSaid") == []

    page.focus("#slice-spacing")
    page.keyboard.type("2.5")
    volume = f"{expected_ml:,.2f} mL (from the spacing entered){raster_ends_caveat(answer)}"
    said = f"Tumor volume: {volume}"
    expect(announcement).to_have_text(said)
    assert ax_node(page, "#volume-status").get("live") == "polite"  # Chromium leaves the empty region out of its tree
    expect(page.locator("#volume")).to_have_text(volume)
    page.focus("#viewer")
    page.keyboard.press("Home")
    page.wait_for_timeout(1000)
    assert page.evaluate("window.__volumeSaid") == [said]  # one announcement for three keystrokes, none for a scroll


def test_a_single_slice_is_no_keyboard_stop_and_a_series_after_it_is(page: Page, live_server: str) -> None:
    """One slice has nothing to scroll: Tab goes past the viewer and its scrolling help is hidden; a series again
    makes the viewer a keyboard stop."""
    page.goto(live_server)
    upload(page, as_buffers([TUMOR_SLICE]))

    assert page.eval_on_selector("#viewer", "element => element.tabIndex") == -1
    expect(page.locator("#viewer-help")).to_be_hidden()

    upload(page, as_buffers(RASTER_SERIES))

    assert page.eval_on_selector("#viewer", "element => element.tabIndex") == 0
    expect(page.locator("#viewer-help")).to_be_visible()


def test_result_announcement_says_which_files_failed(page: Page, live_server: str) -> None:
    page.goto(live_server)

    cut_short = {"name": "zz_cut_short.jpg", "mimeType": "image/jpeg", "buffer": TUMOR_SERIES[0].read_bytes()[:400]}
    upload(page, [*as_buffers(TUMOR_SERIES), cut_short])  # after the slices: no slice is missing between them

    expect(page.locator("#file-errors")).to_be_visible()
    assert ax_node(page, "#status").get("live") == "polite"
    expect(page.locator("#status")).to_have_text(
        "Tumor detected in 3 of 3 slices; threshold 0.0 %. 1 file could not be analysed (listed under Result)."
    )


def test_result_announcement_flags_a_slice_close_to_the_threshold(page: Page, live_server: str) -> None:
    # The service's own answer, with a threshold of 0.5 and its probability just above it (the tiny models' threshold
    # of 0.0 is infinitely far from any probability in log-odds, which is how the page measures "close").
    with TUMOR_SLICE.open("rb") as file:
        answer = httpx.post(f"{live_server}/v1/predict/batch?mask_format=png", files={"files": file}, timeout=60).json()
    prediction = answer["results"][0]["prediction"]
    prediction["threshold"] = 0.5
    prediction["tumor_probability"] = 0.51
    page.route(
        "**/v1/predict/batch*",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(answer)),
    )
    page.goto(live_server)

    upload(page, TUMOR_SLICE)

    expect(page.locator("#near-flag")).to_be_visible()
    expect(page.locator("#status")).to_have_text(
        "Tumor detected: tumor probability 51.0 %, threshold 50.0 %. "
        "Close to the threshold: review this slice with care."
    )
    assert page.evaluate(CONTRAST_SCRIPT) == {"text": [], "borders": []}


def test_text_and_control_borders_have_enough_contrast_in_every_state(
    page: Page, negative_live_server: str, tmp_path: Path
) -> None:
    """At rest, with a tumor-free DICOM result (whose SEG button is disabled but says why), and with an error."""
    paths = []
    for index, dataset in enumerate(mr_series(tumor_channels())):
        paths.append(tmp_path / f"IM{index:04d}")
        paths[-1].write_bytes(to_bytes(dataset))
    page.goto(negative_live_server)
    assert page.evaluate(CONTRAST_SCRIPT) == {"text": [], "borders": []}

    upload(page, paths)
    expect(page.locator("#download-seg")).to_have_text("DICOM SEG: none, no tumor found")
    expect(page.locator("#download-seg")).to_be_disabled()
    assert page.evaluate(CONTRAST_SCRIPT) == {"text": [], "borders": []}

    page.set_input_files("#file-input", files=[TEXT_FILE])
    expect(page.locator("#error")).to_be_visible()
    assert ax_node(page, "#error")["role"] == "alert"
    assert page.evaluate(CONTRAST_SCRIPT) == {"text": [], "borders": []}


@pytest.mark.parametrize(
    ("width", "height", "scale"),
    [(320, 640, 1), (640, 450, 2)],  # a narrow phone; a 1280 x 900 window at 200 % zoom
    ids=["320px", "zoom200"],
)
def test_page_fits_narrow_and_zoomed_windows_with_the_notice_in_view(
    browser: Browser, live_server: str, width: int, height: int, scale: int
) -> None:
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=scale)
    page = context.new_page()
    try:
        page.goto(live_server)
        notice = page.locator("#notice")
        expect(notice).to_be_in_viewport()
        assert ax_node(page, "#notice")["role"] == "note"
        expect(notice).to_contain_text("Research use only — not for clinical diagnosis.")

        # File names arrive in the caption, the status line and the table: a long one must not widen the page.
        upload(page, as_buffers([TUMOR_FREE_SLICE, TUMOR_SLICE], [LONG_NAME, f"b{LONG_NAME}"]))
        page.locator("details.slice-table-block").evaluate("details => { details.open = true; }")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
    finally:
        context.close()
