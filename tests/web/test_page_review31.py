"""The page's fixes from browser review 31: a DICOM slice drawn and named from the file the server read, not from a
refused repeat of its instance."""

from __future__ import annotations

from pathlib import Path

import pydicom
from playwright.sync_api import Page, expect

from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.web.test_page_series_answers import upload, write_series


def brightest_drawn(page: Page) -> int:
    """The brightest grey value on the slice canvas as drawn now."""
    return page.evaluate(
        """() => {
            const canvas = document.querySelector("#slice-canvas");
            const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
            let brightest = 0;
            for (let i = 0; i < data.length; i += 4) brightest = Math.max(brightest, data[i]);
            return brightest;
        }"""
    )


# ------------------------------------------------------------------ F1: a refused repeat of a DICOM instance


def test_a_refused_repeat_of_a_dicom_instance_is_neither_drawn_nor_named_for_the_slice_read(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """A second file with the SOP Instance UID of an earlier one is refused in its place, and the first is read; the
    page drew the second file's pixels under the first one's mask and named the slice after the refused file."""
    paths = write_series(mr_series(tumor_channels()), tmp_path)
    repeat = pydicom.dcmread(paths[1])
    repeat.PixelData = bytes(len(repeat.PixelData))  # a re-export of the same instance, here all black
    (tmp_path / "IM9999").write_bytes(to_bytes(repeat))
    page.goto(live_server)

    answer = upload(page, [*paths, tmp_path / "IM9999"])

    assert [failure["index"] for failure in answer["file_errors"]] == [3]
    expect(page.locator("#file-errors")).to_contain_text("IM9999 (")
    expect(page.locator("#slice-table tbody tr td:nth-child(2)")).to_have_text(["IM0000", "IM0001", "IM0002"])
    page.locator("#slice-slider").fill("2")
    expect(page.locator("#caption")).to_contain_text("Slice 2 of 3 (IM0001)")
    assert brightest_drawn(page) > 100  # the slice read, not the black repeat
