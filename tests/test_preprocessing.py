"""keras.applications-style preprocessing: preprocess_input, decode_predictions, include_preprocessing,
on every backend, without TensorFlow where the backend is not TensorFlow."""

import json
import os

import keras
import numpy as np
import pytest
from helpers import numpy, randomize_batch_norms, run_python

import keras_preact
from keras_preact import choices
from keras_preact.model.preprocessing import dataset_class_names

PIXELS = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3)).astype(np.uint8)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagenet", ((10.0, 20.0, 30.0), (2.0, 4.0, 8.0))])
def test_preprocess_input_normalises_per_channel(dataset):
    mean, std = (choices.DATASETS[dataset].mean, choices.DATASETS[dataset].std) if isinstance(dataset, str) else dataset
    expected = (PIXELS.astype(np.float64) - np.array(mean)) / np.array(std)
    from_numpy = keras_preact.preprocess_input(PIXELS, dataset=dataset)
    assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float32
    np.testing.assert_allclose(from_numpy, expected, rtol=1e-6, atol=1e-6)
    from_tensor = keras_preact.preprocess_input(keras.ops.convert_to_tensor(PIXELS), dataset=dataset)
    assert keras.ops.is_tensor(from_tensor) and keras.backend.standardize_dtype(from_tensor.dtype) == "float32"
    np.testing.assert_allclose(numpy(from_tensor), expected, rtol=1e-6, atol=1e-6)
    channels_first = keras_preact.preprocess_input(PIXELS.transpose(0, 3, 1, 2), dataset, data_format="channels_first")
    np.testing.assert_allclose(channels_first, expected.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-6)
    one_image = keras_preact.preprocess_input(PIXELS[0].transpose(2, 0, 1), dataset, data_format="channels_first")
    np.testing.assert_allclose(one_image, expected[0].transpose(2, 0, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "x, kwargs, message",
    [
        (np.zeros((2, 32, 32, 4)), {}, "3 channels on axis -1"),
        (np.zeros((2, 32, 32, 3)), {"data_format": "channels_first"}, "3 channels on axis -3"),
        (np.zeros((32, 3)), {}, "3 channels"),
        (PIXELS, {"dataset": "svhn"}, "Unknown dataset='svhn'"),
        (PIXELS, {"dataset": ((1, 2), (1, 2))}, "3 finite numbers each"),
        (PIXELS, {"dataset": ((True, 2, 3), (1, 1, 1))}, "mean and std must be numbers"),
        (PIXELS, {"data_format": "nhwc"}, "Unknown data_format='nhwc'"),
    ],
)
def test_preprocess_input_rejects_bad_arguments(x, kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_preact.preprocess_input(x, **kwargs)


def test_decode_predictions_cifar_and_imagenet():
    probabilities = np.array([[0.1, 0.05, 0.5, 0.05, 0.0, 0.0, 0.0, 0.0, 0.2, 0.1]], np.float32)
    decoded = keras_preact.decode_predictions(keras.ops.convert_to_tensor(probabilities), dataset="cifar10", top=3)
    assert [(i, name) for i, name, _ in decoded[0]] == [(2, "bird"), (8, "ship"), (0, "airplane")]
    np.testing.assert_allclose([score for *_, score in decoded[0]], [0.5, 0.2, 0.1])
    assert all(isinstance(score, float) for *_, score in decoded[0])

    imagenet = np.zeros((2, 1000), np.float32)
    imagenet[0, 1], imagenet[1, 999] = 1.0, 1.0
    top = keras_preact.decode_predictions(imagenet, dataset="imagenet", top=1)
    assert top == [[("n01443537", "goldfish", 1.0)], [("n15075141", "toilet tissue", 1.0)]]
    names = dataset_class_names("imagenet")
    assert len(names) == len(set(names)) == 1000
    assert dataset_class_names("cifar100")[:2] == ("apple", "aquarium_fish")

    custom = keras_preact.decode_predictions(np.array([[0.2, 0.8]]), class_names=["cat", "dog"], top=2)
    assert custom == [[(1, "dog", 0.8), (0, "cat", 0.2)]]


@pytest.mark.parametrize(
    "preds, kwargs, message",
    [
        (np.zeros((1, 100)), {"dataset": "cifar10"}, r"shape \[batch, 10\] \(10 classes\); got shape \[1, 100\]"),
        (np.zeros(10), {}, "got shape"),
        (np.zeros((1, 10)), {"dataset": "cifar10", "top": 11}, "top=11 exceeds the 10 classes"),
        (np.zeros((1, 10)), {"dataset": "cifar10", "top": 0}, "top must be a positive integer"),
        (np.zeros((1, 2)), {"class_names": "ab"}, "class_names must be a list of strings"),
        (np.eye(10)[[0, 1]] * [[1], [np.nan]], {"dataset": "cifar10"},
         r"NaN or infinite scores \(prediction\(s\) 1\): the model diverged, or its input was not normalised"),
        (np.full((7, 2), -np.inf, np.float32), {"class_names": ["a", "b"]}, r"\(prediction\(s\) 0, 1, 2, 3, 4, \.\.\.\)"),
    ],
)
def test_decode_predictions_rejects_bad_arguments(preds, kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_preact.decode_predictions(preds, **kwargs)


def test_include_preprocessing_takes_raw_pixels():
    raw = keras_preact.PreActResNet(8, block="basic", include_preprocessing=True)
    randomize_batch_norms(raw)
    plain = keras_preact.PreActResNet(8, block="basic")
    plain.set_weights(raw.get_weights())  # the Normalize layer holds no weights
    np.testing.assert_allclose(
        numpy(raw(PIXELS)), numpy(plain(keras_preact.preprocess_input(PIXELS, "cifar10"))), atol=1e-6
    )
    assert raw.count_params() == plain.count_params()  # the constants are not weights


def test_include_preprocessing_picks_the_dataset_and_survives_saving(tmp_path):
    def constants(model):
        layer = model.get_layer("preprocessing")
        return np.array(layer.mean), np.array(layer.std)

    for model, dataset in [
        (keras_preact.PreActResNet(8, block="basic", classes=100, include_preprocessing=True), "cifar100"),
        (keras_preact.PreActResNet(8, block="basic", include_preprocessing="imagenet"), "imagenet"),
        (keras_preact.ResNet50(input_shape=(64, 64, 3), include_preprocessing=True, classes=10), "imagenet"),
    ]:
        mean, std = constants(model)
        np.testing.assert_allclose(mean, choices.DATASETS[dataset].mean, rtol=1e-6)
        np.testing.assert_allclose(std, choices.DATASETS[dataset].std, rtol=1e-6)
    model = keras_preact.PreActResNet(8, block="basic", include_preprocessing=((1, 2, 3), (4, 5, 6)))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(constants(loaded)[1], [4, 5, 6], rtol=1e-6)
    np.testing.assert_allclose(numpy(loaded(PIXELS.astype("float32"))), numpy(model(PIXELS.astype("float32"))), atol=1e-6)


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "must be True, False, a dataset name or"),
        ("svhn", "Unknown dataset='svhn'"),
        (((1, 2, 3), (0, 1, 1)), "std positive"),
    ],
)
def test_include_preprocessing_rejects_bad_values(value, message):
    with pytest.raises(ValueError, match=message):
        keras_preact.PreActResNet(8, block="basic", include_preprocessing=value)
    with pytest.raises(ValueError, match="picks CIFAR-10 or CIFAR-100 by the classes"):
        keras_preact.PreActResNet(8, block="basic", classes=7, include_preprocessing=True)


