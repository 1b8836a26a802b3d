"""The service's model code runs on the JAX backend too (the GPU machine has JAX and no TensorFlow), with the same
numbers as on TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from app.core.preprocessing import preprocess_slice
from app.inference import Predictor
from tests.conftest import TUMOR_SLICE, read_slice

JAX_SCRIPT = """
import sys
import jax
import numpy as np
import keras
from app.inference import Predictor
assert keras.backend.backend() == "jax"
predictor = Predictor.from_model_dir(sys.argv[1])
predictor.warm_up(max_batch_size=4)
compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **kwargs: compiles.append(event) if event.endswith("backend_compile_duration") else None
)
batch = np.load(sys.argv[2])
np.savez(
    sys.argv[3], probabilities=predictor.classify(batch), maps=predictor.segment(batch), compiles=len(compiles)
)
"""


def test_predictor_on_jax_matches_tensorflow(tiny_model_dir, tmp_path):
    pytest.importorskip("jax", reason="jax is part of the dev extra; install it with make install-dev")
    image = read_slice(TUMOR_SLICE)
    # Three sizes of batch, so the padding to JAX's fixed batch sizes is exercised too.
    batch = np.stack([preprocess_slice(image), preprocess_slice(image[:, :, 1]), preprocess_slice(image[::-1])])
    np.save(tmp_path / "batch.npy", batch)
    subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(tiny_model_dir), str(tmp_path / "batch.npy"), str(tmp_path / "out.npz")],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "jax"},
        timeout=300,
        check=True,
    )
    on_jax = np.load(tmp_path / "out.npz")
    # warm_up(max_batch_size=4) compiled every padded size up to 4, so a batch of 3 compiles nothing more.
    assert on_jax["compiles"] == 0

    predictor = Predictor.from_model_dir(tiny_model_dir)
    np.testing.assert_allclose(on_jax["probabilities"], predictor.classify(batch), atol=1e-5)
    np.testing.assert_allclose(on_jax["maps"], predictor.segment(batch), atol=1e-5)
