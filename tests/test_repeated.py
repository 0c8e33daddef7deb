"""Stacked units (`scan_units=True`): the written-out network's outputs, training step, weights and files."""

import keras
import numpy as np
import pytest
from helpers import numpy, randomize_batch_norms

import keras_preact
from keras_preact.model.repeated import RepeatedUnits, copy_weights

IMAGES = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")


def twins(depth, block, **kwargs):
    """The written-out network (random BatchNorm statistics) and its scanned twin with its weights."""
    plain = keras_preact.PreActResNet(depth, block=block, classes=3, **kwargs)
    randomize_batch_norms(plain)
    scanned = keras_preact.PreActResNet(depth, block=block, classes=3, scan_units=True, **kwargs)
    copy_weights(plain, scanned)
    return plain, scanned


@pytest.mark.parametrize("depth, block", [(20, "basic"), (29, "bottleneck")])
def test_the_scanned_network_computes_what_the_written_out_one_does(depth, block):
    plain, scanned = twins(depth, block)
    assert [layer.name for layer in scanned.layers if "unit" in layer.name] == [
        f"stage{s}_unit{u}" for s in (1, 2, 3) for u in ("1", "s2to3")
    ]
    assert scanned.count_params() == plain.count_params()
    np.testing.assert_allclose(numpy(scanned(IMAGES)), numpy(plain(IMAGES)), atol=1e-5)
    np.testing.assert_allclose(numpy(scanned(IMAGES, training=True)), numpy(plain(IMAGES, training=True)), atol=1e-5)


def test_resnet164_has_the_papers_parameter_count():
    model = keras_preact.ResNet164(scan_units=True)
    assert model.count_params() == 1727482  # as written out (test_models.py)
    assert [layer.count for layer in model.layers if isinstance(layer, RepeatedUnits)] == [17, 17, 17]


@pytest.mark.parametrize("remat", [False, True], ids=["plain", "remat"])
def test_a_training_step_gives_the_written_out_networks_weights_and_statistics(remat):
    plain, scanned = twins(20, "basic", remat=remat)
    labels = np.arange(4) % 3
    for model in (plain, scanned):
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
        model.train_on_batch(IMAGES, labels)
        model.train_on_batch(IMAGES, labels)
    unstacked = keras_preact.PreActResNet(20, block="basic", classes=3)
    copy_weights(scanned, unstacked)
    for expected, actual in zip(plain.weights, unstacked.weights):  # moving statistics included
        np.testing.assert_allclose(numpy(actual), numpy(expected), rtol=1e-4, atol=1e-5, err_msg=expected.path)


def test_a_frozen_stage_keeps_its_statistics_as_written_out_units_do():
    plain, scanned = twins(20, "basic")
    stacked = scanned.get_layer("stage2_units2to3")
    stacked.trainable = False
    assert stacked.trainable_weights == [] and len(stacked.non_trainable_weights) == len(stacked.weights)
    before = numpy(stacked.get_weight("preact_bn_moving_mean"))
    scanned(IMAGES, training=True)
    np.testing.assert_array_equal(numpy(stacked.get_weight("preact_bn_moving_mean")), before)


def test_mixed_bfloat16_trains():
    plain, scanned = twins(20, "basic", dtype="mixed_bfloat16")
    assert scanned.get_layer("stage1_units2to3").get_weight("conv1_kernel").dtype == "float32"
    np.testing.assert_allclose(numpy(scanned(IMAGES)), numpy(plain(IMAGES)), atol=2e-2)
    scanned.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    assert np.isfinite(scanned.train_on_batch(IMAGES, np.arange(4) % 3))


def test_weights_files_load_into_either_layout(tmp_path):
    plain, scanned = twins(29, "bottleneck")
    plain.save_weights(tmp_path / "plain.weights.h5")
    scanned.save_weights(tmp_path / "scanned.weights.h5")
    expected = numpy(plain(IMAGES))
    for path in ("plain", "scanned"):
        for scan_units in (False, True):
            model = keras_preact.PreActResNet(29, classes=3, scan_units=scan_units, weights=str(tmp_path / f"{path}.weights.h5"))
            np.testing.assert_allclose(numpy(model(IMAGES)), expected, atol=1e-5, err_msg=f"{path} -> {scan_units}")
    with pytest.raises(ValueError, match="does not fit preact_resnet20"):
        keras_preact.PreActResNet(20, block="basic", classes=3, scan_units=True, weights=str(tmp_path / "plain.weights.h5"))


def test_keras_file_round_trip_and_config(tmp_path):
    _, scanned = twins(20, "basic", remat=True)
    layer = scanned.get_layer("stage3_units2to3")
    config = layer.get_config()
    assert config["count"] == 2 and config["unit"]["filters"] == 64 and config["unit"]["remat"] is True
    assert RepeatedUnits.from_config(config).get_config() == config
    scanned.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(restored.get_layer("stage3_units2to3"), RepeatedUnits)
    np.testing.assert_allclose(numpy(restored(IMAGES)), numpy(scanned(IMAGES)), atol=1e-6)


def test_the_run_configuration_takes_scan_units():
    from keras_preact.training.config import RunConfig, build_model

    model = build_model(RunConfig(depth=20, model_options={"scan_units": True}))
    assert isinstance(model.get_layer("stage1_units2to3"), RepeatedUnits)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: keras_preact.PreActResNet(20, block="basic", scan_units=1), "scan_units must be True or False"),
        (lambda: keras_preact.PreActResNet(20, block="basic", shortcut="dropout", scan_units=True), "needs scan_units=False"),
        (lambda: RepeatedUnits(2, {"filters": 4, "strides": 2}), "keep their shape"),
        (lambda: RepeatedUnits(2, {"filters": 4, "name": "x"}), "other than name and dtype"),
        (lambda: RepeatedUnits(0, {"filters": 4}), "count must be a positive integer"),
        (lambda: RepeatedUnits(2, {"filters": 4})(np.zeros((1, 8, 8, 4), "float32")), "must keep their input's shape"),
    ],
)
def test_bad_arguments_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="SavedModel export from torch needs torch-xla")
def test_the_scanned_network_exports_to_a_saved_model(tmp_path):
    from test_export import load_without_keras

    _, scanned = twins(20, "basic")
    path = keras_preact.export_saved_model(scanned, str(tmp_path / "export"), dataset=((0, 0, 0), (1, 1, 1)))
    images = np.random.default_rng(1).integers(0, 256, size=(3, 32, 32, 3)).astype(np.uint8)
    _, probabilities = load_without_keras(path, images, tmp_path)
    np.testing.assert_allclose(probabilities, numpy(scanned(images.astype("float32"))), atol=1e-4)
