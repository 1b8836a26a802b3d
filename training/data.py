"""Reading the kaggle_3m LGG layout, splitting it by patient, and feeding batches to Keras.

Two on-disk forms are read: the original download (`<stem>.tif` + `<stem>_mask.tif`) and the development pool
(`<stem>.jpg` + `<stem>_mask.png`). Batches come from a `keras.utils.PyDataset` rather than `tf.data` so the same
training code runs on the JAX backend, where TensorFlow is not installed.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from app.core.preprocessing import MODEL_INPUT_SIZE, preprocess_slice
from training.augmentation import augment_pair

IMAGE_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png")
MASK_SUFFIXES = (".tif", ".tiff", ".png")
_SLICE_NAME = re.compile(r"^(?P<patient>TCGA_[A-Z0-9]+_[A-Z0-9]+)_\d+_(?P<number>\d+)$")


class DatasetError(ValueError):
    """A problem with the files of the dataset; the message names the file."""


@dataclass(frozen=True)
class SliceRecord:
    """One slice on disk: its patient, its number in the volume (1-based) and its two files."""

    patient_id: str
    slice_number: int
    image_path: Path
    mask_path: Path

    @property
    def institution(self) -> str:
        """TCIA institution code, the `CS` of `TCGA_CS_4941`."""
        return self.patient_id.split("_")[1]


def find_slices(root: str | Path) -> list[SliceRecord]:
    """List every slice under `root` (one sub-folder per patient), sorted by patient then slice number.

    Raises
    ------
    DatasetError
        If `root` holds no slices, a file name does not follow the kaggle_3m pattern, or an image has no mask.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory")
    records = []
    for image_path in sorted(root.glob("*/*")):
        stem, suffix = image_path.stem, image_path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES or stem.endswith("_mask"):
            continue
        match = _SLICE_NAME.match(stem)
        if match is None:
            raise DatasetError(f"{image_path}: name does not follow TCGA_<inst>_<id>_<date>_<n>")
        mask_path = _find_mask(image_path)
        records.append(SliceRecord(match["patient"], int(match["number"]), image_path, mask_path))
    if not records:
        raise DatasetError(f"no slices found under {root} (expected <patient>/<stem>.tif|.jpg files)")
    records.sort(key=lambda record: (record.patient_id, record.slice_number))
    return records


def _find_mask(image_path: Path) -> Path:
    for suffix in MASK_SUFFIXES:
        candidate = image_path.with_name(f"{image_path.stem}_mask{suffix}")
        if candidate.exists():
            return candidate
    raise DatasetError(f"{image_path}: no mask beside it (expected {image_path.stem}_mask.tif or .png)")


def read_image(path: Path) -> np.ndarray:
    """Read one slice as uint8 HxWx3 in file channel order (pre-contrast, FLAIR, post-contrast)."""
    array = _read_array(path)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[:2] != (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE):
        raise DatasetError(f"{path}: expected a 256x256x3 image, got shape {array.shape}")
    return array


def read_mask(path: Path) -> np.ndarray:
    """Read one mask as uint8 HxW with values 0 (background) and 1 (tumor)."""
    array = _read_array(path)
    if array.ndim == 3:
        array = array[:, :, 0]
    if array.shape != (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE):
        raise DatasetError(f"{path}: expected a 256x256 mask, got shape {array.shape}")
    return (array > 127).astype(np.uint8)


def _read_array(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            array = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"{path}: unreadable image ({error})") from error
    if array.dtype != np.uint8:
        raise DatasetError(f"{path}: expected 8-bit pixels, got {array.dtype}")
    return array


@dataclass
class SliceArrays:
    """Slices loaded into memory: images uint8 (N,256,256,3), masks uint8 (N,256,256), one patient id each."""

    images: np.ndarray
    masks: np.ndarray
    patient_ids: np.ndarray
    slice_numbers: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """1 where the slice holds any tumor pixel."""
        return (self.masks.reshape(len(self.masks), -1).max(axis=1) > 0).astype(np.float32)

    def subset(self, patients: Sequence[str]) -> SliceArrays:
        keep = np.isin(self.patient_ids, list(patients))
        return SliceArrays(self.images[keep], self.masks[keep], self.patient_ids[keep], self.slice_numbers[keep])


