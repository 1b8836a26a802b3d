"""The DICOM node's spool on disk: received instances, pending studies, records of runs, results and sends.

Layout under the spool directory: ``studies/<key>/instances/*.dcm`` (instances as received), ``studies/<key>/pending``
(its modification time is the study's last arrival), ``studies/<key>/unsent`` (results a destination still lacks),
``studies/<key>/record.json`` (every run), ``studies/<key>/results/<run>/`` and ``sent.jsonl``. Instances, records and
results are written to a temporary file, flushed to disk and renamed into place, and ``sent.jsonl`` is flushed after
each line, so a node killed at any point has lost nothing it acknowledged. Studies are named by
a hash of their Study Instance UID (`study_key`): no DICOM UID shows in paths or logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from app.dicom_seg import segmentation_to_bytes

PENDING_MARKER = "pending"
UNSENT_MARKER = "unsent"
RECORD_FILE = "record.json"
SENT_LOG = "sent.jsonl"


def study_key(study_instance_uid: str) -> str:
    """The spool's (and the logs') name for a study: a hash, so no DICOM UID shows in paths or logs."""
    return hashlib.sha256(study_instance_uid.encode()).hexdigest()[:24]


def _write_atomically(path: Path, data: bytes) -> None:
    """Write, flush to disk, then rename into place: a reader never sees half a file, a crash leaves none."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself is durable only once the directory is
    finally:
        os.close(directory)


@dataclass
class Spool:
    """The node's on-disk state: ``studies/<key>/instances/*.dcm``, markers, ``record.json``, ``results/``."""

    root: Path
    clock: Callable[[], float] = time.time
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        (self.root / "studies").mkdir(parents=True, exist_ok=True)

    def study_dir(self, key: str) -> Path:
        return self.root / "studies" / key

    def store_instance(self, study_instance_uid: str, sop_instance_uid: str, data: bytes) -> str:
        """Keep one received instance (Part 10 bytes) and mark its study pending; return the study key."""
        key = study_key(study_instance_uid)
        instances = self.study_dir(key) / "instances"
        instances.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:32] + ".dcm"
        _write_atomically(instances / name, data)
        self.touch_pending(key)
        return key

    def touch_pending(self, key: str, at: float | None = None) -> None:
        marker = self.study_dir(key) / PENDING_MARKER
        with self._lock:
            marker.touch()
            now = self.clock() if at is None else at
            os.utime(marker, (now, now))

    def pending_studies(self) -> dict[str, float]:
        """Study key -> time of its last arrival, for every study with a pending marker."""
        found = {}
        for marker in (self.root / "studies").glob(f"*/{PENDING_MARKER}"):
            try:
                found[marker.parent.name] = marker.stat().st_mtime
            except FileNotFoundError:  # cleared meanwhile
                continue
        return found

    def clear_pending(self, key: str, seen_mtime: float) -> bool:
        """Remove the marker unless an instance arrived since `seen_mtime`; True if removed."""
        marker = self.study_dir(key) / PENDING_MARKER
        with self._lock:
            try:
                if marker.stat().st_mtime != seen_mtime:
                    return False
                marker.unlink()
            except FileNotFoundError:
                pass
        return True

    def instance_files(self, key: str) -> list[Path]:
        return sorted((self.study_dir(key) / "instances").glob("*.dcm"))

    def fingerprint(self, files: Sequence[Path]) -> str:
        """The set of instances (their names are hashes of SOP Instance UIDs); a re-send of the same set matches."""
        return hashlib.sha256("\n".join(sorted(path.name for path in files)).encode()).hexdigest()[:32]

    def read_record(self, key: str) -> dict[str, Any]:
        path = self.study_dir(key) / RECORD_FILE
        if not path.exists():
            return {"runs": []}
        return json.loads(path.read_text())

    def write_record(self, key: str, record: dict[str, Any]) -> None:
        _write_atomically(self.study_dir(key) / RECORD_FILE, json.dumps(record, indent=1).encode())

    def save_results(self, key: str, run_id: str, datasets: Sequence[Dataset]) -> list[Path]:
        directory = self.study_dir(key) / "results" / run_id
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, dataset in enumerate(datasets):
            path = directory / f"{index:02d}_{dataset.Modality}.dcm"
            _write_atomically(path, segmentation_to_bytes(dataset))
            paths.append(path)
        return paths

    def log_sent(self, entry: dict[str, Any]) -> None:
        with self._lock, open(self.root / SENT_LOG, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def sent_log(self) -> list[dict[str, Any]]:
        path = self.root / SENT_LOG
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def timestamp() -> str:
    """When, in the records: UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")
