"""Presets: trained weights shipped in the package, made from a training run, loaded by name."""

import datetime
import json
import os

import numpy as np
import pytest
from helpers import numpy, randomize_batch_norms

import keras_preact
from keras_preact import choices
from keras_preact.model import presets
from keras_preact.training.config import RunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny_preset(tmp_path, monkeypatch):
    """A preset of ResNet-8 on CIFAR-10, made from a (pretend) finished run, in a presets folder of its own."""
    monkeypatch.setattr(presets, "PRESETS_DIR", str(tmp_path / "presets"))
    monkeypatch.setitem(presets.PRESETS, "preact_resnet8.cifar10", presets.Preset("preact_resnet8", "cifar10", 9.9, "none"))
    run = tmp_path / "run"
    run.mkdir()
    RunConfig(depth=8, block="basic", model_dir=str(run)).resolved().save(run / "config.json")
    trained = keras_preact.PreActResNet(8, block="basic")
    randomize_batch_norms(trained)
    trained.save_weights(run / "model.weights.h5")
    (run / "results.json").write_text(json.dumps({"test_error": 9.5, "backend": "jax", "placement": "one device", "epochs": 1}))
    assert presets.write_preset(str(run)) == "preact_resnet8.cifar10"
    return trained


def test_a_preset_loads_by_dataset_and_by_name(tiny_preset):
    record = json.loads(open(os.path.join(presets.PRESETS_DIR, "preact_resnet8.cifar10.json")).read())
    assert record["test_error"] == 9.5 and record["paper_error"] == 9.9 and record["classes"] == 10
    assert record["date"] == datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    assert record["architecture"]["depth"] == 8 and record["architecture"]["unit"] == "full_preact"
    assert keras_preact.list_models(pretrained=True) == ["preact_resnet8.cifar10"]
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    expected = numpy(tiny_preset(images))
    for model in (
        keras_preact.PreActResNet(8, block="basic", weights="cifar10"),
        keras_preact.create_model("preact_resnet.cifar10", depth=8, block="basic"),
        keras_preact.create_model("preact_resnet", depth=8, block="basic", weights="cifar10"),
    ):
        np.testing.assert_allclose(numpy(model(images)), expected, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(downsample="zero_pad"), r"trained with downsample='projection' \(this model: 'zero_pad'\)"),
        (dict(classes=100), r"trained with classes=10 \(this model: 100\)"),
        (dict(weights="cifar100"), r"No pretrained weights are published for preact_resnet8 on 'cifar100'; presets of preact_resnet8: 'cifar10'"),
    ],
)
def test_a_preset_refuses_another_network(tiny_preset, kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_preact.PreActResNet(8, block="basic", **{"weights": "cifar10", **kwargs})


def test_a_preset_not_shipped_says_how_it_is_made(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "PRESETS_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"published for preact_resnet164.cifar10 yet: none ship .* `bash benchmarks/gpu.sh reproduce`"):
        keras_preact.ResNet164(weights="cifar10")
    assert keras_preact.list_models(pretrained=True) == []


def _first_images_per_class(folder, class_names, count=100):
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(class_names):
        for file in sorted(os.listdir(os.path.join(folder, name)))[:count]:
            with Image.open(os.path.join(folder, name, file)) as image:
                images.append(np.asarray(image.convert("RGB")))
            labels.append(label)
    return np.stack(images), np.array(labels)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_shipped_weights_reach_their_recorded_error(name):
    """The shipped weights on the first 100 test images (by file name) of each class: their error
    is the recorded one (on the whole test set) within 2.5 points, about 3.5 binomial standard
    deviations on 1,000 images."""
    if not presets.shipped(name):
        pytest.skip(f"{name}: no trained weights ship yet (bash benchmarks/gpu.sh reproduce makes them)")
    record = presets.record(name)
    folder = os.path.join(ROOT, "..", "shared", "data", f"{record['dataset']}-jpeg", "test")
    if not os.path.isdir(folder):
        pytest.skip(f"{folder} (the real {record['dataset']} test images) is not on this machine")
    model = keras_preact.create_model(name)
    images, labels = _first_images_per_class(folder, choices.DATASETS[record["dataset"]].class_names)
    predictions = np.argmax(model.predict(keras_preact.preprocess_input(images, record["dataset"]), batch_size=100, verbose=0), axis=1)
    error = 100.0 * np.mean(predictions != labels)
    assert abs(error - record["test_error"]) <= 2.5, (error, record)
