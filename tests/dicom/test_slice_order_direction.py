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
