"""TensorFlow's startup log stays off a command's terminal unless `--verbose` asks for it, and a failing load still
shows what the native code said."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.tensorflow_log import native_stderr_held
from tests.conftest import REPO_ROOT, TUMOR_SLICE


def test_native_stderr_is_held_back_while_loading(capfd: pytest.CaptureFixture[str]) -> None:
    with native_stderr_held(quiet=True):
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on\n")
    print("after", file=sys.stderr)

    assert capfd.readouterr().err == "after\n"


def test_native_stderr_is_shown_when_loading_fails(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="no GPU"), native_stderr_held(quiet=True):
        os.write(2, b"E0000 cuda_dnn.cc] could not load libcudnn\n")
        raise RuntimeError("no GPU")

    assert capfd.readouterr().err == "E0000 cuda_dnn.cc] could not load libcudnn\n"


def test_native_stderr_passes_through_when_verbose(capfd: pytest.CaptureFixture[str]) -> None:
    with native_stderr_held(quiet=False):
        os.write(2, b"native\n")

    assert capfd.readouterr().err == "native\n"


def predict_in_fresh_process(model_dir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`brain-tumor predict` as a user runs it: TensorFlow imported for the first time in the process."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TF_CPP_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *options, "predict", str(TUMOR_SLICE), "--model-dir", str(model_dir)],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_predict_stderr_is_empty_unless_verbose(tiny_model_dir: Path) -> None:
    quiet = predict_in_fresh_process(tiny_model_dir)
    verbose = predict_in_fresh_process(tiny_model_dir, "--verbose")

    assert quiet.returncode == verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert quiet.stderr == ""
    assert json.loads(quiet.stdout) == json.loads(verbose.stdout)
    # TensorFlow 2.21 on x86 always announces oneDNN (and its CPU features) while it is imported.
    assert "tensorflow" in verbose.stderr.lower() or "onednn" in verbose.stderr.lower(), verbose.stderr
