"""The TIFF specifics of `app.imaging`'s decoding: which colour models and compressions are read
(`check_tiff_photometric`, `check_tiff_compression`), where the strips or tiles lie and what their sizes say
(`check_tiff_layout`, `tiff_chunk_bytes`), a JPEG-compressed file's codestreams (`jpeg_codestreams`), raw samples
turned as a viewer shows them (`as_shown`), and the bounded inflation check that keeps a compressed strip from
inflating past its declared size (`check_tiff_inflation`). `app.imaging._tiff_header` and `_decode_tiff` use them.
Failures are `app.errors.ServiceError`s; nothing here logs.
"""

from __future__ import annotations

import lzma
import math
import zlib
from collections.abc import Iterator

import numpy as np
import tifffile
from tifffile import COMPRESSION

from app.errors import InvalidSliceError, UndecodableImageError

# TIFF colour models read here: grey (either polarity), RGB, and a palette (its colour map applied). YCbCr only when
# JPEG-compressed, which both decoders return as RGB; CMYK, CIELab and the rest would be read as raw samples.
_TIFF_PHOTOMETRICS = {
    tifffile.PHOTOMETRIC.MINISBLACK,
    tifffile.PHOTOMETRIC.MINISWHITE,
    tifffile.PHOTOMETRIC.RGB,
    tifffile.PHOTOMETRIC.PALETTE,
}


def check_tiff_photometric(page: tifffile.TiffPage) -> None:
    """Refuse a TIFF colour model this service would read as raw samples (CMYK, YCbCr uncompressed, CIELab ...):
    its pixels are not the image a viewer shows; and a grey page of more samples than grey and alpha."""
    photometric = page.photometric
    grey = photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE)
    if grey and 2 < int(page.samplesperpixel) <= 4:  # more is refused as no image type (`_drop_alpha`)
        # A stack of slices written as one page of several samples (tifffile's volumetric layout) is no colour
        # image: read as one, three different slices would be taken for pre-contrast, FLAIR and post-contrast.
        raise InvalidSliceError(
            f"a grey TIFF (MinIsBlack or MinIsWhite) holds one sample per pixel, and at most an alpha; this one holds "
            f"{page.samplesperpixel}: several images in one page, not one slice. Send one slice per file"
        )
    if photometric in _TIFF_PHOTOMETRICS or (
        photometric == tifffile.PHOTOMETRIC.YCBCR and page.compression in (COMPRESSION.OJPEG, COMPRESSION.JPEG)
    ):
        return
    name = photometric.name if isinstance(photometric, tifffile.PHOTOMETRIC) else str(photometric)
    raise InvalidSliceError(
        f"TIFF colour model (PhotometricInterpretation) {name} is not read by this service; "
        "send grey (MinIsBlack or MinIsWhite), RGB or palette"
    )


# The compressions a scanner, an image viewer or a research tool writes a slice with; imagecodecs (through tifffile)
# decodes each into a buffer of the strip's declared size, and raises on data that does not decode to it.
_TIFF_COMPRESSIONS = frozenset(
    {
        COMPRESSION.NONE,
        COMPRESSION.LZW,
        COMPRESSION.JPEG,
        COMPRESSION.ADOBE_DEFLATE,  # Deflate (8)
        COMPRESSION.DEFLATE,  # Deflate's old code (32946)
        COMPRESSION.PIXTIFF,  # PixTIFF's Deflate
        COMPRESSION.PACKBITS,
        COMPRESSION.LZMA,
    }
)


def check_tiff_compression(page: tifffile.TiffPage) -> None:
    """Refuse a TIFF compression outside `_TIFF_COMPRESSIONS`.

    Why: the others (JPEG 2000, WebP, JPEG XL, Zstandard ...) decode to sizes their own codestream declares, not the
    page's, and are no format MRI slices come in. Old-style JPEG has its own reason: its data cannot be checked.
    """
    if page.compression == COMPRESSION.OJPEG:
        raise UndecodableImageError(
            "TIFF file is old-style JPEG-compressed (Compression 6, replaced by 7 in 1995), whose image data cannot be "
            "checked for damage here; save it uncompressed, LZW-, Deflate- or JPEG-compressed (Compression 7)"
        )
    if page.compression not in _TIFF_COMPRESSIONS:
        raise UndecodableImageError(
            f"TIFF file is {compression_name(page.compression)} (Compression {int(page.compression)}), which this "
            f"service does not read; save it uncompressed, LZW-, Deflate-, PackBits- or JPEG-compressed"
        )


