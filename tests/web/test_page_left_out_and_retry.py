"""The page's fixes from browser review 40 beyond decoding: each DICOM series left out is named with the server's
reason and a readable role, and an analysis refused as busy right after a cancel waits for the cancelled one and
retries by itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, Route, expect

from tests.conftest import TUMOR_SLICE
from tests.web.test_page_series_answers import RESULT_TIMEOUT_MS, upload_study

# ------------------------------------------------------------------------------- F7: series left out and why


def test_each_series_left_out_is_named_with_the_servers_reason_and_a_readable_role(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Series left out were named without `series_left_out[].evidence`, and a series neither FLAIR nor T1 as a bare
    lower-case "other"."""
    answer = upload_study(page, live_server, tmp_path, (3, "AX FLAIR"), (1, "LOCALIZER"))

    (left_out,) = answer["series_left_out"]
    assert left_out["role"] == "other"
    assert left_out["evidence"]
    expect(page.locator("#series-choice")).to_contain_text(
        f"Left out: Other sequence (series 1, “LOCALIZER”, 3 files): {left_out['evidence']}."
    )


# ------------------------------------------------------------------ F5: refused as busy right after a cancel

BUSY_BODY = {
    "error": {"code": "overloaded", "message": "the inference queue is full (232 of 256 slices waiting); retry in 3 s"}
}
# 3 s, not 1: each test must see this text, or click Cancel, before the retry, on a loaded machine too
WAITING_TEXT = "The server is still finishing the cancelled analysis; trying again in 3 seconds…"


def cancel_an_analysis(page: Page) -> None:
    """Starts an analysis the server never answers, and cancels it."""
    page.route("**/v1/predict/batch*", lambda route: None)  # held: the server is still working on it
    page.set_input_files("#file-input", TUMOR_SLICE)
    expect(page.locator("#status")).to_have_text("Sending the slice…")
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("Analysis cancelled.")
    page.unroute("**/v1/predict/batch*")


def busy_once(sent: list[str], held: int = 0) -> Callable[[Route], None]:
    """A route handler that holds the first `held` requests (never answered), answers the next one 503 overloaded
    (Retry-After: 3) and lets the others through."""

    def handle(route: Route) -> None:
        sent.append(route.request.url)
        if len(sent) == held + 1:
            route.fulfill(
                status=503, content_type="application/json", headers={"Retry-After": "3"}, body=json.dumps(BUSY_BODY)
            )
        elif len(sent) > held:
            route.continue_()

    return handle


def test_an_analysis_refused_as_busy_right_after_a_cancel_says_why_and_retries(page: Page, live_server: str) -> None:
    """After Cancel, the next analysis was refused "The service is busy" by the cancelled request's own slices, which
    the server finishes first; the page now says so and sends the request again after Retry-After."""
    page.goto(live_server)
    cancel_an_analysis(page)
    sent: list[str] = []
    page.route("**/v1/predict/batch*", busy_once(sent))

    page.set_input_files("#file-input", TUMOR_SLICE)

    expect(page.locator("#status")).to_have_text(WAITING_TEXT)
    expect(page.locator("#cancel")).to_be_visible()
    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#error")).to_be_hidden()
    assert len(sent) == 2


def test_an_analysis_replacing_one_and_refused_as_busy_retries(page: Page, live_server: str) -> None:
    """A new choice during an analysis cancels it, and was refused as busy for the same reason."""
    page.goto(live_server)
    sent: list[str] = []
    page.route("**/v1/predict/batch*", busy_once(sent, held=1))
    page.set_input_files("#file-input", TUMOR_SLICE)
    expect(page.locator("#status")).to_have_text("Sending the slice…")

    page.set_input_files("#file-input", TUMOR_SLICE)

    expect(page.locator("#status")).to_have_text(WAITING_TEXT)
    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    assert len(sent) == 3


def test_cancel_while_waiting_for_the_cancelled_analysis_sends_nothing_more(page: Page, live_server: str) -> None:
    page.goto(live_server)
    cancel_an_analysis(page)
    sent: list[str] = []
    page.route("**/v1/predict/batch*", busy_once(sent))
    page.set_input_files("#file-input", TUMOR_SLICE)
    expect(page.locator("#status")).to_have_text(WAITING_TEXT)

    page.click("#cancel")

    expect(page.locator("#status")).to_have_text("Analysis cancelled.")
    page.wait_for_timeout(3500)  # past the Retry-After
    assert len(sent) == 1
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#status")).to_have_text("Analysis cancelled.")


def test_a_busy_refusal_with_no_cancel_before_it_is_shown_not_retried(page: Page, live_server: str) -> None:
    page.goto(live_server)
    sent: list[str] = []
    page.route("**/v1/predict/batch*", busy_once(sent))

    page.set_input_files("#file-input", TUMOR_SLICE)

    expect(page.locator("#error-title")).to_have_text("The service is busy. Try again in 3 seconds.")
    page.wait_for_timeout(3500)  # past the Retry-After
    assert len(sent) == 1


def test_a_retry_after_beyond_a_minute_waits_a_minute(page: Page, live_server: str) -> None:
    """Browser review 41: a Retry-After of days (a proxy's) was waited for as it came, and past 24.8 days it overflowed
    setTimeout, which sent every retry at once. The service asks for at most a minute; the page waits no longer."""
    page.goto(live_server)
    cancel_an_analysis(page)
    sent: list[str] = []

    def busy_for_days(route: Route) -> None:
        sent.append(route.request.url)
        route.fulfill(
            status=503, content_type="application/json", headers={"Retry-After": "3000000"}, body=json.dumps(BUSY_BODY)
        )

    page.route("**/v1/predict/batch*", busy_for_days)
    page.set_input_files("#file-input", TUMOR_SLICE)

    expect(page.locator("#status")).to_have_text(
        "The server is still finishing the cancelled analysis; trying again in 60 seconds…"
    )
    page.wait_for_timeout(1000)
    assert len(sent) == 1
