from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.training.conftest import PATIENTS, SLICES_PER_PATIENT
from training.augmentation import STRONG
from training.data import (
    DatasetError,
    SliceArrays,
    SliceBatches,
    find_slices,
    load_slices,
    load_split,
    split_patients,
)
from training.train import build_parser, make_train_batches

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("layout", ["dev_layout", "original_layout"])
def test_find_slices_reads_both_layouts_sorted_numerically(layout, request):
    records = find_slices(request.getfixturevalue(layout))
    assert len(records) == len(PATIENTS) * SLICES_PER_PATIENT
    first_patient = [record for record in records if record.patient_id == records[0].patient_id]
    assert [record.slice_number for record in first_patient] == list(range(1, SLICES_PER_PATIENT + 1))
    arrays = load_slices(first_patient)
    assert arrays.images.shape == (SLICES_PER_PATIENT, 256, 256, 3)
    assert arrays.images.dtype == np.uint8
    assert set(np.unique(arrays.masks)) == {0, 1}
    assert arrays.labels.tolist() == [float(4 <= n <= 8) for n in range(1, SLICES_PER_PATIENT + 1)]


def test_tif_and_jpg_layouts_hold_the_same_masks(dev_layout, original_layout):
    dev = load_slices(find_slices(dev_layout))
    original = load_slices(find_slices(original_layout))
    np.testing.assert_array_equal(dev.masks, original.masks)
    # JPEG quality 95 against lossless TIFF: close, not equal.
    assert np.abs(dev.images.astype(int) - original.images.astype(int)).mean() < 3


def test_find_slices_reports_missing_mask_with_its_path(dev_layout, tmp_path):
    root = shutil.copytree(dev_layout, tmp_path / "copy")
    image = root / PATIENTS[0] / f"{PATIENTS[0]}_3.jpg"
    (root / PATIENTS[0] / f"{PATIENTS[0]}_3_mask.png").unlink()
    with pytest.raises(DatasetError, match=str(image)):
        find_slices(root)


def test_load_slices_reports_unreadable_file_with_its_path(dev_layout, tmp_path):
    root = shutil.copytree(dev_layout, tmp_path / "copy")
    broken = root / PATIENTS[1] / f"{PATIENTS[1]}_2.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=f"{broken}: unreadable"):
        load_slices(find_slices(root))


def test_load_slices_reports_wrong_shape_with_its_path(dev_layout, tmp_path):
    from PIL import Image

    root = shutil.copytree(dev_layout, tmp_path / "copy")
    small = root / PATIENTS[2] / f"{PATIENTS[2]}_5.jpg"
    Image.new("RGB", (128, 128)).save(small)
    with pytest.raises(DatasetError, match=f"{small}: expected a 256x256x3 image"):
        load_slices(find_slices(root))


def test_find_slices_rejects_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="no slices found"):
        find_slices(tmp_path)


def test_split_is_by_patient_deterministic_and_complete():
    patients = [f"TCGA_{site}_{number:04d}" for site in ("CS", "DU", "HT", "FG") for number in range(22)]
    split = split_patients(patients, validation_count=9, test_count=9, seed=7)
    sets = {name: set(members) for name, members in split.items()}
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]
    assert sets["train"] | sets["validation"] | sets["test"] == set(patients)
    assert (len(sets["validation"]), len(sets["test"])) == (9, 9)
    assert split == split_patients(list(reversed(patients)), validation_count=9, test_count=9, seed=7)
    # Stratified: the held-out patients come from every site.
    assert {patient.split("_")[1] for patient in sets["test"]} == {"CS", "DU", "HT", "FG"}


def test_split_rejects_more_held_out_than_patients():
    with pytest.raises(ValueError, match="below the patient count 3"):
        split_patients(["TCGA_CS_1", "TCGA_CS_2", "TCGA_CS_3"], validation_count=2, test_count=1)


def test_committed_split_has_no_patient_in_two_sets():
    split = load_split(REPO_ROOT / "models" / "split.json")
    sets = [set(split[name]) for name in ("train", "validation", "test")]
    assert sum(len(members) for members in sets) == len(set().union(*sets)) == 88
    assert json.loads((REPO_ROOT / "models" / "split.json").read_text())["seed"] == 2019


