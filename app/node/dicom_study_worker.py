"""The DICOM node's processing: the worker that analyses each study once it is quiet (steps 2, 3 and 5 of the flow
told in `app.node.dicom_node`), writes the outcome to the study's record, and purges what was delivered long ago.

It asks the receiving (`app.node.dicom_receiver.Receiver.studies_receiving`) which studies an association is still
sending, and leaves the results it saves in the spool, marked unsent, to the sending (`app.node.dicom_sender`).
"""

from __future__ import annotations

import logging
import threading
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
from app.node.dicom_spool import Spool, UnreadableRejectionsError, timestamp
from app.node.dicom_study_runs import (
    COUNTED_NOTES,
    SENT_WHOLE_AFTER_CUT_OFF,
    already_analysed,
    answered,
    counted_notes,
    cut_off_report_made_whole,
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
    StudyFilesChangedError,
    StudyProcessor,
    error_code,
    series_in_several_studies,
    split_by_patient_id,
)

# The node's logger: the worker's lines keep the name the node's lines have always had, which logs are filtered by.
logger = logging.getLogger("app.node.dicom_node")

PURGE_EVERY_SECONDS = 3600.0  # retention is set in hours; the walk reads every study folder
OPEN_ASSOCIATION_WAIT = 10  # quiet periods a study waits for an association that sent part of it to end
UNWRITABLE_MOST_SECONDS = 1800.0  # longest wait before a study whose results the spool could not take is tried again


