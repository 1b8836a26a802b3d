"""The page's fixes from browser review 24: the SEG's outcome beside its button, spacing typed with a decimal comma or
out of range, an API key no header can carry, the "close to the threshold" band, busy 503s, the SEG button's focus,
the /docs link with keys, and the file line after Cancel."""

from __future__ import annotations

import contextlib
import json
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, Route, expect

from tests.conftest import TUMOR_FREE_SLICE, TUMOR_SERIES, TUMOR_SLICE
from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.web.conftest import raster_ends_caveat, series_answer_with
from tests.web.test_page_series_answers import upload

RASTER_SERIES = [TUMOR_FREE_SLICE, *TUMOR_SERIES]
SEG_URL = "**/v1/predict/batch?output=dicom-seg*"
BUSY_BODY = {"error": {"code": "overloaded", "message": "the inference queue is full (64 slices waiting)"}}


def dicom_series(directory: Path) -> list[Path]:
    paths = []
    for index, dataset in enumerate(mr_series(tumor_channels())):
        paths.append(directory / f"IM{index:04d}")
        paths[-1].write_bytes(to_bytes(dataset))
    return paths


def answer_busy(route: Route) -> None:
    route.fulfill(status=503, content_type="application/json", headers={"Retry-After": "7"}, body=json.dumps(BUSY_BODY))


def release(route: Route) -> None:
    with contextlib.suppress(PlaywrightError):  # the page may have aborted it: nothing left to answer
        answer_busy(route)


# --------------------------------------------------------------------------------------- 2, 6, 7: the SEG button


def test_a_failed_seg_download_says_why_beside_its_button_in_view(
    page: Page, live_server: str, tmp_path: Path, screenshot_dir: Path
) -> None:
    """The error went to the page's error box above the result, out of the window: nothing seemed to happen."""
    held: list[Route] = []
    page.route(SEG_URL, lambda route: held.append(route))
    page.goto(live_server)
    upload(page, dicom_series(tmp_path))
    button = page.locator("#download-seg")
    button.scroll_into_view_if_needed()

    button.click()

    seg_status = page.locator("#seg-status")
    expect(seg_status).to_have_text("Asking the server for the DICOM SEG…")
    expect(seg_status).to_be_in_viewport()
    assert seg_status.get_attribute("aria-live") == "polite"
    release(held[0])
    seg_error = page.locator("#seg-error")
    expect(seg_error).to_be_visible()
    expect(seg_error).to_be_in_viewport()
    assert seg_error.get_attribute("role") == "alert"
    expect(page.locator("#seg-error-title")).to_have_text("The service is busy. Try again in 7 seconds.")
    expect(page.locator("#seg-error-detail")).to_have_text(f"Server message: {BUSY_BODY['error']['message']}")
    expect(seg_status).to_have_text("")
    expect(page.locator("#error")).to_be_hidden()
    page.screenshot(path=screenshot_dir / "web-seg-error-beside-button.png")

    # The next result starts clean.
    upload(page, [TUMOR_SLICE])
    expect(seg_error).to_be_hidden()


def test_the_seg_button_keeps_keyboard_focus_while_busy_and_after(page: Page, live_server: str, tmp_path: Path) -> None:
    """A disabled button dropped the focus to the body, where it stayed."""
    held: list[Route] = []
    page.route(SEG_URL, lambda route: held.append(route))
    page.goto(live_server)
    upload(page, dicom_series(tmp_path))
    button = page.locator("#download-seg")

    button.focus()
    page.keyboard.press("Enter")

    expect(page.locator("#seg-status")).to_have_text("Asking the server for the DICOM SEG…")
    expect(button).to_have_attribute("aria-disabled", "true")
    assert page.evaluate("document.activeElement.id") == "download-seg"
    page.keyboard.press("Enter")  # busy: a second press asks nothing more
    page.wait_for_timeout(300)
    assert len(held) == 1
    release(held[0])
    expect(page.locator("#seg-error")).to_be_visible()
    expect(button).not_to_have_attribute("aria-disabled", "true")
    assert page.evaluate("document.activeElement.id") == "download-seg"


@pytest.mark.parametrize(
    ("code", "title"),
    [
        ("overloaded", "The service is busy. Try again in 7 seconds."),
        ("too_many_connections", "The service is busy. Try again in 7 seconds."),
        ("model_unavailable", "The service is not ready to analyse slices. Try again in 7 seconds."),
    ],
)
def test_a_busy_service_is_not_called_not_ready(page: Page, live_server: str, code: str, title: str) -> None:
    body = {"error": {"code": code, "message": "what the server said"}}
    page.route(
        "**/v1/**",
        lambda route: route.fulfill(
            status=503, content_type="application/json", headers={"Retry-After": "7"}, body=json.dumps(body)
        ),
    )
    page.goto(live_server)

    page.set_input_files("#file-input", TUMOR_SLICE)

    expect(page.locator("#error-title")).to_have_text(title)


