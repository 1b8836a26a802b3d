"""Cross-validation of the classifier: folds by patient, out-of-fold predictions, the averaged fold models, and the
threshold chosen on out-of-fold slices together with the validation patients."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.core.model_store import load_models
from app.core.preprocessing import flair_only
from tests.training.conftest import keras_runs_eagerly
from training import (
    compare_test_time_views,
    cross_validation,
    evaluate,
    evaluation_metrics,
    export,
    model_card,
    pipeline_choices,
    slice_predictions,
    train,
)
from training.classifier_variants import build_flair_classifier
from training.data import DatasetError, find_slices, load_slices
from training.models import build_classifier, build_resunet, load_classifier, save_checkpoint

PATIENTS = [f"TCGA_{site}_{number:04d}_20000101" for site in ("CS", "DU", "HT") for number in range(7)]


def test_folds_hold_each_patient_once_and_spread_each_institution():
    folds = cross_validation.make_folds(PATIENTS, folds=5, seed=7)
    assert sorted(patient for fold in folds for patient in fold) == sorted(PATIENTS)
    assert {len(fold) for fold in folds} <= {4, 5}
    for fold in folds:
        assert {patient.split("_")[1] for patient in fold} == {"CS", "DU", "HT"}
    assert cross_validation.make_folds(list(reversed(PATIENTS)), folds=5, seed=7) == folds
    assert cross_validation.make_folds(PATIENTS, folds=5, seed=8) != folds


@pytest.mark.parametrize("count", [1, len(PATIENTS) + 1])
def test_impossible_fold_counts_are_refused(count):
    with pytest.raises(DatasetError):
        cross_validation.make_folds(PATIENTS, folds=count, seed=7)


def test_fold_splits_keep_the_validation_and_test_patients_out_of_every_fold(tmp_path):
    split_path = tmp_path / "split.json"
    split = {"train": PATIENTS[:15], "validation": PATIENTS[15:18], "test": PATIENTS[18:]}
    split_path.write_text(json.dumps(split))
    cross_validation.main(["folds", "--split", str(split_path), "--folds", "3", "--output-dir", str(tmp_path / "cv")])
    fold_splits = [json.loads((tmp_path / "cv" / f"split_fold{index}.json").read_text()) for index in range(3)]
    assert sorted(patient for fold in fold_splits for patient in fold["validation"]) == sorted(split["train"])
    for fold in fold_splits:
        assert sorted(fold["train"] + fold["validation"]) == sorted(split["train"])
        assert sorted(fold["test"]) == sorted(split["validation"] + split["test"])


@pytest.fixture(scope="module")
def fold_runs(dev_layout, tmp_path_factory):
    """Two one-epoch fold classifiers on the tiny dataset (two training patients, one validation, one test)."""
    root = tmp_path_factory.mktemp("cv")
    patients = sorted({record.patient_id for record in find_slices(dev_layout)})
    split = root / "split.json"
    split.write_text(json.dumps({"train": patients[:2], "validation": [patients[2]], "test": [patients[3]]}))
    cross_validation.main(["folds", "--split", str(split), "--folds", "2", "--output-dir", str(root)])
    with keras_runs_eagerly():
        runs = []
        for index in range(2):
            run = root / f"fold{index}"
            train.main(
                [
                    "--model",
                    "classifier",
                    "--data-root",
                    str(dev_layout),
                    "--split",
                    str(root / f"split_fold{index}.json"),
                    "--output-dir",
                    str(run),
                    "--epochs",
                    "1",
                    "--batch-size",
                    "8",
                    "--seed",
                    str(index),
                    "--no-jit-compile",  # XLA's compile would take most of this one-epoch run
                ]
            )
            runs.append(run)
        arguments = [argument for run in runs for argument in ("--run", str(run))]
        cross_validation.main(
            ["combine", "--data-root", str(dev_layout), *arguments, "--output-dir", str(root / "ensemble")]
        )
    return root, split, patients


def test_out_of_fold_predictions_come_from_the_model_that_never_saw_the_patient(fold_runs, dev_layout):
    root, _, patients = fold_runs
    saved = np.load(root / "ensemble" / cross_validation.OUT_OF_FOLD_NAME)
    assert set(saved["patient_ids"]) == set(patients[:2])
    for index in range(2):
        held_out = json.loads((root / f"split_fold{index}.json").read_text())["validation"]
        member = build_classifier()
        member.load_weights(root / f"fold{index}" / "best.weights.h5")
        rows = np.isin(saved["patient_ids"], held_out)
        arrays = load_slices([record for record in find_slices(dev_layout) if record.patient_id in held_out])
        expected = slice_predictions.model_outputs(member, arrays.images).reshape(-1)
        np.testing.assert_allclose(saved["probabilities"][rows], expected, atol=1e-5)
        mirrored = slice_predictions.model_outputs(member, np.ascontiguousarray(arrays.images[:, :, ::-1])).reshape(-1)
        np.testing.assert_allclose(saved["flip_average_probabilities"][rows], (expected + mirrored) / 2, atol=1e-5)
        np.testing.assert_array_equal(saved["labels"][rows], arrays.labels)
    summary = json.loads((root / "ensemble" / "out_of_fold.json").read_text())
    assert summary["out_of_fold"]["patients"] == 2 and len(summary["folds"]) == 2
    assert set(summary["out_of_fold"]["flip_average"]) == {"roc_auc", "sensitivity", "specificity", "threshold"}
    assert all("flip_average" in fold for fold in summary["folds"])


def untrained_segmenter(folder: Path) -> Path:
    """Segmenter weights for the evaluation's second stage (its figures are not what these tests check)."""
    weights = folder / "segmenter.weights.h5"
    if not weights.exists():
        build_resunet().save_weights(weights)
    return weights


