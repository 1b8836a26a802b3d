"""Browser review 44 F6: a series of more files than the service takes (MAX_BATCH_FILES) was uploaded whole and then
refused with "Too many files for one request", without saying what to do. The page now reads the limit from
`GET /v1/models` and refuses before uploading, saying what the user can do; the server's 413 says it too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Request, expect

from app.settings import Settings
from tests.conftest import TUMOR_FREE_SLICE, TUMOR_SERIES
from tests.web.conftest import serving
from tests.web.test_page_series_answers import RESULT_TIMEOUT_MS

MAX_BATCH_FILES = 3
FOUR_SLICES = [TUMOR_FREE_SLICE, *TUMOR_SERIES]
ADVICE = (
    "Ask whoever runs the service for a higher MAX_BATCH_FILES, or analyse the series in parts: the tumor volumes of "
    "the parts must then be added by hand, and the series clean-up across the split is lost."
)


@pytest.fixture(scope="module")
def limited_server(tiny_model_dir: Path) -> Iterator[str]:
    with serving(Settings(model_dir=tiny_model_dir, max_batch_files=MAX_BATCH_FILES)) as base_url:
        yield base_url


def batch_requests(page: Page) -> list[str]:
    """The URLs of the analyses the page sends, collected from now on."""
    sent: list[str] = []

    def note(request: Request) -> None:
        if "/v1/predict/batch" in request.url:
            sent.append(request.url)

    page.on("request", note)
    return sent


def test_more_files_than_the_service_takes_are_refused_before_uploading(page: Page, limited_server: str) -> None:
    page.goto(limited_server)
    sent = batch_requests(page)

    page.set_input_files("#file-input", FOUR_SLICES)

    expect(page.locator("#error-title")).to_have_text(
        f"This series has 4 files; the service takes at most {MAX_BATCH_FILES} in one analysis."
    )
    expect(page.locator("#error-detail")).to_have_text(ADVICE)
    expect(page.locator("#retry")).to_be_hidden()  # the same files would be refused again
    expect(page.locator("#progress-row")).to_be_hidden()
    assert sent == []


def test_as_many_files_as_the_service_takes_are_analysed(page: Page, limited_server: str) -> None:
    page.goto(limited_server)

    page.set_input_files("#file-input", FOUR_SLICES[:MAX_BATCH_FILES])

    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)


def test_without_the_limit_the_servers_refusal_says_what_to_do(page: Page, limited_server: str) -> None:
    """An older service, or a `GET /v1/models` that fails: the files go, and the 413 gets the same advice."""
    page.route("**/v1/models", lambda route: route.abort())
    page.goto(limited_server)

    page.set_input_files("#file-input", FOUR_SLICES)

    expect(page.locator("#error-title")).to_have_text(f"Too many files for one analysis. {ADVICE}")
    expect(page.locator("#error-detail")).to_have_text(
        f"Server message: a batch may hold at most {MAX_BATCH_FILES} files (MAX_BATCH_FILES); got 4"
    )
