"""INFERENCE_RUNTIME=onnxruntime serves the same numbers as Keras/TensorFlow, from ONNX files checked at export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from app.core.model_store import MANIFEST_NAME, ModelStoreError, read_manifest, sha256_of
from app.core.preprocessing import preprocess_slice
from app.inference import Predictor
from app.settings import Settings
from tests.api.service_client import running_client
from tests.conftest import TUMOR_SLICE, read_slice
from training import export_onnx

pytest.importorskip("onnxruntime", reason='the onnx extra is installed by make test (pip install -e ".[onnx]")')
pytest.importorskip("tf2onnx", reason='the train extra is installed by make test (pip install -e ".[train]")')

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def onnx_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny models with their ONNX conversions listed in the manifest."""
    directory = tmp_path_factory.mktemp("onnx") / "models"
    shutil.copytree(tiny_model_dir, directory)
    (directory / "README.md").write_text("# Model card\n\n## Models\n- Exported with keras 3.\n\n## Data\n")
    export_onnx.main(["--model-dir", str(directory)])  # the README's command
    return directory


def slice_batch() -> np.ndarray:
    image = read_slice(TUMOR_SLICE)
    return np.stack([preprocess_slice(image), preprocess_slice(image[:, :, 1])])


def test_export_lists_the_onnx_files_with_their_hashes(onnx_model_dir):
    manifest = read_manifest(onnx_model_dir)  # every listed file has its recorded sha256

    for entry in (manifest.classifier, manifest.segmenter):
        assert entry.onnx == f"{entry.name}.onnx"
        assert manifest.files[entry.onnx] == sha256_of(onnx_model_dir / entry.onnx)
    assert manifest.versions["onnx_opset"] == str(export_onnx.ONNX_OPSET)


def test_export_names_the_onnx_files_in_the_model_card(onnx_model_dir):
    card = (onnx_model_dir / "README.md").read_text().splitlines()

    exported = card.index(next(line for line in card if line.startswith("- Exported with")))
    assert "tf2onnx" in card[exported] and "onnx_opset 17" in card[exported]
    assert card[exported + 1].startswith("- ONNX conversions")
    assert "`tumor_classifier.onnx`, `tumor_segmenter.onnx`" in card[exported + 1]
    assert card[exported + 2 :] == ["", "## Data"]  # the rest of the card untouched


def test_onnx_files_are_served_without_tensorflow_and_match_keras(onnx_model_dir, tmp_path):
    batch = slice_batch()
    np.save(tmp_path / "batch.npy", batch)
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from app.inference import Predictor

        predictor = Predictor.from_model_dir({str(onnx_model_dir)!r}, runtime="onnxruntime")
        batch = np.load({str(tmp_path / "batch.npy")!r})
        np.save({str(tmp_path / "probabilities.npy")!r}, predictor.classify(batch))
        np.save({str(tmp_path / "maps.npy")!r}, predictor.segment(batch))
        print(sorted(name for name in ("tensorflow", "keras", "tf2onnx") if name in sys.modules))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"  # none of them imported: the memory and start-up time TensorFlow costs, saved
    on_keras = Predictor.from_model_dir(onnx_model_dir)
    np.testing.assert_allclose(np.load(tmp_path / "probabilities.npy"), on_keras.classify(batch), atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "maps.npy"), on_keras.segment(batch), atol=1e-5)


def test_command_line_predict_follows_the_runtime_setting(onnx_model_dir):
    script = textwrap.dedent(
        f"""
        import json, sys
        from app.cli import main

        code = main(["predict", "--model-dir", {str(onnx_model_dir)!r}, {str(TUMOR_SLICE)!r}])
        print(json.dumps({{"code": code, "keras": "keras" in sys.modules}}))
        """
    )
    environment = {**os.environ, "INFERENCE_RUNTIME": "onnxruntime"}
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=120
    )

    assert run.returncode == 0, run.stderr
    *prediction, outcome = run.stdout.strip().splitlines()
    assert json.loads(outcome) == {"code": 0, "keras": False}
    assert json.loads("\n".join(prediction))["results"][0]["ok"] is True


def test_export_writes_nothing_when_a_conversion_differs_from_keras(tiny_model_dir, tmp_path, monkeypatch):
    directory = shutil.copytree(tiny_model_dir, tmp_path / "models")
    manifest_before = (directory / MANIFEST_NAME).read_text()
    monkeypatch.setattr(export_onnx, "largest_difference", lambda *args: 1e-3)

    with pytest.raises(export_onnx.ConversionMismatchError, match="differs from Keras by 1.00e-03"):
        export_onnx.export_onnx(directory)

    assert (directory / MANIFEST_NAME).read_text() == manifest_before
    assert not list(directory.glob("*.onnx"))


def test_an_onnx_file_without_a_hash_is_refused(onnx_model_dir, tmp_path):
    directory = shutil.copytree(onnx_model_dir, tmp_path / "models")
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    del manifest["files"][manifest["segmenter"]["onnx"]]
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))

    with pytest.raises(ModelStoreError, match="tumor_segmenter.onnx is used by tumor_segmenter but has no sha256"):
        read_manifest(directory)


def test_a_changed_onnx_file_is_refused(onnx_model_dir, tmp_path):
    directory = shutil.copytree(onnx_model_dir, tmp_path / "models")
    with (directory / "tumor_classifier.onnx").open("ab") as stream:
        stream.write(b"\0")

    with pytest.raises(ModelStoreError, match="sha256 mismatch for .*tumor_classifier.onnx"):
        Predictor.from_model_dir(directory, runtime="onnxruntime")


def test_without_onnx_files_the_models_are_converted_at_startup_and_match_keras(tiny_model_dir):
    batch = slice_batch()

    on_keras = Predictor.from_model_dir(tiny_model_dir)
    on_onnx = Predictor.from_model_dir(tiny_model_dir, runtime="onnxruntime")

    np.testing.assert_allclose(on_onnx.classify(batch), on_keras.classify(batch), atol=1e-5)
    np.testing.assert_allclose(on_onnx.segment(batch), on_keras.segment(batch), atol=1e-5)


def test_service_answers_on_onnxruntime(onnx_model_dir):
    with running_client(Settings(model_dir=onnx_model_dir, inference_runtime="onnxruntime")) as client:
        response = client.post("/v1/predict", files={"file": ("slice.jpg", TUMOR_SLICE.read_bytes(), "image/jpeg")})
        models = client.get("/v1/models").json()

    assert response.status_code == 200, response.text
    assert response.json()["mask"]["size"] == [256, 256]
    assert models["runtime"] == "onnxruntime"  # /v1/models says what runs the models


def test_unknown_runtime_is_refused():
    with pytest.raises(ValueError, match="inference_runtime"):
        Settings(inference_runtime="tensorrt")


def test_runtime_is_read_from_inference_runtime_or_backend(monkeypatch):
    monkeypatch.delenv("INFERENCE_RUNTIME", raising=False)
    monkeypatch.setenv("BACKEND", "onnxruntime")
    assert Settings().inference_runtime == "onnxruntime"

    monkeypatch.setenv("INFERENCE_RUNTIME", "keras")  # the setting's own name wins
    assert Settings().inference_runtime == "keras"