def load_slices(records: Sequence[SliceRecord]) -> SliceArrays:
    """Read every record into memory (the 88-patient pool is about 0.9 GB as uint8)."""
    count = len(records)
    images = np.empty((count, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, 3), np.uint8)
    masks = np.empty((count, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE), np.uint8)
    for index, record in enumerate(records):
        images[index] = read_image(record.image_path)
        masks[index] = read_mask(record.mask_path)
    return SliceArrays(
        images,
        masks,
        np.array([record.patient_id for record in records]),
        np.array([record.slice_number for record in records], dtype=np.int32),
    )


def split_patients(
    patient_ids: Sequence[str], validation_count: int = 9, test_count: int = 9, seed: int = 2019
) -> dict[str, list[str]]:
    """Split patients (never slices) into train / validation / test, stratified by institution code.

    Patients of each institution are shuffled with a fixed seed and dealt round-robin, institution after
    institution, so every set gets a share of each scanner site. The same ids and seed always give the same split.
    """
    unique = sorted(set(patient_ids))
    if validation_count + test_count >= len(unique):
        raise ValueError(
            f"validation_count + test_count must be below the patient count {len(unique)}; "
            f"got {validation_count} + {test_count}"
        )
    by_institution: dict[str, list[str]] = defaultdict(list)
    for patient in unique:
        by_institution[patient.split("_")[1]].append(patient)
    rng = random.Random(seed)
    dealt: list[str] = []
    for institution in sorted(by_institution):
        rng.shuffle(by_institution[institution])
    # Interleave institutions so the first k patients of `dealt` are spread over sites.
    longest = max(len(group) for group in by_institution.values())
    for position in range(longest):
        for institution in sorted(by_institution, key=lambda name: -len(by_institution[name])):
            group = by_institution[institution]
            if position < len(group):
                dealt.append(group[position])
    test = sorted(dealt[:test_count])
    validation = sorted(dealt[test_count : test_count + validation_count])
    train = sorted(dealt[test_count + validation_count :])
    return {"train": train, "validation": validation, "test": test}


def save_split(split: dict[str, list[str]], path: Path, seed: int, source: str) -> None:
    path.write_text(json.dumps({"seed": seed, "source": source, **split}, indent=2) + "\n")


def load_split(path: Path) -> dict[str, list[str]]:
    content = json.loads(Path(path).read_text())
    return {name: content[name] for name in ("train", "validation", "test")}


class SliceBatches(keras.utils.PyDataset):
    """Batches of preprocessed slices for Keras `fit`/`predict`.

    `target` chooses what the model learns: "label" (tumor present, shape (B, 1)) for the classifier, "mask" (shape
    (B, 256, 256, 1)) for the segmenter. `negatives_per_epoch` lets the segmenter see every tumor slice each epoch
    plus a fresh random sample of tumor-free slices, so it learns to draw nothing without drowning in empty masks.
    """

    def __init__(
        self,
        arrays: SliceArrays,
        target: str,
        batch_size: int = 16,
        augment: bool = False,
        shuffle: bool = False,
        negatives_per_epoch: int | None = None,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if target not in ("label", "mask"):
            raise ValueError(f"target must be 'label' or 'mask'; got {target!r}")
        self.arrays = arrays
        self.target = target
        self.batch_size = batch_size
        self.augment = augment
        self.shuffle = shuffle
        self.negatives_per_epoch = negatives_per_epoch
        self.rng = np.random.default_rng(seed)
        labels = arrays.labels
        self._positives = np.flatnonzero(labels > 0)
        self._negatives = np.flatnonzero(labels == 0)
        self.indices = self._epoch_indices()

    def _epoch_indices(self) -> np.ndarray:
        if self.negatives_per_epoch is None:
            indices = np.arange(len(self.arrays.images))
        else:
            count = min(self.negatives_per_epoch, len(self._negatives))
            sampled = self.rng.choice(self._negatives, size=count, replace=False)
            indices = np.sort(np.concatenate([self._positives, sampled]))
        if self.shuffle:
            self.rng.shuffle(indices)
        return indices

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __getitem__(self, batch_index: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = self.indices[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]
        images = self.arrays.images[chosen]
        masks = self.arrays.masks[chosen]
        if self.augment:
            pairs = [augment_pair(image, mask, self.rng) for image, mask in zip(images, masks, strict=True)]
            images = np.stack([pair[0] for pair in pairs])
            masks = np.stack([pair[1] for pair in pairs])
        inputs = np.stack([preprocess_slice(image) for image in images])
        if self.target == "mask":
            return inputs, masks[..., None].astype(np.float32)
        labels = (masks.reshape(len(masks), -1).max(axis=1) > 0).astype(np.float32)
        return inputs, labels[:, None]

    def on_epoch_end(self) -> None:
        self.indices = self._epoch_indices()
