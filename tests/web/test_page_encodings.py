"""The page's fixes from browser review 40: DICOM and TIFF encodings the server reads and the page drew wrong or not at
all (compressed multi-frame files, Big Endian and Deflated data sets, Enhanced MR's per-frame rescale and window,
palette and float TIFFs), compared with pydicom, tifffile and Pillow on the same bytes."""

from __future__ import annotations

from pathlib import Path

import pydicom
from playwright.sync_api import Page, expect

from tests.dicom.builders import legacy_multiframe, mr_series, to_bytes, tumor_channels
from tests.web.test_page_series_answers import upload

# ------------------------------------------------------------- F1: a multi-frame file the page cannot decode


def test_a_multiframe_file_the_page_cannot_decode_is_shown_with_its_masks_on_black(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """A JPEG-LS Enhanced MR file of 3 frames counted as one frame: the page refused the server's answer of 3 slices
    as "the answer holds 3 slices for the 1 in the files sent", and showed no result at all."""
    enhanced = legacy_multiframe(mr_series(tumor_channels()))
    enhanced.compress(pydicom.uid.JPEGLSLossless)
    path = tmp_path / "enhanced.dcm"
    path.write_bytes(to_bytes(enhanced))
    page.goto(live_server)

    answer = upload(page, [path])

    assert len(answer["slices"]) == 3
    expect(page.locator("#error")).to_be_hidden()
    labels = page.locator("#slice-table tbody tr td:nth-child(2)").all_text_contents()
    assert sorted(labels) == [f"enhanced.dcm, frame {number}" for number in (1, 2, 3)]
    expect(page.locator("#caption")).to_contain_text("the image itself cannot be drawn in this browser")
