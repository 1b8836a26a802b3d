"""No DICOM value in the logs or in error messages, malformed DICOM values are 400s, and content sniffing does not
take a PNG for DICOM (issue 16, items 4 and 5)."""

from __future__ import annotations

import io
import json
import logging
import struct
import sys
import warnings
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from app.dicom.dicom_header import read_dicom_header
from app.dicom.dicom_input import decode_dicom
from app.errors import UndecodableDicomError
from app.logging_config import (
    DECODER_PLUGIN_LOGGER,
    REDACTED,
    JsonFormatter,
    LibraryLineBudget,
    configure_logging,
    redact_values,
)
from tests.conftest import TUMOR_SLICE, read_slice
from tests.dicom.builders import Study, mr_dataset, mr_series, to_bytes, tumor_channels, with_broken_rle
from tests.dicom.test_dicom_input import MALFORMED_DICOM_CASES, malformed_dicom, replaced
from tests.security.conftest import assert_error, png_bytes, start_server

SECRET_UID = "1.2.3.MRN98765.DoeJohn"  # a patient identifier smuggled into a UI element (invalid there)
PLACEHOLDER_UID = "1.2.3.4444444444444444"  # same length, valid: written first, then overwritten


def png_with_dicm_at_128() -> bytes:
    """A real slice as PNG with a text chunk that puts `DICM` and a plausible file meta group start at byte 128."""
    png = png_bytes(read_slice(TUMOR_SLICE))
    after_ihdr = 8 + 25
    keyword = b"Comment\0"
    text_start = after_ihdr + 8 + len(keyword)
    data = keyword + b"x" * (128 - text_start) + b"DICM\x02\x00\x00\x00UL\x04\x00"
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    result = png[:after_ihdr] + chunk + png[after_ihdr:]
    assert result[128:132] == b"DICM"
    return result


def test_png_with_dicm_at_128_is_read_as_png(client: TestClient):
    response = client.post("/v1/predict", files={"file": ("slice.png", png_with_dicm_at_128(), "image/png")})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("case", "element"), MALFORMED_DICOM_CASES.items(), ids=list(MALFORMED_DICOM_CASES))
def test_malformed_dicom_value_is_a_400_naming_the_element(
    client: TestClient, flair: np.ndarray, case: str, element: str
):
    data = malformed_dicom(flair, case)
    response = client.post("/v1/predict/batch", files=[("files", ("a.dcm", data, "application/dicom"))])
    # A batch reports a file it cannot read in place; a lone DICOM upload gets the same error as the request's.
    if response.status_code == 200:
        [error] = response.json()["file_errors"]
        body = error["error"]
    else:
        assert response.status_code == 400, response.text
        body = response.json()["error"]
    assert body["code"] == "invalid_dicom_image"
    assert element in body["message"]


def test_error_messages_hold_no_object_repr(client: TestClient):
    broken_png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    response = client.post("/v1/predict", files={"file": ("a.png", broken_png, "image/png")})
    assert_error(response, 400, "undecodable_image")
    assert "object at 0x" not in response.text and "BytesIO" not in response.text


def render(record: logging.LogRecord) -> dict:
    return json.loads(JsonFormatter().format(record))


