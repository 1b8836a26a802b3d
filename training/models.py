"""Model builders: a small CNN classifier and a residual U-Net (ResUNet), each a function returning `keras.Model`.

Both are sized to serve on a CPU: together they stay within about 100 ms per slice at batch 1 on a 2-core machine.
Only `keras` layers are used, so the same code builds the models on the TensorFlow and the JAX backends.
"""

from __future__ import annotations

import errno
import json
import tempfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import h5py
import keras
import numpy as np
from keras import layers

from app.core.preprocessing import INPUT_SHAPE

CLASSIFIER_FILTERS = (16, 32, 64, 128, 256)
SEGMENTER_FILTERS = (16, 32, 64, 128, 256)
# A checkpoint folder: the weights under BEST_WEIGHTS_NAME and, for any model but the plain builders', its
# architecture under ARCHITECTURE_NAME (`save_checkpoint` writes both, `load_checkpoint` reads them).
ARCHITECTURE_NAME = "architecture.json"
BEST_WEIGHTS_NAME = "best.weights.h5"


def convolution_block(x: keras.KerasTensor, filters: int, name: str, strides: int = 1) -> keras.KerasTensor:
    """Conv 3x3 -> batch norm -> ReLU; the conv has no bias because batch norm adds one."""
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def classifier_stem(inputs: keras.KerasTensor, filters: int, pooling: bool = True) -> keras.KerasTensor:
    """Strided conv block, then pooling: 256x256 down to 64x64 before the wide stages (128x128 without pooling)."""
    x = convolution_block(inputs, filters, "stem", strides=2)
    return layers.MaxPooling2D(2, name="stem_pool")(x) if pooling else x


def classifier_stages(x: keras.KerasTensor, filters: Sequence[int]) -> keras.KerasTensor:
    """Two conv blocks per stage, each stage halving the resolution (layer names shared by every classifier, so
    weights carry over between them by name)."""
    for stage, stage_filters in enumerate(filters, start=1):
        x = convolution_block(x, stage_filters, f"stage{stage}_a")
        x = convolution_block(x, stage_filters, f"stage{stage}_b")
        x = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
    return x


def build_classifier(
    input_shape: Sequence[int] = INPUT_SHAPE,
    filters: Sequence[int] = CLASSIFIER_FILTERS,
    dropout: float = 0.3,
    name: str = "tumor_classifier",
    stem_pooling: bool = True,
) -> keras.Model:
    """CNN that outputs P(slice shows tumor): stages of conv-BN-ReLU blocks, each halving the resolution.

    The stem (strided conv, then pooling) brings 256x256 down to 64x64 before the wide stages: at full resolution
    the extra compute buys little for a yes/no answer and would make CPU training and serving several times slower.

    `stem_pooling=False` is the fine-stem classifier (`--classifier-backbone cnn-fine-stem`), tried for issue 14: its
    stages see 128x128, so a small tumor (under 350 pixels, about 4x4 cells after the plain stem) gets four times the
    cells, for about four times the stages' compute. Same layer names and weights, so `fine_stem_classifier_from`
    starts it from a trained plain classifier.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = classifier_stem(inputs, filters[0], pooling=stem_pooling)
    x = classifier_stages(x, filters[1:])
    return keras.Model(inputs, probability_head(x, dropout), name=name)


def probability_head(x: keras.KerasTensor, dropout: float) -> keras.KerasTensor:
    """Pooled features -> P(tumor). Max pooling over space as well as average: a small lesion in one corner must
    still fire."""
    pooled = layers.Concatenate(name="pool")(
        [layers.GlobalAveragePooling2D(name="avg")(x), layers.GlobalMaxPooling2D(name="max")(x)]
    )
    pooled = layers.Dropout(dropout, name="dropout")(pooled)
    return layers.Dense(1, activation="sigmoid", name="tumor_probability")(pooled)


def encoder(inputs: keras.KerasTensor, filters: Sequence[int]) -> tuple:
    """The ResUNet's stem, encoder stages and bridge: (bridge output, skip outputs from shallow to deep)."""
    x = layers.Conv2D(filters[0], 3, strides=2, padding="same", name="stem_conv")(inputs)
    x = residual_block(x, filters[0], "encoder0")
    skips = [x]
    for depth, stage_filters in enumerate(filters[1:-1], start=1):
        x = residual_block(x, stage_filters, f"encoder{depth}", strides=2)
        skips.append(x)
    return residual_block(x, filters[-1], "bridge", strides=2), skips


