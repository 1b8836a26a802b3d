"""A corpus of hostile inputs: each gets its documented status and error body, and the service keeps serving.

Decisions recorded here (what counts as valid):
- An image under 32 pixels a side is no slice (400 `invalid_image`): too few pixels for an MR slice, so any answer
  would be a confident guess. From 32 pixels on, any size is resized to the model's 256x256 (200).
- A float32 TIFF is valid: `app.imaging.stretch_to_uint8` stretches deeper samples to 0..255; NaN and inf become 0.
  One without a single finite sample is not (400 `invalid_image`): it would be answered as a black slice.
- Grey+alpha (two channels) is valid: the alpha channel is dropped. Five channels are not (400 `invalid_image`).
- A PNG whose only damage is a missing IEND chunk decodes (Pillow reads the pixels first), so the truncated-PNG cases
  cut into the header or the pixel data.
"""

from __future__ import annotations

import base64
import resource
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.security import corpus
from tests.security.conftest import (
    MAX_BATCH_FILES,
    MAX_UPLOAD_BYTES,
    MIB,
    ServerProcess,
    assert_error,
    start_server,
)


@dataclass(frozen=True)
class BadFile:
    """An uploaded file and the answer it must get from POST /v1/predict."""

    name: str
    build: Callable[[], bytes]
    status: int
    code: str | None  # None: a 200 prediction
    filename: str = "slice.png"
    marks: tuple = field(default=())


def _cut(build: Callable[[], bytes], end: int | float) -> Callable[[], bytes]:
    """The first `end` bytes (a float: that fraction of the file)."""

    def cut() -> bytes:
        data = build()
        return data[: int(len(data) * end) if isinstance(end, float) else end]

    return cut


def _with_first_bytes(build: Callable[[], bytes], head: bytes) -> Callable[[], bytes]:
    return lambda: head + build()[len(head) :]


def _text(content: str) -> Callable[[], bytes]:
    return lambda: content.encode()


