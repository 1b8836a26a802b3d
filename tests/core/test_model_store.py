"""The model store: one manifest reader and writer (format_version checked), and model files loaded safely."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import keras
import pytest

from app.core.model_store import (
    MANIFEST_FORMAT_VERSION,
    MANIFEST_NAME,
    ModelEntry,
    ModelStoreError,
    load_model,
    read_manifest,
    sha256_of,
    write_manifest,
)
from tests.conftest import replace_model_file


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


def test_write_manifest_round_trips_and_leaves_no_staging_file(tiny_model_dir, tmp_path):
    manifest = read_manifest(tiny_model_dir)
    for name in manifest.files:
        shutil.copyfile(tiny_model_dir / name, tmp_path / name)

    write_manifest(tmp_path, manifest)

    assert read_manifest(tmp_path) == manifest
    assert sorted(path.name for path in tmp_path.glob(".*")) == []


def test_read_manifest_refuses_another_format_version(tiny_model_dir, tmp_path):
    shutil.copytree(tiny_model_dir, tmp_path, dirs_exist_ok=True)
    content = json.loads((tmp_path / MANIFEST_NAME).read_text())
    content["format_version"] = MANIFEST_FORMAT_VERSION + 1
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(content))

    with pytest.raises(ModelStoreError, match=rf"must have format_version 1; got {MANIFEST_FORMAT_VERSION + 1}$"):
        read_manifest(tmp_path)


def test_write_manifest_refuses_another_format_version(tiny_model_dir, tmp_path):
    manifest = read_manifest(tiny_model_dir).model_copy(update={"format_version": 2})

    with pytest.raises(ModelStoreError, match=r"^manifest format_version must be 1; got 2$"):
        write_manifest(tmp_path, manifest)
    assert not (tmp_path / MANIFEST_NAME).exists()


@pytest.mark.parametrize("threshold", [2.0, 1.0, 0.0, -0.5], ids=["two", "one", "zero", "negative"])
def test_read_manifest_refuses_a_threshold_that_is_no_probability(tiny_model_dir, tmp_path, threshold):
    """A classifier threshold of 2.0 answered every tumor slice "no tumor" with the service ready, and the DICOM node
    reported a tumor study "absent" (operations review 28, finding 1); one of 0 or below calls every slice tumor."""
    shutil.copytree(tiny_model_dir, tmp_path, dirs_exist_ok=True)
    content = json.loads((tmp_path / MANIFEST_NAME).read_text())
    content["classifier"]["threshold"] = threshold
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(content))

    with pytest.raises(ModelStoreError) as raised:
        read_manifest(tmp_path)

    message = str(raised.value)
    bound = "greater than 0" if threshold <= 0 else "less than 1"
    assert message.endswith(f"is invalid: classifier.threshold: Input should be {bound}")
    assert "pydantic" not in message and "\n" not in message


def classifier_weights_of(model_dir):
    return (model_dir / read_manifest(model_dir).classifier.weights).read_bytes()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("tumor_classifier.json", b"{}", "tumor_classifier.json does not describe a Keras model (it gives a dict)"),
        ("tumor_classifier.json", b"[1, 2]", "tumor_classifier.json does not describe a Keras model (it gives a list)"),
        (
            "tumor_classifier.json",
            json.dumps({"class_name": "Dense", "config": {"units": 3}, "module": "keras.layers"}).encode(),
            "tumor_classifier.json does not describe a Keras model (it gives a Dense)",
        ),
        ("tumor_classifier.json", b"not json", "tumor_classifier.json is not JSON (Expecting value"),
        ("tumor_segmenter.weights.h5", b"garbage" * 100, "Unable to synchronously open file"),
        (
            "tumor_segmenter.weights.h5",
            classifier_weights_of,
            "could not be loaded. Example error message for object Conv2D 'stem_conv': Layer 'stem_conv' expected",
        ),
    ],
    ids=["empty-object", "list", "a-layer", "not-json", "garbage-weights", "other-models-weights"],
)
def test_a_model_file_that_passes_its_sha256_but_cannot_load_is_one_short_line(
    tiny_model_dir, tmp_path, name, content, reason
):
    """An architecture of {} (re-hashed) stopped pacs-sync and dicom-node with an AttributeError traceback and exit
    1, and another model's weights with a 3 KB line of Keras object reprs (operations review 28, finding 6)."""
    content = content(tiny_model_dir) if callable(content) else content
    model_dir = replace_model_file(tiny_model_dir, tmp_path / "models", name, content)
    manifest = read_manifest(model_dir)
    entry = manifest.classifier if name.startswith("tumor_classifier") else manifest.segmenter

    with pytest.raises(ModelStoreError) as raised:
        load_model(model_dir, entry)

    message = str(raised.value)
    assert message.startswith(f"cannot load {entry.tag} from {model_dir}: ")
    assert reason in message
    assert "\n" not in message
    assert "<" not in message
    assert len(message) < 500


def test_sha256_of_hashes_a_file_of_several_blocks_whole(tmp_path: Path) -> None:
    """Newcomer review 45 F22: `hashlib.file_digest` in place of a hand-written 1 MiB read loop; past one block."""
    data = bytes(range(256)) * (5 * 4096 + 3)  # 5 MiB and 768 bytes
    (tmp_path / "model.bin").write_bytes(data)

    assert sha256_of(tmp_path / "model.bin") == hashlib.sha256(data).hexdigest()
