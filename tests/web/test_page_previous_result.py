"""Browser review 53: what the page keeps and says while a new choice is on its way, and after it fails.

F1: the result on screen was hidden as soon as new files were chosen, so a wrong file or a Cancel lost it (its
files had to be found and sent again). F4: an answer cut short was shown in the JSON parser's words, without "Try
again"."""

from __future__ import annotations

from playwright.sync_api import Page, Route, expect

from tests.conftest import TUMOR_SLICE
from tests.web.test_page_attack import PageWatch

RESULT_TIMEOUT_MS = 60_000
TEXT_FILE = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image\n"}


def analyse_one_slice(page: Page) -> str:
    """The tumor slice analysed; returns the probability shown."""
    page.set_input_files("#file-input", TUMOR_SLICE)
    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#previous-note")).to_be_hidden()
    return page.locator("#probability").inner_text()


def test_a_wrong_file_chosen_next_keeps_the_result_shown_as_the_previous_one(page: Page, live_server: str) -> None:
    watch = PageWatch(page)
    page.goto(live_server)
    probability = analyse_one_slice(page)

    page.set_input_files("#file-input", files=[TEXT_FILE])

    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#probability")).to_have_text(probability)
    expect(page.locator("#previous-note")).to_have_text(
        f"Previous result ({TUMOR_SLICE.name}); the new choice was not analysed."
    )
    expect(page.locator("#download-masks")).not_to_have_attribute("aria-disabled", "true")
    watch.assert_clean(page)


def test_while_a_new_choice_is_analysed_the_previous_result_stays_with_its_downloads_paused_until_cancel(
    page: Page, live_server: str
) -> None:
    page.goto(live_server)
    probability = analyse_one_slice(page)
    held: list[Route] = []
    page.route("**/v1/predict/batch*", lambda route: held.append(route))  # the server never answers

    page.set_input_files("#file-input", TUMOR_SLICE)

    expect(page.locator("#cancel")).to_be_visible()
    expect(page.locator("#previous-note")).to_have_text(
        f"Previous result ({TUMOR_SLICE.name}), shown until the new choice is analysed."
    )
    expect(page.locator("#result")).to_have_class("card previous")
    expect(page.locator("#download-masks")).to_have_attribute("aria-disabled", "true")
    expect(page.locator("#pixel-spacing")).to_have_attribute("readonly", "")  # the previous result's (review 54 F2)
    downloads: list[str] = []
    page.on("download", lambda download: downloads.append(download.suggested_filename))
    page.click("#download-masks", force=True)  # past Playwright's own check: what a click would do
    page.wait_for_timeout(500)
    assert downloads == []  # a paused download saves nothing

    page.click("#cancel")

    expect(page.locator("#status")).to_have_text("Analysis cancelled.")
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#probability")).to_have_text(probability)
    expect(page.locator("#previous-note")).to_contain_text("the new choice was not analysed")
    expect(page.locator("#download-masks")).not_to_have_attribute("aria-disabled", "true")
    expect(page.locator("#pixel-spacing")).not_to_have_attribute("readonly", "")
    page.unroute("**/v1/predict/batch*")
    page.click("#download-masks")
    page.wait_for_timeout(500)
    assert len(downloads) == 1  # the kept result's own masks

    analyse_one_slice(page)  # a new result is the current one again
    expect(page.locator("#result")).to_have_class("card")


def test_an_answer_cut_short_is_said_in_words_and_can_be_sent_again(page: Page, live_server: str) -> None:
    cut: list[str] = []

    def cut_once(route: Route) -> None:
        if cut:
            route.continue_()
            return
        cut.append(route.request.url)
        route.fulfill(status=200, content_type="application/json", body='{"results": [{"tumor_probab')

    page.route("**/v1/predict/batch*", cut_once)
    page.goto(live_server)

    page.set_input_files("#file-input", TUMOR_SLICE)

    expect(page.locator("#error-title")).to_have_text("The service's answer could not be read.")
    expect(page.locator("#error-detail")).to_have_text(
        "the answer arrived incomplete or damaged (27 characters, not a whole JSON document); try again"
    )
    page.click("#retry")
    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#error")).to_be_hidden()
