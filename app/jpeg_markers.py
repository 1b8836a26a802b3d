"""What a JPEG codestream's marker segments declare, read without decoding it, and the limits its structure must keep.

A JPEG's cost is not bounded by its size in bytes: a progressive JPEG may hold any number of scans, and the decoder
passes over every block of the image once per scan. A 1.1 MB file of 4096 x 4096 pixels and 40,000 scans that each
refine nothing kept a CPU core busy for 88 s; 3 million comment segments (18 MB) took 17 s in Pillow's header
parser. Real encoders write one scan (baseline) or about ten (progressive; libjpeg's default script), with a few
dozen segments in all, so the limits below are far above any real file and far below an attack. Used for uploaded
JPEG files (`app.imaging`) and for JPEG frames inside DICOM (`app.dicom.dicom_codestream`). Nothing here logs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_JPEG_SCANS = 100
"""Scans (SOS segments) one JPEG may hold; libjpeg-turbo's own suggested limit for untrusted input is 500."""
MAX_JPEG_SEGMENTS = 1000
"""Marker segments (tables, comments, application data, scans ...) one JPEG may hold."""

_START_OF_IMAGE = b"\xff\xd8"
_START_OF_SCAN = 0xDA
_END_OF_IMAGE = 0xD9
_FRAME_MARKERS = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7})
"""SOF markers of JPEG (baseline, extended, progressive, lossless) and SOF55 of JPEG-LS: all hold height, width
and the number of components at the same offsets."""
_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""The first marker after entropy-coded data: FF 00 is a stuffed data byte, FF D0-D7 a restart, FF FF fill."""
_FILL = re.compile(rb"\xff+")


class JpegStructureError(ValueError):
    """A JPEG whose marker structure is over the limits above; the caller turns it into its own 4xx error."""


@dataclass(frozen=True)
class JpegFrame:
    """What the frame header (SOF) declares."""

    rows: int
    columns: int
    components: int
    precision: int  # bits per sample


def frame_header(data: bytes, begin: int = 0, end: int | None = None) -> JpegFrame | None:
    """The frame header of the JPEG or JPEG-LS codestream at `data[begin:end]`; None if it does not start with SOI
    or reaches its first scan (or its end) without one."""
    stop = len(data) if end is None else end
    for count, (marker, position) in enumerate(_segments(data, begin, stop, through_scans=False), start=1):
        if count > MAX_JPEG_SEGMENTS:
            return None
        if marker in _FRAME_MARKERS:
            if position + 10 > stop:
                return None
            return JpegFrame(
                rows=int.from_bytes(data[position + 5 : position + 7], "big"),
                columns=int.from_bytes(data[position + 7 : position + 9], "big"),
                components=data[position + 9],
                precision=data[position + 4],
            )
    return None


def check_jpeg_structure(data: bytes, what: str) -> int:
    """Refuse a JPEG (not JPEG-LS: its scans stuff bytes differently) with more than `MAX_JPEG_SCANS` scans or
    `MAX_JPEG_SEGMENTS` marker segments, walking its markers as libjpeg does, before any decoder sees it; the number
    of its segments otherwise.

    Raises
    ------
    JpegStructureError
    """
    scans = segments = 0
    for segments, (marker, _) in enumerate(_segments(data, 0, len(data), through_scans=True), start=1):  # noqa: B007
        scans += marker == _START_OF_SCAN
        if scans > MAX_JPEG_SCANS:
            raise JpegStructureError(
                f"{what} holds more than {MAX_JPEG_SCANS} scans (real encoders write at most a few dozen); "
                "refused before decoding"
            )
        if segments > MAX_JPEG_SEGMENTS:
            raise JpegStructureError(
                f"{what} holds more than {MAX_JPEG_SEGMENTS} marker segments (real files hold a few dozen); "
                "refused before decoding"
            )
    return segments


_SEQUENTIAL_FRAME_MARKERS = frozenset({0xC0, 0xC1, 0xC9})
"""Baseline and extended sequential DCT (Huffman or arithmetic): a scan's Ss, Se, Ah and Al must be 0, 63, 0, 0."""
_SEGMENTS_WITHOUT_IMAGE_DATA = frozenset({*range(0xE0, 0xF0), 0xFE})
"""APP0-APP15 and COM: application data (JFIF, Exif, ICC profile, Adobe colour transform) and comments."""


def image_data_only(data: bytes) -> bytes:
    """The JPEG codestream `data` as a decoder of its image data needs it: without its APPn and COM segments, and
    with each scan of a sequential frame given the spectral selection and approximation a sequential scan has (the
    values libjpeg itself goes by, after a warning); every other byte as it came, stray bytes included.

    Why: libjpeg warns of an unknown JFIF revision, an Adobe transform code, a bad ICC profile segment or odd scan
    parameters of a sequential frame, none of which says anything of the pixels; a decoder that stops at the first
    warning (the strict check in `app.jpeg_data`) would then never reach damaged data behind it (a
    JFIF 2.01 header let a damaged scan through, a tumor slice answered "no tumor" at 0.007).
    """
    kept = bytearray()
    copied = 0
    sequential = False
    for marker, position in _segments(data, 0, len(data), through_scans=True):
        if marker in _FRAME_MARKERS:
            sequential = marker in _SEQUENTIAL_FRAME_MARKERS
        segment_end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker in _SEGMENTS_WITHOUT_IMAGE_DATA:
            kept += data[copied:position]
            copied = min(segment_end, len(data))
        elif marker == _START_OF_SCAN and sequential and position + 5 <= len(data):
            parameters = position + 5 + 2 * data[position + 4]  # after Ns and each component's selector and tables
            if parameters + 3 <= min(segment_end, len(data)):
                kept += data[copied:parameters] + b"\x00\x3f\x00"
                copied = parameters + 3
    return bytes(kept + data[copied:])


def _segments(data: bytes, begin: int, end: int, through_scans: bool) -> Iterator[tuple[int, int]]:
    """(marker, position of its FF) of each marker after SOI, to EOI or the end; stops at the first scan unless
    `through_scans`, when it skips each scan's entropy-coded data to the marker that ends it. Runs of stray or fill
    bytes are skipped in one step (a file of 20 MB of fill bytes must not cost 20 million steps)."""
    if not data.startswith(_START_OF_IMAGE, begin, end):
        return
    position = begin + 2
    while position + 4 <= end:
        if data[position] != 0xFF:  # stray bytes between segments: libjpeg skips to the next marker, so do we
            position = data.find(b"\xff", position, end)
            if position < 0:
                return
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # fill bytes: the last FF of the run starts the marker
            position = _FILL.match(data, position, end).end() - 1
            continue
        yield marker, position
        if marker == _END_OF_IMAGE:
            return
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            position += 2
            continue
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == _START_OF_SCAN:
            if not through_scans:
                return
            following = _MARKER_AFTER_SCAN.search(data, position, end)
            if following is None:
                return
            position = following.start()
