"""Train both models for one epoch on a tiny generated dataset, evaluate, export, and reload what was exported."""

from __future__ import annotations

import argparse
import functools
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from app.core.model_store import ModelStoreError, load_models, read_manifest
from app.inference import SlicePrediction
from app.series.result import single_slice_answers
from training import (
    checkpoint_comparison,
    compare_classifiers,
    compare_segmenters,
    evaluate,
    evaluation_metrics,
    export,
    model_card,
    pipeline_choices,
    served_masks,
    train,
    validation,
)
from training.data import DatasetError, SliceArrays, find_slices, load_slices, usage_errors
from training.models import (
    ARCHITECTURE_NAME,
    build_classifier,
    build_resunet,
    load_classifier,
    load_segmenter,
    weights_average,
)

# The runs below train a ResUNet of three stages: the full one spends about 20 s tracing its training step. (Four or
# eight filters in the first stage crashed TensorFlow 2.21's CPU kernels here: heap corruption at batch 8, crop 128.)
tiny_resunet = functools.partial(build_resunet, filters=(16, 32, 64))


def train_both(dev_layout, runs, split) -> None:
    for model in ("classifier", "segmenter"):
        train.main(
            [
                "--model",
                model,
                "--data-root",
                str(dev_layout),
                "--output-dir",
                str(runs / model),
                "--split",
                str(split),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--negatives-per-epoch",
                "2",
                "--no-jit-compile",  # XLA's compile would take most of this one-epoch run
            ]
        )