NO_TENSORFLOW = """
import json, sys
import numpy as np, keras, keras_preact
x = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3)).astype("uint8")
a = keras_preact.preprocess_input(x, dataset="cifar10")
b = keras.ops.convert_to_numpy(keras_preact.preprocess_input(keras.ops.convert_to_tensor(x), dataset="imagenet"))
model = keras_preact.PreActResNet(8, block="basic", include_preprocessing=True)
decoded = keras_preact.decode_predictions(model(x.astype("float32")), dataset="cifar10", top=2)
imagenet = keras_preact.decode_predictions(np.eye(1000)[[5]], dataset="imagenet", top=1)
print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "decoded": len(decoded[0]), "imagenet": imagenet[0][0][:2],
                  "shapes": [list(a.shape), list(b.shape)]}))
"""


def test_preprocessing_does_not_import_tensorflow():
    backend = keras.backend.backend()
    if backend == "tensorflow":
        pytest.skip("TensorFlow is the backend itself")
    result = json.loads(run_python(NO_TENSORFLOW, backend=backend).stdout.strip().splitlines()[-1])
    assert result == {"tensorflow": False, "decoded": 2, "imagenet": ["n01496331", "electric ray"],
                      "shapes": [[2, 32, 32, 3], [2, 32, 32, 3]]}


