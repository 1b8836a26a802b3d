"""Decoding DICOM Part 10 uploads into frames: modality values plus what a DICOM SEG needs to refer back.

A file's header is read and checked first (`app.dicom.dicom_header.read_dicom_header`, which also says what
decoding will cost, for the caller's budget); then `decode_dicom` turns the file into `DicomFrame`s (one per frame):
the pixels as modality values (Rescale Slope / Intercept or the Modality LUT applied first, BitsStored and signed
pixels honoured by pydicom, MONOCHROME1 inverted so that a higher value always means more signal), with the frame's
geometry and the instance's header without its pixel data (`app.dicom.dicom_frame`). Grouping frames into model
inputs is `app.dicom.dicom_series`'s job.

Failures are `app.errors.ServiceError`s whose messages name the rule and the value found; they never quote patient
attributes. Nothing here logs.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID, JPEGExtended12Bit

from app.dicom.dicom_codestream import UNDEFINED_LENGTH, lossy_method, mark_lossy
from app.dicom.dicom_conformance import keep_undeclared_escapes, read_undeclared_utf8
from app.dicom.dicom_frame import DicomFrame, frame_at, frame_geometry, frame_value
from app.dicom.dicom_header import (
    PIXEL_DATA_KEYWORDS,
    DicomHeader,
    bits_allocated,
    garbled_values_refused,
    image_dimensions,
)
from app.dicom.dicom_pixels import stored_pixels
from app.dicom.part10 import dcmread_through_pixel_data, is_pixel_data_sequence
from app.errors import (
    InvalidDicomImageError,
    ServiceError,
    UndecodableDicomError,
    UnsupportedDicomError,
    decoder_reason,
    without_quoted_values,
)


def decode_dicom(header: DicomHeader) -> list[DicomFrame]:
    """Decode the pixels of a file whose header `read_dicom_header` checked (CPU work: call it off the event loop).

    Raises
    ------
    UndecodableDicomError, UnsupportedDicomError, InvalidDicomImageError
    """
    with garbled_values_refused():
        dataset = dcmread_through_pixel_data(header.data)
        read_undeclared_utf8(dataset)  # before any name is read: the SEG and SR copy them
        keep_undeclared_escapes(dataset)
        _check_complete(dataset)
        # The same bytes parse the same way; this only guards the allocation below against any disagreement.
        found = (*image_dimensions(dataset), bits_allocated(dataset))
    frames = header.frames
    if found != (header.rows, header.columns, frames, header.bits_allocated):
        raise UndecodableDicomError("DICOM file reads differently from its header (rows, columns, frames or bits)")
    try:
        values = _decode_values(dataset, frames)
        pixel_data = dataset.get("PixelData")
        syntax = str(dataset.file_meta.get("TransferSyntaxUID", ""))
        lossy = lossy_method(syntax, pixel_data if isinstance(pixel_data, bytes) else b"", 0)
        for keyword in PIXEL_DATA_KEYWORDS:
            if keyword in dataset:
                delattr(dataset, keyword)  # the header is kept per frame: no need to hold the encoded pixels twice
        mark_lossy(dataset, lossy)
        return [frame_at(dataset, values[index], index, frames) for index in range(frames)]
    except ServiceError:
        raise
    except Exception as error:  # a value of a type the standard does not allow, first read here
        raise UndecodableDicomError(
            f"DICOM pixel data or frame attributes cannot be read ({type(error).__name__}: "
            f"{without_quoted_values(str(error))})"
        ) from error


def check_frame_attributes(header: DicomHeader) -> None:
    """Check what `decode_dicom` reads besides the pixels, from the header alone: each frame's geometry and its
    Rescale Slope and Intercept (or the Modality LUT's form). For callers that keep files to decode later (the DICOM
    node), as `check_pixel_data_element`: a malformed value would only fail then.

    Raises
    ------
    InvalidDicomImageError
        Naming the element (never its value).
    """
    dataset = header.dataset
    with garbled_values_refused():
        if "ModalityLUTSequence" in dataset:
            _check_modality_lut(dataset)
        for index in range(header.frames):
            frame_geometry(dataset, index)
            if "ModalityLUTSequence" not in dataset:
                _rescale(dataset, index)


ITEM_TAG = b"\xfe\xff\x00\xe0"
"""(FFFE,E000) in Explicit VR Little Endian, the encoding of every compressed transfer syntax: encapsulated pixel data
starts with this item (its Basic Offset Table; PS3.5 A.4)."""


def check_pixel_data_element(header: DicomHeader) -> None:
    """Refuse pixel data laid out against its transfer syntax, and native (uncompressed, not deflated) pixel data
    shorter than Rows x Columns x frames x BitsAllocated needs or cut short by the end of the file, from the element's
    header alone: nothing is decoded.

    For callers that keep files to decode later (the DICOM node): such a file would only fail then, long after its
    sender was told it was kept (native pixels under JPEG Baseline would be answered Success, and the study fail
    with nothing sent). Compressed codestreams are checked by `read_dicom_header` (their sizes).

    Raises
    ------
    InvalidDicomImageError
        If native pixel data declares fewer bytes than the image needs.
    UndecodableDicomError
        If the file ends before the bytes the pixel data declares, or a compressed transfer syntax has native pixel
        data (no item first), or a native one encapsulated pixel data (an undefined length).
    """
    if header.inflated_bytes:
        return
    buffer = io.BytesIO(header.data)
    dataset = pydicom.dcmread(buffer, stop_before_pixels=True)
    transfer_syntax = UID(str(dataset.file_meta.get("TransferSyntaxUID", "")))
    position = buffer.tell()  # the pixel data element's tag: read_dicom_header found it there
    implicit, little = dataset.original_encoding
    order = "little" if little else "big"
    length_at = position + (4 if implicit else 8)  # pixel data VRs (OB, OW, OF...) have a 4-byte length
    declared = int.from_bytes(header.data[length_at : length_at + 4], order)
    tag = int.from_bytes(header.data[position : position + 2], order) << 16
    tag |= int.from_bytes(header.data[position + 2 : position + 4], order)
    vr = None if implicit else header.data[position + 4 : position + 6].decode("ascii", "replace")
    if is_pixel_data_sequence(tag, vr, declared):  # items pydicom would parse by the million (attack review 65 F2)
        raise UndecodableDicomError("DICOM pixel data must be a value (OB, OW ...), not a sequence of items")
    if transfer_syntax.is_transfer_syntax and transfer_syntax.is_encapsulated:
        # An item first, whatever the length: the standard's is undefined, but pynetdicom sends a data set built in
        # memory with a defined one, which the decoders read all the same.
        if header.data[length_at + 4 : length_at + 8] != ITEM_TAG:
            raise UndecodableDicomError(
                f"DICOM pixel data is not encapsulated (fragments in items), as its compressed transfer syntax "
                f"{transfer_syntax.name} needs: uncompressed pixels sent under a compressed transfer syntax cannot be "
                "decoded"
            )
        return
    if declared == UNDEFINED_LENGTH:
        raise UndecodableDicomError(
            f"DICOM pixel data is encapsulated (compressed fragments), but its transfer syntax {transfer_syntax.name} "
            "is not a compressed one: it cannot be decoded"
        )
    check_native_pixel_bytes(declared, header.pixels, header.bits_allocated)
    held = len(header.data) - (length_at + 4)
    if held < declared:
        raise UndecodableDicomError(
            f"DICOM file is truncated: its pixel data declares {declared} bytes but the file holds {held}"
        )


def check_native_pixel_bytes(held: int, pixels: int, bits_allocated: int) -> None:
    """Native pixel data holds the bytes Rows x Columns x frames x BitsAllocated needs, and at most one more (the
    padding to an even length).

    Why more is refused: pydicom drops the excess with a warning, so pixels of a wider image read with a wrong
    Columns come out sheared (255 columns over 256) and a tumor series can be answered "no tumor, 0.0 mL", which the
    DICOM node files as Absent.

    Raises
    ------
    InvalidDicomImageError
    """
    needed = -(-pixels * bits_allocated // 8)
    if not needed <= held <= needed + needed % 2:
        raise InvalidDicomImageError(
            f"DICOM pixel data holds {held} bytes; Rows x Columns x frames x BitsAllocated needs {needed}: the "
            "header does not describe the image the pixel data holds"
        )


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


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def undecodable_transfer_syntax(transfer_syntax: str | None, bits_stored: int) -> str | None:
    """Why pixel data in `transfer_syntax` with `bits_stored` bits cannot be decoded here, or None when it can (or
    the file does not say). pacs-sync asks Orthanc for an uncompressed copy of such a file."""
    if transfer_syntax is None:
        return None
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax:
        # An unknown (e.g. private) UID: no decoder reads it. Not echoed: it is the file's content.
        return (
            "DICOM transfer syntax is not a standard one this service knows; send the file uncompressed (Explicit VR "
            "Little Endian) or in a standard compressed transfer syntax"
        )
    if syntax.is_compressed and not _decoder_available(syntax):
        return f"DICOM transfer syntax {syntax.name} ({syntax}) cannot be decoded by this service"
    if syntax == JPEGExtended12Bit and bits_stored > 8 and not _decodes_12_bit_jpeg():
        return (
            f"DICOM transfer syntax {syntax.name} ({syntax}) with {bits_stored} bits stored cannot be decoded by this "
            "service (no 12-bit JPEG decoder installed); send it uncompressed or losslessly compressed"
        )
    return None


def _decode_values(dataset: Dataset, frames: int) -> np.ndarray:
    """Decoded pixels as float32 (frames, rows, columns) modality values, brighter = higher."""
    file_meta = getattr(dataset, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    bits_stored = int(dataset.get("BitsStored") or dataset.BitsAllocated)
    reason = undecodable_transfer_syntax(transfer_syntax, bits_stored)
    if reason is not None:
        raise UnsupportedDicomError(reason)
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    if transfer_syntax is None or not UID(transfer_syntax).is_encapsulated:  # native: its length is the image's
        for keyword in PIXEL_DATA_KEYWORDS:
            if keyword in dataset:
                check_native_pixel_bytes(len(dataset[keyword].value), frames * rows * columns, bits_allocated(dataset))
    try:
        stored = stored_pixels(dataset, transfer_syntax)
    except ServiceError:
        raise
    except Exception as error:  # pydicom and its plugins raise many types for a broken pixel stream
        raise UndecodableDicomError(f"DICOM pixel data cannot be decoded: {decoder_reason(error)}") from error
    if stored.size != frames * rows * columns:
        raise InvalidDicomImageError(
            f"DICOM pixel data holds {stored.size} pixels; Rows x Columns x frames says {frames * rows * columns}"
        )
    signed = int(dataset.get("PixelRepresentation", 0)) == 1
    stored = _within_bits_stored(stored.reshape(frames, rows, columns), bits_stored, signed)
    padding = _padding(dataset, stored, bits_stored, signed)
    stored, padding = _non_finite_as_padding(stored, padding)
    if padding is not None and padding.all():
        raise InvalidDicomImageError(
            "every pixel of the DICOM file is padding (PixelPaddingValue, PixelPaddingRangeLimit) or not a finite "
            "number: no image is left to read"
        )
    values = np.empty(stored.shape, dtype=np.float32)
    for index in range(frames):
        values[index] = _within_float32(_modality_values(dataset, stored[index], index, bits_stored, signed))
        if "ModalityLUTSequence" in dataset:  # first: its reason is the more precise
            frame_padding = None if padding is None else padding[index]
            _check_lut_covers(dataset.ModalityLUTSequence[0], stored[index], frame_padding, bits_stored, signed)
        _check_contrast_kept(stored[index], values[index])
    if str(dataset.PhotometricInterpretation) == "MONOCHROME1":
        # MONOCHROME1 shows low values bright; negating keeps "higher = brighter", and the stretch that follows
        # removes the sign, so the result matches the image a viewer displays.
        np.negative(values, out=values)
    if padding is not None and padding.any():  # not all: refused above
        values[padding] = values[~padding].min()  # background: the darkest pixel of the image itself
    return values


def _within_bits_stored(stored: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Stored values as Bits Stored says: the bits above High Bit are not pixel data (PS3.5 8.1.1), and a signed
    value's sign is its highest stored bit.

    pydicom drops those bits from native pixel data only. A codestream may carry them (dcmtk's JPEG-LS encoder keeps
    all 16 bits), and read as image they turn a 12-bit series into "no tumor"."""
    if stored.dtype.kind not in "iu" or not 0 < bits_stored < stored.dtype.itemsize * 8:
        return stored
    if not stored.flags.writeable:
        stored = stored.copy()
    unsigned = stored.view(stored.dtype.str.replace("i", "u"))  # the same bytes, read as unsigned
    np.bitwise_and(unsigned, (1 << bits_stored) - 1, out=unsigned)
    if signed:
        sign = unsigned >= 1 << (bits_stored - 1)
        signed_values = stored.view(unsigned.dtype.str.replace("u", "i"))
        np.subtract(signed_values, 1 << bits_stored, out=signed_values, where=sign)
        return signed_values
    return unsigned


