"""The page's fixes from browser review 40: DICOM and TIFF encodings the server reads and the page drew wrong or not at
all (compressed multi-frame files, Big Endian and Deflated data sets, Enhanced MR's per-frame rescale and window,
palette and float TIFFs), compared with pydicom, tifffile and Pillow on the same bytes."""

from __future__ import annotations

import base64
import copy
import io
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from playwright.sync_api import Page, expect
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import apply_modality_lut
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, MRImageStorage, generate_uid

from tests.dicom.builders import (
    legacy_multiframe,
    mr_series,
    secondary_capture_series,
    to_bytes,
    tumor_channels,
)
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


# ------------------------------------------------------------------- F3: Big Endian and Deflated DICOM


def encoded(dataset: Dataset, transfer_syntax: str) -> bytes:
    """A copy of `dataset` saved in `transfer_syntax` (pydicom writes Big Endian and Deflated itself)."""
    copied = copy.deepcopy(dataset)
    copied.file_meta.TransferSyntaxUID = transfer_syntax
    return to_bytes(copied)


def decoded_by_page(page: Page, data: bytes) -> dict:
    """The header fields and each frame's grey values that `readDicom` (the page's own DICOM reader) gives a file."""
    return page.evaluate(
        """async (encoded) => {
            const { readDicom } = await import("/static/formats.js");
            const bytes = Uint8Array.from(atob(encoded), (character) => character.charCodeAt(0));
            const header = await readDicom(bytes.buffer);
            return { ...header, frames: header.frames.map((frame) => Array.from(frame.values)) };
        }""",
        base64.b64encode(data).decode(),
    )


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
@pytest.mark.parametrize("bits", [8, 16])
def test_big_endian_and_deflated_dicom_are_read_as_pydicom_reads_them(
    page: Page, live_server: str, transfer_syntax: str, bits: int
) -> None:
    """Big Endian data sets were walked little endian and Deflated ones read as deflate bytes: no SOP Instance UID,
    Instance Number or Pixel Spacing, and no pixels, where the server reads both like little endian."""
    image = tumor_channels()[0]
    stored = image if bits == 8 else image.astype(np.uint16) * 200 + 300
    (dataset,) = mr_series([stored])
    dataset.InstanceNumber = 7
    data = encoded(dataset, transfer_syntax)
    reference = pydicom.dcmread(io.BytesIO(data))
    page.goto(live_server)

    header = decoded_by_page(page, data)

    assert reference.file_meta.TransferSyntaxUID == transfer_syntax
    assert header["sopInstanceUid"] == reference.SOPInstanceUID
    assert header["instanceNumber"] == 7
    assert header["pixelSpacing"] == [float(value) for value in reference.PixelSpacing]
    assert len(header["frames"]) == 1
    expected = apply_modality_lut(reference.pixel_array, reference).astype(np.float32)
    np.testing.assert_array_equal(np.array(header["frames"][0], np.float32).reshape(expected.shape), expected)


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_a_big_endian_or_deflated_series_without_positions_is_shown_by_instance_number_and_named(
    page: Page, live_server: str, tmp_path: Path, transfer_syntax: str
) -> None:
    """A Secondary Capture series has no positions: the server orders it by Instance Number, and so did the page for
    little endian files; Big Endian and Deflated files were shown in file-name order, labelled "slice N", undrawn."""
    images = [channel.astype(np.uint16) * 200 + 300 for channel in tumor_channels()]
    names = ["1.2.826.9", "1.2.826.10", "1.2.826.8"]  # instances 1, 2, 3; in name order 3, 1, 2
    paths = []
    for name, dataset in zip(names, secondary_capture_series(images), strict=True):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(encoded(dataset, transfer_syntax))
    page.goto(live_server)

    upload(page, paths)

    expect(page.locator("#slice-table tbody tr td:nth-child(2)")).to_have_text(names)
    expect(page.locator("#caption")).not_to_contain_text("cannot be drawn")
    expect(page.locator("#window-controls")).to_be_visible()


# ------------------------------------------------------------- F2: Enhanced MR per-frame rescale and window


