"""Render `models/README.md`, the model card, from the manifest and the evaluation: every number in it is one that
`training.evaluate` measured on the held-out test patients (or, beside them, on the validation patients), so the card
cannot drift from the models it describes.

    python -m training.model_card --model-dir models

renders again, in the card already there, the parts drawn from the evaluation (the Data section, the test metrics and
the Limitations' points on the test set) from the manifest and `evaluation/evaluation.json`, keeping every line written
by hand around them and leaving the models and the manifest as they are.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from pathlib import Path

from app.core.model_store import read_manifest
from training.data import institution_of
from training.evaluation_metrics import TVERSKY_SCORE_ALPHA

# The model history (releases, and recipes tried and not adopted) is written by hand beside the card; an export
# rewrites the card, never the history, and links to it.
MODEL_HISTORY_NAME = "history.md"
MODEL_CARD_NAME = "README.md"
EVALUATION_PATH = Path("evaluation") / "evaluation.json"

DATA_HEADING = "## Data"
TEST_METRICS_HEADING = "## Test metrics"
RAW_FIGURES_PREFIX = "Raw figures in `evaluation/`"
# The Limitations' points on what the test figures are worth, rendered together (the first one starts the run).
TEST_SET_LIMITATION_PREFIXES = ("- A test split of ", "- Thresholds were chosen on ", "- The test patients were not ")

DEVELOPMENT_POOL_FORM = (
    "The development pool's slices are JPEG re-encodes (quality about 95, no chroma subsampling) of the dataset's "
    "lossless TIFFs, and every figure and threshold here was measured on them: the original TIFFs may shift the "
    "figures slightly (ML audit 48 simulated the JPEG error on 1.6.0's test slices: 3 of the 280 classifier decisions "
    "changed, all on tumor-free slices)."
)


class ModelCardError(ValueError):
    """The card cannot be rendered again: a part it renders is missing, or the evaluation is not the models'."""


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _figures(metrics: Mapping) -> list[str]:
    """The table's rows, each naming the answer path it measures (ML audit 48 F3: the series figures after the
    clean-up were labelled "gated pipeline", whose own false-mask rate was missing): each slice alone (the
    classifier's answer), a series after the 3-D clean-up, the gated pipeline before any clean-up, the segmenter
    alone."""
    classifier, segmentation = metrics["classifier"], metrics["segmentation"]
    matrix = classifier["confusion_matrix"]
    auc = classifier["roc_auc"]
    return [
        f"| slice ROC AUC (the classifier, each slice alone) | {'n/a' if auc is None else f'{auc:.3f}'} |",
        f"| sensitivity at the deployed threshold, each slice alone | {_percent(classifier['sensitivity'])} |",
        f"| specificity at the deployed threshold, each slice alone | {_percent(classifier['specificity'])} |",
        *_series_answer_rows(metrics),
        f"| accuracy, each slice alone | {_percent(classifier['accuracy'])} |",
        "| confusion matrix (tn / fp / fn / tp), each slice alone | "
        f"{matrix['tn']} / {matrix['fp']} / {matrix['fn']} / {matrix['tp']} |",
        "| per-patient volume Dice, mean (series, after the clean-up) | "
        f"{_percent(segmentation['volume_dice_mean'])} |",
        "| per-patient volume Dice, median (series, after the clean-up) | "
        f"{_percent(segmentation['volume_dice_median'])} |",
        "| Dice on tumor slices, mean (series, after the clean-up) | "
        f"{_percent(segmentation['tumor_slice_dice_mean'])} |",
        "| tumor-free slices given a non-empty mask (series, after the clean-up) | "
        f"{_percent(segmentation['nonempty_mask_rate_on_tumor_free_slices'])} |",
        *_gated_pipeline_rows(metrics),
        "| tumor-free slices given a non-empty mask (segmenter alone, on every slice) | "
        f"{_percent(metrics['segmenter_alone_nonempty_mask_rate_on_tumor_free_slices'])} |",
        f"| Tversky score (alpha {TVERSKY_SCORE_ALPHA}; series, after the clean-up; pooled over every pixel of all the "
        f"patients, not per patient) | {segmentation['tversky_score']:.3f} |",
    ]


