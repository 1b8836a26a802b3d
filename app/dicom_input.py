"""Decoding DICOM Part 10 uploads into frames: modality values plus what a DICOM SEG needs to refer back.

`read_dicom` turns one file into `DicomFrame`s (one per frame): the modality values (Rescale Slope / Intercept or the
Modality LUT applied first, BitsStored and signed pixels honoured by pydicom, MONOCHROME1 inverted so that a higher
value always means more signal), the frame's geometry and the instance's header without its pixel data. Grouping
frames into model inputs is `app.dicom_series`'s job.

A file is recognised by its 128-byte preamble followed by ``DICM`` (`is_dicom`), never by its name. Failures are
`app.errors.ServiceError`s whose messages name the rule and the value found; they never quote patient attributes.
Nothing here logs.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, JPEGExtended12Bit

from app.errors import (
    DicomWithoutPixelDataError,
    ImageTooLargeError,
    InvalidDicomImageError,
    OverMemoryBudgetError,
    ServiceError,
    UndecodableDicomError,
    UnsupportedDicomError,
)
from app.memory_budget import MIB, MODEL_INPUT_BYTES, check_cost, describe_bytes
from app.settings import Settings

DICOM_PREAMBLE_LENGTH = 128
DICOM_MAGIC = b"DICM"

# Image storage classes whose pixels are MR slices (or a screenshot of one). Anything else, a SEG, an SR, a CT, is
# refused: the models learned brain MR and their output would mean nothing for other content.
SUPPORTED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
}
SECONDARY_CAPTURE_CLASSES = frozenset(uid for uid, name in SUPPORTED_SOP_CLASSES.items() if "Secondary Capture" in name)
MONOCHROME_INTERPRETATIONS = ("MONOCHROME1", "MONOCHROME2")
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
UNDEFINED_LENGTH = 0xFFFFFFFF
DEFLATED_HEADER_BYTES = 4 * MIB
"""Most of an inflated (Deflated Explicit VR Little Endian) data set kept to read its header; the rest is only
counted, so that a deflate bomb is measured without being held."""
_INFLATE_CHUNK = 1 * MIB
BYTES_PER_SAMPLE = {1: 1, 8: 1, 16: 2, 32: 4, 64: 8}
"""BitsAllocated -> bytes of one decoded sample (1-bit pixels are unpacked to one byte each)."""
_EXPLICIT_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_ITEM_TAG, _SEQUENCE_DELIMITER_TAG = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"
_JPEG_FRAME_MARKERS = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7})
"""SOF markers of JPEG (baseline, extended, progressive, lossless) and SOF55 of JPEG-LS: all hold height, width."""
_RASTER_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # TIFF may share a file with DICOM: not listed


@dataclass(frozen=True, eq=False)
class DicomFrame:
    """One frame of one instance: its modality values and what a DICOM SEG frame needs to point back at it.

    Attributes
    ----------
    values
        float32 HxW modality values (after the modality LUT; MONOCHROME1 inverted so higher means brighter).
    header
        The instance's dataset without its pixel data, shared by all frames of the instance.
    frame_number
        1-based frame number within the instance (1 for single-frame instances).
    number_of_frames
        Frames in the instance.
    image_position, image_orientation, pixel_spacing, slice_thickness, spacing_between_slices
        The frame's geometry in mm (from the per-frame or shared functional groups for enhanced multi-frame
        objects, else from the top level); None where the object does not say.
    """

    values: np.ndarray
    header: Dataset
    frame_number: int
    number_of_frames: int
    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    spacing_between_slices: float | None

    @property
    def sop_instance_uid(self) -> str:
        return str(self.header.SOPInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.header.get("SeriesInstanceUID", ""))

    @property
    def study_instance_uid(self) -> str:
        return str(self.header.get("StudyInstanceUID", ""))

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.header.get("FrameOfReferenceUID", ""))

    @property
    def is_multiframe(self) -> bool:
        return "NumberOfFrames" in self.header


def is_dicom(data: bytes) -> bool:
    """True if `data` is a DICOM Part 10 file: a 128-byte preamble, ``DICM``, then a file meta group.

    ``DICM`` alone is four bytes any file can hold at 128 (a PNG's text chunk): the file meta group must follow (a
    group 0002 tag, then an explicit VR), and a file that starts with a PNG or JPEG signature is that image.
    """
    start = DICOM_PREAMBLE_LENGTH + len(DICOM_MAGIC)
    if data[DICOM_PREAMBLE_LENGTH:start] != DICOM_MAGIC or data.startswith(_RASTER_SIGNATURES):
        return False
    if data[start : start + 2] != b"\x02\x00":  # group 0002, little endian, as Part 10 requires
        return False
    vr = data[start + 4 : start + 6]
    return len(vr) < 2 or (vr.isalpha() and vr.isupper())  # a truncated meta group is still DICOM, and a 400


DEFAULT_MAX_DICOM_PIXELS: int = Settings.model_fields["max_dicom_pixels"].default


@dataclass(frozen=True, eq=False)
class DicomHeader:
    """What a DICOM file's header says about its pixels, read without decoding them (`read_dicom_header`).

    Attributes
    ----------
    data
        The file's bytes, decoded later by `decode_dicom`.
    dataset
        The data set up to (without) the pixel data.
    inflated_bytes
        Size of the data set once inflated, for the Deflated transfer syntax (pydicom holds it whole while it reads);
        0 otherwise.
    """

    data: bytes
    dataset: Dataset
    rows: int
    columns: int
    frames: int
    bits_allocated: int
    inflated_bytes: int = 0

    @property
    def pixels(self) -> int:
        return self.rows * self.columns * self.frames

    @property
    def decoded_bytes(self) -> int:
        """Rows x Columns x frames x bytes per sample (one sample per pixel: colour is refused)."""
        return self.pixels * BYTES_PER_SAMPLE[self.bits_allocated]

    @property
    def cost_bytes(self) -> int:
        """Memory reading the file into model inputs holds at most: the inflated data set (Deflated), the pixel data
        as read and as decoded, the float32 modality values and the uint8 normalised frames (both kept per frame for
        the series), one frame's float64 modality values and LUT output, and one float32 256x256x3 model input per
        frame (a 1x1 frame costs as much as a 256x256 one there) with the three-channel copy made before it."""
        frame = self.rows * self.columns
        return (
            self.inflated_bytes
            + 2 * self.decoded_bytes
            + self.pixels * (4 + 1)
            + frame * (16 + 3)
            + self.frames * MODEL_INPUT_BYTES
        )

    def describe(self) -> str:
        plural = "s" if self.frames != 1 else ""
        inflated = f", {self.inflated_bytes} bytes once inflated" if self.inflated_bytes else ""
        return (
            f"{self.rows} rows x {self.columns} columns x {self.frames} frame{plural} x {self.bits_allocated} bits "
            f"= {self.decoded_bytes} bytes of pixels{inflated}, with their working copies and one "
            f"{describe_bytes(MODEL_INPUT_BYTES)} model input per frame"
        )

    def check_cost(self, max_bytes: int) -> None:
        """Raise `app.errors.OverMemoryBudgetError` if reading the file would take more than `max_bytes`."""
        check_cost("DICOM file", self.cost_bytes, self.describe(), max_bytes)


def read_dicom_header(
    data: bytes, max_pixels: int = DEFAULT_MAX_DICOM_PIXELS, max_bytes: int | None = None
) -> DicomHeader:
    """Read and check one DICOM file's header without decoding its pixels.

    Checks run cheapest first: the Part 10 marker, the SOP class, the presence of pixel data, the photometric
    interpretation and bits, rows x columns x frames against `max_pixels`, and for JPEG 2000 and JPEG pixel data
    the size each frame's codestream declares against Rows and Columns (a decoder allocates what the codestream
    says). A deflated data set is inflated in chunks and only counted past its header: over `max_bytes` it is
    refused before it is ever held whole. The cost of decoding (`DicomHeader.cost_bytes`) is computed, not checked:
    the caller compares it with its budget (`DicomHeader.check_cost`), after counting slices.

    Raises
    ------
    UndecodableDicomError, UnsupportedDicomError, DicomWithoutPixelDataError, InvalidDicomImageError,
    app.errors.ImageTooLargeError, app.errors.OverMemoryBudgetError
    """
    _check_part10(data)
    try:
        meta_end, transfer_syntax = _file_meta(data)
        if _is_deflated(transfer_syntax):
            dataset, has_pixels, inflated = _inflated_header(data, meta_end, max_bytes)
            pixel_position = -1  # deflated pixel data is native: no codestream to check
        else:
            buffer = io.BytesIO(data)
            dataset = pydicom.dcmread(buffer, stop_before_pixels=True)
            pixel_position, inflated = buffer.tell(), 0
            has_pixels = _pixel_data_tag_at(data, pixel_position)
        _check_sop_class(dataset, has_pixels)
        _check_pixel_description(dataset)
        rows, columns, frames = _dimensions(dataset)
        bits = _bits_allocated(dataset)
    except ServiceError:
        raise
    except Exception as error:  # pydicom parses lazily: a garbled value surfaces as any type on first access
        raise UndecodableDicomError(f"DICOM file cannot be read (truncated or corrupt): {error}") from error
    if rows * columns * frames > max_pixels:
        raise ImageTooLargeError(
            f"DICOM image is {rows}x{columns} pixels x {frames} frames = {rows * columns * frames} pixels; "
            f"the limit is {max_pixels} pixels"
        )
    if pixel_position >= 0 and _is_encapsulated(transfer_syntax):
        _check_codestreams(data, pixel_position, UID(transfer_syntax), rows, columns)
    return DicomHeader(data, dataset, rows, columns, frames, bits, inflated)


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


def decode_dicom(header: DicomHeader) -> list[DicomFrame]:
    """Decode the pixels of a file whose header `read_dicom_header` checked (CPU work: call it off the event loop).

    Raises
    ------
    UndecodableDicomError, UnsupportedDicomError, InvalidDicomImageError
    """
    try:
        dataset = pydicom.dcmread(io.BytesIO(header.data))
        _check_complete(dataset)
        # The same bytes parse the same way; this only guards the allocation below against any disagreement.
        found = (*_dimensions(dataset), _bits_allocated(dataset))
    except ServiceError:
        raise
    except Exception as error:  # pydicom parses lazily: a garbled value surfaces as any type on first access
        raise UndecodableDicomError(f"DICOM file cannot be read (truncated or corrupt): {error}") from error
    frames = header.frames
    if found != (header.rows, header.columns, frames, header.bits_allocated):
        raise UndecodableDicomError("DICOM file reads differently from its header (rows, columns, frames or bits)")
    values = _decode_values(dataset, frames)
    for keyword in PIXEL_DATA_KEYWORDS:
        if keyword in dataset:
            delattr(dataset, keyword)  # the header is kept per frame: no need to hold the encoded pixels twice
    return [_frame(dataset, values[index], index, frames) for index in range(frames)]


def _check_part10(data: bytes) -> None:
    if not is_dicom(data):
        raise UndecodableDicomError(
            f"a DICOM file must hold {DICOM_MAGIC.decode()} at byte {DICOM_PREAMBLE_LENGTH} (Part 10 format); "
            f"found {data[DICOM_PREAMBLE_LENGTH : DICOM_PREAMBLE_LENGTH + 4]!r}"
        )


def _file_meta(data: bytes) -> tuple[int, str]:
    """Where the file meta group ends, and its Transfer Syntax UID ('' if absent).

    Read by hand (Part 10 fixes it: explicit VR little endian, group 0002, right after ``DICM``) because pydicom
    inflates a whole deflated data set as soon as it has read the meta group.
    """
    position = DICOM_PREAMBLE_LENGTH + len(DICOM_MAGIC)
    transfer_syntax = ""
    while position + 8 <= len(data) and data[position : position + 2] == b"\x02\x00":
        element = int.from_bytes(data[position + 2 : position + 4], "little")
        if data[position + 4 : position + 6] in _EXPLICIT_LONG_VRS:
            length, start = int.from_bytes(data[position + 8 : position + 12], "little"), position + 12
        else:
            length, start = int.from_bytes(data[position + 6 : position + 8], "little"), position + 8
        if length == UNDEFINED_LENGTH or start + length > len(data):
            raise UndecodableDicomError("DICOM file meta group (0002) is truncated or has an undefined length")
        if element == 0x0010:
            transfer_syntax = data[start : start + length].rstrip(b"\x00 ").decode("ascii", "replace")
        position = start + length
    return position, transfer_syntax


def _inflated_header(data: bytes, meta_end: int, max_bytes: int | None) -> tuple[Dataset, bool, int]:
    """The header of a deflated data set, whether pixel data follows it, and the inflated size.

    The stream is inflated a chunk at a time; the first `DEFLATED_HEADER_BYTES` are kept, the rest only counted.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    kept, inflated = bytearray(), 0
    try:
        for start in range(meta_end, len(data), 64 * 1024):
            output = inflater.decompress(data[start : start + 64 * 1024], _INFLATE_CHUNK)
            while True:
                inflated += len(output)
                if len(kept) < DEFLATED_HEADER_BYTES:
                    kept += output[: DEFLATED_HEADER_BYTES - len(kept)]
                if max_bytes is not None and inflated > max_bytes:
                    raise OverMemoryBudgetError(
                        f"DICOM file's deflated data set inflates to more than {describe_bytes(max_bytes)}, the "
                        "memory budget (DECODE_MEMORY_BYTES); refused before it was held"
                    )
                if not inflater.unconsumed_tail:
                    break
                output = inflater.decompress(inflater.unconsumed_tail, _INFLATE_CHUNK)
            if inflater.eof:
                break
    except zlib.error as error:
        raise UndecodableDicomError(f"DICOM deflated data set cannot be inflated: {error}") from error
    if not inflater.eof:
        raise UndecodableDicomError("DICOM deflated data set is truncated (the deflate stream does not end)")
    reached_pixels = False

    def at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
        nonlocal reached_pixels
        reached_pixels = reached_pixels or tag in PIXEL_DATA_TAGS
        return reached_pixels

    cut = inflated > len(kept)
    try:
        dataset = read_dataset(DicomBytesIO(bytes(kept)), False, True, stop_when=at_pixel_data)
    except Exception:
        if not cut or reached_pixels:
            raise
        dataset = None
    if dataset is None or (cut and not reached_pixels):
        raise OverMemoryBudgetError(
            f"DICOM file's header (the data set before its pixel data) is over {describe_bytes(DEFLATED_HEADER_BYTES)} "
            "once inflated"
        )
    return dataset, reached_pixels, inflated