def evaluation_arguments(fold_runs, dev_layout: Path, folder: Path, output_dir: Path) -> list[str]:
    root, split, _ = fold_runs
    return [
        "--data-root",
        str(dev_layout),
        "--split",
        str(split),
        "--classifier-weights",
        str(root / "ensemble" / "best.weights.h5"),
        "--segmenter-weights",
        str(untrained_segmenter(folder)),
        "--threshold-slices",
        str(root / "ensemble" / cross_validation.OUT_OF_FOLD_NAME),
        "--output-dir",
        str(output_dir),
        "--no-plots",
    ]


def test_the_averaged_classifier_is_the_mean_of_its_folds_and_exports_like_any_classifier(
    fold_runs, dev_layout, tmp_path
):
    root, split, patients = fold_runs
    averaged = load_classifier(root / "ensemble" / "best.weights.h5")
    members = []
    for index in range(2):
        member = build_classifier()
        member.load_weights(root / f"fold{index}" / "best.weights.h5")
        members.append(member)
    images = np.random.default_rng(5).random((3, 256, 256, 3)).astype("float32")
    expected = (np.asarray(members[0](images)) + np.asarray(members[1](images))) / 2
    assert not np.allclose(members[0](images), members[1](images), atol=1e-4), "folds must differ for this test"
    np.testing.assert_allclose(averaged(images), expected, atol=1e-6)

    evaluation_dir = tmp_path / "evaluation"
    evaluate.main(evaluation_arguments(fold_runs, dev_layout, tmp_path, evaluation_dir))
    result = json.loads((evaluation_dir / "evaluation.json").read_text())
    out_of_fold = np.load(root / "ensemble" / cross_validation.OUT_OF_FOLD_NAME)
    chosen_on = result["classifier_threshold_chosen_on"]
    assert chosen_on["out_of_fold_patients"] == 2 and chosen_on["validation_patients"] == 1
    assert chosen_on["slices"] == len(out_of_fold["labels"]) + result["validation"]["classifier"]["slices"]
    validation = load_slices([record for record in find_slices(dev_layout) if record.patient_id == patients[2]])
    expected_threshold = pipeline_choices.choose_classifier_threshold(
        np.concatenate([validation.labels, out_of_fold["labels"]]),
        np.concatenate(
            [slice_predictions.model_outputs(averaged, validation.images).reshape(-1), out_of_fold["probabilities"]]
        ),
        0.95,
    )
    assert result["thresholds"]["classifier"] == pytest.approx(expected_threshold, abs=1e-6)

    models_dir = tmp_path / "models"
    export.main(
        [
            "--classifier-weights",
            str(root / "ensemble" / "best.weights.h5"),
            "--segmenter-weights",
            str(untrained_segmenter(tmp_path)),
            "--evaluation",
            str(evaluation_dir / "evaluation.json"),
            "--split",
            str(split),
            "--output-dir",
            str(models_dir),
        ]
    )
    manifest, classifier, _ = load_models(models_dir)
    assert manifest.classifier.name == "tumor_classifier"
    assert manifest.classifier.threshold == pytest.approx(result["thresholds"]["classifier"])
    np.testing.assert_allclose(classifier(images), expected, atol=1e-6)
    card = (models_dir / "README.md").read_text()
    assert "mean of 2 CNNs" in card
    assert f"{chosen_on['slices']} slices: the 1 validation patients and the 2 training patients" in card