def test_slice_batches_give_labels_or_masks(dev_layout):
    arrays = load_slices(find_slices(dev_layout))
    labels = SliceBatches(arrays, "label", batch_size=4)
    inputs, targets = labels[0]
    assert inputs.shape == (4, 256, 256, 3) and inputs.dtype == np.float32
    assert inputs.min() >= 0.0 and inputs.max() <= 1.0
    assert targets.shape == (4, 1)
    masks = SliceBatches(arrays, "mask", batch_size=4, augment=True, shuffle=True)
    inputs, targets = masks[0]
    assert targets.shape == (4, 256, 256, 1)
    assert set(np.unique(targets)) <= {0.0, 1.0}


def test_train_option_strong_augmentation_reaches_the_batches(dev_layout):
    arrays = load_slices(find_slices(dev_layout))
    args = build_parser().parse_args(["--model", "classifier", "--augmentation", "strong"])
    batches = make_train_batches(args, arrays)
    standard = SliceBatches(arrays, "label", batch_size=args.batch_size, augment=True, shuffle=True, seed=args.seed)

    assert batches.augmentation == STRONG
    # Same seed, same slices, same flips and turns drawn first: only the strong intensity changes tell them apart.
    assert not np.array_equal(batches[0][0], standard[0][0])
    np.testing.assert_array_equal(batches[0][1], standard[0][1])


def test_slice_batches_sample_negatives_afresh_each_epoch(dev_layout):
    arrays = load_slices(find_slices(dev_layout))
    positives = int(arrays.labels.sum())
    batches = SliceBatches(arrays, "mask", batch_size=8, negatives_per_epoch=3, shuffle=True, seed=1)
    epochs = []
    for _ in range(4):
        assert len(batches.indices) == positives + 3
        assert arrays.labels[batches.indices].sum() == positives
        epochs.append(frozenset(batches.indices.tolist()))
        batches.on_epoch_end()
    assert len(set(epochs)) > 1


def small_volume_arrays() -> SliceArrays:
    """Two patients of 1x1 "slices": A has tumor on slices 4-5 of 1-9, B none."""
    numbers = np.array([*range(1, 10), 1, 2, 3], dtype=np.int32)
    masks = np.zeros((12, 1, 1), np.uint8)
    masks[[3, 4]] = 1
    patients = np.array(["A"] * 9 + ["B"] * 3)
    return SliceArrays(np.zeros((12, 1, 1, 3), np.uint8), masks, patients, numbers)


def test_slices_to_tumor_counts_within_each_patient():
    distance = small_volume_arrays().slices_to_tumor()
    assert distance[:9].tolist() == [3, 2, 1, 0, 0, 1, 2, 3, 4]
    assert (distance[9:] > 1000).all()  # no tumor in B: never "near"


def test_classifier_batches_weigh_tumor_free_slices_near_the_tumor(dev_layout):
    arrays = small_volume_arrays()
    weighted = SliceBatches(arrays, "label", near_tumor_weight=3.0, near_tumor_slices=2)
    assert weighted.sample_weights.tolist() == [1, 3, 3, 1, 1, 3, 3, 1, 1, 1, 1, 1]
    real = load_slices(find_slices(dev_layout))
    inputs, labels, weights = SliceBatches(real, "label", batch_size=4, near_tumor_weight=2.0)[0]
    assert weights.shape == (4,) and set(weights.tolist()) <= {1.0, 2.0}
    assert len(SliceBatches(real, "label", batch_size=4)[0]) == 2  # no weights asked: (inputs, labels)


def test_classifier_batches_weigh_small_tumors_and_near_tumor_slices_together():
    # small_volume_arrays' layout with 1x2 slices: slice 4 of A holds one tumor pixel, slice 5 two.
    volume = small_volume_arrays()
    masks = np.zeros((12, 1, 2), np.uint8)
    masks[3, 0, 0] = 1
    masks[4] = 1
    arrays = SliceArrays(np.zeros((12, 1, 2, 3), np.uint8), masks, volume.patient_ids, volume.slice_numbers)

    small = SliceBatches(arrays, "label", small_tumor_weight=4.0, small_tumor_pixels=2)
    assert small.sample_weights.tolist() == [1, 1, 1, 4, 1, 1, 1, 1, 1, 1, 1, 1]
    both = SliceBatches(
        arrays, "label", small_tumor_weight=4.0, small_tumor_pixels=2, near_tumor_weight=3.0, near_tumor_slices=2
    )
    assert both.sample_weights.tolist() == [1, 3, 3, 4, 1, 3, 3, 1, 1, 1, 1, 1]


