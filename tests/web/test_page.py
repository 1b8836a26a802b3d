"""The upload page in headless Chromium against the real service (tiny models that call every slice positive)."""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import TUMOR_SLICE

PREDICT_URL_END = "/v1/predict/batch?mask_format=png"
RESULT_TIMEOUT_MS = 30_000
TEXT_FILE = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image\n"}


def is_prediction(response) -> bool:
    return response.url.endswith(PREDICT_URL_END)


def test_page_shows_prediction_overlay_and_mask_download(page: Page, live_server: str, screenshot_dir: Path) -> None:
    page.goto(live_server)
    expect(page.locator("#notice")).to_contain_text("Research use only — not for clinical diagnosis")

    with page.expect_response(is_prediction, timeout=RESULT_TIMEOUT_MS) as answered:
        page.set_input_files("#file-input", TUMOR_SLICE)
    assert answered.value.status == 200
    answer = answered.value.json()
    prediction = answer["results"][0]["prediction"]
    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)

    probability = page.locator("#probability")
    # The exact number rides along in data-value; the text is the same number as a percentage with one decimal.
    assert float(probability.get_attribute("data-value")) == prediction["tumor_probability"]
    shown = probability.inner_text()
    assert shown.endswith(" %")
    assert float(shown.removesuffix(" %")) == pytest.approx(100 * prediction["tumor_probability"], abs=0.05 + 1e-9)
    expect(page.locator("#decision")).to_have_text("Tumor detected")
    expect(page.locator("#comparison")).to_have_text("is at or above")
    expect(page.locator("#threshold")).to_have_text(f"{100 * prediction['threshold']:.1f} %")
    expect(page.locator("#area")).to_contain_text(f"{prediction['mask']['area_pixels']:,} pixels")
    expect(page.locator("#status")).to_contain_text("Tumor detected: tumor probability")
    expect(page.locator("#caption")).to_have_text(f"{TUMOR_SLICE.name}: predicted tumor area filled in orange")
    expect(page.locator("#request-id")).to_have_text(answer["request_id"])
    assert page.evaluate("document.querySelector('#slice-canvas').width") == 256

    download_button = page.locator("#download-masks")
    expect(download_button).to_be_visible()
    page.screenshot(path=screenshot_dir / "web-page-result.png", full_page=True)
    with page.expect_download() as downloaded:
        download_button.click()
    assert downloaded.value.suggested_filename == f"tumor-masks_{TUMOR_SLICE.stem}.zip"
    with zipfile.ZipFile(downloaded.value.path()) as archive:
        assert archive.read(f"{TUMOR_SLICE.stem}_predicted_mask.png") == base64.b64decode(prediction["mask"]["png"])


def test_page_shows_unsupported_type_message_for_text_file(page: Page, live_server: str, screenshot_dir: Path) -> None:
    page.goto(live_server)

    refused = httpx.post(
        f"{live_server}/v1/predict/batch", files={"files": ("notes.txt", TEXT_FILE["buffer"], "text/plain")}
    )
    (failure,) = refused.json()["results"]
    assert failure["error"]["code"] == "unsupported_media_type"
    server_message = failure["error"]["message"]

    page.set_input_files("#file-input", files=[TEXT_FILE])

    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(page.locator("#error-title")).to_have_text(
        "This file type is not supported. Choose a PNG, JPEG, TIFF or DICOM slice."
    )
    expect(page.locator("#error-detail")).to_have_text(f"Server message: {server_message}")
    expect(page.locator("#result")).to_be_hidden()
    page.screenshot(path=screenshot_dir / "web-page-unsupported-type.png", full_page=True)


def test_page_sends_api_key_and_keeps_it_for_the_tab(page: Page, live_server: str) -> None:
    page.goto(live_server)
    page.fill("#api-key", "research-key-1")

    with page.expect_request(lambda request: request.url.endswith(PREDICT_URL_END)) as sent:
        page.set_input_files("#file-input", TUMOR_SLICE)
    assert sent.value.headers.get("x-api-key") == "research-key-1"
    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)

    page.reload()
    expect(page.locator("#api-key")).to_have_value("research-key-1")


def test_page_sends_no_api_key_header_when_the_field_is_empty(page: Page, live_server: str) -> None:
    page.goto(live_server)

    with page.expect_request(lambda request: request.url.endswith(PREDICT_URL_END)) as sent:
        page.set_input_files("#file-input", TUMOR_SLICE)
    assert "x-api-key" not in sent.value.headers


