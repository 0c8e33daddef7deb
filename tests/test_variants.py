"""The paper's ablations as options: unit orderings (Fig. 4) and shortcut variants (Fig. 2)."""

import keras
import numpy as np
import pytest
from helpers import np_bn_relu, np_conv, numpy, randomize_batch_norms

import keras_preact
from keras_preact import ResidualUnit

ORDERINGS = ["full_preact", "original", "bn_after_addition", "relu_before_addition", "relu_only_preact"]
SHORTCUTS = ["identity", "constant_scaling", "exclusive_gating", "shortcut_only_gating", "conv1x1", "dropout"]


def relu(x):
    return np.maximum(x, 0.0)


def np_bn(x, w, prefix):
    gamma, beta, mean, var = (w[f"{prefix}/{n}"] for n in ("gamma", "beta", "moving_mean", "moving_variance"))
    return gamma * (x - mean) / np.sqrt(var + 1e-5) + beta


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# Each ordering written out from the paper's Fig. 4 for a basic unit on an identity shortcut.
def reference(ordering, x, w):
    conv1 = lambda h: np_conv(h, w["conv1/kernel"], 1)  # noqa: E731
    conv2 = lambda h: np_conv(h, w["conv2/kernel"], 1)  # noqa: E731
    if ordering == "full_preact":
        return x + conv2(np_bn_relu(conv1(np_bn_relu(x, w, "preact_bn")), w, "conv1_bn"))
    if ordering == "original":
        return relu(x + np_bn(conv2(np_bn_relu(conv1(x), w, "conv1_bn")), w, "tail_bn"))
    if ordering == "bn_after_addition":
        return np_bn_relu(x + conv2(np_bn_relu(conv1(x), w, "conv1_bn")), w, "post_bn")
    if ordering == "relu_before_addition":
        return x + np_bn_relu(conv2(np_bn_relu(conv1(x), w, "conv1_bn")), w, "tail_bn")
    return x + np_bn(conv2(np_bn_relu(conv1(relu(x)), w, "conv1_bn")), w, "tail_bn")  # relu_only_preact


def built(unit, channels=8):
    x = np.random.default_rng(0).normal(size=(2, 7, 7, channels)).astype("float32")
    unit.build(x.shape)
    randomize_batch_norms(unit)
    weights = {v.path.split("/", 1)[1]: numpy(v).astype(np.float64) for v in unit.weights}
    return x, weights


