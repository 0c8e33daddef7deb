"""CIFAR-10/100 as tf.data pipelines: three sources, the paper's augmentation, one normalisation.

Sources give uint8 arrays (decoded once, kept in memory); `train_dataset` and `eval_dataset` turn
them into batched pipelines. The per-channel constants here are the only ones in the package: the
exported serving signature normalises with the same table.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

IMAGE_SIZE = 32
PADDING = 4
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    classes: int
    mean: tuple  # per channel, on 0-255 pixels
    std: tuple


# The official code's constants (fb.resnet.torch datasets/cifar*.lua).
DATASETS = {
    "cifar10": DatasetInfo(10, (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
    "cifar100": DatasetInfo(100, (129.3, 124.1, 112.4), (68.2, 65.4, 70.4)),
}


@dataclasses.dataclass
class Split:
    """One split in memory: uint8 images [N, 32, 32, 3] and int32 labels [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)

    def subset(self, count):
        """`count` examples, taken class by class in turn (the first of each class, then the
        second, ...): class-balanced even where the source is sorted by class, as image folders
        are, and the same examples every time."""
        if count is None:
            return self
        if count < 1 or count > len(self):
            raise ValueError(f"train_subset={count} must be between 1 and the split's {len(self)} images.")
        rank_in_class = np.empty(len(self), np.int64)
        for label in np.unique(self.labels):
            members = np.flatnonzero(self.labels == label)
            rank_in_class[members] = np.arange(len(members))
        chosen = np.lexsort((self.labels, rank_in_class))[:count]
        chosen.sort()  # keep the source's order among the chosen
        return Split(self.images[chosen], self.labels[chosen])


def dataset_info(name):
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Valid datasets: {', '.join(DATASETS)}.")
    return DATASETS[name]


# --- sources ----------------------------------------------------------------------------------


def load(name, data_dir=None):
    """Loads `name` ("cifar10" or "cifar100") as (train, test) Splits.

    `data_dir` holding `train/<class>/*` and `test/<class>/*` is read as an image folder; any other
    `data_dir` (or None) is TFDS's data directory, which downloads when online.
    """
    info = dataset_info(name)
    if data_dir is not None and not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"data_dir {data_dir!r} does not exist. Pass an image folder (train/<class>/*, "
            "test/<class>/*) or a TFDS data directory (create it first to download into it)."
        )
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
            "the right --dataset?"
        )


def is_image_folder(data_dir):
    return all(os.path.isdir(os.path.join(data_dir, split)) for split in ("train", "test"))


def load_image_folder(data_dir):
    """Reads `data_dir/{train,test}/<class>/*.{jpg,png}`; labels follow sorted class folder names."""
    classes = sorted(entry.name for entry in os.scandir(os.path.join(data_dir, "train")) if entry.is_dir())
    if not classes:
        raise ValueError(f"{os.path.join(data_dir, 'train')} has no class folders.")
    test_classes = sorted(entry.name for entry in os.scandir(os.path.join(data_dir, "test")) if entry.is_dir())
    if test_classes != classes:
        raise ValueError(
            f"{data_dir}: train and test have different class folders "
            f"({', '.join(sorted(set(classes) ^ set(test_classes)))} differ)."
        )
    return tuple(_read_folder_split(os.path.join(data_dir, split), classes) for split in ("train", "test"))


def _read_folder_split(split_dir, classes):
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(split_dir, name)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise ValueError(f"Class folder {folder} has no .jpg or .png images.")
        paths += [os.path.join(folder, f) for f in files]
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
    except tf.errors.InvalidArgumentError:
        raise ValueError(f"Cannot decode {_first_unreadable(paths)}: not a readable JPEG or PNG image.") from None
    return Split(images, np.asarray(labels, np.int32))


def _decode_file(path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=0, expand_animations=False)
    return image


def _first_unreadable(paths):
    """Finds the file that failed to decode (the parallel pipeline does not say which)."""
    for path in paths:
        try:
            _decode_file(tf.constant(path))
        except tf.errors.InvalidArgumentError:
            return path
    return "an image"


def load_tfds(name, data_dir=None):
    """Loads CIFAR from TensorFlow Datasets (downloads it once when online)."""
    import tensorflow_datasets as tfds

    try:
        splits = tfds.load(name, split=["train", "test"], data_dir=data_dir, as_supervised=True)
    except Exception as error:  # TFDS raises many types for a failed download
        raise RuntimeError(
            f"Could not load {name!r} from TensorFlow Datasets (data_dir={data_dir!r}): "
            f"{type(error).__name__}: {str(error)[:300]}\nOffline, point --data_dir at a prepared "
            "TFDS directory, or at an image folder with train/<class>/*.jpg and test/<class>/*.jpg "
            "(for example ../shared/data/cifar10-jpeg)."
        ) from error
    return tuple(_to_split(split) for split in splits)


def _to_split(dataset):
    # Large batches, not batch_size=-1 in tfds.load, which aborts the process on mocked data.
    images, labels = zip(*dataset.batch(10_000).as_numpy_iterator())
    return Split(np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32))


# --- pipelines --------------------------------------------------------------------------------


def normalize(images, info):
    """uint8 pixels -> float32, per-channel (x - mean) / std."""
    mean = tf.constant(info.mean, tf.float32)
    std = tf.constant(info.std, tf.float32)
    return (tf.cast(images, tf.float32) - mean) / std


def augment(image, seed):
    """The paper's augmentation of one normalised image: random flip, 4-px zero pad, random crop.

    Padding happens after normalisation, so the border is zeros in normalised space (the official
    code's order). `seed` is a [2] int tensor: stateless ops make the pipeline reproducible.
    """
    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = tf.pad(image, [[PADDING, PADDING], [PADDING, PADDING], [0, 0]])
    return tf.image.stateless_random_crop(image, (IMAGE_SIZE, IMAGE_SIZE, 3), crop_seed)


def train_dataset(split, info, batch_size, seed=0):
    """Shuffled (anew every epoch), augmented, batched; drops the last partial batch."""
    if len(split) < batch_size:
        raise ValueError(f"The training split has {len(split)} images, fewer than one batch of {batch_size}.")
    images = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    # One seed pair per example and epoch, drawn from a seeded stream that changes every epoch.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    dataset = tf.data.Dataset.zip(images.shuffle(len(split), seed=seed, reshuffle_each_iteration=True), seeds)
    dataset = dataset.map(
        lambda example, pair: (augment(normalize(example[0], info), pair), example[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(split, info, batch_size):
    """Normalised only, in order, every example."""
    dataset = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    dataset = dataset.batch(batch_size).map(lambda x, y: (normalize(x, info), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
