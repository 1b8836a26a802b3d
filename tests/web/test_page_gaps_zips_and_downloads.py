"""What the page makes of a series' files: Enhanced MR (multi-frame) slices get their areas in mm² from the
functional groups' Pixel Measures; a signed 8-bit TIFF is drawn with its signed values; a gap's size is said where
it is drawn and on the slice after it; slices.csv places each slice (position, slices missing before it); an empty
zip and a zip inside a zip get their own message; the downloads are named after the series."""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from playwright.sync_api import Page, expect

from tests.dicom.builders import Study, legacy_multiframe, mr_series, to_bytes, tumor_channels
from tests.web.test_page_series_answers import RASTER_SERIES, RESULT_TIMEOUT_MS, upload, write_series
from tests.web.test_page_series_drawing import drawn_slice
from tests.web.test_series_view import assert_no_axe_violations


def slices_csv(page: Page) -> tuple[str, list[dict]]:
    """The downloaded masks zip's name and its slices.csv rows."""
    with page.expect_download(timeout=RESULT_TIMEOUT_MS) as downloaded:
        page.click("#download-masks")
    with zipfile.ZipFile(downloaded.value.path()) as archive:
        rows = list(csv.DictReader(io.StringIO(archive.read("slices.csv").decode())))
    return downloaded.value.suggested_filename, rows


# ------------------------------------------------------------- F1: Enhanced MR's Pixel Spacing in functional groups


