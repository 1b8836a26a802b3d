"""`brain-tumor train` / `evaluate` hand their arguments to the training modules under their own name; a missing data
root ends in one line and exit 2, from `brain-tumor` and from `python -m training.*` alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from training import evaluate, train


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_help_names_the_subcommand(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main([command, "--help"])

    assert raised.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: brain-tumor {command} [-h]")


def test_top_level_help_lists_train_and_evaluate(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])

    out = capsys.readouterr().out
    assert "python -m training.train (see brain-tumor train --help)" in out
    assert "python -m training.evaluate (see brain-tumor evaluate --help)" in out


def test_usage_errors_of_train_name_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["train", "--model", "segmenter"])

    assert raised.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "brain-tumor train: error: the following arguments are required: --data-root, --output-dir"
    )


def test_training_module_keeps_its_own_name_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    capsys.readouterr()

    assert train.build_parser().prog == "python -m training.train"  # the rename lasted only for the command


def train_arguments(data_root: Path, tmp_path: Path) -> list[str]:
    return ["--model", "segmenter", "--data-root", str(data_root), "--output-dir", str(tmp_path / "run")]


def evaluate_arguments(data_root: Path, tmp_path: Path) -> list[str]:
    weights = str(tmp_path / "none.weights.h5")
    (tmp_path / "split.json").write_text('{"train": [], "validation": ["p"], "test": ["p"]}')
    return [
        *("--data-root", str(data_root), "--classifier-weights", weights, "--segmenter-weights", weights),
        *("--output-dir", str(tmp_path / "evaluation"), "--split", str(tmp_path / "split.json")),
    ]


@pytest.mark.parametrize(
    ("command", "arguments"), [("train", train_arguments), ("evaluate", evaluate_arguments)], ids=["train", "evaluate"]
)
def test_missing_data_root_is_one_line_and_exit_2(
    command: str, arguments, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no_such_dataset"

    with pytest.raises(SystemExit) as raised:
        main([command, *arguments(missing, tmp_path)])

    assert raised.value.code == 2
    assert capsys.readouterr().err == f"brain-tumor {command}: error: dataset root {missing} is not a directory\n"
    assert not (tmp_path / "run").exists()  # a refused training run leaves no run folder (arguments.json) behind


@pytest.mark.parametrize(
    ("module", "arguments"), [(train, train_arguments), (evaluate, evaluate_arguments)], ids=["train", "evaluate"]
)
def test_training_main_turns_a_dataset_error_into_exit_2(
    module, arguments, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty_dataset").mkdir()

    with pytest.raises(SystemExit) as raised:
        module.main(arguments(tmp_path / "empty_dataset", tmp_path))

    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.endswith(
        f"error: no slices found under {tmp_path / 'empty_dataset'} (expected <patient>/<stem>.tif|.jpg files)\n"
    )
    assert "Traceback" not in err


def test_missing_split_file_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = [*evaluate_arguments(tmp_path, tmp_path), "--split", str(tmp_path / "no_split.json")]

    with pytest.raises(SystemExit) as raised:
        main(["evaluate", *arguments])

    assert raised.value.code == 2
    assert capsys.readouterr().err == (
        f"brain-tumor evaluate: error: No such file or directory: {tmp_path / 'no_split.json'}\n"
    )
