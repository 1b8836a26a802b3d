"""The range a min/max stretch maps to 0..255, guarded against a few extreme pixels.

The models learned from volumes stretched from their minimum to their maximum (kaggle_3m), so the service stretches
the same way (`app.dicom.dicom_series.normalise_volume`, `app.imaging.decode_image`). One pixel far above the rest (a
hot
pixel, a burnt-in marker, a corrupt value) would then squeeze the image into a few grey levels: a 16-bit series with
one pixel at 65535 (the rest under 1,200) turned three positive slices into "no tumor". On the 88 development volumes
the maximum lies at most 4.83 times as far above the minimum as the 99.9th percentile does (median 1.4-1.5, each
channel; `python -m bench.intensity_range` prints it). Past `OUTLIER_FACTOR` times, the pixels beyond are outliers:
the stretch ends at the highest value below that bound and the outliers saturate at 255. No development volume
reaches the bound, so what the models learned from is stretched exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

OUTLIER_FACTOR = 8.0
"""How many times the 99.9th percentile's distance above the minimum a pixel may lie before it is an outlier."""
REFERENCE_PERCENTILE = 99.9
SAMPLE_PIXELS = 1 << 20
"""The percentile is read from about this many pixels, taken at a regular step (the bound is far from it anyway)."""


def stretch_range(arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    """(low, high) of the stretch over finite `arrays` (one image, or the frames of one series): their minimum, and
    their maximum unless pixels lie past `OUTLIER_FACTOR` (then the highest value short of them)."""
    arrays = [array for array in arrays if array.size]
    if not arrays:
        return 0.0, 0.0
    low = min(float(np.min(array)) for array in arrays)
    high = max(float(np.max(array)) for array in arrays)
    if not high > low:
        return low, high
    step = max(1, sum(array.size for array in arrays) // SAMPLE_PIXELS)
    sample = np.concatenate([array.ravel()[::step] for array in arrays])
    reference = float(np.percentile(sample, REFERENCE_PERCENTILE))
    bound = low + OUTLIER_FACTOR * (reference - low)
    if high <= bound or not reference > low:  # no outlier, or nearly every pixel at the minimum: nothing to judge by
        return low, high
    return low, max(float(np.max(array, where=array <= bound, initial=low)) for array in arrays)
