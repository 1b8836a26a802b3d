"""DICOM Segmentation output: the predicted masks of one series as one binary, multi-frame DICOM SEG (highdicom).

The SEG has one segment (SNOMED CT "Morphologically abnormal structure" / "Neoplasm" in the brain), names the models
that made it (Algorithm Identification: segmenter name and version, the classifier tag as a parameter), refers to
every source frame, and keeps empty frames (one SEG frame per source frame) so that viewers which pair frames by
index do not shift it. `segment_series` runs the predictor over a series and builds the SEG only when a slice is
positive; `read_segmentation_masks` decodes a SEG back into arrays, and `tumor_volume_ml` turns the masks into the
figure a radiologist asks for.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from app.dicom_conformance import complete_segmentation, with_type2_attributes
from app.dicom_input import DicomFrame, SliceInput
from app.errors import ErrorKind, ServiceError

if TYPE_CHECKING:
    from app.inference import Predictor, SlicePrediction

MANUFACTURER = "brain-tumor-service"
SEG_SERIES_NUMBER = 9901  # a fixed, high number: viewers list the SEG after the scanner's own series
SEG_SERIES_DESCRIPTION = "Tumor segmentation (research use only)"
SEGMENT_LABEL = "Tumor"
CONTENT_LABEL = "TUMOR"
SEGMENT_NUMBER = 1
MM3_PER_ML = 1000.0
DEFAULT_BATCH_SIZE = 32


class SegmentationInputError(ServiceError):
    """The slices cannot be covered by one DICOM SEG (e.g. they come from several series)."""

    code = "invalid_segmentation_input"
    kind = ErrorKind.INVALID_INPUT


def software_version() -> str:
    """The installed service's version, written into the SEG's Software Versions."""
    try:
        return metadata.version(MANUFACTURER)
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


@dataclass(frozen=True, eq=False)
class SeriesResult:
    """What the models say about a DICOM series.

    Attributes
    ----------
    inputs, predictions
        One prediction per input, in the same order.
    segmentation
        The SEG, or None when no slice is positive (or it was not asked for).
    tumor_volume_ml
        See `tumor_volume_ml`; 0.0 when nothing was found.
    """

    inputs: list[SliceInput]
    predictions: list[SlicePrediction]
    segmentation: Dataset | None
    tumor_volume_ml: float | None

    @property
    def tumor_detected(self) -> bool:
        return any(prediction.detected for prediction in self.predictions)


def segment_series(
    predictor: Predictor,
    inputs: Sequence[SliceInput],
    build_seg: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> SeriesResult:
    """Predict every slice of a series and, when any is positive and `build_seg` is set, build its SEG.

    Slices go to the models `batch_size` at a time, so a long series does not hold all its model inputs at once.

    Raises
    ------
    SegmentationInputError
        If a SEG is to be built and the inputs cannot share one (see `build_segmentation`).
    """
    inputs = list(inputs)
    predictions: list[SlicePrediction] = []
    for start in range(0, len(inputs), batch_size):
        predictions.extend(predictor.predict([slice_input.image for slice_input in inputs[start : start + batch_size]]))
    return summarise_series(inputs, predictions, predictor.model_tags, build_seg=build_seg)


def summarise_series(
    inputs: Sequence[SliceInput],
    predictions: Sequence[SlicePrediction],
    model_tags: dict[str, str],
    build_seg: bool = True,
) -> SeriesResult:
    """The SEG (when any slice is positive and `build_seg` is set) and the tumor volume of predicted slices."""
    inputs, predictions = list(inputs), list(predictions)
    masks = [prediction.mask for prediction in predictions]
    detected = any(prediction.detected for prediction in predictions)
    segmentation = build_segmentation(inputs, masks, model_tags) if detected and build_seg else None
    volume = tumor_volume_ml(masks, [slice_input.reference for slice_input in inputs])
    return SeriesResult(inputs=inputs, predictions=predictions, segmentation=segmentation, tumor_volume_ml=volume)


def build_segmentation(
    inputs: Sequence[SliceInput],
    masks: Sequence[np.ndarray | None],
    model_tags: Mapping[str, str],
) -> Dataset:
    """Build one binary DICOM SEG covering the series the inputs come from.

    Parameters
    ----------
    inputs
        Slices from `app.dicom_input.prepare_inputs`; their FLAIR frames (`SliceInput.reference`) must all come
        from one series, and either all be single-frame instances or all be frames of one multi-frame instance.
        Pre- and post-contrast frames are recorded as further source images.
    masks
        One per input: uint8/bool 0/1 at the reference frame's rows x columns, or None for "nothing found" (the
        classifier was negative), written as an empty frame.
    model_tags
        `Predictor.model_tags`: ``{"classifier": "name@version", "segmenter": "name@version"}``.

    Returns
    -------
    highdicom.seg.Segmentation
        A pydicom Dataset; write it with `segmentation_to_bytes`.

    Raises
    ------
    SegmentationInputError
        If there are no inputs, or their FLAIR frames come from several series or mix instance kinds.
    ValueError
        If `masks` does not match `inputs` in number or in size.
    """
    if not inputs:
        raise SegmentationInputError("a DICOM SEG needs at least one source slice; got none")
    if len(masks) != len(inputs):
        raise ValueError(f"masks must be one per input; got {len(masks)} masks for {len(inputs)} inputs")
    references = [slice_input.reference for slice_input in inputs]
    series = {frame.series_instance_uid for frame in references}
    if len(series) != 1:
        raise SegmentationInputError(f"a DICOM SEG covers one series; the FLAIR slices come from {len(series)} series")
    source_images, pixel_array = _source_images_and_pixels(references, masks)
    further = _unique_headers(
        frame for slice_input in inputs for frame in slice_input.channels if frame is not slice_input.reference
    )
    # highdicom reads Type 2 patient/study attributes without a default: de-identified sources often lack them.
    source_images = [with_type2_attributes(image) for image in source_images]
    further = [with_type2_attributes(image) for image in further]
    segmenter_name, segmenter_version = _split_tag(model_tags.get("segmenter", "segmenter@unknown"))
    algorithm = hd.AlgorithmIdentificationSequence(
        name=segmenter_name,
        family=codes.cid7162.ArtificialIntelligence,
        version=segmenter_version,
        source=MANUFACTURER,
        parameters={role: tag for role, tag in sorted(model_tags.items()) if role != "segmenter"} or None,
    )
    description = hd.seg.SegmentDescription(
        segment_number=SEGMENT_NUMBER,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[codes.SCT.Brain],
    )
    try:
        segmentation = hd.seg.Segmentation(
            source_images=source_images,
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=generate_uid(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=f"{segmenter_name} {segmenter_version}"[:64],
            software_versions=software_version(),
            # Identifies the model pair (not a machine): the same models give the same serial everywhere.
            device_serial_number=hashlib.sha256(json.dumps(dict(model_tags), sort_keys=True).encode()).hexdigest()[:16],
            content_label=CONTENT_LABEL,
            content_description=SEG_SERIES_DESCRIPTION,
            omit_empty_frames=False,  # one SEG frame per source frame, so frame-by-index viewers stay aligned
            further_source_images=further or None,
        )
    except ValueError as error:  # highdicom's checks on the sources, e.g. pre/post-contrast from another study
        raise SegmentationInputError(f"the slices cannot be covered by one DICOM SEG: {error}") from error
    segmentation.SeriesDescription = SEG_SERIES_DESCRIPTION
    return complete_segmentation(segmentation, source_images)  # Patient Orientation for sources without geometry


def segmentation_to_bytes(segmentation: Dataset) -> bytes:
    """Encode a SEG as a DICOM Part 10 file (preamble, ``DICM``, file meta), e.g. for an HTTP response or STOW-RS."""
    buffer = io.BytesIO()
    segmentation.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def read_segmentation_masks(segmentation: Dataset | bytes) -> dict[str, np.ndarray]:
    """Decode a binary SEG into masks per referenced source instance.

    Parameters
    ----------
    segmentation
        The SEG as a dataset or as Part 10 bytes.

    Returns
    -------
    dict
        Referenced SOP Instance UID -> uint8 0/1 array (frames, rows, columns): one frame for a single-frame source,
        the referenced frames in frame-number order for a multi-frame one.
    """
    if isinstance(segmentation, bytes | bytearray):
        seg = hd.seg.segread(io.BytesIO(segmentation))
    else:
        seg = hd.seg.Segmentation.from_dataset(segmentation, copy=True)
    referenced: dict[str, set[int]] = {}
    for frame_group in seg.PerFrameFunctionalGroupsSequence:
        for derivation in frame_group.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                frames = referenced.setdefault(str(source.ReferencedSOPInstanceUID), set())
                if "ReferencedFrameNumber" in source:
                    value = source.ReferencedFrameNumber
                    frames.update(int(number) for number in (value if isinstance(value, Sequence) else [value]))
    masks = {}
    for sop_instance_uid, frame_numbers in referenced.items():
        if frame_numbers:
            pixels = seg.get_pixels_by_source_frame(
                sop_instance_uid, source_frame_numbers=sorted(frame_numbers), segment_numbers=[SEGMENT_NUMBER]
            )
        else:
            pixels = seg.get_pixels_by_source_instance([sop_instance_uid], segment_numbers=[SEGMENT_NUMBER])
        masks[sop_instance_uid] = (np.asarray(pixels)[..., 0] > 0).astype(np.uint8)
    return masks


def tumor_volume_ml(masks: Sequence[np.ndarray | None], slices: Sequence[DicomFrame]) -> float | None:
    """Tumor volume in millilitres: mask pixels x Pixel Spacing x slice spacing, summed over the slices.

    Slice spacing is the median distance between neighbouring Image Positions (Patient) along the slice normal,
    since that is how far apart the slices really are (Slice Thickness can differ from it when slices overlap or
    have gaps); with fewer than two distinct positions it falls back to Spacing Between Slices, then Slice
    Thickness. Each 2-D mask stands for a slab one spacing thick.

    Parameters
    ----------
    masks
        One per slice: 0/1 arrays at the slice's rows x columns, or None for an empty slice.
    slices
        The frames the masks belong to (for a `SliceInput`, its `reference`), of one series.

    Returns
    -------
    float or None
        Millilitres; 0.0 when every mask is empty; None when a non-empty slice lacks Pixel Spacing or no slice
        spacing can be found.

    Raises
    ------
    ValueError
        If `masks` and `slices` differ in length.
    """
    if len(masks) != len(slices):
        raise ValueError(f"masks must be one per slice; got {len(masks)} masks for {len(slices)} slices")
    area_mm2 = 0.0
    for mask, frame in zip(masks, slices, strict=True):
        pixels = 0 if mask is None else int(np.count_nonzero(mask))
        if pixels == 0:
            continue
        if frame.pixel_spacing is None:
            return None
        area_mm2 += pixels * frame.pixel_spacing[0] * frame.pixel_spacing[1]
    if area_mm2 == 0.0:
        return 0.0
    spacing = slice_spacing_mm(slices)
    return None if spacing is None else area_mm2 * spacing / MM3_PER_ML


def slice_spacing_mm(slices: Sequence[DicomFrame]) -> float | None:
    """Distance between neighbouring slices in mm (see `tumor_volume_ml` for the order of sources), or None."""
    positions = [frame.image_position for frame in slices if frame.image_position is not None]
    if len(positions) >= 2:
        orientation = next((frame.image_orientation for frame in slices if frame.image_orientation), None)
        points = np.asarray(positions, dtype=np.float64)
        if orientation is not None:
            normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
            offsets = np.sort(points @ normal)
            gaps = np.diff(offsets)
        else:  # no orientation: order the positions along the line they span
            gaps = np.linalg.norm(
                np.diff(points[np.argsort(np.linalg.norm(points - points[0], axis=1))], axis=0), axis=1
            )
        gaps = np.abs(gaps[np.abs(gaps) > 1e-6])
        if gaps.size:
            return float(np.median(gaps))
    for frame in slices:
        if frame.spacing_between_slices:
            return float(frame.spacing_between_slices)
    for frame in slices:
        if frame.slice_thickness:
            return float(frame.slice_thickness)
    return None


def _split_tag(tag: str) -> tuple[str, str]:
    name, _, version = tag.rpartition("@")
    return (name, version) if name else (tag, "unknown")


def _unique_headers(frames: Iterable[DicomFrame]) -> list[Dataset]:
    headers: dict[str, Dataset] = {}
    for frame in frames:
        headers.setdefault(frame.sop_instance_uid, frame.header)
    return list(headers.values())


def _source_images_and_pixels(
    references: Sequence[DicomFrame], masks: Sequence[np.ndarray | None]
) -> tuple[list[Dataset], np.ndarray]:
    """highdicom takes either single-frame sources with one plane each, or one multi-frame source with all frames."""
    for mask, frame in zip(masks, references, strict=True):
        if mask is not None and mask.shape != frame.values.shape:
            raise ValueError(f"mask must match its slice's rows x columns {frame.values.shape}; got {mask.shape}")
    instances = {frame.sop_instance_uid for frame in references}
    if all(frame.is_multiframe for frame in references):
        if len(instances) != 1:
            raise SegmentationInputError(
                f"a DICOM SEG of a multi-frame source covers one instance; the slices come from {len(instances)}"
            )
        first = references[0]
        pixels = np.zeros((first.number_of_frames, *first.values.shape), dtype=np.uint8)
        for mask, frame in zip(masks, references, strict=True):
            if mask is not None:
                pixels[frame.frame_number - 1] = mask > 0
        return [first.header], pixels
    if any(frame.is_multiframe for frame in references):
        raise SegmentationInputError("a DICOM SEG cannot mix single-frame and multi-frame source instances")
    if len({frame.values.shape for frame in references}) != 1:
        raise SegmentationInputError("the slices of one DICOM SEG must share rows x columns")
    pixels = np.zeros((len(references), *references[0].values.shape), dtype=np.uint8)
    for index, mask in enumerate(masks):
        if mask is not None:
            pixels[index] = mask > 0
    return [frame.header for frame in references], pixels