BAD_FILES: list[BadFile] = [
    BadFile("empty file", lambda: b"", 400, "empty_file"),
    # Truncated: the magic bytes say PNG/JPEG/TIFF, the rest is missing.
    *(BadFile(f"PNG cut at {end}", _cut(corpus.png_slice, end), 400, "undecodable_image") for end in (8, 16, 33, 60)),
    BadFile("PNG cut in half", _cut(corpus.png_slice, 0.5), 400, "undecodable_image"),
    *(BadFile(f"JPEG cut at {end}", _cut(corpus.jpeg_slice, end), 400, "undecodable_image") for end in (3, 10, 100)),
    BadFile("JPEG cut in half", _cut(corpus.jpeg_slice, 0.5), 400, "undecodable_image"),
    BadFile("JPEG without its last byte", _cut(corpus.jpeg_slice, -1), 400, "undecodable_image", "s.jpg"),
    *(BadFile(f"TIFF cut at {end}", _cut(corpus.tiff_slice, end), 400, "undecodable_image") for end in (4, 8, 50)),
    BadFile("TIFF cut in half", _cut(corpus.tiff_slice, 0.5), 400, "undecodable_image", "s.tif"),
    BadFile("TIFF without its last byte", _cut(corpus.tiff_slice, -1), 400, "undecodable_image", "s.tif"),
    # Magic bytes followed by garbage, and a corrupt header checksum.
    BadFile("PNG magic then garbage", lambda: corpus.PNG_SIGNATURE + bytes(range(256)) * 4, 400, "undecodable_image"),
    BadFile("JPEG magic then garbage", lambda: b"\xff\xd8\xff" + bytes(range(256)) * 4, 400, "undecodable_image"),
    BadFile("TIFF magic then garbage", lambda: b"II*\x00" + b"\xff" * 1024, 400, "undecodable_image"),
    BadFile("PNG with a corrupt IHDR CRC", corpus.png_with_corrupt_ihdr_crc, 400, "undecodable_image"),
    # attack23: the chunk walk was quadratic; 1 MB of zeros after the signature took half a minute to refuse.
    BadFile(
        "PNG signature and 1 MB of zeros", lambda: corpus.PNG_SIGNATURE + bytes(1_000_000), 400, "undecodable_image"
    ),
    BadFile(
        "PNG with 1,001 chunks before its image",
        lambda: corpus.png_with_chunks_before_image(1001),
        400,
        "undecodable_image",
    ),
    BadFile("PNG with 1,000 chunks before its image", lambda: corpus.png_with_chunks_before_image(1000), 200, None),
    BadFile("PNG declaring 0x0", lambda: corpus.crafted_png(0, 0, idat=b""), 400, "undecodable_image"),
    BadFile("TIFF declaring 0x0", lambda: corpus.crafted_tiff(0, 0, b""), 400, "invalid_image"),
    # Wrong magic bytes: judged by content, never by the name.
    BadFile(
        "PNG with its first byte changed", _with_first_bytes(corpus.png_slice, b"\x88"), 415, "unsupported_media_type"
    ),
    BadFile("JPEG with its SOI zeroed", _with_first_bytes(corpus.jpeg_slice, b"\0\0"), 415, "unsupported_media_type"),
    BadFile("text file named .png", _text("just some text\n" * 10), 415, "unsupported_media_type"),
    BadFile("HTML named .png", _text("<!doctype html><script>alert(1)</script>"), 415, "unsupported_media_type"),
    BadFile("SVG named .png", _text('<svg xmlns="http://www.w3.org/2000/svg"/>'), 415, "unsupported_media_type"),
    BadFile("JSON named .png", _text('{"file": "x"}'), 415, "unsupported_media_type"),
    BadFile("zip holding a PNG", corpus.zip_archive, 415, "unsupported_media_type", "slice.zip"),
    BadFile("PDF", _text("%PDF-1.7\n%%EOF\n"), 415, "unsupported_media_type", "slice.pdf"),
    BadFile("NUL bytes", lambda: bytes(4096), 415, "unsupported_media_type"),
    BadFile("GIF", lambda: corpus.pillow_file(corpus.tumor_slice(), "GIF"), 415, "unsupported_media_type", "s.gif"),
    BadFile("BMP", lambda: corpus.pillow_file(corpus.tumor_slice(), "BMP"), 415, "unsupported_media_type", "s.bmp"),
    BadFile("WebP", lambda: corpus.pillow_file(corpus.tumor_slice(), "WEBP"), 415, "unsupported_media_type", "s.webp"),
    # Too large: refused from the header, before the pixels are inflated.
    BadFile("PNG 4097x4097 (one pixel row over)", lambda: corpus.crafted_png(4097, 4097), 413, "image_too_large"),
    BadFile("JPEG header claiming 5000x5000", lambda: corpus.jpeg_claiming_size(5000, 5000), 413, "image_too_large"),
    BadFile("PNG 1 x 16777217", lambda: corpus.crafted_png(1 + 4096 * 4096, 1), 413, "image_too_large"),
    # Decodes, but is no slice.
    BadFile("TIFF with 5 channels", lambda: corpus.tiff_of(np.zeros((32, 32, 5), np.uint8)), 400, "invalid_image"),
    BadFile(
        "TIFF with 5 planar samples",
        lambda: corpus.tiff_of(np.zeros((5, 32, 32), np.uint8), photometric="minisblack", planarconfig="separate"),
        400,
        "invalid_image",
    ),
    BadFile("multi-page TIFF", corpus.multipage_tiff, 400, "invalid_image", "s.tif"),
    BadFile(
        "4-D TIFF",
        lambda: corpus.tiff_of(np.zeros((2, 3, 8, 8), np.uint8), photometric="rgb", planarconfig="separate"),
        400,
        "invalid_image",
        "s.tif",
    ),
    # Too small to be an MR slice: an answer would be a confident guess.
    BadFile("1x1 PNG", lambda: corpus.png_of(np.full((1, 1), 128, np.uint8)), 400, "invalid_image"),
    BadFile("1x4096 PNG strip", lambda: corpus.crafted_png(4096, 1), 400, "invalid_image"),
    # Odd but valid: decoded and resized like any slice.
    BadFile("32x32 PNG", lambda: corpus.png_of(np.full((32, 32), 128, np.uint8)), 200, None),
    BadFile("grey+alpha PNG", lambda: corpus.png_of(np.zeros((64, 64, 2), np.uint8)), 200, None),
    BadFile("PNG without IEND", _cut(corpus.png_slice, -12), 400, "undecodable_image"),  # a truncated file (review 59)
    BadFile("float32 TIFF", lambda: corpus.tiff_of(np.random.default_rng(0).random((64, 64), np.float32)), 200, None),
    BadFile(
        "float32 TIFF of NaN and inf",
        lambda: corpus.tiff_of(np.array([[np.nan, np.inf]], np.float32)),
        400,
        "invalid_image",
    ),
    BadFile(
        "float32 TIFF of NaN and one finite sample",
        lambda: corpus.tiff_of(np.pad(np.array([[1.0]], np.float32), ((0, 31), (0, 31)), constant_values=np.nan)),
        200,
        None,
    ),
    BadFile("crafted 64x64 deflate TIFF", lambda: corpus.crafted_tiff(64, 64), 200, None, "s.tif"),
    BadFile("crafted 64x64 16-bit RGB PNG", lambda: corpus.crafted_png(64, 64, 16, 2), 200, None),
]

