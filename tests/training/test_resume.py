"""A run interrupted and resumed ends with the same weights as the same run left alone."""

from __future__ import annotations

import functools
import json
import shutil
import time

import numpy as np

from training import train
from training.models import build_resunet
from training.run_state import epoch_weights_path, load_saved_model


def run_arguments(dev_layout, split, output_dir) -> list[str]:
    return [
        "--model",
        "segmenter",
        "--data-root",
        str(dev_layout),
        "--split",
        str(split),
        "--output-dir",
        str(output_dir),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--crop-size",
        "64",
        "--negatives-per-epoch",
        "2",
        "--hard-negative-every",
        "1",
        "--no-jit-compile",
    ]


def test_resumed_run_matches_uninterrupted_run(dev_layout, tmp_path, monkeypatch, untraced_keras):
    # A ResUNet of three stages, untraced: tracing the full one's training step took about 20 s, once per run, and
    # tracing even this one 10 s of each of the three runs, while what is resumed (weights, optimizer state, schedule,
    # random state) is the same either way. (Four or eight filters in the first stage crashed TensorFlow 2.21's CPU
    # kernels at batch 8, crop 128: see the export tests.)
    monkeypatch.setattr(train, "build_resunet", functools.partial(build_resunet, filters=(16, 32, 64)))
    split = tmp_path / "split.json"
    train.main(run_arguments(dev_layout, split, tmp_path / "whole"))
    # A time budget of almost nothing stops the run after its first epoch, as an interruption would. It began on
    # another machine (a GPU machine's /tmp): its data is gone, and a copy lies elsewhere here.
    first_machine = tmp_path / "first_machine"
    shutil.copytree(dev_layout, first_machine)
    interrupted = [*run_arguments(first_machine, split, tmp_path / "interrupted"), "--keep-epoch-weights"]
    train.main([*interrupted, "--max-minutes", "0.00001"])
    interrupted_state = json.loads((tmp_path / "interrupted" / "state.json").read_text())
    assert interrupted_state["epochs_done"] == 1
    shutil.rmtree(first_machine)
    train.main(["--resume", str(tmp_path / "interrupted"), "--data-root", str(dev_layout), "--workers", "2"])

    whole = load_saved_model(tmp_path / "whole")
    resumed = load_saved_model(tmp_path / "interrupted")
    assert json.loads((tmp_path / "interrupted" / "state.json").read_text())["epochs_done"] == 2
    for expected, actual in zip(whole.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)
    # The optimizer went on from its saved state (step count, moments), not from scratch.
    assert int(resumed.optimizer.iterations) == int(whole.optimizer.iterations) > 0
    history = (tmp_path / "interrupted" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1"]
    assert "train_slices_per_second" in history[0] and "val_volume_dice" in history[0]
    # Every epoch's weights were kept, before and after the interruption; the last are the run's last weights.
    assert sorted(path.name for path in (tmp_path / "interrupted" / "epochs").iterdir()) == [
        "epoch_001.weights.h5",
        "epoch_002.weights.h5",
    ]
    resumed.load_weights(epoch_weights_path(tmp_path / "interrupted", 2))
    for expected, actual in zip(whole.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)
    resumed.load_weights(epoch_weights_path(tmp_path / "interrupted", 1))
    assert not all(np.allclose(a, b) for a, b in zip(whole.get_weights(), resumed.get_weights(), strict=True))


def test_time_budget_counts_from_the_invocation_start_not_from_the_first_epoch():
    # Loading the data and the first validation took 50 s of a one-minute budget: an epoch of 15 s must not start.
    budget = train.TimeBudget(1.0, started=time.monotonic() - 50.0)
    budget.set_model(build_resunet(filters=(4, 8)))
    budget.model.stop_training = False  # as fit() sets it
    budget.on_epoch_begin(0)
    budget.epoch_started -= 15.0
    budget.on_epoch_end(0)
    assert budget.model.stop_training
    # With the same epoch and nothing before it, the next epoch fits.
    roomy = train.TimeBudget(1.0, started=time.monotonic())
    roomy.set_model(build_resunet(filters=(4, 8)))
    roomy.model.stop_training = False  # as fit() sets it
    roomy.on_epoch_begin(0)
    roomy.epoch_started -= 15.0
    roomy.on_epoch_end(0)
    assert not roomy.model.stop_training


def test_resume_of_a_folder_without_a_run_is_refused(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):
        train.main(["--resume", str(tmp_path)])
    assert "no arguments.json there" in capsys.readouterr().err
