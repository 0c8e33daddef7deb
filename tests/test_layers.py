"""The fast layers compute what Keras' layers compute: outputs, gradients and moving statistics."""

import keras
import numpy as np
import pytest
from helpers import numpy

import keras_preact
from keras_preact.model import layers

FUSED_BACKENDS = ("tensorflow", "torch")


def _copy_weights(source, target):
    for a, b in zip(source.weights, target.weights, strict=True):
        b.assign(numpy(a))


def _train_side_by_side(make_keras_layer, make_our_layer, x, data_format, steps=3, keras_format=None):
    """Two one-layer models with equal weights, trained with SGD on the same data; returns per
    model its losses, weights and inference output. `keras_format`: the data format of Keras'
    model, which then sees `x` transposed to it (default: `data_format`)."""
    rng = np.random.default_rng(1)
    runs = []
    models = []
    keras_format = keras_format or data_format
    inputs_of = {data_format: x, keras_format: _to_format(x, data_format, keras_format)}
    for make, fmt in ((make_keras_layer, keras_format), (make_our_layer, data_format)):
        inputs = keras.Input(inputs_of[fmt].shape[1:])
        outputs = keras.layers.GlobalAveragePooling2D(data_format=fmt)(
            keras.layers.Activation("relu")(make()(inputs))
        )
        models.append(keras.Model(inputs, keras.layers.Dense(3, kernel_initializer="ones")(outputs)))
    models[0].layers[1].set_weights(
        [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in models[0].layers[1].get_weights()]
    )
    _copy_weights(models[0], models[1])
    y = np.arange(len(x)) % 3
    for model, fmt in zip(models, (keras_format, data_format)):
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
        losses = [float(model.train_on_batch(inputs_of[fmt], y)) for _ in range(steps)]
        runs.append((losses, [numpy(w) for w in model.weights], numpy(model(inputs_of[fmt], training=False))))
    return runs


def _to_format(x, source, target):
    if source == target:
        return x
    return x.transpose(0, 2, 3, 1) if target == "channels_last" else x.transpose(0, 3, 1, 2)



def _assert_same_training(runs):
    (keras_losses, keras_weights, keras_out), (our_losses, our_weights, our_out) = runs
    np.testing.assert_allclose(our_losses, keras_losses, rtol=1e-5)
    for ours, theirs in zip(our_weights, keras_weights, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(our_out, keras_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_batch_norm_trains_like_keras(data_format):
    axis = -1 if data_format == "channels_last" else 1
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(8, 5, 6, 4)).astype("float32")
    runs = _train_side_by_side(
        lambda: keras.layers.BatchNormalization(axis=axis, momentum=0.9, epsilon=1e-5),
        lambda: layers.BatchNorm(axis=axis, momentum=0.9, epsilon=1e-5),
        x,
        data_format,
    )
    _assert_same_training(runs)
    # The moving variance is Keras' biased one (PyTorch's kernel and TensorFlow's return other).
    moving_variance = runs[1][1][3]
    assert not np.allclose(moving_variance, 1.0)


@pytest.mark.parametrize("axis", [-1, 1])
def test_moving_statistics_are_the_biased_batch_statistics(axis):
    # momentum 0: the moving statistics become the batch's. Small-variance channels make an
    # epsilon or a Bessel correction (n / (n - 1) = 1.6% here) show.
    scales = np.array([3.0, 1.0, 0.01, 0.003], "float32")
    x = np.random.default_rng(5).normal(size=(4, 2, 4, 4)).astype("float32") * scales + 1.0
    if axis == 1:
        x = x.transpose(0, 3, 1, 2)
    layer = layers.BatchNorm(axis=axis, momentum=0.0, epsilon=1e-5)
    layer(x, training=True)
    reduce = (0, 1, 2) if axis == -1 else (0, 2, 3)
    np.testing.assert_allclose(numpy(layer.moving_mean), x.mean(axis=reduce), rtol=1e-5)
    np.testing.assert_allclose(numpy(layer.moving_variance), x.var(axis=reduce), rtol=2e-3)


def test_fused_kernel_runs_where_the_backend_has_one(monkeypatch):
    calls = []
    backend = keras.backend.backend()
    if backend in layers.FUSED_KERNELS:
        kernel = layers.FUSED_KERNELS[backend]
        monkeypatch.setitem(
            layers.FUSED_KERNELS, backend, lambda *args: calls.append(args[-1]) or kernel(*args)
        )
    layer = layers.BatchNorm()
    x = np.ones((2, 4, 4, 3), "float32")
    layer(x, training=True)
    layer(x, training=False)
    assert calls == ([True, False] if backend in FUSED_BACKENDS else [])
    calls.clear()
    unfused = layers.BatchNorm(fused=False)
    unfused(x, training=True)
    layers.BatchNorm()(np.ones((2, 3), "float32"), training=True)  # 2-D: Keras' ops
    assert calls == []


def test_batch_norm_falls_back_to_keras_for_what_the_kernels_lack():
    rng = np.random.default_rng(2)
    for shape, kwargs in [((6, 5), {}), ((4, 3, 5, 2), {"axis": 2}), ((4, 3, 3, 2), {"center": False})]:
        x = rng.normal(size=shape).astype("float32")
        ours = layers.BatchNorm(**kwargs)
        theirs = keras.layers.BatchNormalization(**kwargs)
        np.testing.assert_allclose(numpy(ours(x, training=True)), numpy(theirs(x, training=True)), atol=1e-5)
        np.testing.assert_allclose(numpy(ours.moving_variance), numpy(theirs.moving_variance), atol=1e-6)


def test_batch_norm_mixed_precision_keeps_float32_statistics():
    x = np.random.default_rng(3).normal(1.0, 2.0, size=(8, 4, 4, 6)).astype("float32")
    ours = layers.BatchNorm(dtype="mixed_bfloat16")
    theirs = keras.layers.BatchNormalization(dtype="mixed_bfloat16")
    out, ref = ours(x, training=True), theirs(x, training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_allclose(numpy(ops_float(out)), numpy(ops_float(ref)), atol=0.05)
    assert keras.backend.standardize_dtype(ours.moving_mean.dtype) == "float32"
    np.testing.assert_allclose(numpy(ours.moving_mean), numpy(theirs.moving_mean), atol=1e-2)


def ops_float(x):
    return keras.ops.cast(x, "float32")


def test_batch_norm_config_round_trip_and_bad_argument():
    layer = layers.BatchNorm(fused=False, momentum=0.9, epsilon=1e-5, name="bn")
    config = layer.get_config()
    assert config["fused"] is False and config["momentum"] == 0.9
    restored = layers.BatchNorm.from_config(config)
    assert restored.fused is False and restored.epsilon == 1e-5
    assert keras.saving.get_registered_object("keras_preact>BatchNorm") is layers.BatchNorm
    with pytest.raises(TypeError, match="fused must be True or False"):
        layers.BatchNorm(fused="yes")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=4, kernel_size=3, padding="same"),
        dict(filters=4, kernel_size=3, padding="valid", strides=2),
        dict(filters=6, kernel_size=1, padding="same", strides=2),
        dict(filters=6, kernel_size=1, padding="same", use_bias=True),
        dict(filters=4, kernel_size=3, padding="same", strides=2),  # asymmetric "same": Keras' path
        dict(filters=6, kernel_size=1, groups=3),  # grouped: Keras' path
    ],
    ids=["3x3_same", "3x3_valid_s2", "1x1_s2", "1x1_bias", "3x3_same_s2", "1x1_grouped"],
)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_conv_trains_like_keras(kwargs, data_format):
    x = np.random.default_rng(4).normal(size=(4, 3, 9, 9)).astype("float32")
    if data_format == "channels_last":
        x = x.transpose(0, 2, 3, 1)
    # The reference is Keras' channels-last layer on the same numbers: Keras' channels-first one
    # cannot train on TensorFlow's CPU kernels (oneDNN off), and on TensorFlow it adds the bias
    # over the wrong axis when width == channels (Keras 3.15.1), as in "3x3_valid_s2" here.
    runs = _train_side_by_side(
        lambda: keras.layers.Conv2D(data_format="channels_last", **kwargs),
        lambda: layers.Conv2D(data_format=data_format, **kwargs),
        x,
        data_format,
        keras_format="channels_last",
    )
    _assert_same_training(runs)


