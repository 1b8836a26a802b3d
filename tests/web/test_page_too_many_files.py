"""Browser review 44 F6: a series of more files than the service takes (MAX_BATCH_FILES) was uploaded whole and then
refused with "Too many files for one request", without saying what to do. The page now reads the limit from
`GET /v1/models` and refuses before uploading, saying what the user can do; the server's 413 says it too."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, Request, expect

from app.settings import Settings
from tests.conftest import TUMOR_FREE_SLICE, TUMOR_SERIES
from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.web.conftest import serving
from tests.web.test_page_series_answers import RESULT_TIMEOUT_MS

MAX_BATCH_FILES = 3
MAX_UPLOAD_BYTES = 100_000
MAX_BATCH_UPLOAD_BYTES = 96_000  # the four slices (94 kB and their framing) pass, for the server's own refusal
FOUR_SLICES = [TUMOR_FREE_SLICE, *TUMOR_SERIES]
ADVICE = (
    "Ask whoever runs the service for a higher MAX_BATCH_FILES, or analyse the series in parts of neighbouring slices: "
    "for a DICOM study read with its T1 series, each part must hold the files of every series for the same slices, or "
    "that part is read from FLAIR alone. The tumor volumes of the parts must then be added by hand, and the series "
    "clean-up across the split is lost."
)  # browser review 59 F3: for a three-series study, a split by file name read each part from FLAIR alone


@pytest.fixture(scope="module")
def limited_server(tiny_model_dir: Path) -> Iterator[str]:
    settings = Settings(
        model_dir=tiny_model_dir,
        max_batch_files=MAX_BATCH_FILES,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_batch_upload_bytes=MAX_BATCH_UPLOAD_BYTES,
    )
    with serving(settings) as base_url:
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
        f"4 files chosen; the service takes at most {MAX_BATCH_FILES} in one analysis."
    )
    expect(page.locator("#error-detail")).to_have_text(ADVICE)
    expect(page.locator("#file-name")).to_contain_text("Selected: 4 files")  # review 69 F6: what was refused
    expect(page.locator("#retry")).to_be_hidden()  # the same files would be refused again
    expect(page.locator("#progress-row")).to_be_hidden()
    assert sent == []


def test_the_files_in_a_zip_are_counted_before_it_is_unpacked(page: Page, limited_server: str, tmp_path: Path) -> None:
    """Browser review 63 F7: a zip of 4,096 small entries was unpacked whole (19 s) before it was refused as more files
    than one analysis takes, said as "4096 files chosen" of one zip. The notes beside them are not counted."""
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as written:
        for index, path in enumerate(FOUR_SLICES):
            written.writestr(f"patient/slice_{index}.jpg", path.read_bytes())
        written.writestr("patient/README.TXT", b"slices of one patient")
    page.add_init_script(UNPACKS_COUNTED)
    page.goto(limited_server)
    sent = batch_requests(page)

    page.set_input_files("#file-input", archive)

    expect(page.locator("#error-title")).to_have_text(
        f"4 files chosen, counting those in the zip; the service takes at most {MAX_BATCH_FILES} in one analysis."
    )
    assert page.evaluate("window.unpacks") == 0
    assert sent == []


def test_a_zipped_patient_cd_is_counted_by_what_is_sent(page: Page, limited_server: str, tmp_path: Path) -> None:
    """Review 74 F2: counted before unpacking, a zipped CD of 3 DICOM slices, its viewer's icons and files was refused
    as too many files, while the same files chosen loose were analysed."""
    archive = tmp_path / "cd.zip"
    icon = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(icon, format="PNG")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as written:
        for index, dataset in enumerate(mr_series(tumor_channels()[:MAX_BATCH_FILES])):
            written.writestr(f"CD/DICOM/IM{index:04d}", to_bytes(dataset))
        for name in ("viewer_icon.png", "logo.png"):
            written.writestr(f"CD/{name}", icon.getvalue())
        written.writestr("CD/VIEWER.EXE", b"MZ" + bytes(64))
    page.goto(limited_server)

    page.set_input_files("#file-input", archive)

    # Past the count: the 3 slices are what is sent (then over this server's tiny MAX_BATCH_UPLOAD_BYTES together).
    expect(page.locator("#file-name")).to_contain_text("Selected: 3 files, IM0000 … IM0002", timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#file-name")).to_contain_text("images beside the DICOM images: logo.png, viewer_icon.png")
    expect(page.locator("#error-title")).not_to_contain_text("files chosen")


# DecompressionStream counted: each zip entry unpacked is one.
UNPACKS_COUNTED = """
    window.unpacks = 0;
    const Counted = class extends DecompressionStream {
        constructor(format) {
            super(format);
            window.unpacks += 1;
        }
    };
    window.DecompressionStream = Counted;
