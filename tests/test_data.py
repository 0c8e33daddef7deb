"""Data: the three sources, normalisation, the paper's augmentation, bad input."""

import functools
import os
import shutil
import time

import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_processes_share_every_global_batch, train_batches

from keras_preact import choices
from keras_preact.training import data

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "cifar10-sample")
CIFAR10 = choices.DATASETS["cifar10"]
TF_DATA = data.TFDataPipeline()
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_image_folder_source():
    train, test = data.load("cifar10", SAMPLE)
    assert train.images.shape == (30, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (30, 32, 32, 3)
    assert train.labels.dtype == np.int32
    np.testing.assert_array_equal(train.labels, np.repeat(np.arange(10), 3))  # sorted folder order
    # libjpeg's accurate integer IDCT (Pillow's, and what both pipelines read), not TensorFlow's
    # default fast one, which is up to 5 levels off.
    cat = tf.io.read_file(os.path.join(SAMPLE, "train", "cat", "0000.jpg"))
    np.testing.assert_array_equal(train.images[CLASSES.index("cat") * 3], tf.io.decode_jpeg(cat, dct_method="INTEGER_ACCURATE").numpy())


def test_tfds_source_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        train, test = data.load("cifar100")
    assert train.images.shape == (12, 32, 32, 3) and train.images.dtype == np.uint8
    assert len(test) == 12 and train.labels.max() < 100


def test_tfds_failure_explains_data_dir(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(RuntimeError, match=r"Point data_dir at an image folder with train/<class>/\*.jpg and test/<class>/\*.jpg, or at a TFDS data directory"):
        data.load("cifar10", str(tmp_path))


def test_array_source():
    images = np.zeros((4, 32, 32, 3), np.uint8)
    split = data.from_arrays(images, [[0], [1], [2], [3]])
    assert split.labels.tolist() == [0, 1, 2, 3] and split.labels.dtype == np.int32
    assert len(split.subset(2)) == 2


def test_eval_pipeline_normalises_only():
    train, _ = data.load("cifar10", SAMPLE)
    batches = list(TF_DATA.eval_batches(train, CIFAR10, batch_size=8))
    assert [len(y) for _, y in batches] == [8, 8, 8, 6]  # every example, in order
    x = np.concatenate([b[0].numpy() for b in batches])
    assert x.dtype == np.float32
    expected = (train.images.astype(np.float32) - np.array(CIFAR10.mean)) / np.array(CIFAR10.std)
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)


def batches(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_train_pipeline_shapes_and_reshuffling():
    train, _ = data.load("cifar10", SAMPLE)
    both = batches(train_batches(TF_DATA, train, batch_size=8, seed=3, epochs=2))
    assert len(both) == 6  # 30 images: each epoch drops its last partial batch
    assert both[0][0].shape == (8, 32, 32, 3) and both[0][0].dtype == np.float32
    assert both[0][1].dtype == np.int32
    order1 = np.concatenate([y for _, y in both[:3]])
    order2 = np.concatenate([y for _, y in both[3:]])
    assert not np.array_equal(order1, order2) or not np.array_equal(both[0][0], both[3][0])
    again = batches(train_batches(TF_DATA, train, batch_size=8, seed=3, epochs=2))
    for (xa, ya), (xb, yb) in zip(both, again):  # reproducible with the seed
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    other = batches(train_batches(TF_DATA, train, batch_size=8, seed=4, epochs=1))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(both, other))


def test_an_epoch_depends_on_the_seed_and_its_number_only():
    """What a resumed run sees: epoch 2 started on its own equals epoch 2 after epoch 1."""
    train, _ = data.load("cifar10", SAMPLE)
    uninterrupted = batches(train_batches(TF_DATA, train, batch_size=8, seed=5, epochs=3))
    resumed = batches(train_batches(TF_DATA, train, batch_size=8, seed=5, epochs=3, first_epoch=2))
    assert len(resumed) == 3
    for (xa, ya), (xb, yb) in zip(uninterrupted[6:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_processes_share_every_global_batch():
    train, _ = data.load("cifar10", SAMPLE)
    assert_processes_share_every_global_batch(functools.partial(train_batches, TF_DATA), train, batches)
    with pytest.raises(ValueError, match="batch_size=8 must divide evenly over 3 processes"):
        train_batches(TF_DATA, train, batch_size=8, process=(0, 3))


def windows(image):
    """Every 32x32 crop of the zero-padded image, flipped or not: (dy, dx, flipped) -> crop."""
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    out = {}
    for dy in range(9):
        for dx in range(9):
            crop = padded[dy : dy + 32, dx : dx + 32]
            out[(dy, dx, False)] = crop
            out[(dy, dx, True)] = crop[:, ::-1]
    return out


def test_augmentation_is_a_flip_and_a_crop_of_the_zero_padded_image():
    image = np.random.default_rng(0).normal(size=(32, 32, 3)).astype(np.float32)
    candidates = windows(image)
    seen = set()
    for seed in range(60):
        out = data.augment(tf.constant(image), tf.constant([seed, 7], tf.int64)).numpy()
        matches = [key for key, crop in candidates.items() if np.array_equal(crop, out)]
        assert len(matches) == 1, f"seed {seed}: not a crop of the padded image"
        seen.add(matches[0])
    assert {flipped for _, _, flipped in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 20  # offsets spread over the 9x9 range


# --- bad input --------------------------------------------------------------------------------


def test_unknown_dataset():
    with pytest.raises(ValueError, match="Unknown dataset='mnist'. Valid values: 'cifar10', 'cifar100'"):
        data.load("mnist", SAMPLE)


def test_missing_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist' does not exist"):
        data.load("cifar10", str(tmp_path / "does-not-exist"))


def test_unreadable_image(sample_copy):
    bad = sample_copy / "train" / "dog" / "0001.jpg"
    bad.write_bytes(b"this is not a JPEG")
    with pytest.raises(ValueError, match=r"Cannot decode .*train/dog/0001.jpg: not a readable JPEG or PNG"):
        data.load("cifar10", str(sample_copy))


def test_a_class_folder_that_is_a_broken_link_is_named(sample_copy):
    os.symlink(sample_copy / "nowhere", sample_copy / "train" / "zebra")
    with pytest.raises(ValueError, match=r"train/zebra is a broken link: fix or remove it"):
        data.load("cifar10", str(sample_copy))


def test_half_an_image_folder_is_named(sample_copy):
    import shutil

    shutil.rmtree(sample_copy / "test")
    with pytest.raises(FileNotFoundError, match=r"has train/ but no test/: an image folder holds both"):
        data.load("cifar10", str(sample_copy))


def test_wrong_sized_image(sample_copy):
    png = tf.io.encode_png(tf.zeros((16, 24, 3), tf.uint8)).numpy()
    (sample_copy / "test" / "cat" / "big.png").write_bytes(png)
    with pytest.raises(ValueError, match=r"test/cat/big.png is 24x16; CIFAR images must be 32x32 RGB"):
        data.load("cifar10", str(sample_copy))


def test_empty_class_folder(sample_copy):
    for f in (sample_copy / "train" / "frog").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=r"train/frog has no .jpg or .png images"):
        data.load("cifar10", str(sample_copy))


def test_class_folders_differ(sample_copy):
    shutil.rmtree(sample_copy / "test" / "ship")
    with pytest.raises(ValueError, match=r"train and test have different class folders \(ship differ\)"):
        data.load("cifar10", str(sample_copy))


def test_too_many_classes_for_dataset(sample_copy):
    for split in ("train", "test"):
        shutil.copytree(sample_copy / split / "cat", sample_copy / split / "zebra")
    with pytest.raises(ValueError, match=r"labels 0..10, outside 0..9: is this the right dataset"):
        data.load("cifar10", str(sample_copy))


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((2, 32, 32, 3), np.float32), [0, 1], "must be uint8 pixels"),
        (np.zeros((2, 28, 28, 3), np.uint8), [0, 1], r"shape \[N, 32, 32, 3\], got \[2, 28, 28, 3\]"),
        (np.zeros((2, 32, 32, 3), np.uint8), [0], "2 images but 1 labels"),
    ],
)
def test_bad_arrays(images, labels, message):
    with pytest.raises(ValueError, match=message):
        data.from_arrays(images, labels)