def _gated_pipeline_rows(metrics: Mapping) -> list[str]:
    """The gated pipeline's own false masks: every slice the classifier calls tumor keeps its mask, with neither the
    series clean-up nor a lone slice's rules (older evaluations did not measure it)."""
    gated = metrics.get("segmentation_single_slices_every_positive")
    if gated is None:
        return []
    return [
        "| tumor-free slices given a non-empty mask (gated pipeline, before the clean-up and a lone slice's rules) | "
        f"{_percent(gated['nonempty_mask_rate_on_tumor_free_slices'])} |"
    ]


def _series_answer_rows(metrics: Mapping) -> list[str]:
    """Sensitivity and specificity of the answers given in a series, where a slice is positive when its mask survives
    the clean-up (evaluations made before 1.3.0's card did not measure them)."""
    answers = metrics.get("series_answers")
    if answers is None:
        return []
    return [
        f"| sensitivity in a series (slice positive when its mask survives the clean-up) | "
        f"{_percent(answers['sensitivity'])} |",
        f"| specificity in a series (slice positive when its mask survives the clean-up) | "
        f"{_percent(answers['specificity'])} |",
    ]


def _single_slice_rows(metrics: Mapping) -> list[str]:
    single = metrics.get("segmentation_single_slices")
    if single is None:
        return []
    return [
        f"| per-patient volume Dice, mean, each slice alone (no series clean-up) | "
        f"{_percent(single['volume_dice_mean'])} |",
        f"| tumor-free slices given a non-empty mask, each slice alone | "
        f"{_percent(single['nonempty_mask_rate_on_tumor_free_slices'])} |",
    ]


def series_lines(segmenter: Mapping) -> list[str]:
    """How masks are finished: the series clean-up, and a single slice's mask minimum and smallest piece."""
    voxels = segmenter.get("series_min_component_voxels", 0)
    minimum = segmenter.get("single_slice_mask_min_probability", 0.0)
    pixels = segmenter.get("single_slice_min_component_pixels", 0)
    single = []
    if minimum:
        single.append(
            f"- A slice answered on its own (no series clean-up) shows its mask only when the classifier's probability "
            f"is at least {minimum:.2f} (chosen on the validation patients); below it the slice is still called "
            "tumor, without a mask."
        )
    if pixels:
        single.append(
            f"- A slice answered on its own keeps only the mask pieces of at least {pixels} pixels of the 256 x 256 "
            "grid (chosen on the validation patients); when none is left the slice is still called tumor, without a "
            "mask."
        )
    if not voxels:
        return ["- Series clean-up: off (a series' masks are those of its slices).", *single]
    return [
        f"- Series clean-up (DICOM series, `/v1/predict/batch?series=true`, `brain-tumor predict --series`, pacs-sync, "
        f"the DICOM node): 3-D connected components "
        f"under {voxels} voxels of the 256 x 256 grid are dropped (size chosen on the validation patients); single "
        "slices are never cleaned up.",
        *single,
    ]


