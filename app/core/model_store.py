"""`models/manifest.json`: its schema, its one reader and its one writer, and loading the models it lists.

The reader checks `format_version` and every file's sha256; the writer replaces the file atomically. Training
(`training.export`, `training.export_onnx`) writes through `write_manifest`, the service reads through `read_manifest`.

Model files are code as far as trust goes (an architecture JSON chooses which layers run): load them only from a
source you trust. The hash check stops a file that was truncated, swapped or edited after export.

Keras is imported only when a Keras model is loaded, so a service running the ONNX files (`INFERENCE_RUNTIME=
onnxruntime`) never starts TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, ValidationError

from app.core.durable_files import write_atomically

if TYPE_CHECKING:
    import keras

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
"""The manifest layout this code reads and writes; raise it when a field changes meaning or goes away."""
MAX_REASON_CHARACTERS = 300
KERAS_OBJECT_REPR = re.compile(r"<(\w+) name=([^,>]+)[^>]*>")
OBJECT_REPR = re.compile(r"<[^<>]*>")


class ModelStoreError(RuntimeError):
    """The model directory cannot be used: a file is missing, altered, or the manifest is invalid."""


class ModelEntry(BaseModel):
    """One exported model as listed in the manifest."""

    name: str
    version: str
    architecture: str
    weights: str
    parameters: int
    threshold: float = Field(gt=0.0, lt=1.0, allow_inf_nan=False)
    """A probability strictly between 0 and 1: at 2.0 (or NaN) no slice passes and a tumor study was reported
    "absent", at 0 or below every slice does, with a mask over the whole image."""
    onnx: str | None = None
    """The same model converted to ONNX by `training.export_onnx`, if it was; checked against Keras at 1e-5."""
    flip_average: bool = False
    """Classifier only: serve the mean of its probabilities for the slice and its left-right mirror
    (`app.core.gate.flip_average`); the threshold was chosen for that mean."""
    series_min_component_voxels: int = Field(default=0, ge=0)
    """Segmenter only: the series clean-up's smallest 3-D component, in voxels of the 256 x 256 grid, chosen on the
    validation patients (`app.core.series_postprocessing`); 0 turns the clean-up off."""
    single_slice_mask_min_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    """Segmenter only: a slice answered on its own (no series clean-up) gets its mask only when the classifier's
    probability is at least this, chosen on the validation patients; below it the slice is still reported as tumor,
    without a mask. 0 (or anything up to the classifier's threshold) draws a mask on every positive slice."""
    single_slice_min_component_pixels: int = Field(default=0, ge=0)
    """Segmenter only: a slice answered on its own loses mask pieces smaller than this, in pixels of the 256 x 256
    grid (`app.core.series_postprocessing.drop_small_pieces`), chosen on the validation patients; a mask left empty
    becomes none, the slice still reported as tumor. 0 keeps every piece."""

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}"


class Manifest(BaseModel):
    """What `training.export` writes beside the models (`write_manifest`)."""

    format_version: int
    preprocessing: str
    input_shape: list[int]
    classifier: ModelEntry
    segmenter: ModelEntry
    split: str
    training_data: str
    metrics: dict
    versions: dict[str, str]
    files: dict[str, str]


def sha256_of(path: Path) -> str:
    """The file's SHA-256 in hex, read in blocks by `hashlib.file_digest`."""
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def read_manifest(model_dir: str | Path) -> Manifest:
    """Parse the manifest and check that every file it lists exists and has the recorded sha256.

    Raises
    ------
    ModelStoreError
        Naming the file and what is wrong with it.
    """
    model_dir = Path(model_dir)
    manifest_path = model_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelStoreError(f"model manifest not found: {manifest_path}")
    try:
        manifest = Manifest.model_validate(json.loads(manifest_path.read_text()))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'the whole file'}: {item['msg']}"
            for item in error.errors(include_url=False)
        )
        raise ModelStoreError(f"model manifest {manifest_path} is invalid: {problems}") from error
    except ValueError as error:  # not JSON
        raise ModelStoreError(f"model manifest {manifest_path} is invalid: {error}") from error
    if manifest.format_version != MANIFEST_FORMAT_VERSION:
        raise ModelStoreError(
            f"model manifest {manifest_path} must have format_version {MANIFEST_FORMAT_VERSION}; "
            f"got {manifest.format_version}"
        )
    for entry in (manifest.classifier, manifest.segmenter):
        for file_name in (entry.architecture, entry.weights, entry.onnx):
            if file_name is not None and file_name not in manifest.files:
                raise ModelStoreError(f"{file_name} is used by {entry.name} but has no sha256 in the manifest")
    for file_name, expected in manifest.files.items():
        path = model_dir / file_name
        if not path.is_file():
            raise ModelStoreError(f"model file listed in the manifest is missing: {path}")
        actual = sha256_of(path)
        if actual != expected:
            raise ModelStoreError(
                f"sha256 mismatch for {path}: manifest says {expected}, file has {actual}; "
                "refusing to load a model file that changed after export"
            )
    return manifest


