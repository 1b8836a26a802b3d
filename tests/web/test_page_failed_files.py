"""Browser review 44 F5: the files of a series that could not be analysed were one unbroken paragraph (233 copies of
slices made 40,000 characters). They are now grouped by reason, each with its count and a few names, the rest folded
into a <details>."""

from __future__ import annotations

import shutil
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.conftest import TUMOR_SERIES
from tests.web.test_page_series_answers import upload

COPIES = 8


def test_failed_files_are_grouped_by_reason_with_the_rest_folded(page: Page, live_server: str, tmp_path: Path) -> None:
    slices = [shutil.copy(path, tmp_path / f"a_{n}.jpg") for n, path in enumerate(TUMOR_SERIES)]
    copies = [shutil.copy(TUMOR_SERIES[0], tmp_path / f"b_{n:02d}.jpg") for n in range(COPIES)]
    broken = tmp_path / "c_broken.jpg"
    broken.write_bytes(TUMOR_SERIES[1].read_bytes()[:300])  # starts as a JPEG, breaks off
    page.goto(live_server)

    answer = upload(page, [*slices, *copies, broken])

    codes = [item["error"]["code"] for item in answer["results"] if not item["ok"]]
    assert codes == ["repeated_slice"] * COPIES + ["undecodable_image"]
    failures = page.locator("#file-errors")
    expect(failures.locator("> p")).to_have_text(f"{COPIES + 1} files could not be analysed:")
    groups = failures.locator("> ul > li")
    expect(groups).to_have_count(2)
    repeated, undecodable = groups.nth(0), groups.nth(1)
    expect(repeated.locator("> p").first).to_have_text(
        f"{COPIES} files: The file holds the same slice as another file chosen."
    )
    shown = repeated.locator("> ul > li").all_text_contents()
    assert [text.split(" (")[0] for text in shown] == ["b_00.jpg", "b_01.jpg", "b_02.jpg"]
    folded = repeated.locator("details")
    expect(folded.locator("summary")).to_have_text(f"{COPIES - 3} more files")
    expect(folded).not_to_have_attribute("open", "")
    expect(folded.locator("li")).to_have_count(COPIES - 3)
    expect(folded.locator("li").last).to_contain_text(f"b_{COPIES - 1:02d}.jpg (")
    expect(undecodable.locator("> p").first).to_have_text(
        "1 file: The image file is damaged or cut short and could not be decoded."
    )
    expect(undecodable).to_contain_text("c_broken.jpg (")
    expect(undecodable.locator("details")).to_have_count(0)
    # Folded, the list takes a few lines, not a paragraph per failure.
    assert failures.evaluate("element => element.innerText.length") < 1500