"""


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


def test_files_larger_together_than_a_request_takes_are_refused_before_uploading(
    page: Page, limited_server: str, tmp_path: Path
) -> None:
    """Browser review 60 F1: files each under MAX_UPLOAD_BYTES and over MAX_BATCH_UPLOAD_BYTES together were uploaded
    whole, then refused; `GET /v1/models` says that limit too now."""
    files = []
    for name in ("first.png", "second.png"):
        path = tmp_path / name
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(60_000 - 8))
        files.append(path)
    page.goto(limited_server)
    sent = batch_requests(page)

    page.set_input_files("#file-input", files)

    expect(page.locator("#error-title")).to_have_text(
        "2 files, 120,400 bytes together; the service takes at most 96,000 bytes in one analysis."
    )
    expect(page.locator("#error-detail")).to_contain_text("MAX_BATCH_UPLOAD_BYTES")
    expect(page.locator("#progress-row")).to_be_hidden()
    assert sent == []


def noise_png(path: Path, seed: int) -> Path:
    """A PNG of noise, about 197 kB: over MAX_UPLOAD_BYTES."""
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)
    assert path.stat().st_size > MAX_UPLOAD_BYTES
    return path


def test_files_larger_than_the_service_takes_are_left_out_before_uploading(
    page: Page, limited_server: str, tmp_path: Path
) -> None:
    """Browser review 59 F4: a 120 MB file was uploaded whole (33.7 s at 4 MB/s) before the service said it takes
    20 MiB at most. `GET /v1/models` says MAX_UPLOAD_BYTES now: the page leaves such a file out before sending, as
    the service leaves it out of a batch, and says so; the others are analysed."""
    first, second = mr_series(tumor_channels()[:2])
    second.add_new((0x0029, 0x0010), "LO", "PRIVATE CREATOR")
    second.add_new((0x0029, 0x1010), "OB", bytes(2 * MAX_UPLOAD_BYTES))  # a scanner's private header data
    dicom, large = tmp_path / "slice.dcm", tmp_path / "large.dcm"
    dicom.write_bytes(to_bytes(first))
    large.write_bytes(to_bytes(second))
    page.goto(limited_server)

    with page.expect_response(lambda response: "/v1/predict/batch" in response.url) as answered:
        page.set_input_files("#file-input", [dicom, large])

    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#file-name")).to_contain_text("left out, larger than the service takes (0.1 MiB): large.dcm")
    assert len(answered.value.json()["slices"]) == 1  # the large file never went


def test_a_slice_of_a_series_larger_than_the_service_takes_refuses_the_series_before_uploading(
    page: Page, limited_server: str, tmp_path: Path
) -> None:
    """Browser review 60 F5: left out, a slice of a PNG/JPEG/TIFF series vanished without a gap: its neighbours were
    joined, the volume short with no caveat. A DICOM series' positions would show the gap; a raster one's cannot."""
    large = noise_png(tmp_path / "slice_2.png", 60)
    page.goto(limited_server)
    sent = batch_requests(page)

    page.set_input_files("#file-input", [TUMOR_SERIES[0], large, TUMOR_SERIES[1]])

    expect(page.locator("#error-title")).to_contain_text("Too large to upload: slice_2.png")
    expect(page.locator("#error-detail")).to_contain_text("left out, this one would leave a gap")
    # Of two slices, the one left was analysed alone, as a single slice (browser review 62 F4).
    page.goto(limited_server)
    page.set_input_files("#file-input", [TUMOR_SERIES[0], large])
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-title")).to_contain_text("Too large to upload: slice_2.png")
    assert sent == []


def test_a_choice_of_files_all_larger_than_the_service_takes_is_refused_before_uploading(
    page: Page, limited_server: str, tmp_path: Path
) -> None:
    files = [noise_png(tmp_path / "first.png", 1), noise_png(tmp_path / "second.png", 2)]
    page.goto(limited_server)
    sent = batch_requests(page)

    page.set_input_files("#file-input", files)

    expect(page.locator("#error-title")).to_have_text(
        re.compile(
            r"Too large to upload: first\.png, second\.png \(0\.2 MiB the largest\); the service takes files of at "
            r"most 0\.1 MiB\."
        )
    )
    expect(page.locator("#error-detail")).to_contain_text("MAX_UPLOAD_BYTES")
    expect(page.locator("#progress-row")).to_be_hidden()
    assert sent == []


def test_sizes_just_over_the_limit_are_told_in_bytes(page: Page, limited_server: str, tmp_path: Path) -> None:
    """Review 69 F5: a file one byte over a limit read "(0.1 MiB); ... at most 0.1 MiB"."""
    files = []
    for name in ("first.png", "second.png"):
        path = tmp_path / name
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD_BYTES + 1 - 8))
        files.append(path)
    page.goto(limited_server)

    page.set_input_files("#file-input", files)

    expect(page.locator("#error-title")).to_have_text(
        "Too large to upload: first.png, second.png (100,001 bytes the largest); the service takes files of at most "
        "100,000 bytes."
    )