def _pixel_data_tag_at(data: bytes, position: int) -> bool:
    """Whether a pixel data element starts at `position` (little endian, or the retired big endian)."""
    tag = data[position : position + 4]
    if len(tag) < 4:
        return False
    little = int.from_bytes(tag[:2], "little") << 16 | int.from_bytes(tag[2:], "little")
    big = int.from_bytes(tag[:2], "big") << 16 | int.from_bytes(tag[2:], "big")
    return little in PIXEL_DATA_TAGS or big in PIXEL_DATA_TAGS


def _is_deflated(transfer_syntax: str) -> bool:
    return transfer_syntax == DeflatedExplicitVRLittleEndian


def _is_encapsulated(transfer_syntax: str) -> bool:
    try:
        return UID(transfer_syntax).is_encapsulated
    except ValueError:  # not a transfer syntax pydicom knows: it reads the data as native
        return False


def _bits_allocated(dataset: Dataset) -> int:
    bits = int(dataset.BitsAllocated)
    if bits not in BYTES_PER_SAMPLE:
        raise InvalidDicomImageError(f"DICOM BitsAllocated must be one of 1, 8, 16, 32, 64; got {bits}")
    return bits


def _check_codestreams(data: bytes, position: int, transfer_syntax: UID, rows: int, columns: int) -> None:
    """Refuse a compressed frame whose codestream declares another size than Rows x Columns.

    The decoders allocate what the codestream says: a header of 64x64 over a 16384x16384 JPEG 2000 codestream
    would take 512 MiB before pydicom noticed the mismatch.
    """
    if int.from_bytes(data[position + 8 : position + 12], "little") != UNDEFINED_LENGTH:
        return  # not encapsulated after all: pydicom refuses it when decoding
    jpeg2000 = transfer_syntax.startswith("1.2.840.10008.1.2.4.9") or transfer_syntax.startswith(
        "1.2.840.10008.1.2.4.20"
    )
    for number, fragment in enumerate(_fragments(data, position + 12), start=1):
        size = _codestream_size(fragment)
        if size is None:
            if jpeg2000 and number == 1:
                raise InvalidDicomImageError(
                    "DICOM JPEG 2000 pixel data must start with a codestream (SOC and SIZ markers); it does not"
                )
            continue
        if size != (rows, columns):
            raise InvalidDicomImageError(
                f"DICOM pixel data fragment {number} holds a {size[1]}x{size[0]} codestream (columns x rows) but the "
                f"header says Columns {columns}, Rows {rows}; refused before decoding"
            )


