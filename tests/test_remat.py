"""Rematerialisation: the same training step, with BatchNorm statistics updated exactly once."""

import keras
import numpy as np
import pytest
from helpers import numpy

import keras_preact


@pytest.mark.parametrize(
    "kwargs",
    [dict(depth=8, block="basic"), dict(depth=11, block="bottleneck"), dict(depth=8, block="basic", unit="original", shortcut="exclusive_gating")],
    ids=["basic", "bottleneck", "original_gated"],
)
def test_remat_trains_exactly_like_the_plain_model(kwargs):
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 3
    runs = []
    for remat in (False, True):
        keras.utils.set_random_seed(0)
        model = keras_preact.PreActResNet(classes=3, remat=remat, **kwargs)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
        losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
        runs.append((losses, {w.path: numpy(w) for w in model.weights}))
    (plain_losses, plain), (remat_losses, rematerialised) = runs
    np.testing.assert_allclose(remat_losses, plain_losses, rtol=1e-5)
    for path, value in plain.items():
        # Moving statistics equal the plain model's: one update per step, not two.
        np.testing.assert_allclose(rematerialised[path], value, rtol=1e-4, atol=1e-5, err_msg=path)


def test_remat_in_config_and_inference_unchanged(tmp_path):
    model = keras_preact.PreActResNet(8, block="basic", remat=True)
    assert all(layer.get_config()["remat"] for layer in model.layers if isinstance(layer, keras_preact.ResidualUnit))
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.get_layer("stage1_unit1").remat
    np.testing.assert_allclose(numpy(restored(x)), numpy(model(x)), atol=1e-6)