def test_mixup_blends_slices_and_labels_in_pairs_and_repeats_on_resume(dev_layout):
    arrays = load_slices(find_slices(dev_layout))
    plain = SliceBatches(arrays, "label", batch_size=8, shuffle=True, seed=3)
    mixed = SliceBatches(arrays, "label", batch_size=8, shuffle=True, seed=3, mixup_alpha=0.4)
    (plain_inputs, plain_labels), (inputs, labels) = plain[0], mixed[0]
    plain_inputs64 = plain_inputs.astype(np.float64)  # float32 sums over a slice are too coarse here
    assert 0 < plain_labels.sum() < 8, "the fixture batch needs both kinds of slice"

    # Every slice keeps the larger share: a tumor slice stays >= 0.5, a tumor-free one <= 0.5.
    assert ((labels >= 0.5) == ((plain_labels == 1) | (labels == 0.5))).all()
    assert ((labels > 0) & (labels < 1)).any()
    assert not np.allclose(inputs, plain_inputs) and inputs.dtype == np.float32
    # Each mixed slice is share * its own + (1 - share) * a partner's from the batch, share >= 0.5, label alike.
    for own in range(8):
        fits = []
        for partner in range(8):
            difference = plain_inputs64[own] - plain_inputs64[partner]
            if partner == own or not difference.any():
                share = 1.0 if np.allclose(inputs[own], plain_inputs[own]) else np.nan
            else:
                share = float(
                    np.vdot(inputs[own] - plain_inputs64[partner], difference) / np.vdot(difference, difference)
                )
            blend = share * plain_inputs64[own] + (1 - share) * plain_inputs64[partner]
            label = share * plain_labels[own] + (1 - share) * plain_labels[partner]
            if np.isfinite(share) and np.abs(blend - inputs[own]).max() < 1e-4 and np.isclose(label, labels[own]).all():
                fits.append(share)
        assert fits and 0.5 - 1e-4 <= max(fits) <= 1 + 1e-4, own
    # Drawn from (seed, epoch, batch): the same batch again, as after a resume, is the same.
    again = SliceBatches(arrays, "label", batch_size=8, shuffle=True, seed=3, mixup_alpha=0.4)[0]
    np.testing.assert_array_equal(again[0], inputs)
    np.testing.assert_array_equal(again[1], labels)
    with pytest.raises(ValueError, match="classifier's labels only"):
        SliceBatches(arrays, "mask", mixup_alpha=0.4)
    args = build_parser().parse_args(["--model", "classifier", "--mixup-alpha", "0.4"])
    assert make_train_batches(args, arrays).mixup_alpha == 0.4


def test_tumor_paste_gives_tumor_free_slices_a_tumor_of_their_own_patient_and_repeats_on_resume(dev_layout):
    arrays = load_slices(find_slices(dev_layout))
    everything = len(arrays.images)  # one batch of every slice, in order, no other augmentation
    plain_inputs, plain_labels = SliceBatches(arrays, "label", batch_size=everything, seed=5)[0]
    inputs, labels = SliceBatches(arrays, "label", batch_size=everything, seed=5, tumor_paste_fraction=1.0)[0]
    tumor_free = np.flatnonzero(plain_labels[:, 0] == 0)
    tumors = np.flatnonzero(plain_labels[:, 0] == 1)

    # Tumor slices are left alone; every tumor-free one (the synthetic blobs all lie on the brain) becomes a tumor
    # slice, changed only around a tumor of its own patient: the pasted tumor, its 3-pixel rim and the feathering.
    np.testing.assert_array_equal(inputs[tumors], plain_inputs[tumors])
    assert labels[:, 0].tolist() == [1.0] * everything
    for index in tumor_free:
        own = tumors[arrays.patient_ids[tumors] == arrays.patient_ids[index]]
        near_own_tumors = cv2.dilate((arrays.masks[own] > 0).any(axis=0).astype(np.uint8), np.ones((21, 21), np.uint8))
        changed = np.abs(inputs[index] - plain_inputs[index]).max(axis=2) > 0
        assert changed.any() and not (changed & (near_own_tumors == 0)).any(), index
    # A share of the tumor-free slices, drawn from (seed, epoch, position): the same again after a resume.
    half = SliceBatches(arrays, "label", batch_size=everything, seed=5, tumor_paste_fraction=0.5)[0]
    assert 0 < half[1][tumor_free].sum() < len(tumor_free)
    again = SliceBatches(arrays, "label", batch_size=everything, seed=5, tumor_paste_fraction=0.5)[0]
    np.testing.assert_array_equal(again[0], half[0])
    with pytest.raises(ValueError, match="classifier's labels only"):
        SliceBatches(arrays, "mask", tumor_paste_fraction=0.3)
    with pytest.raises(ValueError, match="between 0 and 1"):
        SliceBatches(arrays, "label", tumor_paste_fraction=1.5)