@pytest.fixture(scope="module")
def trained_run(dev_layout, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    split = runs / "split.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "build_resunet", tiny_resunet)
        train_both(dev_layout, runs, split)
    evaluate.main(
        [
            "--data-root",
            str(dev_layout),
            "--split",
            str(split),
            "--output-dir",
            str(runs / "evaluation"),
            "--classifier-weights",
            str(runs / "classifier" / "best.weights.h5"),
            "--segmenter-weights",
            str(runs / "segmenter" / "best.weights.h5"),
        ]
    )
    return runs


def evaluation_arguments(trained_run, data_root, output_dir, *extra_arguments: str) -> list[str]:
    """`training.evaluate`'s command line for the run's two best checkpoints on `data_root`."""
    return [
        "--data-root",
        str(data_root),
        "--split",
        str(trained_run / "split.json"),
        "--output-dir",
        str(output_dir),
        "--classifier-weights",
        str(trained_run / "classifier" / "best.weights.h5"),
        "--segmenter-weights",
        str(trained_run / "segmenter" / "best.weights.h5"),
        *extra_arguments,
    ]


def export_run(trained_run, models_dir, *extra_arguments: str, evaluation=None) -> None:
    export.main(
        [
            "--classifier-weights",
            str(trained_run / "classifier" / "best.weights.h5"),
            "--segmenter-weights",
            str(trained_run / "segmenter" / "best.weights.h5"),
            "--evaluation",
            str(evaluation or trained_run / "evaluation" / "evaluation.json"),
            "--split",
            str(trained_run / "split.json"),
            "--output-dir",
            str(models_dir),
            *extra_arguments,
        ]
    )


def test_training_writes_checkpoint_history_and_summary(trained_run):
    for model in ("classifier", "segmenter"):
        assert (trained_run / model / "best.weights.h5").stat().st_size > 0
        assert (trained_run / model / "history.csv").read_text().startswith("epoch,")
        summary = json.loads((trained_run / model / "run.json").read_text())
        assert summary["epochs_run"] == 1
    split = json.loads((trained_run / "split.json").read_text())
    assert not set(split["train"]) & (set(split["validation"]) | set(split["test"]))


def test_evaluation_reports_thresholds_and_test_metrics(trained_run):
    result = json.loads((trained_run / "evaluation" / "evaluation.json").read_text())
    assert 0.0 <= result["thresholds"]["classifier"] <= 1.0
    assert result["thresholds"]["mask"] in pipeline_choices.MASK_THRESHOLD_CANDIDATES
    metrics = result["metrics"]
    assert metrics["patients"] == 1
    assert set(metrics["classifier"]["confusion_matrix"]) == {"tn", "fp", "fn", "tp"}
    assert 0.0 <= metrics["segmentation"]["volume_dice_mean"] <= 1.0
    assert "flair_only" in metrics
    # The series clean-up's size is chosen on validation among the candidates, and both answers are reported.
    assert result["series_min_component_voxels"] in pipeline_choices.MIN_COMPONENT_VOXEL_CANDIDATES
    assert set(result["validation"]["min_component_voxels_volume_dice"]) == {
        str(candidate) for candidate in pipeline_choices.MIN_COMPONENT_VOXEL_CANDIDATES
    }
    assert 0.0 <= metrics["segmentation_single_slices"]["volume_dice_mean"] <= 1.0
    # So is the probability from which a slice answered alone shows its mask.
    assert result["single_slice_mask_min_probability"] in pipeline_choices.SINGLE_SLICE_MASK_MIN_PROBABILITY_CANDIDATES
    candidates = result["validation"]["single_slice_mask_min_probability_candidates"]
    assert set(candidates) == {
        str(candidate) for candidate in pipeline_choices.SINGLE_SLICE_MASK_MIN_PROBABILITY_CANDIDATES
    }
    assert all(
        set(figures) == {"volume_dice_mean", "nonempty_mask_rate_on_tumor_free_slices"}
        for figures in candidates.values()
    )
    # And after it, the smallest mask piece such a slice keeps.
    assert result["single_slice_min_component_pixels"] in pipeline_choices.SINGLE_SLICE_MIN_COMPONENT_PIXEL_CANDIDATES
    pieces = result["validation"]["single_slice_min_component_pixels_candidates"]
    assert set(pieces) == {str(candidate) for candidate in pipeline_choices.SINGLE_SLICE_MIN_COMPONENT_PIXEL_CANDIDATES}
    for plot in ("training_curves.png", "roc_confusion.png", "test_slices.png"):
        assert (trained_run / "evaluation" / plot).read_bytes()[:4] == b"\x89PNG"


def test_a_validation_only_evaluation_reads_no_test_patient_and_chooses_as_the_full_one(
    trained_run, dev_layout, tmp_path, monkeypatch
):
    # A recipe is judged before any test figure is seen: the test patients are not even read, and the settings
    # chosen on validation are those of the full evaluation.
    split = json.loads((trained_run / "split.json").read_text())
    read_patients: set[str] = set()
    real_load_slices = evaluate.load_slices

    def recording_load_slices(records):
        read_patients.update(record.patient_id for record in records)
        return real_load_slices(records)

    monkeypatch.setattr(evaluate, "load_slices", recording_load_slices)
    evaluate.main(evaluation_arguments(trained_run, dev_layout, tmp_path, "--validation-only"))
    assert read_patients == set(split["validation"])
    assert not (tmp_path / "evaluation.json").exists()
    judged = json.loads((tmp_path / "validation_evaluation.json").read_text())
    full = json.loads((trained_run / "evaluation" / "evaluation.json").read_text())
    assert "metrics" not in judged
    assert judged["thresholds"] == full["thresholds"]
    assert judged["series_min_component_voxels"] == full["series_min_component_voxels"]
    assert judged["validation"]["segmentation"] == full["validation"]["segmentation"]
    assert 0.0 <= judged["validation"]["flair_only"]["segmentation"]["volume_dice_mean"] <= 1.0


def test_export_then_reload_gives_the_same_outputs(trained_run, tmp_path):
    models_dir = tmp_path / "models"
    export_run(trained_run, models_dir)
    manifest, classifier, segmenter = load_models(models_dir)
    assert manifest.classifier.name == "tumor_classifier" and manifest.segmenter.name == "tumor_segmenter"
    evaluation = json.loads((trained_run / "evaluation" / "evaluation.json").read_text())
    assert manifest.segmenter.series_min_component_voxels == evaluation["series_min_component_voxels"]
    assert manifest.segmenter.single_slice_mask_min_probability == evaluation["single_slice_mask_min_probability"]
    assert manifest.segmenter.single_slice_min_component_pixels == evaluation["single_slice_min_component_pixels"]
    assert set(manifest.files) == {
        "tumor_classifier.json",
        "tumor_classifier.weights.h5",
        "tumor_segmenter.json",
        "tumor_segmenter.weights.h5",
        "split.json",
    }
    images = np.random.default_rng(3).random((2, 256, 256, 3)).astype("float32")
    reference_classifier = build_classifier()
    reference_classifier.load_weights(trained_run / "classifier" / "best.weights.h5")
    reference_segmenter = tiny_resunet()
    reference_segmenter.load_weights(trained_run / "segmenter" / "best.weights.h5")
    np.testing.assert_allclose(classifier(images), reference_classifier(images), atol=1e-6)
    np.testing.assert_allclose(segmenter(images), reference_segmenter(images), atol=1e-6)
    # The architecture JSON holds no optimizer or loss: it loads without custom objects.
    assert "focal_tversky" not in (models_dir / "tumor_segmenter.json").read_text()


def test_export_writes_a_model_card_with_the_measured_figures(trained_run, tmp_path):
    models_dir = tmp_path / "models"
    export_run(trained_run, models_dir, "--evaluation-command", "python -m training.evaluate --example")
    card = (models_dir / "README.md").read_text()
    metrics = json.loads((trained_run / "evaluation" / "evaluation.json").read_text())["metrics"]
    volume_dice = metrics["segmentation"]["volume_dice_mean"]
    assert f"| per-patient volume Dice, mean (series, after the clean-up) | {100 * volume_dice:.1f} %" in card
    assert "python -m training.evaluate --example" in card
    validation = json.loads((trained_run / "evaluation" / "evaluation.json").read_text())["validation"]
    assert f"| test, FLAIR only | validation ({validation['patients']} patients), all three sequences |" in card
    assert "Research use only" in card
    assert "history.md" not in card  # no history beside this card: no link to one
    training_patients = json.loads((trained_run / "split.json").read_text())["train"]
    sites = sorted({patient.split("_")[1] for patient in training_patients})
    assert f"Trained on {len(training_patients)} patients" in card
    assert f"from {len(sites)} institutions (TCGA site codes {', '.join(sites)})" in card


@pytest.mark.parametrize("option", ["--comparison", "--training-run"])
def test_export_with_a_missing_card_input_writes_nothing(trained_run, tmp_path, capsys, option):
    """Review 52 F1: a missing --comparison or --training-run stopped the export after the manifest and the models
    were written, leaving a loadable model folder without its model card."""
    missing = tmp_path / "not-there"
    with pytest.raises(SystemExit) as raised:
        export_run(trained_run, tmp_path / "models", option, str(missing))
    assert raised.value.code == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


def test_export_keeps_the_model_history_and_links_to_it(trained_run, tmp_path):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    history = "# Model history\n\n## A recipe tried and not adopted\n"
    (models_dir / "history.md").write_text(history)
    export_run(trained_run, models_dir)
    assert (models_dir / "history.md").read_text() == history
    assert "[history.md](history.md)" in (models_dir / "README.md").read_text()


def test_tampered_weights_are_refused(trained_run, tmp_path):
    models_dir = tmp_path / "models"
    export_run(trained_run, models_dir)
    weights = models_dir / "tumor_segmenter.weights.h5"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelStoreError, match="sha256 mismatch for .*tumor_segmenter.weights.h5"):
        read_manifest(models_dir)
    weights.unlink()
    with pytest.raises(ModelStoreError, match="missing: .*tumor_segmenter.weights.h5"):
        read_manifest(models_dir)


def test_segmenter_comparison_uses_validation_patients_and_each_candidates_own_mask_threshold(
    trained_run, dev_layout, tmp_path
):
    untrained = tmp_path / "untrained" / "best.weights.h5"
    untrained.parent.mkdir()
    untrained_model = tiny_resunet()
    untrained_model.save_weights(untrained)
    (untrained.parent / ARCHITECTURE_NAME).write_text(untrained_model.to_json())  # as a run saves it
    trained = trained_run / "segmenter" / "best.weights.h5"
    output = tmp_path / "comparison.json"
    compare_segmenters.main(
        [
            "--data-root",
            str(dev_layout),
            "--classifier-weights",
            str(trained_run / "classifier" / "best.weights.h5"),
            "--segmenter",
            f"trained={trained}",
            "--segmenter",
            f"again={trained}",
            "--segmenter",
            f"untrained={untrained}",
            "--split",
            str(trained_run / "split.json"),
            "--output",
            str(output),
        ]
    )
    result = json.loads(output.read_text())
    split = json.loads((trained_run / "split.json").read_text())
    assert result["split"] == "validation" and result["patients"] == len(split["validation"])
    candidates = result["candidates"]
    assert list(candidates) == ["trained", "again", "untrained", "weights averaged"]
    assert candidates["trained"]["training"]["negatives_per_epoch"] == 2
    assert candidates["untrained"]["training"] is None
    assert candidates["weights averaged"]["training"] is None and candidates["weights averaged"]["weights"] is None
    # The same checkpoint measures the same; the candidates share the classifier threshold but not the mask one.
    assert candidates["trained"]["segmentation"] == candidates["again"]["segmentation"]
    for candidate in candidates.values():
        assert candidate["mask_threshold"] in pipeline_choices.MASK_THRESHOLD_CANDIDATES
        assert 0.0 <= candidate["segmentation"]["volume_dice_mean"] <= 1.0


