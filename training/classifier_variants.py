"""Classifier variants tried for issue 14 and not adopted (models/history.md says how each did), kept so their
runs can be repeated and compared: `training.train --classifier-backbone` builds them. The classifier that serves is
`training.models.build_classifier`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from app.core.preprocessing import FLAIR_CHANNEL, INPUT_SHAPE
from training.models import (
    CLASSIFIER_FILTERS,
    SEGMENTER_FILTERS,
    build_classifier,
    carried_over,
    classifier_stages,
    classifier_stem,
    encoder,
    probability_head,
)


def build_mirror_classifier(
    input_shape: Sequence[int] = INPUT_SHAPE,
    filters: Sequence[int] = CLASSIFIER_FILTERS,
    dropout: float = 0.3,
    name: str = "tumor_classifier",
) -> keras.Model:
    """`build_classifier` whose stages also see the stem's features mirrored left to right.

    Why try it: a low-grade glioma is usually on one side, and a bright region that the other hemisphere repeats is
    more likely anatomy than tumor; with both sides side by side every later layer can compare them. The mirror is a
    fixed permutation (`mirror_width`), so the model stays plain Keras layers (JSON, ONNX, JAX).
    `mirror_classifier_from` starts it as an exact copy of a trained plain classifier.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = classifier_stem(inputs, filters[0])
    x = layers.Concatenate(name="stem_and_mirror")([x, mirror_width(x, "stem_mirror")])
    x = classifier_stages(x, filters[1:])
    model = keras.Model(inputs, probability_head(x, dropout), name=name)
    mirror = model.get_layer("stem_mirror_flip")
    mirror.set_weights([np.eye(mirror.units, dtype="float32")[::-1]])
    return model


def fine_stem_classifier_from(plain: keras.Model) -> keras.Model:
    """A fine-stem classifier with every weight of `plain` (a `build_classifier` model) or of a fine-stem one."""
    return carried_over(build_classifier(stem_pooling=False), plain, accepted="a plain or fine-stem classifier")


def build_flair_classifier(
    input_shape: Sequence[int] = INPUT_SHAPE,
    filters: Sequence[int] = CLASSIFIER_FILTERS,
    dropout: float = 0.3,
    name: str = "tumor_classifier",
) -> keras.Model:
    """`build_classifier` that reads FLAIR alone: a frozen 1x1 convolution copies FLAIR into all three channels.

    Tried for issue 14 as a second opinion beside the served classifier, which sees all three sequences: a model
    that never sees the contrast sequences might err on other slices, and the mean of two models that err apart is
    where an ensemble gains (not adopted: its ensembles ranked slices better but did not raise the specificity at
    the target sensitivity; models/history.md). Built-in layers only, so the architecture file loads without custom
    code; `flair_classifier_from` starts it from a trained plain classifier.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Conv2D(3, 1, use_bias=False, trainable=False, name="flair_selector")(inputs)
    x = classifier_stem(x, filters[0])
    x = classifier_stages(x, filters[1:])
    model = keras.Model(inputs, probability_head(x, dropout), name=name)
    selector = np.zeros((1, 1, input_shape[-1], 3), dtype="float32")
    selector[0, 0, FLAIR_CHANNEL, :] = 1.0
    model.get_layer("flair_selector").set_weights([selector])
    return model


def build_standardized_classifier(
    input_shape: Sequence[int] = INPUT_SHAPE,
    filters: Sequence[int] = CLASSIFIER_FILTERS,
    dropout: float = 0.3,
    name: str = "tumor_classifier",
) -> keras.Model:
    """`build_classifier` behind a per-slice standardization: each channel of each slice to mean 0 and variance 1
    (instance normalization: `GroupNormalization` with one group per channel), then a learned scale and offset.

    Tried for issue 14 (`--classifier-backbone cnn-standardized`): the classifier's specificity drops from validation
    to test patients, and brightness and contrast differ between scanners and institutions; a classifier that never
    sees a slice's absolute intensities cannot learn them. The statistics include the background, so a slice with
    little brain is stretched more. A built-in layer, so the architecture file loads without custom code.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.GroupNormalization(groups=input_shape[-1], epsilon=1e-3, name="slice_standardization")(inputs)
    x = classifier_stem(x, filters[0])
    x = classifier_stages(x, filters[1:])
    return keras.Model(inputs, probability_head(x, dropout), name=name)


