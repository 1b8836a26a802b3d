"""The range a min/max stretch maps to 0..255, guarded against a few extreme pixels.

The models learned from volumes stretched from their minimum to their maximum (kaggle_3m), so the service stretches
the same way (a DICOM series: `app.dicom.dicom_series.normalise_volume`; a raster series' deep slices:
`app.uploads.prepare_series_uploads`; a slice alone: `app.uploads.prepare_upload`). One pixel far above the rest (a
hot pixel, a burnt-in marker, a corrupt value) would then squeeze the image into a few grey levels: a 16-bit series with
one pixel at 65535 (the rest under 1,200) turned three positive slices into "no tumor"; one far below (a cold pixel at
-1000 under a 0..1020 head) did the same. On the 88 development volumes the maximum lies at most 4.83 times as far above
the minimum as the 99.9th percentile does (median 1.4-1.5, each channel), and the 0.1th percentile at most 0.254 of the
0.1th-99.9th percentile range above the minimum (pre-contrast; FLAIR 0.005, median 0); `python -m bench.intensity_range`
prints both. Past `OUTLIER_FACTOR` times above, or `LOW_OUTLIER_MARGIN` below, pixels are outliers: the stretch ends at
the nearest value inside the bounds and the outliers saturate at 255 or 0.

Inside the high bound, a few pixels alone far above the rest are outliers too (a hot pixel at 2.5 times a series'
maximum doubled its tumor volume): fewer than `FEW_PIXELS` in the upper half of the range, above
the 99.9th percentile. On the development volumes the maximum lies at most 1.26 times as far above the minimum as the
fifth-brightest pixel does (`ISOLATED_FACTOR` is 2), so no development volume meets either rule, and what the models
learned from is stretched exactly as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

K = TypeVar("K")

OUTLIER_FACTOR = 8.0
"""How many times the 99.9th percentile's distance above the minimum a pixel may lie before it is an outlier."""
REFERENCE_PERCENTILE = 99.9
LOW_OUTLIER_MARGIN = 0.5
"""How far below the 0.1th percentile a pixel may lie, as a share of the 0.1th to 99.9th percentile range, before it
is an outlier."""
LOW_REFERENCE_PERCENTILE = 0.1
FEW_PIXELS = 5
ISOLATED_FACTOR = 2.0
"""Fewer than `FEW_PIXELS` pixels above 1 / `ISOLATED_FACTOR` of the range (and above the 99.9th percentile) are
outliers: a maximum more than `ISOLATED_FACTOR` times as far above the minimum as the fifth-brightest pixel."""
SAMPLE_PIXELS = 1 << 20
"""The percentiles are read from about this many pixels, taken at a regular step (the bounds are far from them)."""