class StudyWorker:
    """Processes the spool's quiet studies, one pass at a time (`process_ready`), and purges expired ones
    (`purge_expired`); the node's worker thread runs `process_and_purge`.

    It alone holds the state of the processing (the lock on writing an outcome, the studies waiting for room), apart
    from the node's other fields.
    """

    def __init__(
        self,
        config: NodeConfig,
        spool: Spool,
        processor: StudyProcessor,
        clock: Callable[[], float],
        metrics: NodeMetrics,
        stopping: threading.Event,
        studies_receiving: Callable[[], set[str]],
    ) -> None:
        """`stopping` is the node's stop: a pass starts no study once it is set. `studies_receiving` names the
        studies an open association is still sending (`Receiver.studies_receiving`)."""
        self.config = config
        self.spool = spool
        self.processor = processor
        # The model versions of every run's results, fixed at the start as the models are loaded once: a study
        # whose latest outcome other versions made is analysed again when sent again.
        self.model_tags = dict(processor.model_tags)
        self.clock = clock
        self.metrics = metrics
        self._stopping = stopping
        self._studies_receiving = studies_receiving
        # Held while an analysis's outcome is written to the spool: the node's stop (`abandon_analysis`) waits for a
        # write in progress, and an analysis it stopped waiting for (`_abandoned`) writes nothing, so the study is
        # simply still pending.
        self._writing = threading.Lock()
        self._abandoned = False
        self._last_purge = 0.0
        # Study -> analyses in a row whose results the spool could not take (a full disk), and when to try again:
        # kept in memory, since the record cannot be written either.
        self._unwritable: dict[str, tuple[int, float]] = {}

    def resume(self) -> None:
        """Keep the outcomes of analyses again: the node starts."""
        self._abandoned = False

    def abandon_analysis(self) -> None:
        """Keep no outcome from now on, once one being written is written: the node stops, and an analysis it
        stopped waiting for leaves its study pending."""
        with self._writing:
            self._abandoned = True

    def process_and_purge(self) -> None:
        """One pass of the worker thread: process the quiet studies, and purge once every `PURGE_EVERY_SECONDS`."""
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
            if self._stopping.is_set():  # the other studies wait for the restart
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
        return key not in self._studies_receiving() or quiet_for >= OPEN_ASSOCIATION_WAIT * self.config.quiet_seconds

    def _process_study(self, key: str, last_arrival: float) -> bool:
        record = self.spool.readable_record(key)  # first: a study skipped for its record costs no hashing
        if record is None:  # logged by the spool; stays pending, so a repaired record is processed
            return False
        # Without the instances an incoming rejection note rejected: their removal changes
        # the fingerprint, so the study is analysed again, and one not yet removed (a node killed) is left out too.
        try:
            files = self.spool.instances_to_analyse(key)
        except UnreadableRejectionsError:  # logged by the spool; stays pending, as for its record
            return False
        runs = record["runs"]
        if not files and not runs:
            # Rejection notes alone, for a study whose instances have not come: nothing to analyse
            # or withdraw. A record with no run lets the study's retention purge it if they never come.
            logger.info("study holds no instance yet: rejection notes kept", extra={"fields": {"study_key": key}})
            self.spool.update_record(key, lambda _: None)
            self.spool.clear_pending(key, last_arrival)
            return False
        fingerprint, bytes_fingerprint = self.spool.fingerprints(files)
        split = self.spool.studies_split_by_patient_id(key)
        sharing = [] if split else self.spool.studies_sharing_a_series(key)
        # The same instances again: nothing new to say, unless another part of the study came meanwhile and the
        # result standing for these is now wrong for the whole, or other models made it, or its report said
        # instances may be missing and they all came again since.
        if (
            already_analysed(runs, fingerprint, self.model_tags, bytes_fingerprint)
            and not (split or sharing)
            and not cut_off_report_made_whole(record)
        ):
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
            except StudyFilesChangedError:  # no failure: the files then there are analysed after the quiet period
                logger.info("study changed while it was read; analysed again", extra={"fields": {"study_key": key}})
                self.spool.touch_pending(key)
                return False
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
        analysed again, they are refused too and their results withdrawn. Why: a part that comes after the other was
        answered would leave that answer standing, an "absent" SR for the tumor-free half. A study
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
        if analysis.status == AnalysisStatus.FAILED:  # by error code, so a refused study shows its reason here
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
            # After a refusal, whose rejection note withdrew every earlier result: none may come back under its UIDs.
            after_refusal = previous.get("status") == AnalysisStatus.FAILED
            supersede_earlier_reports(analysis.datasets, reports(predecessors), withdrawn=after_refusal)
            note = self._rejection_note(key, runs, analysis.datasets)
            if note is not None:
                analysis.datasets.append(note)
        elif (
            previous is not None and analysis.status != AnalysisStatus.ANALYSED and (header := self._study_header(key))
        ):
            # Nothing is sent again: every result delivered is withdrawn. Not analysed counts as refused (otherwise,
            # every FLAIR instance rejected by an incoming rejection note, the results made of them would stand).
            note = self._rejection_note(key, runs, [header], withdrawn=True)
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

        # A study refused or not analysed has no result: what earlier runs made, for instances that are not the
        # study's now, is withdrawn where delivered (the note above) and never sent where not (otherwise a re-send
        # that cannot be analysed leaves the earlier SEG and SR standing as the study's current result).
        withdrawn = (
            dict.fromkeys(map(str, self.config.destinations)) if analysis.status != AnalysisStatus.ANALYSED else {}
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
            # A whole re-send answered by this run: a report not cut off. One cut off ran with an abort counted,
            # which took the mark off: a mark now is a whole re-send during the run, left for the next run.
            if not counts["aborted_associations"]:
                stored.pop(SENT_WHOLE_AFTER_CUT_OFF, None)

        self.spool.update_record(key, append)
        if withdrawn and not results:  # earlier results nobody got are not sent now: nothing waits
            self.spool.clear_unsent_if_all_sent(key)
        fields: dict[str, Any] = {"study_key": key, "status": analysis.status, "results": len(results)}
        if analysis.status == AnalysisStatus.FAILED and analysis.reason:
            fields["error"] = error_code(analysis.reason)  # a code, no value
        logger.info("study processed", extra={"fields": fields})

    def _study_header(self, key: str) -> Dataset | None:
        """The header of one of the study's instances, for the patient and study attributes of a rejection note made
        without a result of this run (or of an incoming rejection note, when it rejected every instance); None when
        none can be read (the note is not made, and that is logged)."""
        files = self.spool.instances_to_analyse(key) or self.spool.rejection_note_files(key)
        if files and (header := read_header(files[0])) is not None:
            return header
        logger.warning(
            "earlier results not rejected: no instance header readable", extra={"fields": {"study_key": key}}
        )
        return None

    def _rejection_note(
        self, key: str, runs: list[dict[str, Any]], datasets: list[Dataset], withdrawn: bool = False
    ) -> Dataset | None:
        """The note that rejects the SEGs and SRs a destination stored from earlier `runs` that the new results
        (`datasets`) do not send again (`app.dicom.rejection_note`): C-STORE cannot delete them at the destination
        (a revision turned negative would leave the earlier SEG as the study's only one).

        Made from the record alone, so a correction after the purge rejects what was purged. The same
        findings as the latest run (a series the models do not read arrived) send its results again, and the same
        note. None when no destination stored anything that is not sent again. `withdrawn`: no results come with it
        (the study was refused), and the note says so (`build_rejection_note`)."""
        sent_again = {str(dataset.SOPInstanceUID) for dataset in datasets}
        stale = [result for result in delivered_results(runs) if result["sop_instance_uid"] not in sent_again]
        if not stale:
            return None
        try:
            return build_rejection_note(references(stale), datasets[-1], {}, "dicom-node", withdrawn=withdrawn)
        except ServiceError as error:
            logger.warning(
                "earlier results not rejected: no rejection note made",
                extra={"fields": {"study_key": key, "error": type(error).__name__}},
            )
            return None


def _without_counts(record: dict[str, Any]) -> None:
    for name in COUNTED_NOTES:
        record.pop(name, None)


def _outcome(analysis: StudyAnalysis) -> str:
    """The `brain_tumor_node_studies_analysed` outcome: an analysed study is positive when a slice is."""
    if analysis.status == AnalysisStatus.ANALYSED:
        return "positive" if analysis.summary.get("positive_slices") else "negative"
    return str(analysis.status)
