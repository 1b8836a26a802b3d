"""The anatomical order of a series' frames, and the gaps in it: from one end of the volume to the other
(`anatomical_order`), whether that order is known (`slice_order_known`), where slices are missing (`series_breaks`,
`missing_slices`, `slices_missing_before`). The flow, the answer and the SEG writer read it. No HTTP here.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from app.dicom.dicom_frame import DicomFrame, offsets_along_normal
from app.dicom.tumor_volume import slice_spacing_mm

# Neighbouring slices of a series further apart than this many times its usual spacing have two or more slices
# missing between them: the series clean-up does not join their masks (`series_breaks`).
MAX_NEIGHBOUR_SPACINGS = 2.5


def anatomical_order(frames: Sequence[DicomFrame]) -> list[int]:
    """Indices of `frames` from one end of the volume to the other, which the series clean-up needs (it joins masks
    of neighbouring slices into 3-D components) and the request's file order does not give.

    By position along the slice normal when every frame has an Image Position (along the line the positions span
    when no frame has an orientation); else by Instance Number and frame number when every frame has one; else as
    given. Ties keep their given order.
    """
    offsets = offsets_along_normal(frames)
    if offsets is not None:
        return sorted(range(len(frames)), key=lambda index: offsets[index])
    numbers = [frame.header.get("InstanceNumber") for frame in frames]
    if all(isinstance(number, int) for number in numbers):
        return sorted(range(len(frames)), key=lambda index: (numbers[index], frames[index].frame_number))
    return list(range(len(frames)))


UNKNOWN_ORDER_NOTE = (
    "slice order unknown (no Image Position, and Instance Numbers missing or repeated): each slice answered on its "
    "own, without the series clean-up, and the tumor's reaching the series' end not judged"
)

VOLUME_UNKNOWN_NOTE = (
    "tumor volume not measured: the slices lack a Pixel Spacing, or the distance between them (Image Position, "
    "Spacing Between Slices or Slice Thickness) is not known"
)


def slice_order_known(frames: Sequence[DicomFrame]) -> bool:
    """Whether `anatomical_order` knows the order of the frames (one frame always is): positions for every frame,
    or an Instance Number (and frame number) that tells every frame apart. Otherwise it is the order they were sent
    in, which no clean-up across neighbouring slices may trust."""
    if len(frames) < 2 or offsets_along_normal(frames) is not None:
        return True
    numbers = [frame.header.get("InstanceNumber") for frame in frames]
    if not all(isinstance(number, int) for number in numbers):
        return False
    return len({(number, frame.frame_number) for number, frame in zip(numbers, frames, strict=True)}) == len(frames)


def series_breaks(frames: Sequence[DicomFrame], order: Sequence[int]) -> set[int]:
    """The places k in `order` (from `anatomical_order`) where frames `order[k]` and `order[k + 1]` are no
    neighbours: over `MAX_NEIGHBOUR_SPACINGS` times the series' spacing apart (`slice_spacing_mm`, as the tumor
    volume takes it), so two or more slices are missing between them
    (files that could not be read, or a client that sent part of a series).

    The series clean-up joins masks across one missing slice, as a tumor goes on through it, but not across a wider
    gap, where a blob would otherwise be kept for touching, in projection, a tumor many millimetres away. Without
    positions for every frame nothing is known of gaps: no breaks.
    """
    steps = _steps_in_spacings(frames, order)
    return set() if steps is None else {int(place) for place in np.flatnonzero(steps > MAX_NEIGHBOUR_SPACINGS)}


def missing_slices(frames: Sequence[DicomFrame]) -> int | None:
    """How many slices are missing between the frames' positions, counted in the series' spacing
    (`slice_spacing_mm`): files that could not be read, or a client that sent part of a series, so the tumor volume
    leaves them out. None for two frames or more without positions for every frame: nothing is known of gaps (not "0
    missing" for unplaced slices five of whose Instance Numbers were never sent); 0 for two frames unless they
    declare a Spacing Between Slices two or three times shorter than their distance."""
    if len(frames) > 1 and offsets_along_normal(frames) is None:
        return None
    return sum(slices_missing_before(frames))


def unplaced_gaps_note(frames: Sequence[DicomFrame]) -> str | None:
    """A note for slices whose gaps are not known (`missing_slices` is None), with how many Instance Numbers their
    numbers skip where those order them; None otherwise."""
    if missing_slices(frames) is not None:
        return None
    note = "slice positions unknown (no Image Position): slices missing between those sent are not counted"
    numbers = [frame.header.get("InstanceNumber") for frame in frames]
    if slice_order_known(frames) and all(isinstance(number, int) for number in numbers):
        distinct = sorted(set(numbers))
        if skipped := sum(later - earlier - 1 for earlier, later in itertools.pairwise(distinct)):
            note += f"; their Instance Numbers skip {skipped}, which may be slices not sent"
    return note


def slices_missing_before(frames: Sequence[DicomFrame]) -> list[int]:
    """For each frame, as given, the slices missing between it and the frame before it in `anatomical_order` (see
    `missing_slices`): where a viewer leaves room for them. All 0 when nothing is known of gaps."""
    missing = [0] * len(frames)
    order = anatomical_order(frames)
    steps = _steps_in_spacings(frames, order)
    if steps is not None:
        for place, step in enumerate(steps):
            missing[order[place + 1]] = max(0, round(float(step)) - 1)
    return missing


def _steps_in_spacings(frames: Sequence[DicomFrame], order: Sequence[int]) -> np.ndarray | None:
    """The distances between neighbours in `order`, in units of the series' spacing; None without positions for
    every frame or a spacing (two frames' distance is the spacing, unless they declare a shorter one)."""
    offsets = offsets_along_normal(frames)
    spacing = slice_spacing_mm(frames)
    if offsets is None or spacing is None:
        return None
    return np.abs(np.diff(offsets[list(order)])) / spacing