@pytest.mark.parametrize(
    ("status", "code", "title"),
    [
        (403, "host_not_allowed", "The service does not accept requests made to this address."),
        (403, "cross_site_request", "The request came from another site's page, which the service refuses."),
        (503, "audit_unavailable", "The service cannot record requests right now (its audit log cannot be written)"),
        (503, "inference_timeout", "The analysis took too long. Try fewer slices at a time. Try again in 7 seconds."),
        # browser review 60 F9: "The server answered with an error (HTTP 408)."
        (408, "request_timeout", "The upload came slower than the service accepts. Choose fewer files at a time"),
    ],
)
def test_a_refusal_for_where_or_how_the_service_runs_says_what_to_do(
    page: Page, live_server: str, status: int, code: str, title: str
) -> None:
    """Browser review 44: a 403 from ALLOWED_HOSTS was "The server answered with an error (HTTP 403)" over a word on
    Host headers; audit_unavailable said nothing to do; a timeout said "try again later. Try again in 7 seconds"."""
    body = {"error": {"code": code, "message": "what the server said"}}
    page.route(
        "**/v1/**",
        lambda route: route.fulfill(
            status=status, content_type="application/json", headers={"Retry-After": "7"}, body=json.dumps(body)
        ),
    )
    page.goto(live_server)

    page.set_input_files("#file-input", TUMOR_SLICE)

    expect(page.locator("#error-title")).to_contain_text(title)


def refuse_upload_with(page: Page, live_server: str, message: str) -> None:
    """Upload a slice to a page whose every request is answered 422 with `message`."""
    body = {"error": {"code": "rejected_instance", "message": message}}
    page.route(
        "**/v1/**",
        lambda route: route.fulfill(status=422, content_type="application/json", body=json.dumps(body)),
    )
    page.goto(live_server)
    page.set_input_files("#file-input", TUMOR_SLICE)


def test_a_server_message_listing_every_file_is_cut_to_a_few_in_the_error_box(page: Page, live_server: str) -> None:
    """Browser review 60 F3: a rejection note withdrawing a 120-slice series was answered with one entry per file,
    33,000 characters in the error box, an alert a screen reader reads out whole."""
    entries = [f"the request's file at index {index}: withdrawn by the rejection note" for index in range(120)]
    message = f"none of the 121 files could be used ({'; '.join(entries)})"
    refuse_upload_with(page, live_server, message)

    detail = page.locator("#error-detail")
    expect(detail).to_contain_text("the request's file at index 0: withdrawn")
    assert len(detail.text_content()) < 1000
    # Browser review 61 F4: what was left out is counted in entries, and the whole message can be read and copied.
    shown = detail.text_content().count("withdrawn by the rejection note")
    expect(detail).to_contain_text(f" … and {120 - shown} more (the whole message is below)")
    expect(page.locator("#error-full-text")).to_be_hidden()
    page.locator("#error-full summary").click()
    expect(page.locator("#error-full-text")).to_have_text(message)


def test_a_server_message_just_over_the_cut_is_shown_whole(page: Page, live_server: str) -> None:
    """Review 72 F1: a message a few characters over 800 was "cut" to a longer text that said the whole message was
    below, where none was shown, its last entry nowhere on the page."""
    message = "a" * 795 + "; LAST-ENTRY"
    refuse_upload_with(page, live_server, message)

    expect(page.locator("#error-detail")).to_have_text(f"Server message: {message}")
    expect(page.locator("#error-full")).to_be_hidden()


def test_a_long_seg_refusal_is_shown_whole_beside_the_seg_button(page: Page, live_server: str, tmp_path: Path) -> None:
    """Browser review 62 F6: a cut SEG refusal said "(the whole message is below)" with nothing below it."""
    message = "; ".join(f"the request's file at index {index}: no SEG can hold it" for index in range(80))
    page.route(
        SEG_URL,
        lambda route: route.fulfill(
            status=422, content_type="application/json", body=json.dumps({"error": {"code": "x", "message": message}})
        ),
    )
    page.goto(live_server)
    upload(page, dicom_series(tmp_path))

    page.locator("#download-seg").click()

    expect(page.locator("#seg-error-detail")).to_contain_text("(the whole message is below)")
    page.locator("#seg-error-full summary").click()
    expect(page.locator("#seg-error-full-text")).to_have_text(message)
    upload(page, dicom_series(tmp_path))  # a SEG refusal that is not cut shows no whole message
    page.route(SEG_URL, answer_busy)
    page.locator("#download-seg").click()
    expect(page.locator("#seg-error-detail")).to_have_text(f"Server message: {BUSY_BODY['error']['message']}")
    expect(page.locator("#seg-error-full")).to_be_hidden()


