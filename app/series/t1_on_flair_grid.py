"""T1 frames that lie in FLAIR's planes but are stored turned, flipped or over a larger field of view, read in
FLAIR's pixel layout so the three channels of a slice pair.

A slice's three channels are stacked pixel for pixel, so they must share one pixel grid. Scanners and PACS
sometimes store a T1 series turned or mirrored against the FLAIR series (another Image Orientation (Patient) and
first-pixel Image Position), or over a larger field of view at the same pixel spacing. When every FLAIR pixel is a
T1 pixel (the same points in the patient, within a twentieth of a pixel), the T1 pixels are read in FLAIR's layout
(a flip, a turn by a multiple of 90 degrees, a transpose, a crop: no interpolation) and the frame takes FLAIR's
geometry. Anything else (another pixel spacing, an oblique turn, a field of view that does not cover FLAIR's) is
left as it came: the slices then do not pair, FLAIR is read alone, and `stored_otherwise_note` says why.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np

from app.dicom.dicom_frame import DicomFrame, patient_axis_positive, slice_normal
from app.dicom.dicom_series import POSITION_TOLERANCE_MM, SAME_PLANE_TOLERANCE

SUBPIXEL_TOLERANCE = 0.05
"""How far (in pixels) a FLAIR pixel's centre may lie from the T1 pixel read for it: rounding in the stored
positions, never another sampling."""


def turned_note(series: Sequence[str]) -> str:
    """The note for T1 `series` (their names: "pre-contrast (series 2)") read in FLAIR's layout."""
    one = len(series) == 1
    return (
        f"T1 {' and '.join(series)} {'is' if one else 'are'} stored turned, flipped or over a larger field of view "
        f"than FLAIR in FLAIR's planes: {'its' if one else 'their'} pixels were read in FLAIR's layout (the same "
        "points, no interpolation)"
    )


def t1_frames_in_flair_layout(frames: Sequence[DicomFrame], flair_uid: str) -> Iterator[tuple[int, DicomFrame]]:
    """Each T1 frame of `frames` that lies in a FLAIR frame's plane, stored otherwise, read in that FLAIR frame's
    layout (`_on_grid_of`), as (its index in `frames`, the frame read), one at a time: a caller that puts it in the
    stored frame's place lets the stored one go before the next is made (both at once would hold every T1 frame
    twice, outside the decoding budget)."""
    flair = FlairPlanes([frame for frame in frames if frame.series_instance_uid == flair_uid])
    if flair.crowded:
        return  # refused later (several FLAIR frames at one slice position); each T1 frame would meet them all
    for index, frame in enumerate(frames):
        if frame.series_instance_uid == flair_uid:
            continue
        candidates = flair.in_plane_of(frame)
        on_grid = next((found for other in candidates if (found := _on_grid_of(frame, other)) is not None), None)
        if on_grid is not None:
            yield index, on_grid


class FlairPlanes:
    """FLAIR's frames by Frame of Reference and place along the series' normal, so each T1 frame is compared with the
    FLAIR frames of its own plane only (not with every FLAIR frame: 400 slices a series took 15 s that way).

    One normal for the whole series (`slice_normal`, whatever the files' order), not one a frame: at 45 degrees,
    frames whose orientations were rounded differently took opposite signs, and a T1 frame missed its FLAIR plane.
    `crowded`: several FLAIR frames at one position, which the series reading refuses; pairing is not tried then
    (each T1 frame would be compared with all of them). Frames at one place but elsewhere in the plane (two fields of
    view) are two slices: `in_plane_of` gives a T1 frame at most `MAX_CANDIDATES` of them to try."""

    MAX_CANDIDATES = 4

    def __init__(self, flair: Sequence[DicomFrame]) -> None:
        self.by_reference: dict[str, tuple[list[float], list[DicomFrame]]] = {}
        self.normal = _unit_normal(flair)
        self.unplaced = self.normal is None or any(
            frame.image_position is None or frame.image_orientation is None for frame in flair
        )
        self.crowded = False
        if self.unplaced:
            return
        placed = sorted(
            (frame.frame_of_reference_uid, self._along(frame), index, frame) for index, frame in enumerate(flair)
        )
        for reference, along, _, frame in placed:
            offsets, frames = self.by_reference.setdefault(reference, ([], []))
            recent = zip(offsets[-self.MAX_CANDIDATES :], frames[-self.MAX_CANDIDATES :], strict=True)
            self.crowded = self.crowded or any(
                along - before <= POSITION_TOLERANCE_MM and _same_position(frame, other) for before, other in recent
            )
            offsets.append(along)
            frames.append(frame)

    def _along(self, frame: DicomFrame) -> float:
        return float(np.dot(self.normal, frame.image_position))  # type: ignore[arg-type]

    def in_plane_of(self, frame: DicomFrame) -> list[DicomFrame]:
        """The FLAIR frames of `frame`'s Frame of Reference at its place along FLAIR's normal (within
        `POSITION_TOLERANCE_MM`); whether their planes are parallel is for the caller to check."""
        if frame.image_position is None or frame.frame_of_reference_uid not in self.by_reference:
            return []
        offsets, frames = self.by_reference[frame.frame_of_reference_uid]
        along = self._along(frame)
        start = bisect.bisect_left(offsets, along - POSITION_TOLERANCE_MM)
        end = bisect.bisect_right(offsets, along + POSITION_TOLERANCE_MM)
        return frames[start : min(end, start + self.MAX_CANDIDATES)]


