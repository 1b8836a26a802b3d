"""One prediction flow for the HTTP API, `brain-tumor predict` and `pacs-sync`: uploads in, results out.

Raster or DICOM, one slice or a series: check the headers (slices, memory cost), reserve the cost in the decoding
memory budget (`app.memory_budget.MemoryBudget`), decode (`app.uploads`; DICOM through `app.dicom.dicom_series`) -> the
models (an `app.model_runners.ModelRunner`: the micro-batcher in the service, the predictor itself in the CLI and
pacs-sync) -> the DICOM SEG and the tumor volume for a series (`app.series.result`) -> payloads (`app.payloads`). No
HTTP here: failures are `app.errors.ServiceError`s. In the service the CPU work runs in worker threads, so the event
loop stays free while it happens (`offload`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TypeVar

import anyio.to_thread
import numpy as np

from app import payloads, schemas
from app.dicom.dicom_header import DicomHeader, is_dicom
from app.dicom.dicom_series import in_stored_orientation, model_inputs, non_square_pixels_note
from app.dicom.slice_order import (
    UNKNOWN_ORDER_NOTE,
    VOLUME_UNKNOWN_NOTE,
    anatomical_order,
    series_breaks,
    slice_order_known,
    unplaced_gaps_note,
)
from app.errors import InvalidSliceError, MixedInputError, SegmentationInputError, ServiceError
from app.imaging import sniff_format
from app.inference import SlicePrediction
from app.memory_budget import HeaderMemory, MemoryBudget
from app.model_runners import ModelRunner, Models
from app.overlay import OVERLAY_BYTES_PER_PIXEL, render_overlay_png
from app.series.choice import SeriesChoice
from app.series.reading import SeriesPlan, SeriesUploads, decode_series, plan_headers, plan_series
from app.series.result import (
    SeriesResult,
    clean_series,
    nothing_readable,
    several_slices,
    single_slice_answers,
    summarise_series,
)
from app.series.sequence_rules import SelectionRules
from app.uploads import (
    PreparedSlice,
    UploadLimits,
    check_one_size,
    plan_raster_uploads,
    prepare_series_uploads,
    prepare_upload,
    prepare_uploads,
    raster_series_breaks,
    refuse_repeated_slices,
    stack_inputs,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Tally:
    """How a request's slices came out: what the metrics count and the audit log records.

    `positive` and `negative` are the final answers; `classifier_positive` the slices the classifier called positive,
    before the series clean-up turned some of them negative (the metrics' positives counter counts those).
    """

    positive: int = 0
    negative: int = 0
    failed: int = 0
    classifier_positive: int = 0

    @classmethod
    def of(cls, models_said: Sequence[SlicePrediction], answers: Sequence[SlicePrediction], failed: int = 0) -> Tally:
        """The tally of the models' answers (`models_said`) and of the final `answers` made from them."""
        positive = sum(prediction.detected for prediction in answers)
        return cls(
            positive=positive,
            negative=len(answers) - positive,
            failed=failed,
            classifier_positive=sum(prediction.detected for prediction in models_said),
        )


TallyObserver = Callable[[Tally], None]
"""Told a request's tally once its answers are final (after the series clean-up, which can turn a slice negative;
before a later step, like the SEG, can fail), so the metrics and the audit log count what the client is told."""


@dataclass(frozen=True, eq=False)
class SliceAnswer:
    """One slice's prediction, its tally (for the metrics and the audit log), and (for the overlay) the decoded
    image; the caller turns the prediction into its answer."""

    prediction: SlicePrediction
    image: np.ndarray | None
    tally: Tally


@dataclass(frozen=True, eq=False)
class BatchAnswer:
    """One prediction and its payload, or an error, per raster file, in request order."""

    predictions: list[SlicePrediction | ServiceError]
    outcomes: list[schemas.Prediction | ServiceError]
    tally: Tally


@dataclass(frozen=True, eq=False)
class SeriesAnswer:
    """A DICOM series: the result, one payload per slice (unless a SEG answers), the files that failed, and the
    series the models read (`choice`: their roles, and the series left out)."""

    result: SeriesResult
    slices: list[schemas.SeriesSlice] | None
    file_errors: dict[int, ServiceError]
    tally: Tally
    choice: SeriesChoice = field(default_factory=SeriesChoice)
    segmentation_refused: str = ""
    """Why no SEG could be made, when the caller let the series be answered without one (`seg_optional`)."""


@dataclass(frozen=True, eq=False)
class OverlayAnswer:
    png: bytes
    prediction: SlicePrediction
    tally: Tally


@dataclass
class PredictionService:
    """The prediction flow over one set of models.

    Parameters
    ----------
    models
        Thresholds and tags of the models (`app.inference.Predictor`).
    run_models
        How the models run (`batcher_runner` or `predictor_runner`).
    limits
        Per-file and per-request limits (`UploadLimits.for_service`, `for_node`, `for_pacs`), checked from the
        headers before decoding.
    on_predictions
        Told each request's tally, e.g. to count predictions in the metrics; each call can add its own `on_tally`.
    offload
        Run decoding, preprocessing, encoding and the SEG in worker threads (the service, to keep its event loop
        free); False for the CLI and pacs-sync, which keep every object in their own thread (a highdicom SEG holds
        an SQLite connection that only its creating thread may use).
    budget
        The decoding memory budget requests reserve their cost in, from decoding until the models have answered
        (their model inputs live that long); by default one of `limits.max_decode_bytes` that waits as long as it
        takes (none without a budget).
    header_memory
        What the DICOM headers of the requests in flight may hold together while they are read, before a request
        knows its cost (`HeaderMemory`); by default `limits.max_decode_bytes` (no limit without a budget). A request's
        headers count there, and the rest of its cost in `budget`.
    rules
        The sequence-selection rules (`SelectionRules.from_settings`) that choose which DICOM series the models read,
        and in which channel (`app.series.choice`).
    result_origin
        Who the SEGs and SRs are made for, mixed into their UIDs (`app.dicom.result_uids`): "" for answers on request
        (HTTP, CLI), so that the same series gives the same objects, whichever output asks; the DICOM node and
        pacs-sync name themselves, so that their results never take the UIDs of each other's (pacs-sync deletes
        what it superseded, and only its own).
    """

    models: Models
    run_models: ModelRunner
    limits: UploadLimits
    on_predictions: TallyObserver | None = field(default=None)
    offload: bool = True
    budget: MemoryBudget | None = None
    header_memory: HeaderMemory | None = None  # always one after __post_init__
    rules: SelectionRules = field(default_factory=SelectionRules)
    result_origin: str = ""

    def __post_init__(self) -> None:
        if self.budget is None and self.limits.max_decode_bytes is not None:
            self.budget = MemoryBudget(self.limits.max_decode_bytes)
        if self.header_memory is None:
            self.header_memory = HeaderMemory(self.limits.max_decode_bytes)

    @property
    def _header_memory(self) -> HeaderMemory:
        assert self.header_memory is not None  # set by __post_init__
        return self.header_memory

    @property
    def threshold(self) -> float:
        return self.models.classifier_threshold

    async def predict_slice(
        self, data: bytes, segmentation: bool = False, on_tally: TallyObserver | None = None
    ) -> SliceAnswer | SeriesAnswer:
        """One file, one slice. A DICOM file with `segmentation` answers with its series' SEG when it has one.

        Raises
        ------
        InvalidSliceError
            If a SEG is asked of a raster image, or a DICOM file holds several slices and no SEG answers for them
            (refused from the header, before decoding, when no SEG is asked for).
        """
        if is_dicom(data):
            series = await self.predict_dicom(
                [data], build_seg=segmentation, strict=True, on_tally=on_tally, one_slice=not segmentation
            )
            if segmentation and series.result.segmentations:
                return series
            if len(series.result.predictions) != 1:
                raise several_slices(len(series.result.predictions), max_slices=1)
            return SliceAnswer(series.result.predictions[0], series.result.inputs[0].image, series.tally)
        refuse_segmentation_of_raster(segmentation)
        return await self._predict_raster(data, keep_image=False, on_tally=on_tally)

    async def overlay(self, data: bytes, on_tally: TallyObserver | None = None) -> OverlayAnswer:
        """The slice with the predicted tumor outline, as PNG bytes.

        The drawing and the PNG are counted in the request's memory reservation with the decoding, and made before
        it ends (`OVERLAY_BYTES_PER_PIXEL`): they take more than the decoding of an 8-bit slice, and twelve
        4096x4096 overlays at once took 1.4 GiB outside a 512 MiB budget.
        """
        if is_dicom(data):
            return await self._dicom_overlay(data, on_tally)
        plan = await self._cpu(plan_raster_uploads, [data], self.limits, OVERLAY_BYTES_PER_PIXEL)
        if isinstance(plan.uploads[0], ServiceError):
            raise plan.uploads[0]
        async with self._reserve(plan.cost_bytes):
            answer = await self._predict_planned_raster(data, keep_image=True, on_tally=on_tally)
            png = await self._cpu(render_overlay_png, answer.image, answer.prediction.mask)
        return OverlayAnswer(png, answer.prediction, answer.tally)

    async def _dicom_overlay(self, data: bytes, on_tally: TallyObserver | None) -> OverlayAnswer:
        """`overlay` of one DICOM slice: planned as `predict_dicom` plans one slice, plus the drawing's cost."""
        with self._header_memory.claim() as headers:
            check = partial(plan_series, max_slices=1, refuse_slices=several_slices, rules=self.rules, claim=headers)
            plan: SeriesPlan = await self._cpu(check, [data], self.limits)
            if plan.file_errors:
                raise next(iter(plan.file_errors.values()))
            pixels = sum(header.pixels for header in plan.headers if isinstance(header, DicomHeader))
            async with self._reserve(plan.cost_bytes - plan.header_bytes + OVERLAY_BYTES_PER_PIXEL * pixels):
                series = await self._answer_planned_series(plan, build_seg=False, strict=True, on_tally=on_tally)
                if len(series.result.predictions) != 1:
                    raise InvalidSliceError(
                        f"the DICOM file holds {len(series.result.predictions)} slices; an overlay shows one"
                    )
                prediction, image = series.result.predictions[0], series.result.inputs[0].image
                png = await self._cpu(render_overlay_png, image, prediction.mask)
        return OverlayAnswer(png, prediction, series.tally)

    async def predict_files(
        self,
        uploads: Sequence[bytes | ServiceError],
        mask_format: schemas.MaskFormat,
        segmentation: bool = False,
        on_tally: TallyObserver | None = None,
        series: bool = False,
        seg_optional: bool = False,
    ) -> BatchAnswer | SeriesAnswer:
        """Several files: raster images one result each (a bad file gets its own error), or DICOM files as one series.

        With `series`, the raster images are the slices of one volume in order: the deeper than 8-bit ones are
        stretched over the series (`prepare_series_uploads`), and their masks get the series clean-up
        (`clean_series`); without it each is a slice on its own (`single_slice_answers`), a deep one stretched over
        itself. DICOM files always form a series.

        Raises
        ------
        MixedInputError
            If DICOM files and PNG/JPEG/TIFF images are mixed (files that are no image at all keep their own error).
        InvalidSliceError
            If the raster slices of a series differ in size.
        """
        dicom_count = sum(isinstance(item, bytes) and is_dicom(item) for item in uploads)
        if dicom_count:
            # Beside a DICOM series, a file that is no image at all (an empty lock file, a README.TXT of a patient
            # CD's folder) keeps its own error like a broken DICOM file; only an image of another kind mixes.
            uploads = [no_image_error(item) or item for item in uploads]
            raster_count = sum(isinstance(item, bytes) and not is_dicom(item) for item in uploads)
            if raster_count:
                raise MixedInputError(
                    f"a batch must hold either DICOM files or PNG/JPEG/TIFF images; got {dicom_count} DICOM and "
                    f"{raster_count} PNG/JPEG/TIFF files"
                )
            return await self._predict_dicom_files(uploads, mask_format, segmentation, on_tally, seg_optional)
        refuse_segmentation_of_raster(segmentation)
        return await self._predict_raster_files(uploads, mask_format, on_tally, series)

    async def _predict_dicom_files(
        self,
        uploads: Sequence[bytes | ServiceError],
        mask_format: schemas.MaskFormat,
        segmentation: bool,
        on_tally: TallyObserver | None,
        seg_optional: bool = False,
    ) -> SeriesAnswer:
        """`predict_files` for DICOM files: one series (`predict_dicom`), answered by its SEG when one was asked
        for and made, else slice by slice."""
        answer = await self.predict_dicom(uploads, build_seg=segmentation, on_tally=on_tally, seg_optional=seg_optional)
        if segmentation and answer.result.segmentations:
            return answer
        slices = await self._cpu(
            payloads.series_slices, answer.result.inputs, answer.result.predictions, self.threshold, mask_format
        )
        return replace(answer, slices=slices)

    async def _predict_raster_files(
        self,
        uploads: Sequence[bytes | ServiceError],
        mask_format: schemas.MaskFormat,
        on_tally: TallyObserver | None,
        series: bool,
    ) -> BatchAnswer:
        """`predict_files` for raster images: one result each, as the slices of one volume with `series`."""
        plan = await self._cpu(partial(plan_raster_uploads, series=series), uploads, self.limits)
        async with self._reserve(plan.cost_bytes):
            # A series' deeper than 8-bit slices are stretched over the series, as training's volumes were.
            prepare = prepare_series_uploads if series else prepare_uploads
            prepared = await self._cpu(prepare, plan.uploads, self.limits)
            if series:
                prepared = refuse_repeated_slices(prepared, uploads)
            decoded = [item for item in prepared if isinstance(item, PreparedSlice)]
            if series:
                check_one_size(prepared)
            predictions = await self.run_models(*stack_inputs(decoded)) if decoded else []
        breaks = raster_series_breaks(prepared) if series else set()
        models_said = predictions
        predictions = await self._cpu(
            partial(self.final_answers, models_said, clean_as_volume=series, order=None, breaks=breaks)
        )
        tally = self._count(models_said, predictions, len(prepared) - len(predictions), on_tally)
        ordered = in_request_order(prepared, predictions)
        outcomes = await self._cpu(payloads.payloads, ordered, self.threshold, mask_format)
        return BatchAnswer(ordered, outcomes, tally)

    async def predict_dicom(
        self,
        uploads: Sequence[bytes | ServiceError],
        build_seg: bool,
        strict: bool = False,
        on_tally: TallyObserver | None = None,
        one_slice: bool = False,
        seg_optional: bool = False,
    ) -> SeriesAnswer:
        """DICOM files as one series: the models on every slice, then the SEG and the volume; with `seg_optional`,
        a SEG the sources cannot give is no failure: the answer says why (`SeriesAnswer.segmentation_refused`).

        The headers are checked first (the series the models read, chosen by `self.rules`; slices against the
        request's limit, or against one with `one_slice`; the memory cost), counted in `header_memory` as they are
        read, then the chosen files decode within the memory budget (the cost less the headers). A file that
        cannot be read is left out and reported in `file_errors`; with `strict` it fails the call. Files of series
        not chosen are left out and reported in `SeriesAnswer.choice`.

        Raises
        ------
        app.errors.NoFlairSeriesError
            If no series can be read as FLAIR (`app.series.choice.choose_series`).
        """
        planning = {"max_slices": 1 if one_slice else None, "refuse_slices": several_slices, "rules": self.rules}
        gone = threading.Event()  # the client left: the headers not read yet are not read
        with self._header_memory.claim() as headers:
            plan_uploads = partial(plan_series, stop=gone, claim=headers, **planning)
            plan: SeriesPlan = await self._cpu(plan_uploads, uploads, self.limits, stop=gone)
            if strict and plan.file_errors:
                raise next(iter(plan.file_errors.values()))
            async with self._reserve(plan.cost_bytes - plan.header_bytes):
                replan = None if strict else partial(plan_headers, **planning)
                return await self._answer_planned_series(plan, build_seg, strict, on_tally, replan, seg_optional)

    async def _answer_planned_series(
        self,
        plan: SeriesPlan,
        build_seg: bool,
        strict: bool,
        on_tally: TallyObserver | None,
        replan: Callable[[list[DicomHeader | ServiceError], UploadLimits], SeriesPlan] | None = None,
        seg_optional: bool = False,
    ) -> SeriesAnswer:
        """Decode a planned series and answer it; the caller holds the plan's memory reservation. With `replan`, a
        chosen series none of whose files decode gives way to the next one the rules choose (`_read_next_series`)."""
        series = await self._cpu(decode_series, plan)
        if strict and series.file_errors:
            raise next(iter(series.file_errors.values()))
        if not series.inputs and series.file_errors and replan is not None:
            series = await self._read_next_series(plan, series, replan)
        if not series.inputs and series.file_errors:
            # An empty series would read as "no tumor"; raster batches keep an error per file instead.
            raise nothing_readable(series.file_errors)
        return await self.predict_series(series, build_seg, on_tally, seg_optional)

    async def _read_next_series(
        self,
        plan: SeriesPlan,
        failed: SeriesUploads,
        replan: Callable[[list[DicomHeader | ServiceError], UploadLimits], SeriesPlan],
    ) -> SeriesUploads:
        """The series the rules choose once the files of the chosen one are known not to decode (pixel data its
        headers did not betray), within the reservation already held; `failed` as it was when there is none, or it
        costs more, or it does not decode either (attack finding: a readable second FLAIR series was never tried)."""
        headers = [failed.file_errors.get(index, header) for index, header in enumerate(plan.headers)]
        try:
            other: SeriesPlan = await self._cpu(replan, headers, self.limits)
        except ServiceError:  # no other series the models can read: the first one's errors say why
            return failed
        if other.cost_bytes > plan.cost_bytes:
            return failed
        series = await self._cpu(decode_series, other)
        if not series.inputs:
            return failed
        unread = sum(index in plan.choice.used_files for index in failed.file_errors)
        note = f"the series chosen first could not be read ({unread} files); the next one the rules choose was read"
        return replace(series, choice=replace(series.choice, notes=(*series.choice.notes, note)))

    async def predict_series(
        self,
        series: SeriesUploads,
        build_seg: bool,
        on_tally: TallyObserver | None = None,
        seg_optional: bool = False,
    ) -> SeriesAnswer:
        """The models on every slice of an assembled series, then the SEG and the volume off the event loop. With
        `seg_optional`, sources a SEG cannot be made of give the answer without one, saying why: the models are not
        run again for it (review 71 F2, review 72 F3: the node and `output=dicom-sr` ran them twice)."""
        predictions: list[SlicePrediction] = []
        if series.inputs:
            batch, sizes = await self._cpu(model_inputs, series.inputs)
            predictions = in_stored_orientation(await self.run_models(batch, sizes), series.inputs)
        frames = [slice_input.reference for slice_input in series.inputs]
        order, choice, known = anatomical_order(frames), series.choice, slice_order_known(frames)
        if not known:  # e.g. Secondary Captures all numbered 1: which slices are neighbours is not known
            choice = replace(choice, notes=(*choice.notes, UNKNOWN_ORDER_NOTE))
        elif gaps_note := unplaced_gaps_note(frames):
            choice = replace(choice, notes=(*choice.notes, gaps_note))
        if pixels_note := non_square_pixels_note(frames):
            choice = replace(choice, notes=(*choice.notes, pixels_note))
        breaks = series_breaks(frames, order)
        models_said = predictions
        predictions = await self._cpu(
            partial(self.final_answers, models_said, clean_as_volume=known, order=order, breaks=breaks)
        )
        tally = self._count(models_said, predictions, len(series.file_errors), on_tally)
        summarise = partial(
            summarise_series, series.inputs, predictions, self.models.model_tags, result_origin=self.result_origin
        )
        segmentation_refused = ""
        try:
            result = await self._cpu(partial(summarise, build_seg=build_seg))
        except SegmentationInputError as refused:
            if not seg_optional:
                raise
            segmentation_refused = refused.message
            result = await self._cpu(partial(summarise, build_seg=False))
        if result.tumor_detected and result.tumor_volume_ml is None:  # a null alone says nothing of why
            choice = replace(choice, notes=(*choice.notes, VOLUME_UNKNOWN_NOTE))
        return SeriesAnswer(result, None, series.file_errors, tally, choice, segmentation_refused)

    def final_answers(
        self,
        predictions: list[SlicePrediction],
        clean_as_volume: bool,
        order: Sequence[int] | None = None,
        breaks: Collection[int] = (),
    ) -> list[SlicePrediction]:
        """The last step on the models' answers. With `clean_as_volume`, two or more slices get the series clean-up
        (`clean_series`, in anatomical `order`, not joining across `breaks`; None: the given order, as a client's
        raster series is); otherwise each slice is answered on its own, with the single-slice mask rule
        (`single_slice_answers`)."""
        if clean_as_volume and len(predictions) > 1:
            return clean_series(predictions, self.models.series_min_component_voxels, order, breaks)
        return single_slice_answers(
            predictions,
            self.models.single_slice_mask_min_probability,
            self.models.single_slice_min_component_pixels,
        )

    async def _predict_raster(self, data: bytes, keep_image: bool, on_tally: TallyObserver | None) -> SliceAnswer:
        plan = await self._cpu(plan_raster_uploads, [data], self.limits)
        if isinstance(plan.uploads[0], ServiceError):
            raise plan.uploads[0]
        async with self._reserve(plan.cost_bytes):
            return await self._predict_planned_raster(data, keep_image, on_tally)

    async def _predict_planned_raster(
        self, data: bytes, keep_image: bool, on_tally: TallyObserver | None
    ) -> SliceAnswer:
        """Decode a planned raster file and answer it; the caller holds the plan's memory reservation."""
        prepared = await self._cpu(prepare_upload, data, self.limits, keep_image)
        models_said = await self.run_models(prepared.model_input[None], [prepared.size])
        (prediction,) = self.final_answers(models_said, clean_as_volume=False)
        return SliceAnswer(prediction, prepared.image, self._count(models_said, [prediction], 0, on_tally))

    @asynccontextmanager
    async def _reserve(self, cost_bytes: int) -> AsyncIterator[None]:
        """Hold `cost_bytes` of the decoding memory budget (nothing without a budget)."""
        if self.budget is None:
            yield
            return
        async with self.budget.reserve(cost_bytes):
            yield

    async def _cpu(self, function: Callable[..., T], *arguments: object, stop: threading.Event | None = None) -> T:
        """CPU work: in a worker thread when offloading, else right here.

        A thread cannot be stopped: when the request is cancelled (its client has gone), this sets `stop` (for work
        that looks at it between steps) and still waits for the thread to end before passing the cancellation on, so
        that the memory reservation around the call is held as long as the thread holds the memory.
        """
        if not self.offload:
            return function(*arguments)
        work = asyncio.ensure_future(anyio.to_thread.run_sync(function, *arguments))
        cancelled = False
        while not work.done():
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                cancelled = True
                if stop is not None:
                    stop.set()
            except Exception:
                if not cancelled:
                    raise  # else the work's error (HeadersNotRead, once stopped) gives way to the cancellation
        if cancelled:
            if not work.cancelled():
                work.exception()  # retrieved: a thread stopped by `stop` (HeadersNotRead) is no error to report
            raise asyncio.CancelledError
        return work.result()

    def _count(
        self,
        models_said: Sequence[SlicePrediction],
        answers: Sequence[SlicePrediction],
        failed: int,
        on_tally: TallyObserver | None,
    ) -> Tally:
        """The tally of a request's models' answers and final answers, told to the service's and the call's
        observers."""
        tally = Tally.of(models_said, answers, failed)
        for observer in (self.on_predictions, on_tally):
            if observer is not None:
                observer(tally)
        return tally


def no_image_error(upload: bytes | ServiceError) -> ServiceError | None:
    """The error of an upload that is no image at all (refused already, empty, text, a zip ...), or None for a DICOM
    file or a PNG/JPEG/TIFF image (which may still fail to decode)."""
    if isinstance(upload, ServiceError):
        return upload
    if is_dicom(upload):
        return None
    try:
        sniff_format(upload)
    except ServiceError as error:
        return error
    return None


def in_request_order(
    prepared: Sequence[PreparedSlice | ServiceError], predictions: Sequence[SlicePrediction]
) -> list[SlicePrediction | ServiceError]:
    """Put each decoded file's prediction, and each failed file's error, back in request order."""
    remaining = iter(predictions)
    return [item if isinstance(item, ServiceError) else next(remaining) for item in prepared]


def refuse_segmentation_of_raster(segmentation: bool) -> None:
    if segmentation:
        raise SegmentationInputError(
            "output=dicom-seg and output=dicom-sr need DICOM input: a DICOM SEG or SR must reference the DICOM "
            "instances it describes"
        )
