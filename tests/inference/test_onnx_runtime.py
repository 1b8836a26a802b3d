"""INFERENCE_RUNTIME=onnxruntime serves the same numbers as Keras/TensorFlow, faster on CPU."""

from __future__ import annotations

import numpy as np
import pytest

from app.inference import Predictor
from app.settings import Settings
from tests.api.utils import running_client
from tests.conftest import TUMOR_SLICE, read_slice
from training.preprocessing import preprocess_slice

pytest.importorskip("onnxruntime", reason='the onnx extra is installed by make test (pip install -e ".[onnx]")')
pytest.importorskip("tf2onnx", reason='the onnx extra is installed by make test (pip install -e ".[onnx]")')


def test_onnxruntime_predictor_matches_keras(tiny_model_dir):
    image = read_slice(TUMOR_SLICE)
    batch = np.stack([preprocess_slice(image), preprocess_slice(image[:, :, 1])])

    on_keras = Predictor.from_model_dir(tiny_model_dir)
    on_onnx = Predictor.from_model_dir(tiny_model_dir, runtime="onnxruntime")

    np.testing.assert_allclose(on_onnx.classify(batch), on_keras.classify(batch), atol=1e-5)
    np.testing.assert_allclose(on_onnx.segment(batch), on_keras.segment(batch), atol=1e-5)


def test_service_answers_on_onnxruntime(tiny_model_dir):
    with running_client(Settings(model_dir=tiny_model_dir, inference_runtime="onnxruntime")) as client:
        response = client.post("/v1/predict", files={"file": ("slice.jpg", TUMOR_SLICE.read_bytes(), "image/jpeg")})

    assert response.status_code == 200, response.text
    assert response.json()["mask"]["size"] == [256, 256]


def test_unknown_runtime_is_refused():
    with pytest.raises(ValueError, match="inference_runtime"):
        Settings(inference_runtime="tensorrt")


def test_runtime_is_read_from_inference_runtime_or_backend(monkeypatch):
    monkeypatch.delenv("INFERENCE_RUNTIME", raising=False)
    monkeypatch.setenv("BACKEND", "onnxruntime")
    assert Settings().inference_runtime == "onnxruntime"

    monkeypatch.setenv("INFERENCE_RUNTIME", "keras")  # the setting's own name wins
    assert Settings().inference_runtime == "keras"
