"""Image folders of any class count and image size: classes, normalisation, subset-first decoding,
progress, and the ImageNet recipe on both input pipelines."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest

from keras_preact import choices
from keras_preact.training import RunConfig, folders, imagenet_augment, run, runner, sources

BACKEND = keras.backend.backend()


def make_folder(root, classes, size, per_class=(6, 2), seed=0):
    """train/<class>/*.png and test/<class>/*.png of random images `size` (height, width)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class):
        for name in classes:
            os.makedirs(root / split / name)
            for index in range(count):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{index}.png")
    return root


@pytest.fixture
def squares(tmp_path):
    return make_folder(tmp_path / "squares", ("ant", "bee", "cat"), (64, 64))


@pytest.fixture
def oblongs(tmp_path):
    return make_folder(tmp_path / "oblongs", ("a", "b", "c", "d", "e"), (40, 48), per_class=(4, 1))


def test_classes_and_views_follow_the_folder(oblongs):
    reading = folders.Reading(image_size=32, resize=37)
    train, test = sources.load("folder", oblongs, other_source=None, reading=reading)
    assert train.class_names == test.class_names == ("a", "b", "c", "d", "e")
    assert train.images.shape == (20, 37, 37, 3)  # shorter side 40 -> 37, centre square
    assert test.images.shape == (5, 32, 32, 3)  # the evaluation view: centre crop of that
    np.testing.assert_array_equal(train.labels, np.repeat(np.arange(5), 4))


def test_normalisation_is_computed_from_the_training_images(squares):
    config = RunConfig(dataset="folder", data_dir=str(squares), recipe="imagenet", image_size=56).resolved()
    train, _ = sources.load("folder", squares, None, folders.reading(config))  # 64x64 stored as is
    filled = folders.complete(config, train)
    pixels = train.images.reshape(-1, 3).astype(np.float64)
    assert filled.classes == 3
    np.testing.assert_allclose(filled.normalization, [pixels.mean(0), pixels.std(0)], atol=1e-3)
    record = filled.dataset_record()
    assert (record.classes, record.image_size, record.resize) == (3, 56, 64)


def test_a_folder_run_without_its_data_names_what_is_missing():
    with pytest.raises(ValueError, match="dataset='folder' takes classes and normalization from its image folder"):
        RunConfig(dataset="folder").resolved().dataset_record()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_size": 64}, r"recipe='paper' trains on 32x32 images .* image_size=64 needs recipe='imagenet'"),
        ({"recipe": "imagenet", "normalization": [[1, 2, 3], [0, 1, 1]]}, "std positive"),
        ({"classes": 1}, "classes must be an integer of at least 2"),
        ({"depth": 20, "model_options": {"stem": "imagenet"}}, "ImageNet pre-activation ResNet has depth 50, 101, 152, 200"),
    ],
)
def test_bad_folder_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(dataset="folder", **overrides).resolved()


def test_train_subset_decodes_only_the_images_it_uses(squares, monkeypatch, capsys):
    decoded = []
    decode = sources._decode_file
    monkeypatch.setattr(sources, "_decode_file", lambda path, size: decoded.append(path) or decode(path, size))
    reading = folders.Reading(train_subset=4, image_size=32, resize=37, progress=True)
    train, test = sources.load("folder", squares, None, reading)
    assert len(train) == 4 and np.bincount(train.labels).tolist() == [2, 1, 1]  # classes in turn
    assert len(decoded) == 4 + len(test)
    output = capsys.readouterr().err
    assert f"Decoding {squares / 'train'}: 4/4 images" in output and "images/s" in output


def test_the_cifar_name_on_a_folder_of_other_classes_names_folder(squares):
    config = RunConfig(dataset="cifar100", data_dir=str(squares), recipe="imagenet", image_size=32, epochs=1, batch_size=2)
    with pytest.raises(ValueError, match=r"3 classes \(ant, bee, cat\), cifar100 has 100.*dataset='folder'"):
        run(config)


def test_an_image_size_too_large_for_memory_is_one_error(squares):
    reading = folders.Reading(image_size=10**6, resize=folders.evaluation_resize("imagenet", 10**6))
    with pytest.raises(ValueError, match=r"train images at 1142857x1142857 needs .* GiB .*: lower image_size"):
        sources.load("folder", squares, None, reading)


def test_a_one_class_folder_is_refused_before_the_run_claims_model_dir(tmp_path):
    folder = make_folder(tmp_path / "one", ("ant",), (32, 32))
    config = RunConfig(dataset="folder", data_dir=str(folder), depth=11, epochs=1, batch_size=2, model_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"one class \(ant\); a classifier needs at least 2"):
        run(config)
    assert not os.path.exists(tmp_path / "run")


def test_classes_other_than_the_folders_are_refused_naming_both(squares, tmp_path):
    config = RunConfig(dataset="folder", data_dir=str(squares), classes=5, recipe="imagenet", image_size=32, depth=11,
                       epochs=1, batch_size=2, model_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"classes=5, but the image folder has 3 class folders \(ant, bee, cat\)"):
        run(config)


def record(image_size, mean, std):
    """A dataset record that crops to `image_size` and normalises with one mean and std."""
    return dataclasses.replace(choices.DATASETS["cifar10"], image_size=image_size, mean=(mean,) * 3, std=(std,) * 3)


def whole_image_parameters(count, side):
    """Parameters of no augmentation: the whole image, no flip, factors 1, no lighting."""
    return np.tile(np.array([0, 0, side, side, 0, 0, 1, 2, 1, 1, 1, 0, 0, 0], np.float32), (count, 1))


def test_no_augmentation_is_the_normalised_image():
    images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    params = keras.ops.convert_to_tensor(whole_image_parameters(2, 8))
    out = imagenet_augment.augment(keras.ops, keras.ops.convert_to_tensor(images.reshape(-1, 3)),
                                   keras.ops.convert_to_tensor(np.array([0, 64], np.int32)), 8, params, record(8, 10.0, 2.0))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), (images - 10.0) / 2.0, atol=1e-4)


def test_both_pipelines_augment_alike():
    """The same parameters give the same image through tf.data's ops and keras.ops."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    params = imagenet_augment.parameters(imagenet_augment.NUMPY_OPS, rng.random((3, imagenet_augment.UNIFORMS)),
                                         rng.standard_normal((3, 3)), 20)
    params[:, 4] = [0, 1, 0]  # a flip among them
    flat = image.reshape(-1, 3)
    expected = [imagenet_augment.augment(imagenet_augment._tf_ops(), tf.constant(flat), tf.constant(0), 20, tf.constant(p),
                                         record(12, 100.0, 50.0)).numpy() for p in params]
    out = imagenet_augment.augment(keras.ops, keras.ops.convert_to_tensor(flat), keras.ops.convert_to_tensor(np.zeros(3, np.int32)),
                                   20, keras.ops.convert_to_tensor(params), record(12, 100.0, 50.0))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), np.stack(expected), atol=1e-3)
    assert not np.allclose(expected[0], expected[1])


# Each pipeline where it is cheap: XLA's compilation of ResNet-50 twice would take JAX minutes.
PIPELINES = {"tensorflow": ["tf_data"], "jax": ["device"], "torch": ["tf_data", "device"]}[BACKEND]


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_the_imagenet_recipe_trains_a_resnet50_on_small_crops(squares, tmp_path, pipeline):
    config = RunConfig(dataset="folder", data_dir=str(squares), recipe="imagenet", image_size=32, depth=50,
                       model_options={"stem": "imagenet"}, epochs=1, batch_size=4, train_subset=8,
                       model_dir=str(tmp_path / "run"), input_pipeline=pipeline)
    results = run(config, verbose=0)
    assert results["steps"] == 2 and results["class_names"] == ["ant", "bee", "cat"]
    with open(tmp_path / "run" / "config.json") as f:
        saved = json.load(f)
    assert saved["classes"] == 3 and len(saved["normalization"]) == 2 and saved["image_size"] == 32
    assert RunConfig.load(tmp_path / "run" / "config.json").dataset_record().resize == 37
    # The same command resumes: the recorded normalisation survives JSON exactly, and a command
    # that leaves it to the data is not "other settings".
    assert RunConfig.from_dict(saved).resolved().normalization == saved["normalization"]
    runner._check_model_dir(config.resolved())


def test_a_resume_on_a_changed_folder_names_what_changed_in_one_line(tmp_path):
    from PIL import Image

    root = make_folder(tmp_path / "tiny", ("ant", "bee", "cat"), (32, 32))
    config = RunConfig(dataset="folder", data_dir=str(root), depth=8, epochs=1, batch_size=6, model_dir=str(tmp_path / "run"))
    os.makedirs(config.model_dir)
    runner._record_start(runner.prepare(config, None, None, None, None, 0), 0)  # as the run's start writes them
    runner.prepare(config, None, None, None, None, 0)  # the same images: a resume
    for split in ("train", "test"):
        os.rename(root / split / "cat", root / split / "cow")
    with pytest.raises(ValueError) as refused:
        runner.prepare(config, None, None, None, None, 0)
    message = str(refused.value)
    assert "\n" not in message and "[[" not in message, message
    assert f"holds a run on other images than {root} holds now (class folders gone: cat, new: cow): " in message  # the same images
    assert message.endswith("restore the folder's images to resume, or use a new model_dir.")
    for split in ("train", "test"):
        os.rename(root / split / "cow", root / split / "cat")
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(root / "train" / "ant" / "white.png")
    with pytest.raises(ValueError, match=r"other images than .* holds now \(normalisation mean [\d.]+/[\d.]+/[\d.]+, std "
                                         r"[\d.]+/[\d.]+/[\d.]+ then, mean [\d.]+/[\d.]+/[\d.]+, std [\d.]+/[\d.]+/[\d.]+ now\)"):
        runner.prepare(config, None, None, None, None, 0)
