"""ONNX: converting a Keras model (training, and the service's fallback at startup) and running one with ONNX Runtime.

Conversion needs TensorFlow and tf2onnx (the `train` extra); running needs onnxruntime alone (the `onnx` extra), so a
service on `INFERENCE_RUNTIME=onnxruntime` with ONNX files listed in the manifest never imports Keras or TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.core.model_store import ModelStoreError

if TYPE_CHECKING:
    import keras

ONNX_OPSET = 17

ModelFunction = Callable[[np.ndarray], np.ndarray]
"""A compiled model: float32 batch (N, 256, 256, 3) in, numpy output out."""


def convert_to_onnx(model: keras.Model, opset: int = ONNX_OPSET) -> bytes:
    """The model as a serialized ONNX graph with input "images", float32 (N, H, W, C) for any N (tf2onnx)."""
    import tensorflow as tf  # tf2onnx converts TensorFlow graphs only
    import tf2onnx

    signature = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="images"),)
    converted, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    return converted.SerializeToString()


def onnxruntime_function(model: bytes | Path) -> ModelFunction:
    """Run an ONNX model (a file, or its serialized bytes) with ONNX Runtime on the CPU."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ModelStoreError(
            f'INFERENCE_RUNTIME=onnxruntime needs onnxruntime ({error}); install it with pip install -e ".[onnx]"'
        ) from error
    options = onnxruntime.SessionOptions()
    # No busy-waiting between model runs: in the service the event loop needs those cycles (on 2 cores, spinning
    # threads halved what ONNX Runtime gained). No memory arena: it kept the largest batch's buffers for good.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = False
    source = str(model) if isinstance(model, Path) else model
    try:
        session = onnxruntime.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable or invalid graphs
        raise ModelStoreError(f"ONNX Runtime cannot load the model: {error}") from error
    input_name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        # One slice per run: ONNX Runtime on the 2-core CPU is fastest at batch 1 (`bench.model_limit`: segmenter
        # 20.8 ms per slice at batch 1, 27.7 at 8, 29.9 at 16), while the micro-batcher still saves its per-batch work.
        outputs = [session.run(None, {input_name: batch[index : index + 1]})[0] for index in range(len(batch))]
        return np.concatenate(outputs) if outputs else session.run(None, {input_name: batch})[0]

    return run