def _same_position(frame: DicomFrame, other: DicomFrame) -> bool:
    return bool(np.allclose(frame.image_position, other.image_position, atol=POSITION_TOLERANCE_MM))  # type: ignore[arg-type]


def _unit_normal(frames: Sequence[DicomFrame]) -> np.ndarray | None:
    """The frames' unit normal (`slice_normal`), pointing along its patient axis's positive way; None without one."""
    normal = slice_normal(frames)
    length = 0.0 if normal is None else float(np.linalg.norm(normal))
    return None if normal is None or length == 0 else patient_axis_positive(normal / length)


def _on_grid_of(t1: DicomFrame, flair: DicomFrame) -> DicomFrame | None:
    """`t1` read in `flair`'s pixel layout, with `flair`'s geometry, when `t1` lies in `flair`'s plane, is stored
    otherwise, and holds every `flair` pixel's point; else None (also when it is stored the same way: nothing to do).

    FLAIR pixel (r, c) lies at O + c dc X + r dr Y (Image Position O, row and column directions X and Y, Pixel
    Spacing dr, dc); its indices in the T1 frame are an affine map of (r, c), which must be a signed permutation
    (a flip, a turn, a transpose) plus a whole-pixel shift.
    """
    geometry = _geometry(t1), _geometry(flair)
    if geometry[0] is None or geometry[1] is None or t1.frame_of_reference_uid != flair.frame_of_reference_uid:
        return None
    (origin_t, x_t, y_t, rows_t, columns_t), (origin_f, x_f, y_f, rows_f, columns_f) = geometry
    normal_t = np.cross(x_t / np.linalg.norm(x_t), y_t / np.linalg.norm(y_t))
    if abs(float(np.dot(origin_f - origin_t, normal_t))) > POSITION_TOLERANCE_MM:
        return None  # another plane
    tilt = max(abs(float(np.dot(step / np.linalg.norm(step), normal_t))) for step in (x_f, y_f))
    if tilt > SAME_PLANE_TOLERANCE:
        return None  # a plane through FLAIR's first pixel, tilted: its far side lies in other slices
    # T1 (row, column) of FLAIR (row, column): matrix @ (r, c) + shift, in T1 pixels.
    matrix = np.array(
        [
            [np.dot(y_f, y_t) / np.dot(y_t, y_t), np.dot(x_f, y_t) / np.dot(y_t, y_t)],
            [np.dot(y_f, x_t) / np.dot(x_t, x_t), np.dot(x_f, x_t) / np.dot(x_t, x_t)],
        ]
    )
    shift = np.array(
        [np.dot(origin_f - origin_t, y_t) / np.dot(y_t, y_t), np.dot(origin_f - origin_t, x_t) / np.dot(x_t, x_t)]
    )
    whole_matrix, whole_shift = np.rint(matrix), np.rint(shift)
    corners = np.array([[0, 0, rows_f - 1, rows_f - 1], [0, columns_f - 1, 0, columns_f - 1]])
    drift = (matrix - whole_matrix) @ corners + (shift - whole_shift)[:, None]  # each corner's miss, in T1 pixels
    if (
        np.abs(drift).max() > SUBPIXEL_TOLERANCE
        or sorted(np.abs(whole_matrix).sum(axis=0)) != [1, 1]
        or sorted(np.abs(whole_matrix).sum(axis=1)) != [1, 1]
    ):
        return None  # another spacing, an oblique turn, or between pixels (at a corner, so anywhere)
    if np.array_equal(whole_matrix, np.eye(2)) and not whole_shift.any() and (rows_t, columns_t) == (rows_f, columns_f):
        return None  # stored as FLAIR is: the pairing takes it as it is
    whole, offset = whole_matrix.astype(int), whole_shift.astype(int)
    reached = whole @ corners + offset[:, None]  # the T1 pixels of FLAIR's corners: the map is affine
    if reached.min() < 0 or reached[0].max() >= rows_t or reached[1].max() >= columns_t:
        return None  # FLAIR's field of view reaches past the T1 frame's
    return replace(
        t1,
        values=_read_in_layout(t1.values, whole, offset, rows_f, columns_f),
        image_position=flair.image_position,
        image_orientation=flair.image_orientation,
        pixel_spacing=flair.pixel_spacing,
    )


