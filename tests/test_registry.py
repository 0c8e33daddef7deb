"""Models by name: list_models and create_model over every builder (timm's names)."""

import pytest

import keras_preact
from keras_preact.model.builders import MODELS


def test_every_builder_is_listed_by_its_timm_name():
    assert keras_preact.list_models() == [
        "preact_resnet", "preact_resnet50", "preact_resnet101", "preact_resnet110", "preact_resnet152",
        "preact_resnet164", "preact_resnet200", "preact_resnet1001",
    ]
    assert keras_preact.list_models("preact_resnet1?0") == ["preact_resnet110"]
    assert keras_preact.list_models("resnet*") == []
    assert MODELS["preact_resnet110"] is keras_preact.ResNet110 and MODELS["preact_resnet"] is keras_preact.PreActResNet


def test_create_model_builds_what_the_builder_builds():
    by_name = keras_preact.create_model("preact_resnet110", classes=100)
    assert by_name.name == "resnet110" and by_name.output_shape == (None, 100)
    assert by_name.count_params() == 1738618 + 64 * 90 + 90  # ResNet110's, with 100 classes instead of 10
    generic = keras_preact.create_model("preact_resnet", depth=8, block="basic", include_top=False, pooling="avg")
    assert generic.name == "preact_resnet8" and generic.output_shape == (None, 64)


@pytest.mark.parametrize(
    "name, kwargs, error, message",
    [
        ("preact_resnet146", {}, ValueError, r"Unknown model 'preact_resnet146'. Close matches: 'preact_resnet164'"),
        ("resnetv2_50", {}, ValueError, r"Unknown model 'resnetv2_50'.( Close matches: .*;)? list_models\(\) names them all"),
        (164, {}, ValueError, "name must be a model name such as 'preact_resnet164', got 164"),
        ("preact_resnet164.cifar10", {"weights": "cifar100"}, ValueError, "names the weights 'cifar10' already"),
        ("preact_resnet50", {"weights": "imagenet"}, ValueError, "No pretrained weights are published for preact_resnet50 on 'imagenet'"),
        ("preact_resnet", {}, ValueError, r"'preact_resnet' is the generic network: give its depth"),
        ("preact_resnet110", {"depth": 20}, ValueError, r"'preact_resnet110' has its depth in its name; for depth=20 use"),
        ("PREACT_RESNET164", {}, ValueError, r"Close matches: 'preact_resnet164'"),
        ("preact_resnet110", {"unit_type": "original"}, TypeError, "unit_type"),
    ],
)
def test_bad_names_and_arguments(name, kwargs, error, message):
    with pytest.raises(error, match=message):
        keras_preact.create_model(name, **kwargs)


def test_list_models_takes_a_string_pattern():
    with pytest.raises(ValueError, match="pattern must be a string"):
        keras_preact.list_models(1)
