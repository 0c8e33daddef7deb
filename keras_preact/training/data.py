"""CIFAR-10/100 as tf.data pipelines: three sources, the paper's augmentation, per-epoch seeds.

Sources give uint8 arrays (decoded once, kept in memory); `train_dataset` and `eval_dataset` turn
them into batched pipelines that normalise with the dataset's constants
(`keras_preact.choices.DATASETS`, the same the exported serving signature applies). Epoch e's order
and augmentation are functions of (seed, e) alone, so a run resumed at epoch e sees exactly what an
uninterrupted run would.
"""

import dataclasses
import os
import socket

import numpy as np
import tensorflow as tf

from keras_preact import choices, runtime
from keras_preact.model import preprocessing

IMAGE_SIZE = 32
PADDING = 4
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TFDS_DOWNLOAD_HOST = ("www.cs.toronto.edu", 443)  # where TFDS fetches CIFAR-10/100


@dataclasses.dataclass
class Split:
    """One split in memory: uint8 images [N, 32, 32, 3] and int32 labels [N]."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple = None  # an image folder's class folders, in label order

    def __len__(self):
        return len(self.labels)

    def shard(self, index, count):
        """Every `count`-th example from `index` on: one process's share of an evaluation."""
        return Split(self.images[index::count], self.labels[index::count], self.class_names)

    def subset(self, count):
        """`count` examples, taken class by class in turn (the first of each class, then the
        second, ...): class-balanced even where the source is sorted by class, as image folders
        are, and the same examples every time."""
        if count is None:
            return self
        if choices.check_count("train_subset", count) > len(self):
            raise ValueError(f"train_subset={count} must be between 1 and the split's {len(self)} images.")
        rank_in_class = np.empty(len(self), np.int64)
        for label in np.unique(self.labels):
            members = np.flatnonzero(self.labels == label)
            rank_in_class[members] = np.arange(len(members))
        chosen = np.lexsort((self.labels, rank_in_class))[:count]
        chosen.sort()  # keep the source's order among the chosen
        return Split(self.images[chosen], self.labels[chosen], self.class_names)


# --- sources ----------------------------------------------------------------------------------


def load(name, data_dir=None):
    """Loads `name` ("cifar10" or "cifar100") as (train, test) Splits.

    `data_dir` holding `train/<class>/*` and `test/<class>/*` is read as an image folder; any other
    `data_dir` (or None) is TFDS's data directory, which downloads when online.
    """
    info = choices.TRAINING_DATASETS[name]
    if data_dir is not None:
        data_dir = os.fspath(data_dir)
        if not os.path.exists(data_dir):
            raise FileNotFoundError(
                f"data_dir {data_dir!r} does not exist. Pass an image folder (train/<class>/*, "
                "test/<class>/*) or a TFDS data directory (create it first to download into it)."
            )
        if not os.path.isdir(data_dir):
            raise NotADirectoryError(f"data_dir {data_dir!r} is a file; pass the folder that holds train/ and test/.")
    if data_dir is not None and is_image_folder(data_dir):
        train, test = load_image_folder(data_dir)
    else:
        train, test = load_tfds(name, data_dir)
    for split_name, split in (("train", train), ("test", test)):
        check_split(split, info, f"{name} {split_name} split")
    return train, test


def from_arrays(images, labels):
    """A Split from in-memory arrays: uint8 images [N, 32, 32, 3] and integer labels [N]."""
    images = np.asarray(images)
    labels = np.asarray(labels).reshape(-1)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels (0-255), got dtype {images.dtype}.")
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"images must have shape [N, 32, 32, 3], got {list(images.shape)}.")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    return Split(images, labels.astype(np.int32))


def check_split(split, info, description):
    if len(split) == 0:
        raise ValueError(f"The {description} is empty.")
    low, high = int(split.labels.min()), int(split.labels.max())
    if low < 0 or high >= info.classes:
        raise ValueError(
            f"The {description} has labels {low}..{high}, outside 0..{info.classes - 1}: is this "
            "the right dataset?"
        )


