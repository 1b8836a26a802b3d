"""Tumor volume of a series: mask pixels x pixel spacing x slice spacing, in millilitres."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from app.dicom.dicom_frame import MAX_LENGTH_MM, DicomFrame, offsets_along_normal

MM3_PER_ML = 1000.0
# How far from a whole multiple of the shortest gap a gap between slices may be and still count as slices missing
# there (rounding in the positions): a share of the shortest gap.
WHOLE_MULTIPLE_TOLERANCE = 0.1
# The most slice spacings a gap between two slices may span and still be read as slices missing there when the spacing
# is chosen; a wider one (a slice 0.5 mm from another, then 4.5 mm gaps) leaves the spacing to the median.
MAX_WHOLE_MULTIPLE = 3


def tumor_volume_ml(masks: Sequence[np.ndarray | None], slices: Sequence[DicomFrame]) -> float | None:
    """Tumor volume in millilitres: mask pixels x Pixel Spacing x slice spacing, summed over the slices.

    Slice spacing is the distance between neighbouring Image Positions (Patient) along the slice normal
    (`position_spacing_mm`), since that is how far apart the slices really are (Slice Thickness can differ from it
    when slices overlap or have gaps); when a slice has no position, or there are fewer than two distinct positions,
    it falls back to Spacing Between Slices, then Slice Thickness. Each 2-D mask stands for a slab one spacing thick,
    thinner where a neighbour lies closer (`slab_thicknesses_mm`).

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
    areas_mm2 = [0.0] * len(slices)
    for index, (mask, frame) in enumerate(zip(masks, slices, strict=True)):
        pixels = 0 if mask is None else int(np.count_nonzero(mask))
        if pixels == 0:
            continue
        if frame.pixel_spacing is None:
            return None
        areas_mm2[index] = pixels * frame.pixel_spacing[0] * frame.pixel_spacing[1]
    if not any(areas_mm2):
        return 0.0
    spacing = slice_spacing_mm(slices)
    if spacing is None:
        return None
    slabs = slab_thicknesses_mm(slices, spacing)
    volume = sum(area * slab for area, slab in zip(areas_mm2, slabs, strict=True)) / MM3_PER_ML
    # Positions far apart can still multiply past float range, and lengths far below a pixel's to 0: a tumor found
    # is never reported as 0.0 mL.
    return volume if math.isfinite(volume) and volume > 0.0 else None


def series_spacing_mm(slices: Sequence[DicomFrame]) -> float | None:
    """`slice_spacing_mm` where every slice's position is known, else None: the spacing a SEG's and an SR's Spacing
    Between Slices must agree with, as the tumor volume takes it (else a SEG could say 10 mm where the
    volume takes 5 mm slabs with a slice missing)."""
    return slice_spacing_mm(slices) if position_spacing_mm(slices) is not None else None


def slices_closer_than_spacing(slices: Sequence[DicomFrame]) -> bool:
    """Whether two slices lie closer together than the series' spacing (`series_spacing_mm`), beyond rounding: a
    stray slice, which no single spacing between slices describes.

    Why: a SEG over such slices would declare a regular 5 mm stack beside frames 0.5 mm apart, and a viewer that
    counts voxels x that spacing overstate the volume (by 17 % in one such series)."""
    spacing = series_spacing_mm(slices)
    gaps = _position_gaps(slices)
    if spacing is None or gaps is None:
        return False
    return bool(np.any(gaps < spacing * (1 - WHOLE_MULTIPLE_TOLERANCE)))


def slab_thicknesses_mm(slices: Sequence[DicomFrame], spacing: float) -> list[float]:
    """The slab each slice's mask stands for, in mm: half the distance to each neighbour along the slice normal, at
    most half the series' `spacing` on either side (a missing slice's slab is left out, and an end slice gets half a
    spacing beyond it); one spacing each without positions for every slice.

    Why: a stray slice 0.5 mm from another in a series 5 mm apart would count a whole 5 mm slab, the same tumor
    twice (+23 % of the volume in one series); in a regular series every slab is one spacing."""
    offsets = offsets_along_normal(slices)
    if offsets is None or len(slices) < 2:
        return [spacing] * len(slices)
    order = np.argsort(offsets, kind="stable")
    halves = np.minimum(np.diff(offsets[order]), spacing) / 2
    slabs = np.empty(len(slices))
    slabs[order] = np.concatenate([[spacing / 2], halves]) + np.concatenate([halves, [spacing / 2]])
    return slabs.tolist()