def test_segmenter_weights_average_of_two_copies_is_that_checkpoint_and_is_saved(trained_run, dev_layout, tmp_path):
    trained = trained_run / "segmenter" / "best.weights.h5"
    averaged = tmp_path / "averaged.weights.h5"
    result = compare_segmenters.main(
        ["--data-root", str(dev_layout), "--classifier-weights", str(trained_run / "classifier" / "best.weights.h5")]
        + ["--segmenter", f"trained={trained}", "--segmenter", f"again={trained}", "--split"]
        + [
            str(trained_run / "split.json"),
            "--output",
            str(tmp_path / "c.json"),
            "--save-weights-average",
            str(averaged),
        ]
    )
    candidates = result["candidates"]
    assert candidates["weights averaged"]["weights"] == str(averaged)
    for figure in ("volume_dice_mean", "tumor_slice_dice_mean", "nonempty_mask_rate_on_tumor_free_slices"):
        assert candidates["weights averaged"]["segmentation"][figure] == pytest.approx(
            candidates["trained"]["segmentation"][figure], abs=1e-4
        )
    saved, original = tiny_resunet(), tiny_resunet()
    saved.load_weights(averaged)
    original.load_weights(trained)
    for saved_variable, original_variable in zip(saved.get_weights(), original.get_weights(), strict=True):
        np.testing.assert_allclose(saved_variable, original_variable, rtol=1e-6)


def test_segmenter_probability_mean_is_judged_and_saved_as_one_checkpoint_that_outputs_the_mean(
    trained_run, dev_layout, tmp_path
):
    keras.utils.set_random_seed(5)
    untrained = tmp_path / "untrained" / "best.weights.h5"
    untrained.parent.mkdir()
    untrained_model = tiny_resunet()
    untrained_model.save_weights(untrained)
    (untrained.parent / ARCHITECTURE_NAME).write_text(untrained_model.to_json())
    trained = trained_run / "segmenter" / "best.weights.h5"
    result = compare_segmenters.main(
        ["--data-root", str(dev_layout), "--classifier-weights", str(trained_run / "classifier" / "best.weights.h5")]
        + ["--segmenter", f"trained={trained}", "--segmenter", f"untrained={untrained}", "--split"]
        + [str(trained_run / "split.json"), "--output", str(tmp_path / "c.json")]
        + ["--save-probability-mean", str(tmp_path / "mean")]
    )
    saved = tmp_path / "mean" / "best.weights.h5"
    assert result["candidates"]["probability mean"]["weights"] == str(saved)
    assert 0.0 <= result["candidates"]["probability mean"]["segmentation"]["volume_dice_mean"] <= 1.0
    ensemble = load_segmenter(saved)  # through the architecture.json beside it, as evaluate and export load it
    assert ensemble.name == "tumor_segmenter"
    members = [load_segmenter(weights) for weights in (trained, untrained)]
    images = np.random.default_rng(4).random((2, 256, 256, 3), dtype=np.float32)
    outputs = [keras.ops.convert_to_numpy(model(images)) for model in members]
    assert not np.allclose(*outputs, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ensemble(images)), (outputs[0] + outputs[1]) / 2, atol=1e-6)


def test_segmenter_candidates_must_be_named():
    with pytest.raises(SystemExit):
        compare_segmenters.build_parser().parse_args(
            ["--data-root", "x", "--classifier-weights", "c", "--output", "o", "--segmenter", "no-name-here"]
        )


def test_classifier_comparison_measures_each_checkpoint_and_their_combinations(trained_run, dev_layout, tmp_path):
    trained = trained_run / "classifier" / "best.weights.h5"
    output = tmp_path / "classifiers.json"
    compare_classifiers.main(
        [
            "--data-root",
            str(dev_layout),
            "--classifier",
            f"trained={trained}",
            "--classifier",
            f"again={trained}",
            "--split",
            str(trained_run / "split.json"),
            "--recalibrate-batch-norm",
            "--output",
            str(output),
            "--save-weights-average",
            str(tmp_path / "averaged.weights.h5"),
        ]
    )
    result = json.loads(output.read_text())
    split = json.loads((trained_run / "split.json").read_text())
    assert result["split"] == "validation" and result["patients"] == len(split["validation"])
    results = result["results"]
    assert set(results) == {
        "trained",
        "again",
        "trained + flip average",
        "again + flip average",
        "mean of all",
        "mean of all + flip average",
        "weights averaged",
        "trained, batch norm re-estimated",
        "again, batch norm re-estimated",
    }
    # Two copies of one checkpoint: their mean and their averaged weights are that checkpoint again.
    for combined, alone in (
        ("mean of all", "trained"),
        ("weights averaged", "trained"),
        ("mean of all + flip average", "trained + flip average"),
    ):
        assert results[combined]["specificity"] == pytest.approx(results[alone]["specificity"])
        assert results[combined]["threshold"] == pytest.approx(results[alone]["threshold"], abs=1e-5)
    for figures in results.values():
        assert figures["sensitivity"] >= result["target_sensitivity"]
    # The saved average of two copies is the checkpoint itself, ready for training.export.
    saved = build_classifier()
    saved.load_weights(tmp_path / "averaged.weights.h5")
    original = build_classifier()
    original.load_weights(trained)
    for saved_variable, original_variable in zip(saved.get_weights(), original.get_weights(), strict=True):
        np.testing.assert_allclose(saved_variable, original_variable, rtol=1e-6)


