"""One Orthanc study through pacs-sync: choose its series, run the study processor, store the results, record it.

The unit is the study, as for the DICOM node: the FLAIR series (and the pre- and post-contrast T1 series when they
pair) are chosen by `app.series.sequence_roles` from one header per MR series, and only those are fetched and run
through `app.study_analysis.ModelStudyProcessor` (the one prediction flow). A study without FLAIR is recorded as
not analysed, with the reason, and nothing is segmented.

The files are fetched by `app.pacs.study_files`; what a record holds, and how it is read back, is
`app.pacs.pacs_sync_records`.

Each study's record (Orthanc metadata `SYNC_METADATA` on the study) holds two fingerprints: of every MR instance in
the study, and of the instances of the series used. A study is processed again when the first changes and the
selection then reads different instances (an instance added or deleted, a FLAIR series arriving late), or when its
result was made by other model versions than those running now (kept in the record as ``models``; a record without
them counts as made by the current ones); otherwise it is already done.

Results, and what supersedes what:

- analysed: the SEG (when a slice is positive; for slices without a Frame of Reference one per positive slice, in
  one series) and the volume report (SR, also for a negative study) are stored with STOW-RS, with StationName
  `app.pacs.orthanc_client.SYNC_STATION_NAME`. Their UIDs come from what they were made of (`app.dicom.result_uids`,
  origin "pacs-sync"): other instances or models make new objects, in new series with the same Series Numbers
  (`app.dicom.dicom_seg.SEG_SERIES_NUMBER` 9901 for the SEG, `app.dicom.dicom_sr.SR_SERIES_NUMBER` 9902 for the SR); the
  same ones processed again (after a crash before the record was written) make the same objects, which Orthanc already
  holds and keeps once;
- once the new ones are stored, every earlier SEG or SR series pacs-sync stored in the study (Manufacturer
  `app.dicom.dicom_seg.MANUFACTURER` and that StationName, or named by the study's record: see
  `app.pacs.orthanc_client.stored_by_sync`) is **deleted** from Orthanc, so a viewer never shows two answers; the record
  lists the Series Instance UIDs it superseded. The DICOM node's results, delivered to the same Orthanc, carry the
  same Manufacturer but not the StationName: they are left alone. "The study" is the one Orthanc study (Patient
  ID + Study Instance UID), never every study with its UID: another patient's results are never touched. A crash
  between storing and deleting leaves both, and the next processing deletes the older. A study that is no longer
  analysed (its FLAIR deleted) loses its earlier results the same way;
- failed (nothing readable, a series that is not a volume, Orthanc errors): recorded with the error and the attempt
  count, and tried again (`app.pacs.pacs_sync` schedules it; see `PacsSyncConfig.max_attempts`). So is a study without
  FLAIR among the series read when some were left out for size (first file over
  `PacsSyncConfig.max_instance_bytes`, PACS_MAX_INSTANCE_BYTES): the FLAIR may be one of them. Its record names the
  limit, and a changed limit starts its attempts afresh. An analysed study with series left out keeps its results;
  its record counts them (``series_left_out_for_size``) and its SR says so.

Instances that an IHE IOCM rejection note in the study's KO series rejects (`app.dicom.incoming_rejection`) are
left out of the analysis, and a new or changed KO series changes the study's fingerprint, so the study is analysed
again without them. A KOS that is, or may be, a rejection note and cannot be read fails the study
(`app.errors.UnreadableRejectionNoteError`): which images it withdraws is unknown.

A record that is not this module's (not JSON, or fields of other types: `readable_record`) is processed again and
overwritten.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from pydicom.dataset import Dataset

from app.backoff import doubling_wait
from app.dicom.dicom_header import UNREADABLE_HEADER
from app.dicom.dicom_sr import ResultReference, supersede_earlier_reports
from app.errors import ErrorKind
from app.pacs.orthanc_client import SYNC_STATION_NAME, OrthancClient
from app.pacs.orthanc_errors import OrthancError
from app.pacs.pacs_sync_records import (
    DONE_STATUSES,
    FAILED,
    NEGATIVE,
    NOT_ANALYSED,
    POSITIVE,
    content_fingerprint,
    orthanc_series_fingerprint,
    readable_record,
    recorded_report,
    recorded_results,
    rejections_digest,
    reports_to_supersede,
    result_record_fields,
)
from app.pacs.pacs_sync_state import SyncState
from app.pacs.study_files import StudyFileFetcher, StudyTooLargeError, first_files, rejected_instances, series_files
from app.release import service_version
from app.series.info import identity_text
from app.series.sequence_roles import StudySelection
from app.study_analysis import (
    AnalysisStatus,
    StudyAnalysis,
    error_code,
    series_in_several_studies,
    split_by_patient_id,
)

logger = logging.getLogger(__name__)

ALREADY_DONE = "already_done"
GAVE_UP = "gave_up"


class MisplacedResultsError(RuntimeError):
    """The SEG or SR stored for a study landed in another Orthanc study (or nowhere)."""


class SourcesGoneError(RuntimeError):
    """Series the results describe were deleted from Orthanc while the study was analysed; the results were
    withdrawn."""


MAX_MR_SERIES = 500
"""MR series of one study pacs-sync chooses among (a real study has 5 to 50): each costs a file fetched and parsed
before any budget applies (attack: 5,000 one-instance series took 38 s and +248 MiB a pass)."""


class UnreadableStudyError(RuntimeError):
    """No MR series of a study has a file whose DICOM header can be read: failed and retried ("nothing readable",
    above), not "no FLAIR", for an Orthanc that answers an error page in place of the files may answer them later.
    One unreadable file among readable ones is counted and skipped, as at the DICOM node."""


class StudyAnalyser(Protocol):
    """What pacs-sync needs of `app.study_analysis.ModelStudyProcessor`."""

    @property
    def model_tags(self) -> Mapping[str, str]:
        """The versions of the models the results are made with, kept in the study's record."""
        ...

    def select(self, headers: Iterable[Dataset]) -> StudySelection: ...

    def analyse(
        self,
        selection: StudySelection,
        files_by_series: Mapping[str, Sequence[bytes]],
        files: int,
        file_errors: dict[str, int] | None = None,
    ) -> StudyAnalysis: ...


