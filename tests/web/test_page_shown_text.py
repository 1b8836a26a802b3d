"""Attack review 61 F5, in headless Chromium against the real service: a file name or a Series Description holding an
unclosed right-to-left override (U+202E) turned the rest of its line around, and control characters were shown as
they came. The page shows them as U+FFFD, and a long description cut."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.dicom.builders import mr_series, tumor_channels
from tests.web.test_page_series_answers import upload, write_series

OVERRIDE = "\u202e"


def test_overrides_and_controls_from_files_are_not_shown_as_they_are(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    series = mr_series(tumor_channels())
    for dataset in series:
        dataset.SpecificCharacterSet = "ISO_IR 192"
        dataset.SeriesDescription = f"AX FLAIR {OVERRIDE}\x07 " + "x" * 80
    names = [f"IM{index}{OVERRIDE}mcd.dcm" for index in range(len(series))]
    page.goto(live_server)

    upload(page, write_series(series, tmp_path, names))

    selected = page.locator("#file-name")
    expect(selected).to_contain_text("IM0\ufffdmcd.dcm")
    choice = page.locator("#series-choice")
    expect(choice).to_contain_text("“AX FLAIR \ufffd\ufffd xxxx")
    expect(choice).to_contain_text("x…”")
    shown = page.locator("body").inner_text()
    assert OVERRIDE not in shown and "\x07" not in shown