def test_the_imagenet_class_file_is_in_label_order():
    from keras_preact.model.preprocessing import IMAGENET_CLASSES

    with open(IMAGENET_CLASSES, encoding="utf-8") as f:
        wnids = [line.split("\t")[0] for line in f]
    assert wnids == sorted(wnids) and len(wnids) == 1000 and os.path.basename(IMAGENET_CLASSES) == "imagenet_classes.tsv"


def test_the_dataset_comes_from_the_model_and_survives_saving(tmp_path):
    from keras_preact.model.preprocessing import model_dataset

    cifar100 = keras_preact.PreActResNet(8, block="basic", classes=100)
    cifar100.save(tmp_path / "m.keras")
    assert model_dataset(keras.models.load_model(tmp_path / "m.keras")) == "cifar100"
    np.testing.assert_array_equal(keras_preact.preprocess_input(PIXELS, cifar100), keras_preact.preprocess_input(PIXELS, "cifar100"))
    assert keras_preact.decode_predictions(np.eye(100)[[1]], cifar100, top=1) == [[(1, "aquarium_fish", 1.0)]]
    assert model_dataset(keras_preact.ResNet50(input_shape=(64, 64, 3))) == "imagenet"
    with pytest.raises(ValueError, match=r"model 'preact_resnet8' \(cifar stem, 7 classes\) is not one of 'cifar10'"):
        keras_preact.preprocess_input(PIXELS, keras_preact.PreActResNet(8, block="basic", classes=7))
    with pytest.raises(ValueError, match="normalises its input itself"):
        keras_preact.preprocess_input(PIXELS, keras_preact.PreActResNet(8, block="basic", include_preprocessing=True))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: keras_preact.preprocess_input(PIXELS), "preprocess_input needs the dataset: pass dataset='cifar10', 'cifar100', 'imagenet'"),
        (lambda: keras_preact.decode_predictions(np.zeros((1, 10))), "decode_predictions needs the dataset"),
        (lambda: keras_preact.preprocess_input(np.zeros((1, 224, 224, 3)), "cifar100"), r"224x224 do not fit dataset='cifar100' \(32x32 images\); 'imagenet' takes them"),
        (lambda: keras_preact.preprocess_input(np.zeros((3, 40, 48)), "cifar10", "channels_first"), "40x48 do not fit dataset='cifar10'"),
        (lambda: keras_preact.decode_predictions(np.zeros((1, 100)), "cifar10"), "dataset 'cifar100' has 100 classes"),
        (lambda: keras_preact.decode_predictions(np.zeros((1, 1000)), "cifar10"), "dataset 'imagenet' has 1000 classes"),
    ],
)
def test_no_silent_default_and_shapes_name_the_dataset_that_fits(call, message):
    with pytest.raises(ValueError, match=message):
        call()