def write_manifest(model_dir: str | Path, manifest: Manifest) -> None:
    """Write the manifest, replacing any old one in one step so a crash never leaves a half-written file.

    Raises
    ------
    ModelStoreError
        If `manifest.format_version` is not the one this code reads (`MANIFEST_FORMAT_VERSION`).
    """
    if manifest.format_version != MANIFEST_FORMAT_VERSION:
        raise ModelStoreError(
            f"manifest format_version must be {MANIFEST_FORMAT_VERSION}; got {manifest.format_version}"
        )
    text = json.dumps(manifest.model_dump(), indent=2) + "\n"
    write_atomically(Path(model_dir) / MANIFEST_NAME, text.encode())


def load_model(model_dir: str | Path, entry: ModelEntry) -> keras.Model:
    """Rebuild a model from its architecture JSON and load its `.weights.h5` (call `read_manifest` first).

    Raises
    ------
    ModelStoreError
        For any file that does not rebuild into a Keras model or whose weights do not fit it, with a one-line reason:
        files that pass the sha256 check (an operator re-hashed them) can still hold anything, and Keras reports
        them with many-line messages, object reprs, or as an AttributeError.
    """
    import keras

    model_dir = Path(model_dir)
    with warnings.catch_warnings(record=True) as caught:
        # Keras warns once per layer it skips ("Skipping nested container ..."): noise when the load fails anyway.
        warnings.simplefilter("always")
        try:
            try:
                architecture = json.loads((model_dir / entry.architecture).read_text())
            except json.JSONDecodeError as error:
                raise ModelStoreError(
                    f"cannot load {entry.tag} from {model_dir}: {entry.architecture} is not JSON ({error})"
                ) from error
            # safe_mode refuses Python lambdas (arbitrary code) hidden in an architecture file.
            model = keras.saving.deserialize_keras_object(architecture, safe_mode=True)
            if not isinstance(model, keras.Model):
                raise ModelStoreError(
                    f"cannot load {entry.tag} from {model_dir}: {entry.architecture} does not describe a Keras "
                    f"model (it gives a {type(model).__name__})"
                )
            model.load_weights(model_dir / entry.weights)
        except ModelStoreError:
            raise
        except Exception as error:  # whatever Keras, h5py or the file system raise: the model cannot be used
            raise ModelStoreError(f"cannot load {entry.tag} from {model_dir}: {one_line_reason(error)}") from error
    for warning in caught:  # a load that worked keeps its warnings (layers left with their initial weights)
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return model


def one_line_reason(error: Exception) -> str:
    """Keras's message for `error` as one short line: its lists of unloaded objects and full configs left out, an
    object repr (`<Conv2D name=stem_conv, built=True>`) named as `Conv2D 'stem_conv'`."""
    text = str(error) or type(error).__name__
    for tail in ("List of objects that could not be loaded", "Full object config"):
        text = text.split(tail, 1)[0]
    text = KERAS_OBJECT_REPR.sub(r"\1 '\2'", text)
    text = OBJECT_REPR.sub("an object", text)
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON_CHARACTERS else text[: MAX_REASON_CHARACTERS - 3] + "..."


def load_models(model_dir: str | Path) -> tuple[Manifest, keras.Model, keras.Model]:
    """Verify the manifest's files, then load (manifest, classifier, segmenter) as Keras models: for the tests and
    benchmarks (the service loads its own through `app.inference`)."""
    manifest = read_manifest(model_dir)
    return manifest, load_model(model_dir, manifest.classifier), load_model(model_dir, manifest.segmenter)