def is_image_folder(data_dir):
    return all(os.path.isdir(os.path.join(data_dir, split)) for split in ("train", "test"))


def _visible(folder):
    """Entries of `folder` in name order, without hidden ones (".ipynb_checkpoints", macOS "._x")."""
    return sorted((entry for entry in os.scandir(folder) if not entry.name.startswith(".")), key=lambda e: e.name)


def load_image_folder(data_dir):
    """Reads `data_dir/{train,test}/<class>/*.{jpg,png}`; labels follow sorted class folder names.

    Hidden files and folders are skipped; anything else that is not an image is an error naming it.
    """
    classes = [entry.name for entry in _visible(os.path.join(data_dir, "train")) if entry.is_dir()]
    if not classes:
        raise ValueError(f"{os.path.join(data_dir, 'train')} has no class folders.")
    test_classes = [entry.name for entry in _visible(os.path.join(data_dir, "test")) if entry.is_dir()]
    if test_classes != classes:
        raise ValueError(
            f"{data_dir}: train and test have different class folders "
            f"({', '.join(sorted(set(classes) ^ set(test_classes)))} differ)."
        )
    return tuple(_read_folder_split(os.path.join(data_dir, split), classes) for split in ("train", "test"))


def _image_files(folder):
    files = []
    for entry in _visible(folder):
        if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        if entry.is_dir():
            raise ValueError(f"{entry.path} is a folder, not an image: rename or move it.")
        if not entry.is_file():
            raise ValueError(f"{entry.path} is a broken link or not a regular file: remove or fix it.")
        files.append(entry.path)
    if not files:
        raise ValueError(f"Class folder {folder} has no .jpg or .png images.")
    return files


def _read_folder_split(split_dir, classes):
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = _image_files(os.path.join(split_dir, name))
        paths += files
        labels += [label] * len(files)
    images = np.empty((len(paths), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    decoded = tf.data.Dataset.from_tensor_slices(paths).map(
        _decode_file, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    try:
        for index, image in enumerate(decoded.as_numpy_iterator()):
            if image.shape != images.shape[1:]:
                raise ValueError(
                    f"{paths[index]} is {image.shape[1]}x{image.shape[0]} with {image.shape[2]} "
                    "channels; CIFAR images must be 32x32 RGB."
                )
            images[index] = image
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.PermissionDeniedError):
        raise ValueError(f"Cannot decode {_first_unreadable(paths)}: not a readable JPEG or PNG image.") from None
    return Split(images, np.asarray(labels, np.int32), tuple(classes))


def _decode_file(path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=0, expand_animations=False)
    return image


def _first_unreadable(paths):
    """Finds the file that failed to decode (the parallel pipeline does not say which)."""
    for path in paths:
        try:
            _decode_file(tf.constant(path))
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.PermissionDeniedError):
            return path
    return "an image"


def load_tfds(name, data_dir=None):
    """Loads CIFAR from TensorFlow Datasets (downloads it once when online).

    Offline, with nothing prepared in `data_dir`, it fails at once instead of after TFDS's retries.
    """
    import tensorflow_datasets as tfds

    where = f"data_dir={data_dir!r}" if data_dir else "TFDS's default data directory"
    advice = (
        "Point data_dir at an image folder with train/<class>/*.jpg and test/<class>/*.jpg, or at a "
        f"TFDS data directory that holds {name!r}."
    )

    def tfds_load(download):
        try:
            return tfds.load(name, split=["train", "test"], data_dir=data_dir, as_supervised=True, download=download)
        except AssertionError:  # "could not find data": nothing prepared there
            raise
        except Exception as error:  # TFDS raises many types for a failed download
            raise RuntimeError(
                f"Could not load {name!r} from TensorFlow Datasets ({where}): {type(error).__name__}: "
                f"{str(error)[:300]}. {advice}"
            ) from error

    try:
        splits = tfds_load(download=False)
    except AssertionError:
        if not _reachable(TFDS_DOWNLOAD_HOST):  # fail now, not after TFDS's download retries
            raise RuntimeError(
                f"{where} holds no prepared {name!r} and its download host {TFDS_DOWNLOAD_HOST[0]} "
                f"cannot be reached (offline?). {advice}"
            ) from None
        splits = tfds_load(download=True)
    return tuple(_to_split(split) for split in splits)


def _reachable(address, timeout=5.0):
    try:
        socket.create_connection(address, timeout=timeout).close()
        return True
    except OSError:
        return False


def _to_split(dataset):
    # Large batches, not batch_size=-1 in tfds.load, which aborts the process on mocked data.
    images, labels = zip(*dataset.batch(10_000).as_numpy_iterator())
    return Split(np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32))