def test_the_probability_mean_of_two_classifiers_is_one_checkpoint_that_outputs_their_mean(tmp_path):
    keras.utils.set_random_seed(7)
    first, second = build_classifier(), build_classifier()
    checkpoint_comparison.save_probability_mean([first, second], tmp_path / "mean", "classifiers", "tumor_classifier")
    loaded = load_classifier(tmp_path / "mean" / "best.weights.h5")
    images = np.random.default_rng(0).random((2, 256, 256, 3), dtype=np.float32)
    first_out, second_out = (keras.ops.convert_to_numpy(model(images)) for model in (first, second))
    assert not np.allclose(first_out, second_out, atol=1e-4)  # two different members, so the mean says something
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)), (first_out + second_out) / 2, atol=1e-6)


def test_a_probability_mean_of_one_classifier_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="two or more"):
        checkpoint_comparison.save_probability_mean([build_classifier()], tmp_path / "mean", "classifiers", "c")
    assert not (tmp_path / "mean").exists()


def test_weights_average_is_the_mean_of_every_variable_batch_norm_statistics_included():
    first, second = build_classifier(name="first"), build_classifier(name="second")
    second.set_weights([variable + 1.0 for variable in first.get_weights()])

    averaged = weights_average([first, second])

    assert len(averaged.get_weights()) == len(first.get_weights())
    for average, variable in zip(averaged.get_weights(), first.get_weights(), strict=True):
        np.testing.assert_allclose(average, variable + 0.5, rtol=1e-6)


def test_saving_a_weights_average_of_one_classifier_is_a_usage_error(trained_run, dev_layout, tmp_path, capsys):
    trained = trained_run / "classifier" / "best.weights.h5"
    with pytest.raises(SystemExit) as stopped:
        compare_classifiers.main(
            [
                "--data-root",
                str(dev_layout),
                "--classifier",
                f"trained={trained}",
                "--split",
                str(trained_run / "split.json"),
                "--output",
                str(tmp_path / "c.json"),
                "--save-weights-average",
                str(tmp_path / "averaged.weights.h5"),
            ]
        )
    assert stopped.value.code == 2
    assert "two or more classifiers" in capsys.readouterr().err
    assert not (tmp_path / "averaged.weights.h5").exists()


def test_model_card_training_table_names_a_strong_augmentation():
    run = {
        "name": "cla_strong_ft",
        "model": "classifier",
        "epochs_run": 9,
        "best_epoch": 4,
        "monitor": "val_auc",
        "slices_per_second": 46.6,
        "seconds": 560.0,
    }
    strong = {**run, "arguments": {"learning_rate": 1e-4, "batch_size": 32, "augmentation": "strong"}}
    standard = {**run, "arguments": {"learning_rate": 1e-4, "batch_size": 32, "augmentation": "standard"}}

    def row(summary: dict) -> str:
        return next(line for line in model_card.training_lines([summary]) if line.startswith("| cla_strong_ft |"))

    assert "; strong augmentation" in row(strong)
    assert "augmentation" not in row(standard)


def one_patient_with_tumor_on_slices_0_and_1(slices: int) -> SliceArrays:
    """One patient's slices in order, 16 x 16, with a 6 x 6 tumor on the first two and none on the rest."""
    masks = np.zeros((slices, 16, 16), dtype=np.uint8)
    masks[0:2, 4:10, 4:10] = 1
    return SliceArrays(
        images=np.zeros((slices, 16, 16, 3), dtype=np.uint8),
        masks=masks,
        patient_ids=np.array(["P"] * slices),
        slice_numbers=np.arange(1, slices + 1),
    )


def test_series_answers_count_a_slice_positive_only_when_its_mask_survives_the_clean_up():
    # One patient, four slices in order: a tumor spanning slices 0-1, then two tumor-free slices. The classifier
    # calls all four positive; the segmenter draws the tumor and a 4-pixel speck on slice 3.
    arrays = one_patient_with_tumor_on_slices_0_and_1(slices=4)
    masks = arrays.masks
    maps = masks.astype(np.float32)
    maps[3, 0:2, 0:2] = 1.0
    probabilities = np.array([0.9, 0.9, 0.9, 0.9])

    kept_everything = evaluation_metrics.evaluate_split(arrays, probabilities, maps, 0.5, 0.5, min_component_voxels=0)
    cleaned = evaluation_metrics.evaluate_split(arrays, probabilities, maps, 0.5, 0.5, min_component_voxels=10)

    # A single slice's answer is the classifier's: both tumor-free slices are false positives.
    assert cleaned["classifier"]["confusion_matrix"] == {"tn": 0, "fp": 2, "fn": 0, "tp": 2}
    # In a series, slice 2 (no mask) is negative, and slice 3 too once its speck is cleaned away.
    assert kept_everything["series_answers"]["confusion_matrix"] == {"tn": 1, "fp": 1, "fn": 0, "tp": 2}
    assert cleaned["series_answers"]["confusion_matrix"] == {"tn": 2, "fp": 0, "fn": 0, "tp": 2}
    assert cleaned["series_answers"]["sensitivity"] == 1.0 and cleaned["series_answers"]["specificity"] == 1.0

    card_rows = model_card._figures({**cleaned, "segmenter_alone_nonempty_mask_rate_on_tumor_free_slices": 0.5})
    assert "| specificity in a series (slice positive when its mask survives the clean-up) | 100.0 % |" in card_rows
    assert "| specificity at the deployed threshold, each slice alone | 0.0 % |" in card_rows


def test_training_and_evaluation_share_one_false_mask_rate():
    """Newcomer review 45 F12: the epoch logs computed it apart, and answered 0.0 (a perfect rate) for no slice."""
    arrays = one_patient_with_tumor_on_slices_0_and_1(slices=4)
    maps = arrays.masks.astype(np.float32)
    maps[3, 0:2, 0:2] = 1.0  # a mask on one of the two tumor-free slices
    probabilities = np.full(4, 0.9)

    figures = validation.served_pipeline_figures(arrays, probabilities, maps, 1.0, 0.5)
    segmentation = evaluation_metrics.segmentation_metrics(arrays, maps > 0.5)

    assert figures["val_empty_slice_mask_rate"] == segmentation["nonempty_mask_rate_on_tumor_free_slices"] == 0.5
    tumor_only = one_patient_with_tumor_on_slices_0_and_1(slices=2)
    masks = tumor_only.masks.astype(np.float32)
    assert evaluation_metrics.false_mask_rate(tumor_only.labels, masks) is None
    assert np.isnan(
        validation.served_pipeline_figures(tumor_only, np.full(2, 0.9), masks, 1.0, 0.5)["val_empty_slice_mask_rate"]
    )


