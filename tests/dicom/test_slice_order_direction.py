"""Slices come in one order however their series is stored: along the patient's axes, not along row x column."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from app.dicom.dicom_frame import DicomFrame, offsets_along_normal
from app.dicom.slice_order import anatomical_order


def frames(orientation: tuple[float, ...] | None, heights: list[float]) -> list[DicomFrame]:
    header = Dataset()
    header.SeriesInstanceUID, header.FrameOfReferenceUID = "1.2", "1.2.3"
    values = np.zeros((4, 4), np.float32)
    return [DicomFrame(values, header, 1, 1, (0.0, 0.0, z), orientation, (1.0, 1.0), 5.0, None) for z in heights]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "orientation",
    [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 1, 0), (1, 0, 0, 0, -1, 0), (0, 1, 0, 1, 0, 0), None],
    ids=["as scanned", "mirrored left-right", "rows flipped", "transposed", "no orientation"],
)
def test_axial_slices_are_ordered_from_the_feet_to_the_head_however_stored(orientation) -> None:
    """Browser review 59 F5: a series stored mirrored left-right has row x column pointing to the feet, and its
    slices were numbered the other way round ("slice 13 of 23" was "slice 11"); without an orientation, the order
    the files came in decided."""
    heights = [10.0, 0.0, 5.0]
    stored = frames(orientation, heights)

    offsets = offsets_along_normal(stored)

    np.testing.assert_allclose(offsets, heights)
    assert anatomical_order(stored) == [1, 2, 0]
    assert anatomical_order(stored[::-1]) == [1, 0, 2]  # the same slices sent in the other order


def test_an_oblique_series_at_45_degrees_keeps_its_order_whatever_order_its_files_came_in() -> None:
    """Review 69 F1: the sign followed the largest component, which rounding in the 6th digit (file by file) decides
    at 45 degrees, and the first file's orientation was used: the same files sent in reverse came back reversed."""
    header = Dataset()
    header.SeriesInstanceUID, header.FrameOfReferenceUID = "1.2", "1.2.3"
    values = np.zeros((4, 4), np.float32)
    orientations = [(1, 0, 0, 0, -0.707107, -0.707106), (1, 0, 0, 0, -0.707106, -0.707107)]
    normal = np.array([0.0, 0.70710678, -0.70710678])
    stored = [
        DicomFrame(values, header, 1, 1, tuple(5.0 * step * normal), orientations[step % 2], (1.0, 1.0), 5.0, None)  # type: ignore[arg-type]
        for step in range(4)
    ]

    forward = [stored[index] for index in anatomical_order(stored)]
    backward = [stored[::-1][index] for index in anatomical_order(stored[::-1])]

    assert forward == backward


def test_orientations_rounded_either_side_of_45_degrees_give_one_order_whatever_file_comes_first() -> None:
    """Attack review 62 F3: the first file's orientation gave the normal, and two orientations 1e-5 apart sat either
    side of `patient_axis_positive`'s tie: swapping the first two files reversed the order and the offsets' sign."""
    header = Dataset()
    header.SeriesInstanceUID, header.FrameOfReferenceUID = "1.2", "1.2.3"
    values = np.zeros((4, 4), np.float32)
    orientations = [(0.706612, 0, 0.707602, 0, 1, 0), (0.706602, 0, 0.707612, 0, 1, 0)]
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    stored = [
        DicomFrame(values, header, 1, 1, tuple(5.0 * step * normal), orientations[min(step, 1)], (1.0, 1.0), 5.0, None)  # type: ignore[arg-type]
        for step in range(5)
    ]
    swapped = [stored[1], stored[0], *stored[2:]]

    assert np.array_equal(offsets_along_normal(swapped), offsets_along_normal(stored)[[1, 0, 2, 3, 4]])
    assert [stored[index] for index in anatomical_order(stored)] == [
        swapped[index] for index in anatomical_order(swapped)
    ]
