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
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import keras
import numpy as np
from PIL import Image

from app.core.preprocessing import FLAIR_CHANNEL, MODEL_INPUT_SIZE, preprocess_slice
from training.augmentation import STANDARD, Augmentation, augment_pair

IMAGE_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png")
MASK_SUFFIXES = (".tif", ".tiff", ".png")
_SLICE_NAME = re.compile(r"^(?P<patient>TCGA_[A-Z0-9]+_[A-Z0-9]+)_\d+_(?P<number>\d+)$")
# Keys the mixup draws of a batch apart from the per-slice augmentation draws (keyed by position, always smaller).
MIXUP_KEY = 1 << 30
SIGNAL_LEVEL = 10
"""FLAIR grey levels (0-255) above this are the head, not the background around it."""


class DatasetError(ValueError):
    """A problem with the files of the dataset; the message names the file."""


@contextmanager
def usage_errors(prog: str) -> Iterator[None]:
    """Turn a wrong --data-root (`DatasetError`) or a named file that is not there (`FileNotFoundError`) into what
    argparse does for a usage error: one line on stderr and exit status 2, not a traceback."""
    try:
        yield
    except DatasetError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except FileNotFoundError as error:
        print(f"{prog}: error: {error.strerror}: {error.filename}", file=sys.stderr)
        raise SystemExit(2) from None


def institution_of(patient_id: str) -> str:
    """TCIA institution code of a TCGA case id, the `CS` of `TCGA_CS_4941`."""
    return patient_id.split("_")[1]