# --- pipelines --------------------------------------------------------------------------------


def normalize(images, info):
    """uint8 pixels -> float32, per-channel (x - mean) / std of the dataset record `info`."""
    return preprocessing.normalize(tf.cast(images, tf.float32), info)


def augment(image, seed):
    """The paper's augmentation of one normalised image: random flip, 4-px zero pad, random crop.

    Padding happens after normalisation, so the border is zeros in normalised space (the official
    code's order). `seed` is a [2] int tensor: stateless ops make the pipeline reproducible.
    """
    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = tf.pad(image, [[PADDING, PADDING], [PADDING, PADDING], [0, 0]])
    return tf.image.stateless_random_crop(image, (IMAGE_SIZE, IMAGE_SIZE, 3), crop_seed)


def epoch_key(seed, epoch):
    """The [2] int64 seed of everything random in `epoch` of a run seeded with `seed`."""
    base = tf.constant([seed, 0x5EED], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))


def epoch_order(seed, epoch, size):
    """Epoch `epoch`'s permutation of `size` examples: a function of (seed, epoch) alone."""
    return tf.argsort(tf.random.stateless_uniform([size], seed=epoch_key(seed, epoch)), stable=True)


def train_dataset(split, info, batch_size, seed=0, epochs=1, first_epoch=0, process=(0, 1)):
    """Shuffled and augmented batches of epochs `first_epoch` … `epochs - 1`, one after another.

    Each epoch drops the last partial global batch. `process=(index, count)`: this process's
    slice of every global batch of `batch_size` (batch_size / count examples), so that `count`
    processes together see exactly the batches one process would.
    """
    index, count = process
    if batch_size % count:
        raise ValueError(f"batch_size={batch_size} must divide evenly over {count} processes.")
    if len(split) < batch_size:
        raise ValueError(f"The training split has {len(split)} images, fewer than one batch of {batch_size}.")
    steps, local = len(split) // batch_size, batch_size // count
    images, labels = tf.constant(split.images), tf.constant(split.labels)

    def epoch_examples(epoch):
        order = epoch_order(seed, epoch, len(split))[: steps * batch_size]
        mine = tf.reshape(tf.reshape(order, [steps, count, local])[:, index], [-1])
        return tf.data.Dataset.from_tensor_slices((mine, tf.fill([steps * local], epoch)))

    def example(position, epoch):
        key = tf.random.experimental.stateless_fold_in(epoch_key(seed, epoch), tf.cast(position, tf.int64))
        return augment(normalize(tf.gather(images, position), info), key), tf.gather(labels, position)

    dataset = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_examples)
    dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _sized(dataset.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE))


def eval_dataset(split, info, batch_size):
    """Normalised only, in order, every example."""
    dataset = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    dataset = dataset.batch(batch_size).map(lambda x, y: (normalize(x, info), y), num_parallel_calls=tf.data.AUTOTUNE)
    return _sized(dataset.prefetch(tf.data.AUTOTUNE))


def _sized(dataset):
    """The pipeline's threads: as many as the CPUs this process may use (runtime.cpus). Under a
    MultiWorkerMirroredStrategy each worker takes its share of every batch (sources in memory
    have no files to shard by)."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = runtime.cpus()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
