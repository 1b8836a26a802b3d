"""Sending the DICOM node's results by C-STORE (SCU): to each destination, retried with exponential backoff.

`ResultSender` sends one run's files to one destination in one association, retrying it within a pass;
`ResultDelivery` sends every run to every destination, records each attempt in the spool (``record.json`` and
``sent.jsonl``), and retries a destination still failing on later passes, waiting longer each time. A destination
that takes some results and refuses others (say the SEG but not the SR) is sent only the rest on later passes; a
destination that fails in any way, even one no test foresaw, never holds up the other destinations and studies.
A destination that cannot be reached at all (down, not answering, rejecting the node's associations) is tried with
one study per pass, and with no other until that study's backoff has passed: each try costs the retries' waits and
timeouts, and every study behind it would only fail the same way.

The node's stop (`ResultSender.stop`) ends a send at once: no new attempt starts, a backoff wait ends, and an
association in progress is cut off. A send cut short before the destination stored anything is not recorded at all
(its results stay as they were, "pending" or "failed"); one cut short after it stored some records those as sent
and the rest as failed ("the node stopped before all were sent"). Either way the node sends the rest after its
restart.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    KeyObjectSelectionDocumentStorage,
    SegmentationStorage,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from app.backoff import doubling_wait
from app.logging_config import os_error_name
from app.node.dicom_spool import RECORD_FILE, WAITING_STATUSES, Spool, results_waiting, timestamp
from app.node.dicom_study_runs import latest_outcome
from app.node.node_metrics import NodeMetrics
from app.settings import AE_TITLE_RULE, is_ae_title

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122  # "Refused: SOP Class not supported" (PS3.7 C.4.2.1.4)


@dataclass(frozen=True)
class Destination:
    """Where results go: a C-STORE SCP's AE title, host and port (from ``AE@host:port``)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Read ``AE@host:port``; an IPv6 address is written in brackets (``PACS@[2001:db8::5]:104``, RFC 3986) or
        bare (``PACS@2001:db8::5:104``: the port follows the last colon).

        Raises
        ------
        ValueError
            If the text is not of that form, the AE title breaks DICOM's rule (`AE_TITLE_RULE`), the brackets hold
            no IPv6 address, or the port is not 1-65535.
        """
        ae_title, at, address = text.strip().partition("@")
        if "@" in address:  # "A@pacs1:104;B@pacs2:104" (review 72 F6): one AE title at another's host, for ever
            raise ValueError(
                f"a destination must be AE@host:port, several separated by commas (an AE title holding '@' cannot be "
                f"written here); got {text!r}"
            )
        host, colon, port = address.rpartition(":")
        if not at or not colon or not host or not (port.isascii() and port.isdigit()):
            raise ValueError(f"a destination must be AE@host:port (e.g. PACS@10.0.0.5:104); got {text!r}")
        if host.startswith("[") or host.endswith("]"):  # the brackets are the URL's, not the address's (review 62 F6)
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else ""
            if not _is_ipv6(host):
                raise ValueError(f"a destination's brackets must hold an IPv6 address; got {text!r}")
        elif ":" in host and not _is_ipv6(host):  # "PACS@2001:db8::5", its port forgotten (review 71 F8)
            raise ValueError(f"a destination's IPv6 address goes in brackets: AE@[address]:port; got {text!r}")
        elif ":" not in host and not _is_host(host):  # a space, a comma list, 999.1.1.1: never reachable
            raise ValueError(
                f"a destination's host must be an IP address or a host name (letters, digits, '-', '_', '.'); "
                f"got {text!r}"
            )
        if not is_ae_title(ae_title):
            raise ValueError(f"a destination's AE title: {AE_TITLE_RULE}; got {ae_title!r}")
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"a destination's port must be 1 to 65535; got {port}")
        return cls(ae_title, host, int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?")
"""A host name or an IPv4 address, as DNS labels are (an underscore too: Compose service names may hold one)."""


def _is_host(host: str) -> bool:
    """Whether `host` is an IPv4 address or a host name DNS could answer: labels of at most 63 characters, 253 in all
    (attack review 65 F3), and digits and dots only when they make an IPv4 address (not 999.1.1.1 or 1.2.3.4.5)."""
    name = host.removesuffix(".")
    if not HOST_NAME.fullmatch(host) or len(name) > 253 or any(len(label) > 63 for label in name.split(".")):
        return False
    if all(label.isdigit() for label in name.split(".")):
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return False
    return True


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class SendOutcome:
    """What one `ResultSender.send` achieved: the files the destination stored, attempts made, last failure, and
    whether no attempt had its association accepted (`unreachable`: the destination failed, not these results)."""

    stored: tuple[Path, ...]
    attempts: int
    failure: str = ""
    unreachable: bool = False
    stopped: bool = False  # cut short by the node's stop: the destination did not fail, the rest waits for a restart
    declined: tuple[Path, ...] = ()  # `DECLINED_UNLESS_NEGOTIATED` the destination would not take: not retried


class ResultSender:
    """C-STORE SCU of results to one destination, each association retried with exponential backoff, until `stop`."""

    def __init__(
        self,
        ae_title: str,
        retries: int,
        backoff_seconds: float,
        sleep: Callable[[float], object] | None = None,
        timeout_seconds: float = 30.0,
        stopping: threading.Event | None = None,
    ) -> None:
        """`sleep` waits between retries (default: on `stopping`, so that a stop ends the wait); `stopping` is the
        node's stop event (default: one of the sender's own)."""
        self.ae_title = ae_title
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.stopping = stopping or threading.Event()
        self._sleep = sleep or self.stopping.wait
        # The associations being set up or used now (one per sender thread), cut off by `stop`.
        self._in_flight: set[Association] = set()
        self._in_flight_lock = threading.Lock()

    def stop(self) -> None:
        """End every send at once: no new attempt, no backoff wait, and the associations in progress cut off (a
        destination that accepts the connection and never answers held the node's stop for two more send
        timeouts, 67 s)."""
        self.stopping.set()
        with self._in_flight_lock:
            in_flight = list(self._in_flight)
        for association in in_flight:
            _cut_off(association)

    def send(self, destination: Destination, paths: Sequence[Path], stored_earlier: bool = False) -> SendOutcome:
        """Send the files in one association, retrying those not stored; every failure ends up in the outcome.
        `stored_earlier`: the destination stored some of the run's results in an earlier pass."""
        datasets = dict(sorted(((path, pydicom.dcmread(path)) for path in paths), key=_send_order))
        stored: list[Path] = []
        declined: list[Path] = []
        failure, accepted = "", False
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(doubling_wait(self.backoff_seconds, attempt - 1))
            if self.stopping.is_set():
                return SendOutcome(
                    tuple(stored),
                    attempt,
                    "the node stopped before all were sent",
                    stopped=True,
                    declined=tuple(declined),
                )
            done = {*stored, *declined}
            remaining = {path: dataset for path, dataset in datasets.items() if path not in done}
            stored_now, declined_now, failure, accepted_now = self._send_once(
                destination, remaining, stored_earlier or bool(stored)
            )
            stored.extend(stored_now)
            declined.extend(declined_now)
            accepted = accepted or accepted_now
            if not failure:
                return SendOutcome(tuple(stored), attempt + 1, declined=tuple(declined))
            if self.stopping.is_set():  # the failure may be the stop's own doing: not the destination's
                return SendOutcome(
                    tuple(stored),
                    attempt + 1,
                    "the node stopped before all were sent",
                    stopped=True,
                    declined=tuple(declined),
                )
            logger.warning(
                "sending results failed", extra={"fields": {"destination": str(destination), "reason": failure}}
            )
        return SendOutcome(tuple(stored), self.retries + 1, failure, unreachable=not accepted, declined=tuple(declined))

    def _send_once(
        self, destination: Destination, datasets: dict[Path, Dataset], stored_earlier: bool = False
    ) -> tuple[list[Path], list[Path], str, bool]:
        """One association: (files stored, files declined as `_store` may, what failed or "", whether
        the destination accepted it). A refused file does not stop the others. The association is one `stop` cuts off
        from its connection to its end. `stored_earlier`: an earlier attempt stored some of these results (an abort
        then says nothing of the node's AE title)."""
        connection = _Connection(self._track)
        try:
            return self._associate_and_store(destination, datasets, connection, stored_earlier)
        finally:
            if connection.association is not None:
                with self._in_flight_lock:
                    self._in_flight.discard(connection.association)

    def _track(self, association: Association) -> None:
        """EVT_CONN_OPEN: a stop from now on cuts the association off; at once if the stop came first."""
        with self._in_flight_lock:
            self._in_flight.add(association)
        if self.stopping.is_set():
            _cut_off(association)

    def _associate_and_store(
        self, destination: Destination, datasets: dict[Path, Dataset], connection: _Connection, stored_earlier: bool
    ) -> tuple[list[Path], list[Path], str, bool]:
        ae = self._application_entity(datasets.values())
        started = time.monotonic()
        try:
            association = ae.associate(
                destination.host,
                destination.port,
                ae_title=destination.ae_title,
                evt_handlers=[(evt.EVT_CONN_OPEN, connection.opened)],
            )
        except (OSError, RuntimeError, ValueError) as error:
            return [], [], f"association failed ({type(error).__name__})", False
        if not association.is_established:
            if (
                _accepted(association)
                and all(_may_be_declined(dataset) for dataset in datasets.values())
                and not {str(dataset.get("Modality", "")) for dataset in datasets.values()} >= REPORTS
            ):  # neither the SR nor the SEG: `_not_associated` asks about the classes
                for dataset in datasets.values():
                    _declined_unless_negotiated(dataset)
                return [], list(datasets), "", True  # accepted, with none of these classes: its lasting answer
            waited = time.monotonic() - started
            why = self._not_associated(association, connection.is_open, waited, destination, datasets.values())
            return [], [], why, _accepted(association)
        accepted = {str(context.abstract_syntax) for context in association.accepted_contexts}
        stored, declined, failures = [], [], []
        try:
            for path, dataset in datasets.items():
                if self.stopping.is_set():
                    failures.append("the node stopped before all were sent")
                    break
                store_started = time.monotonic()
                was_stored, failure = _store(association, dataset, accepted)
                waited = time.monotonic() - store_started
                if was_stored:
                    stored.append(path)
                elif failure:
                    failures.append(failure)
                else:
                    declined.append(path)
                if failure.startswith(NO_RESPONSE):
                    # pynetdicom returns at once on an A-ABORT, before its reactor marks the association aborted
                    # (and ends it): wait for that, rather than send the next result into an ended association.
                    association.join(self.timeout_seconds)
                if not association.is_established:
                    # Within the timeout: the destination's doing, not pynetdicom's abort on its DIMSE timeout.
                    refused_at_once = not stored and not stored_earlier and waited < self.timeout_seconds
                    failures.append(self._ended_by_destination(association, destination, refused_at_once))
                    break
        finally:
            if self.stopping.is_set():  # a release would wait for an answer on a connection the stop cut
                association.abort()
            elif association.is_established:
                association.release()
        return stored, declined, "; ".join(dict.fromkeys(failures)), True

    def _ended_by_destination(self, association: Association, destination: Destination, refused_at_once: bool) -> str:
        """Why an association the destination accepted ended before all was sent (`refused_at_once`: it ended it
        on a C-STORE, within the timeout, before storing anything). An abort then is how a PACS refuses stores from
        a calling AE title it does not know (Orthanc, by default): the error names the titles, as a rejected
        association's reason does (interop review 48 F4: it said only "aborted")."""
        if not association.is_aborted:
            return "association ended by the destination"
        if not refused_at_once or self.stopping.is_set():
            return "association aborted after it was established"
        return (
            "association aborted after it was established, before the destination stored anything: it may not "
            f"accept stores from this node's AE title {self.ae_title} (DICOM_NODE_AE_TITLE): declare that title, "
            f"with this node's host, as allowed to store at {destination.ae_title}"
        )

    def _not_associated(
        self,
        association: Association,
        connected: bool,
        waited: float,
        destination: Destination,
        datasets: Iterable[Dataset],
    ) -> str:
        """Why an association was not established. pynetdicom sets `is_aborted` alike for a TCP connection that
        failed and for an A-ASSOCIATE-AC accepting none of the contexts offered: the connection event and the answer
        (`acceptor.primitive`: None until an A-ASSOCIATE-AC or -RJ comes) tell them apart."""
        answer = association.acceptor.primitive
        timed_out = waited >= self.timeout_seconds  # pynetdicom gives up on a connect or a request left unanswered
        if not connected:
            within = f" within {self.timeout_seconds:g} s" if timed_out else ""
            return f"destination unreachable: could not connect to {destination.host}:{destination.port}{within}"
        if association.is_rejected and answer is not None:
            kind = "permanent" if answer.result == 0x01 else "transient"
            return f"association rejected by the destination ({kind}: {answer.reason_str})"
        if _accepted(association):
            modalities = ", ".join(sorted({str(dataset.get("Modality", "result")) for dataset in datasets}))
            return (
                "association accepted with no presentation context for the results' SOP classes: does the "
                f"destination accept {modalities}?"
            )
        if timed_out:
            return f"no answer from the destination within {self.timeout_seconds:g} s"
        if association.is_aborted:
            return "association aborted by the destination before it answered the request"
        return "destination unreachable or not answering"

    def _application_entity(self, datasets: Iterable[Dataset]) -> AE:
        """A fresh AE for one association: its requested contexts are per send, and destinations send in parallel
        threads (`ResultDelivery`), so none may share one."""
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_seconds
        ae.connection_timeout = self.timeout_seconds
        for sop_class in sorted({str(dataset.SOPClassUID) for dataset in datasets}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        return ae


class _Connection:
    """Whether an association's TCP connection opened (pynetdicom's EVT_CONN_OPEN): a failed connect and an
    association aborted once connected otherwise look the same afterwards. The association is handed to `on_open`
    then, before `AE.associate` returns it (which takes up to the send timeout for a destination that never answers)."""

    def __init__(self, on_open: Callable[[Association], None]) -> None:
        self.is_open = False
        self.association: Association | None = None
        self._on_open = on_open

    def opened(self, event: evt.Event) -> None:
        self.is_open = True
        self.association = event.assoc
        self._on_open(event.assoc)


SEND_ORDER = ("SR", "SEG", "KO")
"""The report first: a destination that drops the association on a SEG it cannot take still has the SR, the result
every destination gets (interop review 63 F5: sent after the SEG, it never arrived); the rejection note last."""


def _send_order(item: tuple[Path, Dataset]) -> int:
    modality = str(item[1].get("Modality", ""))
    return SEND_ORDER.index(modality) if modality in SEND_ORDER else len(SEND_ORDER)


def _cut_off(association: Association) -> None:
    """Close the association's connection: pynetdicom's wait for an answer (A-ASSOCIATE-AC, a C-STORE response) ends
    at once, as when the peer closes it, where `Association.abort` would leave it waiting out its timeout."""
    transport = association.dul.socket
    if transport is not None:
        transport.close()


def _accepted(association: Association) -> bool:
    """Whether the destination answered the association request with an A-ASSOCIATE-AC (which may still accept none
    of the presentation contexts: then it takes none of these results, though another study's might suit it)."""
    answer = association.acceptor.primitive
    return answer is not None and answer.result == 0x00


OPTIONAL_CLASSES = frozenset({KeyObjectSelectionDocumentStorage})
"""What a destination may decline, at association or by its C-STORE status, without the results counting
undelivered: a rejection note (`app.dicom.rejection_note`) helps an archive that implements IHE IOCM, and the SEG and
SR stand without it. Declined, it is recorded so ("declined") and not retried (review 38: a destination that refused
its C-STORE had the study retried for good, every alert firing)."""


DECLINED_UNLESS_NEGOTIATED = OPTIONAL_CLASSES | {SegmentationStorage, ComprehensiveSRStorage}
"""What a destination that accepts the association may decline by accepting no presentation context for its class
(PS3.8 9.3.3.2: its lasting answer, not a failure to retry): a rejection note; the SEG, which many report and RIS
archives do not take while they take the SR (interop review 62 F3: the SEG was retried for ever, the study never
counted delivered nor purged, and the spool filled); and the SR, which image archives that take the SEG may not
(interop review 66 F1: an SR refused 0x0122 was retried for good, so was the study kept until the spool filled and
the node refused every study). A SEG or SR a destination negotiated and then refused by its C-STORE status is
declined too when that status is a lasting answer about the data set (`_lasting_refusal`); "out of resources"
(0xA7xx) and anything else are failures, retried. A destination that takes neither the SR nor the SEG of a run takes
nothing the node makes: that is a failure (`_takes_neither_report`), retried and alerted on, not a decline."""

REPORTS = frozenset({"SR", "SEG"})
TAKES_NEITHER_REPORT = (
    "the destination takes neither the SR nor the SEG (no presentation context, or a lasting refusal)"
)


def _lasting_refusal(code: int) -> bool:
    """Whether a C-STORE failure status says the destination will refuse this data set every time (PS3.4 Table
    B.2-1): 0x0122 SOP Class not supported (what a context not accepted says), 0xA9xx the data set does not match
    its SOP class, 0xCxxx cannot understand (interop review 62 F3: a SEG answered 0xC000 was retried for ever)."""
    return code == STATUS_SOP_CLASS_NOT_SUPPORTED or 0xA900 <= code <= 0xA9FF or 0xC000 <= code <= 0xCFFF


def _may_be_declined(dataset: Dataset) -> bool:
    return str(dataset.SOPClassUID) in DECLINED_UNLESS_NEGOTIATED


def _declined_unless_negotiated(dataset: Dataset, status: int | None = None) -> bool:
    """Whether `dataset` is declined, logged, when the destination accepts no context for its class or refuses it
    for good by its C-STORE `status`."""
    if not _may_be_declined(dataset):
        return False
    fields = {} if status is None else {"fields": {"status": f"0x{status:04X}"}}
    if str(dataset.SOPClassUID) in OPTIONAL_CLASSES:
        logger.info("the destination accepts no rejection note (Key Object Selection): not sent", extra=fields)
        return True
    result, other = (
        ("SEG (Segmentation Storage)", "SR") if dataset.Modality == "SEG" else ("SR (Comprehensive SR)", "SEG")
    )
    if status is None or status == STATUS_SOP_CLASS_NOT_SUPPORTED:
        logger.warning(f"the destination accepts no {result}: its {other} goes without it", extra=fields)
    else:  # it takes the class and refused this one's content: a result the node made wrong, or the archive's limit
        logger.warning(
            f"the destination refused the {result.split()[0]} for good (C-STORE status 0x{status:04X}): not "
            f"retried; its {other} goes without it",
            extra=fields,
        )
    return True


NO_RESPONSE = "no C-STORE response"


def _store(association: Any, dataset: Dataset, accepted: set[str]) -> tuple[bool, str]:
    """C-STORE one dataset: (whether it was stored, why not: "" when stored or declined as `OPTIONAL_CLASSES` and
    `DECLINED_UNLESS_NEGOTIATED` may be). A connection that fails is never a decline: it is retried."""
    modality = str(dataset.get("Modality", "result"))
    optional = str(dataset.SOPClassUID) in OPTIONAL_CLASSES
    if str(dataset.SOPClassUID) not in accepted:
        if _declined_unless_negotiated(dataset):
            return False, ""
        return False, f"destination accepts no {modality} (its SOP class was not accepted)"
    try:
        status = association.send_c_store(dataset)
    except (OSError, RuntimeError, ValueError) as error:
        return False, f"{modality} not sent ({type(error).__name__})"
    code = int(status.Status) if status is not None and "Status" in status else None
    if code is None:
        return False, f"{NO_RESPONSE} for the {modality}"
    # A warning is stored too: Bxxx, and 0001, 0107 and 0116 (PS3.7 C.1.2, Annex C.4.2), which were retried as
    # failures every pass for ever, the destination storing them again each time (interop review 63 F1).
    if code_to_category(code) not in ("Success", "Warning"):
        if _lasting_refusal(code) and _declined_unless_negotiated(dataset, code):
            return False, ""  # the destination's lasting answer, as when it accepts no context for the class
        if optional:
            logger.info(
                "the destination refused the rejection note (Key Object Selection): not sent",
                extra={"fields": {"status": f"0x{code:04X}"}},
            )
            return False, ""
        return False, f"C-STORE status 0x{code:04X} for the {modality}"
    return True, ""


def _unless_neither_report_taken(run: dict[str, Any], state: dict[str, Any], outcome: SendOutcome) -> SendOutcome:
    """`outcome`, a failure where the destination has now declined both the SR and the SEG of the run and stored
    nothing of it (over every pass): it takes nothing the node makes, and is retried and alerted on as a destination
    that failed, the two reports declined no more (`DECLINED_UNLESS_NEGOTIATED`)."""
    if outcome.failure or outcome.stored or state.get("stored"):
        return outcome
    modality = {item["file"]: item["modality"] for item in run["results"]}
    declined = {*state.get("declined", []), *(path.name for path in outcome.declined)}
    if not {modality.get(name) for name in declined} >= REPORTS:
        return outcome
    state["declined"] = [name for name in state.get("declined", []) if modality.get(name) not in REPORTS]
    kept = tuple(path for path in outcome.declined if modality.get(path.name) not in REPORTS)
    return dataclasses.replace(outcome, failure=TAKES_NEITHER_REPORT, declined=kept)


def _attempt_status(file: str, stored: set[str], declined: set[str]) -> str:
    """A result's line in `sent.jsonl`: "sent", "declined" (a class the destination would not take, not
    retried) or "failed"."""
    if file in stored:
        return "sent"
    return "declined" if file in declined else "failed"


def _put_delivery(run: dict[str, Any], destination: str, state: dict[str, Any]) -> None:
    """Set a destination's delivery state in a run, unless a later run of the study superseded it there meanwhile
    (while it was being sent, or while the record could not be written) and the state is not "sent": then it stays
    superseded, and is never retried."""
    if run["sent"].get(destination, {}).get("status") == "superseded" and state["status"] != "sent":
        return
    run["sent"][destination] = dict(state)


class ResultDelivery:
    """Every run's results to every destination; `send_unsent` sends what a destination still lacks, once its
    backoff has passed (at once for a new run).

    Each destination is meant to be served by a thread of its own (`DicomNode` runs `send_unsent` for one
    destination per thread): a destination that hangs until the send timeout, and backs off between retries, delays
    only its own deliveries. The threads share the spool: each writes only its destination's state in a run, under
    the spool's record lock, so nothing one writes is undone by another.
    """

    def __init__(
        self,
        spool: Spool,
        sender: ResultSender,
        destinations: Sequence[Destination],
        clock: Callable[[], float],
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.spool = spool
        self.metrics = metrics
        self.sender = sender
        self.destinations = tuple(destinations)
        self.clock = clock
        # Destination -> sends in a row that could not reach it, and when to try it again: until then it is
        # passed over for every study (one thread per destination writes its own entry).
        self._outages: dict[str, tuple[int, float]] = {}
        # (study key, run id, destination) -> a delivery's state the record could not take (a full disk): what was
        # stored is not sent again while the spool cannot be written, and it is recorded once it can.
        self._unrecorded: dict[tuple[str, str, str], dict[str, Any]] = {}

    def restore_unsent_markers(self) -> int:
        """At start: drop what waits for a destination no longer configured, send a study's current results to the
        configured destinations in its place (`_replacements`), take up again what was dropped for a destination
        configured again (a typo mended, a destination put back) while its results are still kept, and mark every
        study whose record still has results to send (a node stopped between writing a record and marking it, or a
        marker lost): without the marker `send_unsent` would never look at it. Returns how many were marked."""
        restored = 0
        for record_file in (self.spool.root / "studies").glob(f"*/{RECORD_FILE}"):
            key = record_file.parent.name
            record = self.spool.readable_record(key)
            if record is None:  # logged by the spool; the other studies go on
                continue
            # Written only then: the record's time counts to its purge.
            if (
                self._removed_destinations(record)
                or self._dropped_for_configured(key, record)
                or self._replacements(key, record)
            ):
                record = self.spool.update_record(key, self._match_destinations(key))
            marked = self.spool.is_unsent(key)
            if results_waiting(record) and not marked:
                self.spool.mark_unsent(key)
                restored += 1
            elif marked:
                self.spool.clear_unsent_if_all_sent(key)
        return restored

    def _removed_destinations(self, record: dict[str, Any]) -> set[str]:
        """Destinations that results in `record` still wait for, though they are no longer configured."""
        configured = {str(destination) for destination in self.destinations}
        return {
            name
            for run in record["runs"]
            for name, state in run.get("sent", {}).items()
            if name not in configured and state.get("status") in WAITING_STATUSES
        }

    def _dropped_for_configured(self, key: str, record: dict[str, Any]) -> list[tuple[str, str]]:
        """(run ID, destination) of the results dropped for a destination that is configured (again), whose files
        the spool still keeps (not yet purged)."""
        configured = {str(destination) for destination in self.destinations}
        results = self.spool.study_dir(key) / "results"
        return [
            (run["run_id"], name)
            for run in record["runs"]
            for name, state in run.get("sent", {}).items()
            if name in configured and state.get("status") == "dropped" and (results / run["run_id"]).is_dir()
        ]

    def _replacements(self, key: str, record: dict[str, Any]) -> list[tuple[str, str]]:
        """(run ID, destination) of the configured destinations that the study's current results (`latest_outcome`'s,
        while the spool keeps them) go to in place of a destination no longer configured that never got them: one of
        the same AE title (the PACS at a new host or port), and every configured one when no destination got them at
        all (a PACS replaced by another). Why: durability review 45 F2, such results were dropped for good, and a
        re-send of the study did nothing ("unchanged"). Earlier runs' results are not sent: the current ones supersede
        them."""
        run = latest_outcome(record["runs"])
        if run is None or not (self.spool.study_dir(key) / "results" / run["run_id"]).is_dir():
            return []
        sent = run.get("sent", {})
        configured = {str(destination) for destination in self.destinations}
        lost = [
            name
            for name, state in sent.items()
            if name not in configured and state.get("status") in (*WAITING_STATUSES, "dropped")
        ]
        if not lost:
            return []
        delivered = any(state.get("status") == "sent" for state in sent.values())
        lost_ae_titles = {name.partition("@")[0] for name in lost}
        return [
            (run["run_id"], str(destination))
            for destination in self.destinations
            if str(destination) not in sent and (not delivered or destination.ae_title in lost_ae_titles)
        ]

    def _match_destinations(self, key: str) -> Callable[[dict[str, Any]], None]:
        """A record change: results still waiting for a destination taken out of the configuration are marked
        "dropped" (kept in the record, not sent), so that they no longer hold the study's unsent marker and its
        retention purge; results dropped so for a destination configured again are to be sent to it after all."""

        def match(record: dict[str, Any]) -> None:
            removed, dropped, taken_up = self._removed_destinations(record), Counter[str](), Counter[str]()
            again = set(self._dropped_for_configured(key, record))
            replacements = self._replacements(key, record)
            for run in record["runs"]:
                for run_id, name in replacements:
                    if run["run_id"] == run_id:
                        run["sent"][name] = {"status": "pending", "attempts": 0}
            for run in record["runs"]:
                for name, state in run.get("sent", {}).items():
                    if name in removed and state.get("status") in WAITING_STATUSES:
                        state.update(status="dropped", at=timestamp())
                        dropped[name] += 1
                    elif (run["run_id"], name) in again:
                        state.update(status="pending", at=timestamp())
                        state.pop("next_attempt_at", None)
                        taken_up[name] += 1
            for name, runs in dropped.items():
                if self.metrics is not None:
                    self.metrics.results_dropped.labels(destination=name).inc(runs)
                logger.warning(
                    "results dropped: their destination is no longer configured (configured again before the "
                    "study is purged, it gets them)",
                    extra={"fields": {"study_key": key, "destination": name, "runs": runs}},
                )
            for name, runs in taken_up.items():
                logger.info(
                    "results dropped earlier to be sent: their destination is configured again",
                    extra={"fields": {"study_key": key, "destination": name, "runs": runs}},
                )
            for _, name in replacements:
                logger.warning(
                    "results to be sent to a destination configured in place of one that never got them",
                    extra={"fields": {"study_key": key, "destination": name}},
                )

        return match

    def send_unsent(self, destinations: Sequence[Destination] | None = None) -> int:
        """Send to each of `destinations` (default: all, one after the other) what it still lacks, once its backoff
        has passed; return runs tried."""
        chosen = self.destinations if destinations is None else tuple(destinations)
        tried = 0
        for key in self.spool.unsent_studies():
            if self.sender.stopping.is_set():  # the rest waits in the spool for the restart
                break
            reachable = [destination for destination in chosen if not self._unreachable(destination)]
            if not reachable:
                break
            try:
                tried += self._send_study(key, reachable)
            except Exception:  # one study's problem must not hold up the others; logged with its traceback
                logger.exception("sending a study's results failed", extra={"fields": {"study_key": key}})
        return tried

    def _send_study(self, key: str, destinations: Sequence[Destination]) -> int:
        self._record_unrecorded(key)
        record = self.spool.readable_record(key)
        if record is None:  # logged by the spool; its results wait until it is repaired
            return 0
        tried = 0
        for run in record["runs"]:
            for destination in destinations:  # what the record could not take yet stands in for it
                held = self._unrecorded.get((key, run["run_id"], str(destination)))
                if held is not None:
                    _put_delivery(run, str(destination), held)
            due = [destination for destination in destinations if self._due(run, destination)]
            if due and not self.sender.stopping.is_set():
                self.send_run(key, run, due)
                tried += 1
        self.spool.clear_unsent_if_all_sent(key)
        return tried

    def _record_unrecorded(self, key: str) -> None:
        """Write the study's delivery states that its record could not take before; kept in memory if it still
        cannot (said once, when they were held)."""
        held = {entry: state for entry, state in self._unrecorded.items() if entry[0] == key}
        if not held:
            return

        def update(record: dict[str, Any]) -> None:
            for stored_run in record["runs"]:
                for (_, run_id, destination), state in held.items():
                    if stored_run["run_id"] == run_id:
                        _put_delivery(stored_run, destination, state)

        try:
            self.spool.update_record(key, update)
        except OSError:
            return
        for entry in held:
            self._unrecorded.pop(entry, None)
        logger.info("deliveries recorded once the spool could be written", extra={"fields": {"study_key": key}})

    def _unreachable(self, destination: Destination) -> bool:
        _, until = self._outages.get(str(destination), (0, 0.0))
        return until > self.clock()

    def _due(self, run: dict[str, Any], destination: Destination) -> bool:
        """Whether `destination` still lacks some of the run's results, its backoff has passed and it is not down."""
        state = run.get("sent", {}).get(str(destination))
        return (
            state is not None
            and state.get("status") in WAITING_STATUSES
            and state.get("next_attempt_at", 0) <= self.clock()
            and not self._unreachable(destination)
        )

    def send_run(self, key: str, run: dict[str, Any], destinations: Sequence[Destination] | None = None) -> None:
        """Send one run's results to each of `destinations` (default: all) that still lacks some, and record each
        attempt."""
        folder = self.spool.study_dir(key) / "results" / run["run_id"]
        for destination in self.destinations if destinations is None else destinations:
            state = run["sent"].setdefault(str(destination), {"status": "pending", "attempts": 0})
            if state["status"] not in WAITING_STATUSES or self.sender.stopping.is_set():
                continue
            done = {*state.get("stored", []), *state.get("declined", [])}
            missing = [item for item in run["results"] if item["file"] not in done]
            if not missing:  # every file was stored in an earlier pass that ended before it was recorded as sent
                self._record_attempt(key, run, destination, state, [], SendOutcome((), 0))
                continue
            try:
                outcome = self.sender.send(
                    destination, [folder / item["file"] for item in missing], stored_earlier=bool(state.get("stored"))
                )
            except Exception as error:  # unreadable result files, a library bug: retried later like a refusal
                logger.exception("sending results failed", extra={"fields": {"destination": str(destination)}})
                outcome = SendOutcome((), 1, f"not sent ({type(error).__name__})")
            else:
                if outcome.stopped and not outcome.stored:  # no attempt to record: the results stay as they were
                    logger.info(
                        "sending results cut short by the stop; they are sent after the restart",
                        extra={"fields": {"study_key": key, "destination": str(destination)}},
                    )
                    continue
                if not outcome.stopped:  # a stop says nothing of whether the destination can be reached
                    self._note_reachability(destination, outcome)
                outcome = _unless_neither_report_taken(run, state, outcome)
            self._record_attempt(key, run, destination, state, missing, outcome)

    def _note_reachability(self, destination: Destination, outcome: SendOutcome) -> None:
        """After a send that went to the destination: one it could not reach waits longer each time, whichever study
        tried it (`_unreachable`); one it reached is open to every study again."""
        if outcome.unreachable:
            failed, _ = self._outages.get(str(destination), (0, 0.0))
            self._outages[str(destination)] = (failed + 1, self.clock() + self._backoff(failed + 1))
        else:
            self._outages.pop(str(destination), None)

    def _backoff(self, rounds: int) -> float:
        """Seconds to wait after `rounds` failed passes: doubling, at most 10 minutes."""
        return doubling_wait(self.sender.backoff_seconds, rounds, most_seconds=600.0)

    def _record_attempt(
        self,
        key: str,
        run: dict[str, Any],
        destination: Destination,
        state: dict[str, Any],
        missing: list[dict[str, Any]],
        outcome: SendOutcome,
    ) -> None:
        stored_now = {path.name for path in outcome.stored}
        declined_now = {path.name for path in outcome.declined}
        state["stored"] = sorted({*state.get("stored", []), *stored_now})
        if declined_now:
            state["declined"] = sorted({*state.get("declined", []), *declined_now})
        state["attempts"] += outcome.attempts
        state["status"] = "sent" if not outcome.failure else "failed"
        if self.metrics is not None:
            counter = self.metrics.send_failures if outcome.failure else self.metrics.results_sent
            counter.labels(destination=str(destination)).inc()
        state["last_error"] = outcome.failure or None
        state["at"] = timestamp()
        # Later passes retry a failed destination, waiting longer each time.
        rounds = state["attempts"] // (self.sender.retries + 1)
        state["next_attempt_at"] = self.clock() + self._backoff(rounds)

        def update(record: dict[str, Any]) -> None:
            for stored_run in record["runs"]:
                if stored_run["run_id"] == run["run_id"]:
                    _put_delivery(stored_run, str(destination), state)

        try:
            self.spool.update_record(key, update)
        except OSError as error:
            # Attack finding: with the spool full, the record kept the delivery "pending" and the same results went
            # to the destination again every pass (42 times a minute). Held here until it can be written.
            self._unrecorded[(key, run["run_id"], str(destination))] = dict(state)
            logger.warning(
                "a delivery could not be recorded: the spool cannot be written; kept in memory until it can",
                extra={"fields": {"study_key": key, "destination": str(destination), "error": os_error_name(error)}},
            )
            return
        for item in missing:
            self.spool.log_sent(
                {
                    "at": state["at"],
                    "study_key": key,
                    "run_id": run["run_id"],
                    "destination": str(destination),
                    "modality": item["modality"],
                    "sop_class_uid": item["sop_class_uid"],
                    "sop_instance_uid": item["sop_instance_uid"],
                    "status": _attempt_status(item["file"], stored_now, declined_now),
                    "attempts": outcome.attempts,
                    "error": None if item["file"] in stored_now | declined_now else outcome.failure,
                }
            )
        logger.info(
            "results sent" if not outcome.failure else "results not sent",
            extra={"fields": {"study_key": key, "destination": str(destination), "attempts": outcome.attempts}},
        )