def slice_spacing_mm(slices: Sequence[DicomFrame]) -> float | None:
    """Distance between neighbouring slices in mm (see `tumor_volume_ml` for the order of sources), or None.

    Positions count only when every slice has one: the gaps between the slices that have one would take an
    unplaced slice's place for empty space (three slices 5 mm apart, the middle one unplaced: a 10 mm spacing for
    all three, and twice the volume). Positions that do not show a spacing of their own (two of them, or gaps that
    differ) leave it to the files' declared spacing where their gaps are whole multiples of it
    (`_declared_spacing_with_slices_missing`).
    """
    gap = position_spacing_mm(slices)
    if gap is not None:
        if gap > MAX_LENGTH_MM:
            return None  # positions a metre apart are no series of one head
        return _declared_spacing_with_slices_missing(slices, gap) or gap
    for frame in slices:
        if frame.spacing_between_slices:
            return float(frame.spacing_between_slices)
    for frame in slices:
        if frame.slice_thickness:
            return float(frame.slice_thickness)
    return None


def _declared_spacing_with_slices_missing(slices: Sequence[DicomFrame], gap: float) -> float | None:
    """The Spacing Between Slices every slice declares, where the positions do not show a spacing of their own (two
    positions, or gaps that differ) and every gap between them is one to `MAX_WHOLE_MULTIPLE` times it, some more
    than once (slices missing there); else None.

    Why: by the positions alone, FLAIR slices at 0 and 10 mm of a 5 mm series, the middle one missing, count no slice
    missing and make each slice a 10 mm slab, a volume above the whole series' (81 mL against 60); 5 of 11 slices
    5 mm apart (gaps of 10 and 15 mm) take the 12.5 mm median, "no slice missing" and 99.5 mL against 44.2.
    Positions that agree among themselves (every gap the same) keep their spacing, and a declared spacing shorter
    than the slices' thickness is none: some writers put the gap between slabs there, which would turn every pair of
    neighbours into slices missing."""
    gaps = _position_gaps(slices)
    declared = {frame.spacing_between_slices for frame in slices}
    if gaps is None or len(declared) != 1:
        return None
    step = declared.pop()
    thickness = max((frame.slice_thickness or 0.0 for frame in slices), default=0.0)
    if not step or step < thickness:
        return None
    if gaps.size > 1 and np.allclose(gaps, gap, rtol=WHOLE_MULTIPLE_TOLERANCE, atol=0):
        return None  # regular positions show the spacing themselves
    multiples = gaps / step
    whole = np.round(multiples)
    if (
        np.all(np.abs(multiples - whole) <= WHOLE_MULTIPLE_TOLERANCE)
        and whole.min() >= 1
        and whole.max() <= MAX_WHOLE_MULTIPLE
        and whole.max() >= 2
    ):
        return step
    return None


def position_spacing_mm(slices: Sequence[DicomFrame]) -> float | None:
    """The distance between neighbouring slices along the slice normal, from their Image Positions (Patient) alone;
    None unless every slice has one and at least two differ.

    The median distance between neighbours, unless at least half the distances are the shortest one and every other
    is two to `MAX_WHOLE_MULTIPLE` times it (within `WHOLE_MULTIPLE_TOLERANCE`): then the median of the shortest
    ones, the others being slices missing. Why: in a short series the median takes in the gaps of missing slices
    (slices at 0, 5 and 15 mm gave 7.5 mm, no slice missing and a volume half again too large), where a long one
    outvotes them; a stray slice between two others (gaps of 2.5, 2.5 and 5 mm, or 0.5, 4.5 and 5) is no spacing of
    the series (one slice half-way in a series of 23 would halve its spacing and volume).
    """
    gaps = _position_gaps(slices)
    if gaps is None:
        return None
    multiples = gaps / gaps.min()
    whole = np.round(multiples)
    shortest = whole == 1
    if (
        np.all(np.abs(multiples - whole) <= WHOLE_MULTIPLE_TOLERANCE)
        and whole.max() <= MAX_WHOLE_MULTIPLE
        and 2 * np.count_nonzero(shortest) >= gaps.size
    ):
        return float(np.median(gaps[shortest]))
    return float(np.median(gaps))


def _position_gaps(slices: Sequence[DicomFrame]) -> np.ndarray | None:
    """The distances between neighbouring positions along the slice normal, in anatomical order (positions closer
    than a nanometre are one); None unless every slice has a position and two differ."""
    offsets = offsets_along_normal(slices)
    if offsets is None:
        return None
    gaps = np.diff(np.sort(offsets))
    gaps = gaps[gaps > 1e-6]
    return gaps if gaps.size else None
