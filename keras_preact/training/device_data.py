"""The on-device input pipeline: the split kept on the accelerator, batches made there.

For the JAX and torch backends, and no TensorFlow. A split is uploaded once as a uint8 array
(50,000 CIFAR images are 154 MB); every step gathers its batch from it and normalises, flips,
zero-pads and crops it with vectorised `keras.ops` (one XLA computation on JAX), so no image
crosses the host-device link during training. The semantics are those of the tf.data pipeline
(`data.TFDataPipeline`): the paper's augmentation per image (random flip, 4-pixel zero padding in
normalised space, random 32x32 crop), epoch e's order and augmentation a function of (seed, e)
alone (a resumed run sees what an uninterrupted one would), the last partial global batch dropped,
and `process=(index, count)` slicing every global batch for multi-process training.

The random draws of an epoch (a permutation, a flip and a crop offset per image: 150,000 numbers
for CIFAR-10) are made once per epoch with NumPy and uploaded, so the same (seed, epoch) gives the
same batches on JAX and torch, on CPU and GPU. They differ from the tf.data pipeline's, whose
stateless TensorFlow generator has no NumPy equivalent; a run keeps the pipeline it started with.

Keras takes the batches as they are: `fit` wraps a `keras.utils.PyDataset` in its
`PyDatasetAdapter`, whose JAX iterator passes `jax.Array`s through and whose torch `DataLoader`
(`batch_size=None`, no workers, no pinning) passes tensors already on Keras' device through.
"""

import functools

import keras
import numpy as np
from keras import ops

from keras_preact.model import preprocessing
from keras_preact.training import sources
from keras_preact.training.pipelines import InputPipeline
from keras_preact.training.sources import IMAGE_SIZE, PADDING


def load(name, data_dir, reading=None):
    """(train, test) Splits of an image folder, read without TensorFlow (`sources.load`, as
    `reading` says)."""
    return sources.load(name, data_dir, other_source=_needs_tensorflow, reading=reading)


def _needs_tensorflow(name, data_dir):
    where = "no data_dir" if data_dir is None else f"data_dir {data_dir!r}, which has no train/ and test/ folders"
    raise ValueError(
        f"The on-device input pipeline reads {name} from an image folder and got {where}. Pass a "
        "folder with train/<class>/*.jpg and test/<class>/*.jpg, or use input_pipeline='tf_data' "
        "(needs TensorFlow) to read TensorFlow Datasets."
    )