def test_out_of_fold_slices_of_a_validation_patient_cannot_choose_the_threshold(fold_runs, dev_layout, tmp_path):
    root, _, patients = fold_runs
    saved = dict(np.load(root / "ensemble" / cross_validation.OUT_OF_FOLD_NAME))
    saved["patient_ids"] = np.where(saved["patient_ids"] == patients[0], patients[2], saved["patient_ids"])
    leaking = tmp_path / "leaking.npz"
    np.savez(leaking, **saved)
    arguments = evaluation_arguments(fold_runs, dev_layout, tmp_path, tmp_path / "evaluation")
    arguments[arguments.index("--threshold-slices") + 1] = str(leaking)
    with pytest.raises(SystemExit) as stopped:
        evaluate.main(arguments)
    assert stopped.value.code == 2
    assert not (tmp_path / "evaluation" / "evaluation.json").exists()


def test_flip_averaged_thresholds_refuse_out_of_fold_files_without_flip_averages(fold_runs, tmp_path):
    root, _, _ = fold_runs
    saved = np.load(root / "ensemble" / cross_validation.OUT_OF_FOLD_NAME)
    older = tmp_path / "older.npz"
    np.savez(older, probabilities=saved["probabilities"], labels=saved["labels"], patient_ids=saved["patient_ids"])

    _, flipped, _ = pipeline_choices.read_threshold_slices(root / "ensemble" / cross_validation.OUT_OF_FOLD_NAME, True)
    np.testing.assert_array_equal(flipped, saved["flip_average_probabilities"])
    with pytest.raises(DatasetError, match="holds no flip_average_probabilities"):
        pipeline_choices.read_threshold_slices(older, flip_average=True)


def test_test_time_views_agree_with_the_out_of_fold_figures_of_combine(fold_runs, dev_layout, tmp_path):
    root, split, _ = fold_runs
    output = tmp_path / "views.json"
    result = compare_test_time_views.main(
        [
            "--data-root",
            str(dev_layout),
            "--fold-run",
            str(root / "fold0"),
            "--fold-run",
            str(root / "fold1"),
            "--classifier",
            str(root / "fold0" / "best.weights.h5"),
            "--split",
            str(split),
            "--output",
            str(output),
        ]
    )
    assert json.loads(output.read_text()) == result
    combined = json.loads((root / "ensemble" / "out_of_fold.json").read_text())["out_of_fold"]
    for view_set, expected in (("plain", combined), ("flip", combined["flip_average"])):
        for key in ("roc_auc", "specificity", "threshold"):
            assert result["out_of_fold"][view_set][key] == pytest.approx(expected[key], abs=1e-5)
    assert set(result["validation"]) >= set(compare_test_time_views.VIEW_SETS)
    # A rotation is a different view: the sets that add rotations do not just repeat the flip average.
    assert result["out_of_fold"]["flip and rotations"]["threshold"] != result["out_of_fold"]["flip"]["threshold"]


