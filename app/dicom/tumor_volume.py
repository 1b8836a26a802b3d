"""Tumor volume of a series: mask pixels x pixel spacing x slice spacing, in millilitres."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from app.dicom.dicom_frame import MAX_LENGTH_MM, DicomFrame, offsets_along_normal

MM3_PER_ML = 1000.0


def tumor_volume_ml(masks: Sequence[np.ndarray | None], slices: Sequence[DicomFrame]) -> float | None:
    """Tumor volume in millilitres: mask pixels x Pixel Spacing x slice spacing, summed over the slices.

    Slice spacing is the median distance between neighbouring Image Positions (Patient) along the slice normal,
    since that is how far apart the slices really are (Slice Thickness can differ from it when slices overlap or
    have gaps); when a slice has no position, or there are fewer than two distinct positions, it falls back to
    Spacing Between Slices, then Slice Thickness. Each 2-D mask stands for a slab one spacing thick.

    Parameters
    ----------
    masks
        One per slice: 0/1 arrays at the slice's rows x columns, or None for an empty slice.
    slices
        The frames the masks belong to (for a `SliceInput`, its `reference`), of one series.

    Returns
    -------
    float or None
        Millilitres; 0.0 when every mask is empty; None when a non-empty slice lacks Pixel Spacing, no slice
        spacing can be found, or the product is not a finite number above 0.

    Raises
    ------
    ValueError
        If `masks` and `slices` differ in length.
    """
    if len(masks) != len(slices):
        raise ValueError(f"masks must be one per slice; got {len(masks)} masks for {len(slices)} slices")
    area_mm2, tumor_pixels = 0.0, 0
    for mask, frame in zip(masks, slices, strict=True):
        pixels = 0 if mask is None else int(np.count_nonzero(mask))
        if pixels == 0:
            continue
        if frame.pixel_spacing is None:
            return None
        tumor_pixels += pixels
        area_mm2 += pixels * frame.pixel_spacing[0] * frame.pixel_spacing[1]
    if tumor_pixels == 0:
        return 0.0
    spacing = slice_spacing_mm(slices)
    if spacing is None:
        return None
    volume = area_mm2 * spacing / MM3_PER_ML
    # Positions far apart can still multiply past float range, and lengths far below a pixel's to 0: a tumor found
    # is never reported as 0.0 mL.
    return volume if math.isfinite(volume) and volume > 0.0 else None


def slice_spacing_mm(slices: Sequence[DicomFrame]) -> float | None:
    """Distance between neighbouring slices in mm (see `tumor_volume_ml` for the order of sources), or None.

    Positions count only when every slice has one: the gaps between the slices that have one would take an
    unplaced slice's place for empty space (three slices 5 mm apart, the middle one unplaced: a 10 mm spacing for
    all three, and twice the volume).
    """
    gap = position_spacing_mm(slices)
    if gap is not None:
        return gap if gap <= MAX_LENGTH_MM else None  # positions a metre apart are no series of one head
    for frame in slices:
        if frame.spacing_between_slices:
            return float(frame.spacing_between_slices)
    for frame in slices:
        if frame.slice_thickness:
            return float(frame.slice_thickness)
    return None


def position_spacing_mm(slices: Sequence[DicomFrame]) -> float | None:
    """The median distance between neighbouring slices along the slice normal, from their Image Positions
    (Patient) alone; None unless every slice has one and at least two differ."""
    offsets = offsets_along_normal(slices)
    if offsets is None or len(offsets) < 2:
        return None
    gaps = np.diff(np.sort(offsets))
    gaps = gaps[gaps > 1e-6]
    return float(np.median(gaps)) if gaps.size else None