def shuffled_by_institution(patients: Iterable[str], seed: int) -> dict[str, list[str]]:
    """Institution code -> its patients, sorted and then shuffled with `seed`, institutions in code order: the split
    and the folds deal from this, so that every set gets a share of each scanner site."""
    by_institution: dict[str, list[str]] = defaultdict(list)
    for patient in sorted(patients):
        by_institution[institution_of(patient)].append(patient)
    rng = random.Random(seed)
    for institution in sorted(by_institution):
        rng.shuffle(by_institution[institution])
    return {institution: by_institution[institution] for institution in sorted(by_institution)}


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
        return institution_of(self.patient_id)


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

    def slices_to_tumor(self) -> np.ndarray:
        """Per slice, how many slices away its patient's nearest tumor slice is (0 on a tumor slice; a large
        number for a patient without tumor)."""
        distance = np.full(len(self.labels), 1 << 20, dtype=np.int64)
        labels = self.labels > 0
        for patient in np.unique(self.patient_ids):
            rows = np.flatnonzero(self.patient_ids == patient)
            tumor = self.slice_numbers[rows][labels[rows]]
            if len(tumor):
                numbers = self.slice_numbers[rows]
                distance[rows] = np.abs(numbers[:, None] - tumor[None, :]).min(axis=1)
        return distance

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
    by_institution = shuffled_by_institution(unique, seed)
    dealt: list[str] = []
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
    (B, S, S, 1)) for the segmenter. `negatives_per_epoch` lets the segmenter see every tumor slice each epoch plus
    a fresh sample of tumor-free slices, so it learns to draw nothing without drowning in empty masks.

    `mixup_alpha` > 0 (classifier only) blends each slice with another of its batch, its own share >= 0.5 drawn
    from Beta(alpha, alpha), and its label alike (mixup, Zhang et al. 2018): a regularizer for a small training set.

    `tumor_paste_fraction` > 0 (classifier only) turns that share of the tumor-free slices into tumor slices: the
    tumor of a random tumor slice of the same patient (same scanner, same contrast) is pasted at the same place,
    feathered at its rim (copy-paste augmentation), when nearly all of it lands on the recipient's brain. More small
    tumors, the slices that set the threshold.

    `crop_size` trains the (fully convolutional) segmenter on S x S crops instead of whole slices: four times
    cheaper at 128, so many more epochs fit on a CPU, while it still serves whole 256 x 256 slices. Tumor slices
    are cropped around a random tumor pixel (`tumor_crop_fraction` of the time, otherwise anywhere in the brain),
    tumor-free ones around the spot where the segmenter last fired (`hard_negatives`, filled in by
    `training.validation.HardNegativeMiner`) or anywhere in the brain.

    Randomness comes from (`seed`, epoch, position), never from a running generator, so a run resumed at epoch k
    sees exactly the batches an uninterrupted run would have seen.
    """

    def __init__(
        self,
        arrays: SliceArrays,
        target: str,
        batch_size: int = 16,
        augment: bool = False,
        augmentation: Augmentation = STANDARD,
        shuffle: bool = False,
        negatives_per_epoch: int | None = None,
        seed: int = 0,
        crop_size: int | None = None,
        tumor_crop_fraction: float = 0.8,
        near_tumor_weight: float = 1.0,
        near_tumor_slices: int = 3,
        small_tumor_weight: float = 1.0,
        small_tumor_pixels: int = 300,
        mixup_alpha: float = 0.0,
        tumor_paste_fraction: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if target not in ("label", "mask"):
            raise ValueError(f"target must be 'label' or 'mask'; got {target!r}")
        if mixup_alpha and target != "label":
            raise ValueError("mixup_alpha is for the classifier's labels only")
        if tumor_paste_fraction and target != "label":
            raise ValueError("tumor_paste_fraction is for the classifier's labels only")
        if not 0.0 <= tumor_paste_fraction <= 1.0:
            raise ValueError(f"tumor_paste_fraction must be between 0 and 1; got {tumor_paste_fraction}")
        if crop_size is not None and not 32 <= crop_size <= MODEL_INPUT_SIZE:
            raise ValueError(f"crop_size must be between 32 and {MODEL_INPUT_SIZE}; got {crop_size}")
        self.arrays = arrays
        self.target = target
        self.batch_size = batch_size
        self.augment = augment
        self.augmentation = augmentation
        self.shuffle = shuffle
        self.negatives_per_epoch = negatives_per_epoch
        self.seed = seed
        self.crop_size = crop_size
        self.tumor_crop_fraction = tumor_crop_fraction
        self.mixup_alpha = mixup_alpha
        self.tumor_paste_fraction = tumor_paste_fraction
        # Loss weight per slice ("label" only): tumor-free slices within `near_tumor_slices` of a tumor slice, where
        # the classifier's false positives gather, weigh `near_tumor_weight`; tumor slices with fewer than
        # `small_tumor_pixels` tumor pixels, the lowest-scoring positives that set the threshold for 95 % sensitivity,
        # weigh `small_tumor_weight`. None when every slice weighs 1.
        self.sample_weights = None
        if target == "label" and (near_tumor_weight != 1.0 or small_tumor_weight != 1.0):
            distance = arrays.slices_to_tumor()
            near = (distance > 0) & (distance <= near_tumor_slices)
            area = arrays.masks.reshape(len(arrays.masks), -1).astype(bool).sum(axis=1)
            small = (area > 0) & (area < small_tumor_pixels)
            weights = np.where(near, near_tumor_weight, 1.0) * np.where(small, small_tumor_weight, 1.0)
            self.sample_weights = weights.astype(np.float32)
        self.epoch = 0
        labels = arrays.labels
        self._positives = np.flatnonzero(labels > 0)
        self._negatives = np.flatnonzero(labels == 0)
        # Slice index -> (row, column) where the segmenter last drew a mask on that tumor-free slice.
        self.hard_negatives: dict[int, tuple[int, int]] = {}
        self.indices = self._epoch_indices()

    def set_epoch(self, epoch: int) -> None:
        """Move to `epoch` (0-based): the sample of slices and every augmentation follow from it."""
        self.epoch = epoch
        self.indices = self._epoch_indices()

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *key])

    def _epoch_indices(self) -> np.ndarray:
        rng = self._rng()
        if self.negatives_per_epoch is None:
            indices = np.arange(len(self.arrays.images))
        else:
            count = min(self.negatives_per_epoch, len(self._negatives))
            # Up to half of the tumor-free sample are slices where the segmenter fired (hard negatives).
            hard = np.array(sorted(self.hard_negatives), dtype=np.int64)
            hard = rng.permutation(hard)[: count // 2]
            rest = np.setdiff1d(self._negatives, hard)
            sampled = rng.choice(rest, size=min(count - len(hard), len(rest)), replace=False)
            indices = np.sort(np.concatenate([self._positives, hard, sampled]))
        if self.shuffle:
            rng.shuffle(indices)
        return indices

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __getitem__(self, batch_index: int) -> tuple[np.ndarray, ...]:
        start = batch_index * self.batch_size
        chosen = self.indices[start : start + self.batch_size]
        inputs, masks = [], []
        for position, index in enumerate(chosen, start=start):
            image, mask = self.arrays.images[index], self.arrays.masks[index]
            rng = self._rng(position)
            if self.tumor_paste_fraction and not mask.any() and rng.random() < self.tumor_paste_fraction:
                image, mask = self._paste_tumor(index, image, mask, rng)
            if self.augment:
                image, mask = augment_pair(image, mask, rng, self.augmentation)
            # Preprocess the whole slice, then crop: a crop keeps the scale the model sees when serving.
            model_input = preprocess_slice(image)
            if self.crop_size is not None:
                window = self._crop_window(index, image, mask, rng)
                model_input, mask = model_input[window], mask[window]
            inputs.append(model_input)
            masks.append(mask)
        inputs, masks = np.stack(inputs), np.stack(masks)
        if self.target == "mask":
            return inputs, masks[..., None].astype(np.float32)
        labels = (masks.reshape(len(masks), -1).max(axis=1) > 0).astype(np.float32)
        weights = None if self.sample_weights is None else self.sample_weights[chosen]
        if self.mixup_alpha > 0:
            inputs, labels, weights = self._mixup(batch_index, inputs, labels, weights)
        if weights is not None:
            return inputs, labels[:, None], weights
        return inputs, labels[:, None]

    def _mixup(
        self, batch_index: int, inputs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Each slice blended with a partner from the same batch; its own share stays the larger."""
        rng = self._rng(MIXUP_KEY, batch_index)
        share = rng.beta(self.mixup_alpha, self.mixup_alpha, size=len(labels)).astype(np.float32)
        share = np.maximum(share, 1 - share)
        partner = rng.permutation(len(labels))
        inputs = share[:, None, None, None] * inputs + (1 - share[:, None, None, None]) * inputs[partner]
        labels = share * labels + (1 - share) * labels[partner]
        if weights is not None:
            weights = share * weights + (1 - share) * weights[partner]
        return inputs.astype(np.float32), labels.astype(np.float32), weights

    def _paste_tumor(
        self, index: int, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Slice `index` (tumor-free) with the tumor of a random tumor slice of its patient pasted at the same place,
        and its mask; the slice unchanged when its patient has no tumor slice or under 90 % of that tumor would land
        on its brain."""
        donors = self._positives[self.arrays.patient_ids[self._positives] == self.arrays.patient_ids[index]]
        if len(donors) == 0:
            return image, mask
        donor = donors[rng.integers(len(donors))]
        tumor = self.arrays.masks[donor] > 0
        brain = image[:, :, FLAIR_CHANNEL] > SIGNAL_LEVEL
        if np.count_nonzero(tumor & brain) < 0.9 * np.count_nonzero(tumor):
            return image, mask
        rim = cv2.dilate(tumor.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(np.float32)
        share = cv2.GaussianBlur(rim, (0, 0), 2.0)[..., None]
        pasted = (1 - share) * image + share * self.arrays.images[donor]
        return np.clip(np.rint(pasted), 0, 255).astype(np.uint8), (tumor & brain).astype(mask.dtype)

    def _crop_window(
        self, index: int, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[slice, slice]:
        if mask.any() and rng.random() < self.tumor_crop_fraction:
            candidates = np.argwhere(mask > 0)
            centre = candidates[rng.integers(len(candidates))]
        elif index in self.hard_negatives:
            centre = np.array(self.hard_negatives[index])
        else:
            # Anywhere with signal in FLAIR: a crop of empty background teaches nothing.
            candidates = np.argwhere(image[:, :, FLAIR_CHANNEL] > SIGNAL_LEVEL)
            middle = np.array([MODEL_INPUT_SIZE // 2, MODEL_INPUT_SIZE // 2])
            centre = candidates[rng.integers(len(candidates))] if len(candidates) else middle
        jitter = rng.integers(-self.crop_size // 4, self.crop_size // 4 + 1, size=2)
        top, left = np.clip(centre + jitter - self.crop_size // 2, 0, MODEL_INPUT_SIZE - self.crop_size)
        return slice(top, top + self.crop_size), slice(left, left + self.crop_size)

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)
