"""Reading DICOM test files in one call, the way the flow reads them in steps: the service never calls these (it
reads headers with `app.dicom.dicom_header.read_dicom_header` and decodes with `app.dicom.dicom_input.decode_dicom`;
a request's series goes `app.series.reading.plan_series` -> `decode_series`, with the request's limits)."""

from __future__ import annotations

from collections.abc import Sequence

from app.dicom.dicom_frame import DicomFrame
from app.dicom.dicom_header import DEFAULT_MAX_DICOM_PIXELS, read_dicom_header
from app.dicom.dicom_input import decode_dicom
from app.errors import ServiceError
from app.series.reading import SeriesUploads, decode_series, plan_series
from app.series.sequence_rules import SelectionRules
from app.uploads import UploadLimits


def read_dicom(
    data: bytes, max_pixels: int = DEFAULT_MAX_DICOM_PIXELS, max_bytes: int | None = None
) -> list[DicomFrame]:
    """Read one DICOM Part 10 file into its frames: `read_dicom_header`, the cost against `max_bytes` (None: no
    budget), then `decode_dicom`.

    Parameters
    ----------
    data
        The file's bytes.
    max_pixels
        Largest accepted rows x columns x frames, checked from the header before pixel data is decoded.
    max_bytes
        Most memory reading the file may take (`DicomHeader.cost_bytes`), checked from the header.

    Returns
    -------
    list of DicomFrame
        One per frame, in frame order.

    Raises
    ------
    UndecodableDicomError
        If the bytes are not a readable DICOM Part 10 file or the pixel data does not decode.
    UnsupportedDicomError
        If the SOP class is not an MR (or secondary capture) image, or no decoder exists for the transfer syntax.
    DicomWithoutPixelDataError
        If an image SOP class comes without pixel data.
    InvalidDicomImageError
        If the pixels are not monochrome with one sample per pixel, or a codestream's size is not Rows x Columns.
    app.errors.ImageTooLargeError
        If rows x columns x frames is over `max_pixels`.
    app.errors.OverMemoryBudgetError
        If reading the file would take more than `max_bytes`.
    """
    header = read_dicom_header(data, max_pixels, max_bytes)
    if max_bytes is not None:
        header.check_cost(max_bytes)
    return decode_dicom(header)


def read_series(
    uploads: Sequence[bytes | ServiceError],
    max_pixels: int,
    max_bytes: int | None = None,
    rules: SelectionRules | None = None,
) -> SeriesUploads:
    """`plan_series` then `decode_series`, with the pixel limit `max_pixels` and the budget `max_bytes` (None: none)."""
    limits = UploadLimits(max_dicom_pixels=max_pixels, max_decode_bytes=max_bytes)
    return decode_series(plan_series(uploads, limits, rules=rules))
