"""The benchmark's slice mix: real slices of the development pool, a fixed share with tumor, the same in every script.

Kept free of TensorFlow and of the service's code so the HTTP load generator stays a light client process.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "lgg" / "kaggle_3m_dev"
DEFAULT_MIX_SIZE = 96
DEFAULT_TUMOR_FRACTION = 1 / 3
DEFAULT_SEED = 0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".tif", ".tiff", ".png")
MASK_SUFFIXES = (".png", ".tif", ".tiff")
_SLICE_NUMBER = re.compile(r"_(\d+)$")


@dataclass(frozen=True)
class MixSlice:
    """One real slice of the benchmark mix: its file and whether its ground-truth mask has any tumor pixel."""

    path: Path
    tumor: bool


def select_mix(
    data_root: Path,
    size: int = DEFAULT_MIX_SIZE,
    tumor_fraction: float = DEFAULT_TUMOR_FRACTION,
    seed: int = DEFAULT_SEED,
) -> list[MixSlice]:
    """Pick `size` real slices, `tumor_fraction` of them with tumor, spread evenly through the list.

    Evenly spread (not grouped) so that any prefix a short benchmark level uses has about the same share of tumor
    slices as the whole mix; the same arguments give the same list in every script, so all numbers see one mix.

    Raises
    ------
    ValueError
        If the arguments are out of range or `data_root` holds too few slices of either kind.
    """
    if size < 1:
        raise ValueError(f"mix size must be >= 1; got {size}")
    if not 0.0 <= tumor_fraction <= 1.0:
        raise ValueError(f"tumor fraction must be within [0, 1]; got {tumor_fraction}")
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise ValueError(f"data root {data_root} is not a directory (expected the kaggle_3m layout)")
    candidates = sorted(
        path
        for path in data_root.glob("*/*")
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.stem.endswith("_mask") and _SLICE_NUMBER.search(path.stem)
    )
    random.Random(seed).shuffle(candidates)
    wanted_tumor = round(size * tumor_fraction)
    wanted = {True: wanted_tumor, False: size - wanted_tumor}
    picked: dict[bool, list[Path]] = {True: [], False: []}
    for path in candidates:
        if all(len(picked[kind]) >= wanted[kind] for kind in picked):
            break
        mask = mask_of(path)
        if mask is None:
            continue
        tumor = _has_tumor(mask)
        if len(picked[tumor]) < wanted[tumor]:
            picked[tumor].append(path)
    for kind, paths in picked.items():
        if len(paths) < wanted[kind]:
            label = "tumor" if kind else "tumor-free"
            raise ValueError(
                f"{data_root} has only {len(paths)} {label} slices with masks; the mix needs {wanted[kind]}"
            )
    mix = []
    tumor_paths, clean_paths = iter(picked[True]), iter(picked[False])
    for index in range(size):
        # Slot `index` holds a tumor slice whenever the running tumor count should step up: an even spread.
        is_tumor = int((index + 1) * wanted_tumor / size) > int(index * wanted_tumor / size)
        mix.append(MixSlice(next(tumor_paths if is_tumor else clean_paths), is_tumor))
    return mix


def mix_description(mix: Sequence[MixSlice], data_root: Path, seed: int) -> dict:
    return {
        "data_root": str(data_root),
        "slices": len(mix),
        "tumor_slices": sum(item.tumor for item in mix),
        "seed": seed,
    }


def mask_of(image_path: Path) -> Path | None:
    """The ground-truth mask beside a slice (`<stem>_mask.png` or `.tif`), or None."""
    for suffix in MASK_SUFFIXES:
        candidate = image_path.with_name(f"{image_path.stem}_mask{suffix}")
        if candidate.is_file():
            return candidate
    return None


def _has_tumor(mask_path: Path) -> bool:
    with Image.open(mask_path) as mask:
        return bool((np.asarray(mask) > 127).any())
