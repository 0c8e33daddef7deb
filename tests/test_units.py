"""ResidualUnit: layout against an independent NumPy reference, config round trips, bad input."""

import keras
import numpy as np
import pytest
from helpers import numpy, randomize_batch_norms, reference_unit

from keras_preact import ResidualUnit

UNIT_CASES = {
    # CIFAR bottleneck, first unit of stage 2: shared pre-activation, stride on the first 1x1.
    "bottleneck_first_1x1_projection": (dict(filters=8, strides=2, preactivation="shared"), 16),
    # CIFAR bottleneck, first unit of stage 1: 16 -> 64 channels at stride 1.
    "bottleneck_stage1_projection": (dict(filters=16, strides=1, preactivation="shared"), 16),
    "bottleneck_identity": (dict(filters=8), 32),
    # ImageNet bottleneck: stride on the 3x3 conv.
    "bottleneck_3x3_stride": (dict(filters=8, strides=2, stride_on="3x3", preactivation="shared"), 32),
    "bottleneck_no_preactivation": (dict(filters=8, preactivation="none"), 16),
    "basic_projection": (dict(block="basic", filters=16, strides=2, preactivation="shared"), 8),
    "basic_zero_pad": (
        dict(block="basic", filters=16, strides=2, preactivation="shared", downsample="zero_pad"),
        8,
    ),
    # CIFAR basic, first unit of stage 1: identity shortcut from the pre-activated tensor.
    "basic_shared_identity": (dict(block="basic", filters=8, preactivation="shared"), 8),
    "basic_identity": (dict(block="basic", filters=8), 8),
}


def build_unit(kwargs, in_channels, size=9):
    # An odd size checks that strided convs and shortcuts agree on the sampled pixels.
    unit = ResidualUnit(**kwargs)
    x = np.random.default_rng(1).normal(size=(2, size, size, in_channels)).astype("float32")
    unit.build(x.shape)
    randomize_batch_norms(unit)
    return unit, x


@pytest.mark.parametrize("case", sorted(UNIT_CASES))
def test_unit_matches_numpy_reference(case):
    kwargs, in_channels = UNIT_CASES[case]
    unit, x = build_unit(kwargs, in_channels)
    out = numpy(unit(x, training=False))
    expected = reference_unit(unit, x)
    assert out.shape == expected.shape == unit.compute_output_shape(x.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_stride_placement():
    official = ResidualUnit(8, strides=2, stride_on="first_1x1", preactivation="shared")
    fair = ResidualUnit(8, strides=2, stride_on="3x3", preactivation="shared")
    for unit in (official, fair):
        unit.build((None, 16, 16, 16))
    assert [c.strides for c in official.convs] == [(2, 2), (1, 1), (1, 1)]
    assert [c.strides for c in fair.convs] == [(1, 1), (2, 2), (1, 1)]
    assert official.projection.strides == fair.projection.strides == (2, 2)


def test_projection_only_where_shape_changes():
    same = ResidualUnit(8)
    same.build((None, 8, 8, 32))
    grows = ResidualUnit(8, preactivation="shared")
    grows.build((None, 8, 8, 16))
    zero_pad = ResidualUnit(8, block="basic", strides=2, downsample="zero_pad")
    zero_pad.build((None, 8, 8, 4))
    assert same.projection is None
    assert grows.projection is not None and not grows.projection.use_bias
    assert zero_pad.projection is None
    # Zero-padding is parameter-free: only the two 3x3 convs and the BNs carry weights.
    assert zero_pad.count_params() == 3 * 3 * 4 * 8 + 3 * 3 * 8 * 8 + 4 * 4 + 8 * 4


def test_no_preactivation_has_no_leading_batch_norm():
    unit = ResidualUnit(8, preactivation="none")
    unit.build((None, 8, 8, 16))
    assert not any("preact_bn" in w.path for w in unit.weights)


def test_initialisation_matches_official_code():
    unit = ResidualUnit(64, preactivation="shared")
    unit.build((None, 8, 8, 64))
    # conv3 is 1x1, 64 -> 256: fan-out std sqrt(2/256) = 0.088 (fan-in would give 0.177).
    expand = numpy(unit.convs[2].kernel)
    assert abs(expand.std() / np.sqrt(2 / 256) - 1) < 0.05
    # conv2 is 3x3, 64 -> 64; untruncated, so a sample of 36,864 reaches beyond 2.5 std devs.
    kernel = numpy(unit.convs[1].kernel)
    std = np.sqrt(2 / (9 * 64))
    assert abs(kernel.std() / std - 1) < 0.05 and abs(kernel.mean()) < 0.05 * std
    assert np.abs(kernel).max() > 2.5 * std
    norm = unit.pre_norms[0]
    assert norm.epsilon == 1e-5 and norm.momentum == 0.9
    np.testing.assert_array_equal(numpy(norm.gamma), 1.0)
    np.testing.assert_array_equal(numpy(norm.beta), 0.0)
    assert all(not c.use_bias for c in unit.convs)


@pytest.mark.parametrize("case", sorted(UNIT_CASES))
def test_config_round_trip(case):
    kwargs, in_channels = UNIT_CASES[case]
    unit, x = build_unit(kwargs, in_channels)
    clone = ResidualUnit.from_config(unit.get_config())
    clone.build(x.shape)
    clone.set_weights(unit.get_weights())
    assert clone.get_config() == unit.get_config()
    np.testing.assert_allclose(numpy(clone(x)), numpy(unit(x)), atol=1e-6)


def test_serialisable_by_registered_name():
    unit = ResidualUnit(4, block="basic", strides=2, downsample="zero_pad", name="my_unit")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(unit))
    assert isinstance(restored, ResidualUnit)
    assert restored.get_config() == unit.get_config()


def test_channels_first_equals_channels_last():
    last, x = build_unit(dict(filters=8, strides=2, preactivation="shared"), 16)
    first = ResidualUnit(8, strides=2, preactivation="shared", data_format="channels_first")
    first.build((2, 16, 9, 9))
    first.set_weights(last.get_weights())
    out = numpy(first(np.transpose(x, (0, 3, 1, 2)), training=False))
    np.testing.assert_allclose(np.transpose(out, (0, 2, 3, 1)), numpy(last(x, training=False)), atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(filters=0), "filters must be a positive integer"),
        (dict(filters=8, block="wide"), "Unknown block='wide'. Valid values: 'basic', 'bottleneck'"),
        (dict(filters=8, strides=3), "strides must be 1 or 2"),
        (dict(filters=8, stride_on="last"), "Unknown stride_on='last'"),
        (dict(filters=8, preactivation="both"), "Unknown preactivation='both'"),
        (dict(filters=8, downsample="pool"), "Unknown downsample='pool'"),
        (dict(filters=8, data_format="nhwc"), "Unknown data_format='nhwc'"),
        (dict(filters=8, remat=1), "remat must be True or False"),
        (dict(filters=8, shortcut="constant_scaling", shortcut_scale=float("inf")), "shortcut_scale must be a finite number"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ResidualUnit(**kwargs)


def test_zero_pad_cannot_remove_channels():
    unit = ResidualUnit(8, block="basic", downsample="zero_pad")
    with pytest.raises(ValueError, match="can only add channels.*downsample='projection'"):
        unit.build((None, 8, 8, 16))
