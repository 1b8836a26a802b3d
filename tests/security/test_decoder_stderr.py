"""A client's broken image makes no line of the decoders' own on the server's stderr (attack review 30): the log is
JSON lines only, and a client could otherwise fill it with ERROR lines at will."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import tifffile

from tests.conftest import REPO_ROOT
from tests.security.corpus import png_chunk
from tests.service.png16_files import broken_png16s, png16, samples


def tiff_with_a_broken_strip() -> bytes:
    """A JPEG-compressed TIFF (tifffile needs imagecodecs for it, so OpenCV's libtiff reads it) whose strip byte
    count is 0: libtiff and OpenCV complain on stderr, at ERROR."""
    encoded = bytearray(
        cv2.imencode(".tiff", np.full((64, 64, 3), 100, np.uint8), [cv2.IMWRITE_TIFF_COMPRESSION, 7])[1]
    )
    with tifffile.TiffFile(io.BytesIO(bytes(encoded))) as tiff:
        tag = tiff.pages.first.tags["StripByteCounts"]
        size = 2 if tag.dtype == 3 else 4
        entry = tag.offset
    encoded[entry + 8 : entry + 8 + size] = b"\0" * size  # the value field of a classic TIFF's tag entry
    return bytes(encoded)


def test_a_broken_tiff_leaves_only_json_lines_on_stderr(tmp_path) -> None:
    path = tmp_path / "broken.tif"
    path.write_bytes(tiff_with_a_broken_strip())
    script = textwrap.dedent(
        f"""
        import logging
        from app.errors import ServiceError
        from app.imaging import decode_image
        from app.logging_config import configure_logging
        configure_logging()
        try:
            decode_image(open({str(path)!r}, "rb").read())
        except ServiceError as error:
            logging.getLogger("check").warning("refused", extra={{"fields": {{"code": error.code}}}})
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )

    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert lines, "the refusal itself was not logged"
    for line in lines:
        json.loads(line)  # every line is JSON
    assert json.loads(lines[-1])["message"] == "refused"


def test_broken_16_bit_pngs_leave_only_json_lines_on_stderr(tmp_path) -> None:
    """libpng, which OpenCV decodes 16-bit PNGs with, wrote `libpng error: IDAT: incorrect data check` and the like
    for a broken file, and `libpng warning: iCCP: too short` for a malformed colour profile in a whole one."""
    files = {name: data for name, (data, _) in broken_png16s().items()}
    files["malformed colour profile"] = png16(samples((16, 16)), before_data=png_chunk(b"iCCP", b"x\x00\x00"))
    paths = []
    for index, data in enumerate(files.values()):
        paths.append(tmp_path / f"{index}.png")
        paths[-1].write_bytes(data)
    script = textwrap.dedent(
        f"""
        import logging
        from app.errors import ServiceError
        from app.imaging import decode_samples
        from app.logging_config import configure_logging
        configure_logging()
        for path in {[str(path) for path in paths]!r}:
            try:
                decode_samples(open(path, "rb").read())
                logging.getLogger("check").warning("decoded")
            except ServiceError as error:
                logging.getLogger("check").warning("refused", extra={{"fields": {{"code": error.code}}}})
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )

    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    for line in lines:
        json.loads(line)  # every line is JSON
    assert [json.loads(line)["message"] for line in lines] == ["refused"] * (len(files) - 1) + ["decoded"]
