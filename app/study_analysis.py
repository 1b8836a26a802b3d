"""One study in, the objects to send back out: sequence selection, the series flow, the SEG and the volume report.

`StudyProcessor` is the small interface the DICOM node calls (`app.dicom_node`): files of one study (and notes of its
own on how they came, for the report) in, a `StudyAnalysis` out. `ModelStudyProcessor` is the implementation on the
service's models; it runs the chosen series through the prediction flow of the HTTP API, the CLI and pacs-sync
(`app.prediction.PredictionService.predict_dicom`: budget, decoding, the models, the series clean-up, the SEG and the
volume), so the node has no pipeline of its own.

What it does with a study:

1. read every file's header and choose the series (`app.sequence_selection`); a study without FLAIR is
   "not_analysed" with the reason, and nothing is sent;
2. read the chosen series' pixels through the flow, which applies the same rules to them
   (`app.series_choice`); a file that fails is left out and counted (`file_errors`, with its code); the T1 series
   join FLAIR only when every slice position pairs up, else FLAIR goes alone (noted);
3. run the models; build the SEG when a slice is positive (one per positive slice for slices without a Frame of
   Reference, `app.dicom_seg.build_segmentations`) and always the volume report (SR), so that "analysed, no tumor"
   can be told from "never analysed".

The summary holds no patient data: series numbers, counts, the volume, error codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pydicom
from pydicom.dataset import Dataset

from app.dicom_sr import series_volume_report
from app.errors import ServiceError
from app.model_runners import predictor_runner
from app.prediction import PredictionService
from app.sequence_selection import SelectionRules, StudySelection, select_sequences
from app.uploads import UploadLimits

if TYPE_CHECKING:
    from app.inference import Predictor

DEFAULT_BATCH_SIZE = 16

AnalysisStatus = Literal["analysed", "not_analysed", "failed"]


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


StudyProcessor = Callable[[Sequence[Path], Sequence[str]], StudyAnalysis]


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

    def __call__(self, files: Sequence[Path], notes: Sequence[str] = ()) -> StudyAnalysis:
        headers: dict[Path, Dataset] = {}
        file_errors: dict[str, int] = {}
        for path in files:
            try:
                headers[path] = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # unreadable header: counted, never fatal for the rest of the study
                file_errors["unreadable_header"] = file_errors.get("unreadable_header", 0) + 1
        selection = self.select(headers.values())
        files_by_series: dict[str, list[bytes]] = {uid: [] for uid in selection.channel_series}
        for path, header in sorted(headers.items(), key=lambda item: _instance_order(item[1])):
            series_uid = str(header.get("SeriesInstanceUID", ""))
            if series_uid in files_by_series:
                files_by_series[series_uid].append(path.read_bytes())
        return self.analyse(selection, files_by_series, files=len(files), file_errors=file_errors, notes=notes)

    def select(self, headers: Iterable[Dataset]) -> StudySelection:
        """The series to read (`app.sequence_selection` with this processor's rules); headers alone suffice."""
        return select_sequences(headers, self.rules)

    def analyse(
        self,
        selection: StudySelection,
        files_by_series: Mapping[str, Sequence[bytes]],
        files: int,
        file_errors: dict[str, int] | None = None,
        notes: Sequence[str] = (),
    ) -> StudyAnalysis:
        """Run the chosen series (files as bytes, keyed by Series Instance UID) through the prediction flow.

        For callers that hold the files elsewhere than on disk (pacs-sync fetches them from Orthanc): choose with
        `select` from one header per series, then fetch only the series in `selection.channel_series`. `notes`
        (the caller's, e.g. an association aborted) go into the record and the report after the selection's.
        """
        file_errors = dict(file_errors or {})
        summary: dict[str, Any] = {"files": files, "series": _series_summary(selection)}
        if not selection.analysed:
            return StudyAnalysis(
                "not_analysed", reason=selection.reason, summary=summary | {"file_errors": file_errors}
            )
        notes = [*selection.notes, *notes]
        summary.update(file_errors=file_errors, notes=notes)
        files_chosen = [data for uid in selection.channel_series for data in files_by_series.get(uid, ())]
        try:
            # The flow chooses again among the chosen series, with the same rules: the same roles, and the one place
            # that maps channels and falls back to FLAIR alone when the T1 slices do not pair.
            answer = asyncio.run(self.service.predict_dicom(files_chosen, build_seg=True))
        except ServiceError as error:
            return StudyAnalysis("failed", reason=f"{error.code}: {error.message}", summary=summary)
        notes.extend(note for note in answer.choice.notes if note not in notes)
        for error in answer.file_errors.values():
            file_errors[error.code] = file_errors.get(error.code, 0) + 1
        if file_errors:  # the SR would otherwise count only the gaps between slices read, not a file left at an end
            notes.append(unread_files_note(file_errors))
        result = answer.result
        inputs = result.inputs
        positive = sum(prediction.detected for prediction in result.predictions)
        try:
            report = series_volume_report(result, self.predictor.model_tags, notes)
        except ServiceError as error:  # sources a report cannot refer to (no Study Instance UID, say)
            return StudyAnalysis("failed", reason=f"{error.code}: {error.message}", summary=summary)
        datasets = [*result.segmentations, report]
        summary.update(
            channels=len(inputs[0].channels),
            slices=len(inputs),
            positive_slices=positive,
            segmentations=len(result.segmentations),
            tumor_volume_ml=result.tumor_volume_ml,
            slices_missing=result.slices_missing,
            tumor_reaches_series_end=result.tumor_reaches_series_end,
            models=dict(self.predictor.model_tags),
        )
        return StudyAnalysis("analysed", datasets=datasets, summary=summary)


def unread_files_note(file_errors: Mapping[str, int]) -> str:
    """The note that received files were not read, by error code (no file content)."""
    count = sum(file_errors.values())
    codes = ", ".join(f"{code}: {number}" for code, number in sorted(file_errors.items()))
    plural = "files were" if count != 1 else "file was"
    return f"{count} received {plural} not read ({codes}): the slices in them are not in this result"


def _instance_order(header: Dataset) -> tuple[int, str]:
    number = header.get("InstanceNumber")
    try:
        return (int(number), str(header.get("SOPInstanceUID", "")))
    except (TypeError, ValueError):
        return (1 << 30, str(header.get("SOPInstanceUID", "")))


def _series_summary(selection: StudySelection) -> list[dict[str, Any]]:
    used = set(selection.channel_series)
    return [
        {
            "series_number": item.series.series_number,
            "role": item.role.value,
            "evidence": item.evidence,
            "used": item.series.series_instance_uid in used,
        }
        for item in selection.classifications
    ]
