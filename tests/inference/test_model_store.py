"""Model files are code: the store refuses architectures that would run arbitrary Python."""

from __future__ import annotations

import keras
import pytest

from app.model_store import ModelEntry, ModelStoreError, load_model


def test_load_model_refuses_a_lambda_layer(tmp_path):
    inputs = keras.Input(shape=(4,))
    outputs = keras.layers.Lambda(lambda x: x * 2, name="doubling")(inputs)
    model = keras.Model(inputs, outputs, name="with_lambda")
    (tmp_path / "with_lambda.json").write_text(model.to_json())
    model.save_weights(tmp_path / "with_lambda.weights.h5")
    entry = ModelEntry(
        name="with_lambda",
        version="1",
        architecture="with_lambda.json",
        weights="with_lambda.weights.h5",
        parameters=0,
        threshold=0.5,
    )
    with pytest.raises(ModelStoreError, match="cannot load with_lambda@1.*arbitrary code execution"):
        load_model(tmp_path, entry)