BOMBS: list[BadFile] = [
    BadFile(
        "PNG bomb 20000x20000 8-bit",
        lambda: corpus.crafted_png(corpus.BOMB_SIDE, corpus.BOMB_SIDE),
        413,
        "image_too_large",
    ),
    BadFile(
        "PNG bomb 20000x20000 16-bit",
        lambda: corpus.crafted_png(corpus.BOMB_SIDE, corpus.BOMB_SIDE, 16),
        413,
        "image_too_large",
    ),
    BadFile(
        "TIFF bomb 20000x20000", lambda: corpus.crafted_tiff(corpus.BOMB_SIDE, corpus.BOMB_SIDE), 413, "image_too_large"
    ),
    BadFile(
        "JPEG claiming 20000x20000",
        lambda: corpus.jpeg_claiming_size(corpus.BOMB_SIDE, corpus.BOMB_SIDE),
        413,
        "image_too_large",
    ),
]

# DICOM (app/dicom/dicom_input.py): a truncated file is undecodable, an image without pixels is named as such, and an
# SOP class the models cannot read (an SR) is an unsupported media type.
DICOM_FILES: list[BadFile] = [
    BadFile("DICOM cut after its preamble", _cut(corpus.dicom_mr, 132), 400, "undecodable_dicom", "s.dcm"),
    BadFile("DICOM cut in half", _cut(corpus.dicom_mr, 0.5), 400, "undecodable_dicom", "s.dcm"),
    BadFile("DICOM cut before its last byte", _cut(corpus.dicom_mr, -1), 400, "undecodable_dicom", "s.dcm"),
    BadFile(
        "DICOM MR with no pixel data",
        lambda: corpus.dicom_mr(with_pixels=False),
        400,
        "dicom_without_pixel_data",
        "s.dcm",
    ),
    BadFile("DICOM SR (no image)", corpus.dicom_structured_report, 415, "unsupported_dicom", "s.dcm"),
]

CORPUS_SIZE = len(BAD_FILES) + len(BOMBS) + len(DICOM_FILES)


def _ids(cases: list[BadFile]) -> list:
    return [pytest.param(case, id=case.name, marks=case.marks) for case in cases]


def _predict(client: TestClient, data: bytes, filename: str = "slice.png"):
    return client.post("/v1/predict", files={"file": (filename, data, "application/octet-stream")})


def assert_still_serving(client: TestClient, good_jpeg: bytes) -> None:
    response = _predict(client, good_jpeg, "slice.jpg")
    assert response.status_code == 200, response.text
    assert response.json()["tumor_detected"] is True  # the tiny models' threshold is 0