def _as_stored_value(value: int, bits_stored: int, signed: bool) -> int:
    """A value of VR "US or SS" that stands for a stored pixel value (Pixel Padding Value and Range Limit, a LUT
    Descriptor's first input value) read as the pixels are (`_within_bits_stored`): its bits within Bits Stored (of
    the 16 the VR holds), signed or not as Pixel Representation says, whatever VR the file gave it (PS3.3
    C.7.5.1.1.2, C.11.1.1). Writers put US 32768 beside signed pixels for -32768 (US 2048 for a 12-bit -2048);
    pydicom settles the VR by Pixel Representation only where the file has none of its own (Implicit VR), so the
    same instance read as 32768 in one transfer syntax and -32768 in another."""
    bits = min(bits_stored, 16)
    pattern = value & ((1 << bits) - 1)
    return pattern - (1 << bits) if signed and pattern >= 1 << (bits - 1) else pattern


def _padding(dataset: Dataset, stored: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray | None:
    """Where the stored values are Pixel Padding Value (or between it and Pixel Padding Range Limit): pixels that
    are not image (PS3.3 C.7.5.1.1.2). Left as they are, a padding of -32768 below a 0..1020 head sets the stretch's
    floor and a tumor series is answered "no tumor". None when the file declares none."""
    if dataset.get("PixelPaddingValue") is None:
        return None
    value = _as_stored_value(int(dataset.PixelPaddingValue), bits_stored, signed)
    limit = dataset.get("PixelPaddingRangeLimit")
    low, high = (value, value) if limit is None else sorted((value, _as_stored_value(int(limit), bits_stored, signed)))
    return (stored >= low) & (stored <= high)


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


def _modality_values(dataset: Dataset, stored: np.ndarray, index: int, bits_stored: int, signed: bool) -> np.ndarray:
    """Apply the modality LUT first, as the standard orders: a Modality LUT Sequence, else slope and intercept."""
    if "ModalityLUTSequence" in dataset:
        _check_modality_lut(dataset)
        try:
            # pydicom maps stored value v to entry v - first as the descriptor is written: where it wrote a signed
            # first value unsigned (64536 for -1000), the values are shifted by as much, in 64 bits.
            written = int(dataset.ModalityLUTSequence[0].LUTDescriptor[1])
            shift = written - _as_stored_value(written, bits_stored, signed)
            shifted = stored if shift == 0 else stored.astype(np.int64) + shift
            return np.asarray(apply_modality_lut(shifted, dataset), dtype=np.float64)
        except Exception as error:  # a descriptor pydicom cannot use: the element is wrong, whatever the type
            raise InvalidDicomImageError(
                f"ModalityLUTSequence (0028,3000) cannot be applied ({type(error).__name__})"
            ) from error
    slope, intercept = _rescale(dataset, index)
    values = stored.astype(np.float64)
    if slope is not None and slope != 1.0:
        values *= slope
    if intercept is not None and intercept != 0.0:
        values += intercept
    return values


def _rescale(dataset: Dataset, index: int) -> tuple[float | None, float | None]:
    """Rescale Slope and Intercept of frame `index` (None where absent); a slope of 0 makes no image."""
    slope = _finite_number(
        frame_value(dataset, index, "PixelValueTransformationSequence", "RescaleSlope"), "RescaleSlope"
    )
    intercept = _finite_number(
        frame_value(dataset, index, "PixelValueTransformationSequence", "RescaleIntercept"), "RescaleIntercept"
    )
    if slope == 0.0:
        raise InvalidDicomImageError("RescaleSlope must not be 0: it maps every stored pixel value to one value")
    return slope, intercept


def _within_float32(values: np.ndarray) -> np.ndarray:
    """Refuse modality values a float32 cannot hold: they would become infinite, then zero, and a tumor slice
    would be answered as a black one (a RescaleSlope of 1e39 is a valid DS value, and Double Float Pixel Data may
    hold 1e300 itself)."""
    if values.size and not np.abs(values).max() <= _FLOAT32_MAX:
        raise InvalidDicomImageError(
            "the pixel values (as stored, or as RescaleSlope and RescaleIntercept or the Modality LUT give them) "
            "pass the 32-bit float range this service computes in"
        )
    return values


def _non_finite_as_padding(stored: np.ndarray, padding: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Float pixel data's NaN and infinite samples, set to 0 and counted as padding (the image's darkest pixel in
    the end), as a float TIFF's are read: otherwise one NaN pixel refuses a whole slice, in words that
    blame a RescaleSlope the file does not have."""
    if stored.dtype.kind != "f":
        return stored, padding
    non_finite = ~np.isfinite(stored)
    if not non_finite.any():
        return stored, padding
    stored = np.where(non_finite, 0, stored)
    return stored, non_finite if padding is None else padding | non_finite


def _check_contrast_kept(stored: np.ndarray, values: np.ndarray) -> None:
    """Refuse a frame whose distinct stored values the modality transform makes one: a RescaleSlope so small its
    products underflow 32-bit floats (1e-50), or a Modality LUT of one value, leaves a blank slice, which would be
    answered "no tumor" (a slope of 0 is refused from the header, by `_rescale`)."""
    if values.size and values.min() == values.max() and stored.min() != stored.max():
        raise InvalidDicomImageError(
            "RescaleSlope (or the Modality LUT) maps every stored pixel value of a frame to one value: no image is "
            "left to read (a slope too small for 32-bit floats)"
        )


MAX_SHARE_OUTSIDE_LUT = 0.25
"""Of a frame's pixels (padding aside), the most whose stored values may lie outside the Modality LUT's inputs."""


def _check_lut_covers(
    item: Dataset, stored: np.ndarray, padding: np.ndarray | None, bits_stored: int, signed: bool
) -> None:
    """Refuse a frame whose stored values lie outside the Modality LUT's inputs for more than
    `MAX_SHARE_OUTSIDE_LUT` of its pixels.

    Why: values outside the LUT read as its first or last entry (PS3.3 C.11.1.1), so a LUT of 16 entries over 8-bit
    pixels flatten the whole brain to one value and a tumor series is answered "no tumor, 0.0 mL". A few pixels past its
    ends (air, a marker) are what such a LUT is for."""
    entries, written, _ = (int(value) for value in item.LUTDescriptor)
    entries = entries or 1 << 16  # 0 means 65536 entries
    first = _as_stored_value(written, bits_stored, signed)
    image = stored if padding is None else stored[~padding]
    outside = np.count_nonzero(image < first) + np.count_nonzero(image > first + entries - 1)
    if image.size and outside > MAX_SHARE_OUTSIDE_LUT * image.size:
        raise InvalidDicomImageError(
            f"the ModalityLUTSequence (0028,3000) maps stored values {first} to {first + entries - 1}, but "
            f"{100 * outside / image.size:.0f} % of a frame's pixels lie outside them and would all read as its end "
            "values: the LUT does not describe this image"
        )


def _check_modality_lut(dataset: Dataset) -> None:
    items = dataset.ModalityLUTSequence
    if len(items) != 1:
        raise InvalidDicomImageError(f"ModalityLUTSequence (0028,3000) must hold one item; it holds {len(items)}")
    for keyword in ("LUTDescriptor", "LUTData"):
        if keyword not in items[0]:
            raise InvalidDicomImageError(f"the ModalityLUTSequence (0028,3000) item has no {keyword}")


def _finite_number(value: object, keyword: str) -> float | None:
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
