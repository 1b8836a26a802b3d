"""`brain-tumor dicom-node`: a DICOM node (pynetdicom) that PACS and scanners send MR studies to by C-STORE.

How a study flows through it:

1. **Receive.** The node answers C-ECHO and C-STORE for MR storage classes (and the greyscale Secondary Captures the
   service reads) in the common transfer syntaxes, and takes (Success) without keeping every other object of a study
   (SEG, SR, presentation states, vendors' private objects, other modalities, colour screen saves...:
   `NOT_KEPT_CLASSES`, `InstanceNotKeptError`; these tables are in `app.node.dicom_received_instance`), so that a
   whole study forwarded by a router arrives. An MR object must say Modality MR. Only calling AE titles in
   `allowed_calling_ae_titles` may associate (when the list is set); others are rejected at association. Each
   instance is written to the spool (`app.node.dicom_spool.Spool`), flushed to disk and renamed into place *before*
   the C-STORE is answered with success, and the study is marked pending: a node killed mid-series has lost nothing
   it acknowledged, and a restarted node finds the pending studies on disk and gives each a fresh quiet period (their
   senders resume once it answers).
2. **Wait.** A study is complete once no instance of it arrived for `quiet_seconds` (scanners and routers send no
   end-of-study signal) and the associations that sent it have ended (up to `OPEN_ASSOCIATION_WAIT` quiet periods:
   an instance may still be on the wire); its quiet period starts again when the last of them ends. The pending
   marker's modification time is the last arrival, so this survives restarts. A study left by an association that
   ended without a release (aborted, cut off) says so in its report's notes.
3. **Process once.** The study's files go to the injected `StudyProcessor` (`app.study_analysis`). The set of
   instances and their content is fingerprinted: a second send of the same instances finds its fingerprint already
   analysed (by the same model versions: after a model upgrade it is analysed again, and the new results supersede
   the old as below) and produces nothing new, in whatever transfer syntax they come (`app.dicom.instance_content`; an
   instance sent again with other content under the same SOP Instance UID is analysed again); an instance that
   arrives later changes the fingerprint, so the study is processed again and the new results supersede the old
   ones (a new SEG and SR series, same series numbers 9901/9902; the new SR names the one it replaces in its
   Predecessor Documents Sequence). A study that "failed" or was "not_analysed"
   is processed once more when any of its instances is sent again (after, say, a fix to the memory budget or the
   sequence rules); only a new C-STORE does that, so it never loops. A study whose ``record.json`` cannot be read
   is skipped (logged once), and the other studies go on.
4. **Send.** The results are saved in the spool and marked unsent; one thread per destination sends them by C-STORE
   (`app.node.dicom_sender`), each retried with exponential backoff; a destination still failing is retried on later
   passes. Every attempt is appended to ``sent.jsonl`` (the record of what was sent: destination, SOP class, SOP
   Instance UID of the result, status). Each destination has its own thread so that a destination that hangs delays
   only its own deliveries, never the receiving, the processing, or the other destinations. Results still waiting
   for a destination taken out of ``DICOM_NODE_DESTINATIONS`` are dropped at start (logged, kept in the record as
   "dropped"), so they no longer keep the study from being purged; configured again before the purge, it gets them.
   The node's stop cuts a send in progress off and ends a backoff wait; results not delivered stay unsent, and go out
   after the restart (`ResultSender.stop`).
5. **Forget.** Instances and results of a study whose results were all delivered are removed after
   `SpoolLimits.retention_seconds`; its record stays until `SpoolLimits.record_retention_seconds`.

Defences against a sender that misbehaves, in what it sends and in how it holds connections, are told in
`app.node.dicom_receiver`, which receives.

Logs name studies by a hash of their Patient ID and Study Instance UID (`app.node.dicom_spool.study_key`), never by
DICOM attributes.

This module holds the node itself: `DicomNode` (the worker that processes, the sender threads), which starts the
receiving (`app.node.dicom_receiver.Receiver`: the association handlers and what each open association sent). The rest
lives beside it:

- `app.node.node_config`: `NodeConfig`, the node's settings, checked;
- `app.node.dicom_received_instance`: what the node accepts (SOP classes, transfer syntaxes, statuses) and the check
  that keeps or refuses each instance received;
- `app.node.dicom_study_runs`: the runs in a study's record that decide whether it is processed again (step 3), and the
  count of associations that ended without a release;
- `app.node.dicom_spool`, `app.node.dicom_sender`, `app.node.dicom_association`: the spool on disk, the sending of
  results, the limits on connections and PDUs;
- `app.node.node_metrics`: the node's Prometheus metrics (counted here, in the receiver and in the sender; served by
  the command line on ``DICOM_NODE_METRICS_PORT``);
- `app.node.dicom_node_command`: the command line (``brain-tumor dicom-node``), which loads the models and runs the
  node.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset

from app.backoff import doubling_wait
from app.dicom.dicom_header import read_header
from app.dicom.dicom_sr import supersede_earlier_reports
from app.dicom.rejection_note import build_rejection_note
from app.errors import ServiceError
from app.logging_config import os_error_name
from app.node.dicom_association import CONNECTIONS_PER_ASSOCIATION, TimedAssociationServer
from app.node.dicom_receiver import MAX_PDU_BYTES, Receiver
from app.node.dicom_sender import Destination, ResultDelivery, ResultSender
from app.node.dicom_spool import Spool, timestamp
from app.node.dicom_study_runs import (
    COUNTED_NOTES,
    already_analysed,
    answered,
    counted_notes,
    delivered_results,
    earlier_reports,
    errors_since_last_outcome,
    references,
    reports,
    supersede_undelivered,
)
from app.node.node_config import NodeConfig
from app.node.node_metrics import NodeMetrics
from app.study_analysis import (
    AnalysisStatus,
    StudyAnalysis,
    StudyProcessor,
    error_code,
    series_in_several_studies,
    split_by_patient_id,
)

logger = logging.getLogger(__name__)


class NodeStartError(OSError):
    """The node cannot listen where it is told to; the message names the address."""

    @classmethod
    def of(cls, host: str, port: int, error: OSError) -> NodeStartError:
        """The error for `error`, met listening on `host`:`port`."""
        return cls(f"cannot listen on {host}:{port}: {error.strerror or error}")


def check_address(host: str, port: int) -> None:
    """Bind a socket to `host`:`port` as the node's server will, and let it go: the command line asks this before
    TensorFlow and the models load (10-50 s), so that a port in use or a host that is not this machine's is said at
    once (it was after 56 s). The node binds it for good once the models are loaded.

    Raises
    ------
    NodeStartError
        The port is in use or not ours to take, or the host does not resolve or is not an address of this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as pynetdicom chooses
    try:
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server: TIME_WAIT is no obstacle
            probe.bind((host, port))
    except OSError as error:
        raise NodeStartError.of(host, port, error) from error


