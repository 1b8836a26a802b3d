"""Browser review 42, in headless Chromium against the real service: a dropped folder's subfolders in path order and
an empty one said, the probability strip in forced colours, the volume caveat of a raster series whose tumor reaches
an end, a probability told apart from a threshold of the same rounded text, Level/Width for small and outlying
ranges, live regions read once, and an RGB TIFF drawn in colour."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from playwright.sync_api import Page, expect

from tests.conftest import TUMOR_SLICE
from tests.dicom.builders import mr_series, tumor_channels
from tests.web.canvas_pixels import canvas_rgba
from tests.web.conftest import series_answer_with
from tests.web.test_page_accessibility import ax_node
from tests.web.test_page_series_answers import RASTER_SERIES, RESULT_TIMEOUT_MS, upload, write_series

# XMLHttpRequest.send recorded: the sizes of the files each analysis sends, in the order sent.
RECORD_SENT = """() => {
    window.sentSizes = [];
    const send = XMLHttpRequest.prototype.send;
    XMLHttpRequest.prototype.send = function (body) {
        if (body instanceof FormData) {
            window.sentSizes.push(body.getAll("files").map((file) => file.size));
        }
        return send.call(this, body);
    };
}"""


def answering(answer: dict):
    """A route handler that answers the batch request with `answer`."""
    return lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(answer))


def drop_folder(page: Page, folder: Path) -> None:
    """A real file-system drop of `folder` on the drop zone (DevTools Input.dispatchDragEvent), so that the page walks
    it as FileSystemEntry objects, as a folder dragged from a file manager."""
    cdp = page.context.new_cdp_session(page)
    box = page.locator("#drop-zone").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    data = {"items": [], "files": [str(folder)], "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver", "drop"):
        cdp.send("Input.dispatchDragEvent", {"type": kind, "x": x, "y": y, "data": data})


# ------------------------------------------------------------------------- F2 and F9: folders dropped


def test_slices_from_two_subfolders_of_a_dropped_or_chosen_folder_are_refused_naming_them(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Browser review 60 F12: PNG, JPEG or TIFF slices carry no patient or series, and several are sent as one
    series: a folder chosen one level too high (the LGG data set keeps a folder per patient) gave one verdict and one
    tumor volume over two patients. (Browser review 42: a drop's files keep their paths, so its folders are seen.)"""
    study = tmp_path / "study"
    layout = {"A/IM1.jpg": RASTER_SERIES[0], "A/IM2.jpg": RASTER_SERIES[1]}
    layout |= {"B/IM1.jpg": RASTER_SERIES[2], "B/IM2.jpg": RASTER_SERIES[3]}
    for name, source in layout.items():
        (study / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, study / name)
    page.goto(live_server)
    page.evaluate(RECORD_SENT)
    title = "The slices come from several folders. Choose one folder (one patient's series) at a time."

    drop_folder(page, study)

    expect(page.locator("#error-title")).to_have_text(title, timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#error-detail")).to_contain_text("come from 2 folders (")
    page.set_input_files("#folder-input", str(study / "A"))  # one of them goes
    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    page.set_input_files("#folder-input", str(study))
    expect(page.locator("#error-title")).to_have_text(title, timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#error-detail")).to_contain_text("study/A, study/B")
    assert len(page.evaluate("window.sentSizes")) == 1


def test_a_dropped_folder_without_files_says_so(page: Page, live_server: str, tmp_path: Path) -> None:
    """A folder whose only subfolder is empty was dropped with no word at all: no error, no status, as if missed."""
    export = tmp_path / "DICOM_export"
    (export / "SE0001").mkdir(parents=True)
    page.goto(live_server)

    drop_folder(page, export)

    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-title")).to_have_text("The files could not be opened.")
    expect(page.locator("#error")).to_contain_text("the folder holds no files")
    expect(page.locator("#progress-row")).to_be_hidden()


# ------------------------------------------------------------------------- F1: the strip in forced colours

STRIP_COLOURS = """() => {
    const background = (element, pseudo = null) => getComputedStyle(element, pseudo).backgroundColor;
    const bars = [...document.querySelectorAll("#strip .strip-bar")];
    return {
        strip: background(document.querySelector("#strip")),
        positive: bars.filter((bar) => bar.classList.contains("positive")).map((bar) => background(bar.firstChild)),
        negative: bars.filter((bar) => !bar.classList.contains("positive")).map((bar) => background(bar.firstChild)),
        marks: bars.filter((bar) => bar.classList.contains("near")).map((bar) => background(bar, "::before")),
        swatches: Object.fromEntries(["positive", "negative", "near", "beside"].map(
            (name) => [name, background(document.querySelector(`.swatch-${name}`))])),
    };
}"""


def test_the_strips_bars_marks_and_swatches_stay_visible_in_forced_colours(page: Page, live_server: str) -> None:
    """Windows High Contrast (forced colours) drew every bar, dot, diamond and legend swatch in the strip's own
    background colour: the strip was an empty box beside "Orange bar" and "Blue bar" over blank swatches."""
    # Near the threshold beside no tumor, tumor-free, near and beside the tumor, tumor.
    faked = series_answer_with(live_server, RASTER_SERIES, [0.100, 0.075, 0.105, 0.6], threshold=0.116)
    page.route(
        "**/v1/predict/batch*",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(faked)),
    )
    page.emulate_media(forced_colors="active")
    page.goto(live_server)

    upload(page, RASTER_SERIES)

    colours = page.evaluate(STRIP_COLOURS)
    strip = colours["strip"]
    assert len(colours["positive"]) == 1 and len(colours["negative"]) == 3 and len(colours["marks"]) == 2
    assert strip not in colours["positive"] + colours["negative"] + colours["marks"], colours
    assert strip not in colours["swatches"].values(), colours
    assert set(colours["positive"]) == {colours["swatches"]["positive"]}
    assert set(colours["negative"]) == {colours["swatches"]["negative"]}
    assert colours["swatches"]["positive"] != colours["swatches"]["negative"]
    assert set(colours["marks"]) == {colours["swatches"]["near"]} == {colours["swatches"]["beside"]}


# ------------------------------------------------------------------------- F3: tumor at an end of a raster series


def test_a_raster_series_volume_warns_when_tumor_reaches_its_first_or_last_slice(page: Page, live_server: str) -> None:
    """A DICOM series' volume says "it may fall short" when tumor is on its first or last slice; the same series as
    JPEGs said nothing, the batch answer for raster files having no series fields."""
    ends = "tumor on the first or last slice sent (it may go on beyond them)"
    for probabilities, warned in (([0.9, 0.05, 0.05, 0.05], True), ([0.05, 0.9, 0.9, 0.05], False)):
        faked = series_answer_with(live_server, RASTER_SERIES, probabilities, threshold=0.5)
        page.unroute("**/v1/predict/batch*")
        page.route("**/v1/predict/batch*", answering(faked))
        page.goto(live_server)
        upload(page, RASTER_SERIES)
        page.fill("#pixel-spacing", "0.94")
        page.fill("#slice-spacing", "3")

        volume = page.locator("#volume")
        expect(volume).to_contain_text("mL (from the spacing entered)")
        if warned:
            expect(volume).to_contain_text(f"; it may fall short: {ends}")
        else:
            expect(volume).not_to_contain_text("fall short")


# ------------------------------------------------------------------------- F6: a probability beside its threshold

# The review's slices: TCGA_CS_6667_20011105 slice 18 (just below) and TCGA_CS_5396 slice 21 (just above).
THRESHOLD = 0.1158872278958559
JUST_BELOW = 0.1158180832862854
JUST_ABOVE = 0.115899


def test_a_probability_rounding_to_the_thresholds_text_gets_more_decimals(page: Page, live_server: str) -> None:
    """ "Slice tumor probability 11.6 % is below the decision threshold of 11.6 %": one decimal made a probability
    just below the threshold read as equal to it, and the table showed "11.6 %" in rows marked Tumor and No tumor."""
    faked = series_answer_with(live_server, RASTER_SERIES, [JUST_BELOW, JUST_ABOVE, 0.9, 0.05], threshold=THRESHOLD)
    page.route("**/v1/predict/batch*", answering(faked))
    page.goto(live_server)
    upload(page, RASTER_SERIES)

    page.locator("#slice-slider").fill("1")
    expect(page.locator(".decision-reason")).to_contain_text(
        "Slice tumor probability 11.58 % is below the decision threshold of 11.59 %."
    )
    page.locator("#slice-slider").fill("2")
    expect(page.locator(".decision-reason")).to_contain_text(
        "Slice tumor probability 11.590 % is at or above the decision threshold of 11.589 %."
    )
    expect(page.locator("#slice-slider")).to_have_attribute("aria-valuetext", re.compile(r"probability 11\.590 %$"))
    page.locator("#slice-slider").fill("3")  # far from it: one decimal
    expect(page.locator(".decision-reason")).to_contain_text(
        "probability 90.0 % is at or above the decision threshold of 11.6 %."
    )
    probabilities = page.locator("#slice-table tbody tr td:nth-child(3)").all_text_contents()
    assert probabilities == ["11.58 %", "11.590 %", "90.0 %", "5.0 %"]


# ------------------------------------------------------------------------- F4 and F5: Level/Width ranges


def window_state(page: Page) -> dict:
    """Each slider's range and value, and its read-out."""
    return page.evaluate(
        """() => Object.fromEntries(["level", "width"].map((name) => {
            const input = document.querySelector(`#window-${name}`);
            const range = { min: Number(input.min), max: Number(input.max), value: Number(input.value) };
            return [name, { ...range, text: document.querySelector(`#window-${name}-value`).textContent }];
        }))"""
    )


def test_level_and_width_reach_a_float_tiffs_small_range_with_decimals(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Float TIFFs of values 0..0.4: Width's minimum of 1 held the window at 1 or wider (the slice drawn dimmer than
    the server's stretch, and never narrowed), and both read-outs were rounded to whole numbers ("0", "1")."""
    paths = []
    for index, channel in enumerate(tumor_channels()):
        paths.append(tmp_path / f"slice_{index}.tif")
        tifffile.imwrite(paths[-1], (channel / 637.5).astype(np.float32), photometric="minisblack")
    page.goto(live_server)
    upload(page, paths)

    before = window_state(page)
    assert 0.2 < before["level"]["max"] <= 0.4
    assert before["width"]["min"] < 0.01
    assert 0.05 < before["width"]["value"] < 0.4  # the server's stretch, not 1
    for name in ("level", "width"):
        assert float(before[name]["text"]) == pytest.approx(before[name]["value"], abs=0.001), before
    page.focus("#window-width")
    for _ in range(5):
        page.keyboard.press("ArrowLeft")
    after = window_state(page)
    assert after["width"]["value"] < before["width"]["value"]
    assert after["width"]["text"] != before["width"]["text"]


def test_a_file_window_beyond_the_pixel_values_is_kept_and_reset_to(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """A 12-bit full-range window (centre 2048, width 4096) over values up to 1,020: the Level slider, ranged to the
    values, moved the centre to 1,016 without a word, the slice was drawn brighter than the file's window, and Reset
    went back to 1,016."""
    datasets = mr_series([channel.astype(np.uint16) * 4 for channel in tumor_channels()])
    for dataset in datasets:
        dataset.WindowCenter, dataset.WindowWidth = 2048, 4096
    page.goto(live_server)
    upload(page, write_series(datasets, tmp_path))

    state = window_state(page)
    assert (state["level"]["value"], state["level"]["text"]) == (2048, "2,048")
    assert (state["width"]["value"], state["width"]["text"]) == (4096, "4,096")
    page.focus("#window-level")
    page.keyboard.press("Home")
    assert window_state(page)["level"]["value"] < 2048
    page.click("#window-reset")
    assert window_state(page)["level"]["value"] == 2048


# ------------------------------------------------------------------------- F8: live regions read once


def test_slider_steps_are_announced_once(page: Page, live_server: str, tmp_path: Path) -> None:
    """A step of the Slice slider changed its value text and the live caption, so a screen reader read the slice
    twice; Level, Width and Opacity each had a live <output> beside the slider's own value."""
    paths = []
    for index, channel in enumerate(tumor_channels()):
        paths.append(tmp_path / f"slice_{index}.tif")
        tifffile.imwrite(paths[-1], channel.astype(np.uint16) * 64, photometric="minisblack")
    page.goto(live_server)
    upload(page, paths)

    for output in ("#window-level-value", "#window-width-value", "#mask-opacity-value"):
        assert ax_node(page, output).get("live") in (None, "off"), output
    page.focus("#window-level")
    page.keyboard.press("ArrowRight")
    level = page.locator("#window-level")
    expect(level).to_have_attribute("aria-valuetext", page.locator("#window-level-value").inner_text())
    page.focus("#mask-opacity")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#mask-opacity")).to_have_attribute("aria-valuetext", "50 %")

    for control, live in (("#slice-slider", "off"), ("#strip", "off"), ("#viewer", "polite")):
        page.focus(control)
        page.keyboard.press("Home")
        page.keyboard.press("ArrowRight")
        expect(page.locator("#caption")).to_contain_text("Slice 2 of 3")
        assert ax_node(page, "#caption").get("live") in ((None, "off") if live == "off" else ("polite",)), control


# ------------------------------------------------------------------------- F7: an RGB TIFF in colour


@pytest.mark.parametrize("compression", [None, "lzw"])
def test_an_8_bit_rgb_tiff_is_drawn_in_colour_as_stored(
    page: Page, live_server: str, tmp_path: Path, compression: str | None
) -> None:
    """An RGB TIFF (the LGG data set's own .tif slices) was drawn as the grey mean of pre-contrast, FLAIR and
    post-contrast under Level/Width, while the same slice as JPEG is drawn in colour."""
    rgb = np.asarray(Image.open(TUMOR_SLICE).convert("RGB"))
    path = tmp_path / "slice.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", compression=compression, predictor=compression is not None)
    page.goto(live_server)

    upload(page, [path])

    assert page.evaluate("() => document.querySelector('#slice-canvas').width") == rgb.shape[1]
    assert np.array_equal(canvas_rgba(page)[..., :3], rgb)
    expect(page.locator("#window-controls")).to_be_hidden()  # no grey window over a colour slice, as for the JPEG