def test_tracebacks_keep_frames_and_types_but_no_messages():
    try:
        try:
            float(SECRET_UID)
        except ValueError as error:
            raise RuntimeError(f"while reading {SECRET_UID}") from error
    except RuntimeError:
        record = logging.getLogger("app").makeRecord("app", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    rendered = render(record)
    assert "MRN98765" not in json.dumps(rendered)
    assert "builtins.ValueError" in rendered["exception"] and "builtins.RuntimeError" in rendered["exception"]
    assert "test_tracebacks_keep_frames_and_types_but_no_messages" in rendered["exception"]


@pytest.mark.parametrize("name", ["pydicom", "py.warnings", "highdicom.base", "PIL.PngImagePlugin"])
def test_library_messages_lose_their_values(name: str):
    message = f"Invalid value for VR UI: '{SECRET_UID}'. copy Image-related attributes from dataset \"{SECRET_UID}\""
    record = logging.getLogger(name).makeRecord(name, logging.WARNING, __file__, 1, message, (), None)
    rendered = render(record)["message"]
    assert "MRN98765" not in rendered and "Invalid value for VR UI" in rendered
    assert redact_values("UID 1.2.840.113619.2.55.3 seen") == "UID <redacted> seen"


def test_a_library_logging_an_exception_keeps_its_type_and_frames_but_not_its_text():
    """Attack finding: pydicom's decoders log `LOGGER.exception(error)`, so the exception's text (object reprs,
    values read from the file) became the record's message, though the traceback left it out."""
    text = f"cannot identify image file for {SECRET_UID} <_io.BytesIO object at 0x7fbb>"
    try:
        raise ValueError(text)  # the traceback shows this source line, not the text
    except ValueError as error:
        name = "pydicom.pixels.decoders.base"
        record = logging.getLogger(name).makeRecord(name, logging.ERROR, __file__, 1, error, (), sys.exc_info())
    rendered = render(record)

    assert rendered["message"] == "(exception message not logged)"
    assert "MRN98765" not in json.dumps(rendered) and "BytesIO object" not in json.dumps(rendered)
    assert "builtins.ValueError" in rendered["exception"]


def test_python_warnings_become_redacted_json(monkeypatch: pytest.MonkeyPatch):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("py.warnings")
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "propagate", False)
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn(f"Invalid value for VR UI: '{SECRET_UID}'", UserWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
    [line] = stream.getvalue().splitlines()
    assert json.loads(line)["logger"] == "py.warnings"
    assert "MRN98765" not in line


def test_served_dicom_values_never_reach_the_logs(tiny_model_dir: Path, tmp_path: Path, flair: np.ndarray):
    """A real server at INFO, a DICOM with an identifier in an invalid UI value, asked for a DICOM SEG (highdicom
    logs the UIDs it copies): stderr holds JSON lines only, and neither the identifier nor the file's UIDs."""
    dataset = mr_dataset(flair, Study(frame_of_reference_uid=PLACEHOLDER_UID), generate_uid())
    data = replaced(to_bytes(dataset), PLACEHOLDER_UID.encode(), SECRET_UID.encode())
    server = start_server(tiny_model_dir, tmp_path, LOG_LEVEL="DEBUG")
    try:
        with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
            response = client.post("/v1/predict?output=dicom-seg", files={"file": ("a.dcm", data, "application/dicom")})
            client.post("/v1/predict", files={"file": ("a.dcm", data, "application/dicom")})
    finally:
        server.stop()
    assert response.status_code in (200, 400), response.text
    stderr = server.stderr()
    for secret in ("MRN98765", dataset.SOPInstanceUID, dataset.SeriesInstanceUID, dataset.StudyInstanceUID):
        assert secret not in stderr, f"{secret} is in the log"
    for line in stderr.splitlines():
        json.loads(line)  # every line is a JSON object: no bare warnings, tracebacks or TensorFlow C++ lines


@pytest.mark.parametrize("library", ["PIL.TiffImagePlugin", "python_multipart.multipart"])
def test_debug_logging_leaves_out_the_per_tag_and_per_byte_lines_of_parsers(library: str):
    """Pillow logs every tag of an image at DEBUG, python-multipart every '&' it skips in a url-encoded body (attack
    review 34: 152 MB of log for a 1 MB body)."""
    root = logging.getLogger()
    capped = ("PIL", "highdicom", "python_multipart")
    saved = (root.handlers[:], root.level, [logging.getLogger(name).level for name in capped])
    try:
        configure_logging("DEBUG")

        assert root.getEffectiveLevel() == logging.DEBUG
        assert not logging.getLogger(library).isEnabledFor(logging.DEBUG)
        assert logging.getLogger(library).isEnabledFor(logging.INFO)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in zip(capped, saved[2], strict=True):
            logging.getLogger(name).setLevel(level)


def test_a_clients_broken_file_leaves_no_error_line_from_pydicoms_decoders() -> None:
    """attack26 finding 2: pydicom logged each decoder plugin's failure at ERROR with its traceback, one per broken
    upload: a client could fill the log and set off error alerts at will. The refusal (400, C000) says why."""
    root, decoders = logging.getLogger(), logging.getLogger(DECODER_PLUGIN_LOGGER)
    saved = (root.handlers[:], root.level, decoders.level)
    records: list[logging.LogRecord] = []
    try:
        configure_logging("INFO")
        collector = logging.Handler()
        collector.emit = records.append  # type: ignore[method-assign]
        root.addHandler(collector)
        header = read_dicom_header(to_bytes(with_broken_rle(mr_series(tumor_channels())[0])))

        with pytest.raises(UndecodableDicomError, match="RLE segment"):
            decode_dicom(header)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        decoders.setLevel(saved[2])
    assert [record.name for record in records if record.levelno >= logging.ERROR] == []


def test_library_lines_past_the_minutes_budget_are_counted_not_written() -> None:
    """Attack review 33: pydicom and pynetdicom write a line per malformed value they read, so a client chose how much
    was logged (62 MB for one 480 KB association request the node then refused). Past the budget, a notice, then
    nothing until the next minute, whose first line says how many were dropped; the service's own lines all pass."""
    now = [0.0]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(LibraryLineBudget(per_minute=3, clock=lambda: now[0]))

    def log(name: str, message: str, level: int = logging.WARNING) -> None:
        handler.handle(logging.LogRecord(name, level, __file__, 1, message, None, None))

    for index in range(10):
        log("pynetdicom.presentation", f"non-conformant UID '{SECRET_UID}' {index}")
        log("app.node.dicom_node", f"own line {index}")
    log("pydicom", "corrupt file", logging.CRITICAL)
    now[0] = 61.0
    log("py.warnings", "Invalid value for VR UI")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]

    library = [line for line in lines if not line["logger"].startswith("app.")]
    assert [line["message"] for line in library[:3]] == [f"non-conformant UID {REDACTED} {index}" for index in range(3)]
    assert "counted, not written" in library[3]["message"]
    assert [line["logger"] for line in library[4:]] == ["pydicom", "py.warnings"]  # CRITICAL always passes
    assert library[5]["library_lines_dropped"] == 6  # lines 4-9 of the first minute
    assert [line["message"] for line in lines if line["logger"] == "app.node.dicom_node"] == [
        f"own line {index}" for index in range(10)
    ]
    assert SECRET_UID not in stream.getvalue()