PURGE_EVERY_SECONDS = 3600.0  # retention is set in hours; the walk reads every study folder
OPEN_ASSOCIATION_WAIT = 10  # quiet periods a study waits for an association that sent part of it to end
UNWRITABLE_MOST_SECONDS = 1800.0  # longest wait before a study whose results the spool could not take is tried again


class DicomNode:
    """The node: a C-STORE SCP that spools, a worker that processes quiet studies, a sender that sends results.

    `process_ready`, `send_unsent` and `purge_expired` are one step each of the background threads, public so that
    tests (and a caller that wants its own loop) can drive them with their own clock.
    """

    def __init__(
        self,
        config: NodeConfig,
        processor: StudyProcessor,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        """`sleep` waits between a send's retries; by default on the stop event, so that `stop` ends the wait.
        `metrics` (by default its own) counts what the node does; the command line serves them."""
        self.config = config
        self.processor = processor
        # The model versions of every run's results, fixed at the start as the models are loaded once: a study
        # whose latest outcome other versions made is analysed again when sent again (durability review 45 F6).
        self.model_tags = dict(processor.model_tags)
        self.clock = clock
        self.spool = Spool(config.spool_dir, clock=clock, limits=config.spool_limits)
        self.metrics = metrics or NodeMetrics(str(destination) for destination in config.destinations)
        self.metrics.watch_spool(
            pending=lambda: len(self.spool.pending_studies()),
            unsent=lambda: len(self.spool.unsent_studies()),
            spool_bytes=lambda: self.spool.size_bytes,
            oldest_unsent_age=self._oldest_unsent_age,
        )
        self._stop = threading.Event()
        self.sender = ResultSender(
            config.ae_title,
            config.send_retries,
            config.send_backoff_seconds,
            sleep,
            config.send_timeout_seconds,
            stopping=self._stop,
        )
        self.receiver = Receiver(config, self.spool, self.metrics)
        self.delivery = ResultDelivery(self.spool, self.sender, config.destinations, clock, self.metrics)
        self._server: Any = None
        # Held while an analysis's outcome is written to the spool: `stop` waits for a write in progress, and an
        # analysis it stopped waiting for (`_abandoned`) writes nothing, so the study is simply still pending.
        self._writing = threading.Lock()
        self._abandoned = False
        self._threads: list[threading.Thread] = []
        self._last_purge = 0.0
        # Study -> analyses in a row whose results the spool could not take (a full disk), and when to try again:
        # kept in memory, since the record cannot be written either.
        self._unwritable: dict[str, tuple[int, float]] = {}

    def start(self, worker: bool = True) -> None:
        """Listen (in pynetdicom's threads) and, with `worker`, process and send in background threads."""
        self._stop.clear()
        self._abandoned = False
        self.receiver.count_cut_off_associations()
        for folder in self.spool.remove_unrecorded_results():
            logger.info(
                "results that no run recorded removed (the node stopped before it recorded them)",
                extra={"fields": {"study_key": folder.parent.parent.name, "run_id": folder.name}},
            )
        for key in self.spool.pending_studies():
            # Studies left pending by the last run: their senders were cut off by the stop and retry once the node
            # answers again, so each gets a fresh quiet period rather than being processed half-received.
            self.spool.touch_pending(key)
        self.delivery.restore_unsent_markers()
        ae = self.receiver.application_entity()
        room_problem = self.spool.room_problem()
        if room_problem is not None:
            logger.warning(room_problem)
        if not self.config.destinations:
            logger.warning(
                "the DICOM node has no destination (DICOM_NODE_DESTINATIONS unset): results stay in the spool"
            )
        ae.require_called_aet = True  # refuse associations addressed to another AE title
        try:
            self._server = ae.make_server(
                (self.config.host, self.config.port),
                evt_handlers=self.receiver.handlers(),
                server_class=TimedAssociationServer,
                receive_timeout=self.config.association_timeout_seconds,
                max_pdu_bytes=MAX_PDU_BYTES,
                max_per_peer=self.config.max_associations_per_peer,
                max_connections=CONNECTIONS_PER_ASSOCIATION * self.config.max_associations,
            )
        except OSError as error:  # an unknown host name, an address of another machine, a port in use
            raise NodeStartError.of(self.config.host, self.config.port, error) from error
        threading.Thread(target=self._server.serve_forever, name="dicom-node-server", daemon=True).start()
        logger.info(
            "DICOM node listening",
            extra={"fields": {"host": self.config.host, "port": self.config.port, "ae_title": self.config.ae_title}},
        )
        if worker:
            self._threads = [
                threading.Thread(target=self._loop, args=(step,), name=f"dicom-node-{name}", daemon=True)
                for name, step in self._background_steps()
            ]
            for thread in self._threads:
                thread.start()

    def _background_steps(self) -> list[tuple[str, Callable[[], object]]]:
        """The worker (process, purge), and one sender per destination: a destination that hangs until the send
        timeout, or backs off between retries, holds up no other destination's deliveries."""
        senders = [
            (f"sender-{index}", functools.partial(self.send_unsent, (destination,)))
            for index, destination in enumerate(self.config.destinations)
        ]
        return [("worker", self._process_and_purge), *senders]

    def stop(self) -> None:
        """Stop within `NodeConfig.stop_seconds`, losing nothing: no study or send starts, sends in progress are cut
        off (their results stay pending in the spool), and an analysis in progress is waited for until then, after
        which it is abandoned (the study stays pending, and is analysed once after the restart). SIGTERM had taken
        8 s idle, 28 s during an analysis, 67 s with a destination that never answered (operations review 28,
        finding 9)."""
        self.sender.stop()  # sets `_stop`, which the background threads and the sends watch
        deadline = time.monotonic() + self.config.stop_seconds
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._writing:  # an outcome being written is finished; none is written from now on
            self._abandoned = True
        self._threads = []
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def studies_receiving(self) -> set[str]:
        """The studies an open association has stored instances of: not processed yet (`_quiet`)."""
        return self.receiver.studies_receiving()

    # -- processing ------------------------------------------------------------------------------------------

    def _loop(self, step: Callable[[], object]) -> None:
        while not self._stop.wait(self.config.poll_seconds):
            try:
                step()
            except Exception:  # a bug must not stop the node receiving; logged with its traceback
                logger.exception("DICOM node pass failed")

    def _process_and_purge(self) -> None:
        self.process_ready()
        if self.clock() - self._last_purge >= PURGE_EVERY_SECONDS:
            self._last_purge = self.clock()
            self.purge_expired()

    def purge_expired(self) -> list[str]:
        """Remove instances and results of studies delivered `retention_seconds` ago; return their keys."""
        purged = self.spool.purge_expired(self.clock())
        if purged:
            logger.info("expired studies removed from the spool", extra={"fields": {"studies": len(purged)}})
        return purged

    def process_ready(self) -> list[str]:
        """Process every study quiet for `quiet_seconds`; return the keys of the studies processed anew.

        One study's problem (an unreadable record, an instance file gone) skips that study only: the others are
        processed in the same pass.
        """
        processed: list[str] = []
        for key, _ in sorted(self.spool.pending_studies().items(), key=lambda item: item[1]):
            if self._stop.is_set():  # the other studies wait for the restart
                break
            # Asked again for each study: processing the one before may have taken minutes, and new instances and
            # associations came meanwhile.
            last_arrival = self.spool.pending_since(key)
            if last_arrival is None or not self._quiet(key, last_arrival) or self._waits_for_room(key):
                continue
            try:
                if self._process_study(key, last_arrival):
                    processed.append(key)
            except Exception:  # a bug or a broken spool file: retried after another quiet period, not every pass
                logger.exception("study not processed", extra={"fields": {"study_key": key}})
                self.spool.touch_pending(key)
        self.metrics.last_pass.set(self.clock())
        return processed

    def _quiet(self, key: str, last_arrival: float) -> bool:
        """Whether a study is ready: no instance for `quiet_seconds`, and no association that sent part of it still
        open (an instance of it may be on the wire), unless one has held it `OPEN_ASSOCIATION_WAIT` quiet periods
        (a router that never releases)."""
        quiet_for = self.clock() - last_arrival
        if quiet_for < self.config.quiet_seconds:
            return False
        return key not in self.studies_receiving() or quiet_for >= OPEN_ASSOCIATION_WAIT * self.config.quiet_seconds

    def _process_study(self, key: str, last_arrival: float) -> bool:
        record = self.spool.readable_record(key)  # first: a study skipped for its record costs no hashing
        if record is None:  # logged by the spool; stays pending, so a repaired record is processed
            return False
        files = self.spool.instance_files(key)
        fingerprint, bytes_fingerprint = self.spool.fingerprints(files)
        runs = record["runs"]
        split = self.spool.studies_split_by_patient_id(key)
        sharing = [] if split else self.spool.studies_sharing_a_series(key)
        # The same instances again: nothing new to say, unless another part of the study came meanwhile and the
        # result standing for these is now wrong for the whole (attack review 43 F5), or other models made it.
        if already_analysed(runs, fingerprint, self.model_tags, bytes_fingerprint) and not (split or sharing):
            logger.info("study unchanged since last processed", extra={"fields": {"study_key": key}})
            if any(record.get(name) for name in COUNTED_NOTES):  # brought nothing new: no note for a later run
                self.spool.update_record(key, _without_counts)
            self.spool.clear_pending(key, last_arrival)
            return False
        attempts = errors_since_last_outcome(runs, fingerprint)
        run: dict[str, Any] = {
            "run_id": datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8],
            "fingerprint": fingerprint,
            "instances": len(files),
            "models": self.model_tags,
            "started_at": timestamp(),
        }
        counts = {name: int(record.get(name, 0)) for name in COUNTED_NOTES}
        analysis: StudyAnalysis | Exception
        if split or sharing:
            refuse = split_by_patient_id if split else series_in_several_studies
            analysis = refuse(len(split or sharing) + 1, {"files": len(files)})
            self._reopen_answered(split or sharing)
        else:
            try:
                analysis = self.processor(files, counted_notes(counts), complete=not any(counts.values()))
            except Exception as error:  # a bug or a resource problem: retried after another quiet period
                logger.exception("study processing failed", extra={"fields": {"study_key": key}})
                analysis = error
        with self._writing:
            if self._abandoned:  # the stop did not wait for this analysis: nothing of it is kept
                logger.info(
                    "analysis abandoned by the stop; done after the restart", extra={"fields": {"study_key": key}}
                )
                return False
            return self._keep_outcome(key, record, run, analysis, counts, attempts, last_arrival)

    def _reopen_answered(self, keys: list[str]) -> None:
        """Mark pending the studies of `keys` (other parts of a study found split) whose latest outcome is a result:
        analysed again, they are refused too and their results withdrawn. Why: a part that came after the other was
        answered left that answer standing, an "absent" SR for the tumor-free half (attack review 43 F5). A study
        already refused is not marked again, so two parts do not reopen each other without end."""
        for key in keys:
            record = self.spool.readable_record(key)
            if record is not None and answered(record["runs"]) and self.spool.pending_since(key) is None:
                self.spool.touch_pending(key)

    def _keep_outcome(
        self,
        key: str,
        record: dict[str, Any],
        run: dict[str, Any],
        analysis: StudyAnalysis | Exception,
        counts: dict[str, int],
        attempts: int,
        last_arrival: float,
    ) -> bool:
        """Write an analysis's outcome (or its error) to the spool; True if it has results."""
        if isinstance(analysis, Exception):
            self.metrics.studies_analysed.labels(outcome="failed").inc()
            self.metrics.studies_failed.labels(error="internal").inc()
            run.update(status="error", error=type(analysis).__name__, finished_at=timestamp())
            self.spool.update_record(key, lambda stored: stored["runs"].append(run))
            if attempts + 1 < self.config.max_attempts:
                self.spool.touch_pending(key)
            else:
                self.spool.clear_pending(key, last_arrival)
            return False
        try:
            self._record_analysis(key, record, run, analysis, counts)
        except OSError as error:
            self._results_not_written(key, run, error)
            return False
        self._unwritable.pop(key, None)
        self.metrics.studies_analysed.labels(outcome=_outcome(analysis)).inc()
        if analysis.status == AnalysisStatus.FAILED:  # interop review 39: a refused study showed no reason here
            self.metrics.studies_failed.labels(error=error_code(analysis.reason) or "unknown").inc()
        self.spool.clear_pending(key, last_arrival)
        return True

    def _waits_for_room(self, key: str) -> bool:
        _, until = self._unwritable.get(key, (0, 0.0))
        return until > self.clock()

    def _results_not_written(self, key: str, run: dict[str, Any], error: OSError) -> None:
        """The spool could not take a run's results or its record (a full disk, a read-only remount): nothing of the
        run is kept, and the study is analysed again after a wait that doubles (attack finding: it was analysed
        again every quiet period, each time leaving an empty results folder)."""
        self.spool.discard_results(key, run["run_id"])
        failures = self._unwritable.get(key, (0, 0.0))[0] + 1
        wait = doubling_wait(self.config.quiet_seconds, failures, most_seconds=UNWRITABLE_MOST_SECONDS)
        self._unwritable[key] = (failures, self.clock() + wait)
        logger.warning(
            "the study's results could not be written to the spool; it is analysed again after a wait",
            extra={"fields": {"study_key": key, "error": os_error_name(error), "retry_in_seconds": round(wait)}},
        )
        self.spool.touch_pending(key)

    def _record_analysis(
        self, key: str, record: dict[str, Any], run: dict[str, Any], analysis: StudyAnalysis, counts: dict[str, int]
    ) -> None:
        # The record as it is now, not as it was when the analysis began: results of an earlier run that reached a
        # destination meanwhile are what this run's report and rejection note must name (they were missed: the
        # destination kept them current).
        runs = (self.spool.readable_record(key) or record)["runs"]
        previous = next((item for item in reversed(runs) if item.get("results")), None)
        built_report_uid = str(analysis.datasets[-1].SOPInstanceUID) if analysis.datasets else None
        predecessors: list[dict[str, str]] = []
        if previous is not None and analysis.datasets:  # the report names the one it replaces; new UIDs for all
            predecessors = earlier_reports(runs, previous, built_report_uid)
            supersede_earlier_reports(analysis.datasets, reports(predecessors))
            note = self._rejection_note(key, runs, analysis.datasets)
            if note is not None:
                analysis.datasets.append(note)
        elif previous is not None and analysis.status == AnalysisStatus.FAILED and (header := self._study_header(key)):
            note = self._rejection_note(key, runs, [header])  # nothing is sent again: every result delivered
            if note is not None:
                analysis.datasets.append(note)
        results = self.spool.save_results(key, run["run_id"], analysis.datasets)
        run.update(
            status=analysis.status,
            reason=analysis.reason,
            summary=analysis.summary,
            results=[
                {
                    "file": path.name,
                    "modality": str(dataset.Modality),
                    "sop_class_uid": str(dataset.SOPClassUID),
                    "series_instance_uid": str(dataset.SeriesInstanceUID),
                    "sop_instance_uid": str(dataset.SOPInstanceUID),
                }
                for path, dataset in zip(results, analysis.datasets, strict=True)
            ],
            supersedes=previous["run_id"] if previous is not None and results else None,
            built_report_uid=built_report_uid,
            predecessors=predecessors,
            sent={str(destination): {"status": "pending", "attempts": 0} for destination in self.config.destinations}
            if results
            else {},
            finished_at=timestamp(),
        )

        # A refused study has no result: what earlier runs made, for instances that are not the study's now, is
        # withdrawn where delivered (the note above) and never sent where not (interop review 44 F2: a re-send that
        # could not be analysed left the earlier SEG and SR standing as the study's current result).
        withdrawn = (
            dict.fromkeys(map(str, self.config.destinations)) if analysis.status == AnalysisStatus.FAILED else {}
        )

        def append(stored: dict[str, Any]) -> None:
            if run["sent"]:  # marked before the record is written: a node stopped in between still sends them
                self.spool.mark_unsent(key)
            supersede_undelivered(stored["runs"], run["sent"] or withdrawn)
            stored["runs"].append(run)
            # Said in this run's notes; what was counted while it ran is left for the next run.
            for name, count in counts.items():
                left = int(stored.pop(name, 0)) - count
                if left > 0:
                    stored[name] = left

        self.spool.update_record(key, append)
        if withdrawn and not results:  # earlier results nobody got are not sent now: nothing waits
            self.spool.clear_unsent_if_all_sent(key)
        fields: dict[str, Any] = {"study_key": key, "status": analysis.status, "results": len(results)}
        if analysis.status == AnalysisStatus.FAILED and analysis.reason:
            fields["error"] = error_code(analysis.reason)  # a code, no value (interop review 39: none was logged)
        logger.info("study processed", extra={"fields": fields})

    def _study_header(self, key: str) -> Dataset | None:
        """The header of one of the study's instances, for the patient and study attributes of a rejection note made
        without a result of this run; None when none can be read (the note is not made, and that is logged)."""
        files = self.spool.instance_files(key)
        if files and (header := read_header(files[0])) is not None:
            return header
        logger.warning(
            "earlier results not rejected: no instance header readable", extra={"fields": {"study_key": key}}
        )
        return None

    def _rejection_note(self, key: str, runs: list[dict[str, Any]], datasets: list[Dataset]) -> Dataset | None:
        """The note that rejects the SEGs and SRs a destination stored from earlier `runs` that the new results
        (`datasets`) do not send again (`app.dicom.rejection_note`): C-STORE cannot delete them at the destination
        (interop review 37: a revision turned negative left the earlier SEG as the study's only one).

        Made from the record alone, so a correction after the purge rejects what was purged (review 38). The same
        findings as the latest run (a series the models do not read arrived) send its results again, and the same
        note. None when no destination stored anything that is not sent again."""
        sent_again = {str(dataset.SOPInstanceUID) for dataset in datasets}
        stale = [result for result in delivered_results(runs) if result["sop_instance_uid"] not in sent_again]
        if not stale:
            return None
        try:
            return build_rejection_note(references(stale), datasets[-1], {}, "dicom-node")
        except ServiceError as error:
            logger.warning(
                "earlier results not rejected: no rejection note made",
                extra={"fields": {"study_key": key, "error": type(error).__name__}},
            )
            return None

    # -- sending ---------------------------------------------------------------------------------------------

    def _oldest_unsent_age(self) -> float:
        """Seconds since the results waiting longest for a destination were made; 0 when none wait."""
        since = self.spool.oldest_unsent_since()
        return 0.0 if since is None else max(0.0, self.clock() - since)

    def send_unsent(self, destinations: tuple[Destination, ...] | None = None) -> int:
        """Send each of `destinations` (default: all, one after the other) what it still lacks, once its backoff
        has passed; return runs tried. The sender threads call it for one destination each."""
        return self.delivery.send_unsent(destinations)


def _without_counts(record: dict[str, Any]) -> None:
    for name in COUNTED_NOTES:
        record.pop(name, None)


def _outcome(analysis: StudyAnalysis) -> str:
    """The `brain_tumor_node_studies_analysed` outcome: an analysed study is positive when a slice is."""
    if analysis.status == AnalysisStatus.ANALYSED:
        return "positive" if analysis.summary.get("positive_slices") else "negative"
    return str(analysis.status)