# ------------------------------------------------------------------------------------------------ 3: spacing


def test_spacing_reads_a_decimal_comma_and_refuses_values_out_of_range(
    page: Page, live_server: str, screenshot_dir: Path
) -> None:
    """`0,9375` in a number field became 9375 and a volume of 6.95 billion mL; 0 said "enter the spacing"."""
    page.goto(live_server)
    answer = upload(page, RASTER_SERIES)
    area_pixels = sum((item["prediction"]["mask"] or {}).get("area_pixels", 0) for item in answer["results"])
    assert area_pixels > 0
    volume = page.locator("#volume")
    pixel_error = page.locator("#pixel-spacing-error")
    slice_error = page.locator("#slice-spacing-error")

    page.fill("#pixel-spacing", "0,9375")
    page.fill("#slice-spacing", "5")
    expected_ml = area_pixels * 0.9375 * 0.9375 * 5 / 1000
    assert float(volume.get_attribute("data-value")) == pytest.approx(expected_ml, rel=1e-12)
    expect(volume).to_have_text(f"{expected_ml:,.2f} mL (from the spacing entered){raster_ends_caveat(answer)}")
    expect(pixel_error).to_be_hidden()

    with page.expect_download() as downloaded:  # the zip says what the mm² and the volume came from (review 53 F3)
        page.click("#download-masks")
    with zipfile.ZipFile(downloaded.value.path()) as archive:
        spacing = json.loads(archive.read("spacing.json"))
    assert (spacing["pixel_spacing_mm"], spacing["slice_spacing_mm"]) == (0.9375, 5)
    assert spacing["tumor_volume_ml"] == pytest.approx(expected_ml, rel=1e-12)
    assert spacing["tumor_volume_shown"] == volume.inner_text()

    for typed, reason in [
        ("1e3", "Invalid pixel spacing: “1e3” is not a number of mm. Type it like 0.94 or 0,94."),
        ("abc", "Invalid pixel spacing: “abc” is not a number of mm. Type it like 0.94 or 0,94."),
        ("0", "Invalid pixel spacing: 0 mm is out of range; it must be between 0.05 and 5 mm."),
        ("-1", "Invalid pixel spacing: -1 mm is out of range; it must be between 0.05 and 5 mm."),
        ("9375", "Invalid pixel spacing: 9375 mm is out of range; it must be between 0.05 and 5 mm."),
    ]:
        page.fill("#pixel-spacing", typed)
        expect(volume).to_have_text("not computed: the pixel spacing entered is invalid (see below)")
        assert volume.get_attribute("data-value") is None
        expect(pixel_error).to_have_text(reason)
        expect(page.locator("#pixel-spacing")).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#area")).not_to_contain_text("mm²")

    page.fill("#slice-spacing", "50")
    expect(slice_error).to_have_text("Invalid slice spacing: 50 mm is out of range; it must be between 0.1 and 20 mm.")
    expect(volume).to_have_text("not computed: the pixel and slice spacings entered are invalid (see below)")
    page.locator("#spacing-controls").screenshot(path=screenshot_dir / "web-spacing-refused.png")

    page.fill("#pixel-spacing", "0.5")
    page.fill("#slice-spacing", "2,5")
    expect(pixel_error).to_be_hidden()
    expect(slice_error).to_be_hidden()
    expect(page.locator("#slice-spacing")).not_to_have_attribute("aria-invalid", "true")
    assert float(volume.get_attribute("data-value")) == pytest.approx(area_pixels * 0.5 * 0.5 * 2.5 / 1000, rel=1e-12)
    assert "spacing-hint" in (page.get_attribute("#pixel-spacing", "aria-describedby") or "").split()
    expect(page.locator("#spacing-hint")).to_contain_text("0.05 to 5 mm")


# ------------------------------------------------------------------------------------------------ 4: API key


def test_an_api_key_no_header_can_carry_is_refused_before_sending(page: Page, live_server: str) -> None:
    """The browser's own exception was shown under "The result could not be shown."."""
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if "/v1/" in request.url else None)
    page.goto(live_server)
    page.fill("#api-key", "sécret€key")

    page.set_input_files("#file-input", TUMOR_SLICE)

    expect(page.locator("#error-title")).to_have_text(
        "The API key contains characters that cannot be sent. Check the key in the API key field."
    )
    expect(page.locator("#error-detail")).to_contain_text("Character 7 of the key cannot be sent in an HTTP header")
    expect(page.locator("#error-detail")).not_to_contain_text("€")  # the key is a secret: its characters stay hidden
    assert sent == []


