"""CIFAR-10/100 as tf.data pipelines: three sources, the paper's augmentation, per-epoch seeds.

Sources give uint8 arrays (decoded once, kept in memory; image folders and arrays come from the
TensorFlow-free `sources` module, which the on-device pipeline shares); `TFDataPipeline` turns
them into batched pipelines that normalise with the dataset's constants
(`keras_preact.model.preprocessing.normalize`, as the exported serving signature does). Epoch e's order
and augmentation are functions of (seed, e) alone, so a run resumed at epoch e sees exactly what an
uninterrupted run would.
"""

import socket

import numpy as np
import tensorflow as tf

from keras_preact import runtime
from keras_preact.model import preprocessing
from keras_preact.training import sources
from keras_preact.training.pipelines import InputPipeline
from keras_preact.training.sources import IMAGE_SIZE, PADDING, Split, from_arrays  # noqa: F401 (this module's API)

TFDS_DOWNLOAD_HOST = ("www.cs.toronto.edu", 443)  # where TFDS fetches CIFAR-10/100


# --- sources ----------------------------------------------------------------------------------


def load(name, data_dir=None, reading=None):
    """Loads `name` ("cifar10", "cifar100" or "folder") as (train, test) Splits.

    `data_dir` holding `train/<class>/*` and `test/<class>/*` is read as an image folder
    (`sources.read_image_folder`, as `reading` says); any other `data_dir` (or None) is TFDS's
    data directory, which downloads when online.
    """
    return sources.load(name, data_dir, other_source=load_tfds, reading=reading)


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


def _normalize(images, info):
    return preprocessing.normalize(tf.cast(images, tf.float32), info)


class TFDataPipeline(InputPipeline):
    """tf.data on the host, for every backend: the `pipelines.InputPipeline` of this module."""

    def load(self, dataset, data_dir, reading=None):
        return load(dataset, data_dir, reading)

    def train_batches(self, split, info, plan, seed=0, first_epoch=0, augmentation="cifar"):
        """A tf.data.Dataset of this process's `plan.local_batch`-image slices of every global batch."""
        if augmentation == "imagenet":
            from keras_preact.training import imagenet_augment

            augment_example = imagenet_augment.tf_augment_example(info)
        else:
            augment_example = lambda image, key: augment(_normalize(image, info), key)  # noqa: E731
        steps, local, (index, count) = plan.steps, plan.local_batch, plan.process
        images, labels = tf.constant(split.images), tf.constant(split.labels)

        def epoch_examples(epoch):
            order = epoch_order(seed, epoch, len(split))[: steps * plan.batch_size]
            mine = tf.reshape(tf.reshape(order, [steps, count, local])[:, index], [-1])
            return tf.data.Dataset.from_tensor_slices((mine, tf.fill([steps * local], epoch)))

        def example(position, epoch):
            key = tf.random.experimental.stateless_fold_in(epoch_key(seed, epoch), tf.cast(position, tf.int64))
            return augment_example(tf.gather(images, position), key), tf.gather(labels, position)

        dataset = tf.data.Dataset.range(first_epoch, plan.epochs).flat_map(epoch_examples)
        dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _sized(dataset.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE))

    def eval_batches(self, split, info, batch_size):
        dataset = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
        dataset = dataset.batch(batch_size).map(lambda x, y: (_normalize(x, info), y), num_parallel_calls=tf.data.AUTOTUNE)
        return _sized(dataset.prefetch(tf.data.AUTOTUNE))


def _sized(dataset):
    """The pipeline's threads: as many as the CPUs this process may use (runtime.cpus). Under a
    MultiWorkerMirroredStrategy each worker takes its share of every batch (sources in memory
    have no files to shard by)."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = runtime.cpus()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
