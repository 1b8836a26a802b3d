"""Convert the exported models to ONNX, check them against Keras, and list them in the manifest.

    python -m training.export_onnx --model-dir models

Run it after `training.export`, which writes a manifest without ONNX files. With the ONNX files listed, a service on
`INFERENCE_RUNTIME=onnxruntime` loads them directly and never starts TensorFlow; without them it converts the models
at every start and keeps TensorFlow in memory. A converted model is written only if its outputs match the Keras
model's within `--tolerance` (1e-5) on the check inputs; otherwise nothing changes. Needs TensorFlow and the `train`
extra (tf2onnx, onnx, onnxruntime).
"""

from __future__ import annotations

import argparse
import logging
from importlib import metadata
from pathlib import Path

import keras
import numpy as np

from app.core.model_store import ModelEntry, load_model, read_manifest, sha256_of, write_manifest
from app.core.onnx_models import ONNX_OPSET, convert_to_onnx, onnxruntime_function
from training.model_card import MODEL_CARD_NAME, refresh_export_lines

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-5


class ConversionMismatchError(RuntimeError):
    """A converted model's outputs differ from the Keras model's by more than the tolerance."""


def comparison_inputs(input_shape: tuple[int, ...], count: int = 4, seed: int = 0) -> np.ndarray:
    """Inputs the conversion is checked on: a blank slice and seeded uniform noise in [0, 1] (what
    `preprocess_slice` yields), which drives every channel and pixel unlike any one real slice would."""
    noise = np.random.default_rng(seed).random((count - 1, *input_shape), dtype=np.float32)
    return np.concatenate([np.zeros((1, *input_shape), np.float32), noise])


def largest_difference(model: keras.Model, onnx_model: bytes, inputs: np.ndarray) -> float:
    """Largest absolute difference between the Keras model's and the ONNX model's outputs on `inputs`."""
    expected = keras.ops.convert_to_numpy(model(inputs, training=False))
    actual = onnxruntime_function(onnx_model)(inputs)
    return float(np.max(np.abs(expected - actual)))


def export_onnx(model_dir: Path, tolerance: float = DEFAULT_TOLERANCE, opset: int = ONNX_OPSET) -> dict[str, float]:
    """Write `<model name>.onnx` for both models, add them (with sha256s) to the manifest and name them in the card.

    Returns each model's largest difference from Keras. Raises `ConversionMismatchError`, writing nothing, when one
    exceeds `tolerance`.
    """
    manifest = read_manifest(model_dir)
    inputs = comparison_inputs(tuple(manifest.input_shape))
    converted: dict[str, tuple[ModelEntry, bytes]] = {}
    differences: dict[str, float] = {}
    for role, entry in (("classifier", manifest.classifier), ("segmenter", manifest.segmenter)):
        model = load_model(model_dir, entry)
        onnx_model = convert_to_onnx(model, opset)
        differences[role] = largest_difference(model, onnx_model, inputs)
        if differences[role] > tolerance:
            raise ConversionMismatchError(
                f"{entry.tag} converted to ONNX differs from Keras by {differences[role]:.2e} > {tolerance:.0e}"
            )
        converted[role] = (entry, onnx_model)
    for role, (entry, onnx_model) in converted.items():
        file_name = f"{entry.name}.onnx"
        (model_dir / file_name).write_bytes(onnx_model)
        setattr(manifest, role, entry.model_copy(update={"onnx": file_name}))
        manifest.files[file_name] = sha256_of(model_dir / file_name)
    manifest.versions.update({"tf2onnx": metadata.version("tf2onnx"), "onnx_opset": str(opset)})
    write_manifest(model_dir, manifest)
    card = model_dir / MODEL_CARD_NAME
    if card.is_file():
        card.write_text(refresh_export_lines(card.read_text(), manifest.model_dump()))
    return differences


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    parser.add_argument("--opset", type=int, default=ONNX_OPSET)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for role, difference in export_onnx(args.model_dir, args.tolerance, args.opset).items():
        logger.info("%s: largest difference from Keras %.2e (tolerance %.0e)", role, difference, args.tolerance)


if __name__ == "__main__":
    main()