def test_a_key_typed_and_refused_is_called_not_accepted_not_missing(page: Page, live_server: str) -> None:
    """Browser review 60 F10: a wrong key typed got the words for no key ("Enter it in the API key field"), and the
    user typed the same key again."""
    body = {"error": {"code": "unauthorized", "message": "a valid X-API-Key header is required"}}
    page.route(
        "**/v1/**",
        lambda route: route.fulfill(status=401, content_type="application/json", body=json.dumps(body)),
    )
    page.goto(live_server)
    page.fill("#api-key", "research-key-l")

    page.set_input_files("#file-input", TUMOR_SLICE)

    expect(page.locator("#error-title")).to_have_text(
        "The API key entered was not accepted. Check it (keys are case-sensitive) or ask whoever runs the service for "
        "a valid one."
    )


def test_a_key_typed_while_the_request_went_without_one_is_not_called_refused(page: Page, live_server: str) -> None:
    """Browser review 61 F2: the title looked at the key field when the 401 came, not at the request: a key typed
    while a request without one was on its way was called "not accepted", and the user was sent for another."""
    held = []
    page.route("**/v1/predict/batch**", lambda route: held.append(route))
    page.goto(live_server)

    page.set_input_files("#file-input", TUMOR_SLICE)
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Sending')")
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(50)
    (request,) = held
    assert "x-api-key" not in request.request.headers
    page.fill("#api-key", "research-key-1")
    body = {"error": {"code": "unauthorized", "message": "a valid X-API-Key header is required"}}
    request.fulfill(status=401, content_type="application/json", body=json.dumps(body))

    expect(page.locator("#error-title")).to_have_text(
        "The server needs a valid API key. Enter it in the API key field and try again."
    )


def test_page_file_input_is_first_keyboard_stop(page: Page, live_server: str) -> None:
    page.goto(live_server)

    page.keyboard.press("Tab")

    assert page.evaluate("document.activeElement.id") == "file-input"
    # Visually hidden inputs still need a visible focus: the drop zone label draws it.
    assert page.eval_on_selector("#drop-zone", "zone => getComputedStyle(zone).outlineStyle") == "solid"


@pytest.mark.parametrize(
    ("status", "title"),
    [
        (400, "The file could not be read as an MRI slice."),
        (401, "The server needs a valid API key. Enter it in the API key field and try again."),
        (413, "The file or the image is too large."),
        (422, "The request was incomplete or malformed."),
        (429, "Too many requests for now. Try again in 7 seconds."),
        (503, "The service is not ready to analyse slices. Try again in 7 seconds."),
    ],
)
def test_page_shows_message_for_error_status(page: Page, live_server: str, status: int, title: str) -> None:
    # The service cannot easily be driven into every status, so the browser answers for it, in its error format.
    body = {"error": {"code": f"code_{status}", "message": f"what the server said ({status})"}}
    headers = {"Retry-After": "7"} if status in (429, 503) else {}
    page.route(
        "**/v1/**",
        lambda route: route.fulfill(
            status=status, content_type="application/json", headers=headers, body=json.dumps(body)
        ),
    )
    page.goto(live_server)

    page.set_input_files("#file-input", TUMOR_SLICE)

    expect(page.locator("#error-title")).to_have_text(title)
    expect(page.locator("#error-detail")).to_have_text(f"Server message: what the server said ({status})")
    expect(page.locator("#result")).to_be_hidden()


def test_page_says_why_a_detected_slice_sent_alone_is_not_outlined(page: Page, unsure_live_server: str) -> None:
    page.goto(unsure_live_server)

    with page.expect_response(is_prediction, timeout=RESULT_TIMEOUT_MS) as answered:
        page.set_input_files("#file-input", TUMOR_SLICE)
    prediction = answered.value.json()["results"][0]["prediction"]

    assert prediction["tumor_detected"] is True and prediction["mask"] is None
    expect(page.locator("#decision")).to_have_text("Tumor detected", timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#caption")).to_have_text(
        f"{TUMOR_SLICE.name}: tumor detected, not outlined "
        "(a slice sent alone is outlined only when the model is surer and the outline is more than a speck)"
    )
