"""One study in, the objects to send back out: sequence selection, the series flow, the SEG and the volume report.

`StudyProcessor` is the small interface the DICOM node calls (`app.node.dicom_node`): files of one study (and notes of
its own on how they came, for the report) in, a `StudyAnalysis` out. `ModelStudyProcessor` is the implementation on the
service's models; it runs the chosen series through the prediction flow of the HTTP API, the CLI and pacs-sync
(`app.prediction.PredictionService.predict_dicom`: budget, decoding, the models, the series clean-up, the SEG and the
volume), so the node has no pipeline of its own.

What it does with a study:

1. read every file's header and choose the series (`app.series.sequence_roles`); a study without FLAIR is
   "not_analysed" with the reason, and nothing is sent;
2. check the chosen series from their headers against the flow's limits (slices, decoding memory), as the flow
   will (`app.series.reading.plan_headers`): a study the flow would refuse "failed" with the flow's reason before
   any file's bytes are read (otherwise 10,000 one-slice instances are all read into memory first);
3. read the chosen series' pixels through the flow, which applies the same rules to them
   (`app.series.choice`); a file that fails is left out and counted (`file_errors`, with its code); the T1 series
   join FLAIR only when every slice position pairs up, else FLAIR goes alone (noted);
4. run the models; build the SEG when a slice is positive (one per positive slice for slices without a Frame of
   Reference, `app.dicom.dicom_seg.build_segmentations`) and always the volume report (SR), so that "analysed, no tumor"
   can be told from "never analysed".

The summary holds no patient data: series numbers, counts, the volume, error codes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydicom.dataset import Dataset

from app.dicom.dicom_header import UNREADABLE_HEADER, DicomHeader, checked_dimensions, read_header
from app.dicom.dicom_sr import seg_refused_note, series_volume_report
from app.dicom.part10 import held_value_bytes
from app.errors import MixedInputError, OverMemoryBudgetError, ServiceError
from app.memory_budget import describe_bytes
from app.model_runners import predictor_runner
from app.prediction import PredictionService
from app.series.info import where_in_study
from app.series.reading import plan_headers
from app.series.result import several_slices
from app.series.sequence_roles import StudySelection, select_sequences
from app.series.sequence_rules import SelectionRules
from app.uploads import MOST_FILES_NAMED, UploadLimits, check_upload_size

if TYPE_CHECKING:
    from app.inference import Predictor

DEFAULT_BATCH_SIZE = 16


class AnalysisStatus(StrEnum):
    """What became of a study; the strings are what the DICOM node's records and pacs-sync's logs hold."""

    ANALYSED = "analysed"
    NOT_ANALYSED = "not_analysed"
    FAILED = "failed"


@dataclass(frozen=True)
class StudyAnalysis:
    """The outcome for one study.

    Attributes
    ----------
    status
        "analysed" (results to send), "not_analysed" (no FLAIR: `reason` says why), "failed" (nothing readable).
    reason
        Why the study was not analysed or failed; None when analysed.
    datasets
        What to send: the SEGs (when a slice is positive) and the volume report, last.
    summary
        JSON-ready facts for the node's record, free of patient data.
    """

    status: AnalysisStatus
    reason: str | None = None
    datasets: list[Dataset] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


class StudyProcessor(Protocol):
    """What the DICOM node calls: a study's files and notes of its own on how they came in; `complete` False when an
    association that sent them ended without a release (some may be missing: the report says PARTIAL). It raises
    `StudyFilesChangedError` when files were removed or replaced while it read them."""

    @property
    def model_tags(self) -> Mapping[str, str]:
        """The versions of the models the results are made with (the predictor's): a study analysed by others is
        analysed again when sent again."""
        ...

    def __call__(self, files: Sequence[Path], notes: Sequence[str] = (), complete: bool = True) -> StudyAnalysis: ...


class StudyFilesChangedError(Exception):
    """Files of a study were removed or replaced while it was read (an incoming rejection note removed instances, an
    instance came again): its headers leave long values in the files (`read_header`), read when first used, so a
    file gone meanwhile would fail the analysis with pydicom's error. Nothing of the run is kept; the
    study is analysed again from the files then there."""


def _file_states(files: Sequence[Path]) -> list[tuple[int, int, int] | None]:
    """Each file's inode, size and modification time; None for a file that is gone."""
    states: list[tuple[int, int, int] | None] = []
    for path in files:
        try:
            status = path.stat()
        except OSError:
            states.append(None)
        else:
            states.append((status.st_ino, status.st_size, status.st_mtime_ns))
    return states


@dataclass(frozen=True)
class ChosenFiles:
    """A study's files once their headers were read (`ModelStudyProcessor.choose_files`).

    Attributes
    ----------
    selection
        The series chosen.
    paths_by_series
        The files of the chosen series by Series Instance UID, in channel order, each series in instance order.
    file_errors
        Files whose header could not be read, by error code.
    refusal
        Why the flow would refuse the chosen series (too many slices, over the memory budget), found from the
        headers; None when it would take them.
    """

    selection: StudySelection
    paths_by_series: dict[str, list[Path]]
    file_errors: dict[str, int]
    refusal: ServiceError | None = None


class ModelStudyProcessor:
    """`StudyProcessor` on the service's models (see the module docstring)."""

    def __init__(
        self,
        predictor: Predictor,
        rules: SelectionRules | None = None,
        limits: UploadLimits | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        result_origin: str = "study-processor",
    ) -> None:
        self.predictor = predictor
        self.rules = rules or SelectionRules()
        # One thread, one study at a time: the models run in the calling thread, as in pacs-sync.
        self.service = PredictionService(
            predictor,
            predictor_runner(predictor, batch_size),
            limits or UploadLimits(),
            offload=False,
            rules=self.rules,
            result_origin=result_origin,  # "dicom-node", "pacs-sync": see PredictionService.result_origin
        )

    @property
    def model_tags(self) -> Mapping[str, str]:
        """The predictor's model versions, which the DICOM node and pacs-sync record with each outcome."""
        return dict(self.predictor.model_tags)

    def __call__(self, files: Sequence[Path], notes: Sequence[str] = (), complete: bool = True) -> StudyAnalysis:
        """Analyse the study held in `files` (the DICOM node's spool); only the chosen series' files are read whole,
        and only once the flow's limits are known to take them (`choose_files`).

        Raises
        ------
        StudyFilesChangedError
            When reading fails and some of `files` were removed or replaced since the analysis began.
        """
        states = _file_states(files)
        try:
            chosen = self.choose_files(files)
            if chosen.refusal is not None:
                summary = _study_summary(
                    chosen.selection, len(files), chosen.file_errors, [*chosen.selection.notes, *notes]
                )
                return _failed(chosen.refusal, summary)
            files_by_series = {
                uid: [path.read_bytes() for path in paths] for uid, paths in chosen.paths_by_series.items()
            }
        except Exception as error:
            if _file_states(files) != states:
                raise StudyFilesChangedError(
                    "files of the study were removed or replaced while it was read; it is analysed again"
                ) from error
            raise
        return self.analyse(
            chosen.selection,
            files_by_series,
            files=len(files),
            file_errors=chosen.file_errors,
            notes=notes,
            complete=complete,
        )

    def choose_files(self, files: Sequence[Path]) -> ChosenFiles:
        """Read every file's header, choose the series, and check the chosen ones' size; no file's bytes are read.

        The headers are dropped on return (the flow reads them again from the bytes): a large study's headers are
        held only while its series are chosen and checked.
        """
        headers: dict[Path, Dataset] = {}
        file_errors: dict[str, int] = {}
        held, budget = 0, self.service.limits.max_decode_bytes
        for path in files:
            header = read_header(path)
            if header is None:  # counted, never fatal for the rest of the study (`read_header`'s policy)
                file_errors[UNREADABLE_HEADER] = file_errors.get(UNREADABLE_HEADER, 0) + 1
                continue
            headers[path] = header
            held += held_value_bytes(header)
            if budget is not None and held > budget:  # as a request's headers are
                error = OverMemoryBudgetError(
                    f"the headers of the study's first {len(headers)} files hold {describe_bytes(held)}, over the "
                    f"memory budget (DECODE_MEMORY_BYTES) of {describe_bytes(budget)}; the rest were not read"
                )
                return ChosenFiles(self.select(headers.values()), {}, file_errors, refusal=error)
        selection = self.select(headers.values())
        by_series: dict[str, list[tuple[Path, Dataset]]] = {uid: [] for uid in selection.channel_series}
        for path, header in sorted(headers.items(), key=lambda item: _instance_order(item[1])):
            series_uid = str(header.get("SeriesInstanceUID", ""))
            if series_uid in by_series:
                by_series[series_uid].append((path, header))
        paths_by_series = {uid: [path for path, _ in instances] for uid, instances in by_series.items()}
        try:
            # In the order the flow gets the files: by channel, each series in instance order.
            self.check_size([instance for instances in by_series.values() for instance in instances])
        except ServiceError as error:
            return ChosenFiles(selection, paths_by_series, file_errors, refusal=error)
        return ChosenFiles(selection, paths_by_series, file_errors)

    def check_size(self, instances: Sequence[tuple[Path, Dataset]]) -> None:
        """Refuse, from their headers alone, chosen files that the flow would refuse for their slices or memory cost.

        The same check as the flow's (`PredictionService.predict_dicom`: `plan_headers` with its limits, slice
        refusal and rules), so a study it passes is analysed exactly as before; only its refusal comes before
        gigabytes of files are read. A deflated file counts without its inflated size, which the flow adds: the
        flow's check stays the last word.

        Raises
        ------
        ServiceError
            The flow's refusal (`app.errors.OverMemoryBudgetError`, `TooManySlicesError`, ...).
        """
        limits = self.service.limits
        sized = [_sized_header(path, dataset, limits) for path, dataset in instances]
        readable = [header for header in sized if header is not None]
        plan_headers(readable, limits, refuse_slices=several_slices, rules=self.rules)

    def select(self, headers: Iterable[Dataset]) -> StudySelection:
        """The series to read (`app.series.sequence_roles` with this processor's rules); headers alone suffice."""
        return select_sequences(headers, self.rules)

    def analyse(
        self,
        selection: StudySelection,
        files_by_series: Mapping[str, Sequence[bytes]],
        files: int,
        file_errors: dict[str, int] | None = None,
        notes: Sequence[str] = (),
        complete: bool = True,
    ) -> StudyAnalysis:
        """Run the chosen series (files as bytes, keyed by Series Instance UID) through the prediction flow.

        For callers that hold the files elsewhere than on disk (pacs-sync fetches them from Orthanc): choose with
        `select` from one header per series, then fetch only the series in `selection.channel_series`. `notes`
        (the caller's, e.g. an association aborted) go into the record and the report after the selection's.
        """
        file_errors = dict(file_errors or {})
        if not selection.analysed:
            not_analysed = {"files": files, "series": _series_summary(selection), "file_errors": file_errors}
            return StudyAnalysis(AnalysisStatus.NOT_ANALYSED, reason=selection.reason, summary=not_analysed)
        notes = [*selection.notes, *notes]
        summary = _study_summary(selection, files, file_errors, notes)
        files_chosen = [data for uid in selection.channel_series for data in files_by_series.get(uid, ())]
        try:
            # The flow chooses again among the chosen series, with the same rules: the same roles, and the one place
            # that maps channels and falls back to FLAIR alone when the T1 slices do not pair. Sources a SEG cannot
            # be made of (no Frame of Reference, an enhanced image's negative Slice Thickness, a series split into
            # several multi-frame instances) get the SR all the same, which says why (interop review 62 F1: the
            # study was recorded failed, and the archive got nothing, not even the report).
            answer = asyncio.run(self.service.predict_dicom(files_chosen, build_seg=True, seg_optional=True))
        except ServiceError as error:
            return _failed(error, summary)
        seg_refused = answer.segmentation_refused
        notes.extend(note for note in answer.choice.notes if note not in notes)
        # The series the models read: the flow may have read FLAIR alone.
        summary["series"] = _series_summary(selection, read=answer.choice.channel_series)
        for error in answer.file_errors.values():
            file_errors[error.code] = file_errors.get(error.code, 0) + 1
        if file_errors:  # the SR would otherwise count only the gaps between slices read, not a file left at an end
            unread = [files_chosen[index] for index in sorted(answer.file_errors)]
            notes.append(unread_files_note(file_errors, _where_in_study(unread)))
        result = answer.result
        inputs = result.inputs
        positive = sum(prediction.detected for prediction in result.predictions)
        if seg_refused and positive:
            notes.append(seg_refused_note(seg_refused))
        try:
            report = series_volume_report(
                result, self.predictor.model_tags, notes, complete=complete, without_seg=bool(seg_refused)
            )
        except ServiceError as error:  # sources a report cannot refer to (no Study Instance UID, say)
            return _failed(error, summary)
        datasets = [*result.segmentations, report]
        summary.update(
            channels=len(inputs[0].channels),
            slices=len(inputs),
            positive_slices=positive,
            segmentations=len(result.segmentations),
            **({"segmentation_refused": seg_refused} if seg_refused else {}),
            tumor_volume_ml=result.tumor_volume_ml,
            slices_missing=result.slices_missing,
            tumor_reaches_series_end=result.tumor_reaches_series_end,
            models=dict(self.predictor.model_tags),
        )
        return StudyAnalysis(AnalysisStatus.ANALYSED, datasets=datasets, summary=summary)


def unread_files_note(file_errors: Mapping[str, int], where: str = "") -> str:
    """The note that received files were not read, by error code, and `where` the ones whose header could be read
    lie (series and instance numbers, `app.series.info.where_in_study`; no file content)."""
    count = sum(file_errors.values())
    codes = ", ".join(f"{code}: {number}" for code, number in sorted(file_errors.items()))
    plural = "files were" if count != 1 else "file was"
    return (
        f"{count} received {plural} not read ({codes}{'; ' + where if where else ''}): the slices in them are not in "
        "this result"
    )


def _where_in_study(files: Sequence[bytes]) -> str:
    """`where_in_study` for the first `MOST_FILES_NAMED` files whose header pydicom reads, so that an instance left
    out of a study (a corrupt JPEG, say) is named."""
    headers = (read_header(data, ["SeriesNumber", "InstanceNumber"]) for data in files[:MOST_FILES_NAMED])
    # A file the flow refused may not parse at all: its place is left unsaid.
    return where_in_study([header for header in headers if header is not None])


def _study_summary(
    selection: StudySelection, files: int, file_errors: dict[str, int], notes: list[str]
) -> dict[str, Any]:
    """The record of a study whose series were chosen, before the flow adds what it found."""
    return {"files": files, "series": _series_summary(selection), "file_errors": file_errors, "notes": notes}


def split_by_patient_id(parts: int, summary: dict[str, Any]) -> StudyAnalysis:
    """The outcome of a study whose Study Instance UID came both with an empty Patient ID and with one, held as
    `parts` studies by a store that keys a study by both (the DICOM node, Orthanc), or with Patient IDs that differ
    only by spaces (Orthanc keeps " P1" and "P1" apart): refused, as the API refuses such files in one request, since
    each part answered alone would be a wrong result for the patient ("absent" for the tumor-free part, the tumor
    filed under an empty Patient ID)."""
    error = MixedInputError(
        "files of this study (by Study Instance UID) came with an empty Patient ID and with a Patient ID, or with "
        f"Patient IDs that differ only by leading or trailing spaces ({parts} studies by Patient ID here): each part "
        "answered alone would be a wrong result for the whole; send the study with one Patient ID"
    )
    return _failed(error, summary)


def series_in_several_studies(studies: int, summary: dict[str, Any]) -> StudyAnalysis:
    """The outcome of a study a series of which (by Series Instance UID) also came under other Study Instance UIDs,
    `studies` in all: refused, as the API refuses such files in one request. A series belongs to one study (PS3.3
    A.1.2.3); each part answered alone would be a wrong result for the whole (a COMPLETE "absent" SR for the
    tumor-free part of a series whose other part holds a 122 mL tumor)."""
    error = MixedInputError(
        f"a series of this study (by Series Instance UID) also came under other Study Instance UIDs ({studies} "
        "studies hold it here): each part answered alone would be a wrong result for the whole; send the series "
        "under one Study Instance UID"
    )
    return _failed(error, summary)


def error_code(reason: str) -> str:
    """The error code a failed analysis's reason starts with ("mixed_input: ..."), for a log line: the code names
    no value of the files; "" when the reason has none."""
    code, colon, _ = reason.partition(":")
    return code if colon and code.replace("_", "").isalnum() and code.islower() else ""


def _failed(error: ServiceError, summary: dict[str, Any]) -> StudyAnalysis:
    return StudyAnalysis(AnalysisStatus.FAILED, reason=f"{error.code}: {error.message}", summary=summary)


def _sized_header(path: Path, dataset: Dataset, limits: UploadLimits) -> DicomHeader | None:
    """A file's header read from disk as a `DicomHeader` for `plan_headers`, which sizes it but never decodes it:
    its bytes are not read (`data` is empty), but for a file that may repeat another (`resent_files_by_header`).

    None for a file the flow refuses on its own before sizing it (over the upload size or the pixel limit, or
    dimensions that cannot be read): `app.series.reading.read_headers` puts an error in its place, which leaves it
    out of the slices and the cost.
    """
    try:
        check_upload_size(path.stat().st_size, limits)
        rows, columns, frames, bits = checked_dimensions(dataset, limits.max_dicom_pixels)
    except (ServiceError, OSError):
        return None
    return DicomHeader(b"", dataset, rows, columns, frames, bits, path=path)


def _instance_order(header: Dataset) -> tuple[float, str]:
    """Instance Number order, instances without a readable one last."""
    number = header.get("InstanceNumber")
    try:
        return (int(number), str(header.get("SOPInstanceUID", "")))
    except (TypeError, ValueError):
        return (math.inf, str(header.get("SOPInstanceUID", "")))


def _series_summary(selection: StudySelection, read: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Each series of the study, its role and whether it is `used`: among the series the flow `read` (Series
    Instance UIDs) once it has, else among those chosen for it."""
    used = set(selection.channel_series if read is None else read)
    return [
        {
            "series_number": item.series.series_number,
            "role": item.role.value,
            "evidence": item.evidence,
            "used": item.series.series_instance_uid in used,
        }
        for item in selection.classifications
    ]