def test_corpus_holds_at_least_40_generated_inputs():
    assert CORPUS_SIZE + len(BAD_REQUESTS) >= 40
    names = [case.name for case in BAD_FILES + BOMBS + DICOM_FILES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", _ids(BAD_FILES))
def test_predict_answers_hostile_file_as_documented(client: TestClient, good_jpeg: bytes, case: BadFile):
    response = _predict(client, case.build(), case.filename)
    if case.code is None:
        assert response.status_code == 200, response.text
        assert set(response.json()) >= {"tumor_probability", "tumor_detected", "models", "request_id"}
    else:
        assert_error(response, case.status, case.code)
    assert_still_serving(client, good_jpeg)


@pytest.mark.parametrize("case", _ids(BAD_FILES[:20]))
def test_batch_reports_hostile_file_in_its_slot(client: TestClient, good_jpeg: bytes, case: BadFile):
    files = [("files", ("good.jpg", good_jpeg, "image/jpeg")), ("files", (case.filename, case.build(), "image/png"))]
    response = client.post("/v1/predict/batch", files=files)
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["index"] == 0 and first["ok"] is True
    if case.code is None:
        assert second["ok"] is True
    else:
        assert set(second) == {"index", "ok", "error"}
        assert (second["index"], second["ok"], second["error"]["code"]) == (1, False, case.code)
        assert second["error"]["message"]


@pytest.mark.parametrize("case", _ids(DICOM_FILES))
def test_predict_rejects_bad_dicom(client: TestClient, good_jpeg: bytes, case: BadFile):
    """Newcomer review 45 F11: each case's declared status and code, not any 4xx."""
    response = _predict(client, case.build(), case.filename)
    assert_error(response, case.status, case.code)
    assert_still_serving(client, good_jpeg)


def _peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


@pytest.mark.parametrize("case", _ids(BOMBS))
def test_predict_rejects_png_bomb_quickly(client: TestClient, good_jpeg: bytes, case: BadFile):
    data = case.build()
    assert len(data) < MAX_UPLOAD_BYTES  # small on the wire: only the header says 400 million pixels
    peak_before = _peak_rss_kib()
    started = time.perf_counter()
    response = _predict(client, data)
    seconds = time.perf_counter() - started
    peak_growth_mib = (_peak_rss_kib() - peak_before) / 1024
    assert_error(response, case.status, case.code)
    assert seconds < 3.0, f"answered in {seconds:.2f} s"  # inflating it would take far longer, and the memory below
    # Inflating it would take 400 MB (800 MB at 16 bits); the process's peak memory must not move by that.
    assert peak_growth_mib < 64, f"peak RSS grew by {peak_growth_mib:.0f} MiB"
    assert_still_serving(client, good_jpeg)


@dataclass(frozen=True)
class BadRequest:
    """A malformed request (not a malformed file) and its documented answer."""

    name: str
    request: Callable[[bytes], dict]  # good JPEG -> keyword arguments of TestClient.request
    status: int
    code: str
    method: str = "POST"
    path: str = "/v1/predict"
    marks: tuple = field(default=())


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "hostile-boundary") -> dict:
    """Hand-made multipart body: (field name, file name or None, content) parts."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return {"content": body, "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        chunk = bytes(min(size, total - sent))
        sent += len(chunk)
        yield chunk


def _oversized_chunked(good: bytes) -> dict:
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="s.png"\r\n\r\n'
    body = iter([head, *_chunks(2 * MAX_UPLOAD_BYTES + 128 * 1024)])
    return {"content": body, "headers": {"Content-Type": "multipart/form-data; boundary=b"}}


BAD_REQUESTS: list[BadRequest] = [
    BadRequest(
        "multipart with another field, no file",
        lambda good: _multipart([("image", "s.jpg", good)]),
        422,
        "validation_error",
    ),
    BadRequest(
        "multipart with a text field named file",
        lambda good: _multipart([("file", None, b"abc")]),
        422,
        "validation_error",
    ),
    BadRequest("multipart with no parts", lambda good: _multipart([]), 422, "validation_error"),
    BadRequest(
        "two file fields",
        lambda good: _multipart([("file", "a.jpg", good), ("file", "b.png", corpus.png_slice())]),
        422,
        "validation_error",
    ),
    BadRequest("64 KiB field name", lambda good: _multipart([("f" * 65536, "s.jpg", good)]), 400, "bad_request"),
    BadRequest("64 KiB file name", lambda good: _multipart([("file", "n" * 65536, good)]), 400, "bad_request"),
    BadRequest(
        "1001 form fields", lambda good: _multipart([(f"f{i}", None, b"x") for i in range(1001)]), 400, "bad_request"
    ),
    # Bodies that are no form: refused before any parser reads them (attack review 34: python-multipart parsed a
    # url-encoded body of 1 MB of "&" byte by byte, a DEBUG line each, before the route's 422).
    BadRequest("JSON body", lambda good: {"json": {"file": "aGVsbG8="}}, 415, "unsupported_media_type"),
    BadRequest(
        "text/plain body",
        lambda good: {"content": b"file", "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    BadRequest("urlencoded body", lambda good: {"data": {"file": "abc"}}, 415, "unsupported_media_type"),
    BadRequest(
        "urlencoded body of ampersands",
        lambda good: {"content": b"&" * 100_000, "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        415,
        "unsupported_media_type",
    ),
    BadRequest("no body", lambda good: {}, 415, "unsupported_media_type"),
    BadRequest(
        "multipart without boundary",
        lambda good: {"content": b"abc", "headers": {"Content-Type": "multipart/form-data"}},
        400,
        "bad_request",
    ),
    BadRequest(
        "multipart declared, garbage sent",
        lambda good: {"content": bytes(range(256)), "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
        400,
        "bad_request",
    ),
    BadRequest(
        "body over the limit with Content-Length",
        lambda good: _multipart([("file", "s.png", bytes(2 * MAX_UPLOAD_BYTES))]),
        413,
        "payload_too_large",
    ),
    BadRequest("body over the limit, chunked", _oversized_chunked, 413, "payload_too_large"),
    BadRequest(
        "file over the per-file limit",
        lambda good: _multipart([("file", "s.png", bytes(MAX_UPLOAD_BYTES + 1))]),
        413,
        "payload_too_large",
    ),
    BadRequest(
        "batch with too many files",
        lambda good: {"files": [("files", ("s.jpg", good, "image/jpeg"))] * (MAX_BATCH_FILES + 1)},
        413,
        "too_many_files",
        path="/v1/predict/batch",
    ),
    BadRequest(
        "batch with more files than the multipart parser takes",
        lambda good: _multipart([("files", f"s{i}.jpg", b"x") for i in range(1001)]),
        413,
        "too_many_files",
        path="/v1/predict/batch",
    ),
    BadRequest("batch with no files", lambda good: _multipart([]), 422, "validation_error", path="/v1/predict/batch"),
    BadRequest(
        "unknown mask_format",
        lambda good: {"files": {"file": ("s.jpg", good)}, "params": {"mask_format": "x"}},
        422,
        "validation_error",
    ),
    BadRequest(
        "empty mask_format",
        lambda good: {"files": {"file": ("s.jpg", good)}, "params": {"mask_format": ""}},
        422,
        "validation_error",
    ),
    BadRequest(
        "8 KiB mask_format",
        lambda good: {"files": {"file": ("s.jpg", good)}, "params": {"mask_format": "x" * 8192}},
        422,
        "validation_error",
    ),
    BadRequest(
        "mask_format with a NUL",
        lambda good: {"files": {"file": ("s.jpg", good)}, "params": {"mask_format": "rle\0"}},
        422,
        "validation_error",
    ),
    BadRequest("unknown path", lambda good: {}, 404, "not_found", path="/v1/predict/../../etc/passwd"),
    BadRequest("GET on an upload endpoint", lambda good: {}, 405, "method_not_allowed", method="GET"),
    BadRequest(
        "DELETE on the models endpoint", lambda good: {}, 405, "method_not_allowed", method="DELETE", path="/v1/models"
    ),
]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name, marks=case.marks) for case in BAD_REQUESTS])
def test_predict_answers_malformed_request_as_documented(client: TestClient, good_jpeg: bytes, case: BadRequest):
    response = client.request(case.method, case.path, **case.request(good_jpeg))
    assert_error(response, case.status, case.code)
    assert len(response.content) < 4096, "an error body never echoes a large input"
    assert_still_serving(client, good_jpeg)


@pytest.mark.parametrize(
    ("path", "field", "limit"),
    [
        ("/v1/predict/batch", "files", f"a batch may hold at most {MAX_BATCH_FILES} files (MAX_BATCH_FILES)"),
        ("/v1/predict", "file", "this endpoint takes one file, in the field `file`"),
    ],
)
def test_more_file_parts_than_the_parser_takes_are_refused_naming_the_endpoints_limit(
    client: TestClient, path: str, field: str, limit: str
):
    """attack25: /v1/predict, which takes one file, answered 3,000 parts with the batch's limit; attack30: the
    batch's answer named neither the limit's value nor the count, only the parser's own 1,000."""
    response = client.post(path, **_multipart([(field, f"s{i}.jpg", b"x") for i in range(1001)]))
    assert response.status_code == 413
    assert response.json()["error"]["message"] == f"{limit}; got more than 1000 file parts"


