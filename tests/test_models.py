"""Builders: exact parameter counts, layout, keras.applications arguments, portability, errors."""

import json
import os

import keras
import numpy as np
import pytest
from helpers import BACKENDS, numpy, randomize_batch_norms, run_python

import keras_preact


def count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


# PAPER.md §5: (builder, kwargs, trainable, all weights).
PAPER_COUNTS = [
    ("ResNet110", {}, 1_730_522, 1_738_618),
    ("ResNet110", {"classes": 100}, 1_736_372, 1_744_468),
    ("ResNet110", {"downsample": "zero_pad"}, 1_727_962, 1_736_058),
    ("ResNet110", {"downsample": "zero_pad", "classes": 100}, 1_733_812, 1_741_908),
    ("ResNet164", {}, 1_703_258, 1_727_482),
    ("ResNet164", {"classes": 100}, 1_726_388, 1_750_612),
    ("ResNet1001", {}, 10_327_706, 10_476_922),
    ("ResNet50", {}, 25_549_352, 25_594_792),
    ("ResNet101", {}, 44_541_480, 44_639_144),
    ("ResNet152", {}, 60_185_128, 60_328_872),
    ("ResNet200", {}, 64_666_152, 64_834_472),
]


@pytest.mark.parametrize(
    "builder, kwargs, trainable, total",
    PAPER_COUNTS,
    ids=[f"{b}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for b, kw, _, _ in PAPER_COUNTS],
)
def test_parameter_counts_match_paper(builder, kwargs, trainable, total):
    model = getattr(keras_preact, builder)(**kwargs)
    assert count(model.trainable_weights) == trainable
    assert count(model.weights) == total
    if builder == "ResNet1001":  # the paper's "10.2M" is its convolution weights alone
        assert count(w for w in model.weights if w.path.endswith("kernel") and len(w.shape) == 4) == 10_175_920


def units(model):
    return [layer for layer in model.layers if isinstance(layer, keras_preact.ResidualUnit)]


def test_cifar_bottleneck_layout():
    model = keras_preact.ResNet164()
    stack = units(model)
    assert len(stack) == 54
    assert [u.name for u in stack[:2]] == ["stage1_unit1", "stage1_unit2"]
    firsts = [u for u in stack if u.name.endswith("_unit1")]
    assert [(u.filters, u.strides, u.preactivation) for u in firsts] == [
        (16, 1, "shared"), (32, 2, "shared"), (64, 2, "shared")
    ]
    assert all(u.preactivation == "residual" and u.projection is None for u in stack if u not in firsts)
    assert all(u.stride_on == "first_1x1" and u.projection is not None for u in firsts)
    # The stem is a bare conv (no BN-ReLU); the head is BN-ReLU-pool-dense.
    names = [layer.name for layer in model.layers]
    assert names[:2] == ["images", "conv1"]
    assert names[-4:] == ["post_bn", "post_relu", "avg_pool", "predictions"]
    assert model.get_layer("stage3_unit18").output.shape == (None, 8, 8, 256)


def test_cifar_basic_layout():
    stack = units(keras_preact.ResNet110())
    assert len(stack) == 54
    assert all(u.block == "basic" for u in stack)
    first = stack[0]
    # Stage 1 keeps 16 channels: identity shortcut, but from the pre-activated tensor.
    assert first.preactivation == "shared" and first.projection is None


def test_imagenet_layout():
    model = keras_preact.ResNet50()
    stack = units(model)
    assert [u.name for u in stack if u.name.endswith("unit1")] == [f"stage{i}_unit1" for i in (1, 2, 3, 4)]
    assert stack[0].preactivation == "none"  # the stem ends in BN-ReLU
    assert [u.preactivation for u in stack if u.name.endswith("unit1")][1:] == ["shared"] * 3
    assert all(u.stride_on == "3x3" for u in stack)
    names = [layer.name for layer in model.layers]
    assert names[:7] == ["images", "conv1_pad", "conv1_conv", "conv1_bn", "conv1_relu", "pool1_pad", "pool1_pool"]
    assert model.get_layer("pool1_pool").output.shape == (None, 56, 56, 64)
    assert model.get_layer("stage4_unit3").output.shape == (None, 7, 7, 2048)


def test_dense_initialisation():
    dense = keras_preact.ResNet164().get_layer("predictions")
    kernel = numpy(dense.kernel)
    assert np.abs(kernel).max() <= 1 / np.sqrt(256)
    assert np.abs(kernel).max() > 0.9 / np.sqrt(256)  # uniform(±1/sqrt(fan_in)), not narrower
    np.testing.assert_array_equal(numpy(dense.bias), 0.0)


@pytest.mark.parametrize(
    "pooling, shape", [(None, (None, 8, 8, 64)), ("avg", (None, 64)), ("max", (None, 64))]
)
def test_feature_extractor(pooling, shape):
    model = keras_preact.PreActResNet(20, block="basic", include_top=False, pooling=pooling)
    assert model.output.shape == shape
    assert "predictions" not in [layer.name for layer in model.layers]


def test_input_tensor_and_variable_size():
    inputs = keras.Input((48, 40, 3))
    model = keras_preact.PreActResNet(11, input_tensor=inputs, classifier_activation=None, classes=7)
    assert model.inputs[0] is inputs and model.output.shape == (None, 7)
    flexible = keras_preact.PreActResNet(11, input_shape=(None, None, 3), include_top=False)
    out = flexible(np.zeros((1, 36, 20, 3), "float32"))
    assert out.shape == (1, 9, 5, 256)


@pytest.mark.parametrize("depth, block, stem, side", [(8, "basic", "cifar", 4), (50, "bottleneck", "imagenet", 32)])
def test_the_smallest_inputs_the_stems_take(depth, block, stem, side):
    # A stride-2 3x3 conv padded by hand sees side+2 pixels: a 2x2 map still makes a 1x1 one.
    model = keras_preact.PreActResNet(depth, block=block, stem=stem, input_shape=(side, side, 3), include_top=False)
    assert model(np.zeros((1, side, side, 3), "float32")).shape[1:3] == (1, 1)


def test_classifier_activation():
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype("float32")
    probabilities = numpy(keras_preact.PreActResNet(11, classes=5)(x))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    logits = keras_preact.PreActResNet(11, classes=5, classifier_activation=None)
    assert logits.get_layer("predictions").activation is keras.activations.linear


def small_models():
    """Small networks covering every layout (CIFAR bottleneck and basic, both shortcuts, ImageNet)."""
    logits = dict(classifier_activation=None)
    return {
        "bottleneck": lambda: keras_preact.PreActResNet(11, classes=10, **logits),
        "basic_zero_pad": lambda: keras_preact.PreActResNet(8, block="basic", downsample="zero_pad", classes=3, **logits),
        "imagenet": lambda: keras_preact.ResNet50(input_shape=(64, 64, 3), classes=6, **logits),
    }


def test_weights_argument_loads_a_weights_file(tmp_path):
    model = keras_preact.PreActResNet(11)
    randomize_batch_norms(model)
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    restored = keras_preact.PreActResNet(11, weights=path)
    np.testing.assert_allclose(numpy(restored(x)), numpy(model(x)), atol=1e-6)


@pytest.mark.parametrize("name", sorted(small_models()))
def test_keras_file_round_trip(tmp_path, name):
    model = small_models()[name]()
    randomize_batch_norms(model)
    x = np.random.default_rng(0).normal(size=(2, *model.input.shape[1:])).astype("float32")
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert [layer.get_config() for layer in restored.layers] == [layer.get_config() for layer in model.layers]
    np.testing.assert_allclose(numpy(restored(x)), numpy(model(x)), atol=1e-6)


def test_weights_portable_across_backends(tmp_path):
    # Saved here, loaded on the next backend: over the three backends' runs, every backend saves
    # and every backend loads.
    other = BACKENDS[(BACKENDS.index(keras.backend.backend()) + 1) % len(BACKENDS)]
    inputs, expected = {}, {}
    for name, build in small_models().items():
        model = build()
        randomize_batch_norms(model, seed=len(name))
        model.save_weights(str(tmp_path / f"{name}.weights.h5"))
        shape = (2, *model.input.shape[1:])
        inputs[name] = np.random.default_rng(1).normal(size=shape).astype("float32")
        np.save(tmp_path / f"{name}.npy", inputs[name])
        expected[name] = numpy(model(inputs[name]))
    code = f"""
import json, numpy as np, keras, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_models import small_models
out = {{}}
for name, build in small_models().items():
    model = build()
    model.load_weights({str(tmp_path)!r} + f"/{{name}}.weights.h5")
    out[name] = keras.ops.convert_to_numpy(model(np.load({str(tmp_path)!r} + f"/{{name}}.npy"))).tolist()
print(json.dumps(out))
"""
    result = json.loads(run_python(code, backend=other).stdout.strip().splitlines()[-1])
    for name in expected:
        np.testing.assert_allclose(np.array(result[name]), expected[name], atol=1e-4, rtol=1e-4, err_msg=name)


def test_resnet1001_builds_with_default_recursion_limit():
    code = """
import sys
import keras_preact
limit = sys.getrecursionlimit()
model = keras_preact.ResNet1001(classes=100)
assert sys.getrecursionlimit() == limit == 1000, limit
trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
print(trainable, model.count_params(), len(model.layers))
"""
    # The paper's CIFAR-100 ResNet-1001, counted here too.
    assert run_python("import numpy as np\n" + code).stdout.split() == ["10350836", "10500052", "339"]


def test_small_network_trains():
    # A learnable toy task: the class is the brightest of three colour channels.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, size=96)
    x[np.arange(96), :, :, y] += 1.0
    keras.utils.set_random_seed(0)
    model = keras_preact.PreActResNet(8, block="basic", classes=3)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=32, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depth=100), r"9n\+2 \(n >= 1\); depth=100 does not fit. Nearest valid depths: 92, 101"),
        (dict(depth=8), r"Nearest valid depths: 11, 20. depth=8 fits block='basic' \(6n\+2\)"),
        (dict(depth=1001, block="basic"), r"6n\+2 \(n >= 1\); depth=1001 does not fit. Nearest valid depths: 998, 1004. depth=1001 fits block='bottleneck'"),
        (dict(depth=5), r"Nearest valid depths: 11"),
        (dict(depth=34, stem="imagenet"), r"depth 50, 101, 152, 200 with block='bottleneck'"),
        (dict(depth=50, block="basic", stem="imagenet"), r"with block='bottleneck'; got depth=50, block='basic'"),
        (dict(depth=11, block="dense"), r"Unknown block='dense'. Valid values: 'basic', 'bottleneck'"),
        (dict(depth=11, stem="tiny"), r"Unknown stem='tiny'. Valid values: 'cifar', 'imagenet'"),
        (dict(depth=11, classes=0), r"classes must be a positive integer, got 0"),
        (dict(depth=11, classes=2.5), r"classes must be a positive integer, got 2.5"),
        (dict(depth=11, pooling="mean"), r"Unknown pooling='mean'"),
        (dict(depth=11, input_shape=(32, 32, 1)), r"has 1 channels; these networks take RGB images with 3"),
        (dict(depth=11, input_shape=(32, 32)), r"input_shape must have 3 dimensions"),
        (dict(depth=11, input_shape=(2, 32, 3)), r"too small: the cifar network downsamples 4x"),
        (dict(depth=50, stem="imagenet", input_shape=(16, 16, 3)), r"at least 32"),
        (dict(depth=11, downsample="avg"), r"Unknown downsample='avg'"),
        (dict(depth=11, weights="imagenet"), r"No pretrained weights are published"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_preact.PreActResNet(**kwargs)


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist. Pass the path of a `.weights.h5` file"):
        keras_preact.ResNet164(weights=str(tmp_path / "nope.weights.h5"))


def test_weights_file_that_is_not_hdf5(tmp_path):
    path = tmp_path / "broken.weights.h5"
    path.write_bytes(b"not an HDF5 file")
    with pytest.raises(ValueError, match=r"broken.weights.h5' is not a readable Keras weights file \(HDF5\)"):
        keras_preact.PreActResNet(8, block="basic", weights=str(path))


def test_weights_for_other_classes(tmp_path):
    path = str(tmp_path / "ten.weights.h5")
    keras_preact.PreActResNet(11, classes=10).save_weights(path)
    with pytest.raises(ValueError, match=r"does not fit preact_resnet11 \(depth=11, block=.bottleneck., classes=100, include_top=True\): missing or differently shaped weights in layer\(s\) predictions\."):
        keras_preact.PreActResNet(11, classes=100, weights=path)


def test_unknown_argument_is_not_ignored():
    with pytest.raises(TypeError, match="unit_type"):
        keras_preact.ResNet110(unit_type="original")


def test_weights_of_another_depth(tmp_path):
    path = str(tmp_path / "d11.weights.h5")
    keras_preact.PreActResNet(11).save_weights(path)
    with pytest.raises(ValueError, match=r"does not fit preact_resnet20 \(depth=20.*missing or differently shaped weights"):
        keras_preact.PreActResNet(20, weights=path)
