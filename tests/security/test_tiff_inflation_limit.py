"""TIFF strips that inflate past their declared size: a 16x16 TIFF whose one strip inflated to 1 GiB once took 2 GiB,
because tifffile (without imagecodecs) inflates with plain `zlib.decompress` and the memory budget trusts the header.
Such files are refused (400 undecodable_image) before tifffile decodes them; ordinary compressed TIFFs still decode.
"""

from __future__ import annotations

import io
import lzma
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient
from PIL import Image

from app.errors import UndecodableImageError
from app.imaging import decode_image, read_image_header
from app.tiff_decoding import check_tiff_inflation, tiff_chunk_bytes
from tests.conftest import REPO_ROOT
from tests.security import corpus
from tests.security.conftest import MIB, assert_error

TIFF_LZW, TIFF_LZMA = 5, 34925
REFUSAL = "inflates to more than its declared size"
MAX_PEAK_GROWTH_MIB = 24  # the 64 MiB deflate bomb took 128 MiB before the limit; refused, it takes about 1


def tiff_16x16(strip: bytes, compression: int = corpus.TIFF_DEFLATE) -> bytes:
    """`corpus.crafted_tiff` (16x16 8-bit grey, one strip) with its Compression tag set to `compression`."""
    data = corpus.crafted_tiff(16, 16, strip)
    deflate_tag = struct.pack("<HHIHH", 259, 3, 1, corpus.TIFF_DEFLATE, 0)
    assert data.count(deflate_tag) == 1
    return data.replace(deflate_tag, struct.pack("<HHIHH", 259, 3, 1, compression, 0))