def stretch_range(arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    """(low, high) of the stretch over finite `arrays` (one image, or the frames of one series): their minimum and
    maximum, each short of the outliers beyond it (the module's rules), which then saturate at 0 or 255."""
    arrays = [array for array in arrays if array.size]
    ranges = stretch_ranges(lambda: ((0, array) for array in arrays), sum(array.size for array in arrays))
    return ranges.get(0, (0.0, 0.0))


def stretch_ranges(frames: Callable[[], Iterable[tuple[K, np.ndarray]]], pixels: int) -> dict[K, tuple[float, float]]:
    """`stretch_range` of each key's arrays, read from `frames` instead of held in memory: what the slices of a
    raster series need, each decoded when its turn comes and dropped after (`app.uploads.prepare_series_uploads`).

    `frames()` yields (key, finite float array) pairs, each key's arrays being the images of one `stretch_range`;
    every call must yield the same arrays in the same order. It is called once for the minimum, maximum and
    percentiles, then once more for each outlier rule some key meets (at most three more; none for a series without
    outliers). Held between calls: a few numbers per key, and each key's percentile sample until it is read (8 bytes
    a value, `sample_values` of them). `pixels`, the values of all the arrays together, sets the sample's step, so
    with one key the range is exactly `stretch_range` over its arrays. Keys that yield no values are left out.
    """
    step = max(1, pixels // SAMPLE_PIXELS)
    lows: dict[K, float] = {}
    highs: dict[K, float] = {}
    samples: dict[K, list[np.ndarray]] = {}
    for key, array in frames():
        if array.size:
            lows[key] = min(lows.get(key, math.inf), float(np.min(array)))
            highs[key] = max(highs.get(key, -math.inf), float(np.max(array)))
            samples.setdefault(key, []).append(array.ravel()[::step].copy())  # a copy: the array is not kept
        del array  # before `frames` makes the next one
    references: dict[K, tuple[float, float]] = {}  # (bottom, reference) of the keys the outlier rules judge
    for key in list(samples):
        pieces = samples.pop(key)
        if highs[key] > lows[key]:
            sample = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)  # a slice alone: no second copy
            del pieces
            bottom, reference = (
                float(value)
                for value in np.percentile(
                    sample, [LOW_REFERENCE_PERCENTILE, REFERENCE_PERCENTILE], overwrite_input=True
                )
            )
            if reference > bottom:  # else nearly every pixel at one value: nothing to judge by
                references[key] = bottom, reference
    floors = {
        key: bottom - LOW_OUTLIER_MARGIN * (reference - bottom) for key, (bottom, reference) in references.items()
    }
    floors = {key: floor for key, floor in floors.items() if lows[key] < floor}
    lows.update(_reduce(frames, floors, lambda array, floor: np.min(array, where=array >= floor, initial=np.inf), min))
    ceilings = {key: lows[key] + OUTLIER_FACTOR * (reference - lows[key]) for key, (_, reference) in references.items()}
    ceilings = {key: ceiling for key, ceiling in ceilings.items() if highs[key] > ceiling}
    for key, high in _reduce(
        frames, ceilings, lambda array, ceiling: np.max(array, where=array <= ceiling, initial=-np.inf), max
    ).items():
        highs[key] = max(high, lows[key])
    alone = {key: lows[key] + (highs[key] - lows[key]) / ISOLATED_FACTOR for key in references}
    alone = {key: alone_above for key, alone_above in alone.items() if alone_above > references[key][1]}
    counts = dict.fromkeys(alone, 0)
    under = dict.fromkeys(alone, -math.inf)
    if alone:
        for key, array in frames():
            if key in alone and array.size:
                counts[key] += int(np.count_nonzero(array > alone[key]))
                under[key] = max(under[key], float(np.max(array, where=array <= alone[key], initial=-np.inf)))
            del array
    for key, count in counts.items():
        if count < FEW_PIXELS:
            highs[key] = max(under[key], lows[key])
    return {key: (lows[key], highs[key]) for key in lows}


def _reduce(
    frames: Callable[[], Iterable[tuple[K, np.ndarray]]],
    bounds: dict[K, float],
    measure: Callable[[np.ndarray, float], Any],
    combine: Callable[[float, float], float],
) -> dict[K, float]:
    """`combine` over each bounded key's arrays of `measure(array, bound)`: one more call of `frames`, none when no
    key is bounded."""
    found: dict[K, float] = {}
    if bounds:
        for key, array in frames():
            if key in bounds and array.size:
                value = float(measure(array, bounds[key]))
                found[key] = combine(found[key], value) if key in found else value
            del array
    return found


def sample_values(pixels: int, counts: Iterable[int]) -> int:
    """Values in the percentiles' sample `stretch_ranges` keeps of one key whose arrays hold `counts` values each,
    among arrays of `pixels` values in all."""
    step = max(1, pixels // SAMPLE_PIXELS)
    return sum(-(-count // step) for count in counts)


def stretch_in_place(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`values` (float64, overwritten: the one copy the memory budget counts) mapped from `low`..`high` to 0..255 as
    uint8, what lies outside saturating; all 0 when `high` is not above `low`. The one stretch of uploads and DICOM
    series: halved first, a span between float64's extremes (-1e308 to 1e308) stays finite and the ratio the same."""
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    values /= 2.0
    values -= low / 2.0
    values /= high / 2.0 - low / 2.0
    values *= 255.0
    np.rint(values, out=values)
    np.clip(values, 0.0, 255.0, out=values)
    return values.astype(np.uint8)
