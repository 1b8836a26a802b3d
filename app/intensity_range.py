"""The range a min/max stretch maps to 0..255, guarded against a few extreme pixels.

The models learned from volumes stretched from their minimum to their maximum (kaggle_3m), so the service stretches
the same way (`app.dicom.dicom_series.normalise_volume`, `app.imaging.decode_image`). One pixel far above the rest (a
hot pixel, a burnt-in marker, a corrupt value) would then squeeze the image into a few grey levels: a 16-bit series with
one pixel at 65535 (the rest under 1,200) turned three positive slices into "no tumor"; one far below (a cold pixel at
-1000 under a 0..1020 head) did the same. On the 88 development volumes the maximum lies at most 4.83 times as far above
the minimum as the 99.9th percentile does (median 1.4-1.5, each channel), and the 0.1th percentile at most 0.254 of the
0.1th-99.9th percentile range above the minimum (pre-contrast; FLAIR 0.005, median 0); `python -m bench.intensity_range`
prints both. Past `OUTLIER_FACTOR` times above, or `LOW_OUTLIER_MARGIN` below, pixels are outliers: the stretch ends at
the nearest value inside the bounds and the outliers saturate at 255 or 0.

Inside the high bound, a few pixels alone far above the rest are outliers too (a hot pixel at 2.5 times a series'
maximum doubled its tumor volume; attack review 28): fewer than `FEW_PIXELS` in the upper half of the range, above
the 99.9th percentile. On the development volumes the maximum lies at most 1.26 times as far above the minimum as the
fifth-brightest pixel does (`ISOLATED_FACTOR` is 2), so no development volume meets either rule, and what the models
learned from is stretched exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
    if not arrays:
        return 0.0, 0.0
    low = min(float(np.min(array)) for array in arrays)
    high = max(float(np.max(array)) for array in arrays)
    if not high > low:
        return low, high
    step = max(1, sum(array.size for array in arrays) // SAMPLE_PIXELS)
    sample = np.concatenate([array.ravel()[::step] for array in arrays])
    bottom, reference = (
        float(value) for value in np.percentile(sample, [LOW_REFERENCE_PERCENTILE, REFERENCE_PERCENTILE])
    )
    if not reference > bottom:  # nearly every pixel at one value: nothing to judge by
        return low, high
    floor = bottom - LOW_OUTLIER_MARGIN * (reference - bottom)
    if low < floor:
        low = min(float(np.min(array, where=array >= floor, initial=np.inf)) for array in arrays)
    ceiling = low + OUTLIER_FACTOR * (reference - low)
    if high > ceiling:
        high = max(float(np.max(array, where=array <= ceiling, initial=low)) for array in arrays)
    alone_above = low + (high - low) / ISOLATED_FACTOR
    if alone_above > reference and sum(int(np.count_nonzero(array > alone_above)) for array in arrays) < FEW_PIXELS:
        high = max(float(np.max(array, where=array <= alone_above, initial=low)) for array in arrays)
    return low, high


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
