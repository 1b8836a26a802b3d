"""Builders of hostile files: truncated, mislabelled, crafted headers and decompression bombs.

Everything is generated here from the committed real slices or from first principles (PNG chunks, TIFF IFDs, deflate
streams), so that no binary fixtures are committed and each file says how it was made.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from functools import cache

import numpy as np
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tests.conftest import TUMOR_SLICE, read_slice

MIB = 1 << 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BOMB_SIDE = 20000
"""20000 x 20000 = 400 million pixels: 400 MB as 8-bit grey, far over MAX_IMAGE_PIXELS and Pillow's own limit."""


@cache
def tumor_slice() -> np.ndarray:
    """uint8 256x256x3."""
    return read_slice(TUMOR_SLICE)


def jpeg_slice() -> bytes:
    return TUMOR_SLICE.read_bytes()


def png_of(array: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def pillow_file(array: np.ndarray, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def tiff_of(array: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


@cache
def png_slice() -> bytes:
    return png_of(tumor_slice())


@cache
def tiff_slice() -> bytes:
    return tiff_of(tumor_slice(), photometric="rgb")


def multipage_tiff(pages: int = 3) -> bytes:
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as writer:
        for _ in range(pages):
            writer.write(tumor_slice()[:, :, 1], photometric="minisblack")
    return buffer.getvalue()


def deflate_zeros(size: int) -> bytes:
    """A zlib stream that inflates to `size` zero bytes, built in milliseconds whatever the size.

    Each MiB of zeros compresses to the same block once the dictionary is reset (full flush), so the stream is the
    first block, copies of the second, the tail, and the Adler-32 of `size` zeros (a = 1, b = size mod 65521).
    """
    if size < 2 * MIB:
        return zlib.compress(bytes(size), 9)
    compressor = zlib.compressobj(9)
    zeros = bytes(MIB)
    head = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(size, MIB)
    tail = compressor.compress(bytes(rest)) + compressor.flush()
    adler = ((size % 65521) << 16) | 1
    return head + block * (whole - 1) + tail[:-4] + adler.to_bytes(4, "big")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def crafted_png(width: int, height: int, bit_depth: int = 8, colour_type: int = 0, idat: bytes | None = None) -> bytes:
    """A PNG written chunk by chunk; by default its IDAT inflates to a black image of the declared size."""
    samples = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    if idat is None:
        row_bytes = 1 + width * samples * bit_depth // 8  # filter byte + samples
        idat = deflate_zeros(row_bytes * height)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def crafted_tiff(width: int, height: int, strip: bytes | None = None) -> bytes:
    """A little-endian 8-bit grey TIFF with one deflate strip; by default it inflates to a black image."""
    if strip is None:
        strip = deflate_zeros(width * height)
    short, long = 3, 4
    tags = [
        (256, long, width),  # ImageWidth
        (257, long, height),  # ImageLength
        (258, short, 8),  # BitsPerSample
        (259, short, 8),  # Compression: deflate
        (262, short, 1),  # PhotometricInterpretation: BlackIsZero
        (273, long, 0),  # StripOffsets (filled in below)
        (277, short, 1),  # SamplesPerPixel
        (278, long, height),  # RowsPerStrip
        (279, long, len(strip)),  # StripByteCounts
    ]
    data_offset = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == short else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + strip


def jpeg_claiming_size(width: int, height: int) -> bytes:
    """The real JPEG slice with its frame header (SOF0/SOF2) patched to claim another size."""
    data = bytearray(jpeg_slice())
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        position = data.find(marker)
        if position >= 0:
            data[position + 5 : position + 9] = struct.pack(">HH", height, width)
            return bytes(data)
    raise AssertionError("no SOF0/SOF2 marker in the JPEG slice")


def png_with_corrupt_ihdr_crc() -> bytes:
    data = bytearray(png_slice())
    data[29] ^= 0xFF  # last byte of the IHDR CRC
    return bytes(data)


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("slice.png", png_slice())
    return buffer.getvalue()


def _dicom_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _dicom_dataset(sop_class_uid: str, modality: str) -> Dataset:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = sop_class_uid
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPClassUID = sop_class_uid
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.PatientName = "Test^Phantom"
    dataset.PatientID = "TEST-0001"
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = modality
    return dataset


def dicom_mr(with_pixels: bool = True) -> bytes:
    """An MR Image Storage file holding the FLAIR channel of the real slice (or, without pixels, only its header)."""
    dataset = _dicom_dataset(MRImageStorage, "MR")
    if with_pixels:
        flair = np.ascontiguousarray(tumor_slice()[:, :, 1])
        dataset.Rows, dataset.Columns = flair.shape
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated = 8
        dataset.BitsStored = 8
        dataset.HighBit = 7
        dataset.PixelRepresentation = 0
        dataset.PixelData = flair.tobytes()
    return _dicom_bytes(dataset)


def dicom_structured_report() -> bytes:
    """A Basic Text SR: a DICOM file with no image at all."""
    dataset = _dicom_dataset(BasicTextSRStorage, "SR")
    dataset.ValueType = "CONTAINER"
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.TextValue = "no tumor seen"
    dataset.ContentSequence = Sequence([item])
    return _dicom_bytes(dataset)