def _read_in_layout(values: np.ndarray, whole: np.ndarray, offset: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """The T1 `values` at (row, column) = `whole` @ (r, c) + `offset` for each FLAIR pixel (r, c) of a `rows` x
    `columns` frame, `whole` a signed permutation: a T1 row follows FLAIR's row alone (a flip) or its column alone (a
    transpose). Read through two index vectors, one copy the size of the result: full index grids took 48 bytes a
    FLAIR pixel, outside the decoding budget."""
    if whole[0, 0]:
        picked = values[np.ix_(offset[0] + whole[0, 0] * np.arange(rows), offset[1] + whole[1, 1] * np.arange(columns))]
        return np.ascontiguousarray(picked)
    # transposed: T1 row = whole[0, 1] * c + offset[0], T1 column = whole[1, 0] * r + offset[1]
    picked = values[np.ix_(offset[0] + whole[0, 1] * np.arange(columns), offset[1] + whole[1, 0] * np.arange(rows))]
    return np.ascontiguousarray(picked.T)


def _geometry(frame: DicomFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int] | None:
    """The frame's first-pixel position, its row direction and column direction scaled by the pixel spacing (one
    pixel's step along a row, and down a column), and its rows and columns; None without all of them."""
    if frame.image_position is None or frame.image_orientation is None or frame.pixel_spacing is None:
        return None
    row_spacing, column_spacing = (float(value) for value in frame.pixel_spacing)
    if row_spacing <= 0 or column_spacing <= 0 or frame.values.ndim != 2:
        return None
    orientation = np.asarray(frame.image_orientation, dtype=np.float64)
    if np.linalg.norm(orientation[:3]) == 0 or np.linalg.norm(orientation[3:]) == 0:
        return None
    along_row = orientation[:3] / np.linalg.norm(orientation[:3]) * column_spacing
    down_column = orientation[3:] / np.linalg.norm(orientation[3:]) * row_spacing
    rows, columns = frame.values.shape
    return np.asarray(frame.image_position, dtype=np.float64), along_row, down_column, rows, columns


def stored_otherwise_note(frames: Sequence[DicomFrame], flair_uid: str) -> str:
    """The note's explanation of T1 frames that could not be read in FLAIR's layout, in terms a PACS can tell its
    users: T1 series in another Frame of Reference than FLAIR's; or every T1 frame in a plane of a FLAIR frame and
    some stored otherwise than the FLAIR frame of its plane (another orientation or first-pixel position) at another
    pixel spacing or not covering FLAIR's field of view; else "" (a slice missing, another pixel spacing in a layout
    like FLAIR's: the error says so)."""
    flair_frames = [frame for frame in frames if frame.series_instance_uid == flair_uid]
    t1 = [frame for frame in frames if frame.series_instance_uid != flair_uid]
    if not t1 or not flair_frames:
        return ""
    flair_references = {frame.frame_of_reference_uid for frame in flair_frames}
    if any(frame.frame_of_reference_uid not in flair_references for frame in t1):
        return (
            "the T1 series are in another Frame of Reference than FLAIR (Frame of Reference UID): their positions "
            "cannot be compared with FLAIR's"
        )
    flair = FlairPlanes(flair_frames)
    if flair.unplaced or flair.crowded:
        return ""
    stored_otherwise = False
    for frame in t1:
        normal = _unit_normal([frame])
        if normal is None or frame.image_position is None:
            return ""
        same_plane = [
            other
            for other in flair.in_plane_of(frame)
            if abs(float(np.dot(normal, _unit_normal([other])))) > 0.9999  # type: ignore[arg-type]
        ]
        if not same_plane:
            return ""
        stored_otherwise = stored_otherwise or not any(
            np.allclose(frame.image_orientation, other.image_orientation, atol=SAME_PLANE_TOLERANCE)  # type: ignore[arg-type]
            and np.allclose(frame.image_position, other.image_position, atol=POSITION_TOLERANCE_MM)  # type: ignore[arg-type]
            for other in same_plane
        )
    if not stored_otherwise:
        return ""
    return (
        "the T1 series lie in FLAIR's planes but are stored turned, flipped or over another field of view, at "
        "another pixel spacing or not covering FLAIR's: each slice must have one pixel grid in all three (the same "
        "Pixel Spacing, and FLAIR's field of view within the T1 slices')"
    )