def lzw_zeros(size: int) -> bytes:
    """An LZW strip (written by Pillow's libtiff) that inflates to `size` zero bytes."""
    buffer = io.BytesIO()
    zeros = np.zeros((size // 4096, 4096), dtype=np.uint8)
    Image.fromarray(zeros).save(buffer, format="TIFF", compression="tiff_lzw", strip_size=size)
    with tifffile.TiffFile(io.BytesIO(buffer.getvalue())) as tiff:
        (offset,), (count,) = tiff.pages.first.dataoffsets, tiff.pages.first.databytecounts
    return buffer.getvalue()[offset : offset + count]


BOMBS = {
    "deflate_64_mib": lambda: tiff_16x16(corpus.deflate_zeros(64 * MIB)),
    "lzma_16_mib": lambda: tiff_16x16(lzma.compress(bytes(16 * MIB), preset=0), TIFF_LZMA),
    "packbits_8_mib": lambda: tiff_16x16(corpus.packbits_zeros(MIB, 8), corpus.TIFF_PACKBITS),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_strip_inflating_past_its_declared_size_is_refused(name: str):
    with pytest.raises(UndecodableImageError, match=REFUSAL):
        decode_image(BOMBS[name]())


def test_strip_inflating_to_its_declared_size_decodes():
    assert np.array_equal(decode_image(tiff_16x16(corpus.deflate_zeros(256))), np.zeros((16, 16), np.uint8))


MEASURE = """
import resource, sys
from app.errors import UndecodableImageError
from app.imaging import decode_image
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_image(data)
    outcome = "decoded"
except UndecodableImageError:
    outcome = "refused"
print(outcome, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.parametrize(
    ("name", "build", "outcome"),
    [
        ("deflate", lambda: tiff_16x16(corpus.deflate_zeros(64 * MIB)), "refused"),
        # tifffile cannot read LZW without imagecodecs: OpenCV's libtiff decodes only the declared 256 bytes.
        ("lzw", lambda: tiff_16x16(lzw_zeros(64 * MIB), TIFF_LZW), "decoded"),
    ],
)
def test_bomb_keeps_peak_memory_low(tmp_path: Path, name: str, build, outcome: str):
    path = tmp_path / f"{name}.tif"
    path.write_bytes(build())
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    seen, growth_mib = result.stdout.split()
    assert seen == outcome
    assert int(growth_mib) < MAX_PEAK_GROWTH_MIB, f"peak memory grew by {growth_mib} MiB decoding the {name} bomb"


def _image() -> np.ndarray:
    return corpus.tumor_slice()[:, :, 1].copy()


def _pillow_tiff(compression: str) -> bytes:
    return corpus.pillow_file(_image(), "TIFF", compression=compression)


ORDINARY = {
    "deflate_strips": lambda: corpus.tiff_of(_image(), compression="zlib", rowsperstrip=16),
    "deflate_tiles_predictor": lambda: corpus.tiff_of(_image(), compression="zlib", tile=(64, 64), predictor=True),
    "deflate_rgb_planar": lambda: corpus.tiff_of(
        np.moveaxis(corpus.tumor_slice(), -1, 0).copy(), compression="zlib", photometric="rgb", planarconfig="separate"
    ),
    "lzma": lambda: corpus.tiff_of(_image(), compression="lzma"),
    "lzw_libtiff": lambda: _pillow_tiff("tiff_lzw"),
    "packbits_libtiff": lambda: _pillow_tiff("packbits"),
    "deflate_libtiff": lambda: _pillow_tiff("tiff_adobe_deflate"),
}


@pytest.mark.parametrize("name", list(ORDINARY))
def test_ordinary_compressed_tiff_decodes_to_the_uncompressed_pixels(name: str):
    expected = decode_image(corpus.tiff_of(corpus.tumor_slice() if "rgb" in name else _image()))
    assert np.array_equal(decode_image(ORDINARY[name]()), expected)


def test_predict_refuses_the_bomb_with_a_reason(client: TestClient):
    data = BOMBS["deflate_64_mib"]()
    response = client.post("/v1/predict", files={"file": ("slice.tif", data, "application/octet-stream")})
    assert_error(response, 400, "undecodable_image")
    assert REFUSAL in response.json()["error"]["message"]


def test_decoding_a_large_packbits_strip_stays_within_its_cost():
    """The memory budget admits a file by `cost_bytes`: decoding must not take more (tifffile's pure-Python PackBits
    fallback, used before imagecodecs was a dependency, took 10x the pixels)."""
    pixels = np.random.default_rng(7).integers(0, 4000, (1024, 1024), dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "TIFF", compression="packbits", tiffinfo={278: 1024})  # one strip
    data = buffer.getvalue()
    header = read_image_header(data)

    tracemalloc.start()
    try:
        decode_image(data, max_bytes=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert pixels.nbytes < peak < header.cost_bytes


@pytest.mark.parametrize("compression", ["zlib", "lzma"])
def test_measuring_a_large_tile_holds_a_small_piece_of_it(compression: str):
    """Attack review 44 F6: the inflation check inflated a strip or tile whole for its length, and held twice the
    tile that the memory budget counts once (a 64 x 64 TIFF of one 16384 x 16384 Deflate tile: +512 MiB)."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((64, 64), np.uint8), compression=compression, tile=(8192, 8192))
    data = buffer.getvalue()
    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        page = tiff.pages.first
        assert tiff_chunk_bytes(page) == 64 * MIB

        tracemalloc.start()
        try:
            check_tiff_inflation(data, page)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    assert peak < 12 * MIB  # a piece, and the LZMA decoder's dictionary (8 MiB at xz's default preset)


def test_an_lzma_strip_that_asks_for_a_huge_decoder_dictionary_is_refused():
    """The dictionary an LZMA stream declares is allocated by its decoder, outside the memory budget (1.5 GiB at
    most); here 192 MiB for a 16 x 16 slice."""
    filters = [{"id": lzma.FILTER_LZMA2, "dict_size": 192 * MIB}]
    strip = lzma.compress(bytes(256), format=lzma.FORMAT_XZ, filters=filters)
    with pytest.raises(UndecodableImageError, match="MiB of decoder memory"):
        decode_image(tiff_16x16(strip, TIFF_LZMA))