def test_the_tversky_score_figure_and_the_model_card_name_the_same_alpha():
    arrays = one_patient_with_tumor_on_slices_0_and_1(slices=3)
    masks = np.zeros_like(arrays.masks, dtype=bool)
    masks[0, 4:10, 4:10] = True  # slice 1's tumor missed: alpha weighs the missed pixels

    segmentation = evaluation_metrics.segmentation_metrics(arrays, masks)
    metrics = evaluation_metrics.evaluate_split(arrays, np.full(3, 0.9), masks.astype(np.float32), 0.5, 0.5)

    alpha = evaluation_metrics.TVERSKY_SCORE_ALPHA
    assert segmentation["tversky_score"] == pytest.approx(36 / (36 + alpha * 36))
    card_rows = model_card._figures({**metrics, "segmenter_alone_nonempty_mask_rate_on_tumor_free_slices": 0.0})
    tversky_row = next(row for row in card_rows if row.startswith("| Tversky score"))
    assert tversky_row.startswith(f"| Tversky score (alpha {alpha};")
    assert tversky_row.endswith(f"| {metrics['segmentation']['tversky_score']:.3f} |")


def test_the_series_clean_up_size_is_chosen_within_the_rules_limits():
    # One patient, four 256 x 256 slices: a tumor of 3200 voxels on slices 0-1 and a small one of 400 on slice 3,
    # each drawn exactly, and a false 900-voxel blob on tumor-free slice 2. By Dice alone 1600 wins (it drops the
    # blob), but it also drops the small tumor: series sensitivity 2/3.
    truth = np.zeros((4, 256, 256), dtype=np.uint8)
    truth[0:2, 10:50, 10:50] = 1
    truth[3, 100:120, 200:220] = 1
    arrays = SliceArrays(
        images=np.zeros((4, 256, 256, 3), dtype=np.uint8),
        masks=truth,
        patient_ids=np.array(["P"] * 4),
        slice_numbers=np.arange(1, 5),
    )
    masks = truth.astype(bool)
    masks[2, 200:230, 200:230] = True

    by_dice, figures = pipeline_choices.choose_min_component_voxels(arrays, masks)
    keeping_sensitivity, _ = pipeline_choices.choose_min_component_voxels(
        arrays, masks, pipeline_choices.ChoiceLimits(series_min_sensitivity=1.0)
    )

    assert by_dice == 1600 and figures["1600"]["volume_dice_mean"] == pytest.approx(6400 / 6800)
    assert figures["1600"]["sensitivity"] == pytest.approx(2 / 3)
    assert figures["1600"]["nonempty_mask_rate_on_tumor_free_slices"] == 0.0
    assert figures["400"]["sensitivity"] == 1.0 and figures["400"]["nonempty_mask_rate_on_tumor_free_slices"] == 1.0
    assert figures["800"]["volume_dice_mean"] == pytest.approx(6400 / 7700)  # small tumor gone, blob kept
    assert keeping_sensitivity == 0  # 0-400 tie on Dice (7200 / 8100): the smallest
    both = pipeline_choices.ChoiceLimits(series_min_sensitivity=1.0, series_max_false_mask_rate=0.5)
    with pytest.raises(DatasetError, match="no series clean-up candidate stays within the limits"):
        pipeline_choices.choose_min_component_voxels(arrays, masks, both)


def test_a_lone_slice_s_mask_settings_are_chosen_within_the_rules_false_mask_limit():
    # As in the test below, with a one-pixel speck (256 pixels of the 256 x 256 grid) on tumor-free slice 2: drawing
    # everything (0.0) has the best Dice and gives slice 2 a mask.
    arrays = one_patient_with_tumor_on_slices_0_and_1(slices=3)
    maps = arrays.masks.astype(np.float32)
    maps[2, 0, 0] = 1.0
    probabilities = np.array([0.3, 0.9, 0.35])
    gated = served_masks.gated_masks(probabilities, maps, 0.2, 0.5)
    no_false_masks = pipeline_choices.ChoiceLimits(single_slice_max_false_mask_rate=0.0)

    by_dice, _ = pipeline_choices.choose_single_slice_mask_min_probability(arrays, probabilities, gated)
    within, figures = pipeline_choices.choose_single_slice_mask_min_probability(
        arrays, probabilities, gated, no_false_masks
    )

    assert by_dice == 0.0
    assert within == 0.4 and figures["0.3"]["nonempty_mask_rate_on_tumor_free_slices"] == 1.0
    pixels, _ = pipeline_choices.choose_single_slice_min_component_pixels(
        arrays, probabilities, gated, 0.0, no_false_masks
    )
    assert pixels == 400  # the first candidate that drops the speck: 300 grid pixels round to 1 of 16 x 16, 400 to 2


