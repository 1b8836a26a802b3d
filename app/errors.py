"""Domain errors of the service: each has a stable `code` for clients and an HTTP-agnostic `kind`.

Core code (decoding, inference, encoding) raises these and never knows about HTTP; `app.api.handlers` maps each
`kind` to a status code in one place, and the CLI prints the same `{"error": {"code", "message"}}` body.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import ClassVar

# `<_io.BytesIO object at 0x7f03...>` and the like: decoders quote their file object in error texts we pass on.
_OBJECT_REPR = re.compile(r" ?<[\w.]+ object at 0x[0-9a-fA-F]+>")
# 'text' or "text" (optionally b'...') in a library's error text: a value read from the uploaded file.
_QUOTED_VALUE = re.compile(r"b?'[^']*'|b?\"[^\"]*\"")


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The body every error is reported in, over HTTP and on the command line: `{"error": {"code", "message"}}`."""
    return {"error": {"code": code, "message": message}}


class ErrorKind(StrEnum):
    """What sort of failure an error is, independent of the transport that reports it."""

    INVALID_INPUT = "invalid_input"  # the bytes are not a usable image (HTTP 400)
    UNSUPPORTED_TYPE = "unsupported_type"  # not a format we read at all (HTTP 415)
    TOO_LARGE = "too_large"  # over a configured size limit (HTTP 413)
    HEADERS_TOO_LARGE = "headers_too_large"  # request headers over their limits (HTTP 431)
    INVALID_REQUEST = "invalid_request"  # a missing or malformed request field (HTTP 422)
    UNAVAILABLE = "unavailable"  # the models are not loaded, or the queue is full (HTTP 503)
    UNAUTHORIZED = "unauthorized"  # no valid API key (HTTP 401)
    RATE_LIMITED = "rate_limited"  # over the per-client request rate (HTTP 429)
    FORBIDDEN = "forbidden"  # another site's page, or a Host name the service is not to answer (HTTP 403)


class ServiceError(Exception):
    """Base of the errors the service reports to clients; `message` names the rule and the value found."""

    code: ClassVar[str] = "service_error"
    kind: ClassVar[ErrorKind] = ErrorKind.INVALID_INPUT

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        message = without_object_reprs(message)
        super().__init__(message)
        self.message = message
        self.retry_after_seconds = retry_after_seconds  # sent as Retry-After when set

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    def body(self) -> dict[str, dict[str, str]]:
        return error_body(self.code, self.message)


def without_object_reprs(text: str) -> str:
    """`text` without Python object reprs (`<_io.BytesIO object at 0x...>`): clients and logs get no memory
    addresses or internal types."""
    return _OBJECT_REPR.sub("", text)


def without_quoted_values(text: str, replacement: str = "'...'") -> str:
    """A library's error text with every quoted value replaced: pydicom and highdicom quote the offending value, which
    is the uploaded file's content (a patient's name, say), and neither answers nor logs echo file content."""
    return _QUOTED_VALUE.sub(replacement, text)


_MISSING_ATTRIBUTE = re.compile(r"has no attribute '([A-Z][A-Za-z0-9]*)'")


def builder_reason(error: Exception) -> str:
    """Why highdicom could not build a SEG or an SR, for the client: its message without quoted values, except the
    name of a DICOM attribute a source lacks (a keyword such as `SliceThickness` is no file content), which is the
    one thing that makes "'...' object has no attribute '...'" useful."""
    missing = _MISSING_ATTRIBUTE.search(str(error)) if isinstance(error, AttributeError) else None
    if missing:
        return f"a source image lacks {missing.group(1)}"
    return without_quoted_values(str(error))


_LIBRARY_SLIP_TYPES = (AttributeError, TypeError, KeyError, IndexError)


# The same slips, reported inside another error's text (pydicom's "exceptions were raised by all available plugins").
_LIBRARY_SLIP_TEXT = re.compile(r"object has no attribute|index out of range|unpack requires a buffer")
# pydicom's "Found unexpected tag (CDAB,12EF) instead of (FFFE,E000)": the "tag" is the file's bytes where an item
# should start, pixel values when native pixels come under a compressed transfer syntax.
_UNEXPECTED_TAG = re.compile(r"unexpected tag \([0-9A-Fa-f]{4},\s?[0-9A-Fa-f]{4}\)", re.IGNORECASE)
# pydicom's preamble to the reports of its decoder plugins, one per line ("  pydicom: ...", "  pylibjpeg: ...").
_PLUGIN_REPORTS = re.compile(r"^Unable to decode as exceptions were raised by all available plugins:\s*")