# ------------------------------------------------------------------------------------- 5: close to the threshold


def test_close_to_the_threshold_scales_with_it_and_singles_out_slices_beside_tumor(
    page: Page, live_server: str, screenshot_dir: Path
) -> None:
    """Around a threshold of 0.116, ±0.05 flagged a third of a series (the model's baseline on tumor-free slices) and
    gave the missed tumor edges the same dot."""
    # Near but beside no tumor; baseline (near under the old ±0.05); near and beside the tumor; tumor.
    faked = series_answer_with(live_server, RASTER_SERIES, [0.100, 0.075, 0.105, 0.6], threshold=0.116)
    page.route(
        "**/v1/predict/batch*",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(faked)),
    )
    page.goto(live_server)

    upload(page, RASTER_SERIES)

    bars = page.locator("#strip .strip-bar")
    assert [bars.nth(index).evaluate("bar => bar.classList.contains('near')") for index in range(4)] == [
        True,
        False,
        True,
        False,
    ]
    assert [bars.nth(index).evaluate("bar => bar.classList.contains('beside-tumor')") for index in range(4)] == [
        False,
        False,
        True,
        False,
    ]
    expect(page.locator("#slice-summary")).to_have_text(
        "4 slices, 1 with tumor, 2 close to the threshold (1 of them next to a slice with tumor)"
    )
    expect(page.locator("#status")).to_contain_text(
        "2 slices are close to the threshold, 1 of them next to a slice with tumor (review first: slice 3)."
    )
    rows = page.locator("#slice-table tbody tr td:nth-child(4)")
    expect(rows).to_have_text(
        ["No tumor (close to threshold)", "No tumor", "No tumor (close to threshold, next to tumor)", "Tumor"]
    )
    page.locator("#slice-slider").fill("3")
    expect(page.locator("#near-flag")).to_have_text(
        "Close to the threshold and next to a slice with tumor: the tumor may go on here. Review this slice first."
    )
    page.locator("#slice-slider").fill("1")
    expect(page.locator("#near-flag")).to_have_text("Close to the threshold: review this slice with care.")
    expect(page.locator("#strip-legend")).to_contain_text("Diamond: close to the threshold and next to a slice")
    page.screenshot(path=screenshot_dir / "web-near-threshold-beside-tumor.png", full_page=True)


# -------------------------------------------------------------------------------------------------- 8: /docs


def test_the_docs_link_says_it_needs_the_key_once_keys_are_in_use(page: Page, live_server: str) -> None:
    """With keys on, /docs opened a raw JSON 401 with no warning."""
    page.goto(live_server)
    note = page.locator("#docs-key-note")
    expect(note).to_be_hidden()

    page.fill("#api-key", "research-key-1")
    expect(note).to_be_visible()
    expect(note).to_contain_text("/docs answers 401 in a browser")
    page.fill("#api-key", "")
    expect(note).to_be_hidden()

    body = {"error": {"code": "unauthorized", "message": "a valid X-API-Key header is required"}}
    page.route(
        "**/v1/**",
        lambda route: route.fulfill(status=401, content_type="application/json", body=json.dumps(body)),
    )
    page.set_input_files("#file-input", TUMOR_SLICE)
    expect(page.locator("#error-title")).to_contain_text("The server needs a valid API key")
    expect(note).to_be_visible()


# ------------------------------------------------------------------------------------------------- 9: Cancel


def test_cancel_marks_the_selected_files_line_as_not_analysed(page: Page, live_server: str) -> None:
    """The line "Selected: 4 files …" stayed under the drop zone, with no result, as if it were the files shown."""
    held: list[Route] = []
    page.route("**/v1/predict/batch*", lambda route: held.append(route))
    page.goto(live_server)
    page.set_input_files("#file-input", RASTER_SERIES)
    expect(page.locator("#file-name")).to_contain_text("Selected: 4 files")
    page.wait_for_function("() => document.querySelector('#progress-label').textContent.startsWith('Uploading')")

    page.click("#cancel")

    expect(page.locator("#status")).to_have_text("Analysis cancelled.")
    expect(page.locator("#file-name")).to_have_text(
        f"Selected: 4 files, {RASTER_SERIES[0].name} … {RASTER_SERIES[-1].name} (cancelled, not analysed)"
    )
    for route in held:
        release(route)
