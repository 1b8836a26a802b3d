"""A JPEG's structure is bounded before any decoder sees it (attack finding: a 1.1 MB progressive JPEG of 40,000
empty scans held a CPU core for 88 s answering 200; 3 million comment segments took 17 s in Pillow's parser), and a
JPEG frame in DICOM must have as many components as SamplesPerPixel (a colour JPEG under a MONOCHROME2 header was
answered, its pixels misread)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate, generate_fragments

from app.errors import InvalidDicomImageError, InvalidSliceError
from app.imaging import decode_image
from app.jpeg_markers import (
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    JpegStructureError,
    check_jpeg_structure,
    frame_header,
)
from tests.conftest import TUMOR_SLICE, read_slice
from tests.dicom.builders import FLAIR, to_bytes
from tests.dicom.reading import read_dicom
from tests.security.test_dicom_decoder_crash import jpeg_baseline_dicom


def progressive_jpeg(extra_scans: int, side: int = 64) -> bytes:
    """A grey progressive JPEG with `extra_scans` more AC scans of one end-of-band run each (they refine nothing, but
    a decoder walks every block for each), after their Huffman table. The run: code "0" for EOBRUN class 6, then its
    six extra bits 000000 (64 blocks, a 64 x 64 image's), then a pad bit: whole, so libjpeg decodes it without a
    corrupt-data warning (`app.jpeg_data`)."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.uint8)).save(buffer, "JPEG", progressive=True, quality=50)
    data = buffer.getvalue()
    huffman_table = b"\xff\xc4" + struct.pack(">H", 20) + bytes([0x11]) + bytes([1] + [0] * 15) + bytes([0x60])
    scan = b"\xff\xda" + struct.pack(">H", 8) + bytes([1, 1, 0x01, 1, 63, 0x00]) + b"\x01"
    return data[:-2] + huffman_table + scan * extra_scans + b"\xff\xd9"


def with_comments(data: bytes, count: int) -> bytes:
    """`data` with `count` comment segments after its start marker."""
    return data[:2] + (b"\xff\xfe" + struct.pack(">H", 3) + b"x") * count + data[2:]


def slice_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(read_slice(TUMOR_SLICE)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_a_jpeg_with_more_scans_than_any_encoder_writes_is_refused_before_decoding() -> None:
    within = progressive_jpeg(MAX_JPEG_SCANS - 20)
    over = progressive_jpeg(MAX_JPEG_SCANS + 1)

    assert decode_image(within).shape == (64, 64)  # the extra scans are valid: it decodes
    with pytest.raises(InvalidSliceError, match=f"more than {MAX_JPEG_SCANS} scans .* refused before decoding"):
        decode_image(over)


def test_a_jpeg_with_thousands_of_segments_is_refused_before_pillow_parses_them() -> None:
    plain = slice_jpeg()

    assert decode_image(with_comments(plain, 100)).shape == (256, 256, 3)
    with pytest.raises(InvalidSliceError, match=f"more than {MAX_JPEG_SEGMENTS} marker segments"):
        decode_image(with_comments(plain, MAX_JPEG_SEGMENTS + 1))


def test_the_walk_skips_entropy_coded_data_and_counts_real_scans_only() -> None:
    """Stuffed FF 00 bytes and restart markers inside a scan are data, not segments: a baseline slice is one scan,
    and an ordinary progressive one (Pillow's, libjpeg's default script) about ten."""
    check_jpeg_structure(slice_jpeg(), "JPEG file")
    buffer = io.BytesIO()
    Image.fromarray(read_slice(TUMOR_SLICE)).save(buffer, "JPEG", progressive=True, quality=95)
    check_jpeg_structure(buffer.getvalue(), "JPEG file")
    assert progressive_jpeg(0).count(b"\xff\xda") < 20

    header = frame_header(slice_jpeg())
    assert (header.rows, header.columns, header.components) == (256, 256, 3)


def test_a_dicom_jpeg_frame_over_the_scan_limit_is_refused() -> None:
    data = jpeg_baseline_dicom(np.zeros((64, 64), np.uint8), codestream=progressive_jpeg(MAX_JPEG_SCANS + 1))

    with pytest.raises(InvalidDicomImageError, match=f"DICOM pixel data holds more than {MAX_JPEG_SCANS} scans"):
        read_dicom(data)


def test_a_colour_jpeg_under_a_greyscale_header_is_refused_not_misread() -> None:
    flair = read_slice(TUMOR_SLICE)[:, :, FLAIR]
    buffer = io.BytesIO()
    Image.fromarray(read_slice(TUMOR_SLICE)).save(buffer, "JPEG", quality=95)  # three components

    with pytest.raises(
        InvalidDicomImageError, match="codestream of 3 components but the header says SamplesPerPixel 1"
    ):
        read_dicom(jpeg_baseline_dicom(flair, codestream=buffer.getvalue()))
    (frame,) = read_dicom(jpeg_baseline_dicom(flair))  # one component: read as before
    assert frame.values.shape == flair.shape


def test_a_jpeg_frame_split_over_fragments_is_walked_whole() -> None:
    """A frame may span several fragments: its scans are counted over all of them, not per fragment."""
    dataset = pydicom.dcmread(io.BytesIO(jpeg_baseline_dicom(np.zeros((64, 64), np.uint8))))
    dataset.PixelData = encapsulate([progressive_jpeg(MAX_JPEG_SCANS + 1)], fragments_per_frame=3)
    assert len(list(generate_fragments(dataset.PixelData))) == 1 + 3  # the offset table, then the fragments

    with pytest.raises(InvalidDicomImageError, match=f"more than {MAX_JPEG_SCANS} scans"):
        read_dicom(to_bytes(dataset))


def test_runs_of_fill_and_stray_bytes_pass_as_libjpeg_reads_them_and_every_marker_counts() -> None:
    """Fill bytes (FF FF ...) and stray bytes between segments are skipped a run at a time (in C: a Python step per
    byte of a 20 MB upload took seconds), and markers without a length count against the segment limit too."""
    data = slice_jpeg()
    check_jpeg_structure(data[:2] + b"\xff" * 4_000_000 + data[2:], "JPEG file")
    check_jpeg_structure(data[:2] + b"\x00" * 4_000_000 + data[2:], "JPEG file")
    with pytest.raises(JpegStructureError, match="marker segments"):
        check_jpeg_structure(data[:2] + b"\xff\xd0" * 2_000_000 + data[2:], "JPEG file")