def flair_classifier_from(plain: keras.Model) -> keras.Model:
    """A FLAIR classifier with every weight of `plain` (a `build_classifier` model): on a slice whose three
    channels are FLAIR it answers exactly as `plain` does."""
    return carried_over(build_flair_classifier(), plain, new_layers={"flair_selector"})


def mirror_width(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """`x` (batch, height, width, channels) flipped along its width, by a frozen dense layer that holds the reversed
    identity: built-in layers only, so the architecture file needs no custom code to load."""
    width = x.shape[2]
    x = layers.Permute((1, 3, 2), name=f"{name}_to_width_last")(x)
    x = layers.Dense(width, use_bias=False, trainable=False, name=f"{name}_flip")(x)
    return layers.Permute((1, 3, 2), name=f"{name}_to_channels_last")(x)


def mirror_classifier_from(plain: keras.Model) -> keras.Model:
    """A mirror classifier that computes exactly what `plain` (a `build_classifier` model) computes: every weight
    copied, and the first stage's kernel extended with zeros for the mirrored channels, which training then learns."""
    model = carried_over(build_mirror_classifier(), plain, new_layers={"stem_mirror_flip", "stage1_a_conv"})
    (kernel,) = plain.get_layer("stage1_a_conv").get_weights()
    model.get_layer("stage1_a_conv").set_weights([np.concatenate([kernel, np.zeros_like(kernel)], axis=2)])
    return model


def build_tumor_map_classifier(
    input_shape: Sequence[int] = INPUT_SHAPE,
    filters: Sequence[int] = CLASSIFIER_FILTERS,
    dropout: float = 0.3,
    name: str = "tumor_map_classifier",
) -> keras.Model:
    """`build_classifier`'s stages, but the output is a coarse map: P(tumor) for each 64 x 64 region of the slice.

    Why try it: the plain classifier learns from one yes/no per slice, and its misses and false alarms are the
    tumor's first and last slices, where the tumor is small. Training the map against the masks (`tumor_map_loss`)
    tells it where the tumor is, from every tumor pixel. `served_from_tumor_map` serves the largest region
    probability as P(slice shows tumor), with the same weights.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = classifier_stem(inputs, filters[0])
    x = classifier_stages(x, filters[1:])
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="tumor_map")(x)
    return keras.Model(inputs, outputs, name=name)


def served_from_tumor_map(model: keras.Model, name: str = "tumor_classifier") -> keras.Model:
    """The classifier served from a tumor-map classifier: its largest region probability, same weights."""
    probability = layers.GlobalMaxPooling2D(name="tumor_probability")(model.output)
    return keras.Model(model.input, probability, name=name)


def tumor_map_classifier_from(plain: keras.Model) -> keras.Model:
    """A tumor-map classifier started from a trained plain classifier: every stage copied, and each region's
    logit the plain head's weights for the average and the largest feature added (a close start, not an exact one)."""
    model = carried_over(build_tumor_map_classifier(), plain, new_layers={"tumor_map"})
    kernel, bias = plain.get_layer("tumor_probability").get_weights()
    channels = kernel.shape[0] // 2
    region_kernel = (kernel[:channels] + kernel[channels:]).reshape(1, 1, channels, 1)
    model.get_layer("tumor_map").set_weights([region_kernel, bias])
    return model


def build_encoder_classifier(
    input_shape: Sequence[int] = INPUT_SHAPE,
    filters: Sequence[int] = SEGMENTER_FILTERS,
    dropout: float = 0.3,
    name: str = "tumor_classifier",
) -> keras.Model:
    """The classifier on the segmenter's encoder: the ResUNet's stem, residual encoder stages and bridge (same layer
    names, so a trained segmenter's weights start it, `transfer_weights`), then the same pooled head as
    `build_classifier`.

    Why try it: the segmenter learned its encoder from every tumor pixel of the training patients, far more
    supervision than one yes/no per slice. On the validation patients it did not beat the plain CNN (model card).
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    return keras.Model(inputs, probability_head(encoder(inputs, filters)[0], dropout), name=name)


# EfficientNet-Lite0 (Tan and Le 2019; the "lite" variant: ReLU6, no squeeze-and-excitation), one row per stage:
# (blocks, kernel size, stride of the first block, expansion, output channels).
EFFICIENTNET_LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                             (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip


def build_efficientnet_lite0_classifier(
    input_shape: Sequence[int] = INPUT_SHAPE,
    dropout: float = 0.3,
    name: str = "tumor_classifier",
    classes: int | None = None,
) -> keras.Model:
    """The classifier on an EfficientNet-Lite0 backbone (conv + batch-norm + ReLU6 blocks, inverted residuals), with
    the same pooled head as `build_classifier`; `classes` instead ends it in ImageNet's softmax-free logits layer
    (`fc`), the form its pretrained weights check against (`training.imagenet_weights`).

    Why: 70 training patients limit the plain CNN (training AUC 0.98-0.99, validation 0.95-0.96); a backbone that
    learned edges and textures from ImageNet needs fewer patients to learn what a lesion is. Its first layer maps the
    served input (0..1) to the -1..1 range the ImageNet weights were trained on, so `preprocess_slice` is unchanged.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Rescaling(255 / 128, offset=-127 / 128, name="imagenet_scale")(inputs)
    x = lite_convolution(x, 32, 3, "stem", strides=2)
    block, channels = 0, 32
    for repeats, kernel_size, stride, expansion, out_channels in EFFICIENTNET_LITE0_STAGES:
        for repeat in range(repeats):
            x = inverted_residual_block(
                x, channels, out_channels, kernel_size, stride if repeat == 0 else 1, expansion, f"block{block}"
            )
            block, channels = block + 1, out_channels
    x = lite_convolution(x, 1280, 1, "head")
    if classes is not None:
        pooled = layers.GlobalAveragePooling2D(name="avg")(x)
        return keras.Model(inputs, layers.Dense(classes, name="fc")(pooled), name=name)
    return keras.Model(inputs, probability_head(x, dropout), name=name)


def lite_convolution(
    x: keras.KerasTensor, filters: int, kernel_size: int, name: str, strides: int = 1, activation: bool = True
) -> keras.KerasTensor:
    """Conv (no bias) -> batch norm (epsilon 1e-3, as the ImageNet weights were trained) -> ReLU6."""
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=1e-3, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if activation else x


def inverted_residual_block(
    x: keras.KerasTensor, channels: int, out_channels: int, kernel_size: int, strides: int, expansion: int, name: str
) -> keras.KerasTensor:
    """MobileNetV2's block: 1x1 expansion, depthwise conv, linear 1x1 projection; the input is added back when the
    shape allows."""
    y = lite_convolution(x, channels * expansion, 1, f"{name}_expand") if expansion != 1 else x
    y = layers.DepthwiseConv2D(kernel_size, strides=strides, padding="same", use_bias=False, name=f"{name}_dw_conv")(y)
    y = layers.BatchNormalization(epsilon=1e-3, name=f"{name}_dw_bn")(y)
    y = layers.ReLU(6.0, name=f"{name}_dw_relu")(y)
    y = lite_convolution(y, out_channels, 1, f"{name}_project", activation=False)
    return layers.Add(name=f"{name}_add")([x, y]) if strides == 1 and channels == out_channels else y