def residual_block(x: keras.KerasTensor, filters: int, name: str, strides: int = 1) -> keras.KerasTensor:
    """Pre-activation residual block (BN-ReLU-conv twice) with a 1x1 projection shortcut (Zhang et al. 2018)."""
    shortcut = layers.Conv2D(filters, 1, strides=strides, padding="same", name=f"{name}_shortcut")(x)
    shortcut = layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
    y = layers.BatchNormalization(name=f"{name}_bn1")(x)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, strides=strides, padding="same", name=f"{name}_conv1")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = layers.Activation("relu", name=f"{name}_relu2")(y)
    y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2")(y)
    return layers.Add(name=f"{name}_add")([shortcut, y])


def build_resunet(
    input_shape: Sequence[int] = INPUT_SHAPE,
    filters: Sequence[int] = SEGMENTER_FILTERS,
    name: str = "tumor_segmenter",
    full_resolution_output: bool = False,
) -> keras.Model:
    """ResUNet: residual encoder, a bridge, and a residual decoder joined to the encoder by skip connections.

    `filters` lists the widths from the first stage down to the bridge; each encoder stage after the first halves
    the resolution with a strided conv. The stem works at half resolution and the mask logits are upsampled
    bilinearly to the input size: measured on a 2-core CPU this cut inference from 123 ms to 30 ms and made
    training 4x faster, while LGG lesions are large enough that half-resolution logits lose little Dice.

    `full_resolution_output` instead upsamples the decoder's features and joins them to a light full-resolution
    branch of the input before the logits, so edges and small lesions are drawn at the input's resolution (the
    recipe comparison in the model card says whether that is worth its cost). Layers shared with the plain
    architecture keep their names, so its weights start this variant (`transfer_weights`).
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x, skips = encoder(inputs, filters)
    for depth in reversed(range(len(skips))):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"decoder{depth}_up")(x)
        x = layers.Concatenate(name=f"decoder{depth}_concat")([x, skips[depth]])
        x = residual_block(x, filters[depth], f"decoder{depth}")
    if full_resolution_output:
        x = layers.UpSampling2D(2, interpolation="bilinear", name="full_up")(x)
        full = convolution_block(inputs, filters[0] // 2, "full_stem")
        x = layers.Concatenate(name="full_concat")([x, full])
        x = residual_block(x, filters[0], "full_decoder")
        logits = layers.Conv2D(1, 1, name="full_mask_logits")(x)
    else:
        logits = layers.Conv2D(1, 1, name="mask_logits")(x)
        logits = layers.UpSampling2D(2, interpolation="bilinear", name="mask_logits_up")(logits)
    outputs = layers.Activation("sigmoid", name="tumor_mask")(logits)
    return keras.Model(inputs, outputs, name=name)


def transfer_weights(model: keras.Model, source: keras.Model) -> list[str]:
    """Copy the weights of every layer of `source` that `model` has by name with the same shapes; return the names
    of `model`'s layers with weights that got none (they keep their initial values)."""
    by_name = {layer.name: layer for layer in source.layers}
    untouched = []
    for layer in model.layers:
        if not layer.weights:
            continue
        match = by_name.get(layer.name)
        if match is not None and [w.shape for w in match.weights] == [w.shape for w in layer.weights]:
            layer.set_weights(match.get_weights())
        else:
            untouched.append(layer.name)
    return untouched


def carried_over(
    model: keras.Model, plain: keras.Model, new_layers: Collection[str] = (), accepted: str = "a plain classifier"
) -> keras.Model:
    """`model` with `plain`'s weights copied in by layer name (`transfer_weights`); every layer with weights but
    `new_layers` must get some, else `plain` is not what the builder starts from (`accepted`) and this raises."""
    untouched = transfer_weights(model, plain)
    if set(untouched) != set(new_layers):
        raise ValueError(f"not {accepted}: no weights for {untouched}")
    return model


