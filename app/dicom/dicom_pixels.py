"""Decoding DICOM pixel data so that a broken codestream can fail only its own request.

pydicom tries GDCM first for most compressed transfer syntaxes, and GDCM aborts the whole process on some corrupt
JPEG data (a C++ exception that Python cannot catch): one 4 KB upload would end the service for everyone. And
CharLS (JPEG-LS) spends seconds on some truncated codestreams while holding the GIL, which stalls every request. So:

- JPEG baseline and extended are decoded with Pillow, JPEG 2000 with pylibjpeg-openjpeg: both fail with a Python
  exception, quickly;
- JPEG lossless (GDCM is its only decoder here) and JPEG-LS (pyjpegls) are decoded in a separate worker process; if
  the decoder takes that process down, or runs past its time (`worker_seconds`), the request fails with
  `UndecodableDicomError` and the next one gets a fresh worker, while the service's own threads keep running.

Everything else (uncompressed, deflated, RLE) is pydicom's own code. Nothing here logs.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import subprocess
import sys
import threading
import time
from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

from app.errors import UndecodableDicomError, decoder_reason, without_quoted_values
from app.jpeg_data import CorruptJpegError, check_jpeg_data

SAFE_PLUGINS: dict[str, str] = {
    JPEGBaseline8Bit: "pillow",
    JPEGExtended12Bit: "pillow",
    JPEG2000Lossless: "pylibjpeg",
    JPEG2000: "pylibjpeg",
}
"""The decoder pydicom is told to use for a transfer syntax, instead of GDCM."""

ISOLATED_SYNTAXES: dict[str, str | None] = {
    JPEGLossless: None,  # pydicom's choice: GDCM, the only one installed
    JPEGLosslessSV1: None,
    JPEGLSLossless: "pyjpegls",
    JPEGLSNearLossless: "pyjpegls",
}
"""Transfer syntaxes decoded in the worker process, with the decoder it uses (None: pydicom's default)."""

WORKER_TIMEOUT_SECONDS = 10.0
"""How long one file may take in the worker before it is killed (a decoder stuck on a crafted codestream), plus
`WORKER_SECONDS_PER_MEGAPIXEL` for its pixels."""
WORKER_SECONDS_PER_MEGAPIXEL = 0.5
"""Worker time per million samples of a file: a valid 256-frame 512 x 512 JPEG-LS MR of noisy content (67 million)
takes 9.2 s on an idle 2-core machine and fails a fixed 10 s with the other core busy; this gives
it 43 s, some 3.5 times what it needs."""

_LENGTH_BYTES = 8


def stored_pixels(dataset: Dataset, transfer_syntax: UID | None) -> np.ndarray:
    """The stored pixel values (`Dataset.pixel_array`), decoded where a decoder's crash cannot end the process.

    Decoder errors propagate as they are (the caller turns them into a 400); a worker that dies or hangs is an
    `UndecodableDicomError`.
    """
    if transfer_syntax in ISOLATED_SYNTAXES:
        return _WORKER.decode(dataset, ISOLATED_SYNTAXES[transfer_syntax])
    plugin = SAFE_PLUGINS.get(str(transfer_syntax)) if transfer_syntax is not None else None
    if plugin is not None and plugin in get_decoder(transfer_syntax).available_plugins:
        dataset.pixel_array_options(decoding_plugin=plugin)
    if transfer_syntax in (JPEGBaseline8Bit, JPEGExtended12Bit):
        _check_jpeg_frames(dataset)
    return dataset.pixel_array


def _check_jpeg_frames(dataset: Dataset) -> None:
    """Every JPEG frame's data decodes without libjpeg's corrupt-data warnings, which Pillow ignores (`app.jpeg_data`:
    damaged frames were read with flat grey rows, and a series' volume fell from 67.7 to 7.2 mL)."""
    frames = int(dataset.get("NumberOfFrames") or 1)
    try:
        for number, frame in enumerate(generate_frames(dataset.PixelData, number_of_frames=frames), start=1):
            check_jpeg_data(frame, f"DICOM JPEG frame {number}")
    except CorruptJpegError as error:
        raise UndecodableDicomError(f"DICOM pixel data cannot be decoded: {error}") from None


class DecodingWorker:
    """A child process (`python -m app.dicom.dicom_pixels`) that decodes one dataset at a time, started on first use and
    again after it died. Requests and answers are length-prefixed pickles over its stdin and stdout; a plain
    subprocess, not multiprocessing, so that the child never imports the service's own main module."""

    def __init__(self, timeout_seconds: float = WORKER_TIMEOUT_SECONDS) -> None:
        self.timeout_seconds = timeout_seconds
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None

    def decode(self, dataset: Dataset, plugin: str | None = None) -> np.ndarray:
        """`dataset.pixel_array` computed in the worker, with `plugin` as pydicom's decoder (None: its default)."""
        request = pickle.dumps((dataset, plugin), protocol=pickle.HIGHEST_PROTOCOL)
        seconds = self.worker_seconds(dataset)
        with self._lock:
            try:
                status, value = pickle.loads(self._exchange(request, seconds))
            except TimeoutError as error:
                self.stop()
                raise UndecodableDicomError(
                    f"DICOM pixel data cannot be decoded: the decoder did not finish within {seconds:.0f} s"
                ) from error
            except Exception as error:  # died, or answered garbage: a fresh worker for the next file
                self.stop()
                raise UndecodableDicomError(
                    "DICOM pixel data cannot be decoded: the decoder failed or gave up on this codestream"
                ) from error
        if status != "ok":
            raise UndecodableDicomError(f"DICOM pixel data cannot be decoded: {without_quoted_values(value)}")
        return value

    def worker_seconds(self, dataset: Dataset) -> float:
        """How long the worker may take on `dataset`: `timeout_seconds`, plus `WORKER_SECONDS_PER_MEGAPIXEL` for
        every million samples its header declares (checked against the pixel limits before decoding)."""
        samples = 1
        for keyword in ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel"):
            with contextlib.suppress(TypeError, ValueError):  # a malformed value: the decoder says why
                samples *= max(1, int(dataset.get(keyword) or 1))
        return self.timeout_seconds + WORKER_SECONDS_PER_MEGAPIXEL * samples / 1e6

    def _exchange(self, request: bytes, seconds: float) -> bytes:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "app.dicom.dicom_pixels"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,  # raw pipes: select() below must see every byte not yet read
                stderr=subprocess.DEVNULL,  # GDCM's messages may describe the data; never passed on
            )
        assert self._process.stdin is not None and self._process.stdout is not None
        pending = memoryview(len(request).to_bytes(_LENGTH_BYTES, "little") + request)
        while pending:
            pending = pending[os.write(self._process.stdin.fileno(), pending) :]
        deadline = time.monotonic() + seconds
        answers = self._process.stdout.fileno()
        length = int.from_bytes(_read_exactly(answers, _LENGTH_BYTES, deadline), "little")
        return _read_exactly(answers, length, deadline)

    def stop(self) -> None:
        """Kill the child, if any (after a failure; tests)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


def _read_exactly(descriptor: int, size: int, deadline: float) -> bytes:
    chunks, remaining = [], size
    while remaining:
        if not select.select([descriptor], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise TimeoutError("the decoding worker did not answer in time")
        chunk = os.read(descriptor, min(remaining, 1 << 20))
        if not chunk:
            raise EOFError("the decoding worker ended")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


_WORKER = DecodingWorker()


def _serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """The worker's loop: decode each dataset with the plugin asked for and answer with the array or why it failed
    (`decoder_reason`: a library's slip is said in words, here where its type is known)."""
    while header := requests.read(_LENGTH_BYTES):
        dataset, plugin = pickle.loads(requests.read(int.from_bytes(header, "little")))
        if plugin is not None:
            dataset.pixel_array_options(decoding_plugin=plugin)
        try:
            answer = ("ok", dataset.pixel_array)
        except Exception as error:  # pydicom and its plugins raise many types for a broken pixel stream
            answer = ("error", decoder_reason(error))
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        answers.write(len(data).to_bytes(_LENGTH_BYTES, "little") + data)
        answers.flush()


if __name__ == "__main__":
    # Answers go to a copy of stdout; whatever a C library prints to stdout itself goes nowhere.
    answer_stream = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    _serve(sys.stdin.buffer, answer_stream)