def test_subset_is_class_balanced_on_class_sorted_folders():
    train, _ = data.load("cifar10", SAMPLE)  # sorted by class: 3 airplanes, 3 automobiles, ...
    subset = train.subset(20)
    assert np.bincount(subset.labels, minlength=10).tolist() == [2] * 10
    np.testing.assert_array_equal(subset.images[0], train.images[0])  # the first airplane
    np.testing.assert_array_equal(train.subset(20).images, subset.images)  # the same every time


def test_subset_bounds():
    split = data.from_arrays(np.zeros((4, 32, 32, 3), np.uint8), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="train_subset=5 must be between 1 and the split's 4 images"):
        split.subset(5)


def test_hidden_files_and_folders_are_skipped(sample_copy):
    (sample_copy / "train" / "cat" / "._0000.jpg").write_bytes(b"macOS resource fork, not a JPEG")
    (sample_copy / "train" / ".ipynb_checkpoints").mkdir()
    (sample_copy / "test" / "dog" / ".DS_Store").write_bytes(b"\0")
    train, test = data.load("cifar10", str(sample_copy))
    assert len(train) == len(test) == 30 and train.class_names == tuple(CLASSES)


def test_a_folder_named_like_an_image(sample_copy):
    (sample_copy / "train" / "cat" / "album.jpg").mkdir()
    with pytest.raises(ValueError, match=r"train/cat/album.jpg is a folder, not an image"):
        data.load("cifar10", str(sample_copy))


@pytest.mark.parametrize("name", ["notes.txt", "photo.webp", "raw"])
def test_a_file_that_is_not_a_jpeg_or_png_is_named_not_skipped(sample_copy, name):
    (sample_copy / "train" / "cat" / name).write_bytes(b"\0")
    with pytest.raises(ValueError, match=rf"train/cat/{name} is not a .jpg or .png file"):
        data.load("cifar10", str(sample_copy))


def test_a_folder_inside_a_class_folder(sample_copy):
    (sample_copy / "train" / "cat" / "more").mkdir()
    with pytest.raises(ValueError, match=r"train/cat/more is a folder inside a class folder"):
        data.load("cifar10", str(sample_copy))


def test_a_broken_link(sample_copy):
    os.symlink(sample_copy / "nowhere.jpg", sample_copy / "test" / "cat" / "gone.jpg")
    with pytest.raises(ValueError, match=r"test/cat/gone.jpg is a broken link or not a regular file"):
        data.load("cifar10", str(sample_copy))


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "cifar.zip").write_bytes(b"PK")
    with pytest.raises(NotADirectoryError, match=r"cifar.zip' is a file; pass the folder that holds train/ and test/"):
        data.load("cifar10", str(tmp_path / "cifar.zip"))


def test_empty_data_dir_offline_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "TFDS_DOWNLOAD_HOST", ("download-host.invalid", 443))  # unreachable by design
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"holds no prepared 'cifar10' and its download host download-host.invalid cannot be reached"):
        data.load("cifar10", str(tmp_path))
    assert time.perf_counter() - started < 60  # not TFDS's minutes of download retries