def test_enhanced_mr_slices_get_their_area_in_mm2_from_the_functional_groups(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """An Enhanced MR image keeps Pixel Spacing in the Shared (or Per-frame) Functional Groups' Pixel Measures: the
    page read it at the top level only, so the table, the Slice area line and slices.csv had no mm² at all."""
    enhanced = legacy_multiframe(mr_series(tumor_channels()))
    assert "PixelSpacing" not in enhanced  # only in the functional groups
    (row_mm, column_mm) = enhanced.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    # The second frame's own spacing comes first, as the server takes it (within the 1 % the slices of one series
    # may differ by: more is refused).
    measures = pydicom.Dataset()
    measures.PixelSpacing = [0.94, 0.94]
    enhanced.PerFrameFunctionalGroupsSequence[1].PixelMeasuresSequence = [measures]
    path = tmp_path / "enhanced.dcm"
    path.write_bytes(to_bytes(enhanced))
    page.goto(live_server)

    answer = upload(page, [path])

    expected = {}
    for item in answer["slices"]:
        spacing = 0.94 * 0.94 if item["frame_number"] == 2 else row_mm * column_mm
        mask = item["prediction"]["mask"]
        expected[item["frame_number"]] = mask["area_pixels"] * spacing if mask else None
    assert any(area for area in expected.values())
    _, rows = slices_csv(page)
    for row in rows:
        frame = int(row["file"].rsplit("frame ", 1)[1])
        if expected[frame] is None:
            assert row["area_mm2"] == "0"
        else:
            assert float(row["area_mm2"]) == pytest.approx(expected[frame])
    cells = page.locator("#slice-table tbody tr td:nth-child(6)")
    assert "–" not in cells.all_inner_texts()
    page.locator("#slice-slider").fill("1")
    if rows[0]["area_mm2"] != "0":
        expect(page.locator("#area")).to_contain_text(f"{float(rows[0]['area_mm2']):,.1f} mm²")


# ---------------------------------------------------------------------------------- F5: signed 8-bit TIFF


def test_a_signed_8_bit_tiff_is_drawn_as_the_same_values_stored_in_16_bits(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """readTiff read 8-bit samples unsigned whatever their SampleFormat: an int8 slice (-64 … 63) was drawn wrapped,
    its background (-64, read as 192) light grey and its brightest tissue black; the server reads it signed."""
    values = (tumor_channels()[0].astype(np.int16) // 2 - 64).clip(-128, 127)
    assert values.min() < 0 < values.max()
    page.goto(live_server)
    drawn = {}
    for dtype in (np.int16, np.int8):
        path = tmp_path / f"slice_{np.dtype(dtype).name}.tif"
        tifffile.imwrite(path, values.astype(dtype), photometric="minisblack")
        upload(page, [path])
        drawn[np.dtype(dtype).name] = drawn_slice(page)

    assert drawn["int8"][:2] == drawn["int16"][:2], "the default window"
    differing = int(np.count_nonzero(np.abs(np.array(drawn["int8"][2]) - np.array(drawn["int16"][2])) > 1))
    assert differing == 0, f"{differing} pixels drawn otherwise than the int16 slice of the same values"


# ------------------------------------------------------------------------- F3 and F4: the size of a gap


def two_slabs(tmp_path: Path) -> list[Path]:
    """Two slabs of 3 slices, 5 mm apart within each and 250 mm apart between them: 49 slices missing between."""
    datasets = mr_series(tumor_channels() + tumor_channels())
    for dataset in datasets[3:]:
        dataset.ImagePositionPatient = [*dataset.ImagePositionPatient[:2], dataset.ImagePositionPatient[2] + 250]
    return write_series(datasets, tmp_path)


def test_a_gap_longer_than_drawn_shows_its_count_and_the_slice_after_it_says_so(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """A gap of 49 slices was drawn as 16 hatched slots with no count, under a legend saying each is "a missing
    slice"; the gap elements had no label, and the caption and value text of the slice after it read as for any
    slice."""
    page.goto(live_server)

    answer = upload(page, two_slabs(tmp_path))

    missing = answer["slices"][3]["slices_missing_before"]
    assert missing > 16
    assert answer["slices_missing"] == missing
    items = page.locator("#strip > div:not(.strip-threshold)")
    kinds = items.evaluate_all("(items) => items.map((item) => item.className.split(' ')[0])")
    assert kinds == ["strip-bar"] * 3 + ["strip-gap"] + ["strip-bar"] * 3
    gap = page.locator("#strip .strip-gap")
    expect(gap).to_have_attribute("aria-label", f"{missing} slices missing")
    expect(gap).to_have_attribute("title", f"{missing} slices missing (drawn shortened)")
    expect(gap).to_have_class(re.compile(r"\bshortened\b"))
    expect(gap).to_have_text(f"≈ {missing}")
    assert gap.evaluate("(gap) => gap.style.flexGrow") == "16"
    expect(page.locator("#strip-legend")).to_contain_text("a gap of more than 16 is drawn shortened")
    expect(page.locator("#status")).to_contain_text(f"{missing} slices missing between those analysed")

    page.locator("#slice-slider").fill("4")
    expect(page.locator("#caption")).to_contain_text(f"Slice 4 of 6 (IM0003), after {missing} missing slices: ")
    after = re.compile(rf"^Slice 4 of 6, after {missing} missing slices: ")
    expect(page.locator("#slice-slider")).to_have_attribute("aria-valuetext", after)
    expect(page.locator("#strip")).to_have_attribute("aria-valuetext", after)
    page.locator("#slice-slider").fill("3")
    expect(page.locator("#caption")).not_to_contain_text("missing")
    assert_no_axe_violations(page)


def test_a_short_gap_is_one_labelled_space_as_wide_as_its_slices_and_never_a_thin_seam(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Each missing slice was its own unlabelled slot as wide as a bar: 2.3 px in a 176-slice strip, a white seam."""
    datasets = mr_series(tumor_channels() + tumor_channels())
    paths = write_series([datasets[index] for index in (0, 1, 4, 5)], tmp_path)
    page.goto(live_server)

    upload(page, paths)

    gap = page.locator("#strip .strip-gap")
    expect(gap).to_have_count(1)
    expect(gap).to_have_attribute("aria-label", "2 slices missing")
    expect(gap).not_to_have_class(re.compile(r"\bshortened\b"))
    assert gap.evaluate("(gap) => gap.style.flexGrow") == "2"
    assert gap.evaluate("(gap) => getComputedStyle(gap).minWidth") == "6px"
    page.locator("#slice-slider").fill("3")
    expect(page.locator("#caption")).to_contain_text("Slice 3 of 4 (IM0002), after 2 missing slices: ")


# ------------------------------------------------------------------ F2: slices.csv places each slice


def test_slices_csv_gives_each_slice_its_position_and_the_slices_missing_before_it(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """slices.csv had no position and no word of missing slices: a stack of the masks closed the gaps."""
    page.goto(live_server)
    answer = upload(page, two_slabs(tmp_path))

    _, rows = slices_csv(page)

    assert list(rows[0])[:7] == [
        "slice",
        "file",
        "mask_file",
        "tumor_probability",
        "tumor_detected",
        "area_pixels",
        "area_mm2",
    ]
    positions = [item["position_along_normal_mm"] for item in answer["slices"]]
    assert [float(row["position_along_normal_mm"]) for row in rows] == sorted(positions)
    assert [row["slices_missing_before"] for row in rows] == ["0", "0", "0", str(answer["slices_missing"]), "0", "0"]


def test_slices_csv_of_raster_slices_leaves_the_position_empty_and_counts_failed_files(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    broken = tmp_path / "TCGA_DU_A5TW_19980228_20b.png"  # sorts between _20 and _21, as the page orders names
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a whole PNG")
    sent = [RASTER_SERIES[0], RASTER_SERIES[1], broken, RASTER_SERIES[2]]
    page.goto(live_server)
    upload(page, sent)

    _, rows = slices_csv(page)

    assert [row["position_along_normal_mm"] for row in rows] == ["", "", ""]
    assert [row["slices_missing_before"] for row in rows] == ["0", "0", "1"]


def test_a_copy_of_a_raster_slice_is_no_missing_slice(page: Page, live_server: str, tmp_path: Path) -> None:
    """Browser review 44 F1: a copy of a slice ("(1).jpg") was drawn as a gap, said "after 1 missing slice", put a
    caveat on the volume, and slices.csv gave the next slice 1 missing before it (a blank slice inside the tumor for
    whoever stacks the masks); the server reads the copy once and counts no gap."""
    copy = tmp_path / f"{RASTER_SERIES[1].stem} (1){RASTER_SERIES[1].suffix}"  # sorts beside its original
    copy.write_bytes(RASTER_SERIES[1].read_bytes())
    page.goto(live_server)
    upload(page, [RASTER_SERIES[0], copy, RASTER_SERIES[1], RASTER_SERIES[2]])

    _, rows = slices_csv(page)

    assert [row["slices_missing_before"] for row in rows] == ["0", "0", "0"]
    expect(page.locator("#strip .strip-bar")).to_have_count(3)
    expect(page.locator("#strip .strip-gap")).to_have_count(0)


def test_the_masks_zip_holds_the_service_answer_without_the_mask_images(page: Page, live_server: str) -> None:
    """Browser review 44 F3: the zip had masks and slices.csv only: no threshold, model versions or volume notes, and
    the page offered no JSON, so a slice at 36 % marked false could not be read."""
    page.goto(live_server)
    answer = upload(page, RASTER_SERIES)

    with page.expect_download(timeout=RESULT_TIMEOUT_MS) as downloaded:
        page.click("#download-masks")
    with zipfile.ZipFile(downloaded.value.path()) as archive:
        kept = json.loads(archive.read("answer.json"))

    for item in answer["results"]:
        if item["prediction"]["mask"] is not None:
            del item["prediction"]["mask"]["png"]
    assert kept == answer
    assert any(item["prediction"]["mask"] for item in kept["results"])  # the masks' other fields are kept


# ---------------------------------------------------------------------- F6: an empty zip, a zip inside a zip


def expect_error_on_choosing(page: Page, path: Path, title: str, detail: str) -> None:
    """Choosing `path` shows this error (no request is sent)."""
    page.set_input_files("#file-input", [path])
    expect(page.locator("#error-detail")).to_have_text(detail, timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#error-title")).to_have_text(title)
    expect(page.locator("#error")).to_be_visible()


def test_an_empty_zip_and_a_zip_inside_a_zip_get_their_own_message(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """An empty zip starts with the end record (PK 5 6), not a file header, and a zip inside a zip was sent as it is:
    both were titled "This file type is not supported", though the page offers zips."""
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w"):
        pass
    folders = tmp_path / "folders.zip"
    with zipfile.ZipFile(folders, "w") as archive:
        archive.writestr("export/", b"")
        archive.writestr("export/.DS_Store", b"\0" * 16)
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as archive:
        archive.write(RASTER_SERIES[0], "slices/first.jpg")
        archive.write(empty, "slices/inner.zip")
    page.goto(live_server)
    requests = []
    page.on("request", lambda request: requests.append(request) if "/v1/predict" in request.url else None)

    no_slices = "The zip holds no slices. Choose a zip of PNG, JPEG, TIFF or DICOM slices."
    expect_error_on_choosing(page, empty, no_slices, "empty.zip: the zip is empty")
    expect_error_on_choosing(page, folders, no_slices, "folders.zip: the zip holds only folders or hidden files")
    nested = "Zips inside the zip are not opened: unzip it first, or choose the inner zip."
    expect_error_on_choosing(page, outer, nested, "outer.zip: slices/inner.zip is a zip inside the zip")
    assert requests == []
    upload(page, [RASTER_SERIES[0]])  # the next upload works
    expect(page.locator("#error")).to_be_hidden()


def test_a_password_protected_zip_is_called_so_and_nothing_is_sent(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Browser review 60 F6: a deflated encrypted zip was "damaged" (the user downloads it again), a stored one's
    entries were uploaded and refused as an unknown file type. Encrypted entries say so in their flags (bit 0)."""
    protected = tmp_path / "enc.zip"
    with zipfile.ZipFile(protected, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(RASTER_SERIES[0], "slices/first.jpg")
    data = bytearray(protected.read_bytes())
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local header, central directory
        entry = data.index(signature)
        data[entry + flags_at] |= 1
    protected.write_bytes(bytes(data))
    page.goto(live_server)
    requests = []
    page.on("request", lambda request: requests.append(request) if "/v1/predict" in request.url else None)

    expect_error_on_choosing(
        page,
        protected,
        "The zip is password-protected. Unzip it with its password, then choose the files or the folder.",
        "enc.zip: the zip is password-protected",
    )
    assert requests == []


def with_declared_size(zip_path: Path, size: int) -> None:
    """Write `size` as the uncompressed size of the zip's first entry in its central directory."""
    data = bytearray(zip_path.read_bytes())
    entry = data.index(b"PK\x01\x02")
    data[entry + 24 : entry + 28] = size.to_bytes(4, "little")
    zip_path.write_bytes(bytes(data))


def test_a_zip_that_unpacks_to_too_much_is_refused_before_the_tab_holds_it(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Review 36: a 2 MB zip of zeros unpacking to 2 GiB kept the page on "Reading the files" for 21 s, then failed
    with a message about file permissions. Refused by its declared sizes, or as soon as an entry unpacks to more
    than it declares."""
    declared = tmp_path / "declared.zip"
    with zipfile.ZipFile(declared, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("slices/a.png", b"\0" * 1000)
    with_declared_size(declared, 600 * 2**20)
    lying = tmp_path / "lying.zip"
    with zipfile.ZipFile(lying, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("slices/b.png", b"\0" * 64 * 2**20)
    with_declared_size(lying, 1000)
    page.goto(live_server)
    requests = []
    page.on("request", lambda request: requests.append(request) if "/v1/predict" in request.url else None)

    title = "The zip unpacks to more than the page reads (512 MiB). Choose fewer slices, or the files themselves."
    expect_error_on_choosing(page, declared, title, "declared.zip: the zip's entries unpack to more than 512 MiB")
    expect_error_on_choosing(
        page, lying, title, "lying.zip: slices/b.png unpacks to more than its zip entry declares or the page reads"
    )
    assert requests == []


# ------------------------------------------------------------------------ F7: download names say the series


def test_downloads_are_named_after_the_series_and_the_masks_inside_keep_their_names(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Every download was tumor-masks.zip or tumor-seg.dcm, whatever the series: two studies' downloads differed only
    by the browser's " (1)"."""
    page.goto(live_server)
    for number, description, expected in (
        (1, "AX FLAIR", "series-1_AX-FLAIR"),
        (7, "Ax T2/FLAIR: post", "series-7_Ax-T2-FLAIR-post"),
    ):
        folder = tmp_path / str(number)
        folder.mkdir()
        upload(
            page,
            write_series(mr_series(tumor_channels(), series_number=number, series_description=description), folder),
        )
        name, rows = slices_csv(page)
        assert name == f"tumor-masks_{expected}.zip"
        assert [row["mask_file"] for row in rows] == [f"slice_{index:04d}_mask.png" for index in (1, 2, 3)]
        with page.expect_download(timeout=RESULT_TIMEOUT_MS) as downloaded:
            page.click("#download-seg")
        assert downloaded.value.suggested_filename == f"tumor-seg_{expected}.dcm"

    # Raster slices: the first file's stem, made safe for a file name.
    odd = tmp_path / "=HYPERLINK(x) slice 1.jpg"
    odd.write_bytes(RASTER_SERIES[1].read_bytes())
    upload(page, [odd])
    name, rows = slices_csv(page)
    assert name == "tumor-masks_HYPERLINK-x-slice-1.zip"
    assert rows[0]["mask_file"] == "_HYPERLINK(x) slice 1_predicted_mask.png"


def test_a_three_series_study_s_downloads_are_named_after_its_flair_series(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Browser review 39, F3: FLAIR + T1 pre/post gave `tumor-seg_series-2_AX-T1-PRE.dcm`, after the T1 pre-contrast
    series the answer lists first, while the masks and the volume are of FLAIR."""
    study = Study()
    datasets = [
        *mr_series(tumor_channels(0), study, series_number=2, series_description="AX T1 PRE"),
        *mr_series(tumor_channels(1), study, series_number=4, series_description="AX T2 FLAIR"),
        *mr_series(tumor_channels(2), study, series_number=7, series_description="AX T1 POST GAD"),
    ]
    page.goto(live_server)

    answer = upload(page, write_series(datasets, tmp_path))

    assert [use["role"] for use in answer["series_used"]][0] == "T1 pre-contrast"
    name, _ = slices_csv(page)
    assert name == "tumor-masks_series-4_AX-T2-FLAIR.zip"


# ------------------------------------------------------------------ slices the page cannot draw, and TIFF encodings


def test_blank_masks_of_slices_the_page_cannot_draw_are_at_the_slice_s_size(
    page: Page, negative_live_server: str, tmp_path: Path
) -> None:
    """Browser review 39, F1: a series of 512 x 512 compressed DICOM slices the page does not draw (JPEG 2000 here; RLE
    then) got 256 x 256 blank masks and a 256 x 256 viewer for its tumor-free slices."""
    images = [cv2.resize(image, (512, 512), interpolation=cv2.INTER_NEAREST) for image in tumor_channels()]
    datasets = mr_series(images)
    for dataset in datasets:
        dataset.compress(pydicom.uid.JPEG2000Lossless)
    page.goto(negative_live_server)

    upload(page, write_series(datasets, tmp_path))

    with page.expect_download(timeout=RESULT_TIMEOUT_MS) as downloaded:
        page.click("#download-masks")
    with zipfile.ZipFile(downloaded.value.path()) as masks:
        pngs = [name for name in masks.namelist() if name.endswith(".png")]
        sizes = {Image.open(io.BytesIO(masks.read(name))).size for name in pngs}
    assert len(pngs) == 3 and sizes == {(512, 512)}
    size = page.evaluate(
        "() => [document.querySelector('#mask-canvas').width, document.querySelector('#mask-canvas').height]"
    )
    assert size == [512, 512]


@pytest.mark.parametrize("compression", ["tiff_lzw", "packbits", "tiff_lzw with predictor"])
def test_lzw_and_packbits_tiff_slices_are_drawn_like_uncompressed_ones(
    page: Page, live_server: str, tmp_path: Path, compression: str
) -> None:
    """Browser review 39, F2: LZW and PackBits TIFFs (GIMP's, Fiji's and scanners' exports) were analysed by the
    server but drawn black, without Level/Width."""
    values = tumor_channels()[1].astype(np.uint16) * 37
    plain, packed = tmp_path / "plain.tif", tmp_path / "packed.tif"
    Image.fromarray(values).save(plain)
    predictor = {317: 2} if compression.endswith("predictor") else {}
    Image.fromarray(values).save(packed, compression=compression.split()[0], tiffinfo=predictor)
    page.goto(live_server)

    upload(page, [plain])
    expected = drawn_slice(page)
    upload(page, [packed])

    expect(page.locator("#window-controls")).to_be_visible()
    assert drawn_slice(page) == expected


@pytest.mark.parametrize("bits", [8, 16])
def test_rle_dicom_slices_are_drawn_like_uncompressed_ones(
    page: Page, live_server: str, tmp_path: Path, bits: int
) -> None:
    """Browser review 39, F2: RLE Lossless DICOM series (lossless, simple, common in archives) were analysed but drawn
    black, without Level/Width."""
    images = tumor_channels() if bits == 8 else [image.astype(np.uint16) * 150 for image in tumor_channels()]
    plain = mr_series(images)
    packed = copy.deepcopy(plain)
    for dataset in packed:
        dataset.compress(pydicom.uid.RLELossless)
    (tmp_path / "plain").mkdir()
    (tmp_path / "packed").mkdir()
    page.goto(live_server)

    upload(page, write_series(plain, tmp_path / "plain"))
    expected = drawn_slice(page)
    upload(page, write_series(packed, tmp_path / "packed"))

    expect(page.locator("#window-controls")).to_be_visible()
    assert drawn_slice(page) == expected
