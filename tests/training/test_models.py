import numpy as np

from training.losses import focal_tversky_loss
from training.models import build_classifier, build_resunet


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