@pytest.mark.parametrize("ordering", ORDERINGS)
def test_ordering_matches_the_figure(ordering):
    unit = ResidualUnit(8, block="basic", ordering=ordering)
    x, w = built(unit)
    np.testing.assert_allclose(numpy(unit(x, training=False)), reference(ordering, x, w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shortcut", SHORTCUTS)
def test_shortcut_variant_matches_the_figure(shortcut):
    options = {"gate_bias": -1.0} if shortcut.endswith("gating") else {}
    unit = ResidualUnit(8, block="basic", shortcut=shortcut, **options)
    x, w = built(unit)
    x64 = x.astype(np.float64)
    residual = reference("full_preact", x64, w) - x64
    if shortcut == "constant_scaling":
        expected = 0.5 * x64 + 1.0 * residual
    elif shortcut.endswith("gating"):
        gate = sigmoid(np_conv(x64, w["gate_conv/kernel"], 1) + w["gate_conv/bias"])
        expected = (1 - gate) * x64 + (gate * residual if shortcut == "exclusive_gating" else residual)
    elif shortcut == "conv1x1":
        expected = np_conv(x64, w["shortcut_conv/kernel"], 1) + residual
    else:  # identity, and dropout at inference
        expected = x64 + residual
    np.testing.assert_allclose(numpy(unit(x, training=False)), expected, rtol=1e-4, atol=1e-4)


def test_dropout_shortcut_is_active_in_training_only():
    unit = ResidualUnit(8, block="basic", shortcut="dropout")
    x, _ = built(unit)
    identity = ResidualUnit.from_config({**unit.get_config(), "shortcut": "identity", "dropout_rate": None})
    identity.build(x.shape)
    identity.set_weights(unit.get_weights())
    inference = numpy(unit(x, training=False))
    np.testing.assert_allclose(inference, numpy(identity(x, training=False)), atol=1e-6)
    # In training the shortcut is dropout(x): each entry dropped (0) or kept and scaled (2x), so
    # the difference to the identity unit is -x or +x.
    difference = numpy(unit(x, training=True)) - numpy(identity(x, training=True))
    dropped = np.isclose(difference, -x, atol=1e-5)
    kept = np.isclose(difference, x, atol=1e-5)
    assert (dropped | kept).all() and 0.4 < dropped.mean() < 0.6


def test_gate_bias_initialiser():
    unit = ResidualUnit(8, block="basic", shortcut="exclusive_gating", gate_bias=-7.0)
    built(unit)
    np.testing.assert_array_equal(numpy(unit.gate.bias), -7.0)
    assert ResidualUnit(8, shortcut="shortcut_only_gating").gate_bias == -6.0


def count_units(model, changes_shape):
    return sum(1 for layer in model.layers if isinstance(layer, ResidualUnit) and layer.changes_shape == changes_shape)


@pytest.mark.parametrize(
    "shortcut, delta_per_unit",
    [
        ("constant_scaling", lambda c: 0),
        ("dropout", lambda c: 0),
        ("exclusive_gating", lambda c: c * c + c),
        ("shortcut_only_gating", lambda c: c * c + c),
        ("conv1x1", lambda c: c * c),
    ],
)
def test_parameter_deltas(shortcut, delta_per_unit):
    base = keras_preact.PreActResNet(20, block="basic")
    variant = keras_preact.PreActResNet(20, block="basic", shortcut=shortcut)
    # Shape-keeping units: 3 of stage 1 (16 ch), 2 each of stages 2 (32) and 3 (64).
    expected = 3 * delta_per_unit(16) + 2 * delta_per_unit(32) + 2 * delta_per_unit(64)
    assert variant.count_params() - base.count_params() == expected


def layer_names(model):
    return [layer.name for layer in model.layers]


def test_original_network_layout():
    model = keras_preact.PreActResNet(20, block="basic", unit="original")
    names = layer_names(model)
    assert names[1:4] == ["conv1", "conv1_bn", "conv1_relu"]  # conv-BN-ReLU stem
    assert "post_bn" not in names and "post_relu" not in names  # no final activation
    unit = model.get_layer("stage2_unit2")
    assert [w.path.split("/", 1)[1] for w in unit.weights if w.path.endswith("gamma")] == ["conv1_bn/gamma", "tail_bn/gamma"]
    full = keras_preact.PreActResNet(20, block="basic")
    # Same parameters: the stem's BN(16) replaces the head's BN(64) and the units' first BNs move.
    assert model.count_params() != 0 and abs(model.count_params() - full.count_params()) < 2000


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_every_ordering_trains_a_step_and_round_trips(tmp_path, ordering, block):
    depth = 8 if block == "basic" else 11
    model = keras_preact.PreActResNet(depth, block=block, unit=ordering, classes=3)
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 3
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.get_layer("stage2_unit1").get_config()["ordering"] == ordering
    np.testing.assert_allclose(numpy(restored(x)), numpy(model(x)), atol=1e-5)


@pytest.mark.parametrize("shortcut", SHORTCUTS)
def test_every_shortcut_trains_a_step_and_round_trips(tmp_path, shortcut):
    model = keras_preact.PreActResNet(8, block="basic", unit="original", shortcut=shortcut, classes=3)
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    assert np.isfinite(model.train_on_batch(x, np.arange(8) % 3))
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.get_layer("stage1_unit1").get_config()["shortcut"] == shortcut
    np.testing.assert_allclose(numpy(restored(x)), numpy(model(x)), atol=1e-5)


def test_stride_on_option():
    fair = keras_preact.ResNet164(stride_on="3x3")
    official = keras_preact.ResNet164()
    assert fair.get_layer("stage2_unit1").convs[1].strides == (2, 2)
    assert official.get_layer("stage2_unit1").convs[0].strides == (2, 2)
    assert fair.count_params() == official.count_params()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(unit="preact"), ValueError, r"Unknown unit='preact'. Valid values: 'full_preact', 'original', 'bn_after_addition', 'relu_before_addition', 'relu_only_preact'"),
        (dict(shortcut="gated"), ValueError, r"Unknown shortcut='gated'. Valid values: 'identity', 'constant_scaling', 'exclusive_gating'"),
        (dict(gate_bias=-6), ValueError, r"gate_bias=-6 applies to shortcut='exclusive_gating' or 'shortcut_only_gating', not shortcut='identity'"),
        (dict(shortcut="dropout", shortcut_scale=0.5), ValueError, r"shortcut_scale=0.5 applies to shortcut='constant_scaling'"),
        (dict(shortcut="dropout", dropout_rate=1.5), ValueError, r"dropout_rate must be in \[0, 1\)"),
        (dict(stride_on="3x3", block="basic"), ValueError, "stride_on applies to bottleneck units"),
        (dict(stride_on="middle"), ValueError, "Unknown stride_on='middle'"),
        (dict(gating_bias=-6), TypeError, "unexpected keyword argument"),
        (dict(shortcut="constant_scaling", shortcut_scale="x"), ValueError, "shortcut_scale must be a finite number, got 'x'"),
        (dict(shortcut="constant_scaling", residual_scale=True), ValueError, "residual_scale must be a finite number, got True"),
        (dict(shortcut="exclusive_gating", gate_bias=float("nan")), ValueError, "gate_bias must be a finite number, got nan"),
        (dict(shortcut="dropout", dropout_rate="high"), ValueError, "dropout_rate must be a finite number, got 'high'"),
    ],
)
def test_bad_variant_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        keras_preact.PreActResNet(**{"depth": 20, "block": "basic", **kwargs})


def test_imagenet_variants_refused():
    with pytest.raises(ValueError, match="CIFAR ablations"):
        keras_preact.ResNet50(unit="original")
