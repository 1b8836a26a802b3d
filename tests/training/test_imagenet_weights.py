"""The ImageNet start of the EfficientNet-Lite0 classifier: the conversion from the package's PyTorch file is right
(the converted network recognises a photograph), and the reader runs nothing but a state dict."""

import io
import pickle
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest

from training.classifier_variants import build_efficientnet_lite0_classifier
from training.imagenet_weights import (
    StateDictError,
    assign_imagenet_weights,
    package_weights_file,
    read_legacy_state_dict,
    top_imagenet_classes,
)
from training.models import ARCHITECTURE_NAME, load_classifier

MILITARY_UNIFORM = 652  # ImageNet class index; Grace Hopper's photograph is the classic example of it


@pytest.fixture(scope="module")
def imagenet_state() -> dict[str, np.ndarray]:
    return read_legacy_state_dict(package_weights_file())


def test_the_converted_network_recognises_a_photograph(imagenet_state):
    photograph = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    photograph = cv2.resize(photograph[:, :, ::-1], (224, 224), interpolation=cv2.INTER_AREA)

    assert top_imagenet_classes(imagenet_state, photograph)[0] == MILITARY_UNIFORM


def test_the_tumor_classifier_gets_the_backbone_and_loads_from_its_run(imagenet_state, tmp_path):
    classifier = build_efficientnet_lite0_classifier()
    assign_imagenet_weights(classifier, imagenet_state)
    np.testing.assert_array_equal(
        classifier.get_layer("stem_conv").get_weights()[0], imagenet_state["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    slices = np.random.default_rng(5).random((2, 256, 256, 3)).astype("float32")
    probabilities = np.asarray(classifier(slices))
    assert probabilities.shape == (2, 1) and np.all((probabilities >= 0) & (probabilities <= 1))

    # A training run saves the architecture beside its checkpoints, so the tools load this model, not the plain CNN.
    (tmp_path / ARCHITECTURE_NAME).write_text(classifier.to_json())
    classifier.save_weights(tmp_path / "best.weights.h5")
    loaded = load_classifier(tmp_path / "best.weights.h5")
    np.testing.assert_allclose(np.asarray(loaded(slices)), probabilities, atol=1e-6)


def test_a_state_dict_of_another_network_is_refused(imagenet_state):
    classifier = build_efficientnet_lite0_classifier()
    truncated = {name: array for name, array in imagenet_state.items() if not name.startswith("_blocks.7.")}

    with pytest.raises(StateDictError, match="EfficientNet-Lite0"):
        assign_imagenet_weights(classifier, truncated)


class RunsACommand:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_the_reader_runs_no_code_from_the_file(tmp_path, capsys):
    hostile = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, hostile)
    pickle.dump({"weight": RunsACommand()}, hostile)
    path = tmp_path / "hostile.pth"
    path.write_bytes(hostile.getvalue())

    with pytest.raises(StateDictError, match="builtins.print"):
        read_legacy_state_dict(path)
    assert "this must never run" not in capsys.readouterr().out