def enhanced_with_frame_slopes(slopes: list[int]) -> tuple[Dataset, np.ndarray]:
    """A Legacy Converted Enhanced MR file whose frame i has Rescale Slope `slopes[i]` in its Per-frame Functional
    Groups, its stored values divided by it (modality values unchanged), and the modality values of its frames."""
    images = [channel.astype(np.uint16) * 100 + 400 for channel in tumor_channels()]  # multiples of 4
    enhanced = legacy_multiframe(mr_series(images))
    modality = enhanced.pixel_array.copy()
    for group in (enhanced.SharedFunctionalGroupsSequence[0], *enhanced.PerFrameFunctionalGroupsSequence):
        if "PixelValueTransformationSequence" in group:
            del group.PixelValueTransformationSequence  # a macro is either shared or per frame
    for group, slope in zip(enhanced.PerFrameFunctionalGroupsSequence, slopes, strict=True):
        transformation = Dataset()
        transformation.RescaleSlope, transformation.RescaleIntercept, transformation.RescaleType = slope, 0, "US"
        group.PixelValueTransformationSequence = [transformation]
    divisors = np.array(slopes, np.uint16)[:, None, None]
    enhanced.PixelData = (modality // divisors).astype(np.uint16).tobytes()
    return enhanced, modality


def frame_window(center: float, width: float) -> Dataset:
    window = Dataset()
    window.WindowCenter, window.WindowWidth = center, width
    return window


def test_enhanced_mr_frames_take_their_own_rescale_slope_and_the_frame_voi_lut_window(
    page: Page, live_server: str
) -> None:
    """Enhanced MR frames ignored the Rescale Slope of the Per-frame Functional Groups (frames of slope 4 were drawn
    4 times too dark) and the window of the Frame VOI LUT: per frame, then shared, then top level, as the server."""
    enhanced, modality = enhanced_with_frame_slopes([1, 4, 1])
    enhanced.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence = [frame_window(10000, 20000)]
    enhanced.PerFrameFunctionalGroupsSequence[1].FrameVOILUTSequence = [frame_window(5000, 8000)]
    page.goto(live_server)

    header = decoded_by_page(page, to_bytes(enhanced))

    assert len(header["frames"]) == 3
    for index, values in enumerate(header["frames"]):
        np.testing.assert_array_equal(np.array(values).reshape(256, 256), modality[index], f"frame {index + 1}")
    assert header["window"] == {"center": 10000, "width": 20000}
    assert header["frameWindows"][1] == {"center": 5000, "width": 8000}


def test_an_enhanced_mr_file_opens_at_its_frame_voi_lut_window(page: Page, live_server: str, tmp_path: Path) -> None:
    """A single-frame file opens at its own window; an Enhanced MR file, which keeps it in the shared Frame VOI LUT,
    opened at the page's stretch (25800 / 51000 in the review)."""
    enhanced, _ = enhanced_with_frame_slopes([1, 4, 1])
    enhanced.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence = [frame_window(10000, 20000)]
    path = tmp_path / "enhanced.dcm"
    path.write_bytes(to_bytes(enhanced))
    page.goto(live_server)

    upload(page, [path])

    expect(page.locator("#window-level-value")).to_have_text("10,000")
    expect(page.locator("#window-width-value")).to_have_text("20,000")


# ----------------------------------------------------------------------- F4, F6: palette and float TIFF


def tiff_decoded_by_page(page: Page, data: bytes) -> dict | None:
    """What `readTiff` (the page's own TIFF reader) gives a file: grey `values`, or `rgba` as [R, G, B, A, ...]."""
    return page.evaluate(
        """async (encoded) => {
            const { readTiff } = await import("/static/formats.js");
            const bytes = Uint8Array.from(atob(encoded), (character) => character.charCodeAt(0));
            const picture = await readTiff(bytes.buffer);
            return picture && {
                values: picture.values ? Array.from(picture.values) : null,
                rgba: picture.rgba ? Array.from(picture.rgba.data) : null,
            };
        }""",
        base64.b64encode(data).decode(),
    )


def palette_tiff(indices: np.ndarray, palette: list[tuple[int, int, int]]) -> bytes:
    """An 8-bit palette TIFF (PhotometricInterpretation 3, a ColorMap of 16-bit colours) written by Pillow."""
    image = Image.fromarray(indices, mode="P")
    image.putpalette([channel for colour in palette for channel in colour])
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    return buffer.getvalue()


def test_a_grey_palette_tiff_is_drawn_through_its_colour_map_as_grey(page: Page, live_server: str) -> None:
    """Palette TIFFs were drawn as their raw indices: one whose map inverts a grey ramp showed the brain as a
    negative, where the server analyses it through the map."""
    data = palette_tiff(tumor_channels()[0], [(255 - index,) * 3 for index in range(256)])
    page.goto(live_server)

    picture = tiff_decoded_by_page(page, data)

    expected = np.asarray(Image.open(io.BytesIO(data)).convert("L"), np.float32)
    assert picture["rgba"] is None
    np.testing.assert_array_equal(np.array(picture["values"], np.float32).reshape(expected.shape), expected)


def test_a_colour_palette_tiff_is_drawn_through_its_colour_map_in_colour(page: Page, live_server: str) -> None:
    data = palette_tiff(tumor_channels()[0], [(index, 255 - index, index // 2) for index in range(256)])
    page.goto(live_server)

    picture = tiff_decoded_by_page(page, data)

    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert picture["values"] is None
    np.testing.assert_array_equal(np.array(picture["rgba"], np.uint8).reshape(256, 256, 4)[..., :3], expected)


@pytest.mark.parametrize("photometric", ["minisblack", "miniswhite"])
def test_a_float_tiff_is_drawn_from_its_float_values(page: Page, live_server: str, photometric: str) -> None:
    """32-bit float TIFFs (SampleFormat 3), which the server reads, were never drawn. MinIsWhite floats are negated,
    as the server turns them."""
    values = tumor_channels()[0].astype(np.float32) * 136.5 + 300.25
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, values, photometric=photometric)
    page.goto(live_server)

    picture = tiff_decoded_by_page(page, buffer.getvalue())

    expected = tifffile.imread(io.BytesIO(buffer.getvalue()))
    expected = -expected if photometric == "miniswhite" else expected
    np.testing.assert_array_equal(np.array(picture["values"], np.float32).reshape(expected.shape), expected)


def test_non_finite_floats_in_a_tiff_count_as_0_as_the_server_reads_them(page: Page, live_server: str) -> None:
    """Browser review 41: one +Inf pixel made the page's default window 100 wide and drew the slice almost white; the
    server reads NaN and infinities as 0."""
    values = tumor_channels()[0].astype(np.float32) * 8.0
    values[0, :3] = [np.inf, -np.inf, np.nan]
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, values, photometric="minisblack")
    page.goto(live_server)

    picture = tiff_decoded_by_page(page, buffer.getvalue())

    expected = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    np.testing.assert_array_equal(np.array(picture["values"], np.float32).reshape(expected.shape), expected)


def test_a_deflated_dicom_that_inflates_to_millions_of_elements_is_given_up(page: Page, live_server: str) -> None:
    """Browser review 41: a deflated data set of zeros (millions of empty elements) kept the page walking them for
    30 s, the tab frozen; the server refuses such a header. The page gives up drawing it after 100,000 elements."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    header = DicomBytesIO()
    header.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(header, meta)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = header.getvalue() + deflate.compress(b"\0" * 2 * 2**20) + deflate.flush()  # 262,144 empty elements
    page.goto(live_server)

    message = page.evaluate(
        """async (encoded) => {
            const { readDicom } = await import("/static/formats.js");
            const bytes = Uint8Array.from(atob(encoded), (character) => character.charCodeAt(0));
            try {
                await readDicom(bytes.buffer);
                return "read";
            } catch (error) {
                return error.message;
            }
        }""",
        base64.b64encode(bomb).decode(),
    )

    assert message == "the DICOM file holds more than 100000 data elements"