def test_an_evaluation_whose_limits_no_clean_up_size_meets_is_a_usage_error(trained_run, dev_layout, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        evaluate.main(
            evaluation_arguments(
                trained_run, dev_layout, tmp_path, "--validation-only", "--series-min-sensitivity", "1.1"
            )
        )
    assert stopped.value.code == 2
    assert "no series clean-up candidate stays within the limits" in capsys.readouterr().err


def test_a_flip_averaged_evaluation_chooses_its_own_threshold_and_reaches_the_manifest(
    trained_run, dev_layout, tmp_path
):
    flipped_dir = tmp_path / "evaluation"
    evaluate.main(evaluation_arguments(trained_run, dev_layout, flipped_dir, "--classifier-flip-average", "--no-plots"))
    plain = json.loads((trained_run / "evaluation" / "evaluation.json").read_text())
    flipped = json.loads((flipped_dir / "evaluation.json").read_text())
    assert plain["classifier_flip_average"] is False and flipped["classifier_flip_average"] is True
    # The threshold is chosen for the averaged probabilities, not carried over from the plain ones.
    assert flipped["thresholds"]["classifier"] != plain["thresholds"]["classifier"]

    models_dir = tmp_path / "models"
    export_run(trained_run, models_dir)
    assert read_manifest(models_dir).classifier.flip_average is False
    export_run(trained_run, models_dir, evaluation=flipped_dir / "evaluation.json")
    manifest = read_manifest(models_dir)
    assert manifest.classifier.flip_average is True and manifest.segmenter.flip_average is False
    assert manifest.classifier.threshold == flipped["thresholds"]["classifier"]
    assert (
        "the mean of its probabilities for the slice and its left-right mirror"
        in (models_dir / "README.md").read_text()
    )


def test_a_slice_answered_alone_shows_its_mask_only_from_the_chosen_probability_as_the_service_does():
    # One patient, three slices: tumor on slices 0 and 1, each drawn exactly; the classifier is unsure of slice 0
    # (0.3), and slice 2 is tumor-free but drawn anyway (0.35). A minimum of 0.4 costs slice 0's Dice and removes
    # slice 2's false mask.
    arrays = one_patient_with_tumor_on_slices_0_and_1(slices=3)
    maps = arrays.masks.astype(np.float32)
    maps[2, 0:8, 0:8] = 1.0
    probabilities = np.array([0.3, 0.9, 0.35])
    gated = served_masks.gated_masks(probabilities, maps, 0.2, 0.5)

    shown = served_masks.masks_shown_alone(probabilities, gated, 0.4)

    assert [bool(mask.any()) for mask in shown] == [False, True, False]
    served = single_slice_answers(
        [SlicePrediction(float(p), True, mask.astype(np.uint8)) for p, mask in zip(probabilities, gated, strict=True)],
        0.4,
    )
    assert [prediction.mask is not None for prediction in served] == [bool(mask.any()) for mask in shown]
    figures = evaluation_metrics.evaluate_split(
        arrays, probabilities, maps, 0.2, 0.5, single_slice_mask_min_probability=0.4
    )
    assert figures["segmentation_single_slices"]["nonempty_mask_rate_on_tumor_free_slices"] == 0.0
    assert figures["segmentation_single_slices_every_positive"]["nonempty_mask_rate_on_tumor_free_slices"] == 1.0
    # 36 of 72 tumor pixels found, none drawn outside: Dice 2 * 36 / (72 + 36).
    assert figures["segmentation_single_slices"]["volume_dice_mean"] == pytest.approx(2 * 36 / 108)
    # The choice: here drawing everything (0.0) scores 2 * 72 / (72 + 72 + 64), better than losing slice 0.
    chosen, by_candidate = pipeline_choices.choose_single_slice_mask_min_probability(arrays, probabilities, gated)
    assert by_candidate["0.0"]["volume_dice_mean"] == pytest.approx(2 * 72 / 208) and chosen == 0.0
    assert by_candidate["0.0"]["nonempty_mask_rate_on_tumor_free_slices"] == 1.0
    assert by_candidate["0.4"]["nonempty_mask_rate_on_tumor_free_slices"] == 0.0


def test_a_slice_answered_alone_loses_its_small_mask_pieces_as_the_service_does():
    # One patient, three 64 x 64 slices (1/16 of the 256 x 256 grid): an 8 x 8 tumor on slices 0 and 1, drawn
    # exactly, and a 3 x 3 speck drawn on tumor-free slice 2. 200 grid pixels are 12.5 here: the speck goes.
    masks = np.zeros((3, 64, 64), dtype=np.uint8)
    masks[0:2, 20:28, 20:28] = 1
    arrays = SliceArrays(
        images=np.zeros((3, 64, 64, 3), dtype=np.uint8),
        masks=masks,
        patient_ids=np.array(["P"] * 3),
        slice_numbers=np.arange(1, 4),
    )
    maps = masks.astype(np.float32)
    maps[2, 50:53, 50:53] = 1.0
    probabilities = np.array([0.9, 0.9, 0.9])
    gated = served_masks.gated_masks(probabilities, maps, 0.5, 0.5)

    shown = served_masks.masks_shown_alone(probabilities, gated, 0.0, min_pixels=200)

    assert [int(mask.sum()) for mask in shown] == [64, 64, 0]
    served = single_slice_answers(
        [SlicePrediction(0.9, True, mask.astype(np.uint8)) for mask in gated], min_probability=0.0, min_pixels=200
    )
    assert [prediction.mask is not None for prediction in served] == [True, True, False]
    assert all(prediction.detected for prediction in served)  # the slice stays a tumor by the classifier
    figures = evaluation_metrics.evaluate_split(
        arrays, probabilities, maps, 0.5, 0.5, single_slice_min_component_pixels=200
    )
    assert figures["segmentation_single_slices"]["volume_dice_mean"] == 1.0
    assert figures["segmentation_single_slices"]["nonempty_mask_rate_on_tumor_free_slices"] == 0.0
    # The choice: 150 grid pixels (9.4, rounded to 9) still keep the 9-pixel speck; 200 is the smallest that drops it.
    chosen, by_candidate = pipeline_choices.choose_single_slice_min_component_pixels(arrays, probabilities, gated, 0.0)
    assert by_candidate["0"]["volume_dice_mean"] == pytest.approx(2 * 128 / (128 + 137))
    assert by_candidate["150"]["nonempty_mask_rate_on_tumor_free_slices"] == 1.0
    assert chosen == 200 and by_candidate["400"]["volume_dice_mean"] == 1.0


def test_the_model_card_says_how_a_lone_slice_s_mask_is_finished():
    neither = model_card.series_lines({"series_min_component_voxels": 1600})
    both = model_card.series_lines(
        {
            "series_min_component_voxels": 1600,
            "single_slice_mask_min_probability": 0.2,
            "single_slice_min_component_pixels": 200,
        }
    )

    assert len(neither) == 1 and "1600 voxels" in neither[0]
    assert both[0] == neither[0] and "at least 0.20" in both[1]
    assert "mask pieces of at least 200 pixels of the 256 x 256 grid" in both[2]


def test_tumor_free_answers_are_split_between_the_tumors_edge_and_away_from_it():
    # One patient, eight slices: tumor on slices 0-1; slices 2-5 are 1-4 slices from it (the edge), 6-7 further.
    # The classifier calls slices 2, 3 and 7 tumor; the segmenter draws on slices 3 and 7 (a 4 x 4 square).
    arrays = one_patient_with_tumor_on_slices_0_and_1(slices=8)
    maps = arrays.masks.astype(np.float32)
    maps[[3, 7], 0:4, 0:4] = 1.0
    probabilities = np.array([0.9, 0.9, 0.6, 0.6, 0.1, 0.1, 0.1, 0.6])

    figures = evaluation_metrics.evaluate_split(arrays, probabilities, maps, 0.5, 0.5)
    by_distance = figures["tumor_free_single_slices_by_distance_to_tumor"]

    assert by_distance["tumor_edge_slices"] == 4
    assert by_distance["tumor_edge"] == {
        "tumor_free_slices": 4,
        "specificity": 0.5,
        "false_positives": 2,
        "nonempty_mask_rate": 0.25,
    }
    assert by_distance["away_from_tumor"] == {
        "tumor_free_slices": 2,
        "specificity": 0.5,
        "false_positives": 1,
        "nonempty_mask_rate": 0.5,
    }
    rows = model_card._tumor_edge_rows(figures)
    assert (
        "| specificity on tumor-free slices 1-4 slices from a tumor slice, each slice alone | 50.0 % (4 slices) |"
        in rows
    )
    assert "| other tumor-free slices given a mask, each slice alone | 50.0 % |" in rows
    assert model_card._tumor_edge_rows({}) == []


def test_label_smoothing_reaches_the_classifiers_loss():
    # A confident right answer costs nothing without smoothing; with 0.1 it is trained towards 0.95, not 1.
    labels, confident = np.array([[1.0]], np.float32), np.array([[1.0 - 1e-6]], np.float32)
    plain = train.compile_model("classifier", 1e-3, 10, 0.7, jit_compile=False)
    smoothed = train.compile_model("classifier", 1e-3, 10, 0.7, jit_compile=False, label_smoothing=0.1)

    assert float(plain.loss(labels, confident)) < 1e-3
    assert float(smoothed.loss(labels, confident)) > 0.5


def test_focal_gamma_makes_the_slices_the_classifier_gets_right_weigh_less():
    # Plain cross-entropy of p = 0.9 for a tumor slice is 0.105; focal (gamma 2) scales it by (1 - 0.9)^2 = 0.01,
    # while a slice it gets wrong (p = 0.1) keeps (1 - 0.1)^2 = 81 % of its loss.
    labels = np.array([[1.0]], np.float32)
    easy, hard = np.array([[0.9]], np.float32), np.array([[0.1]], np.float32)
    plain = train.compile_model("classifier", 1e-3, 10, 0.7, jit_compile=False)
    focal = train.compile_model("classifier", 1e-3, 10, 0.7, jit_compile=False, focal_gamma=2.0)

    assert float(focal.loss(labels, easy)) / float(plain.loss(labels, easy)) == pytest.approx(0.01, rel=0.05)
    assert float(focal.loss(labels, hard)) / float(plain.loss(labels, hard)) == pytest.approx(0.81, rel=0.05)


def test_weight_decay_shrinks_the_weights_apart_from_the_gradient():
    # With a zero gradient Adam leaves a weight alone, while AdamW shrinks it by learning rate x weight decay.
    plain = train.compile_model("classifier", 1e-3, 10, 0.7, jit_compile=False)
    decayed = train.compile_model("classifier", 1e-3, 10, 0.7, jit_compile=False, weight_decay=0.5)
    assert type(plain.optimizer) is keras.optimizers.Adam
    assert isinstance(decayed.optimizer, keras.optimizers.AdamW)
    assert decayed.optimizer.weight_decay == pytest.approx(0.5)

    kernel = decayed.get_layer("tumor_probability").kernel
    before = np.array(kernel.numpy())
    decayed.optimizer.apply_gradients([(keras.ops.zeros_like(kernel), kernel)])
    assert np.allclose(kernel.numpy(), before * (1 - 1e-3 * 0.5), rtol=1e-5)


def test_a_resumed_run_keeps_its_weight_decay(tmp_path):
    # `--resume` reloads the saved model with its optimizer: the decay must come back with it, not plain Adam.
    decayed = train.compile_model("classifier", 1e-3, 10, 0.7, jit_compile=False, weight_decay=0.5)
    decayed.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(reloaded.optimizer, keras.optimizers.AdamW)
    assert reloaded.optimizer.weight_decay == pytest.approx(0.5)


def test_weight_decay_must_not_be_negative(tmp_path):
    with pytest.raises(SystemExit):
        train.parse_arguments(
            [
                "--model",
                "classifier",
                "--data-root",
                str(tmp_path),
                "--output-dir",
                str(tmp_path),
                "--weight-decay",
                "-1",
            ]
        )


def test_patient_bootstrap_intervals_draw_patients_not_slices():
    # Two patients, four slices each, tumor on slices 0-1. Patient A's tumor-free slices are called tumor, patient
    # B's are not: drawn again, a set of two can hold A twice (specificity 0) or B twice (specificity 1).
    one = one_patient_with_tumor_on_slices_0_and_1(slices=4)
    arrays = SliceArrays(
        images=np.concatenate([one.images, one.images]),
        masks=np.concatenate([one.masks, one.masks]),
        patient_ids=np.array(["A"] * 4 + ["B"] * 4),
        slice_numbers=np.concatenate([one.slice_numbers, one.slice_numbers]),
    )
    called_tumor = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
    masks = arrays.masks > 0

    both = evaluation_metrics.patient_bootstrap_intervals(arrays, called_tumor, called_tumor, masks, draws=200)
    only_b = evaluation_metrics.patient_bootstrap_intervals(
        arrays.subset(["B"]), called_tumor[4:], called_tumor[4:], masks[4:], draws=50
    )

    assert both["draws"] == 200
    assert both["specificity"] == [0.0, 1.0]
    assert both["nonempty_mask_rate_on_tumor_free_slices_alone"] == [0.0, 1.0]
    assert both["sensitivity"] == [1.0, 1.0] and both["volume_dice_mean"] == [1.0, 1.0]
    # One patient drawn again is always that patient: the interval is its own figure.
    assert only_b["specificity"] == [1.0, 1.0] and only_b["nonempty_mask_rate_on_tumor_free_slices_alone"] == [0, 0]
    rows = model_card.interval_lines({"patients": 2, "intervals_95_patient_bootstrap": both})
    assert "specificity 0.0-100.0 %" in rows[0] and "(200 draws;" in rows[0]


def test_classifier_threshold_keeps_its_sensitivity_when_the_scores_move_in_the_8th_digit():
    labels = np.array([1] * 20 + [0] * 5)
    probabilities = np.array([*np.linspace(0.11, 0.9, 20), 0.01, 0.02, 0.05, 0.08, 0.1159])

    threshold = pipeline_choices.choose_classifier_threshold(labels, probabilities, target_sensitivity=0.95)

    deciding = np.sort(probabilities[labels > 0])[1]  # 0.95 of 20 allows one miss: the second lowest decides
    assert deciding * (1 - 2e-4) < threshold < deciding
    rerun = probabilities - 5e-8  # another runtime's rounding
    assert ((rerun >= threshold) & (labels > 0)).sum() == 19
    assert ((probabilities >= threshold) & (labels == 0)).sum() == 0


def test_classifier_threshold_refuses_slices_without_a_tumor():
    """Newcomer review 45 F14: it returned 0.5 without a word."""
    with pytest.raises(DatasetError, match="at least one tumor slice is required .*; got 0 of 3 slices"):
        pipeline_choices.choose_classifier_threshold(np.zeros(3), np.array([0.1, 0.2, 0.3]), target_sensitivity=0.95)


def test_a_tumor_map_classifier_run_learns_from_the_masks_and_saves_a_served_classifier(trained_run, dev_layout):
    """The run starts from a plain classifier's weights, trains its region map against the masks, and its
    checkpoint loads (`load_classifier`) as a classifier of one probability per slice: what evaluate and export take."""
    run = trained_run / "tumor_map"
    train.main(
        [
            "--model",
            "classifier",
            "--classifier-backbone",
            "cnn-tumor-map",
            "--initial-weights",
            str(trained_run / "classifier" / "best.weights.h5"),
            "--data-root",
            str(dev_layout),
            "--output-dir",
            str(run),
            "--split",
            str(trained_run / "split.json"),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--no-jit-compile",
        ]
    )
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "val_specificity" in history[0]
    # Its batches carry the masks (the region targets), not one label per slice.
    batches = train.make_train_batches(
        train.parse_arguments(["--resume", str(run)]), load_slices(find_slices(dev_layout))
    )
    assert batches.target == "mask" and batches[0][1].shape[1:] == (256, 256, 1)
    classifier = load_classifier(run / "best.weights.h5")
    images = np.random.default_rng(9).random((3, 256, 256, 3)).astype("float32")
    probabilities = np.asarray(classifier(images))
    assert probabilities.shape == (3, 1) and ((probabilities >= 0) & (probabilities <= 1)).all()


def test_options_about_one_label_per_slice_are_refused_for_the_tumor_map_classifier(capsys):
    with pytest.raises(SystemExit) as raised:
        train.parse_arguments(
            [
                "--model",
                "classifier",
                "--classifier-backbone",
                "cnn-tumor-map",
                "--mixup-alpha",
                "0.2",
                "--data-root",
                "data",
                "--output-dir",
                "runs/x",
            ]
        )
    assert raised.value.code == 2
    assert "--mixup-alpha: not for --classifier-backbone cnn-tumor-map" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--focal-gamma", "-1"], "--focal-gamma -1.0: must be 0 (plain cross-entropy) or more"),
        (
            ["--classifier-backbone", "cnn-tumor-map", "--focal-gamma", "2"],
            "--focal-gamma: not for --classifier-backbone cnn-tumor-map",
        ),
        (["--small-tumor-weight", "0"], "--small-tumor-weight and --near-tumor-negative-weight must be above 0"),
        (
            ["--classifier-backbone", "cnn-tumor-map", "--small-tumor-weight", "3"],
            "--small-tumor-weight: not for --classifier-backbone cnn-tumor-map",
        ),
    ],
)
def test_loss_options_are_refused_out_of_range_or_for_the_tumor_map_classifier(capsys, options, message):
    with pytest.raises(SystemExit) as raised:
        train.parse_arguments(["--model", "classifier", "--data-root", "data", "--output-dir", "runs/x", *options])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_a_weights_file_that_is_not_there_is_a_usage_error_naming_it(tmp_path, capsys):
    """h5py's own error named no file: the commands printed "...: None"."""
    missing = tmp_path / "nowhere.weights.h5"
    with pytest.raises(SystemExit) as raised, usage_errors("evaluate"):
        load_classifier(missing)
    assert raised.value.code == 2
    assert capsys.readouterr().err == f"evaluate: error: no such weights file: {missing}\n"


