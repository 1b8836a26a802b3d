"""Browser review 44 F4: a refusal that the same files may pass later (busy, rate-limited, a key missing, the network)
said "Try again in N seconds" but offered no way to, short of choosing all the files again. The error now has a "Try
again" button that sends the files already chosen, disabled until Retry-After has passed; Enter in the key field
after a 401 tries again too."""

from __future__ import annotations

import json
from collections.abc import Callable

from playwright.sync_api import Page, Route, expect

from tests.conftest import TUMOR_SLICE
from tests.web.test_page_series_answers import RESULT_TIMEOUT_MS

BATCH_ROUTE = "**/v1/predict/batch*"


def refused_once(
    sent: list[dict[str, str]], status: int, body: dict, headers: dict[str, str] | None = None
) -> Callable:
    """A route handler that answers the first request `status` with `body` and lets the others through to the
    service; `sent` collects every request's headers."""

    def handle(route: Route) -> None:
        sent.append(route.request.headers)
        if len(sent) == 1:
            route.fulfill(status=status, content_type="application/json", headers=headers or {}, body=json.dumps(body))
        else:
            route.continue_()

    return handle


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def test_a_busy_refusal_offers_try_again_once_retry_after_has_passed(page: Page, live_server: str) -> None:
    page.goto(live_server)
    sent: list[dict[str, str]] = []
    busy = error_body("overloaded", "the inference queue has room for 2 more slices; retry in about 1 s")
    # 3 s, not 1: the checks below must all see the button disabled, and a loaded machine's page, driver and test
    # can take most of a second to get there.
    page.route(BATCH_ROUTE, refused_once(sent, 503, busy, {"Retry-After": "3"}))
    page.set_input_files("#file-input", TUMOR_SLICE)

    retry = page.get_by_role("button", name="Try again")
    expect(page.locator("#error-title")).to_have_text("The service is busy. Try again in 3 seconds.")
    expect(retry).to_be_visible()
    expect(retry).to_be_disabled()
    expect(retry).to_be_enabled(timeout=15_000)
    retry.click()

    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#error")).to_be_hidden()
    assert len(sent) == 2


def test_a_rate_limit_refusal_is_retried_from_the_keyboard(page: Page, live_server: str) -> None:
    page.goto(live_server)
    sent: list[dict[str, str]] = []
    page.route(BATCH_ROUTE, refused_once(sent, 429, error_body("rate_limited", "rate limit of 2 requests a minute")))
    page.set_input_files("#file-input", TUMOR_SLICE)

    retry = page.locator("#retry")
    expect(retry).to_be_visible()
    expect(retry).to_be_enabled()  # no Retry-After: nothing to wait for
    page.focus("#api-key")
    page.keyboard.press("Tab")  # the next stop after the key field
    expect(retry).to_be_focused()
    outline = retry.evaluate("button => getComputedStyle(button).outlineStyle")
    assert outline == "solid"  # the focus is visible
    page.keyboard.press("Enter")

    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    assert len(sent) == 2


def test_a_network_error_offers_try_again(page: Page, live_server: str) -> None:
    page.goto(live_server)
    sent: list[str] = []

    def drop_first(route: Route) -> None:
        sent.append(route.request.url)
        if len(sent) == 1:
            route.abort()
        else:
            route.continue_()

    page.route(BATCH_ROUTE, drop_first)
    page.set_input_files("#file-input", TUMOR_SLICE)
    expect(page.locator("#error-title")).to_have_text(
        "Could not reach the service. Check the connection and try again."
    )

    page.click("#retry")

    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    assert len(sent) == 2


def test_enter_in_the_key_field_after_a_401_sends_the_files_again_with_the_key(page: Page, live_server: str) -> None:
    page.goto(live_server)
    sent: list[dict[str, str]] = []
    page.route(BATCH_ROUTE, refused_once(sent, 401, error_body("unauthorized", "missing or invalid API key")))
    page.set_input_files("#file-input", TUMOR_SLICE)
    expect(page.locator("#retry")).to_be_visible()

    page.fill("#api-key", "research-key-1")
    page.press("#api-key", "Enter")

    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    assert len(sent) == 2
    assert sent[1].get("x-api-key") == "research-key-1"


def test_enter_in_the_key_field_after_another_refusal_sends_nothing(page: Page, live_server: str) -> None:
    page.goto(live_server)
    sent: list[dict[str, str]] = []
    page.route(BATCH_ROUTE, refused_once(sent, 503, error_body("model_unavailable", "the models are loading")))
    page.set_input_files("#file-input", TUMOR_SLICE)
    expect(page.locator("#retry")).to_be_visible()

    page.press("#api-key", "Enter")

    page.wait_for_timeout(300)
    assert len(sent) == 1


def test_a_refusal_of_the_files_themselves_offers_no_try_again(page: Page, live_server: str) -> None:
    page.goto(live_server)
    sent: list[dict[str, str]] = []
    refusal = error_body("unsupported_media_type", "the file is not a PNG, JPEG, TIFF or DICOM image")
    page.route(BATCH_ROUTE, refused_once(sent, 415, refusal))
    page.set_input_files("#file-input", TUMOR_SLICE)

    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#retry")).to_be_hidden()
