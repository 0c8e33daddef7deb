"""The ImageNet recipe's augmentation, as FAIR's fb.resnet.torch trained the paper's ImageNet models,
written once for both input pipelines.

Per training image: a random-sized crop (8%–100% of the area, aspect ratio 3/4–4/3, 10 tries, else
the whole image) resized to `image_size` (bilinear; fb.resnet.torch: bicubic), colour jitter
(brightness, contrast and saturation, each by a factor in 1 ± 0.4, in random order), PCA lighting
noise (AlexNet's, alphastd 0.1 with the ImageNet eigenvalues and eigenvectors), normalisation, and
a horizontal flip half the time. The crops are taken from the image as the folder reader stores it
(shorter side resized to image_size x 256/224, its centre square; `folders.Reading`), not from the
full-resolution file. Evaluation needs nothing here: the reader stores test images as the centre
`image_size` crop.

The formulas run on `xp`: `keras.ops` on a batch on the device pipeline, and `TF_OPS` (the same
functions on TensorFlow tensors) on one image in tf.data; `np` draws the device pipeline's
parameters on the host.
"""

import itertools
import types

import numpy as np
from keras import ops

from keras_preact.model import preprocessing
from keras_preact.training import device_data

AREA = (0.08, 1.0)
ASPECT = (3 / 4, 4 / 3)
ATTEMPTS = 10
JITTER = 0.4
LIGHTING_STD = 0.1
EIGENVALUES = (0.2175, 0.0188, 0.0045)
EIGENVECTORS = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
GRAY = (0.299, 0.587, 0.114)  # fb.resnet.torch's Grayscale
ORDERS = tuple(itertools.permutations(range(3)))  # brightness 0, contrast 1, saturation 2
UNIFORMS = ATTEMPTS * 5 + 5  # per try: area, aspect, swap, top, left; then flip, 3 jitters, order
PARAMETERS = 14  # top, left, height, width, flip, 3 jitter kinds, 3 jitter factors, 3 lighting shifts


# What `parameters` needs, on NumPy arrays (the device pipeline's host-side draws).
NUMPY_OPS = types.SimpleNamespace(where=np.where, floor=np.floor, sqrt=np.sqrt, stack=np.stack, cast=lambda x, dtype: np.asarray(x, dtype))


def _tf_ops():
    import tensorflow as tf

    return types.SimpleNamespace(
        where=tf.where, floor=tf.floor, sqrt=tf.sqrt, stack=tf.stack, minimum=tf.minimum, cast=tf.cast,
        clip=tf.clip_by_value, take=lambda x, indices, axis: tf.gather(x, indices, axis=axis),
        flip=lambda x, axis: tf.reverse(x, [axis]), mean=lambda x, axis, keepdims: tf.reduce_mean(x, axis, keepdims),
        arange=lambda n, dtype: tf.range(n, dtype=dtype),
    )


def parameters(xp, uniforms, normals, side):
    """Everything random about images of side `side`: [..., PARAMETERS] float32 from uniforms
    [..., UNIFORMS] in [0, 1) and standard normals [..., 3].

    >>> p = parameters(NUMPY_OPS, np.random.default_rng(0).random((4, UNIFORMS)), np.zeros((4, 3)), 64)
    >>> p.shape, bool((p[:, 2:4] <= 64).all()), bool((p[:, 0] + p[:, 2] <= 64).all())
    ((4, 14), True, True)
    """
    area = (AREA[0] + (AREA[1] - AREA[0]) * uniforms[..., 0 : 5 * ATTEMPTS : 5]) * side * side
    aspect = ASPECT[0] + (ASPECT[1] - ASPECT[0]) * uniforms[..., 1 : 5 * ATTEMPTS : 5]
    width, height = xp.floor(xp.sqrt(area * aspect) + 0.5), xp.floor(xp.sqrt(area / aspect) + 0.5)
    swap = uniforms[..., 2 : 5 * ATTEMPTS : 5] < 0.5
    height, width = xp.where(swap, width, height), xp.where(swap, height, width)
    top = xp.floor(uniforms[..., 3 : 5 * ATTEMPTS : 5] * (side - height + 1))
    left = xp.floor(uniforms[..., 4 : 5 * ATTEMPTS : 5] * (side - width + 1))
    zero = uniforms[..., 0] * 0.0  # of the draws' shape, in any namespace
    box = [zero, zero, zero + side, zero + side]
    for attempt in reversed(range(ATTEMPTS)):  # the first try that fits, else the whole image
        fits = (height[..., attempt] <= side) & (width[..., attempt] <= side)
        tried = (top[..., attempt], left[..., attempt], height[..., attempt], width[..., attempt])
        box = [xp.where(fits, new, old) for new, old in zip(tried, box)]
    extra = uniforms[..., 5 * ATTEMPTS :]
    flip = xp.where(extra[..., 0] < 0.5, 1.0, 0.0)
    order = xp.floor(extra[..., 4] * len(ORDERS))
    kinds = [zero] * 3
    for index, permutation in enumerate(ORDERS):
        kinds = [xp.where(order == index, float(kind), old) for kind, old in zip(permutation, kinds)]
    factors = [1.0 + JITTER * (2.0 * extra[..., 1 + i] - 1.0) for i in range(3)]
    alphas = [normals[..., j] * LIGHTING_STD * EIGENVALUES[j] for j in range(3)]
    shifts = [255.0 * sum(EIGENVECTORS[i][j] * alphas[j] for j in range(3)) for i in range(3)]
    return xp.cast(xp.stack([*box, flip, *kinds, *factors, *shifts], axis=-1), "float32")


