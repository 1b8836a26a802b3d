"""Running the exported models: the service's backend edge, the one place it compiles and calls them.

Loading and converting the model files, which training needs too, is in `app.core.model_store` and
`app.core.onnx_models`; the rest of the service hands NumPy arrays to `Predictor` and gets NumPy arrays back.

`Predictor` loads the classifier and the segmenter once, compiles each for inference, and runs the segmenter only on
the slices the classifier calls positive. On TensorFlow (the default) each model becomes a `tf.function` with a fixed
input signature, so every batch size reuses one graph (measured: `model.predict` costs 40-50 ms more per call at
batch 1 on a 2-core CPU). On JAX (`KERAS_BACKEND=jax`, e.g. a GPU machine without TensorFlow) each becomes a
`jax.jit` function, fed batches padded to a few fixed sizes so it compiles a handful of times, not once per size.
With ONNX Runtime (`INFERENCE_RUNTIME=onnxruntime`) the ONNX files that `training.export_onnx` listed in the manifest
are run, and Keras (with TensorFlow) is never imported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.core.gate import flip_average, gate, probability_to_mask
from app.core.model_store import Manifest, ModelEntry, ModelStoreError, load_model, read_manifest
from app.core.onnx_models import ModelFunction, convert_to_onnx, onnxruntime_function
from app.core.preprocessing import INPUT_SHAPE, PREPROCESSING_ID, preprocess_slice

if TYPE_CHECKING:
    import keras

    from app.settings import Settings

logger = logging.getLogger(__name__)

CLASSIFIER = "classifier"
SEGMENTER = "segmenter"
RUNTIMES = ("keras", "onnxruntime")

InferenceObserver = Callable[[str, float, int], None]
"""Called after each model run with (model role, seconds, batch size), e.g. to record metrics."""


@dataclass(frozen=True)
class SlicePrediction:
    """What the models say about one slice.

    `mask` is uint8 0/1 at the input's height and width when `detected`, else None (the segmenter did not run).
    `seen` is the (rows, columns) the models saw the slice at, in its stored pixel order, when not the mask's own size
    (a DICOM slice of non-square pixels, resampled for them: `app.dicom.square_pixels`); the clean-ups count their
    sizes on that grid. None: the mask's own size.
    """

    probability: float
    detected: bool
    mask: np.ndarray | None
    seen: tuple[int, int] | None = None


def enable_gpu_memory_growth() -> int:
    """Let the framework take GPU memory as needed instead of all of it at start; return the number of GPUs.

    TensorFlow: memory growth on every visible GPU; must run before anything touches a GPU. JAX: preallocation is
    switched off by `XLA_PYTHON_CLIENT_PREALLOCATE=false`, which `app/__init__.py` sets before JAX can start. A no-op
    on machines without a GPU.
    """
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return sum(device.platform == "gpu" for device in jax.devices())
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as error:  # the device was initialised already; growth cannot change any more
            logger.warning("cannot enable memory growth", extra={"fields": {"device": gpu.name, "error": str(error)}})
    return len(gpus)


def load_predictor(
    settings: Settings,
    model_dir: str | Path | None = None,
    warm_up: bool = True,
    observer: InferenceObserver | None = None,
    manifest: Manifest | None = None,
) -> Predictor:
    """The models as every command runs them: GPU memory growth first (Keras runtime; ONNX Runtime never starts
    TensorFlow), then `Predictor.from_model_dir` (`settings.model_dir` unless `model_dir`), then, with `warm_up`,
    compiled at `settings.inference_batch_size`, the sizes it runs at (JAX compiles one per size).

    One loader for serve, predict, pacs-sync and the DICOM node (so every command enables memory growth, and none
    takes the whole GPU). `observer` and `manifest` as in `from_model_dir`.
    """
    if settings.inference_runtime == "keras":
        enable_gpu_memory_growth()
    predictor = Predictor.from_model_dir(
        model_dir or settings.model_dir, observer=observer, runtime=settings.inference_runtime, manifest=manifest
    )
    if warm_up:
        predictor.warm_up(settings.inference_batch_size)
    return predictor


JAX_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


def padded_batch_size(count: int) -> int:
    """The batch size a JAX function runs `count` slices at: the next of `JAX_BATCH_SIZES` (or `count` past them)."""
    return next((size for size in JAX_BATCH_SIZES if size >= count), count)


def load_for_inference(model_dir: str | Path, entry: ModelEntry, runtime: str = "keras") -> ModelFunction:
    """Load one model of the manifest (call `read_manifest` first) and compile it for `runtime`.

    On onnxruntime the model's ONNX file is used when the manifest lists one. Otherwise the Keras model is converted
    here, at every start, with TensorFlow staying in memory (measured on the committed models: 1.71 GiB peak RSS
    against 1.16 GiB on TensorFlow alone).
    """
    if runtime == "onnxruntime" and entry.onnx is not None:
        return onnxruntime_function(Path(model_dir) / entry.onnx)
    if runtime == "onnxruntime":
        logger.warning(
            "no ONNX file in the manifest; converting at startup (run python -m training.export_onnx to avoid it)",
            extra={"fields": {"model": entry.tag}},
        )
    return compile_for_inference(load_model(model_dir, entry), runtime)


def compile_for_inference(model: keras.Model, runtime: str = "keras") -> ModelFunction:
    """Compile a Keras model for inference: on the active Keras backend (tensorflow or jax), or with ONNX Runtime.

    `runtime="onnxruntime"` converts the model with tf2onnx first (`app.core.onnx_models`); it needs TensorFlow and
    the `train` extra.
    """
    import keras

    if runtime == "onnxruntime":
        try:
            return onnxruntime_function(convert_to_onnx(model))
        except ImportError as error:
            raise ModelStoreError(
                f"converting to ONNX at startup needs TensorFlow and tf2onnx ({error}); install them with "
                'pip install -e ".[train]", or list ONNX files in the manifest with python -m training.export_onnx'
            ) from error
    if runtime != "keras":
        raise ModelStoreError(f"inference runtime must be one of {RUNTIMES}; got {runtime!r}")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_function(model)
    if backend == "jax":
        return _jax_function(model)
    raise ModelStoreError(f"Keras backend {backend!r} is not supported for serving; use tensorflow or jax")


def _tensorflow_function(model: keras.Model) -> ModelFunction:
    import tensorflow as tf

    signature = [tf.TensorSpec(shape=(None, *INPUT_SHAPE), dtype=tf.float32, name="images")]
    function = tf.function(lambda images: model(images, training=False), input_signature=signature)
    return lambda batch: function(tf.convert_to_tensor(batch, dtype=tf.float32)).numpy()


def _jax_function(model: keras.Model) -> ModelFunction:
    import jax

    function = jax.jit(lambda images: model(images, training=False))

    def run(batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        padded_size = padded_batch_size(count)
        if padded_size > count:
            batch = np.concatenate([batch, np.zeros((padded_size - count, *batch.shape[1:]), batch.dtype)])
        return np.asarray(function(batch))[:count]

    return run


class Predictor:
    """Classifier + segmenter from one verified model directory.

    Parameters
    ----------
    manifest
        The manifest the models were loaded from; gives the thresholds and the model tags.
    classifier, segmenter
        Compiled models (`load_for_inference`) taking float32 (N, 256, 256, 3) from `preprocess_slice`; the
        classifier returns (N, 1) tumor probabilities, the segmenter (N, 256, 256, 1) per-pixel probabilities.
    observer
        Optional callback told how long each model run took.
    compiles_per_batch_size
        True for JAX functions, which compile once per padded batch size (see `warm_up`).

    Raises
    ------
    ModelStoreError
        If the manifest was written for another preprocessing or input shape than this code's.
    """

    def __init__(
        self,
        manifest: Manifest,
        classifier: ModelFunction,
        segmenter: ModelFunction,
        observer: InferenceObserver | None = None,
        compiles_per_batch_size: bool = False,
    ) -> None:
        if manifest.preprocessing != PREPROCESSING_ID:
            raise ModelStoreError(
                f"models were exported for preprocessing {manifest.preprocessing!r}, but this code applies "
                f"{PREPROCESSING_ID!r}; serving them would feed the models inputs unlike their training data"
            )
        if tuple(manifest.input_shape) != INPUT_SHAPE:
            raise ModelStoreError(
                f"models take input shape {tuple(manifest.input_shape)}; this service produces {INPUT_SHAPE}"
            )
        self.manifest = manifest
        self._observer = observer
        self._classifier = classifier
        self._segmenter = segmenter
        self._compiles_per_batch_size = compiles_per_batch_size

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        observer: InferenceObserver | None = None,
        runtime: str = "keras",
        manifest: Manifest | None = None,
    ) -> Predictor:
        """Verify the manifest's sha256s and load both models for `runtime` (`ModelStoreError` names any problem).

        `manifest`: one the caller has just read with `read_manifest` (the service checks it before serving), so
        the model files are not hashed a second time.
        """
        if runtime not in RUNTIMES:
            raise ModelStoreError(f"inference runtime must be one of {RUNTIMES}; got {runtime!r}")
        manifest = manifest or read_manifest(model_dir)
        classifier = load_for_inference(model_dir, manifest.classifier, runtime)
        segmenter = load_for_inference(model_dir, manifest.segmenter, runtime)
        compiles_per_batch_size = False
        if runtime == "keras":
            import keras

            compiles_per_batch_size = keras.backend.backend() == "jax"
        return cls(manifest, classifier, segmenter, observer, compiles_per_batch_size)

    @property
    def classifier_threshold(self) -> float:
        return self.manifest.classifier.threshold

    @property
    def mask_threshold(self) -> float:
        return self.manifest.segmenter.threshold

    @property
    def series_min_component_voxels(self) -> int:
        return self.manifest.segmenter.series_min_component_voxels

    @property
    def single_slice_mask_min_probability(self) -> float:
        return self.manifest.segmenter.single_slice_mask_min_probability

    @property
    def single_slice_min_component_pixels(self) -> int:
        return self.manifest.segmenter.single_slice_min_component_pixels

    @property
    def model_tags(self) -> dict[str, str]:
        return {CLASSIFIER: self.manifest.classifier.tag, SEGMENTER: self.manifest.segmenter.tag}

    def warm_up(self, max_batch_size: int = 1) -> None:
        """Compile both models before the first request, and check their output shapes while at it.

        TensorFlow and ONNX Runtime run every batch size with one graph, traced by one blank slice. A JAX function
        compiles once per padded batch size (seconds each), so on JAX every size a batch of up to `max_batch_size`
        slices pads to is compiled here, not in some request's path.
        """
        sizes = [1]
        if self._compiles_per_batch_size:
            sizes = sorted({padded_batch_size(count) for count in range(1, max_batch_size + 1)})
        for size in sizes:
            blank = np.zeros((size, *INPUT_SHAPE), dtype=np.float32)
            probabilities = self._run(CLASSIFIER, self._classifier, blank, observe=False)
            masks = self._run(SEGMENTER, self._segmenter, blank, observe=False)
            if probabilities.shape != (size, 1):
                raise ModelStoreError(
                    f"classifier must output shape (N, 1); it gave {probabilities.shape} for N={size}"
                )
            if masks.shape != (size, *INPUT_SHAPE[:2], 1):
                raise ModelStoreError(
                    f"segmenter must output shape (N, 256, 256, 1); it gave {masks.shape} for N={size}"
                )

    def classify(self, batch: np.ndarray) -> np.ndarray:
        """Tumor probability per slice, shape (N,), for a preprocessed batch (N, 256, 256, 3); the mean over the
        slice and its mirror when the manifest asks for it."""
        if not self.manifest.classifier.flip_average:
            return self._run(CLASSIFIER, self._classifier, batch).reshape(-1)
        # One observation for both runs: the metrics count batches of slices, not calls of the model.
        started = time.perf_counter()
        mean = flip_average(lambda images: self._run(CLASSIFIER, self._classifier, images, observe=False), batch)
        self._observe(CLASSIFIER, started, batch)
        return mean.reshape(-1)

    def segment(self, batch: np.ndarray) -> np.ndarray:
        """Per-pixel tumor probability, shape (N, 256, 256), for a preprocessed batch (N, 256, 256, 3)."""
        return self._run(SEGMENTER, self._segmenter, batch)[..., 0]

    def predict(self, images: Sequence[np.ndarray]) -> list[SlicePrediction]:
        """Predict decoded uint8 slices (HxW or HxWx3, at least 32 pixels a side) as one batch; masks come back at
        input size. The service's flow preprocesses first and calls `predict_preprocessed`; this is the one-call path
        for the tests and benchmarks.

        Raises
        ------
        app.core.preprocessing.InvalidImageError
            If an array is not an 8-bit slice.
        """
        batch = np.stack([preprocess_slice(image) for image in images]) if images else None
        return self.predict_preprocessed(batch, [tuple(image.shape[:2]) for image in images])

    def predict_preprocessed(self, batch: np.ndarray | None, sizes: Sequence[tuple[int, int]]) -> list[SlicePrediction]:
        """Like `predict`, for slices already through `preprocess_slice`; `sizes` are their original (H, W)."""
        if batch is None or len(sizes) == 0:
            return []
        if batch.shape[0] != len(sizes):
            raise ValueError(f"batch holds {batch.shape[0]} slices but {len(sizes)} sizes were given")
        probabilities = self.classify(batch)
        masks = gate(
            probabilities,
            lambda positive: self.segment(batch[positive]),
            sizes,
            self.classifier_threshold,
            self.mask_threshold,
        )
        return [
            SlicePrediction(probability=float(probability), detected=mask is not None, mask=mask)
            for probability, mask in zip(probabilities, masks, strict=True)
        ]

    def masks(self, batch: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Tumor masks (uint8 0/1 at each slice's original (H, W)) for a preprocessed batch: segmenter, threshold."""
        return [
            probability_to_mask(probability_map, size, self.mask_threshold)
            for probability_map, size in zip(self.segment(batch), sizes, strict=True)
        ]

    def _run(self, role: str, function: ModelFunction, batch: np.ndarray, observe: bool = True) -> np.ndarray:
        started = time.perf_counter()
        output = function(np.asarray(batch, dtype=np.float32))
        if observe:
            self._observe(role, started, batch)
        return output

    def _observe(self, role: str, started: float, batch: np.ndarray) -> None:
        if self._observer is not None:
            self._observer(role, time.perf_counter() - started, int(batch.shape[0]))
