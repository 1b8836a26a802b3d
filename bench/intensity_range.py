"""How far each development volume's extremes lie from the bulk of its pixels: the margins of `app.intensity_range`.

    python -m bench.intensity_range --data-root ../shared/lgg/kaggle_3m_dev

For every patient and channel (pre-contrast, FLAIR, post-contrast), over the whole volume: how far the maximum lies
above the minimum against the 99.9th and the 99.99th percentiles, (max - min) / (p - min), and against the
fifth-brightest pixel, (max - min) / (fifth - min); how far the minimum lies
below the 0.1th percentile, (p0.1 - min) / (p99.9 - p0.1); and whether `app.intensity_range.stretch_range` would
change the volume's stretch (it must not: the models learned from these volumes stretched min..max). The ratios do
not change under a linear stretch, so these 8-bit volumes give the ratios of the scans they were made from.
"""

from __future__ import annotations

import argparse
from itertools import groupby

import numpy as np

from app.intensity_range import (
    FEW_PIXELS,
    ISOLATED_FACTOR,
    LOW_OUTLIER_MARGIN,
    LOW_REFERENCE_PERCENTILE,
    OUTLIER_FACTOR,
    REFERENCE_PERCENTILE,
    stretch_range,
)
from training.data import find_slices, read_image

CHANNELS = ("pre-contrast", "FLAIR", "post-contrast")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="kaggle_3m folder: one sub-folder per patient")
    args = parser.parse_args()
    ratios: dict[str, dict[str, list[float]]] = {
        name: {"high": [], "few": [], "alone": [], "low": []} for name in CHANNELS
    }
    changed = 0
    for _, records in groupby(find_slices(args.data_root), key=lambda record: record.patient_id):
        volume = np.stack([read_image(record.image_path) for record in records]).astype(np.float32)
        for index, name in enumerate(CHANNELS):
            channel = volume[..., index]
            low, high = float(channel.min()), float(channel.max())
            bottom, reference, few = np.percentile(channel, [LOW_REFERENCE_PERCENTILE, REFERENCE_PERCENTILE, 99.99])
            ratios[name]["high"].append((high - low) / (reference - low))
            ratios[name]["few"].append((high - low) / (few - low))
            fifth = float(np.partition(channel.ravel(), channel.size - FEW_PIXELS)[channel.size - FEW_PIXELS])
            ratios[name]["alone"].append((high - low) / (fifth - low))
            ratios[name]["low"].append((bottom - low) / (reference - bottom))
            changed += stretch_range(list(channel)) != (low, high)
    rules = {
        "high": f"(max - min) / (p{REFERENCE_PERCENTILE} - min); outliers past {OUTLIER_FACTOR}",
        "few": "(max - min) / (p99.99 - min); no rule: how far the few brightest pixels of a volume lie",
        "alone": f"(max - min) / (pixel {FEW_PIXELS} from the top - min); outliers past {ISOLATED_FACTOR}",
        "low": f"(p{LOW_REFERENCE_PERCENTILE} - min) / (p{REFERENCE_PERCENTILE} - p{LOW_REFERENCE_PERCENTILE}); "
        f"outliers past {LOW_OUTLIER_MARGIN}",
    }
    for key, rule in rules.items():
        print(rule)
        for name, values in ratios.items():
            found = values[key]
            print(f"  {name:14s} volumes {len(found):3d}  median {np.median(found):.3f}  highest {max(found):.3f}")
    print(f"volume channels whose stretch the outlier guards change: {changed}")


if __name__ == "__main__":
    main()