def _fragments(data: bytes, position: int) -> Iterator[memoryview]:
    """The fragments of encapsulated pixel data starting at `position` (the Basic Offset Table item), without
    copying them."""
    view = memoryview(data)
    first = True
    while position + 8 <= len(data):
        tag, length = data[position : position + 4], int.from_bytes(data[position + 4 : position + 8], "little")
        if tag == _SEQUENCE_DELIMITER_TAG:
            return
        if tag != _ITEM_TAG:
            raise UndecodableDicomError("DICOM encapsulated pixel data has an element that is not an item")
        start = position + 8
        if not first:
            yield view[start : start + length]
        first = False  # the first item is the Basic Offset Table
        position = start + length


def _codestream_size(fragment: memoryview) -> tuple[int, int] | None:
    """(rows, columns) a JPEG 2000 (SIZ) or JPEG / JPEG-LS (SOF) codestream starting `fragment` declares."""
    head = bytes(fragment[:24])
    if head[:4] == b"\xff\x4f\xff\x51" and len(head) == 24:
        width, height, x_offset, y_offset = (int.from_bytes(head[i : i + 4], "big") for i in (8, 12, 16, 20))
        return height - y_offset, width - x_offset
    if head[:2] != b"\xff\xd8":
        return None
    position = 2
    while position + 4 <= len(fragment):
        if fragment[position] != 0xFF:
            return None
        marker = fragment[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            position += 2
            continue
        if marker in _JPEG_FRAME_MARKERS and position + 9 <= len(fragment):
            height = int.from_bytes(fragment[position + 5 : position + 7], "big")
            width = int.from_bytes(fragment[position + 7 : position + 9], "big")
            return height, width
        if marker == 0xDA:  # start of scan before any frame header
            return None
        position += 2 + int.from_bytes(fragment[position + 2 : position + 4], "big")
    return None


def _check_complete(dataset: Dataset) -> None:
    """pydicom reads a value cut short by the end of the file without complaint; only the last element can be."""
    tags = list(dataset.keys())
    if not tags:
        return
    element = dataset.get_item(tags[-1])  # the raw element: its value is not decoded here
    declared = getattr(element, "length", None)
    value = element.value
    if declared is not None and declared != UNDEFINED_LENGTH and isinstance(value, bytes) and len(value) < declared:
        raise UndecodableDicomError(
            f"DICOM file is truncated: element {element.tag} declares {declared} bytes but the file holds {len(value)}"
        )


def _check_sop_class(dataset: Dataset, has_pixels: bool) -> None:
    sop_class = dataset.get("SOPClassUID")
    if sop_class is None:
        raise UndecodableDicomError(
            "DICOM dataset has no SOP Class UID (0008,0016): the file is truncated or not a DICOM object"
        )
    if str(sop_class) not in SUPPORTED_SOP_CLASSES:
        name = UID(str(sop_class)).name
        raise UnsupportedDicomError(
            f"DICOM SOP class must be one of {', '.join(SUPPORTED_SOP_CLASSES.values())}; got {name} ({sop_class})"
        )
    modality = str(dataset.get("Modality", "") or "")
    if str(sop_class) in SECONDARY_CAPTURE_CLASSES and modality.upper() != "MR":
        raise UnsupportedDicomError(
            "a DICOM Secondary Capture is read only as a capture of an MR slice (Modality MR); "
            f"got Modality {modality or 'missing'}"
        )
    if not has_pixels:
        raise DicomWithoutPixelDataError(
            f"DICOM {SUPPORTED_SOP_CLASSES[str(sop_class)]} must carry Pixel Data (7FE0,0010); this one has none "
            "(or the file is truncated before it)"
        )


def _check_pixel_description(dataset: Dataset) -> None:
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if keyword not in dataset:
            raise UndecodableDicomError(f"DICOM image must state {keyword}; it is missing (truncated or corrupt file)")
    samples = int(dataset.get("SamplesPerPixel", 1))
    interpretation = str(dataset.get("PhotometricInterpretation", ""))
    if samples != 1 or interpretation not in MONOCHROME_INTERPRETATIONS:
        raise InvalidDicomImageError(
            "DICOM image must be greyscale (SamplesPerPixel 1, PhotometricInterpretation MONOCHROME1 or MONOCHROME2); "
            f"got SamplesPerPixel {samples}, PhotometricInterpretation {interpretation or 'missing'}"
        )


def _dimensions(dataset: Dataset) -> tuple[int, int, int]:
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as error:
        raise UndecodableDicomError(
            f"DICOM Number of Frames must be a positive integer; got {dataset.NumberOfFrames!r}"
        ) from error
    if rows < 1 or columns < 1 or frames < 1:
        raise InvalidDicomImageError(
            f"DICOM image must have at least one row, column and frame; got {rows}x{columns} x {frames} frames"
        )
    return rows, columns, frames


def _decode_values(dataset: Dataset, frames: int) -> np.ndarray:
    """Decoded pixels as float32 (frames, rows, columns) modality values, brighter = higher."""
    file_meta = getattr(dataset, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if transfer_syntax is not None and transfer_syntax.is_compressed and not _decoder_available(transfer_syntax):
        raise UnsupportedDicomError(
            f"DICOM transfer syntax {transfer_syntax.name} ({transfer_syntax}) cannot be decoded by this service"
        )
    bits_stored = int(dataset.get("BitsStored") or dataset.BitsAllocated)
    if transfer_syntax == JPEGExtended12Bit and bits_stored > 8 and not _decodes_12_bit_jpeg():
        raise UnsupportedDicomError(
            f"DICOM transfer syntax {transfer_syntax.name} ({transfer_syntax}) with {bits_stored} bits stored cannot "
            "be decoded by this service (no 12-bit JPEG decoder installed); send it uncompressed or losslessly "
            "compressed"
        )
    try:
        stored = dataset.pixel_array  # pydicom applies BitsStored and the sign of PixelRepresentation
    except Exception as error:  # pydicom and its plugins raise many types for a broken pixel stream
        raise UndecodableDicomError(f"DICOM pixel data cannot be decoded: {error}") from error
    stored = stored.reshape(frames, int(dataset.Rows), int(dataset.Columns))
    values = np.empty(stored.shape, dtype=np.float32)
    for index in range(frames):
        values[index] = _modality_values(dataset, stored[index], index)
    if str(dataset.PhotometricInterpretation) == "MONOCHROME1":
        # MONOCHROME1 shows low values bright; negating keeps "higher = brighter", and the stretch that follows
        # removes the sign, so the result matches the image a viewer displays.
        np.negative(values, out=values)
    return values


def _decoder_available(transfer_syntax: UID) -> bool:
    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except NotImplementedError:  # pydicom knows no decoder at all for this transfer syntax
        return False


def _decodes_12_bit_jpeg() -> bool:
    """Only pydicom's pylibjpeg plugin (with pylibjpeg-libjpeg, GPL, not installed) decodes 12-bit JPEG; GDCM and
    Pillow, which are, refuse it."""
    try:
        return "pylibjpeg" in get_decoder(JPEGExtended12Bit).available_plugins
    except NotImplementedError:
        return False


def _modality_values(dataset: Dataset, stored: np.ndarray, index: int) -> np.ndarray:
    """Apply the modality LUT first, as the standard orders: a Modality LUT Sequence, else slope and intercept."""
    if "ModalityLUTSequence" in dataset:
        _check_modality_lut(dataset)
        try:
            return np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
        except Exception as error:  # a descriptor pydicom cannot use: the element is wrong, whatever the type
            raise InvalidDicomImageError(
                f"ModalityLUTSequence (0028,3000) cannot be applied ({type(error).__name__})"
            ) from error
    slope = _number(_frame_value(dataset, index, "PixelValueTransformationSequence", "RescaleSlope"), "RescaleSlope")
    intercept = _number(
        _frame_value(dataset, index, "PixelValueTransformationSequence", "RescaleIntercept"), "RescaleIntercept"
    )
    values = stored.astype(np.float64)
    if slope is not None and slope != 1.0:
        values *= slope
    if intercept is not None and intercept != 0.0:
        values += intercept
    return values


def _check_modality_lut(dataset: Dataset) -> None:
    items = dataset.ModalityLUTSequence
    if len(items) != 1:
        raise InvalidDicomImageError(f"ModalityLUTSequence (0028,3000) must hold one item; it holds {len(items)}")
    for keyword in ("LUTDescriptor", "LUTData"):
        if keyword not in items[0]:
            raise InvalidDicomImageError(f"the ModalityLUTSequence (0028,3000) item has no {keyword}")


def _number(value: object, keyword: str) -> float | None:
    """`value` as a finite float, or a 400 naming the element (never its value: it is the file's content)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidDicomImageError(f"{keyword} must be a decimal number") from None
    if not math.isfinite(number):
        raise InvalidDicomImageError(f"{keyword} must be a finite number")
    return number


def _frame_value(dataset: Dataset, index: int, sequence: str, keyword: str) -> object | None:
    """An attribute of frame `index`: per-frame functional group, then shared group, then the top level."""
    candidates = []
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        candidates.append(per_frame[index])
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared:
        candidates.append(shared[0])
    for group in candidates:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0][keyword].value
    return dataset.get(keyword)


def _floats(value: object, count: int, keyword: str) -> tuple[float, ...] | None:
    """`count` numbers, or None when absent or unreadable (geometry is optional); a 400 for infinite ones, which
    no position can be and which would break the arithmetic on positions."""
    if value is None:
        return None
    try:
        items = value if isinstance(value, Sequence) and not isinstance(value, str | bytes) else [value]
        numbers = tuple(float(item) for item in items)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(number) for number in numbers):
        raise InvalidDicomImageError(f"{keyword} must hold finite numbers")
    return numbers if len(numbers) == count else None


def frame_placement(dataset: Dataset, index: int) -> tuple[str, tuple[float, ...] | None, tuple[float, ...] | None]:
    """Frame of Reference UID, Image Position and Image Orientation (Patient) of frame `index` (0-based), read from
    the header alone: what groups frames into slices."""
    position = _floats(
        _frame_value(dataset, index, "PlanePositionSequence", "ImagePositionPatient"), 3, "ImagePositionPatient"
    )
    orientation = _floats(
        _frame_value(dataset, index, "PlaneOrientationSequence", "ImageOrientationPatient"),
        6,
        "ImageOrientationPatient",
    )
    return str(dataset.get("FrameOfReferenceUID", "")), position, orientation


def _frame(dataset: Dataset, values: np.ndarray, index: int, frames: int) -> DicomFrame:
    def floats(sequence: str, keyword: str, count: int) -> tuple[float, ...] | None:
        return _floats(_frame_value(dataset, index, sequence, keyword), count, keyword)

    thickness = floats("PixelMeasuresSequence", "SliceThickness", 1)
    between = floats("PixelMeasuresSequence", "SpacingBetweenSlices", 1)
    return DicomFrame(
        values=values,
        header=dataset,
        frame_number=index + 1,
        number_of_frames=frames,
        image_position=floats("PlanePositionSequence", "ImagePositionPatient", 3),
        image_orientation=floats("PlaneOrientationSequence", "ImageOrientationPatient", 6),
        pixel_spacing=floats("PixelMeasuresSequence", "PixelSpacing", 2),
        slice_thickness=thickness[0] if thickness else None,
        spacing_between_slices=between[0] if between else None,
    )
