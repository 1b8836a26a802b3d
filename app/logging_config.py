"""Structured JSON logs, one object per line on stderr.

Structured fields travel in `extra={"fields": {...}}`. What may be logged about a request: its id, endpoint,
method, status, latency, error code and the sha256 of each uploaded file. Never pixel data, uploaded file names or
DICOM tags: the sha256 is enough to find a file again for whoever holds it, and says nothing about the patient.

Libraries that read uploads quote what they read: pydicom's validation warnings print element values (`Invalid value
for VR UI: '1.2.3.MRN...'`), highdicom logs the UIDs it copies, exception messages carry values into tracebacks. So
Python warnings go through this logger too (no bare lines on stderr), the messages of pydicom, highdicom and warnings
lose their quoted values and UIDs (`redact_values`), highdicom's INFO lines are dropped, and tracebacks keep their
frames and exception types but no exception messages. Those libraries write a line per odd value they read, so what
a client sends decides how many: past `LIBRARY_LINES_PER_MINUTE` a minute they are counted, not written
(`LibraryLineBudget`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType

import cv2
import cv2.utils.logging

from app.errors import without_quoted_values

# Loggers whose messages may quote what a file holds: their text is redacted before it is written.
VALUE_QUOTING_LOGGERS = ("pydicom", "pynetdicom", "highdicom", "py.warnings", "PIL", "python_multipart")
_UID_LIKE = re.compile(r"\b\d+(?:\.\d+){2,}\b")  # 1.2.840.113619.2... (also dates and versions: a fair price)
REDACTED = "<redacted>"
DECODER_PLUGIN_LOGGER = "pydicom.pixels.decoders.base"

LIBRARY_LINES_PER_MINUTE = 100
"""Lines a minute the value-quoting libraries may write together (CRITICAL ones always pass): one 480 KB DICOM
association request of 48,000 malformed transfer-syntax UIDs made pynetdicom and pydicom write 62 MB of warnings before
the node refused its caller, and one stored instance of 60,000 malformed values 37.7 MB."""

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def redact_values(text: str) -> str:
    """`text` without quoted strings and dotted numbers (UIDs): where libraries put the values they read."""
    return _UID_LIKE.sub(REDACTED, without_quoted_values(text, REDACTED))


def traceback_without_messages(exc_info: ExcInfo) -> str:
    """The traceback's frames and exception types, causes included, but no exception message: messages quote values
    (`could not convert string to float: '...'`), the frames and types are what finding the bug needs."""
    chain: list[BaseException] = []
    error: BaseException | None = exc_info[1]
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        error = error.__cause__ or error.__context__
    lines: list[str] = []
    for error in reversed(chain):
        if lines:
            lines.append("\nwhich led to:\n")
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_list(traceback.extract_tb(error.__traceback__)))
        kind = type(error)
        reason = f" [{os_error_name(error)}]" if isinstance(error, OSError) and error.errno is not None else ""
        lines.append(f"{kind.__module__}.{kind.__qualname__}{reason} (message not logged)\n")
    return "".join(lines).rstrip("\n")


def os_error_name(error: OSError) -> str:
    """``ENOSPC (No space left on device)``: the system's words for an OSError, without its message, which names
    the file (attack finding: a full disk and a read-only spool logged only ``OSError (message not logged)``)."""
    if error.errno is None:
        return type(error).__name__
    return f"{errno.errorcode.get(error.errno, str(error.errno))} ({os.strerror(error.errno)})"


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object: time, level, logger, message, then the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name.startswith(VALUE_QUOTING_LOGGERS):
            # With an exception, these libraries log its text (pydicom's decoders: `LOGGER.exception(error)`),
            # which may quote the file or show object reprs: left out, like the messages in the traceback.
            has_exception = bool(record.exc_info and record.exc_info[1] is not None)
            message = "(exception message not logged)" if has_exception else redact_values(message)
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info and record.exc_info[1] is not None:
            payload["exception"] = traceback_without_messages(record.exc_info)
        return json.dumps(payload, default=str)


class LibraryLineBudget(logging.Filter):
    """Let at most `per_minute` lines a minute through from the libraries that read what clients send
    (`VALUE_QUOTING_LOGGERS`); the rest of the minute they are counted and dropped.

    The line that uses up the minute's budget is written as a notice that the rest is dropped; the first line of a
    later minute carries `library_lines_dropped`, the count since. The service's own lines are never dropped.
    """

    def __init__(self, per_minute: int = LIBRARY_LINES_PER_MINUTE, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.per_minute = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._minute_started = clock()
        self._written = 0
        self.dropped = 0  # since the last line written

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(VALUE_QUOTING_LOGGERS) or record.levelno >= logging.CRITICAL:
            return True
        with self._lock:
            now = self._clock()
            if now - self._minute_started >= 60.0:
                self._minute_started, self._written = now, 0
            if self._written > self.per_minute:
                self.dropped += 1
                return False
            self._written += 1
            if self.dropped:
                fields = getattr(record, "fields", None)
                record.fields = {**(fields if isinstance(fields, dict) else {}), "library_lines_dropped": self.dropped}
                self.dropped = 0
            if self._written > self.per_minute:
                record.msg = (
                    f"more than {self.per_minute} lines this minute from the libraries that read DICOM and images; "
                    "the rest of the minute they are counted, not written (the next line says how many)"
                )
                record.args, record.exc_info, record.exc_text = (), None, None
        return True


def configure_logging(level: str = "INFO") -> None:
    """Send every logger (uvicorn's included) through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(LibraryLineBudget())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.captureWarnings(True)  # warnings.warn -> the `py.warnings` logger -> this handler, redacted
    # highdicom logs at INFO the UIDs of the datasets it copies from; its warnings still come through.
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    # Pillow logs at DEBUG every tag of an image's metadata: one crafted JPEG wrote 16,000 lines at LOG_LEVEL=DEBUG.
    logging.getLogger("PIL").setLevel(logging.INFO)
    # python-multipart logs at DEBUG each byte it skips of a url-encoded body (one line per "&": 152 MB of log and
    # an 18-s stall for a 1 MB body at LOG_LEVEL=DEBUG), and quotes a byte of a malformed one.
    logging.getLogger("python_multipart").setLevel(logging.INFO)
    # pydicom logs each decoder plugin's failure on a file, traceback and all, at ERROR: a client's broken file,
    # which the service refuses (400, the node C000) with the reason and logs in its own line.
    logging.getLogger(DECODER_PLUGIN_LOGGER).setLevel(logging.CRITICAL)
    # OpenCV writes its decoders' complaints (libtiff's among them) to stderr itself, not as JSON, at ERROR: a
    # client's broken TIFF made three such lines. The service answers those files 400 with the reason.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    # tifffile warns of each malformed tag of a client's TIFF (three lines for one broken strip): its reason is in
    # the 400 the service answers.
    logging.getLogger("tifffile").setLevel(logging.ERROR)
