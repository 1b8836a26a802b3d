"""The page's fixes from browser review 40 beyond decoding: each DICOM series left out is named with the server's
reason and a readable role, and an analysis refused as busy right after a cancel waits for the cancelled one and
retries by itself."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.dicom.builders import Study, mr_series, tumor_channels
from tests.web.test_page_series_answers import upload, write_series

# ------------------------------------------------------------------------------- F7: series left out and why


def test_each_series_left_out_is_named_with_the_servers_reason_and_a_readable_role(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Series left out were named without `series_left_out[].evidence`, and a series neither FLAIR nor T1 as a bare
    lower-case "other"."""
    study = Study()
    flair = mr_series(tumor_channels(), study=study, series_number=3, series_description="AX FLAIR")
    localizer = mr_series(tumor_channels(), study=study, series_number=1, series_description="LOCALIZER")
    paths = write_series([*flair, *localizer], tmp_path)
    page.goto(live_server)

    answer = upload(page, paths)

    (left_out,) = answer["series_left_out"]
    assert left_out["role"] == "other"
    assert left_out["evidence"]
    expect(page.locator("#series-choice")).to_contain_text(
        f"Left out: Other sequence (series 1, “LOCALIZER”, 3 files): {left_out['evidence']}."
    )