def test_predict_ignores_hostile_request_id_and_file_name(client: TestClient, good_jpeg: bytes):
    hostile_name = "../../etc/passwd\0<script>.jpg"
    response = client.post(
        "/v1/predict",
        files={"file": (hostile_name, good_jpeg, "image/jpeg")},
        headers={"X-Request-ID": "x" * 65 + "<script>"},
    )
    assert response.status_code == 200, response.text
    request_id = response.headers["X-Request-ID"]
    assert len(request_id) == 32 and request_id.isalnum()  # a fresh uuid4, not the offered value
    assert response.json()["request_id"] == request_id
    assert "passwd" not in response.text and "script" not in response.text


# Over the wire: what a TestClient cannot show (the answer arrives while the client is still sending).


@pytest.fixture(scope="module")
def live_server(tiny_model_dir: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    server = start_server(
        tiny_model_dir, tmp_path_factory.mktemp("hostile_server"), MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES)
    )
    yield server
    server.stop()


def _connect(server: ServerProcess) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    return sock


def _read_response(sock: socket.socket) -> bytes:
    received = b""
    sock.settimeout(10)
    while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        received += chunk
    return received


def test_server_refuses_declared_oversized_body_before_reading_it(live_server: ServerProcess, good_jpeg: bytes):
    with _connect(live_server) as sock:
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 10737418240\r\n\r\n"  # 10 GiB announced, none sent
        )
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"code":"payload_too_large"' in answer
    _assert_live_server_serves(live_server, good_jpeg)


