"""Browser review 64 F7, F9, in headless Chromium against the real service: images beside fewer DICOM images are no
viewer icons, and the choice is refused as mixed before anything is sent; DICOM data sets written without the Part 10
header are named apart, with what to do, not as files that are no DICOM at all."""

from __future__ import annotations

import shutil
from pathlib import Path

from playwright.sync_api import Page, expect
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from tests.conftest import TUMOR_SERIES
from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.web.test_page_series_answers import upload, write_series
from tests.web.test_page_too_many_files import batch_requests


def test_jpeg_slices_beside_a_lone_dicom_image_are_refused_as_mixed_before_sending(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """F7: one DICOM file among 13 JPEG slices was analysed alone, the slices left out as its viewer's icons."""
    (dicom,) = write_series(mr_series(tumor_channels())[:1], tmp_path)
    slices = [Path(shutil.copy(path, tmp_path)) for path in TUMOR_SERIES[:3]]
    page.goto(live_server)
    sent = batch_requests(page)

    page.set_input_files("#file-input", [dicom, *slices])

    expect(page.locator("#error-title")).to_have_text(
        "DICOM files and PNG, JPEG or TIFF images cannot be analysed together. Choose one kind."
    )
    expect(page.locator("#error-detail")).to_contain_text("1 DICOM image (IM0000) and 3 PNG, JPEG or TIFF images (")
    assert sent == []


def test_dicom_data_sets_without_the_part_10_header_are_named_with_what_to_do(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """F9: data sets some exporters write without the preamble and "DICM", beside Part 10 files, were left out as
    "neither DICOM images nor PNG, JPEG or TIFF"; the server's advice for them never showed."""
    series = mr_series(tumor_channels())
    (part10,) = write_series(series[:1], tmp_path)
    bare = []
    for index, dataset in enumerate(series[1:], start=1):
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_dataset(buffer, dataset)  # no preamble, no file meta
        assert buffer.getvalue()[:2] == b"\x08\x00" and buffer.getvalue()[128:132] != b"DICM"
        bare.append(tmp_path / f"IM{index:04d}.dcm")
        bare[-1].write_bytes(buffer.getvalue())
    assert to_bytes(series[0])[128:132] == b"DICM"
    page.goto(live_server)

    upload(page, [part10, *bare])

    expect(page.locator("#file-name")).to_have_text(
        'Selected: IM0000 (left out, DICOM data sets without the Part 10 header (no "DICM" at byte 128; write them as '
        "Part 10 files, e.g. with dcmtk's dcmconv +F): IM0001.dcm, IM0002.dcm)"
    )