def training_lines(runs: list[Mapping]) -> list[str]:
    """A table of the training runs behind the models: recipe, length, and measured throughput on this machine."""
    if not runs:
        return []
    lines = [
        "## Training runs",
        "",
        "| run | model | recipe | epochs run (best) | training slices/s, median over epochs | hours |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        arguments = run.get("arguments", {})
        recipe = [f"Adam, cosine decay from {arguments.get('learning_rate')}", f"batch {arguments.get('batch_size')}"]
        if run["model"] == "segmenter":
            recipe.append(f"Focal Tversky alpha {arguments.get('alpha')}")
            if arguments.get("crop_size"):
                recipe.append(f"{arguments['crop_size']}x{arguments['crop_size']} tumor-centred crops")
            recipe.append(f"{arguments.get('negatives_per_epoch')} tumor-free slices per epoch, hard negatives")
        if arguments.get("augmentation", "standard") != "standard":
            recipe.append(f"{arguments['augmentation']} augmentation")
        if arguments.get("initial_weights"):
            recipe.append(f"from `{arguments['initial_weights']}`")
        lines.append(
            f"| {run['name']} | {run['model']} | {'; '.join(recipe)} | {run['epochs_run']} ({run['best_epoch']}, "
            f"by {run['monitor']}) | {run['slices_per_second']:.1f} | {run['seconds'] / 3600:.2f} |"
        )
    lines += [
        "",
        "Throughput is that of the training steps (data preparation included) on the machine named in the run's "
        "history (2-core CPU unless said otherwise), from `history.csv`'s `train_slices_per_second`.",
        "",
    ]
    return lines


def comparison_lines(comparison: Mapping | None) -> list[str]:
    """The recipe comparison on the validation patients (`training.compare_segmenters`)."""
    if not comparison:
        return []
    lines = [
        f"## Segmenter recipes compared ({comparison['patients']} validation patients, gated by the classifier of the "
        "release that chose the segmenter, which may not be the one served)",
        "",
        "| candidate | volume Dice mean | median | Dice on tumor slices | tumor-free slices with a mask "
        "| mask threshold |",
        "|---|---|---|---|---|---|",
    ]
    for name, candidate in comparison["candidates"].items():
        segmentation = candidate["segmentation"]
        lines.append(
            f"| {name} | {_percent(segmentation['volume_dice_mean'])} | {_percent(segmentation['volume_dice_median'])} "
            f"| {_percent(segmentation['tumor_slice_dice_mean'])} | "
            f"{_percent(segmentation['nonempty_mask_rate_on_tumor_free_slices'])} | {candidate['mask_threshold']} |"
        )
    return [*lines, ""]


EXPORTED_PREFIX = "- Exported with "
ONNX_PREFIX = "- ONNX conversions "


def export_lines(manifest: Mapping) -> list[str]:
    """The card's lines on how the models were exported: versions, and the ONNX files if `training.export_onnx` ran."""
    lines = [f"{EXPORTED_PREFIX}{', '.join(f'{k} {v}' for k, v in manifest['versions'].items())}."]
    onnx_files = [manifest[role].get("onnx") for role in ("classifier", "segmenter")]
    if all(onnx_files):
        lines.append(
            f"{ONNX_PREFIX}(for `INFERENCE_RUNTIME=onnxruntime`): {', '.join(f'`{name}`' for name in onnx_files)}, "
            "written by `python -m training.export_onnx` only after matching the Keras models within its tolerance "
            "(1e-5 by default)."
        )
    return lines


def refresh_export_lines(card: str, manifest: Mapping) -> str:
    """`card` with its export lines rendered again from `manifest` (after `training.export_onnx` changed it)."""
    kept = [line for line in card.splitlines() if not line.startswith(ONNX_PREFIX)]
    position = next((index for index, line in enumerate(kept) if line.startswith(EXPORTED_PREFIX)), None)
    if position is None:
        return card
    return "\n".join([*kept[:position], *export_lines(manifest), *kept[position + 1 :]]) + "\n"


def classifier_line(classifier: Mapping, members: int, threshold_chosen_on: Mapping | None) -> str:
    """The card's line on the classifier: one CNN or the mean of the cross-validation fold CNNs, and what chose its
    threshold."""
    kind = "CNN of conv + batch-norm + ReLU blocks"
    if members > 1:
        kind = (
            f"mean of {members} CNNs of conv + batch-norm + ReLU blocks, one per cross-validation fold of the "
            "training patients (`training.cross_validation`)"
        )
    basis = "the validation patients"
    if threshold_chosen_on and threshold_chosen_on.get("out_of_fold_patients"):
        basis = (
            f"{threshold_chosen_on['slices']} slices: the {threshold_chosen_on['validation_patients']} validation "
            f"patients and the {threshold_chosen_on['out_of_fold_patients']} training patients, each predicted by "
            "the fold model that never saw it"
        )
    if threshold_chosen_on and threshold_chosen_on.get("validation_out_of_fold"):
        basis = (
            f"the {threshold_chosen_on['validation_patients']} validation patients, which the classifier was refit "
            "on: each predicted by a model of the same recipe that never saw it (`training.cross_validation "
            "refit-folds`)"
        )
    served = ""
    if classifier.get("flip_average"):
        served = ", served as the mean of its probabilities for the slice and its left-right mirror"
    return (
        f"- `{classifier['name']}@{classifier['version']}`: {kind}, sigmoid output P(slice shows tumor){served}; "
        f"{classifier['parameters']:,} parameters; decision threshold {classifier['threshold']:.4f} (chosen on "
        f"{basis}: the highest with the target sensitivity there)."
    )


def _tumor_edge_rows(metrics: Mapping) -> list[str]:
    """Where the single-slice false alarms sit: at the tumor's edge or away from it (from 1.5.0's card on). The slice
    counts go with the figures, so that the test and validation columns share one label."""
    by_distance = metrics.get("tumor_free_single_slices_by_distance_to_tumor")
    if by_distance is None:
        return []
    edge, away = by_distance["tumor_edge"], by_distance["away_from_tumor"]
    near = f"1-{by_distance['tumor_edge_slices']} slices from a tumor slice"
    return [
        f"| specificity on tumor-free slices {near}, each slice alone | "
        f"{_percent(edge['specificity'])} ({edge['tumor_free_slices']} slices) |",
        f"| specificity on the other tumor-free slices, each slice alone | "
        f"{_percent(away['specificity'])} ({away['tumor_free_slices']} slices) |",
        f"| tumor-free slices {near} given a mask, each slice alone | {_percent(edge['nonempty_mask_rate'])} |",
        f"| other tumor-free slices given a mask, each slice alone | {_percent(away['nonempty_mask_rate'])} |",
    ]


def _span(intervals: Mapping, name: str) -> str:
    low_high = intervals[name]
    return "n/a" if low_high is None else f"{100 * low_high[0]:.1f}-{100 * low_high[1]:.1f} %"


def interval_lines(metrics: Mapping, validation: Mapping | None = None) -> list[str]:
    """The test figures' 95 % intervals with the patients drawn again (evaluations from 1.5.0's card on), and what
    they are not: a range for new patients (ML audit 48 F1: the validation patients score 16 points of volume Dice
    below the test patients' interval, which a bootstrap of the same 9 patients cannot show)."""
    intervals = metrics.get("intervals_95_patient_bootstrap")
    if intervals is None:
        return []
    patients = metrics["patients"]
    line = (
        f"95 % intervals, the {patients} test patients drawn again with replacement "
        f"({intervals['draws']:,} draws; `training.evaluation_metrics.patient_bootstrap_intervals`): "
        f"sensitivity {_span(intervals, 'sensitivity')}, specificity {_span(intervals, 'specificity')}, per-patient "
        f"volume Dice mean {_span(intervals, 'volume_dice_mean')}, tumor-free slices given a mask each slice alone "
        f"{_span(intervals, 'nonempty_mask_rate_on_tumor_free_slices_alone')}. They redraw these {patients} test "
        "patients only: they say how much the figures move within this cohort, not where they fall for new patients."
    )
    if validation and "segmentation" in validation:
        own_intervals = validation.get("intervals_95_patient_bootstrap")
        own_interval = f" (their own interval {_span(own_intervals, 'volume_dice_mean')})" if own_intervals else ""
        line += (
            f" The {validation['patients']} validation patients, scored by the same pipeline, reach a series volume "
            f"Dice of {_percent(validation['segmentation']['volume_dice_mean'])}{own_interval} against "
            f"{_percent(metrics['segmentation']['volume_dice_mean'])} here: new patients may well score nearer the "
            "validation figures than the test ones."
        )
    return [line, ""]


def training_data_line(patients: list[str] | None) -> str:
    """Where the training patients come from: TCGA case ids `TCGA_<site>_<case>` name the institution."""
    if not patients:
        return "Trained on one public dataset (TCGA lower-grade glioma)"
    sites = sorted({institution_of(patient) for patient in patients if patient.count("_") >= 2})
    return (
        f"Trained on {len(patients)} patients of one public dataset (TCGA lower-grade glioma), from {len(sites)} "
        f"institutions (TCGA site codes {', '.join(sites)})"
    )


def data_lines(manifest: Mapping) -> list[str]:
    """The card's Data section: where the patients come from, how they were split, and in what form the figures were
    measured (ML audit 48 F5: new patients arrive as lossless TIFFs, and the card did not say its pool is JPEG)."""
    return [
        DATA_HEADING,
        f"{manifest['training_data']}. Split file: `{manifest['split']}` (patients, never slices, in each set). "
        "The 22 patients kept apart by the data owner were never seen here.",
        "",
        DEVELOPMENT_POOL_FORM,
        "",
    ]


def _figures_by_name(metrics: Mapping | None) -> dict[str, str]:
    """The table's figures of one cohort (test, FLAIR only, validation) by row name."""
    if not metrics:
        return {}
    rows = _figures(metrics) + _single_slice_rows(metrics) + _tumor_edge_rows(metrics)
    cells = [row.strip("|").split("|", 1) for row in rows]
    return {name.strip(): value.strip() for name, value in cells}


def figure_section_lines(metrics: Mapping, validation: Mapping | None = None) -> list[str]:
    """The card's test metrics: the table of figures, with FLAIR only and the validation patients' figures beside
    them (ML audit 48 F1: the validation patients score well below the test ones, and the card set the two apart),
    and their 95 % intervals."""
    test, flair = _figures_by_name(metrics), _figures_by_name(metrics.get("flair_only"))
    validation_figures = _figures_by_name(validation)
    header = "| figure | test, all three sequences | test, FLAIR only |"
    if validation:
        header += f" validation ({validation['patients']} patients), all three sequences |"
    table = [header, "|---|---|---|" + ("---|" if validation else "")]
    for name, value in test.items():
        row = f"| {name} | {value} | {flair.get(name, 'n/a')} |"
        table.append(row + (f" {validation_figures.get(name, '-')} |" if validation else ""))
    lines = [
        f"{TEST_METRICS_HEADING} ({metrics['patients']} held-out patients, {metrics['classifier']['slices']} slices)",
        "",
        *table,
        "",
        "FLAIR only: every channel replaced by FLAIR, as when a PACS sends a FLAIR series alone.",
    ]
    if validation:
        lines += [
            "",
            f"Validation: the {validation['patients']} validation patients ({validation['classifier']['slices']} "
            "slices), which chose every threshold and size, scored by the same evaluation; a dash where the "
            "evaluation did not measure it there.",
        ]
    return [*lines, "", *interval_lines(metrics, validation)]


def held_out_set_limitation_lines(metrics: Mapping, segmenter: Mapping, has_history: bool = False) -> list[str]:
    """The Limitations' points on what the test figures are worth. The values were chosen on the validation patients,
    but the test patients were measured after every release and some decisions were taken with their figures in view
    (ML audit 48 F2: the card said "never on the test patients", and the model history says otherwise)."""
    stages = []
    if segmenter.get("single_slice_mask_min_probability"):
        stages.append(f"1.5.0's mask minimum ({segmenter['single_slice_mask_min_probability']:.2f})")
    if segmenter.get("single_slice_min_component_pixels"):
        stages.append(f"1.6.0's smallest piece ({segmenter['single_slice_min_component_pixels']} pixels)")
    added = (
        f"two single-slice stages, {' and '.join(stages)}, were added because a test figure, the tumor-free slices "
        "given a mask each slice alone, missed its 5 % target (their values were chosen on the validation "
        "patients); "
        if len(stages) == 2
        else ""
    )
    history = f" ([{MODEL_HISTORY_NAME}]({MODEL_HISTORY_NAME}))" if has_history else " (in the model history)"
    single = metrics.get("segmentation_single_slices")
    in_particular = (
        f", the {_percent(single['nonempty_mask_rate_on_tumor_free_slices'])} of tumor-free slices given a mask each "
        "slice alone in particular,"
        if single
        else ""
    )
    return [
        f"- A test split of {metrics['patients']} patients gives wide confidence intervals: treat the figures as "
        "estimates.",
        "- Thresholds were chosen on the validation patients (the classifier's also on out-of-fold training "
        "predictions when the card says so above).",
        f"- The test patients were not kept blind: they were measured after every release; {added}and one candidate "
        f"classifier was turned down with its test figures on the same screen{history}. So the test "
        f"figures{in_particular} are not unbiased estimates; only patients never measured before can give one.",
    ]


def render_model_card(
    manifest: Mapping,
    evaluation_command: str,
    training_commands: list[str],
    notes: list[str] | None = None,
    training_runs: list[Mapping] | None = None,
    comparison: Mapping | None = None,
    classifier_members: int = 1,
    threshold_chosen_on: Mapping | None = None,
    has_history: bool = False,
    training_patients: list[str] | None = None,
    validation: Mapping | None = None,
) -> str:
    """Markdown of the model card for the exported `manifest` (which carries the test metrics); with `has_history`,
    a link to the model history beside it; with `training_patients` (the split's), where they come from; with
    `validation` (the evaluation's figures on the validation patients), those beside the test ones."""
    metrics = manifest["metrics"]
    classifier, segmenter = manifest["classifier"], manifest["segmenter"]
    lines = [
        "# Model card: LGG tumor classifier and segmenter",
        "",
        "**Research use only. Not a medical device; not validated for clinical use; never use it to make or support "
        "a diagnosis.**",
        "",
        "## Models",
        classifier_line(classifier, classifier_members, threshold_chosen_on),
        f"- `{segmenter['name']}@{segmenter['version']}`: ResUNet (U-Net with residual blocks), sigmoid mask; "
        f"{segmenter['parameters']:,} parameters; trained with Adam and Focal Tversky loss (gamma 0.75; alpha in the "
        f"training runs below), mask threshold {segmenter['threshold']:.2f} (chosen on the validation patients).",
        "- Served as a gated pipeline: the segmenter runs only on slices the classifier calls positive.",
        *series_lines(segmenter),
        f"- Input: {manifest['input_shape']} float32, preprocessing `{manifest['preprocessing']}` "
        "(`app/core/preprocessing.py`, the same function in training and serving).",
        *export_lines(manifest),
        "",
        *data_lines(manifest),
        *figure_section_lines(metrics, validation),
        f"{RAW_FIGURES_PREFIX}: `evaluation.json` (also the per-patient volume Dice and the validation "
        "figures behind the thresholds) and the training histories as CSV. Its plots, `training_curves.png`, "
        "`roc_confusion.png` and `test_slices.png` (test slices with the true outline in green and the predicted one "
        "in red), are those of the last evaluation run without `--no-plots`, which may be an earlier release's.",
        "",
        *training_lines(training_runs or []),
        *comparison_lines(comparison),
        "Measured with:",
        "```",
        evaluation_command,
        "```",
        "Trained with:",
        "```",
        *training_commands,
        "```",
        "",
        "## Limitations",
        f"- {training_data_line(training_patients)}: other tumor types, other scanners and other protocols are out of "
        "distribution.",
        "- The models see one 2-D slice at a time; only the series clean-up joins neighbouring slices' masks (3-D "
        "pieces under its size dropped). Expects kaggle_3m-like composites (pre-contrast, FLAIR, post-contrast) or "
        "FLAIR alone.",
        *held_out_set_limitation_lines(metrics, segmenter, has_history),
        *(f"- {note}" for note in notes or []),
        "",
        *(history_lines() if has_history else []),
    ]
    return "\n".join(lines)


def history_lines() -> list[str]:
    return [
        "## History",
        "What each release changed, and every recipe tried and not adopted, with its comparison on the validation "
        f"patients and its commands: [{MODEL_HISTORY_NAME}]({MODEL_HISTORY_NAME}).",
        "",
    ]


def _replace_part(lines: list[str], first_prefix: str, ends: Callable[[str], bool], part: list[str]) -> list[str]:
    """`lines` with the part starting at the first line that starts with `first_prefix`, up to the first later line
    for which `ends` holds (or the end), replaced by `part`."""
    start = next((index for index, line in enumerate(lines) if line.startswith(first_prefix)), None)
    if start is None:
        raise ModelCardError(f"the model card has no line starting with {first_prefix!r} to render again")
    end = next((index for index in range(start + 1, len(lines)) if ends(lines[index])), len(lines))
    return [*lines[:start], *part, *lines[end:]]


def refresh_figures(card: str, manifest: Mapping, validation: Mapping | None = None, has_history: bool = False) -> str:
    """`card` with the parts drawn from the evaluation rendered again from `manifest`: the Data section, the test
    metrics up to the raw-figures paragraph, and the Limitations' points on the test set. The lines written by hand
    around them (1.6.0's card was edited by hand) stay as they are, so the card is corrected without an export."""
    lines = card.split("\n")
    lines = _replace_part(lines, DATA_HEADING, lambda line: line.startswith("## "), data_lines(manifest))
    lines = _replace_part(
        lines,
        TEST_METRICS_HEADING,
        lambda line: line.startswith(RAW_FIGURES_PREFIX),
        figure_section_lines(manifest["metrics"], validation),
    )
    lines = _replace_part(
        lines,
        TEST_SET_LIMITATION_PREFIXES[0],
        lambda line: not line.startswith(TEST_SET_LIMITATION_PREFIXES),
        held_out_set_limitation_lines(manifest["metrics"], manifest["segmenter"], has_history),
    )
    return "\n".join(lines)


def refresh_model_card(model_dir: Path, evaluation_path: Path | None = None) -> None:
    """Render the figures of `model_dir`'s card again from its manifest and the evaluation behind it (by default
    `evaluation/evaluation.json` in `model_dir`); refuse an evaluation whose test metrics are not the manifest's."""
    manifest = read_manifest(model_dir).model_dump()
    evaluation_path = evaluation_path or model_dir / EVALUATION_PATH
    evaluation = json.loads(evaluation_path.read_text())
    if evaluation.get("metrics") != manifest["metrics"]:
        raise ModelCardError(
            f"{evaluation_path}: its test metrics are not those in {model_dir / 'manifest.json'}; the card renders "
            "the served models' evaluation only"
        )
    card_path = model_dir / MODEL_CARD_NAME
    has_history = (model_dir / MODEL_HISTORY_NAME).is_file()
    card_path.write_text(refresh_figures(card_path.read_text(), manifest, evaluation.get("validation"), has_history))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("models"), help="the exported models and their card")
    parser.add_argument(
        "--evaluation", type=Path, default=None, help="the evaluation.json behind them (default: evaluation/ in it)"
    )
    args = parser.parse_args(argv)
    try:
        refresh_model_card(args.model_dir, args.evaluation)
    except (ModelCardError, FileNotFoundError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
