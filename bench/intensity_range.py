"""How far each development volume's maximum lies above its 99.9th percentile: the margin of `app.intensity_range`.

    python -m bench.intensity_range --data-root ../shared/lgg/kaggle_3m_dev

For every patient and channel (pre-contrast, FLAIR, post-contrast), the ratio (max - min) / (p99.9 - min) over the
whole volume, and whether `app.intensity_range.stretch_range` would change the volume's stretch (it must not: the
models learned from these volumes stretched min..max).
"""

from __future__ import annotations

import argparse
from itertools import groupby

import numpy as np

from app.intensity_range import OUTLIER_FACTOR, REFERENCE_PERCENTILE, stretch_range
from training.data import find_slices, read_image

CHANNELS = ("pre-contrast", "FLAIR", "post-contrast")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="kaggle_3m folder: one sub-folder per patient")
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {name: [] for name in CHANNELS}
    changed = 0
    for _, records in groupby(find_slices(args.data_root), key=lambda record: record.patient_id):
        volume = np.stack([read_image(record.image_path) for record in records]).astype(np.float32)
        for index, name in enumerate(CHANNELS):
            channel = volume[..., index]
            low, high = float(channel.min()), float(channel.max())
            reference = float(np.percentile(channel, REFERENCE_PERCENTILE))
            ratios[name].append((high - low) / (reference - low))
            changed += stretch_range(list(channel)) != (low, high)
    print(f"(max - min) / (p{REFERENCE_PERCENTILE} - min) per volume; outliers start past {OUTLIER_FACTOR}")
    for name, values in ratios.items():
        print(f"{name:14s} volumes {len(values):3d}  median {np.median(values):.2f}  highest {max(values):.2f}")
    print(f"volume channels whose stretch the outlier guard changes: {changed}")


if __name__ == "__main__":
    main()