def jpeg_codestreams(data: bytes, page: tifffile.TiffPage) -> Iterator[bytes]:
    """Each strip or tile of a JPEG-compressed (new-style) TIFF page as a whole JPEG codestream: the page's
    JPEGTables (quantization and Huffman tables, between their own SOI and EOI) joined to the strip's scan data.

    Why: libjpeg reads damaged JPEG data with only warnings, and a TIFF decoder that does not stop at them returns
    damaged rows (OpenCV's libtiff: a tumor slice answered "no tumor" at 0.007); each codestream is
    checked as a JPEG file's is (`app.jpeg_data.check_jpeg_data`) before tifffile decodes the page."""
    tables = bytes(page.jpegtables or b"")
    end_of_tables = tables.rfind(b"\xff\xd9")  # bytes after it (a stray 00, say) are none of the tables'
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
        strip = data[offset : offset + count]
        if tables.startswith(b"\xff\xd8") and end_of_tables > 0 and strip.startswith(b"\xff\xd8"):
            yield tables[:end_of_tables] + strip[2:]
        else:
            yield strip


def compression_name(code: int) -> str:
    """A TIFF compression as the standard names it (JPEG, LZW...), for a message."""
    if code == COMPRESSION.NONE:
        return "uncompressed"
    try:
        return f"{COMPRESSION(code).name}-compressed"
    except ValueError:
        return "compressed"