def test_server_cuts_off_chunked_upload_at_the_limit(live_server: ServerProcess, good_jpeg: bytes):
    planned = 64 * MIB
    sent = 0
    with _connect(live_server) as sock:
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="s.png"\r\n\r\n'
        sock.sendall(f"{len(head):x}\r\n".encode() + head + b"\r\n")
        chunk = bytes(64 * 1024)
        framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        try:
            while sent < planned:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                sock.sendall(framed)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection after answering
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"code":"payload_too_large"' in answer
    assert sent < planned // 2, f"the server let {sent} bytes in before answering"
    _assert_live_server_serves(live_server, good_jpeg)


def test_server_answers_garbage_request_line_and_keeps_serving(live_server: ServerProcess, good_jpeg: bytes):
    with _connect(live_server) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200) + b"\r\n\r\n")  # a TLS hello
        answer = _read_response(sock)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    _assert_live_server_serves(live_server, good_jpeg)


def _assert_live_server_serves(server: ServerProcess, good_jpeg: bytes) -> None:
    import httpx

    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        response = http.post("/v1/predict", files={"file": ("s.jpg", good_jpeg, "image/jpeg")})
    assert response.status_code == 200, response.text
    assert server.process.poll() is None


def _file_part_with_transfer_encoding(encoding: str, content: bytes) -> dict:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="s.jpg"\r\nContent-Type: image/jpeg\r\n'
        + f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode()
        + content
        + b"\r\n--b--\r\n"
    )
    return {"content": body, "headers": {"Content-Type": "multipart/form-data; boundary=b"}}


@pytest.mark.parametrize("encoding", ["base64", "Quoted-Printable"])
def test_a_file_part_with_a_content_transfer_encoding_is_refused_naming_it(
    client: TestClient, good_jpeg: bytes, encoding: str
):
    """Attack review 44 F13: a base64 part was refused as "it looks like text", a quoted-printable one read as raw
    bytes; neither answer named the header. RFC 7578 4.7: senders must not use it."""
    response = client.post("/v1/predict", **_file_part_with_transfer_encoding(encoding, base64.b64encode(good_jpeg)))

    assert_error(response, 415, "unsupported_media_type")
    assert f"the file part has Content-Transfer-Encoding: {encoding}," in response.json()["error"]["message"]


def test_a_file_part_marked_binary_is_read_as_it_is(client: TestClient, good_jpeg: bytes):
    response = client.post("/v1/predict", **_file_part_with_transfer_encoding("binary", good_jpeg))
    assert response.status_code == 200, response.text
