"""The audit log: one JSON line per inference request and per refused request, kept apart from the debug log.

Each line says who asked (key id, client address, the peer that connected, the client's own request id), what
(endpoint, path, sha256 of each input), with what (model versions) and what came of it (status, outcome: the error
code is the reason of a refusal). Never pixels, file names, keys or DICOM tags.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_HELD_RECORDS = 10_000
"""Records kept in memory while the audit log cannot be written (some 5 MB), to be written once it can; past this
many the oldest are lost, and counted (`AuditLog.records_lost`)."""

MAX_HELD_REFUSALS = MAX_HELD_RECORDS // 2
"""Of those, records of refused requests (status 400 and up): past this many a new one is lost, not held, so that a
client sending requests without a key cannot push the records of answered requests out."""


class AuditLog:
    """Appends audit records to `path` or, without one, to standard output.

    The file is opened for each write, so a rotation by rename (logrotate's default) needs nothing from the service:
    the next record creates the file again. A record the file will not take (a full disk) is held in memory, with
    every later one, and `writable` is false (the service is then not ready and refuses inference requests,
    `app.api.deps`) until the held records are written, oldest first: `writable` tries, so a readiness probe finds
    out when the disk has space again, and the request answered before its record failed keeps its record
    (a write is the test: a check of the folder's free space passes while `/dev/full` takes nothing). The failure
    is said once in the debug log, without any record's content. Records of refused requests take at most half of
    what is held (`MAX_HELD_REFUSALS`).
    """

    def __init__(self, path: Path | None = None) -> None:
        """Raises OSError when `path` cannot be opened for appending (a missing folder): said at the start, not at
        the first request."""
        if path is not None:
            try:
                open(path, "ab").close()
            except OSError as error:  # named: some (EINVAL for /proc/version) come without the file's name
                raise OSError(error.errno, error.strerror, str(path)) from error
        self.path = path
        self.records_lost = 0
        self._held: deque[tuple[bool, str]] = deque()  # (a refusal, the line), oldest first
        self._held_refusals = 0
        self._failing = False
        self._lock = threading.Lock()  # records come from the event loop; readiness checks from any thread

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
        line, refusal = json.dumps(entry), status >= 400
        with self._lock:
            if self._write_held() and self._append_held([line]):
                return
            if refusal and self._held_refusals >= MAX_HELD_REFUSALS:
                self.records_lost += 1
                return
            self._held.append((refusal, line))
            self._held_refusals += refusal
            if len(self._held) > MAX_HELD_RECORDS:
                self._held_refusals -= self._held.popleft()[0]
                self.records_lost += 1

    @property
    def records_held(self) -> int:
        """Records waiting in memory for the audit log to take them."""
        return len(self._held)

    @property
    def writable(self) -> bool:
        """Whether every record so far is written: while some are held, this tries to write them."""
        with self._lock:
            return self._write_held()

    def close(self) -> None:
        """Write what is held; what the disk still will not take is lost, and said so."""
        with self._lock:
            if not self._write_held():
                self.records_lost += len(self._held)
                logger.error("audit records lost at exit", extra={"fields": {"records_lost": self.records_lost}})
                self._held.clear()

    def _write_held(self) -> bool:
        """Write the held records, oldest first; on failure they stay held (the caller holds the lock).

        While the log fails, each try writes the oldest record alone, and the rest only once that one is taken: a try
        costs one short write, not the join of up to `MAX_HELD_RECORDS` lines for every audited request
        (12 ms a request instead of 1 ms, health probes waiting behind it).
        """
        if not self._held:
            return True
        if not self._append_held([self._held[0][1]]):
            return False
        self._held_refusals -= self._held.popleft()[0]
        written_late = 1 + len(self._held)
        if self._held and not self._append_held([line for _, line in self._held]):
            return False
        self._held.clear()
        self._held_refusals = 0
        if self._failing:
            self._failing = False
            logger.warning(
                "audit log written again",
                extra={"fields": {"records_written_late": written_late, "records_lost": self.records_lost}},
            )
        return True

    def _append_held(self, lines: list[str]) -> bool:
        """Append `lines`; on failure say so once (until the log is written again) and return False."""
        try:
            self._append("".join(f"{line}\n" for line in lines))
        except OSError as error:
            if not self._failing:
                logger.error(
                    "audit record not written: the audit log cannot be written, and the service is not ready and "
                    "refuses inference requests until it can",
                    extra={"fields": {"error": error.strerror or type(error).__name__}},
                )
            self._failing = True
            return False
        return True

    def _append(self, text: str) -> None:
        if self.path is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        data = text.encode("utf-8")
        with open(self.path, "a+b") as file:
            end = file.seek(0, 2)
            if end:
                file.seek(end - 1)
                if file.read(1) != b"\n":  # a line cut short (a disk that filled mid-write, a kill): not joined
                    data = b"\n" + data
            file.write(data)