def epoch_draws(seed, epoch, size):
    """Everything random in epoch `epoch` of a run seeded with `seed`, for `size` images.

    Returns (order, flips, offsets): a permutation of the images, whether each image is mirrored,
    and each image's (dy, dx) crop offset in 0..8 of the padded image. A function of
    (seed, epoch, size) alone.

    >>> order, flips, offsets = epoch_draws(seed=0, epoch=3, size=5)
    >>> sorted(order.tolist()), flips.shape, offsets.shape
    ([0, 1, 2, 3, 4], (5,), (5, 2))
    >>> bool((epoch_draws(0, 3, 5)[0] == order).all())
    True
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(size).astype(np.int32)
    flips = rng.random(size) < 0.5
    offsets = rng.integers(0, 2 * PADDING + 1, size=(size, 2), dtype=np.int32)
    return order, flips, offsets


def augment(images, positions, flips, offsets, info):
    """The paper's augmentation of `images[positions]`, all images of the batch at once.

    `images`: uint8 [N, 32, 32, 3]; `positions`, `flips`: [B]; `offsets`: [B, 2] (dy, dx) in 0..8;
    `info`: the `choices.Dataset` record whose constants normalise.
    Each image is mirrored where `flips` says, padded with 4 pixels of zeros in normalised space
    (the official code's order: normalise, then pad) and cropped to 32x32 at (dy, dx) — the crop
    of the *mirrored* padded image, as the tf.data pipeline flips before it pads and crops.
    Batch selection, flip and crop are one gather from the uint8 split: output pixel (b, i, j)
    reads source row dy + i - 4 and column dx + j - 4 (35 - dx - j when mirrored), and is zero
    where that falls in the padding.
    """
    steps = ops.arange(IMAGE_SIZE, dtype="int32")
    dy, dx = offsets[:, :1], offsets[:, 1:]
    rows = dy + steps - PADDING  # [B, 32]
    cols = ops.where(flips[:, None], IMAGE_SIZE - 1 + PADDING - dx - steps, dx + steps - PADDING)
    inside = ((rows >= 0) & (rows < IMAGE_SIZE))[:, :, None] & ((cols >= 0) & (cols < IMAGE_SIZE))[:, None, :]
    rows, cols = ops.clip(rows, 0, IMAGE_SIZE - 1), ops.clip(cols, 0, IMAGE_SIZE - 1)
    pixel = (positions[:, None, None] * IMAGE_SIZE + rows[:, :, None]) * IMAGE_SIZE + cols[:, None, :]  # [B, 32, 32]
    pixels = ops.take(ops.reshape(images, (-1, 3)), pixel, axis=0)
    return ops.where(inside[..., None], _normalize(pixels, info), 0.0)


def _normalize(images, info):
    return preprocessing.normalize(ops.cast(images, "float32"), info)


def _train_batch(images, labels, positions, flips, offsets, step, info):
    chosen = positions[step]
    return (
        augment(images, chosen, ops.take(flips, chosen, axis=0), ops.take(offsets, chosen, axis=0), info),
        ops.take(labels, chosen, axis=0),
    )


def _compiled(function, info):
    """`function` of tensors and the record `info` as one XLA computation on JAX (`info` a
    constant of it); torch runs its few kernels eagerly."""
    function = functools.partial(function, info=info)
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(function)
    return function


class DevicePipeline(InputPipeline):
    """Batches made on the accelerator (jax, torch): the `pipelines.InputPipeline` of this module."""

    def load(self, dataset, data_dir, reading=None):
        return load(dataset, data_dir, reading)

    def train_batches(self, split, info, plan, seed=0, first_epoch=0, augmentation="cifar"):
        if augmentation == "imagenet":
            from keras_preact.training import imagenet_augment  # it builds on this module

            return imagenet_augment.TrainBatches(split, info, plan, seed, first_epoch)
        return TrainBatches(split, info, plan, seed, first_epoch)

    def eval_batches(self, split, info, batch_size):
        return EvalBatches(split, info, batch_size)


class _SplitOnDevice(keras.utils.PyDataset):
    def __init__(self, split):
        super().__init__()  # one worker, no queue: Keras calls __getitem__ in order, in this thread
        self.images = ops.convert_to_tensor(split.images)
        self.labels = ops.convert_to_tensor(split.labels)

    def _check_index(self, index, end):
        if index < 0 or (end is not None and index >= end):
            raise IndexError(f"Batch {index} of {'an endless stream' if end is None else end}.")


class TrainBatches(_SplitOnDevice):
    """Shuffled and augmented batches of epochs `first_epoch` … `epochs - 1`, one after another:
    a `keras.utils.PyDataset` for `fit` (pass `steps_per_epoch=batches.steps`); batch i is
    step i % steps of epoch first_epoch + i // steps, for any i (the epochs go on past the run's).

    `plan`: the run's `pipelines.BatchPlan` (this process's slice of every global batch).
    """

    def __init__(self, split, info, plan, seed=0, first_epoch=0):
        if not 0 <= first_epoch < plan.epochs:
            raise ValueError(f"first_epoch={first_epoch} must be in 0..{plan.epochs - 1} (epochs={plan.epochs}).")
        super().__init__(split)
        self.plan, self.seed, self.first_epoch = plan, seed, first_epoch
        self.steps = plan.steps
        self._batch = _compiled(_train_batch, info)
        self._epoch, self._draws = None, None

    def __len__(self):
        return self.steps * (self.plan.epochs - self.first_epoch)

    @property
    def num_batches(self):
        # None: to Keras an endless stream of epochs, each a function of (seed, epoch), which is
        # what `__getitem__` serves. So fit never reorders the batches (with its default
        # shuffle=True it permutes a finite PyDataset's indices, here across the whole run), and
        # its JAX trainer, which off the CPU reads one batch ahead, gets the first batch of the
        # epoch after the run's last (made, never trained on). fit stops after epochs x
        # steps_per_epoch; len() is the run's count.
        return None

    def _upload_draws(self, epoch):
        """This process's positions [steps, local] and every image's flip and offsets for `epoch`."""
        index, count = self.plan.process
        order, flips, offsets = epoch_draws(self.seed, epoch, len(self.labels))
        positions = order[: self.steps * self.plan.batch_size].reshape(self.steps, count, -1)[:, index]
        return tuple(ops.convert_to_tensor(value) for value in (positions, flips, offsets))

    def __getitem__(self, index):
        self._check_index(index, end=None)  # past len(): the next epochs (see num_batches)
        epoch, step = divmod(index, self.steps)
        epoch += self.first_epoch
        if epoch != self._epoch:
            self._epoch, self._draws = epoch, self._upload_draws(epoch)
        return self._batch(self.images, self.labels, *self._draws, step)


class EvalBatches(_SplitOnDevice):
    """Every example in order, normalised only, in batches of `batch_size` (the last may be
    smaller): a `keras.utils.PyDataset` for `evaluate` and `validation_data`."""

    def __init__(self, split, info, batch_size):
        super().__init__(split)
        self.batch_size = batch_size
        self._normalize = _compiled(_normalize, info)

    def __len__(self):
        return -(-len(self.labels) // self.batch_size)

    def __getitem__(self, index):
        self._check_index(index, end=len(self))
        batch = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self._normalize(self.images[batch]), self.labels[batch]