def test_the_reference_models_are_read_through_the_model_store(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`--reference-model-dir` read the manifest and weights around `app.core.model_store`: no sha256 check, no safe
    mode (newcomer review 28, finding 8)."""
    validation = SliceArrays(
        images=np.zeros((2, 256, 256, 3), np.uint8),
        masks=np.zeros((2, 256, 256), np.uint8),
        patient_ids=np.array(["a", "a"]),
        slice_numbers=np.array([1, 2]),
    )
    args = argparse.Namespace(model="segmenter", reference_model_dir=str(tiny_model_dir))

    assert train.reference_outputs(args, validation).shape == (2,)  # the classifier's probability per slice

    altered = tmp_path / "altered"
    shutil.copytree(tiny_model_dir, altered)
    with (altered / "tumor_classifier.weights.h5").open("ab") as weights:
        weights.write(b"\0")
    with pytest.raises(ModelStoreError, match="sha256"):
        train.reference_outputs(argparse.Namespace(model="segmenter", reference_model_dir=str(altered)), validation)


def test_export_names_a_file_that_is_not_there_in_one_line_with_exit_2(tmp_path, capsys):
    """Style review 51 F13: a missing --evaluation or weights file was a traceback from `training.export`."""
    missing = tmp_path / "evaluation.json"
    with pytest.raises(SystemExit) as raised:
        export.main(
            [
                "--classifier-weights",
                str(tmp_path / "classifier.weights.h5"),
                "--segmenter-weights",
                str(tmp_path / "segmenter.weights.h5"),
                "--evaluation",
                str(missing),
                "--output-dir",
                str(tmp_path / "models"),
            ]
        )
    assert raised.value.code == 2
    assert capsys.readouterr().err == f"python -m training.export: error: No such file or directory: {missing}\n"
    assert not (tmp_path / "models").exists()
