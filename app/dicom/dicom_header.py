"""Reading and checking a DICOM file's header without decoding its pixels: what the file is, and what decoding it
would cost.

A file is recognised by its 128-byte preamble followed by ``DICM`` (`is_dicom`), never by its name.
`read_dicom_header` checks the SOP class, the pixel description and the size (rows x columns x frames, and for
compressed pixel data the size each codestream declares, `app.dicom.dicom_codestream`) and returns a `DicomHeader`,
whose `cost_bytes` is the memory decoding the file takes at most; `app.dicom.dicom_input.decode_dicom` decodes it.
Failures are `app.errors.ServiceError`s whose messages name the rule and the value found; they never quote patient
attributes. Nothing here logs.
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, KeyObjectSelectionDocumentStorage, MRImageStorage, SecondaryCaptureImageStorage
from pydicom.valuerep import VR

from app.dicom.dicom_codestream import (
    MAY_BE_LOSSY_TRANSFER_SYNTAXES,
    UNDEFINED_LENGTH,
    check_codestreams,
    lossy_method,
    mark_lossy,
)
from app.dicom.part10 import (
    DICOM_MAGIC,
    DICOM_PREAMBLE_LENGTH,
    LONG_VALUE_BYTES,
    dcmread_bounded,
    held_value_bytes,
    inflated_header,
    is_deflated,
    is_encapsulated,
    pixel_data_tag_at,
    read_file_meta,
)
from app.errors import (
    ColourDicomError,
    DicomWithoutPixelDataError,
    ImageTooLargeError,
    InvalidDicomImageError,
    KeyObjectSelectionError,
    OtherModalityCaptureError,
    ServiceError,
    UndecodableDicomError,
    UnsupportedSopClassError,
    decoder_reason,
)
from app.memory_budget import MODEL_INPUT_BYTES, check_cost, describe_bytes
from app.settings import MIB, Settings

# The bytes `is_dicom` looks at: a file's first DICOM_SIGNATURE_BYTES tell it as well as the whole file.
DICOM_SIGNATURE_BYTES = DICOM_PREAMBLE_LENGTH + len(DICOM_MAGIC) + 6

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
# Every Photometric Interpretation term of PS3.3 C.7.6.3.1.2, retired ones included.
PHOTOMETRIC_INTERPRETATIONS = (
    *MONOCHROME_INTERPRETATIONS,
    *("PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422"),
    *("YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB"),
)
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
HEADER_BYTES_PER_READ = 400
"""Memory a header costs per read pydicom made of it (`DicomHeader.header_bytes`), parsed and held until the answer:
24 files of 99,000 empty private elements (about 198,000 reads each) take 1.54 GiB more than the same files without
them, 340 bytes a read."""
HEADER_READS_INCLUDED = 1_000
"""Reads of a header not counted apart: an ordinary header takes a few hundred (111 for the test series' files),
within what each file's pixel figures leave over; past them every read counts."""
BYTES_PER_SAMPLE = {1: 1, 8: 1, 16: 2, 32: 4, 64: 8}
"""BitsAllocated -> bytes of one decoded sample (1-bit pixels are unpacked to one byte each)."""
_RASTER_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # TIFF may share a file with DICOM: not listed


def is_dicom(data: bytes) -> bool:
    """True if `data` is a DICOM Part 10 file: a 128-byte preamble, ``DICM``, then a file meta group.

    ``DICM`` alone is four bytes any file can hold at 128 (a PNG's text chunk): the file meta group must follow (a
    group 0002 tag, then an explicit VR), and a file that starts with a PNG or JPEG signature is that image.
    """
    start = DICOM_PREAMBLE_LENGTH + len(DICOM_MAGIC)
    if data[DICOM_PREAMBLE_LENGTH:start] != DICOM_MAGIC or data.startswith(_RASTER_SIGNATURES):
        return False
    if not b"\x02\x00".startswith(data[start : start + 2]):  # group 0002, little endian, as Part 10 requires
        return False  # (a file cut right after DICM is still DICOM, and a 400)
    vr = data[start + 4 : start + 6]
    return len(vr) < 2 or (vr.isalpha() and vr.isupper())  # a truncated meta group is still DICOM, and a 400


DEFAULT_MAX_DICOM_PIXELS: int = Settings.model_fields["max_dicom_pixels"].default


@dataclass(frozen=True, eq=False)
class DicomHeader:
    """What a DICOM file's header says about its pixels, read without decoding them (`read_dicom_header`).

    Attributes
    ----------
    data
        The file's bytes, decoded later by `app.dicom.dicom_input.decode_dicom`.
    dataset
        The data set up to (without) the pixel data.
    inflated_bytes
        Size of the data set once inflated, for the Deflated transfer syntax (pydicom holds it whole while it reads);
        0 otherwise.
    header_reads
        Reads pydicom made of the header: what the parsed `dataset` holds grows with them (`header_bytes`).
    pixel_position
        Where in `data` the pixel data element starts, so that what follows the header can be read without parsing
        the header again (`app.dicom.instance_content`); -1 for a deflated data set (its pixel data lies inside the
        deflate stream) and for a header not read from a file.
    parsed_value_bytes
        The values a header holds past what its reads count (`part10.held_value_bytes`): an inflated header's, up to
        `DEFLATED_HEADER_BYTES` from a few KB sent, and the items of the sequences pydicom keeps raw until the
        header's checks parse them (59,000 items sent as 3.7 KB deflated were counted 1.2 MB and held 65 MB, six of
        them 98 s of reading: attack review 68 F2).
    path
        The file a header read from disk came from, its bytes not read (`data` empty): `pixel_data_digest` reads it.
    """

    data: bytes
    dataset: Dataset
    rows: int
    columns: int
    frames: int
    bits_allocated: int
    inflated_bytes: int = 0
    header_reads: int = 0
    pixel_position: int = -1
    parsed_value_bytes: int = 0
    path: Path | None = None

    def pixel_data_digest(self) -> bytes | None:
        """SHA-256 of the pixel data element as the file stores it; None where it cannot be had cheaply (a deflated
        file: its pixels lie inside the stream) or the file cannot be read. Two files of equal digests and equal
        decoding attributes decode to the same values (`app.series.reading.resent_files_by_header`)."""
        data, position = self.data, self.pixel_position
        if not data and self.path is not None:
            try:
                header = read_dicom_header(self.path.read_bytes(), max_pixels=self.pixels)
            except (ServiceError, OSError):
                return None
            data, position = header.data, header.pixel_position
        return hashlib.sha256(memoryview(data)[position:]).digest() if position >= 0 else None

    @property
    def header_bytes(self) -> int:
        """Memory the parsed header holds until the answer, which a header of many tiny elements, or an inflated
        one, makes large: a request's headers together count in its cost (`app.series.reading.plan_headers`)."""
        return max(0, self.header_reads - HEADER_READS_INCLUDED) * HEADER_BYTES_PER_READ + self.parsed_value_bytes

    @property
    def pixels(self) -> int:
        return self.rows * self.columns * self.frames

    @property
    def decoded_bytes(self) -> int:
        """Rows x Columns x frames x bytes per sample (one sample per pixel: colour is refused)."""
        return self.pixels * BYTES_PER_SAMPLE[self.bits_allocated]

    @property
    def cost_bytes(self) -> int:
        """Memory reading the file into model inputs holds at most: what it keeps and its working copies."""
        return self.kept_bytes + self.working_bytes

    @property
    def kept_bytes(self) -> int:
        """What the file leaves held until the models have answered its series: per pixel the float32 modality
        values, the uint8 normalised frame and its share of the slice image, and one float32 256x256x3 model input
        per frame (a 1x1 frame costs as much as a 256x256 one there)."""
        return self.pixels * (4 + 1 + 1) + self.frames * MODEL_INPUT_BYTES

    @property
    def working_bytes(self) -> int:
        """What reading the file holds only while it is read (the files of a series are read one after another):
        the inflated data set (Deflated), the pixel data as read and as decoded, one frame's float64 modality values
        and LUT output, and the three-channel copy made before a model input."""
        frame = self.rows * self.columns
        return self.inflated_bytes + 2 * self.decoded_bytes + frame * (16 + 3)

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


@contextmanager
def garbled_values_refused() -> Iterator[None]:
    """Reading a data set's values, turn any exception but the service's own into `UndecodableDicomError`: pydicom
    parses lazily, so a garbled value surfaces on first access, as any exception type."""
    try:
        yield
    except ServiceError:
        raise
    except Exception as error:
        if _raised_by_recursion(error):  # pydicom reads a nested sequence by recursion: the file's own nesting
            raise UndecodableDicomError(
                "DICOM file nests sequences deeper than can be read (hundreds of levels; real headers nest a few)"
            ) from None
        raise UndecodableDicomError(
            f"DICOM file cannot be read (truncated or corrupt): {decoder_reason(error)}"
        ) from error


def _raised_by_recursion(error: BaseException | None) -> bool:
    """Whether `error` is Python's recursion limit, or came of it: pydicom turns any exception while it reads an
    item's tag into ``OSError("No tag to read ...")``, which read as a truncated file."""
    while error is not None:
        if isinstance(error, RecursionError):
            return True
        error = error.__cause__ or error.__context__
    return False


UNREADABLE_HEADER = "unreadable_header"
"""The `file_errors` code of a file that `read_header` could not read."""


HEADER_DEFER_BYTES = LONG_VALUE_BYTES
"""A value of a file read by `read_header` longer than this stays where it is until asked for (pydicom's
`defer_size`): choosing a study's series holds every file's header at once, and a private value of 100 MiB before
the pixel data would be held in each. The same length as a deflated header drops (there is no
place to leave a value in an inflated stream), so that both readers keep the same values."""
HEADER_MAX_INFLATED_BYTES = 512 * MIB
"""A deflated file read by `read_header` is inflated a chunk at a time and counted up to this (its header kept up
to `DEFLATED_HEADER_BYTES`): pydicom inflates a whole deflated data set before reading any of it, so 135 KB sent
would hold 100 MiB each."""


def read_header(source: bytes | Path, tags: Iterable[str] | None = None) -> Dataset | None:
    """A file's DICOM header without its pixels (only `tags`, when given), or None when pydicom cannot read it.

    For the places that look at a study's files before the flow reads them (the node and pacs-sync choosing series,
    the notes naming unread files, the CLI naming masks, the rejection note's patient): a file whose header cannot be
    read is one to leave out and count, never an error for the files beside it. pydicom answers a damaged file with
    many exception types (InvalidDicomError, OSError, ValueError, KeyError, struct.error ...), so any exception means
    unreadable; a missing path too. One reader, one policy: otherwise one tool fails a whole study for an unreadable
    first file that another counts and skips. The flow's own reader, with its checks and errors, is
    `read_dicom_header`.

    An element of a value representation DICOM does not define makes the file unreadable here too. What it holds is
    bounded: long values are left unread (`HEADER_DEFER_BYTES`), and a deflated data set is inflated in chunks, its
    header kept up to `DEFLATED_HEADER_BYTES` (a longer one, or one inflating past `HEADER_MAX_INFLATED_BYTES`, is
    unreadable here).
    """
    try:
        if is_deflated(_transfer_syntax(source)):
            dataset = _deflated_header(source.read_bytes() if isinstance(source, Path) else source)
        else:
            with BytesIO(source) if isinstance(source, bytes) else source.open("rb") as stream:
                dataset = pydicom.dcmread(
                    stream,
                    stop_before_pixels=True,
                    specific_tags=None if tags is None else list(tags),
                    defer_size=HEADER_DEFER_BYTES,
                )
                _mark_lossy_coding(dataset, source, stream)
        refuse_unreadable_values(dataset)  # else the first read of that element raises, outside this policy
    except Exception:  # noqa: BLE001 - unreadable, whatever pydicom calls it: the caller counts it
        return None
    return dataset


def _mark_lossy_coding(dataset: Dataset, source: bytes | Path, stream: BinaryIO) -> None:
    """Mark the header lossy when its pixel data (where `stream`, `source` opened, stopped) was coded lossy in a
    syntax that may be either (`lossy_method`), as `read_dicom_header` does: the DICOM node and pacs-sync choose
    series by these headers, and took a JPEG 2000 copy coded with the 9-7 wavelet for the original (interop review 65
    F1). Only the codestreams' headers are read (an open file is mapped, not read whole)."""
    transfer_syntax = str(dataset.file_meta.get("TransferSyntaxUID", ""))
    if transfer_syntax not in MAY_BE_LOSSY_TRANSFER_SYNTAXES:
        return
    items_start = stream.tell() + 12  # after the Pixel Data element's tag, VR and length (Explicit VR)
    if isinstance(source, bytes):
        mark_lossy(dataset, lossy_method(transfer_syntax, source, items_start))
        return
    with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
        mark_lossy(dataset, lossy_method(transfer_syntax, data, items_start))


def _transfer_syntax(source: bytes | Path) -> str:
    """The file's Transfer Syntax UID, read from its file meta group alone ('' without one)."""
    if isinstance(source, Path):
        return str(pydicom.filereader.read_file_meta_info(source).get("TransferSyntaxUID", ""))
    return read_file_meta(source)[1] if source[DICOM_PREAMBLE_LENGTH : DICOM_PREAMBLE_LENGTH + 4] == b"DICM" else ""


def _deflated_header(data: bytes) -> Dataset:
    """The header of a deflated file, inflated in bounded chunks (`inflated_header`), with its transfer syntax."""
    meta_end, transfer_syntax = read_file_meta(data)
    dataset, _, _, _, _ = inflated_header(data, meta_end, HEADER_MAX_INFLATED_BYTES)
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    return dataset


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
    with garbled_values_refused():
        meta_end, transfer_syntax = read_file_meta(data)
        if is_deflated(transfer_syntax):
            dataset, has_pixels, inflated, reads, _ = inflated_header(data, meta_end, max_bytes)
            pixel_position = -1  # deflated pixel data is native: no codestream to check
            counted_by_reads = 0  # its values came out of the stream: all of them count
        else:
            dataset, buffer = dcmread_bounded(data, stop_before_pixels=True)
            pixel_position, inflated, reads = buffer.tell(), 0, buffer.reads
            counted_by_reads = held_value_bytes(dataset)  # raw values, and what was parsed read by read
            has_pixels = pixel_data_tag_at(data, pixel_position)
            if not has_pixels and buffer.cut:
                # pydicom stops quietly at the end of the bytes, keeping a cut value (a SOP Class UID "1.2.840.1"
                # would read as an unsupported class): a file that ends inside an element is broken, not unsupported.
                raise UndecodableDicomError(
                    f"DICOM file ends inside its header, at byte {len(data)}, before its pixel data (truncated)"
                )
        _check_sop_class(dataset, has_pixels)
        refuse_undefined_vrs(dataset)  # named before a check trips on it
        _check_pixel_description(dataset)
        _check_functional_groups(dataset)
    rows, columns, frames, bits = checked_dimensions(dataset, max_pixels)
    with garbled_values_refused():  # after the checks that name a value's problem more precisely
        refuse_unreadable_values(dataset)
    parsed_value_bytes = max(0, held_value_bytes(dataset) - counted_by_reads)  # with the sequences the checks parsed
    if pixel_position >= 0 and is_encapsulated(transfer_syntax):
        samples = int(dataset.get("SamplesPerPixel") or 1)
        check_codestreams(data, pixel_position, UID(transfer_syntax), rows, columns, samples, bits, frames)
        # Before the series are chosen: a lossy copy that does not say so is not taken for an original (interop
        # review 64 F5; JPEG 2000 told by its codestream: review 73 F3).
        mark_lossy(dataset, lossy_method(transfer_syntax, data, pixel_position + 12))
    return DicomHeader(data, dataset, rows, columns, frames, bits, inflated, reads, pixel_position, parsed_value_bytes)


def checked_dimensions(dataset: Dataset, max_pixels: int) -> tuple[int, int, int, int]:
    """Rows, columns, frames and BitsAllocated of a header, refused over `max_pixels` (rows x columns x frames).

    Raises
    ------
    UndecodableDicomError, InvalidDicomImageError, app.errors.ImageTooLargeError
    """
    with garbled_values_refused():
        rows, columns, frames = image_dimensions(dataset)
        bits = bits_allocated(dataset)
    if rows * columns * frames > max_pixels:
        raise ImageTooLargeError(
            f"DICOM image is {rows}x{columns} pixels x {frames} frames = {rows * columns * frames} pixels; "
            f"the limit is {max_pixels} pixels"
        )
    return rows, columns, frames, bits


def _check_part10(data: bytes) -> None:
    if not is_dicom(data):
        raise UndecodableDicomError(
            f"a DICOM file must hold {DICOM_MAGIC.decode()} at byte {DICOM_PREAMBLE_LENGTH} (Part 10 format); "
            f"found {data[DICOM_PREAMBLE_LENGTH : DICOM_PREAMBLE_LENGTH + 4]!r}"
        )


def bits_allocated(dataset: Dataset) -> int:
    bits = int(dataset.BitsAllocated)
    if bits not in BYTES_PER_SAMPLE:
        raise InvalidDicomImageError(f"DICOM BitsAllocated must be one of 1, 8, 16, 32, 64; got {bits}")
    return bits


# Modality defined terms (PS3.3 C.7.3.1.1.1) a refusal may name; any other value is the file's content, never echoed.
_MODALITY_TERMS = frozenset(
    [
        "AR",
        "ASMT",
        "AU",
        "BDUS",
        "BI",
        "BMD",
        "CR",
        "CT",
        "CTPROTOCOL",
        "DG",
        "DOC",
        "DX",
        "ECG",
        "EPS",
        "ES",
        "FID",
        "GM",
        "HC",
        "HD",
        "IO",
        "IOL",
        "IVOCT",
        "IVUS",
        "KER",
        "KO",
        "LEN",
        "LS",
        "MG",
        "MR",
        "M3D",
        "NM",
        "OAM",
        "OCT",
        "OP",
        "OPM",
        "OPT",
        "OPTBSV",
        "OPTENF",
        "OPV",
        "OSS",
        "OT",
        "PLAN",
        "PR",
        "PT",
        "PX",
        "REG",
        "RESP",
        "RF",
        "RG",
        "RTDOSE",
        "RTIMAGE",
        "RTINTENT",
        "RTPLAN",
        "RTRAD",
        "RTRECORD",
        "RTSEGANN",
        "RTSTRUCT",
        "RWV",
        "SEG",
        "SM",
        "SMR",
        "SR",
        "SRF",
        "STAIN",
        "TEXTUREMAP",
        "TG",
        "US",
        "VA",
        "XA",
        "XC",
    ]
)


def _modality_found(modality: str) -> str:
    return f"got {modality_named(modality)}" if modality else "got no Modality"


def unpadded_uid(value: object) -> str:
    """A UID as a data set or a C-STORE request holds it, without the padding (NUL or space) it may end with."""
    return str(value or "").rstrip("\0 ")


def modality_named(modality: str) -> str:
    """ "Modality CT" for a defined term, else "another Modality": a value that is none is never echoed (it may be of
    any length, hold control characters or a name)."""
    return f"Modality {modality}" if modality.upper() in _MODALITY_TERMS else "another Modality"


MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: a DICOMDIR


def _check_sop_class(dataset: Dataset, has_pixels: bool) -> None:
    sop_class = dataset.get("SOPClassUID")
    file_meta = getattr(dataset, "file_meta", None)
    if sop_class is None and file_meta is not None and file_meta.get("MediaStorageSOPClassUID") == MEDIA_DIRECTORY:
        # A CD or USB export's index, which is neither truncated nor non-DICOM: say what it is.
        raise UnsupportedSopClassError(
            "a DICOMDIR (Media Storage Directory) lists a medium's files and holds no image; send the image files"
        )
    if sop_class is None:
        raise UndecodableDicomError(
            "DICOM dataset has no SOP Class UID (0008,0016): the file is truncated or not a DICOM object"
        )
    if str(sop_class) not in SUPPORTED_SOP_CLASSES:
        uid = UID(str(sop_class))
        # A standard class is named; any other UID is the file's content, so never echoed.
        found = f"{uid.name} ({uid})" if uid.name != str(uid) else "a SOP Class UID that is not a standard one"
        refusal = KeyObjectSelectionError if uid == KeyObjectSelectionDocumentStorage else UnsupportedSopClassError
        raise refusal(f"DICOM SOP class must be one of {', '.join(SUPPORTED_SOP_CLASSES.values())}; got {found}")
    modality = str(dataset.get("Modality", "") or "")
    if str(sop_class) in SECONDARY_CAPTURE_CLASSES and modality.upper() != "MR":
        raise OtherModalityCaptureError(
            "a DICOM Secondary Capture is read only as a capture of an MR slice (Modality MR); "
            + _modality_found(modality)
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
        # Named only when it is one of the standard's terms: anything else is the file's content, not echoed.
        named = interpretation if interpretation in PHOTOMETRIC_INTERPRETATIONS else "missing or not a standard term"
        raise ColourDicomError(
            "DICOM image must be greyscale (SamplesPerPixel 1, PhotometricInterpretation MONOCHROME1 or MONOCHROME2); "
            f"got SamplesPerPixel {samples}, PhotometricInterpretation {named}"
        )
    if "BitsStored" in dataset:
        try:
            bits_stored = int(dataset.BitsStored)
        except (TypeError, ValueError):
            raise InvalidDicomImageError("DICOM BitsStored (0028,0101) must be an integer") from None
        allocated = bits_allocated(dataset)
        if not 1 <= bits_stored <= allocated:  # pydicom would fail on it only when decoding
            raise InvalidDicomImageError(
                f"DICOM BitsStored (0028,0101) must be 1 to BitsAllocated ({allocated}); got {bits_stored}"
            )
        _check_high_bit(dataset, bits_stored)


def _check_high_bit(dataset: Dataset, bits_stored: int) -> None:
    """High Bit must be Bits Stored - 1 (PS3.3 C.7.6.3.1.1 and the MR modules): the stored bits are the lowest.

    Why: the pixels are read from their lowest Bits Stored bits, so a 12-bit series stored in bits 4-15 (High Bit 15)
    would be read from its low bits and answered "no tumor, 0.0 mL"."""
    value = dataset.get("HighBit")
    if value is None or value == "":
        return
    try:
        high_bit = int(value)
    except (TypeError, ValueError):
        raise InvalidDicomImageError("DICOM HighBit (0028,0102) must be an integer") from None
    if high_bit != bits_stored - 1:
        raise InvalidDicomImageError(
            f"DICOM HighBit (0028,0102) must be one less than BitsStored ({bits_stored}); got {high_bit}: pixel values "
            "stored in other bits than the lowest are not read here"
        )


KNOWN_VRS = frozenset(vr.value for vr in VR if len(vr.value) == 2)
VALUE_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "AT": 4, "FD": 8, "SV": 8, "UV": 8}
"""Bytes per value of the binary VRs pydicom reads as numbers: a value whose length is no whole number of them
raises on access (the O* VRs are read as bytes whatever their length)."""
READ_AS_THEIR_VR = frozenset(
    tag_for_keyword(keyword)
    for keyword in (
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "FrameOfReferenceUID",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "SpacingBetweenSlices",
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "NumberOfFrames",
        "RescaleSlope",
        "RescaleIntercept",
    )
)
"""Elements the flow, the SEG and the SR read as values of their own VR: written with another one (a
SliceThickness as TM, a UID as PN), they read as text where a number or a UID is needed, and the study's SEG or SR
would fail for one file. Refused at any other VR but UN."""


def refuse_undefined_vrs(dataset: Dataset) -> None:
    """Refuse a data set with a public element whose value representation DICOM does not define, at any depth: pydicom
    keeps it raw and raises `NotImplementedError` on first access, which came after the header's checks as a 500 for
    the whole request (one VR byte garbled, "ES"). Private elements are left alone: a vendor's own VR is no reason.

    Raises
    ------
    UndecodableDicomError
    """
    _check_public_elements(dataset, _check_defined)


def refuse_unreadable_values(dataset: Dataset) -> None:
    """`refuse_undefined_vrs`, and refuse an element the service reads (`READ_AS_THEIR_VR`) written under another VR
    (a Slice Thickness as TM), and a value pydicom cannot read (a binary VR whose length is no whole number of values)
    in such an element or in one written under a VR other than its own (a Patient ID as UL). Elements the service
    never reads under their own VR are left alone, as pydicom leaves them (an Acquisition Matrix of 7 bytes).

    Raises
    ------
    UndecodableDicomError
    """
    _check_public_elements(dataset, lambda tag, element: (_check_defined(tag, element), _check_as_read(tag, element)))


def _check_public_elements(dataset: Dataset, check: Callable[[BaseTag, DataElement | RawDataElement], object]) -> None:
    """`check` each public element, at any depth. Values are not converted; only the sequences not left where they
    are (`HEADER_DEFER_BYTES`) are read."""
    for tag in dataset.keys():  # noqa: SIM118 - iterating a Dataset converts each element, which is what fails
        if tag.is_private:
            continue
        element = dataset.get_item(tag, keep_deferred=True)  # a long value stays in the file
        if element is None:
            continue
        check(tag, element)
        if element.VR == "SQ" and element.value is not None:  # None: a value left in the file, not read
            for item in dataset[tag].value:
                _check_public_elements(item, check)


def _check_defined(tag: BaseTag, element: DataElement | RawDataElement) -> None:
    if element.VR is not None and element.VR not in KNOWN_VRS:
        raise UndecodableDicomError(
            f"DICOM element {tag} has value representation {element.VR!r}, which DICOM does not define (corrupt)"
        )


def _check_as_read(tag: BaseTag, element: DataElement | RawDataElement) -> None:
    """`refuse_unreadable_values`' checks of an element as the service reads it."""
    try:
        own = dictionary_VR(tag).split(" or ")
    except KeyError:  # a tag newer than pydicom's dictionary: never read here
        return
    vr = element.VR or (own[0] if len(own) == 1 else None)  # implicit VR: the dictionary's, when it has one
    if tag in READ_AS_THEIR_VR and vr not in (*own, "UN", None):
        raise UndecodableDicomError(
            f"DICOM element {tag} ({keyword_for_tag(tag)}) has value representation {vr!r}; DICOM defines it as "
            f"{dictionary_VR(tag)} (corrupt)"
        )
    size, length = VALUE_SIZES.get(vr or ""), getattr(element, "length", None)  # None: a value already read
    read = tag in READ_AS_THEIR_VR or vr not in own  # read by the service, or under a VR not its own
    if read and size and length is not None and length != UNDEFINED_LENGTH and length % size:
        raise UndecodableDicomError(
            f"DICOM element {tag} has value representation {vr!r} and a length of {length} bytes, no whole number "
            f"of {size}-byte values (corrupt)"
        )


def _check_functional_groups(dataset: Dataset) -> None:
    """Enhanced objects keep per-frame geometry and rescaling in these: anything but a sequence cannot be read."""
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if keyword in dataset and not isinstance(dataset[keyword].value, Sequence):
            raise InvalidDicomImageError(f"DICOM {keyword} must be a sequence (VR SQ)")


SINGLE_FRAME_CLASSES = frozenset({MRImageStorage, SecondaryCaptureImageStorage})
"""Image classes without a Multi-frame module: a Number of Frames in them does not describe the image."""


def image_dimensions(dataset: Dataset) -> tuple[int, int, int]:
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    try:
        value = dataset.get("NumberOfFrames")
        frames = 1 if value is None or value == "" else int(value)  # absent or empty: one frame; 0 is no count
    except (TypeError, ValueError) as error:
        raise UndecodableDicomError("DICOM Number of Frames (0028,0008) must be a positive integer") from error
    if frames == 0 and str(dataset.get("SOPClassUID", "")) in SINGLE_FRAME_CLASSES:
        frames = 1  # a stray 0 in a class with one frame, as pydicom reads it (interop review 63 F8: refused C000)
    if rows < 1 or columns < 1 or frames < 1:
        raise InvalidDicomImageError(
            f"DICOM image must have at least one row, column and frame; got {rows}x{columns} x {frames} frames"
        )
    return rows, columns, frames