def as_shown(array: np.ndarray, page: tifffile.TiffPage) -> np.ndarray:
    """tifffile's raw samples as a viewer shows them: 2- and 4-bit samples on the 8-bit scale, a palette's indices
    looked up in its colour map (16-bit colours cut to 8 bits, or taken as 8-bit when every one is under 256, as
    libtiff guesses), MinIsWhite turned so that brighter is higher again (any order-reversing map will do: deeper
    images are stretched afterwards)."""
    if page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
        colours = page.colormap if page.colormap.max() < 256 else page.colormap >> 8
        return np.moveaxis(colours.astype(np.uint8)[:, array.astype(np.intp, copy=False)], 0, -1)
    bits = int(page.bitspersample)
    if array.dtype == np.uint8 and 1 < bits < 8:
        # 2- and 4-bit grey samples on the 8-bit scale, as a viewer shows them (read as 0..15, a tumor slice comes
        # out nearly black and is answered "no tumor"); MinIsWhite within their own range.
        top = (1 << bits) - 1
        if page.photometric == tifffile.PHOTOMETRIC.MINISWHITE:
            array = top - array
        return (array.astype(np.uint16) * 255 // top).astype(np.uint8)
    if page.photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        return np.negative(array) if array.dtype.kind == "f" else np.invert(array)
    return array


def check_tiff_layout(data: bytes, page: tifffile.TiffPage) -> None:
    """Refuse a page whose sizes are not each one number, a volume, or a strip or tile that is missing or lies past
    the end of the file.

    Why: tifffile keeps a tag as it was stored, so a TileLength of type UNDEFINED or of several values is bytes or a
    tuple, which `tiff_chunk_bytes` would multiply into gigabytes before any budget (a 4.5 KB file would take 1 GiB).
    tifffile reads a strip of offset or byte count 0 as "sparse" and fills it with zeros: a tumor slice with half its
    strips so would be answered "no tumor". A volume (ImageDepth over 1) decodes as depth x rows x columns, which a
    3-column one would pass as a colour image.

    Raises
    ------
    UndecodableImageError
        Sizes that are not numbers, a strip or tile missing or past the end.
    InvalidSliceError
        A volume.
    """
    sizes = (*page.shape, *page.chunks, page.imagedepth)
    if not all(isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size >= 0 for size in sizes):
        raise UndecodableImageError(
            "TIFF file cannot be decoded: its image or strip/tile size tags are not each one number"
        )
    if page.imagedepth > 1:
        raise InvalidSliceError(
            f"TIFF holds a volume of {page.imagedepth} planes (ImageDepth); send one slice per file"
        )
    if 0 in page.shape:
        return  # an empty image: refused for its size (`app.imaging`), with that reason
    held = 0
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
        past_end = offset + count > len(data) and page.compression != COMPRESSION.NONE
        if offset <= 0 or count <= 0 or offset >= len(data) or past_end:
            raise UndecodableImageError(
                "TIFF file cannot be decoded: a strip or tile is missing (offset or byte count 0) or lies past the end "
                "of the file"
            )
        held += min(count, len(data) - offset)
    # Uncompressed, a writer may give the last strip a whole strip's count past the file's end: what
    # the file holds must still cover the image.
    if page.compression == COMPRESSION.NONE and held < _stored_bytes(page):
        raise UndecodableImageError(
            "TIFF file cannot be decoded: its strips or tiles hold fewer bytes than its image (cut short)"
        )


def _stored_bytes(page: tifffile.TiffPage) -> int:
    """The bytes an uncompressed page's rows take, packed as stored (rows of 1, 2 or 4 bits end on a byte)."""
    bits, samples = int(page.bitspersample), int(page.samplesperpixel)
    width, length = int(page.imagewidth), int(page.imagelength)
    if samples > 1 and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
        return samples * length * math.ceil(width * bits / 8)
    return length * math.ceil(width * samples * bits / 8)


def tiff_chunk_bytes(page: tifffile.TiffPage) -> int:
    """One strip or tile of `page` as decoded: what the decoder holds besides the page while it decodes one.

    Why counted: a tile may be declared far larger than its image (a 64 x 64 JPEG TIFF of one 65520 x 65520 tile
    takes 4 GiB to decode)."""
    return math.prod(page.chunks) * page.dtype.itemsize


def check_tiff_inflation(data: bytes, page: tifffile.TiffPage) -> None:
    """Refuse a TIFF whose compressed strip or tile inflates to more than the header declares.

    Why: the memory budget (`RasterHeader.cost_bytes`) trusts the header, and a 16x16 TIFF whose 1 MB strip inflates
    to 1 GiB took 2 GiB where tifffile inflated Deflate, LZMA and PackBits with its unbounded pure-Python fallbacks.
    Each segment is inflated here first with a bounded decoder that stops one byte past its declared size, keeping
    nothing, whichever decoder tifffile uses afterwards.

    Raises
    ------
    UndecodableImageError
    """
    measure = _TIFF_INFLATED_SIZE.get(page.compression)
    if measure is None:
        return
    limit = tiff_chunk_bytes(page)  # counted in the memory budget: a tile larger than its image is allowed
    view = memoryview(data)
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
        if measure(view[offset : offset + count], limit) > limit:
            raise UndecodableImageError(
                f"TIFF file cannot be decoded: a TIFF strip or tile inflates to more than its declared size "
                f"({limit} bytes)"
            )


LZMA_DECODER_MEMORY_BYTES = 80 << 20
"""The most an LZMA decoder may allocate for the dictionary its stream declares (xz's strongest preset needs 65 MiB;
the format allows 1.5 GiB, none of it counted in the memory budget)."""

MEASURING_PIECE_BYTES = 1 << 20
"""The most inflated bytes the measures below hold at once: each is counted and dropped. Why: inflated whole for its
length, a 256 MiB tile would take 512 MiB on top of the budget that counts it once."""


def _inflated_zlib(segment: memoryview, limit: int) -> int:
    total = 0
    decompressor = zlib.decompressobj()
    pending: bytes | memoryview = segment
    try:
        while total <= limit:
            piece = decompressor.decompress(pending, MEASURING_PIECE_BYTES)
            total += len(piece)
            pending = decompressor.unconsumed_tail
            if decompressor.eof or not (piece or pending):
                break
    except zlib.error:
        return 0  # corrupt: tifffile reports it
    return total


def _inflated_lzma(segment: memoryview, limit: int) -> int:
    total = 0
    try:
        while segment and total <= limit:  # lzma.decompress, like tifffile, reads concatenated streams
            decompressor = lzma.LZMADecompressor(memlimit=LZMA_DECODER_MEMORY_BYTES)
            total += len(decompressor.decompress(segment, MEASURING_PIECE_BYTES))
            while not decompressor.eof and not decompressor.needs_input and total <= limit:
                total += len(decompressor.decompress(b"", MEASURING_PIECE_BYTES))
            if not decompressor.eof:
                break
            segment = memoryview(decompressor.unused_data)
    except lzma.LZMAError as error:
        if "memory usage limit" in str(error).lower():  # the decoder's own dictionary, which the stream sizes
            raise UndecodableImageError(
                "TIFF file cannot be decoded: an LZMA strip asks for more than "
                f"{LZMA_DECODER_MEMORY_BYTES >> 20} MiB of decoder memory"
            ) from None
        # corrupt otherwise: tifffile reports it
    return total


def _inflated_packbits(segment: memoryview, limit: int) -> int:
    total = index = 0
    while index < len(segment) and total <= limit:
        header = segment[index]
        if header < 128:  # a literal run of header + 1 bytes
            total += min(header + 1, len(segment) - index - 1)
            index += header + 2
        elif header > 128:  # one byte repeated 257 - header times
            total += 257 - header
            index += 2
        else:  # 128: no operation
            index += 1
    return total


_TIFF_INFLATED_SIZE = {
    8: _inflated_zlib,  # deflate
    32946: _inflated_zlib,  # deflate (old code)
    50013: _inflated_zlib,  # PixTIFF deflate
    34925: _inflated_lzma,
    32773: _inflated_packbits,
}