def _sample_grid(xp, start, length, size, side):
    """Pixel-centre bilinear sample positions of `size` outputs over [start, start + length)."""
    positions = start[..., None] + (xp.arange(size, dtype="float32") + 0.5) * length[..., None] / size - 0.5
    positions = xp.clip(positions, 0.0, side - 1.0)
    low = xp.floor(positions)
    return xp.cast(low, "int32"), xp.cast(xp.minimum(low + 1.0, side - 1.0), "int32"), positions - low


def _crop(xp, flat, base, side, params, size):
    """The random-sized crops resized to size x size: bilinear reads of `flat` [M, 3] pixels,
    image b at rows base[b] .. base[b] + side*side."""
    rows = _sample_grid(xp, params[..., 0], params[..., 2], size, side)
    cols = _sample_grid(xp, params[..., 1], params[..., 3], size, side)
    flipped = params[..., 4][..., None] > 0.5
    cols = [xp.where(flipped, xp.flip(c, axis=-1), c) for c in cols]

    def read(row, col):
        index = base[..., None, None] + row[..., :, None] * side + col[..., None, :]
        return xp.cast(xp.take(flat, index, axis=0), "float32")

    row_weight, col_weight = rows[2][..., :, None, None], cols[2][..., None, :, None]
    top = read(rows[0], cols[0]) * (1.0 - col_weight) + read(rows[0], cols[1]) * col_weight
    bottom = read(rows[1], cols[0]) * (1.0 - col_weight) + read(rows[1], cols[1]) * col_weight
    return top * (1.0 - row_weight) + bottom * row_weight


def _gray(pixels):
    return sum(GRAY[c] * pixels[..., c : c + 1] for c in range(3))


def _jitter(xp, pixels, kind, factor):
    """Brightness (blend with black), contrast (with the mean gray) or saturation (with the
    pixel's gray), chosen by `kind` 0, 1 or 2 per image, as fb.resnet.torch's ColorJitter."""
    kind, factor = kind[..., None, None, None], factor[..., None, None, None]
    gray = _gray(pixels)
    toward = xp.where(kind < 0.5, 0.0 * gray, xp.where(kind < 1.5, xp.mean(gray, axis=(-3, -2), keepdims=True), gray))
    return pixels * factor + toward * (1.0 - factor)


def augment(xp, flat, base, side, params, info):
    """Augmented float32 images [..., size, size, 3] normalised with the `choices.Dataset` record
    `info` (size: `info.image_size`) from uint8 pixels `flat` [M, 3] (each image side x side,
    starting at row `base`) and `parameters`."""
    pixels = _crop(xp, flat, base, side, params, info.image_size)
    for slot in range(3):
        kind = params[..., 5 + slot]
        factor = xp.where(kind < 0.5, params[..., 8], xp.where(kind < 1.5, params[..., 9], params[..., 10]))
        pixels = _jitter(xp, pixels, kind, factor)
    pixels = pixels + params[..., 11:14][..., None, None, :]
    return preprocessing.normalize(pixels, info)


def epoch_parameters(seed, epoch, size, side):
    """The device pipeline's draws for epoch `epoch`: a permutation of `size` images and their
    `parameters` [size, PARAMETERS], a function of (seed, epoch, size, side) alone."""
    rng = np.random.default_rng([seed, epoch, 1])
    order = rng.permutation(size).astype(np.int32)
    return order, parameters(NUMPY_OPS, rng.random((size, UNIFORMS)), rng.standard_normal((size, 3)), side)


def _device_batch(images, labels, positions, params, step, info):
    chosen = positions[step]
    side = images.shape[1]
    base = chosen * (side * side)
    flat = ops.reshape(images, (-1, 3))
    batch = augment(ops, flat, base, side, ops.take(params, chosen, axis=0), info)
    return batch, ops.take(labels, chosen, axis=0)


class TrainBatches(device_data.TrainBatches):
    """The device pipeline's training batches (`device_data.TrainBatches`: order, epochs and
    process slicing) with the ImageNet recipe's augmentation to `info.image_size`."""

    def __init__(self, split, info, plan, seed=0, first_epoch=0):
        super().__init__(split, info, plan, seed, first_epoch)
        self._batch = device_data._compiled(_device_batch, info)

    def _upload_draws(self, epoch):
        index, count = self.plan.process
        order, params = epoch_parameters(self.seed, epoch, len(self.labels), self.images.shape[1])
        positions = order[: self.steps * self.plan.batch_size].reshape(self.steps, count, -1)[:, index]
        return ops.convert_to_tensor(positions), ops.convert_to_tensor(params)


def tf_augment_example(info):
    """The tf.data pipeline's per-example augmentation for the ImageNet recipe at `info.image_size`:
    (uint8 image, [2] seed) to the normalised, augmented float32 image."""
    import tensorflow as tf

    ops = _tf_ops()

    def augment_example(image, seed):
        uniform_seed, normal_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        side = image.shape[0]
        params = parameters(ops, tf.random.stateless_uniform([UNIFORMS], uniform_seed),
                            tf.random.stateless_normal([3], normal_seed), side)
        return augment(ops, tf.reshape(image, [-1, 3]), tf.constant(0), side, params, info)

    return augment_example
