import numpy as np

from training.losses import focal_tversky_loss
from training.models import (
    ARCHITECTURE_NAME,
    build_classifier,
    build_encoder_classifier,
    build_resunet,
    load_classifier,
    load_segmenter,
    transfer_weights,
)


def test_classifier_outputs_one_probability_per_slice():
    model = build_classifier()
    outputs = np.asarray(model(np.random.rand(2, 256, 256, 3).astype("float32"), training=False))
    assert outputs.shape == (2, 1)
    assert ((outputs >= 0) & (outputs <= 1)).all()
    # Sized for CPU serving (see README): about 1.2 M parameters.
    assert 1_000_000 < model.count_params() < 1_500_000


def test_resunet_outputs_a_full_resolution_probability_map():
    model = build_resunet()
    outputs = np.asarray(model(np.random.rand(1, 256, 256, 3).astype("float32"), training=False))
    assert outputs.shape == (1, 256, 256, 1)
    assert ((outputs >= 0) & (outputs <= 1)).all()
    assert 1_500_000 < model.count_params() < 2_500_000
    assert any("add" in layer.name for layer in model.layers), "residual blocks join by addition"


def test_one_training_step_reduces_the_loss_on_a_tiny_resunet():
    model = build_resunet(input_shape=(64, 64, 3), filters=(4, 8, 16))
    model.compile(optimizer="adam", loss=focal_tversky_loss)
    images = np.random.default_rng(0).random((4, 64, 64, 3)).astype("float32")
    masks = np.zeros((4, 64, 64, 1), "float32")
    masks[:, 20:40, 20:40] = 1.0
    images[..., 1] += masks[..., 0]
    first = model.train_on_batch(images, masks)
    for _ in range(15):
        last = model.train_on_batch(images, masks)
    assert last < first


def test_full_resolution_variant_starts_from_a_plain_segmenter_and_loads_from_its_run(tmp_path):
    plain = build_resunet(input_shape=(64, 64, 3), filters=(4, 8, 16))
    variant = build_resunet(input_shape=(None, None, 3), filters=(4, 8, 16), full_resolution_output=True)
    # Serves any size, crops as well as whole slices, and draws at the input's resolution.
    for side in (32, 64):
        assert variant(np.zeros((1, side, side, 3), "float32")).shape == (1, side, side, 1)

    untouched = transfer_weights(variant, plain)

    assert untouched and all(name.startswith("full_") for name in untouched)
    shared = [layer for layer in plain.layers if layer.weights and layer.name not in ("mask_logits",)]
    for layer in shared:
        for mine, theirs in zip(variant.get_layer(layer.name).get_weights(), layer.get_weights(), strict=True):
            np.testing.assert_array_equal(mine, theirs)

    # A run folder keeps the architecture beside the weights, so its checkpoint loads as the variant.
    served = build_resunet(filters=(4, 8, 16), full_resolution_output=True)
    served.set_weights(variant.get_weights())
    (tmp_path / ARCHITECTURE_NAME).write_text(served.to_json())
    served.save_weights(tmp_path / "best.weights.h5")
    loaded = load_segmenter(tmp_path / "best.weights.h5")
    image = np.random.default_rng(1).random((1, 256, 256, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(image)), np.asarray(served(image)), atol=1e-6)
    assert any(layer.name == "full_mask_logits" for layer in loaded.layers)


def test_classifier_on_the_segmenter_encoder_starts_from_a_segmenter_and_loads_from_its_run(tmp_path):
    segmenter = build_resunet(filters=(4, 8, 16))
    segmenter.set_weights([np.random.default_rng(2).normal(size=w.shape) for w in segmenter.get_weights()])
    classifier = build_encoder_classifier(filters=(4, 8, 16))

    untouched = transfer_weights(classifier, segmenter)

    assert untouched == ["tumor_probability"], "only the head is new"
    encoder_layers = [layer for layer in classifier.layers if layer.weights and layer.name != "tumor_probability"]
    assert any(layer.name.startswith("bridge") for layer in encoder_layers)
    for layer in encoder_layers:
        for mine, theirs in zip(layer.get_weights(), segmenter.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(mine, theirs)
    image = np.random.default_rng(3).random((2, 256, 256, 3)).astype("float32")
    assert np.asarray(classifier(image)).shape == (2, 1)

    # Its run keeps the architecture beside the weights: load_classifier gives this model, not the plain CNN.
    (tmp_path / ARCHITECTURE_NAME).write_text(classifier.to_json())
    classifier.save_weights(tmp_path / "best.weights.h5")
    loaded = load_classifier(tmp_path / "best.weights.h5")
    np.testing.assert_allclose(np.asarray(loaded(image)), np.asarray(classifier(image)), atol=1e-6)