def test_the_flair_views_are_the_slice_and_its_mirror_with_every_channel_flair():
    images = np.random.default_rng(5).integers(0, 256, size=(2, 256, 256, 3), dtype=np.uint8)
    model = build_classifier()

    outputs = compare_test_time_views.view_outputs(model, images)

    assert np.isfinite(outputs["flair"]).all()
    np.testing.assert_allclose(outputs["flair"], slice_predictions.model_outputs(model, flair_only(images)).reshape(-1))
    mirrored_flair = flair_only(np.ascontiguousarray(images[:, :, ::-1]))
    np.testing.assert_allclose(
        outputs["mirror flair"], slice_predictions.model_outputs(model, mirrored_flair).reshape(-1)
    )
    assert not np.allclose(outputs["flair"], outputs["slice"])
    assert compare_test_time_views.VIEW_SETS["flip and FLAIR"] == ("slice", "mirror", "flair", "mirror flair")


def test_combine_reads_a_fold_run_in_the_architecture_it_saved(fold_runs, dev_layout, tmp_path):
    """Style review 51 F2: combine loaded each fold into a plain `build_classifier()` with Keras's `load_weights`,
    which loads the layers that match and skips the rest without a word: a fold trained as another classifier (here
    the one that reads FLAIR alone, whose run saves its architecture) was scored as a plain CNN it never was."""
    root, _, _ = fold_runs
    variant = tmp_path / "fold1_flair"
    flair_classifier = build_flair_classifier()
    save_checkpoint(flair_classifier, variant)
    (variant / "arguments.json").write_text((root / "fold1" / "arguments.json").read_text())

    cross_validation.combine(str(dev_layout), [root / "fold0", variant], tmp_path / "ensemble")

    held_out = json.loads((root / "split_fold1.json").read_text())["validation"]
    arrays = load_slices([record for record in find_slices(dev_layout) if record.patient_id in held_out])
    saved = np.load(tmp_path / "ensemble" / cross_validation.OUT_OF_FOLD_NAME)
    expected = slice_predictions.model_outputs(flair_classifier, arrays.images).reshape(-1)
    np.testing.assert_allclose(saved["probabilities"][np.isin(saved["patient_ids"], held_out)], expected, atol=1e-5)


def test_refit_splits_hold_each_validation_patient_out_once_and_never_train_on_test(tmp_path):
    split_path = tmp_path / "split.json"
    split = {"train": PATIENTS[:12], "validation": PATIENTS[12:18], "test": PATIENTS[18:]}
    split_path.write_text(json.dumps(split))
    arguments = ["refit-folds", "--split", str(split_path), "--folds", "3", "--output-dir", str(tmp_path / "refit")]
    cross_validation.main(arguments)
    folds = [json.loads((tmp_path / "refit" / f"split_refit_fold{index}.json").read_text()) for index in range(3)]
    assert sorted(patient for fold in folds for patient in fold["validation"]) == sorted(split["validation"])
    for fold in folds:
        assert len(fold["validation"]) == 2
        assert sorted(fold["train"] + fold["validation"]) == sorted(split["train"] + split["validation"])
        assert fold["test"] == split["test"]
    refit_all = json.loads((tmp_path / "refit" / "split_refit_all.json").read_text())
    assert sorted(refit_all["train"]) == sorted(split["train"] + split["validation"])
    assert refit_all["test"] == split["test"]


def test_combine_judges_each_fold_by_the_weights_it_is_given(fold_runs, dev_layout, tmp_path):
    root, _, _ = fold_runs
    runs = [root / "fold0", root / "fold1"]
    swapped = [run / "best.weights.h5" for run in reversed(runs)]

    cross_validation.combine(str(dev_layout), runs, tmp_path / "ensemble", weights=swapped)

    saved = np.load(tmp_path / "ensemble" / cross_validation.OUT_OF_FOLD_NAME)
    for index, weights in enumerate(swapped):
        held_out = json.loads((root / f"split_fold{index}.json").read_text())["validation"]
        arrays = load_slices([record for record in find_slices(dev_layout) if record.patient_id in held_out])
        rows = np.isin(saved["patient_ids"], held_out)
        expected = slice_predictions.model_outputs(load_classifier(weights), arrays.images).reshape(-1)
        np.testing.assert_allclose(saved["probabilities"][rows], expected, atol=1e-5)
        np.testing.assert_array_equal(saved["slice_numbers"][rows], arrays.slice_numbers)
    with pytest.raises(DatasetError, match="once per --run"):
        cross_validation.combine(str(dev_layout), runs, tmp_path / "again", weights=swapped[:1])


