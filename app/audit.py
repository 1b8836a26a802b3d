"""The audit log: one JSON line per inference request and per refused request, kept apart from the debug log.

Each line says who asked (key id, client address, the peer that connected, the client's own request id), what
(endpoint, path, sha256 of each input), with what (model versions) and what came of it (status, outcome: the error
code is the reason of a refusal). Never pixels, file names, keys or DICOM tags.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

MIN_FREE_BYTES_TO_RETRY = 1 << 20
"""Free space the audit file's folder needs before a failed audit log is taken as writable again (`writable`)."""


class _KeepsFailure:
    """A logging handler that keeps a failed write for `AuditLog.record` to report. `logging.Handler.handleError`
    printed a traceback ending in the audit record itself to standard error: records lost to a full disk landed,
    as Python reprs, in the debug log (operations review)."""

    failure: BaseException | None = None

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.failure = sys.exc_info()[1]


class _AuditFileHandler(_KeepsFailure, logging.handlers.WatchedFileHandler):
    pass


class _AuditStreamHandler(_KeepsFailure, logging.StreamHandler):
    pass


class AuditLog:
    """Writes audit records to `path` (appending) or, without one, to standard output.

    The file is reopened when it has been moved or removed (`WatchedFileHandler`), so that logrotate's default
    rename-and-create rotation works: a plain `FileHandler` went on writing into the renamed file. A record that
    cannot be written (a full disk) is counted (`write_failures`), said once in the debug log without its content,
    and makes `writable` false (the service is then not ready and refuses inference requests, `app.api.deps`) until a
    record is written again.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._logger = logging.getLogger(f"app.audit.{id(self)}")
        self._logger.propagate = False  # never mixed into the debug log
        self._logger.setLevel(logging.INFO)
        self._handler: _KeepsFailure | logging.Handler = (
            _AuditFileHandler(path, encoding="utf-8") if path else _AuditStreamHandler(sys.stdout)
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(self._handler)
        self.write_failures = 0
        self._failing = False

    def record(
        self,
        *,
        request_id: str,
        endpoint: str,
        status: int,
        key_id: str | None,
        client: str | None,
        input_sha256: list[str],
        path: str | None = None,
        peer: str | None = None,
        client_request_id: str | None = None,
        models: dict[str, str],
        outcome: object,
    ) -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_id": request_id,
            "client_request_id": client_request_id,
            "endpoint": endpoint,
            "path": path,
            "status": status,
            "key_id": key_id,
            "client": client,
            "peer": peer,
            "input_sha256": input_sha256,
            "models": models,
            "outcome": outcome,
        }
        self._handler.failure = None
        self._logger.info(json.dumps(entry))
        failure = self._handler.failure
        if failure is not None:
            self.write_failures += 1
            if not self._failing:
                reason = getattr(failure, "strerror", None) or type(failure).__name__
                logger.error(
                    "audit record not written: the audit log cannot be written, and the service is not ready and "
                    "refuses inference requests until it can",
                    extra={"fields": {"error": reason}},
                )
            self._failing = True
        elif self._failing:
            self._failing = False
            logger.warning("audit log written again", extra={"fields": {"records_lost": self.write_failures}})

    @property
    def writable(self) -> bool:
        """False while the last record could not be written, unless the file's folder has space again (a service
        that is not ready gets no requests, and so would write no record to find out)."""
        if not self._failing:
            return True
        if self.path is None:
            return False
        try:
            stats = os.statvfs(self.path.parent)
        except OSError:
            return False
        return stats.f_bavail * stats.f_frsize >= MIN_FREE_BYTES_TO_RETRY and os.access(self.path.parent, os.W_OK)

    def close(self) -> None:
        with suppress(OSError):  # the last records, which the disk would not take (counted in `write_failures`)
            self._handler.close()
        self._logger.removeHandler(self._handler)
