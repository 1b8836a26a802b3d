"""How the prediction flow runs the models (`ModelRunner`): through the micro-batcher in the service
(`batcher_runner`), or the predictor itself in the CLI and pacs-sync (`predictor_runner`); and what the flow reads of
the models (`Models`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import numpy as np

from app.batching import MicroBatcher
from app.inference import SlicePrediction

ModelRunner = Callable[[np.ndarray, list[tuple[int, int]]], Awaitable[list[SlicePrediction]]]
"""Runs the gated models on a preprocessed batch and its slices' original sizes; one prediction per slice."""


class Models(Protocol):
    """What the flow reads of `app.inference.Predictor` besides running it."""

    @property
    def classifier_threshold(self) -> float: ...

    @property
    def model_tags(self) -> dict[str, str]: ...

    @property
    def series_min_component_voxels(self) -> int: ...

    @property
    def single_slice_mask_min_probability(self) -> float: ...

    @property
    def single_slice_min_component_pixels(self) -> int: ...


class PreprocessedPredictor(Protocol):
    """`app.inference.Predictor.predict_preprocessed`: the gated models on a preprocessed batch."""

    def predict_preprocessed(
        self, batch: np.ndarray | None, sizes: Sequence[tuple[int, int]]
    ) -> list[SlicePrediction]: ...


def batcher_runner(batcher: MicroBatcher, timeout_seconds: float) -> ModelRunner:
    """The service's runner: slices join other requests' in the micro-batcher."""

    async def run(batch: np.ndarray, sizes: list[tuple[int, int]]) -> list[SlicePrediction]:
        return await batcher.submit(batch, sizes, timeout_seconds=timeout_seconds)

    return run


def predictor_runner(
    predictor: PreprocessedPredictor, batch_size: int, on_chunk: Callable[[int, int], None] | None = None
) -> ModelRunner:
    """The CLI's and pacs-sync's runner: `batch_size` slices at a time, so a long series is not one huge batch.

    It runs the models in the calling thread: those commands serve one request at a time (`offload=False`).
    `on_chunk(slices_in_chunk, slices_in_batch)` is called after each chunk: a DICOM series is one call of the flow,
    so this is where the CLI can tell its progress.
    """

    async def run(batch: np.ndarray, sizes: list[tuple[int, int]]) -> list[SlicePrediction]:
        predictions: list[SlicePrediction] = []
        for start in range(0, len(sizes), batch_size):
            chunk = slice(start, start + batch_size)
            predictions.extend(predictor.predict_preprocessed(batch[chunk], sizes[chunk]))
            if on_chunk is not None:
                on_chunk(len(sizes[chunk]), len(sizes))
        return predictions

    return run