def architecture_json(model: keras.Model) -> str:
    """The model's architecture without its compile settings: a run's architecture file then loads an uncompiled
    model, and checkpoints of one architecture compare equal (`training.checkpoint_comparison.average_and_save`)."""
    config = json.loads(model.to_json())
    config.pop("compile_config", None)
    return json.dumps(config)


def load_segmenter(weights: str | Path) -> keras.Model:
    """The segmenter of a checkpoint: the architecture a training run saved beside it (`architecture.json`, e.g. the
    full-resolution variant), else the plain `build_resunet()`, with the weights loaded."""
    return load_checkpoint(weights, build_resunet)


def load_classifier(weights: str | Path) -> keras.Model:
    """The classifier of a checkpoint: the architecture saved beside it (`architecture.json`, e.g. the probability
    mean of cross-validation fold models written by `training.cross_validation combine`), else `build_classifier()`."""
    return load_checkpoint(weights, build_classifier)


def load_checkpoint(weights: str | Path, build_default: Callable[[], keras.Model]) -> keras.Model:
    """`weights` in the architecture its run saved beside them (`architecture.json`), else in `build_default()`.

    A missing file is a `FileNotFoundError` naming it (h5py's own names none), which the commands report as a usage
    error."""
    if not Path(weights).is_file():
        raise FileNotFoundError(errno.ENOENT, "no such weights file", str(weights))
    architecture = Path(weights).parent / ARCHITECTURE_NAME
    model = keras.models.model_from_json(architecture.read_text()) if architecture.is_file() else build_default()
    check_weights_fit(model, weights)
    model.load_weights(weights)
    return model


def save_checkpoint(model: keras.Model, folder: Path) -> None:
    """`model` as a checkpoint folder that `load_checkpoint` reads back: its architecture and its weights."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ARCHITECTURE_NAME).write_text(architecture_json(model))
    model.save_weights(folder / BEST_WEIGHTS_NAME)


def check_weights_fit(model: keras.Model, weights: str | Path) -> None:
    """Refuse a weights file whose variables (names and shapes) are not the model's own.

    Why: Keras loads what matches and skips the rest without a word, so the weights of a classifier with one more
    layer, loaded into the plain CNN, gave a model that answered with AUC 0.65.
    """
    with tempfile.TemporaryDirectory() as folder:
        expected = Path(folder) / "expected.weights.h5"
        model.save_weights(expected)
        if _variable_shapes(expected) != _variable_shapes(weights):
            raise ValueError(
                f"{weights} does not fit the {model.name} architecture it is loaded into (no {ARCHITECTURE_NAME} "
                "beside it, or the wrong one): its variables differ in name or shape"
            )


def _variable_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The model's variables in a `.weights.h5` file, by path (a training checkpoint also holds the optimizer's)."""
    shapes: dict[str, tuple[int, ...]] = {}
    with h5py.File(path, "r") as weights_file:
        weights_file["layers"].visititems(
            lambda name, item: shapes.__setitem__(name, item.shape) if isinstance(item, h5py.Dataset) else None
        )
    return shapes


def probability_mean_of(members: list[keras.Model], name: str = "tumor_classifier") -> keras.Model:
    """One model whose output is the mean of the members' probabilities (the members keep their own weights)."""
    inputs = keras.Input(shape=members[0].input_shape[1:], name="image")
    outputs = keras.layers.Average(name="tumor_probability_mean")([member(inputs) for member in members])
    return keras.Model(inputs, outputs, name=name)


def renamed(model: keras.Model, name: str) -> keras.Model:
    """A copy of `model` under another name, same weights (members of one ensemble need distinct names)."""
    config = model.get_config()
    config["name"] = name
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def weights_average(models: list[keras.Model]) -> keras.Model:
    """One model of the members' shared architecture whose every variable is the members' mean.

    Between a checkpoint and its own fine-tune (one basin of the loss) this keeps the cost of one model and often
    generalizes like their ensemble ("model soup"); between models trained from different starts it is meaningless.
    """
    averaged = keras.models.model_from_json(models[0].to_json())
    each_model = [model.get_weights() for model in models]
    averaged.set_weights([np.mean(variables, axis=0) for variables in zip(*each_model, strict=True)])
    return averaged
