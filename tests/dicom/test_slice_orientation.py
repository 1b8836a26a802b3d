"""Axial slices stored turned in-plane reach the models as they learned them, and their masks come back as stored."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from app.dicom.dicom_series import in_stored_orientation, model_inputs
from app.dicom.slice_orientation import InPlaneTurn, in_plane_turn
from app.inference import Predictor, SlicePrediction
from app.model_runners import predictor_runner
from app.prediction import PredictionService
from app.uploads import UploadLimits
from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.dicom.reading import read_series

LEARNED = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Stored orientations of an axial slice (row direction, column direction) and the image as stored, from the learned.
ROTATED_180 = ((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0), lambda image: image[::-1, ::-1])
TRANSPOSED = ((0.0, 1.0, 0.0, 1.0, 0.0, 0.0), lambda image: np.swapaxes(image, 0, 1))
ROTATED_90 = ((0.0, 1.0, 0.0, -1.0, 0.0, 0.0), lambda image: np.rot90(image, 1))  # counterclockwise


def every_turn() -> list[InPlaneTurn]:
    return [InPlaneTurn(*flags) for flags in itertools.product((False, True), repeat=3)]


@pytest.mark.parametrize("turn", every_turn())
def test_undo_is_the_inverse_of_apply(turn: InPlaneTurn) -> None:
    image = np.arange(5 * 7 * 3).reshape(5, 7, 3)
    assert np.array_equal(turn.undo(turn.apply(image)), image)


@pytest.mark.parametrize("turn", every_turn())
def test_a_turned_axial_slice_runs_left_to_right_and_front_to_back(turn: InPlaneTurn) -> None:
    # Each pixel holds its own patient (x, y) under the stored orientation; once turned, x must grow along the
    # columns and y down the rows, as in the slices the models learned.
    height, width = 4, 6
    learned = np.stack(np.meshgrid(np.arange(width), np.arange(height)), axis=-1).astype(float)  # (x, y) per pixel
    stored = turn.undo(learned)  # a slice stored this way round
    row_direction = stored[0, 1] - stored[0, 0]
    column_direction = stored[1, 0] - stored[0, 0]
    orientation = (*row_direction, 0.0, *column_direction, 0.0)

    turned = in_plane_turn(orientation).apply(stored)

    assert np.array_equal(turned, learned)


@pytest.mark.parametrize(
    "orientation",
    [
        LEARNED,
        (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # sagittal: no learned way round, read as stored
        (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),  # coronal
        None,
    ],
)
def test_learned_non_axial_and_unknown_orientations_are_not_turned(orientation) -> None:
    assert in_plane_turn(orientation).is_identity


def test_an_oblique_axial_slice_is_turned_by_its_nearest_axes() -> None:
    tilt = np.radians(15.0)
    oblique_rotated = (-np.cos(tilt), 0.0, np.sin(tilt), 0.0, -1.0, 0.0)
    assert in_plane_turn(oblique_rotated) == InPlaneTurn(flip_rows=True, flip_columns=True)


def stored_turned(datasets, orientation, turn_image):
    for dataset in datasets:
        stored = np.ascontiguousarray(turn_image(dataset.pixel_array))
        dataset.ImageOrientationPatient = list(orientation)
        dataset.PixelData = stored.tobytes()
        dataset.Rows, dataset.Columns = stored.shape
    return datasets


@pytest.mark.parametrize("stored_as", [ROTATED_180, TRANSPOSED, ROTATED_90], ids=["180", "transposed", "90"])
def test_the_models_see_a_turned_series_as_they_learned_it(stored_as) -> None:
    orientation, turn_image = stored_as
    images = [image[:, :200] for image in tumor_channels()]  # not square: rows and columns must not mix up
    learned = read_series([to_bytes(dataset) for dataset in mr_series(images)], max_pixels=1 << 20)
    turned = read_series(
        [to_bytes(dataset) for dataset in stored_turned(mr_series(images), orientation, turn_image)],
        max_pixels=1 << 20,
    )

    learned_batch, learned_sizes = model_inputs(learned.inputs)
    turned_batch, turned_sizes = model_inputs(turned.inputs)

    np.testing.assert_array_equal(turned_batch, learned_batch)
    assert turned_sizes == learned_sizes == [(256, 200)] * len(images)
    # A mask of the learned orientation comes back in the stored one.
    masks = [np.zeros(size, np.uint8) for size in learned_sizes]
    for mask in masks:
        mask[10:20, 30:60] = 1
    answers = in_stored_orientation([SlicePrediction(0.9, True, mask) for mask in masks], turned.inputs)
    for answer, mask in zip(answers, masks, strict=True):
        np.testing.assert_array_equal(answer.mask, turn_image(mask))


def test_a_series_stored_rotated_gets_the_answer_of_the_series_as_learned(predictor: Predictor) -> None:
    # End to end with real (tiny) models: the probabilities are the same, the masks the same turned back.
    orientation, turn_image = ROTATED_180
    service = PredictionService(predictor, predictor_runner(predictor, 16), UploadLimits(), offload=False)
    learned = [to_bytes(dataset) for dataset in mr_series(tumor_channels())]
    rotated = [to_bytes(dataset) for dataset in stored_turned(mr_series(tumor_channels()), orientation, turn_image)]

    learned_answer = asyncio.run(service.predict_dicom(learned, build_seg=False)).result
    rotated_answer = asyncio.run(service.predict_dicom(rotated, build_seg=False)).result

    for expected, actual in zip(learned_answer.predictions, rotated_answer.predictions, strict=True):
        assert actual.probability == pytest.approx(expected.probability, abs=1e-6)
        assert actual.detected == expected.detected
        if expected.mask is not None:
            np.testing.assert_array_equal(actual.mask, turn_image(expected.mask))
    assert rotated_answer.tumor_volume_ml == pytest.approx(learned_answer.tumor_volume_ml)
