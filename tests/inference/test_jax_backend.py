"""The service's model code runs on the JAX backend too (the GPU machine has JAX and no TensorFlow), with the same
numbers as on TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from app.inference import Predictor
from tests.conftest import TUMOR_SLICE, read_slice

JAX_SCRIPT = """
import json, sys
import numpy as np
from PIL import Image
import keras
from app.inference import Predictor
predictor = Predictor.from_model_dir(sys.argv[1])
predictor.warm_up()
image = np.asarray(Image.open(sys.argv[2]))
results = predictor.predict([image, image[:, :, 1], image])
print(json.dumps({
    "backend": keras.backend.backend(),
    "probabilities": [result.probability for result in results],
    "mask_sums": [int(result.mask.sum()) for result in results],
}))
"""


def test_predictor_on_jax_matches_tensorflow(tiny_model_dir):
    pytest.importorskip("jax", reason="jax is part of the dev extra; install it with make install-dev")
    environment = {**os.environ, "KERAS_BACKEND": "jax"}
    completed = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(tiny_model_dir), str(TUMOR_SLICE)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=True,
    )
    on_jax = json.loads(completed.stdout.strip().splitlines()[-1])
    assert on_jax["backend"] == "jax"

    predictor = Predictor.from_model_dir(tiny_model_dir)
    image = read_slice(TUMOR_SLICE)
    on_tensorflow = predictor.predict([image, image[:, :, 1], image])
    np.testing.assert_allclose(on_jax["probabilities"], [r.probability for r in on_tensorflow], atol=1e-5)
    # Thresholded masks may differ only where a probability sits within float error of the threshold.
    for jax_sum, result in zip(on_jax["mask_sums"], on_tensorflow, strict=True):
        assert abs(jax_sum - int(result.mask.sum())) <= 5