def decoder_reason(error: Exception) -> str:
    """Why a library could not read a file, for the client: its message without quoted values; for an error that
    only says where the library tripped (`'...' object has no attribute '...'` on a truncated codestream, also
    inside a plugin's report), or says nothing at all, a sentence that says what it means."""
    text = str(error).strip()
    if isinstance(error, StopIteration):  # pydicom's frame generator, run out of fragments
        return "its data holds fewer frames than its header says (StopIteration)"
    if isinstance(error, _LIBRARY_SLIP_TYPES) or _LIBRARY_SLIP_TEXT.search(text):
        return f"its data breaks off or is malformed where the reader expected more ({type(error).__name__})"
    if not text:
        return f"the decoder stopped without a reason ({type(error).__name__})"
    if _PLUGIN_REPORTS.match(text):  # the plugins' reports on one line, without the dispatcher's preamble
        text = "; ".join(line.strip() for line in _PLUGIN_REPORTS.sub("", text).splitlines() if line.strip())
    return without_quoted_values(_UNEXPECTED_TAG.sub("unexpected data", text))


class EmptyFileError(ServiceError):
    code = "empty_file"
    kind = ErrorKind.INVALID_INPUT


class FileUnreadableError(ServiceError):
    """A local file given to the CLI cannot be read (missing, a folder, no permission)."""

    code = "file_unreadable"
    kind = ErrorKind.INVALID_INPUT


class UndecodableImageError(ServiceError):
    """The magic bytes name a format we read, but the file is truncated or corrupt."""

    code = "undecodable_image"
    kind = ErrorKind.INVALID_INPUT


class InvalidSliceError(ServiceError):
    """The image decoded, but is not something a slice can be made of (e.g. two channels)."""

    code = "invalid_image"
    kind = ErrorKind.INVALID_INPUT


class RepeatedSliceError(InvalidSliceError):
    """A slice of a raster series whose pixels an earlier file of the request holds: left out, and no slice missing
    from the volume either (`app.uploads.raster_series_breaks`). A code of its own, so that a client can tell it from
    a slice that failed (else the page draws a copy as a missing slice, and its CSV says so)."""

    code = "repeated_slice"


class UnsupportedMediaTypeError(ServiceError):
    """The first bytes match none of the formats we read (PNG, JPEG, TIFF)."""

    code = "unsupported_media_type"
    kind = ErrorKind.UNSUPPORTED_TYPE


class PayloadTooLargeError(ServiceError):
    code = "payload_too_large"
    kind = ErrorKind.TOO_LARGE


class ImageTooLargeError(ServiceError):
    code = "image_too_large"
    kind = ErrorKind.TOO_LARGE


class TooManySlicesError(ServiceError):
    """One request holds more slices than the inference queue can ever take: retrying would not help."""

    code = "too_many_slices"
    kind = ErrorKind.TOO_LARGE


class OverMemoryBudgetError(ServiceError):
    """Decoding a file (or a request's files together) would take more memory than DECODE_MEMORY_BYTES, as
    computed from the headers before anything is decoded."""

    code = "over_memory_budget"
    kind = ErrorKind.TOO_LARGE


class HeadersTooLargeError(ServiceError):
    """More request headers than MAX_HEADER_COUNT (their bytes are capped before parsing, in app.http_protocol)."""

    code = "headers_too_large"
    kind = ErrorKind.HEADERS_TOO_LARGE


class TooManyFilesError(ServiceError):
    code = "too_many_files"
    kind = ErrorKind.TOO_LARGE


class RequestValidationFailed(ServiceError):
    """A request field is missing or malformed (raised by the API layer's validation handler)."""

    code = "validation_error"
    kind = ErrorKind.INVALID_REQUEST


class ModelUnavailableError(ServiceError):
    code = "model_unavailable"
    kind = ErrorKind.UNAVAILABLE


class AuditUnavailableError(ServiceError):
    """The audit log cannot be written (a full disk): readiness says so, so that a load balancer sends elsewhere."""

    code = "audit_unavailable"
    kind = ErrorKind.UNAVAILABLE


class OverloadedError(ServiceError):
    """The inference queue is full; the client should retry after `retry_after_seconds`."""

    code = "overloaded"
    kind = ErrorKind.UNAVAILABLE


class InferenceTimeoutError(ServiceError):
    """The models did not answer within the request timeout (the queue is too long for this request)."""

    code = "inference_timeout"
    kind = ErrorKind.UNAVAILABLE


class AuthenticationError(ServiceError):
    code = "unauthorized"
    kind = ErrorKind.UNAUTHORIZED


class CrossSiteRequestError(ServiceError):
    """A browser sent the request for a page of another site (its `Sec-Fetch-Site: cross-site`): any website a user
    visits could otherwise make their browser submit work to a service on their machine."""

    code = "cross_site_request"
    kind = ErrorKind.FORBIDDEN


class HostNotAllowedError(ServiceError):
    """The Host header (or an absolute-form request target) names no host in `ALLOWED_HOSTS`: a page whose name was
    re-pointed at this machine (DNS rebinding) would otherwise read the service as its own."""

    code = "host_not_allowed"
    kind = ErrorKind.FORBIDDEN


