"""What the models say about one DICOM series or volume: the result (`SeriesResult`, with the SEGs and the tumor
volume), the series clean-up of the slices' masks (`clean_series`) and its counterpart for slices answered on their
own (`single_slice_answers`), and the refusals of a series that cannot be answered (`nothing_readable`,
`several_slices`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

import numpy as np
from pydicom.dataset import Dataset

from app.core.gate import mask_shown_alone
from app.core.series_postprocessing import clean_series_masks
from app.dicom.dicom_seg import build_segmentations
from app.dicom.dicom_series import SliceInput
from app.dicom.slice_order import anatomical_order, missing_slices, slice_order_known
from app.dicom.tumor_volume import tumor_volume_ml
from app.errors import InvalidSliceError, ServiceError
from app.inference import SlicePrediction
from app.series.reading import too_many_slices
from app.series.rejection_notes import WITHDRAWAL_CODES
from app.uploads import request_file


@dataclass(frozen=True, eq=False)
class SeriesResult:
    """What the models say about a DICOM series.

    Attributes
    ----------
    inputs, predictions
        One prediction per input, in the same order.
    segmentations
        The SEGs (`app.dicom.dicom_seg.build_segmentations`): one covering the series, or one per positive slice for
        slices without a Frame of Reference; none when no slice is positive (or they were not asked for).
    tumor_volume_ml
        See `app.dicom.tumor_volume.tumor_volume_ml`; 0.0 when nothing was found.
    slices_missing
        Slices missing between those analysed (`app.dicom.slice_order.missing_slices`): the volume leaves them out;
        None when the slices have no positions (nothing is known of gaps).
    tumor_reaches_series_end
        A slice at either end of those analysed (in anatomical order) is positive: the tumor may go on beyond what
        was sent, and the volume may be cut short. False when the order is unknown (`slice_order_known`).
    result_origin
        Who the SEGs and the report are made for (`PredictionService.result_origin`), part of their UIDs.
    """

    inputs: list[SliceInput]
    predictions: list[SlicePrediction]
    segmentations: list[Dataset]
    tumor_volume_ml: float | None
    slices_missing: int | None = 0
    tumor_reaches_series_end: bool = False
    result_origin: str = ""

    @property
    def tumor_detected(self) -> bool:
        return any(prediction.detected for prediction in self.predictions)


def summarise_series(
    inputs: Sequence[SliceInput],
    predictions: Sequence[SlicePrediction],
    model_tags: dict[str, str],
    build_seg: bool = True,
    result_origin: str = "",
) -> SeriesResult:
    """The SEGs (when any slice is positive and `build_seg` is set) and the tumor volume of predicted slices.

    Raises
    ------
    app.errors.SegmentationInputError
        If a SEG is to be built and the inputs cannot be referenced by one (see
        `app.dicom.dicom_seg.build_segmentation`).
    """
    inputs, predictions = list(inputs), list(predictions)
    masks = [prediction.mask for prediction in predictions]
    detected = any(prediction.detected for prediction in predictions)
    segmentations = build_segmentations(inputs, masks, model_tags, result_origin) if detected and build_seg else []
    frames = [slice_input.reference for slice_input in inputs]
    order = anatomical_order(frames)
    return SeriesResult(
        inputs=inputs,
        predictions=predictions,
        segmentations=segmentations,
        tumor_volume_ml=tumor_volume_ml(masks, frames),
        slices_missing=missing_slices(frames),
        tumor_reaches_series_end=bool(order)
        and slice_order_known(frames)
        and (predictions[order[0]].detected or predictions[order[-1]].detected),
        result_origin=result_origin,
    )


def clean_series(
    predictions: Sequence[SlicePrediction],
    min_voxels: int,
    order: Sequence[int] | None = None,
    breaks: Collection[int] = (),
) -> list[SlicePrediction]:
    """The series clean-up (`app.core.series_postprocessing`) of the predictions of one volume's slices.

    `order` lists the predictions' indices in anatomical order (`app.dicom.slice_order.anatomical_order`); None: they
    are in that order already. `breaks`: the places in `order` with slices missing after them
    (`app.dicom.slice_order.series_breaks`). The answer keeps the predictions' own order. A slice whose mask the
    clean-up empties is reported as not detected (its probability stays as the classifier gave it): in a series, a
    slice is positive when its mask survives. A single slice is never changed.
    """
    order = list(range(len(predictions))) if order is None else list(order)
    if sorted(order) != list(range(len(predictions))):
        raise ValueError(f"order must list each of the {len(predictions)} predictions once; got {order}")
    seen = {predictions[index].seen for index in order}
    cleaned = clean_series_masks(
        [predictions[index].mask for index in order], min_voxels, breaks, seen.pop() if len(seen) == 1 else None
    )
    masks: list[np.ndarray | None] = [None] * len(predictions)
    for index, mask in zip(order, cleaned, strict=True):
        masks[index] = mask
    return [
        replace(prediction, detected=prediction.detected and mask is not None, mask=mask)
        for prediction, mask in zip(predictions, masks, strict=True)
    ]


def single_slice_answers(
    predictions: Sequence[SlicePrediction], min_probability: float, min_pixels: int = 0
) -> list[SlicePrediction]:
    """Slices answered on their own, which get no series clean-up: a mask only where the classifier's probability is
    at least `min_probability` (the manifest's `single_slice_mask_min_probability`), and without its pieces under
    `min_pixels` (`single_slice_min_component_pixels`, `drop_small_pieces`).

    Either way the slice stays detected (the decision keeps the classifier's threshold, chosen for sensitivity) and
    may carry no mask: on the validation patients the two together drew masks on 5 tumor-free slices of 201 instead
    of 14, at the same volume Dice (model card).
    """
    return [
        replace(
            prediction,
            mask=mask_shown_alone(
                prediction.mask, prediction.probability, min_probability, min_pixels, prediction.seen
            ),
        )
        for prediction in predictions
    ]


def nothing_readable(errors: dict[int, ServiceError]) -> ServiceError:
    """The error for a request none of whose files could be used: never an empty answer that reads as "no tumor".

    It has the kind (hence the status) of the first file's error that is no withdrawal by a rejection note (else of
    the first file's), and names every file's failure, each file as the
    other errors name one (`request_file`: by index and as a person counts, so the web page adds its name).
    """
    failures = [error for _, error in sorted(errors.items()) if error.code not in WITHDRAWAL_CODES]
    # A file that failed on its own tells the kind before one a note withdrew (review 61 F6: the page said every
    # image was withdrawn when one was unreadable).
    first = failures[0] if failures else errors[min(errors)]
    if len(errors) == 1:
        return first
    if len({error.message for error in errors.values()}) == 1:
        return type(first)(f"none of the {len(errors)} files could be used, each for the same reason: {first.message}")
    reasons = "; ".join(f"{request_file(index)}: {error.message}" for index, error in sorted(errors.items()))
    return type(first)(f"none of the {len(errors)} files could be used ({reasons})")


def several_slices(slices: int, max_slices: int) -> ServiceError:
    """The refusal of a request that holds more slices than it may: one slice for /v1/predict and the overlay, the
    inference queue's size for a series."""
    if max_slices == 1:
        return InvalidSliceError(
            f"the DICOM file holds {slices} slices; send it to /v1/predict/batch for one result per slice (or to "
            "/v1/predict with output=dicom-seg for its SEG)"
        )
    return too_many_slices(slices, max_slices)