class StudySync:
    """Processes Orthanc studies with one `StudyAnalyser`; the retry schedule goes into a `SyncState`."""

    def __init__(self, client: OrthancClient, analyser: StudyAnalyser, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.analyser = analyser
        self.clock = clock
        self.failures: Counter[str] = Counter()
        """Error codes of the studies that failed since `take_failures` (internal: looking at or analysing one
        raised)."""
        self._given_up_unrecorded: set[str] = set()  # given up, but Orthanc refused the record that says so

    def take_failures(self) -> Counter[str]:
        """The failures counted since the last call, by error code for the metrics (not only outcome="failed")."""
        failures, self.failures = self.failures, Counter()
        return failures

    def process(
        self, study_id: str, state: SyncState, retry: bool = False, study: dict[str, Any] | None = None
    ) -> str | None:
        """Process a study if its instances or its record call for it; return the outcome (None: study deleted).

        `retry` is True when the retry schedule (not a change) brings the study: a failed study is then tried
        again while it has attempts left, and otherwise only checked for changed instances. `study` is Orthanc's
        answer for it, when the caller has just read it (pacs-sync's stability check): not asked for again. Nothing
        about one study (Orthanc errors, a record or an answer of the wrong shape, a bug) raises: it is logged, and
        retried.
        """
        try:
            looked_at = self._look_at(study_id, study)
        except Exception as error:  # Orthanc down or answering nonsense: no record to trust, the schedule retries
            state.retries[study_id] = self._next_attempt(1)
            self.failures["internal"] += 1
            _log_not_processed(study_id, error, attempts=None)
            return FAILED
        if looked_at is None:
            state.retries.pop(study_id, None)
            return None
        record, mr_series, ko_series = looked_at
        # A new or changed KO series (an incoming rejection note) changes it too.
        study_fingerprint = orthanc_series_fingerprint([*mr_series, *ko_series])
        unrecorded = state.unrecorded_failures.get(study_id)
        if unrecorded is not None and unrecorded[0] == study_fingerprint and "status" not in record:
            # Failures Orthanc did not let us record: counted in the state, as a record would count them.
            record = {"status": FAILED, "attempts": unrecorded[1], "study_fingerprint": study_fingerprint}
        status = record.get("status")
        attempts = record["attempts"] if status == FAILED else 0
        instance_limit = self.client.config.max_instance_bytes
        # A failure for series over the instance limit names that limit: once it is changed, the study starts afresh
        # (a record written before the limit had its own setting names it "max_answer_bytes").
        recorded_limit = record.get("max_instance_bytes", record.get("max_answer_bytes", instance_limit))
        limit_changed = status == FAILED and recorded_limit != instance_limit
        if record.get("study_fingerprint") == study_fingerprint and not limit_changed:
            if self._done(record):
                state.retries.pop(study_id, None)
                return ALREADY_DONE
            if status == FAILED and not retry:
                state.retries.setdefault(study_id, self._next_attempt(attempts))
                return ALREADY_DONE
            if status == FAILED and attempts >= self.client.config.max_attempts:
                state.retries[study_id] = self._next_attempt(attempts)  # watched for changed instances
                return self._given_up(study_id, record)
        else:
            attempts = 0  # the instances or the instance limit changed: a fresh start
            self._given_up_unrecorded.discard(study_id)
        try:
            outcome = self._analyse(study_id, record, mr_series, ko_series, study_fingerprint, attempts, state)
            state.unrecorded_failures.pop(study_id, None)  # its record is written now
            return outcome
        except Exception as error:  # Orthanc errors and bugs alike: recorded, retried, and the next study goes on
            return self._record_error(study_id, error, attempts + 1, study_fingerprint, state)

    def _given_up(self, study_id: str, record: dict[str, Any]) -> str:
        """`GAVE_UP` the first time a study that failed `PacsSyncConfig.max_attempts` times is looked at again (its
        record marked ``given_up``), `ALREADY_DONE` after: it is watched for changed instances at every backoff, and
        each look counted as giving up again would keep an alert on the rise of `gave_up` firing for months."""
        if record.get("given_up") is True or study_id in self._given_up_unrecorded:
            return ALREADY_DONE
        try:
            self.client.write_sync_record(study_id, record | {"given_up": True})
        except Exception as error:  # Orthanc refusing the record: remembered here instead, until a restart
            self._given_up_unrecorded.add(study_id)
            logger.warning(
                "study given up, not recorded in Orthanc",
                extra={"fields": {"orthanc_study": study_id, "error": _error_text(error)}},
            )
        return GAVE_UP

    def _done(self, record: dict[str, Any]) -> bool:
        """Whether the study's recorded outcome stands while its instances are the same: an outcome made by the
        models that run now. One of other model versions does not: the study changed or stored again after a model
        upgrade is analysed again, the new results superseding the old (otherwise only altering the instances would
        bring new results). A record written before records kept their models counts as
        made by the current ones, so an upgrade re-analyses nothing by itself."""
        if record.get("status") not in DONE_STATUSES:
            return False
        models = dict(self.analyser.model_tags)
        return record.get("models", models) == models

    def _record_error(
        self, study_id: str, error: Exception, attempts: int, study_fingerprint: str, state: SyncState
    ) -> str:
        """Record an analysis that raised (its `attempts`-th) and schedule the next; when Orthanc will not take the
        record either, the state counts the failure in its place."""
        state.retries[study_id] = self._next_attempt(attempts)
        self.failures["internal"] += 1
        _log_not_processed(study_id, error, attempts)
        # A library's message may quote a file's values (a Patient ID in the record): only its type is kept.
        text = f"{type(error).__name__}: {error}" if _own_error(error) else type(error).__name__
        failed = self._record(FAILED, study_fingerprint, attempts=attempts, error=text)
        try:
            self.client.write_sync_record(study_id, failed)
            state.unrecorded_failures.pop(study_id, None)
        except Exception as record_error:  # Orthanc still unreachable: the state's schedule retries it all the same
            state.unrecorded_failures[study_id] = [study_fingerprint, attempts]
            logger.warning(
                "failure not recorded in Orthanc",
                extra={"fields": {"orthanc_study": study_id, "error": _error_text(record_error)}},
            )
        return FAILED

    def _look_at(
        self, study_id: str, study: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]] | None:
        """The study's record (`readable_record`), its MR series and its KO series (key object selections: the
        rejection notes among them, `rejected_instances`), each with instances; None once it is deleted, and for a
        study of KO series without MR series: a KO series matters only beside MR series (the node's own withdrawal
        note, stored alone, would be recorded "not analysed: no FLAIR series"). Orthanc is asked whether
        the study exists unless `study` is its answer already."""
        if study is None and self.client.study(study_id) is None:
            return None
        record = readable_record(self.client.sync_record(study_id))
        by_modality: dict[str, list[dict[str, Any]]] = {"MR": [], "KO": []}
        for series in self.client.study_series(study_id):
            modality = series["MainDicomTags"].get("Modality")
            if modality in by_modality and series["Instances"]:
                by_modality[modality].append(series)
        if by_modality["KO"] and not by_modality["MR"]:
            return None  # a study that holds no MR series at all is still recorded "not analysed", as before
        return record, by_modality["MR"], by_modality["KO"]

    def _analyse(
        self,
        study_id: str,
        record: dict[str, Any],
        mr_series: list[dict[str, Any]],
        ko_series: list[dict[str, Any]],
        study_fingerprint: str,
        attempts: int,
        state: SyncState,
    ) -> str | None:
        """Choose the series from one file of each, analyse them unless the result stands for what the study holds,
        then store and record the results (`_store_and_record`). Returns the study's status, or None when the study
        was deleted meanwhile (its results withdrawn)."""
        if len(mr_series) > MAX_MR_SERIES:
            raise StudyTooLargeError(
                f"the study holds {len(mr_series)} MR series; at most {MAX_MR_SERIES} are looked at (one file of each "
                "is read to choose among them)"
            )
        fetch = StudyFileFetcher(self.client)
        fetch.rejected = rejected_instances(ko_series, fetch)
        first, too_large = first_files(study_id, mr_series, fetch)
        if not first and fetch.unreadable:
            raise UnreadableStudyError(
                f"no MR series has a file whose DICOM header can be read ({fetch.unreadable} files tried)"
            )
        mr_series = [series for series in mr_series if str(series["ID"]) not in too_large]
        headers = [file.header for file in first.values()]
        if headers and (split := self._split_study(study_id, headers)):
            refusal, others = split
            self._refuse_answered_parts(others, refusal, state)
            fields = {"study_fingerprint": study_fingerprint}
            return self._record_failure(study_id, record, refusal, attempts + 1, state, fields)
        selection = self.analyser.select(headers)
        left_out_note = _left_out_note(len(too_large), self.client.config.max_instance_bytes) if too_large else ""
        if left_out_note and selection.analysed:  # the SR says so too: a PACS user sees the volume is of what was read
            selection = replace(selection, notes=(*selection.notes, left_out_note))
        by_uid = {str(series["MainDicomTags"].get("SeriesInstanceUID", "")): series for series in mr_series}
        used = [by_uid[uid] for uid in selection.channel_series if uid in by_uid]
        input_fingerprint = orthanc_series_fingerprint(used) + rejections_digest(fetch.rejected)
        if self._done(record) and record.get("input_fingerprint") == input_fingerprint:
            # e.g. a series the selection does not use changed
            return self._result_stands(study_id, record, {"study_fingerprint": study_fingerprint}, state)
        files_by_series = {
            str(series["MainDicomTags"]["SeriesInstanceUID"]): series_files(series, first[str(series["ID"])], fetch)
            for series in used
        }
        content = content_fingerprint(files_by_series, too_large, self.client.config.max_study_bytes)
        if self._done(record) and record.get("content_fingerprint") == content:
            # The same instances stored again (Orthanc's OverwriteInstances moves LastUpdate): the result stands, as
            # at the DICOM node (not analysed again, which would store the same UIDs with new times).
            fields = {"study_fingerprint": study_fingerprint, "input_fingerprint": input_fingerprint}
            return self._result_stands(study_id, record, fields, state)
        analysis = self.analyser.analyse(
            selection,
            files_by_series,
            # Only what was analysed: the rejected files beside, as `instances_rejected`.
            files=sum(len(series["Instances"]) for series in mr_series) - fetch.left_out_rejected,
            file_errors={UNREADABLE_HEADER: fetch.unreadable} if fetch.unreadable else None,
        )
        fields = {
            "study_fingerprint": study_fingerprint,
            "input_fingerprint": input_fingerprint,
            "content_fingerprint": content,
            "models": dict(self.analyser.model_tags),
        }
        if fetch.left_out_rejected:
            fields["instances_rejected"] = fetch.left_out_rejected
        if too_large:
            fields.update(
                series_left_out_for_size=len(too_large),
                orthanc_series_left_out_for_size=too_large,
                max_instance_bytes=self.client.config.max_instance_bytes,
            )
        if analysis.status == AnalysisStatus.NOT_ANALYSED and too_large:
            # Not "no FLAIR": the FLAIR may be a series left out, which a raised limit (or a retry) would read.
            read = f"of the {len(mr_series)} series read: {analysis.reason}" if mr_series else "no other MR series"
            reason = f"{ErrorKind.TOO_LARGE.value}: {left_out_note}; {read}"  # a code, for the log and the metric
            analysis = StudyAnalysis(AnalysisStatus.FAILED, reason=reason, summary=analysis.summary)
        if analysis.status == AnalysisStatus.FAILED:
            return self._record_failure(study_id, record, analysis, attempts + 1, state, fields)
        return self._store_and_record(study_id, record, analysis, {str(series["ID"]) for series in used}, fields, state)

    def _store_and_record(
        self,
        study_id: str,
        record: dict[str, Any],
        analysis: StudyAnalysis,
        sources: set[str],
        fields: dict[str, Any],
        state: SyncState,
    ) -> str | None:
        """Store an analysis's SEG and SR in Orthanc (superseding the earlier results) and the study's record; the
        study's status, or None when it was deleted during the analysis. `sources`: the Orthanc IDs of the series
        analysed."""
        built_report_uid = str(analysis.datasets[-1].SOPInstanceUID) if analysis.datasets else None
        earlier, withdrawn = reports_to_supersede(record, analysis.datasets[-1]) if analysis.datasets else ([], False)
        try:
            superseded = self._store_results(study_id, analysis.datasets, (earlier, withdrawn), record, sources)
        except SourcesGoneError:
            if self.client.study(study_id) is not None:
                raise  # a series went: recorded as a failure, and the study's new instances analysed afresh
            logger.info(
                "study deleted during its analysis: results withdrawn", extra={"fields": {"orthanc_study": study_id}}
            )
            state.retries.pop(study_id, None)
            return None
        if analysis.status == AnalysisStatus.NOT_ANALYSED:
            status = NOT_ANALYSED
            fields["reason"] = analysis.reason
        else:
            status = POSITIVE if analysis.summary.get("positive_slices") else NEGATIVE
            fields.update(result_record_fields(analysis.datasets, built_report_uid, withdrawn))
        result = self._record(status, summary=analysis.summary, superseded=superseded, **fields)
        self.client.write_sync_record(study_id, result)
        state.retries.pop(study_id, None)
        logger.info(
            "study processed",
            extra={"fields": {"orthanc_study": study_id, "status": status, "superseded": len(superseded)}},
        )
        return status

    def _result_stands(self, study_id: str, record: dict[str, Any], fields: dict[str, Any], state: SyncState) -> str:
        """`ALREADY_DONE`: the study's result stands for what it now holds; its record keeps the new fingerprints (so
        the next look is cheaper), and its retries end."""
        self.client.write_sync_record(study_id, record | fields)
        state.retries.pop(study_id, None)
        return ALREADY_DONE

    def _split_study(self, study_id: str, headers: list[Dataset]) -> tuple[StudyAnalysis, set[str]] | None:
        """The refusal of a study held in several Orthanc studies (`_split_by_patient_id`, `_shared_series`) and the
        Orthanc IDs of its other parts; None when it is whole."""
        if others := self._split_by_patient_id(study_id, headers[0]):
            return split_by_patient_id(len(others) + 1, {}), others
        if others := self._shared_series(study_id, headers):
            return series_in_several_studies(len(others) + 1, {}), others
        return None

    def _refuse_answered_parts(self, study_ids: set[str], refusal: StudyAnalysis, state: SyncState) -> None:
        """Refuse the other parts of a split study that were answered before this part came, and delete their results.

        Why: the part analysed first got a result, and a part that comes later is refused while that result would
        stand, an "absent" SR for the tumor-free half of a series. Parts not answered (refused already,
        or not yet processed) find the split themselves."""
        for other in sorted(study_ids):
            looked_at = self._look_at(other)
            if looked_at is None or looked_at[0].get("status") not in DONE_STATUSES:
                continue
            record, mr_series, ko_series = looked_at
            fingerprint = orthanc_series_fingerprint([*mr_series, *ko_series])
            self._record_failure(other, record, refusal, 1, state, {"study_fingerprint": fingerprint})

    def _split_by_patient_id(self, study_id: str, header: Dataset) -> set[str]:
        """The Orthanc IDs of the other studies that have this one's Study Instance UID and a Patient ID left empty
        where this one's is not, or the other way round (none: an empty set).

        Why: Orthanc keys a study by Patient ID and Study Instance UID, so a series stored with an empty Patient ID on
        some files is two Orthanc studies, and each analysed alone would give "absent" for the patient's tumor-free
        part and file the tumor under an empty Patient ID, where the API refuses such files as one request. So are two
        whose Patient IDs differ only by leading or trailing spaces, which are not significant. Two Patient IDs both
        set otherwise stay two studies (a corrected Patient ID stored again)."""
        uid = str(header.get("StudyInstanceUID", ""))
        if not uid:
            return set()
        patient_id = identity_text(header.get("PatientID"))
        others = set()
        for study in self.client.other_studies_of_uid(study_id, uid):
            other_id = identity_text(study["PatientMainDicomTags"].get("PatientID"))
            if not (other_id and patient_id and other_id != patient_id):
                others.add(str(study["ID"]))
        return others

    def _shared_series(self, study_id: str, headers: list[Dataset]) -> set[str]:
        """The Orthanc IDs of the other studies, of another Study Instance UID, that hold a series of this study (by
        Series Instance UID) (none: an empty set).

        Why: a series belongs to one study, yet one stored with two Study Instance UIDs (a study split in the RIS
        while it was sent) is two Orthanc studies, and the tumor-free part would get a COMPLETE "absent" SR, where
        the API refuses such files in one request. One lookup per MR series (at most
        `MAX_MR_SERIES`), and one more per other study found."""
        study_uid = str(headers[0].get("StudyInstanceUID", ""))
        others: set[str] = set()
        for header in headers:
            if series_uid := str(header.get("SeriesInstanceUID", "")):
                others |= self.client.studies_of_series_uid(series_uid) - {study_id}
        elsewhere = {
            other
            for other in others
            if (study := self.client.study(other)) is not None
            # whatever its Patient ID: a patient merged in the RIS while the series was stored
            and str(study.get("MainDicomTags", {}).get("StudyInstanceUID", "")) != study_uid
        }
        return elsewhere

    def _record_failure(
        self,
        study_id: str,
        record: dict[str, Any],
        analysis: StudyAnalysis,
        attempts: int,
        state: SyncState,
        fields: dict[str, Any],
    ) -> str:
        """Delete the results stored for the study before (its `record`'s), record a failed analysis (its
        `attempts`-th) and when to try again.

        Why delete: a refused study has no result, and the earlier SEG and SR, made of instances that are not the
        study's now, would stand in Orthanc as its current result with nothing a viewer reads saying otherwise (e.g.
        a slice re-sent under a new UID at another's position)."""
        for series_id in self.client.our_result_series(study_id, recorded_results(record)):
            self.client.delete_series(series_id)
        withdrawn = recorded_report(record)
        if withdrawn:  # named by the next report, which supersedes it as it would have
            fields = {**fields, "withdrawn_reports": [asdict(reference) for reference in withdrawn]}
        state.retries[study_id] = self._next_attempt(attempts)
        self.client.write_sync_record(
            study_id,
            self._record(FAILED, attempts=attempts, error=analysis.reason, summary=analysis.summary, **fields),
        )
        code = error_code(analysis.reason or "")
        self.failures[code or "unknown"] += 1
        logger.warning(
            "study failed", extra={"fields": {"orthanc_study": study_id, "attempts": attempts, "error": code}}
        )
        return FAILED

    def _store_results(
        self,
        study_id: str,
        datasets: list[Dataset],
        superseding: tuple[list[ResultReference], bool],
        record: dict[str, Any],
        sources: set[str],
    ) -> list[str]:
        """Store a study's new SEG and SR, then delete the earlier ones; return the Series Instance UIDs deleted.

        A store that fails withdraws what this pass stored (never a result stored before with the same UIDs, as one
        made again from the same instances has) and raises: the earlier results stay. So do results whose `sources`
        (the Orthanc IDs of the series analysed) are no longer in the study once they are stored (`SourcesGoneError`):
        an operator deleted the study (or one of them) during the analysis, and STOW-RS had made the study again,
        under the same Orthanc ID, holding only the results and the patient's name.
        """
        if datasets:  # the report names the one it replaces, deleted below; new UIDs (`reports_to_supersede`)
            supersede_earlier_reports(datasets, *superseding)
        new_series = {str(dataset.SeriesInstanceUID) for dataset in datasets}
        stored_before = set(self.client.our_result_series(study_id, recorded_results(record)).values())
        try:
            for dataset in datasets:
                dataset.StationName = SYNC_STATION_NAME  # in the object itself: a crash after the store leaves it ours
                self.client.store(dataset)
        except Exception:
            self._withdraw(study_id, new_series - stored_before)
            raise
        if not sources <= {str(series["ID"]) for series in self.client.study_series(study_id)}:
            self._withdraw(study_id, new_series - stored_before)
            raise SourcesGoneError("series analysed were deleted from the study during its analysis")
        return self._supersede(study_id, new_series, stored_before, recorded_results(record))

    def _supersede(self, study_id: str, new_series: set[str], stored_before: set[str], recorded: set[str]) -> list[str]:
        """Delete this study's earlier results once the new ones are in it; return the Series Instance UIDs deleted.

        Only the series of this Orthanc study that pacs-sync stored are looked at (`OrthancClient.our_result_series`,
        with `recorded`, the result series its record names). When a new result did not land in it (a Patient ID the
        SEG or SR did not carry over as Orthanc reads it, a store a proxy swallowed, an Orthanc Lua filter that refused
        it while STOW-RS answered success), what this pass stored is withdrawn wherever it is (the SEG that landed
        would stand without its SR), and the earlier results are kept: they are another patient's otherwise. The UIDs
        are this patient's and study's (`app.dicom.result_uids`): none of another's is touched.
        """
        ours = self.client.our_result_series(study_id, recorded)
        misplaced = new_series - set(ours.values())
        if misplaced:
            self._withdraw(study_id, misplaced | (new_series - stored_before))
            raise MisplacedResultsError(
                f"{len(misplaced)} of the {len(new_series)} result series stored are not in the study; deleted, and "
                "the earlier results kept"
            )
        superseded = []
        for series_id, series_uid in ours.items():
            if series_uid not in new_series:
                self.client.delete_series(series_id)
                superseded.append(series_uid)
        return superseded

    def _withdraw(self, study_id: str, new_series: set[str]) -> None:
        """Delete what a failed store left of the new results (a SEG stored, its SR refused), by Series Instance UID
        wherever it landed: it would pass for a result next to the earlier ones, and pile up at each retry. If Orthanc
        refuses this too, the next processing of the study supersedes them."""
        for series_uid in new_series:
            try:
                self.client.delete_our_series_by_uid(series_uid)
            except Exception as error:
                logger.warning(
                    "partial results not withdrawn",
                    extra={"fields": {"orthanc_study": study_id, "error": _error_text(error)}},
                )

    def _next_attempt(self, attempts: int) -> float:
        config = self.client.config
        return self.clock() + doubling_wait(config.retry_seconds, min(attempts, config.max_attempts) - 1)

    def _record(self, status: str, study_fingerprint: str | None = None, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = {
            "status": status,
            "service_version": service_version(),
            "processed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if study_fingerprint is not None:
            record["study_fingerprint"] = study_fingerprint
        record.update(fields)
        return record


def _left_out_note(count: int, limit: int) -> str:
    """Why `count` MR series were not read, with the limit and the setting to raise (counts only: no patient data)."""
    files = "its first file is" if count == 1 else "the first file of each is"
    return f"{count} MR series left out: {files} over the instance limit of {limit} bytes (PACS_MAX_INSTANCE_BYTES)"


def _log_not_processed(study_id: str, error: Exception, attempts: int | None) -> None:
    """Log a study that raised, by its Orthanc ID and the error; a traceback only for what is not Orthanc's."""
    logger.error(
        "study not processed",
        exc_info=not isinstance(error, OrthancError),
        extra={"fields": {"orthanc_study": study_id, "attempts": attempts, "error": _error_text(error)}},
    )


def _own_error(error: Exception) -> bool:
    """Whether `error` is one of the service's own, whose messages are written here and never quote a file's values
    (a library's may)."""
    return type(error).__module__.startswith("app.")


def _error_text(error: Exception) -> str:
    """An Orthanc error's own message (the call, the HTTP status, what to configure: written here, never file
    content); for anything else only its type, since a library's message may quote a file's values."""
    return f"OrthancError: {error}" if isinstance(error, OrthancError) else type(error).__name__
