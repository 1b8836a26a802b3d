"""The audit log: one JSON line per inference request and per refused request, kept apart from the debug log.

Each line says who asked (key id, client address, the peer that connected, the client's own request id), what
(endpoint, path, sha256 of each input), with what (model versions) and what came of it (status, outcome: the error
code is the reason of a refusal). Never pixels, file names, keys or DICOM tags.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from pathlib import Path


class AuditLog:
    """Writes audit records to `path` (appending) or, without one, to standard output.

    The file is reopened when it has been moved or removed (`WatchedFileHandler`), so that logrotate's default
    rename-and-create rotation works: a plain `FileHandler` went on writing into the renamed file.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._logger = logging.getLogger(f"app.audit.{id(self)}")
        self._logger.propagate = False  # never mixed into the debug log
        self._logger.setLevel(logging.INFO)
        self._handler: logging.Handler = (
            logging.handlers.WatchedFileHandler(path, encoding="utf-8") if path else logging.StreamHandler(sys.stdout)
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(self._handler)

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
        self._logger.info(json.dumps(entry))

    def close(self) -> None:
        self._handler.close()
        self._logger.removeHandler(self._handler)
