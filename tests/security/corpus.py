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
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    BasicTextSRStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    generate_uid,
)

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


def png_with_chunks_before_image(chunks: int) -> bytes:
    """A valid 64x64 grey PNG with `chunks` empty private ancillary chunks between its header and its image data."""
    image = png_of(np.random.default_rng(3).integers(0, 255, (64, 64), dtype=np.uint8))
    header_end = 8 + 25  # signature, IHDR
    return image[:header_end] + png_chunk(b"prVt", b"") * chunks + image[header_end:]


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


# Decoding-memory bombs (issue 16): small files whose headers promise gigabytes of decoded pixels.

TIFF_DEFLATE, TIFF_PACKBITS = 8, 32773


def packbits_zeros(row_bytes: int, rows: int) -> bytes:
    """A PackBits strip of `rows` rows of `row_bytes` zero bytes: 128 zeros pack into 2 bytes (runs stay in a row)."""
    whole, rest = divmod(row_bytes, 128)
    row = b"\x81\x00" * whole + (bytes([257 - rest, 0]) if rest > 1 else b"\x00\x00" if rest else b"")
    return row * rows


def crafted_tiff_samples(
    width: int,
    height: int,
    samples: int,
    bits: int,
    sample_format: int = 1,
    compression: int = TIFF_DEFLATE,
) -> bytes:
    """A little-endian TIFF of one black strip with `samples` samples of `bits` bits per pixel, compressed by deflate
    (default) or PackBits, built tag by tag in milliseconds whatever its decoded size.

    `sample_format`: 1 unsigned integer, 3 IEEE float.
    """
    row_bytes = width * samples * bits // 8
    strip = packbits_zeros(row_bytes, height) if compression == TIFF_PACKBITS else deflate_zeros(row_bytes * height)
    short, long = 3, 4
    photometric = 2 if samples >= 3 else 1  # RGB, else BlackIsZero
    extra = samples - (3 if photometric == 2 else 1)
    arrays = {258: [bits] * samples, 339: [sample_format] * samples}
    if extra:
        arrays[338] = [0] * extra  # ExtraSamples: unspecified
    tags = sorted(
        [
            (256, long, [width]),
            (257, long, [height]),
            (258, short, arrays[258]),
            (259, short, [compression]),
            (262, short, [photometric]),
            (273, long, [0]),  # StripOffsets (filled in below)
            (277, short, [samples]),
            (278, long, [height]),
            (279, long, [len(strip)]),
            (284, short, [1]),  # PlanarConfiguration: contiguous
            (339, short, arrays[339]),
        ]
        + ([(338, short, arrays[338])] if extra else [])
    )
    ifd_size = 2 + 12 * len(tags) + 4
    out_of_line = bytearray()
    data_start = 8 + ifd_size
    entries = b""
    for tag, kind, values in tags:
        packed = b"".join(struct.pack("<H" if kind == short else "<I", value) for value in values)
        if len(packed) <= 4:
            entries += struct.pack("<HHI", tag, kind, len(values)) + packed.ljust(4, b"\x00")
        else:
            entries += struct.pack("<HHII", tag, kind, len(values), data_start + len(out_of_line))
            out_of_line += packed + (b"\x00" if len(packed) % 2 else b"")
    strip_offset = data_start + len(out_of_line)
    entries = entries.replace(
        struct.pack("<HHI", 273, long, 1) + struct.pack("<I", 0), struct.pack("<HHII", 273, long, 1, strip_offset)
    )
    ifd = struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(out_of_line) + strip


def _mr_header(rows: int, columns: int, frames: int | None, bits: int) -> Dataset:
    dataset = _dicom_dataset(MRImageStorage, "MR")
    dataset.Rows, dataset.Columns = rows, columns
    if frames is not None:
        dataset.NumberOfFrames = frames
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = bits
    dataset.BitsStored = bits
    dataset.HighBit = bits - 1
    dataset.PixelRepresentation = 0
    return dataset


def deflated_dicom(
    rows: int, columns: int, frames: int | None = None, bits: int = 16, series_instance_uid: str | None = None
) -> bytes:
    """A Deflated Explicit VR Little Endian MR file of black frames, deflated as it is written: the pixel data is
    never held, so a file that inflates to gigabytes is built in milliseconds. Files given one
    `series_instance_uid` are one series of one study (a batch of files of several unnamed series is refused before
    decoding, one of several studies too)."""
    dataset = _mr_header(rows, columns, frames, bits)
    if series_instance_uid is not None:
        dataset.SeriesInstanceUID = series_instance_uid
        dataset.StudyInstanceUID = generate_uid(entropy_srcs=[series_instance_uid])  # the series' own study
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, dataset)
    pixel_bytes = rows * columns * (frames or 1) * bits // 8
    pixel_bytes += pixel_bytes % 2
    element = b"\xe0\x7f\x10\x00" + (b"OW" if bits > 8 else b"OB") + b"\x00\x00" + struct.pack("<I", pixel_bytes)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(body.getvalue() + element)]
    zeros = bytes(MIB)
    whole, rest = divmod(pixel_bytes, MIB)
    parts.extend(compressor.compress(zeros) for _ in range(whole))
    parts += [compressor.compress(bytes(rest)), compressor.flush()]
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, dataset.file_meta, enforce_standard=True)
    return bytes(128) + b"DICM" + meta.getvalue() + b"".join(parts)


def multiframe_dicom(frames: int, rows: int = 8, columns: int = 8) -> bytes:
    """An uncompressed MR file of `frames` frames of `rows` x `columns` 8-bit pixels (a gradient, so it decodes)."""
    dataset = _mr_header(rows, columns, frames, 8)
    dataset.PixelData = (np.arange(frames * rows * columns) % 251).astype(np.uint8).tobytes()
    return _dicom_bytes(dataset)


def jpeg2000_dicom_claiming(rows: int, columns: int, codestream_side: int) -> bytes:
    """A JPEG 2000 MR file of a `rows` x `columns` slice whose codestream's SIZ marker is patched to say
    `codestream_side` x `codestream_side`: the header and the codestream disagree."""
    dataset = _mr_header(rows, columns, None, 8)
    pixels = (np.arange(rows * columns) % 251).astype(np.uint8).reshape(rows, columns)
    dataset.compress(JPEG2000Lossless, pixels, encoding_plugin="pylibjpeg")
    data = bytearray(_dicom_bytes(dataset))
    siz = data.find(b"\xff\x4f\xff\x51")
    assert siz > 0, "no JPEG 2000 codestream in the encoded file"
    data[siz + 8 : siz + 16] = struct.pack(">II", codestream_side, codestream_side)  # Xsiz, Ysiz
    return bytes(data)
