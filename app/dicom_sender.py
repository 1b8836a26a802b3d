"""Sending the DICOM node's results by C-STORE (SCU): to each destination, retried with exponential backoff.

`ResultSender` sends one run's files to one destination in one association, retrying it within a pass;
`ResultDelivery` sends every run to every destination, records each attempt in the spool (``record.json`` and
``sent.jsonl``), and retries a destination still failing on later passes, waiting longer each time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from app.dicom_spool import UNSENT_MARKER, Spool, timestamp

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000


@dataclass(frozen=True)
class Destination:
    """Where results go: a C-STORE SCP's AE title, host and port (from ``AE@host:port``)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Read ``AE@host:port``.

        Raises
        ------
        ValueError
            If the text is not of that form, the AE title is not 1-16 characters, or the port not 1-65535.
        """
        ae_title, at, address = text.strip().partition("@")
        host, colon, port = address.rpartition(":")
        if not at or not colon or not host or not port.isdigit():
            raise ValueError(f"a destination must be AE@host:port (e.g. PACS@10.0.0.5:104); got {text!r}")
        if not 1 <= len(ae_title) <= 16:
            raise ValueError(f"a destination's AE title must be 1 to 16 characters; got {ae_title!r}")
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"a destination's port must be 1 to 65535; got {port}")
        return cls(ae_title, host, int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class ResultSender:
    """C-STORE SCU of results to one destination, each association retried with exponential backoff."""

    def __init__(
        self, ae_title: str, retries: int, backoff_seconds: float, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.ae = AE(ae_title=ae_title)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 30
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self._sleep = sleep

    def send(self, destination: Destination, paths: Sequence[Path]) -> tuple[bool, int, str]:
        """Send every file in one association; return (all stored, attempts made, last failure or "")."""
        datasets = [pydicom.dcmread(path) for path in paths]
        self.ae.requested_contexts = []
        for sop_class in sorted({str(dataset.SOPClassUID) for dataset in datasets}):
            self.ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        failure = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff_seconds * 2 ** (attempt - 1))
            failure = self._send_once(destination, datasets)
            if not failure:
                return True, attempt + 1, ""
            logger.warning(
                "sending results failed", extra={"fields": {"destination": str(destination), "reason": failure}}
            )
        return False, self.retries + 1, failure

    def _send_once(self, destination: Destination, datasets: Sequence[Dataset]) -> str:
        association = self.ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not association.is_established:
            return "association rejected or destination unreachable"
        try:
            for dataset in datasets:
                status = association.send_c_store(dataset)
                code = int(status.Status) if status is not None and "Status" in status else None
                if code is None:
                    return "no C-STORE response"
                if code != STATUS_SUCCESS and not 0xB000 <= code <= 0xBFFF:  # B0xx: warning, stored
                    return f"C-STORE status 0x{code:04X}"
        finally:
            association.release()
        return ""


class ResultDelivery:
    """Every run's results to every destination; `send_unsent` retries the destinations that failed in earlier
    passes, once their backoff has passed."""

    def __init__(
        self, spool: Spool, sender: ResultSender, destinations: Sequence[Destination], clock: Callable[[], float]
    ) -> None:
        self.spool = spool
        self.sender = sender
        self.destinations = tuple(destinations)
        self.clock = clock

    def send_unsent(self) -> int:
        """Retry destinations that failed in earlier passes, once their backoff has passed; return runs tried."""
        tried = 0
        now = self.clock()
        for marker in sorted((self.spool.root / "studies").glob(f"*/{UNSENT_MARKER}")):
            key = marker.parent.name
            record = self.spool.read_record(key)
            for run in record["runs"]:
                waiting = [item for item in run.get("sent", {}).values() if item["status"] != "sent"]
                if waiting and all(item.get("next_attempt_at", 0) <= now for item in waiting):
                    self.send_run(key, record, run)
                    tried += 1
        return tried

    def send_run(self, key: str, record: dict[str, Any], run: dict[str, Any]) -> None:
        paths = [self.spool.study_dir(key) / "results" / run["run_id"] / item["file"] for item in run["results"]]
        for destination in self.destinations:
            state = run["sent"].setdefault(str(destination), {"status": "pending", "attempts": 0})
            if state["status"] == "sent":
                continue
            ok, attempts, failure = self.sender.send(destination, paths)
            state["attempts"] += attempts
            state["status"] = "sent" if ok else "failed"
            state["last_error"] = failure or None
            state["at"] = timestamp()
            # Later passes retry a failed destination, waiting longer each time (capped at 10 minutes).
            rounds = state["attempts"] // (self.sender.retries + 1)
            state["next_attempt_at"] = self.clock() + min(600.0, self.sender.backoff_seconds * 2**rounds)
            for item in run["results"]:
                self.spool.log_sent(
                    {
                        "at": state["at"],
                        "study_key": key,
                        "run_id": run["run_id"],
                        "destination": str(destination),
                        "modality": item["modality"],
                        "sop_class_uid": item["sop_class_uid"],
                        "sop_instance_uid": item["sop_instance_uid"],
                        "status": state["status"],
                        "attempts": attempts,
                        "error": state["last_error"],
                    }
                )
            logger.info(
                "results sent" if ok else "results not sent",
                extra={"fields": {"study_key": key, "destination": str(destination), "attempts": attempts}},
            )
        self.spool.write_record(key, record)
        if all(state["status"] == "sent" for run_ in record["runs"] for state in run_.get("sent", {}).values()):
            (self.spool.study_dir(key) / UNSENT_MARKER).unlink(missing_ok=True)
