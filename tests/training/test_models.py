import keras
import numpy as np
import pytest

from app.core.preprocessing import flair_only
from training.checkpoint_comparison import average_and_save
from training.classifier_variants import (
    build_encoder_classifier,
    build_mirror_classifier,
    build_standardized_classifier,
    fine_stem_classifier_from,
    flair_classifier_from,
    mirror_classifier_from,
    served_from_tumor_map,
    tumor_map_classifier_from,
)
from training.data import DatasetError
from training.losses import focal_tversky_loss
from training.models import (
    ARCHITECTURE_NAME,
    architecture_json,
    build_classifier,
    build_resunet,
    load_classifier,
    load_segmenter,
    transfer_weights,
)
from training.train import fine_stem_start, flair_start, mirror_start


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
    model.compile(optimizer="adam", loss=focal_tversky_loss, run_eagerly=True)  # tracing took most of its 12 s
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
    rng = np.random.default_rng(2)
    random_weights = [rng.normal(0, 0.3, w.shape) for w in segmenter.weights]
    # Batch norm's variances stay positive, or every output is NaN (and NaN equals NaN in assert_allclose).
    segmenter.set_weights(
        [np.abs(v) if "variance" in w.path else v for w, v in zip(segmenter.weights, random_weights, strict=True)]
    )
    classifier = build_encoder_classifier(filters=(4, 8, 16))

    untouched = transfer_weights(classifier, segmenter)

    assert untouched == ["tumor_probability"], "only the head is new"
    encoder_layers = [layer for layer in classifier.layers if layer.weights and layer.name != "tumor_probability"]
    assert any(layer.name.startswith("bridge") for layer in encoder_layers)
    for layer in encoder_layers:
        for mine, theirs in zip(layer.get_weights(), segmenter.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(mine, theirs)
    image = np.random.default_rng(3).random((2, 256, 256, 3)).astype("float32")
    outputs = np.asarray(classifier(image))
    assert outputs.shape == (2, 1) and np.isfinite(outputs).all()

    # Its run keeps the architecture beside the weights: load_classifier gives this model, not the plain CNN.
    (tmp_path / ARCHITECTURE_NAME).write_text(classifier.to_json())
    classifier.save_weights(tmp_path / "best.weights.h5")
    loaded = load_classifier(tmp_path / "best.weights.h5")
    np.testing.assert_allclose(np.asarray(loaded(image)), np.asarray(classifier(image)), atol=1e-6)


def test_mirror_classifier_sees_its_features_mirrored_and_starts_as_the_plain_classifier(tmp_path):
    plain = build_classifier()  # random initial weights; batch norm's statistics at their start
    image = np.random.default_rng(5).random((2, 256, 256, 3)).astype("float32")

    mirror = mirror_classifier_from(plain)

    assert np.isfinite(np.asarray(plain(image))).all()
    np.testing.assert_allclose(np.asarray(mirror(image)), np.asarray(plain(image)), atol=1e-6)
    features = np.asarray(keras.Model(mirror.input, mirror.get_layer("stem_and_mirror").output)(image))
    np.testing.assert_allclose(features[..., 16:], features[:, :, ::-1, :16], atol=1e-6)
    # Learning reaches the mirrored channels (zero at the start) but never the fixed flip.
    trainable = {weight.path for weight in mirror.trainable_weights}
    assert "stage1_a_conv/kernel" in trainable
    assert not any(path.startswith("stem_mirror_flip") for path in trainable)

    # A changed mirror weight changes the answer; its run keeps the architecture, and the file loads safely.
    kernel = mirror.get_layer("stage1_a_conv").get_weights()[0]
    kernel[:, :, 16:, :] = np.random.default_rng(6).normal(0, 0.1, kernel[:, :, 16:, :].shape)
    mirror.get_layer("stage1_a_conv").set_weights([kernel])
    assert np.abs(np.asarray(mirror(image)) - np.asarray(plain(image))).max() > 1e-4
    (tmp_path / ARCHITECTURE_NAME).write_text(mirror.to_json())
    mirror.save_weights(tmp_path / "best.weights.h5")
    loaded = load_classifier(tmp_path / "best.weights.h5")
    np.testing.assert_allclose(np.asarray(loaded(image)), np.asarray(mirror(image)), atol=1e-6)


def test_mirror_classifier_refuses_a_start_that_is_not_a_plain_classifier():
    with pytest.raises(ValueError, match="not a plain classifier"):
        mirror_classifier_from(build_mirror_classifier())


def test_a_mirror_run_starts_from_a_plain_classifier_or_a_mirror_checkpoint(tmp_path):
    image = np.random.default_rng(7).random((2, 256, 256, 3)).astype("float32")
    plain = build_classifier()
    plain.save_weights(tmp_path / "plain.weights.h5")

    from_plain = mirror_start(str(tmp_path / "plain.weights.h5"))

    np.testing.assert_allclose(np.asarray(from_plain(image)), np.asarray(plain(image)), atol=1e-6)
    kernel = from_plain.get_layer("stage1_a_conv").get_weights()[0]
    kernel[:, :, 16:, :] = 0.05
    from_plain.get_layer("stage1_a_conv").set_weights([kernel])
    from_plain.save_weights(tmp_path / "mirror.weights.h5")
    from_mirror = mirror_start(str(tmp_path / "mirror.weights.h5"))
    assert np.isfinite(np.asarray(from_mirror(image))).all()
    np.testing.assert_allclose(np.asarray(from_mirror(image)), np.asarray(from_plain(image)), atol=1e-6)


def assert_a_checkpoint_restarts_and_loads(model, start, run_dir, image):
    """`model`, changed and saved as a run's checkpoint, starts a run (`start`) as it is, and `load_classifier`
    loads it with the architecture its run keeps."""
    kernel = model.get_layer("stage1_a_conv").get_weights()[0]
    model.get_layer("stage1_a_conv").set_weights([kernel + 0.01])
    run_dir.mkdir()
    model.save_weights(run_dir / "best.weights.h5")
    again = start(str(run_dir / "best.weights.h5"))
    np.testing.assert_allclose(np.asarray(again(image)), np.asarray(model(image)), atol=1e-6)
    (run_dir / ARCHITECTURE_NAME).write_text(model.to_json())
    loaded = load_classifier(run_dir / "best.weights.h5")
    np.testing.assert_allclose(np.asarray(loaded(image)), np.asarray(model(image)), atol=1e-6)


def test_fine_stem_classifier_keeps_twice_the_resolution_and_starts_from_a_plain_classifier(tmp_path):
    image = np.random.default_rng(8).random((2, 256, 256, 3)).astype("float32")
    plain = build_classifier()
    plain.save_weights(tmp_path / "plain.weights.h5")

    fine = fine_stem_start(str(tmp_path / "plain.weights.h5"))

    # Its stages see 128 x 128 where the plain classifier's see 64 x 64, with the plain classifier's weights.
    assert fine.get_layer("stage1_a_conv").input.shape[1:3] == (128, 128)
    assert plain.get_layer("stage1_a_conv").input.shape[1:3] == (64, 64)
    for layer in fine.layers:
        for mine, theirs in zip(layer.get_weights(), plain.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(mine, theirs)
    assert np.abs(np.asarray(fine(image)) - np.asarray(plain(image))).max() > 1e-6  # a different model, same weights
    # A fine-stem checkpoint starts a run as it is, and its run's architecture loads it.
    assert_a_checkpoint_restarts_and_loads(fine, fine_stem_start, tmp_path / "run", image)


def test_fine_stem_classifier_refuses_a_start_that_is_not_a_plain_classifier():
    with pytest.raises(ValueError, match="not a plain or fine-stem classifier"):
        fine_stem_classifier_from(build_mirror_classifier())


def test_flair_classifier_reads_flair_alone_and_starts_from_a_plain_classifier(tmp_path):
    rng = np.random.default_rng(9)
    image = rng.random((2, 256, 256, 3)).astype("float32")
    other_sequences = image.copy()
    other_sequences[..., [0, 2]] = rng.random((2, 256, 256, 2)).astype("float32")
    plain = build_classifier()
    plain.save_weights(tmp_path / "plain.weights.h5")

    flair = flair_start(str(tmp_path / "plain.weights.h5"))

    # It answers on FLAIR alone, exactly as the plain classifier does on a slice whose channels are all FLAIR ...
    np.testing.assert_allclose(np.asarray(flair(image)), np.asarray(plain(flair_only(image))), atol=1e-6)
    assert np.abs(np.asarray(plain(image)) - np.asarray(plain(flair_only(image)))).max() > 1e-6
    # ... so the pre- and post-contrast channels change nothing, and training never moves the selector.
    np.testing.assert_allclose(np.asarray(flair(other_sequences)), np.asarray(flair(image)), atol=1e-6)
    assert not any(weight.path.startswith("flair_selector") for weight in flair.trainable_weights)
    # A FLAIR checkpoint starts a run as it is, and its run's architecture loads it.
    assert_a_checkpoint_restarts_and_loads(flair, flair_start, tmp_path / "run", other_sequences)


def test_flair_classifier_refuses_a_start_that_is_not_a_plain_classifier():
    with pytest.raises(ValueError, match="not a plain classifier"):
        flair_classifier_from(build_mirror_classifier())


def test_standardized_classifier_sees_each_slice_standardized_whatever_its_brightness_and_contrast():
    rng = np.random.default_rng(11)
    image = rng.random((2, 256, 256, 3)).astype("float32")
    model = build_standardized_classifier()
    stem_input = keras.Model(model.inputs, model.get_layer("slice_standardization").output)

    # Each channel of each slice reaches the stem at mean 0 and variance 1 (the learned scale and offset start at
    # 1 and 0), so a slice at another brightness and contrast reaches it unchanged, up to the epsilon.
    standardized = np.asarray(stem_input(image))
    np.testing.assert_allclose(standardized.mean(axis=(1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(standardized.std(axis=(1, 2)), 1.0, atol=1e-2)
    np.testing.assert_allclose(np.asarray(stem_input(image * 3.0 + 0.2)), standardized, atol=2e-2)
    # Built-in layers only: its architecture file loads without custom code.
    assert keras.models.model_from_json(architecture_json(model)).get_layer("slice_standardization")


def test_a_compiled_and_an_uncompiled_model_of_one_architecture_average_together(tmp_path):
    compiled, loaded = build_classifier(), build_classifier()
    compiled.compile(optimizer="adam", loss="binary_crossentropy")

    assert "compile_config" not in architecture_json(compiled)
    assert architecture_json(compiled) == architecture_json(loaded)
    averaged = average_and_save([compiled, loaded], str(tmp_path / "average.weights.h5"), "classifiers")
    assert averaged is not None and (tmp_path / "average.weights.h5").is_file()
    with pytest.raises(DatasetError, match="one architecture"):
        average_and_save([compiled, build_mirror_classifier()], str(tmp_path / "no.weights.h5"), "classifiers")


def test_tumor_map_classifier_serves_its_largest_region_and_starts_from_a_plain_classifier(tmp_path):
    plain = build_classifier()
    image = np.random.default_rng(8).random((2, 256, 256, 3)).astype("float32")

    tumor_map = tumor_map_classifier_from(plain)
    served = served_from_tumor_map(tumor_map)

    regions = np.asarray(tumor_map(image))
    assert regions.shape == (2, 4, 4, 1)  # one probability per 64 x 64 region
    np.testing.assert_allclose(np.asarray(served(image))[:, 0], regions.reshape(2, -1).max(axis=1), atol=1e-6)
    # Every stage is the plain classifier's; the region head is its head's two halves added.
    for name in ("stem_conv", "stage2_b_conv", "stage4_b_bn"):
        for got, start in zip(
            tumor_map.get_layer(name).get_weights(), plain.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(got, start)
    kernel, bias = plain.get_layer("tumor_probability").get_weights()
    region_kernel, region_bias = tumor_map.get_layer("tumor_map").get_weights()
    np.testing.assert_allclose(region_kernel.reshape(-1), kernel[:256, 0] + kernel[256:, 0], atol=1e-7)
    np.testing.assert_array_equal(region_bias, bias)

    # Its run keeps the served architecture beside the map's weights: load_classifier gives one probability.
    (tmp_path / ARCHITECTURE_NAME).write_text(architecture_json(served))
    tumor_map.save_weights(tmp_path / "best.weights.h5")
    loaded = load_classifier(tmp_path / "best.weights.h5")
    assert loaded.output.shape[1:] == (1,)
    np.testing.assert_allclose(np.asarray(loaded(image)), np.asarray(served(image)), atol=1e-6)


def test_tumor_map_classifier_refuses_a_start_that_is_not_a_plain_classifier():
    with pytest.raises(ValueError, match="not a plain classifier"):
        tumor_map_classifier_from(build_mirror_classifier())


def test_weights_of_another_architecture_are_refused_not_half_loaded(tmp_path):
    """Keras skips what does not match: a standardized classifier's weights went into the plain CNN silently."""
    standardized = build_standardized_classifier()
    standardized.save_weights(tmp_path / "best.weights.h5")

    with pytest.raises(ValueError, match="does not fit the tumor_classifier architecture"):
        load_classifier(tmp_path / "best.weights.h5")  # no architecture.json beside it: the plain CNN
    (tmp_path / ARCHITECTURE_NAME).write_text(architecture_json(standardized))
    loaded = load_classifier(tmp_path / "best.weights.h5")
    assert loaded.get_layer("slice_standardization")