def test_networks_are_built_from_the_fast_layers():
    model = keras_preact.PreActResNet(11, block="bottleneck")
    sublayers = [sub for layer in model.layers for sub in layer._flatten_layers()]
    norms = [layer for layer in sublayers if isinstance(layer, keras.layers.BatchNormalization)]
    convs = [layer for layer in sublayers if isinstance(layer, keras.layers.Conv2D)]
    assert norms and all(isinstance(layer, layers.BatchNorm) for layer in norms)
    assert convs and all(isinstance(layer, layers.Conv2D) for layer in convs)


@pytest.mark.parametrize("axis", [-1, 1])
def test_virtual_groups_normalise_each_group_alone(axis):
    """Per-replica statistics on one array: each half of the batch as if it were alone, and the
    moving statistics the mean of the halves' updates (what a MirroredStrategy keeps)."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(8, 3, 5, 4)).astype("float32") * np.array([1.0, 2.0, 3.0, 0.5], "float32")
    halves = x[:4] + 1.0, x[4:] - 2.0
    x = np.concatenate(halves)
    if axis == 1:
        x, halves = x.transpose(0, 3, 1, 2), tuple(h.transpose(0, 3, 1, 2) for h in halves)
    grouped = layers.BatchNorm(axis=axis, virtual_groups=2, momentum=0.9, epsilon=1e-5)
    out = numpy(grouped(x, training=True))
    alone = [layers.BatchNorm(axis=axis, momentum=0.9, epsilon=1e-5) for _ in halves]
    expected = np.concatenate([numpy(layer(half, training=True)) for layer, half in zip(alone, halves)])
    np.testing.assert_allclose(out, expected, atol=1e-5)
    for name in ("moving_mean", "moving_variance"):
        mean_of_halves = np.mean([numpy(getattr(layer, name)) for layer in alone], axis=0)
        np.testing.assert_allclose(numpy(getattr(grouped, name)), mean_of_halves, rtol=1e-5, atol=1e-6)


def test_replica_options_round_trip_and_bad_values():
    layer = layers.BatchNorm(virtual_groups=4, synchronized=True)
    config = layer.get_config()
    assert config["virtual_groups"] == 4 and config["synchronized"] is True
    restored = layers.BatchNorm.from_config(config)
    assert restored.virtual_groups == 4 and restored.synchronized_statistics is True
    with pytest.raises(ValueError, match="virtual_groups must be a positive integer, got 0"):
        layers.BatchNorm(virtual_groups=0)
    with pytest.raises(TypeError, match="synchronized must be True or False"):
        layers.BatchNorm(synchronized="yes")
    with pytest.raises(ValueError, match="a batch of 6 does not split into virtual_groups=4"):
        layers.BatchNorm(virtual_groups=4)(np.ones((6, 2, 2, 3), "float32"), training=True)