class RateLimitedError(ServiceError):
    code = "rate_limited"
    kind = ErrorKind.RATE_LIMITED


class UndecodableDicomError(ServiceError):
    """The file starts like DICOM, but it is truncated or corrupt, or its pixel data does not decode."""

    code = "undecodable_dicom"
    kind = ErrorKind.INVALID_INPUT


class TooManyDicomElementsError(UndecodableDicomError):
    """A DICOM header of more data elements than the service reads (`app.dicom.part10.MAX_HEADER_READS`): a
    valid object may be one (an Enhanced MR of thousands of frames), so the DICOM node takes it without keeping it."""


class UnsupportedDicomError(ServiceError):
    """A DICOM object we do not read: a non-image or non-MR SOP class, or a transfer syntax without a decoder."""

    code = "unsupported_dicom"
    kind = ErrorKind.UNSUPPORTED_TYPE


class UnsupportedSopClassError(UnsupportedDicomError):
    """A SOP class the service does not read at all (the DICOM node answers it "does not match SOP Class"), as
    against an object of a class it reads whose content it cannot use (a Secondary Capture of another modality)."""


class KeyObjectSelectionError(UnsupportedSopClassError):
    """A Key Object Selection Document: no image. Sent with the images it names, it may be an IHE IOCM rejection
    note that withdraws them (`app.series.rejection_notes`)."""


class RejectedInstanceError(ServiceError):
    """A DICOM image that an IHE IOCM rejection note sent in the same request withdraws: left out, as an archive that
    implements IOCM hides it (not analysed, so no SEG references it)."""

    code = "rejected_instance"
    kind = ErrorKind.INVALID_REQUEST

    def __init__(self, message: str, series: str = "", series_uid: str = "") -> None:
        super().__init__(message)
        self.series = series  # the image's series as errors name it ("number 5"): a refusal of what is left says it
        self.series_uid = series_uid  # to tell which series chosen lost images (never shown)


class TooManyRejectionNotesError(ServiceError):
    """A request of more IHE IOCM rejection notes of its study than the service reads (`app.series.rejection_notes`):
    refused whole, since a note left unread would leave the images it withdraws analysed."""

    code = "too_many_rejection_notes"
    kind = ErrorKind.TOO_LARGE


class UnreadableRejectionNoteError(ServiceError):
    """A Key Object Selection of the study that is, or may be, an IHE IOCM rejection note, and cannot be read
    (damaged, or over the size a note may have): which images it withdraws is unknown, so none is analysed. The
    HTTP API refuses the request, the DICOM node refuses the note (0xC000), pacs-sync fails the study."""

    code = "unreadable_rejection_note"
    kind = ErrorKind.INVALID_INPUT


class RejectionNoteApplied(ServiceError):
    """Not a failure: the file is an IHE IOCM rejection note, and the request's images it withdraws were left out.
    It is reported with the files not read because it holds no image the models read."""

    code = "rejection_note"
    kind = ErrorKind.INVALID_REQUEST


class OtherModalityCaptureError(UnsupportedDicomError):
    """A Secondary Capture of another modality than MR (a scanned form, another scanner's screen save): a valid
    object the models have no use for (the DICOM node answers it Success and does not keep it)."""


class DicomWithoutPixelDataError(ServiceError):
    """An image SOP class whose dataset carries no pixel data (e.g. a header-only export)."""

    code = "dicom_without_pixel_data"
    kind = ErrorKind.INVALID_INPUT


class InvalidDicomImageError(ServiceError):
    """The pixels decode but cannot be a slice (colour, several samples), or instances do not group into slices."""

    code = "invalid_dicom_image"
    kind = ErrorKind.INVALID_INPUT


class ColourDicomError(InvalidDicomImageError):
    """A colour DICOM image (a screen save, a fused colour map): a valid object that is no slice the models read
    (the DICOM node answers it Success and does not keep it)."""


class MixedInputError(InvalidSliceError):
    """DICOM and raster images in one request: they cannot form one series."""

    code = "mixed_input"


class SegmentationInputError(ServiceError):
    """The slices cannot be covered by one DICOM SEG (e.g. they come from several series)."""

    code = "invalid_segmentation_input"
    kind = ErrorKind.INVALID_INPUT


class ReportInputError(ServiceError):
    """The series cannot be described in a DICOM SR (its sources lack the UIDs a report refers to, say)."""

    code = "invalid_report_input"
    kind = ErrorKind.INVALID_INPUT


class NoFlairSeriesError(ServiceError):
    """The DICOM files hold no series the models can read as FLAIR (a T1-only study): reported, never segmented."""

    code = "no_flair_series"
    kind = ErrorKind.INVALID_REQUEST