def validation_out_of_fold_file(dev_layout: Path, patient: str, path: Path, drop_last: bool = False) -> np.ndarray:
    """An out-of-fold file for the validation patient's slices with known probabilities (returned, in load order)."""
    arrays = load_slices([record for record in find_slices(dev_layout) if record.patient_id == patient])
    probabilities = np.random.default_rng(11).random(len(arrays.labels)).astype(np.float32)
    keep = slice(0, -1) if drop_last else slice(None)
    np.savez(
        path,
        probabilities=probabilities[keep][::-1],  # another order than the evaluation loads them in
        flip_average_probabilities=probabilities[keep][::-1] / 2,  # told apart from the plain ones (review 54 F8)
        labels=arrays.labels[keep][::-1],
        patient_ids=arrays.patient_ids[keep][::-1],
        slice_numbers=arrays.slice_numbers[keep][::-1],
    )
    return probabilities


def test_a_refit_classifier_is_judged_on_validation_by_the_out_of_fold_models(fold_runs, dev_layout, tmp_path):
    """A classifier refit on the validation patients has learnt them: the threshold and every other validation
    choice must come from models that never saw them, matched to the validation slices one by one."""
    root, split, patients = fold_runs
    out_of_fold = tmp_path / "validation_out_of_fold.npz"
    probabilities = validation_out_of_fold_file(dev_layout, patients[2], out_of_fold) / 2  # the flip averages
    arguments = evaluation_arguments(fold_runs, dev_layout, tmp_path, tmp_path / "evaluation")
    position = arguments.index("--threshold-slices")
    arguments[position : position + 2] = ["--validation-out-of-fold", str(out_of_fold), "--classifier-flip-average"]

    evaluate.main(arguments)

    result = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    validation = load_slices([record for record in find_slices(dev_layout) if record.patient_id == patients[2]])
    expected = pipeline_choices.choose_classifier_threshold(validation.labels, probabilities, 0.95)
    assert result["thresholds"]["classifier"] == pytest.approx(expected, abs=1e-6)
    assert result["classifier_threshold_chosen_on"]["validation_out_of_fold"] is True
    figures = evaluation_metrics.classification_metrics(validation.labels, probabilities, expected)
    assert result["validation"]["classifier"]["confusion_matrix"] == figures["confusion_matrix"]
    assert result["validation"]["classifier"]["roc_auc"] == pytest.approx(figures["roc_auc"])
    card = model_card.classifier_line(
        {"name": "tumor_classifier", "version": "9.9.9", "parameters": 1, "threshold": expected},
        1,
        result["classifier_threshold_chosen_on"],
    )
    assert "which the classifier was refit on" in card


def test_an_out_of_fold_file_missing_a_validation_slice_is_refused(fold_runs, dev_layout, tmp_path):
    _, _, patients = fold_runs
    out_of_fold = tmp_path / "short.npz"
    validation_out_of_fold_file(dev_layout, patients[2], out_of_fold, drop_last=True)
    arguments = evaluation_arguments(fold_runs, dev_layout, tmp_path, tmp_path / "evaluation")
    position = arguments.index("--threshold-slices")
    arguments[position : position + 2] = ["--validation-out-of-fold", str(out_of_fold)]
    with pytest.raises(SystemExit) as stopped:
        evaluate.main(arguments)
    assert stopped.value.code == 2
    assert not (tmp_path / "evaluation" / "evaluation.json").exists()
