"""The model card (`training.model_card`): what its figures say, and rendering them again in a card already written."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import COMMITTED_MODEL_DIR
from training import model_card


@pytest.fixture(scope="module")
def committed_evaluation() -> dict:
    """The evaluation behind the served models (its figures are realistic: every part of the card has its keys)."""
    return json.loads((COMMITTED_MODEL_DIR / "evaluation" / "evaluation.json").read_text())


@pytest.fixture(scope="module")
def committed_manifest() -> dict:
    return json.loads((COMMITTED_MODEL_DIR / "manifest.json").read_text())


def rendered_card(manifest: dict, notes: list[str] | None = None, validation: dict | None = None) -> str:
    return model_card.render_model_card(
        manifest, "python -m training.evaluate --example", ["(not recorded)"], notes, validation=validation
    )


def test_the_committed_card_is_what_the_code_renders_from_the_committed_evaluation(
    committed_manifest, committed_evaluation
):
    """The committed card was edited by hand after its export: the parts drawn from the evaluation must still be the
    ones `python -m training.model_card --model-dir models` renders (run it after changing how they read)."""
    card = (COMMITTED_MODEL_DIR / model_card.MODEL_CARD_NAME).read_text()

    has_history = (COMMITTED_MODEL_DIR / model_card.MODEL_HISTORY_NAME).is_file()
    refreshed = model_card.refresh_figures(card, committed_manifest, committed_evaluation["validation"], has_history)

    assert refreshed == card


def test_refreshing_a_card_renders_its_figures_again_and_keeps_the_lines_written_by_hand(committed_manifest):
    earlier = copy.deepcopy(committed_manifest)
    earlier["metrics"]["segmentation"]["volume_dice_mean"] = 0.5
    hand_written = "- A point added by hand after the export."
    card = rendered_card(earlier, notes=["a note given to the export"]).replace(
        "## Limitations\n", f"## Limitations\n{hand_written}\n"
    )

    refreshed = model_card.refresh_figures(card, committed_manifest)

    assert refreshed == rendered_card(committed_manifest, notes=["a note given to the export"]).replace(
        "## Limitations\n", f"## Limitations\n{hand_written}\n"
    )
    assert "| 50.0 % |" not in refreshed and "88.8 %" in refreshed
    assert model_card.refresh_figures(refreshed, committed_manifest) == refreshed


def test_refreshing_a_card_without_a_part_it_renders_is_refused(committed_manifest):
    card = rendered_card(committed_manifest).replace(model_card.TEST_METRICS_HEADING, "## Figures")

    with pytest.raises(model_card.ModelCardError, match="no line starting with '## Test metrics'"):
        model_card.refresh_figures(card, committed_manifest)


@pytest.fixture
def model_dir_with_card(tiny_model_dir: Path, tmp_path: Path, committed_evaluation: dict) -> Path:
    """The tiny models carrying the committed evaluation's metrics, with that evaluation and an outdated card."""
    directory = tmp_path / "models"
    shutil.copytree(tiny_model_dir, directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["metrics"] = committed_evaluation["metrics"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    (directory / "evaluation").mkdir()
    (directory / "evaluation" / "evaluation.json").write_text(json.dumps(committed_evaluation))
    outdated = copy.deepcopy(manifest)
    outdated["metrics"]["segmentation"]["volume_dice_mean"] = 0.5
    (directory / "README.md").write_text(rendered_card(outdated))
    return directory


def test_the_refresh_command_renders_the_card_from_the_models_evaluation(model_dir_with_card):
    model_card.main(["--model-dir", str(model_dir_with_card)])  # the README's command

    card = (model_dir_with_card / "README.md").read_text()
    manifest = json.loads((model_dir_with_card / "manifest.json").read_text())
    validation = json.loads((model_dir_with_card / "evaluation" / "evaluation.json").read_text())["validation"]
    assert card == rendered_card(manifest, validation=validation)
    assert "| 50.0 % |" not in card  # the outdated figure


def test_the_refresh_command_refuses_an_evaluation_of_other_models(model_dir_with_card, capsys):
    evaluation_path = model_dir_with_card / "evaluation" / "evaluation.json"
    evaluation = json.loads(evaluation_path.read_text())
    evaluation["metrics"]["classifier"]["specificity"] = 0.99
    evaluation_path.write_text(json.dumps(evaluation))
    card_before = (model_dir_with_card / "README.md").read_text()

    with pytest.raises(SystemExit) as exit_info:
        model_card.main(["--model-dir", str(model_dir_with_card)])

    assert exit_info.value.code == 2
    assert "its test metrics are not those in" in capsys.readouterr().err
    assert (model_dir_with_card / "README.md").read_text() == card_before


ANSWER_PATHS = ("each slice alone", "in a series", "series, after the clean-up", "gated pipeline", "segmenter alone")


def test_every_row_of_the_table_names_the_answer_path_it_measures(committed_evaluation):
    """ML audit 48 F3: the series figures after the clean-up were labelled "gated pipeline" (2.1 %), and the gated
    pipeline's own false-mask rate (12.6 %) was nowhere."""
    metrics = committed_evaluation["metrics"]
    rows = model_card._figures(metrics) + model_card._single_slice_rows(metrics) + model_card._tumor_edge_rows(metrics)

    unlabelled = [row for row in rows if not any(path in row.split("|")[1] for path in ANSWER_PATHS)]
    assert not unlabelled
    assert "| tumor-free slices given a non-empty mask (series, after the clean-up) | 2.1 % |" in rows
    gated = (
        "| tumor-free slices given a non-empty mask (gated pipeline, before the clean-up and a lone slice's rules) |"
    )
    assert f"{gated} 12.6 % |" in rows
    assert f"{gated} 4.7 % |" in model_card._figures(metrics["flair_only"])
    assert not [row for row in rows if "(gated pipeline) |" in row]


def test_the_tversky_score_says_it_is_pooled_over_every_pixel_of_the_series_after_the_clean_up(committed_evaluation):
    rows = model_card._figures(committed_evaluation["metrics"])

    tversky = next(row for row in rows if row.startswith("| Tversky score"))
    assert tversky == (
        "| Tversky score (alpha 0.7; series, after the clean-up; pooled over every pixel of all the patients, not per "
        "patient) | 0.909 |"
    )


def test_the_validation_patients_figures_stand_beside_the_test_ones(committed_evaluation):
    """ML audit 48 F1: the validation patients' series volume Dice (73.0 %) stood only in a recipe table's heading,
    never beside the test patients' 88.8 %."""
    metrics, validation = committed_evaluation["metrics"], committed_evaluation["validation"]

    lines = model_card.figure_section_lines(metrics, validation)

    assert (
        "| figure | test, all three sequences | test, FLAIR only | validation (9 patients), all three sequences |"
        in lines
    )
    assert "| per-patient volume Dice, mean (series, after the clean-up) | 88.8 % | 88.0 % | 73.0 % |" in lines
    assert "| slice ROC AUC (the classifier, each slice alone) | 0.986 | 0.984 | 0.964 |" in lines
    assert (
        "| specificity on tumor-free slices 1-4 slices from a tumor slice, each slice alone | 77.3 % (66 slices) "
        "| 89.4 % (66 slices) | 74.6 % (67 slices) |"
    ) in lines
    without_series_answers = {key: value for key, value in validation.items() if key != "series_answers"}
    sparse = model_card.figure_section_lines(metrics, without_series_answers)
    series_rows = [row for row in sparse if row.startswith("| sensitivity in a series")]
    assert series_rows == [
        "| sensitivity in a series (slice positive when its mask survives the clean-up) | 97.8 % | 95.6 % | - |"
    ]


def test_the_intervals_say_they_redraw_the_test_patients_only_and_set_the_validation_dice_beside(committed_evaluation):
    metrics, validation = committed_evaluation["metrics"], committed_evaluation["validation"]

    line = model_card.interval_lines(metrics, validation)[0]

    assert "per-patient volume Dice mean 87.4-90.3 %" in line
    assert "They redraw these 9 test patients only" in line and "not where they fall for new patients" in line
    assert "series volume Dice of 73.0 % (their own interval 56.9-83.8 %) against 88.8 % here" in line


def test_the_limitations_say_the_test_patients_were_not_kept_blind(committed_evaluation, committed_manifest):
    """ML audit 48 F2: the card said thresholds were chosen "never on the test patients", while two single-slice
    stages were added because a test figure missed its target and a candidate was turned down with test figures on
    screen."""
    lines = model_card.held_out_set_limitation_lines(
        committed_evaluation["metrics"], committed_manifest["segmenter"], has_history=True
    )

    assert not [line for line in lines if "never on the test patients" in line]
    assert lines[1].startswith("- Thresholds were chosen on the validation patients")
    assert "measured after every release" in lines[2]
    assert "two single-slice stages, 1.5.0's mask minimum (0.20) and 1.6.0's smallest piece (200 pixels)" in lines[2]
    assert "turned down with its test figures on the same screen ([history.md](history.md))" in lines[2]
    assert "the 3.7 % of tumor-free slices given a mask each slice alone in particular, are not unbiased" in lines[2]
    without_stages = model_card.held_out_set_limitation_lines(committed_evaluation["metrics"], {})
    assert "single-slice stages" not in without_stages[2] and "(in the model history)" in without_stages[2]


def test_the_data_section_says_the_figures_were_measured_on_jpeg_re_encodes(committed_manifest):
    """ML audit 48 F5: every figure and threshold comes from the pool's JPEGs (quality 95, 4:4:4), while new
    patients arrive as the dataset's lossless TIFFs."""
    lines = model_card.data_lines(committed_manifest)

    assert lines[0] == "## Data"
    assert any("JPEG re-encodes (quality about 95, no chroma subsampling)" in line for line in lines)
    assert any("lossless TIFFs" in line and "3 of the 280 classifier decisions" in line for line in lines)
