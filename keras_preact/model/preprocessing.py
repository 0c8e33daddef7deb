"""What turns pixels into the normalised images the networks take, and predictions into class
names: one normalisation for training, export and serving, and keras.applications' two helpers.

The networks take images normalised per channel, `(pixels - mean) / std` with a dataset's
constants (`keras_preact.choices.DATASETS`); training pipelines, exported signatures,
`include_preprocessing` and `preprocess_input` all read them from here. Nothing here imports
TensorFlow: `preprocess_input` and `decode_predictions` work with the JAX and torch backends alone.
"""

import functools
import os

import keras
import numpy as np

from keras_preact import choices

# WordNet ID and name of each ImageNet-1k class, in label order (the sorted WordNet IDs, as
# tensorflow-datasets' imagenet2012 labels; names as torchvision's, which are unique).
IMAGENET_CLASSES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.tsv")


def normalization(dataset):
    """(mean, std) as float32 arrays of shape [3], on 0-255 pixels.

    `dataset`: a name of `keras_preact.choices.DATASETS`, a `choices.Dataset` record, or a
    `(mean, std)` pair of three positive-std numbers each.

    >>> normalization("cifar10")[0]
    array([125.3, 123. , 113.9], dtype=float32)
    """
    if isinstance(dataset, str):
        dataset = choices.DATASETS[dataset]
    if isinstance(dataset, choices.Dataset):
        mean, std = dataset.mean, dataset.std
    elif isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        mean, std = dataset
    else:
        raise ValueError(
            f"Normalisation must be a dataset name ({', '.join(map(repr, choices.DATASETS))}) or a "
            f"(mean, std) pair of per-channel values, got {dataset!r}."
        )
    try:
        mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"mean and std must be numbers, got {dataset!r}.") from None
    if mean.shape != (3,) or std.shape != (3,) or not np.isfinite([*mean, *std]).all() or (std <= 0).any():
        raise ValueError(f"mean and std must be 3 finite numbers each (RGB), std positive; got {dataset!r}.")
    return mean, std


def normalize(images, dataset):
    """`(images - mean) / std` with `dataset`'s constants (see `normalization`): the one
    normalisation of both training pipelines, the exported signatures and serving.

    `images`: float pixels (0-255), channels last: NumPy, Keras symbolic tensors, tensors of the
    current Keras backend, or TensorFlow tensors on any backend (tf.data).

    >>> normalize(np.full((1, 3), 128.0, np.float32), ((128.0, 0.0, 28.0), (1.0, 2.0, 4.0))).tolist()
    [[0.0, 64.0, 25.0]]
    """
    mean, std = normalization(dataset)
    if keras.ops.is_tensor(images):  # a torch tensor takes no NumPy operand: constants of its backend
        mean, std = keras.ops.convert_to_tensor(mean), keras.ops.convert_to_tensor(std)
    return (images - mean) / std


@keras.saving.register_keras_serializable(package="keras_preact")
class Normalize(keras.layers.Layer):
    """`(pixels - mean) / std` per channel: the first layer of a model built with
    `include_preprocessing`. The constants live in the graph, not in variables, so that ONNX
    converters keep them constants (tf2onnx turns a `keras.layers.Normalization`'s into inputs).

    >>> keras.ops.convert_to_numpy(Normalize((10.0, 20.0, 30.0), (2.0, 4.0, 5.0))(np.full((1, 1, 1, 3), 40.0))).tolist()
    [[[[15.0, 5.0, 2.0]]]]
    """

    def __init__(self, mean, std, axis=-1, **kwargs):
        super().__init__(**kwargs)
        mean, std = normalization((mean, std))
        self.mean, self.std = tuple(mean.tolist()), tuple(std.tolist())
        self.axis = axis

    def call(self, inputs):
        shape = [1] * len(inputs.shape)
        shape[self.axis] = 3
        # Tensors, not NumPy operands: torch's `tensor - ndarray` gives an ndarray, off the graph.
        mean, std = (keras.ops.reshape(keras.ops.convert_to_tensor(v, self.compute_dtype), shape) for v in (self.mean, self.std))
        return (keras.ops.cast(inputs, self.compute_dtype) - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": list(self.mean), "std": list(self.std), "axis": self.axis}


@functools.cache
def _imagenet_classes():
    with open(IMAGENET_CLASSES, encoding="utf-8") as f:
        rows = tuple(tuple(line.rstrip("\n").split("\t")) for line in f)
    return tuple(wnid for wnid, _ in rows), tuple(name for _, name in rows)


def dataset_class_names(dataset):
    """The class names of a dataset of `keras_preact.choices.DATASETS`, in label order.

    >>> dataset_class_names("cifar10")[:3]
    ('airplane', 'automobile', 'bird')
    >>> dataset_class_names("imagenet")[:2]
    ('tench', 'goldfish')
    """
    if choices.DATASETS.check(dataset) == "imagenet":
        return _imagenet_classes()[1]
    return choices.DATASETS[dataset].class_names


def preprocess_input(x, dataset="cifar10", data_format=None):
    """Raw pixels (0-255, RGB) to the normalised float32 images the networks take, as
    `keras.applications.*.preprocess_input` does for their models.

    Args:
        x: images `[..., H, W, 3]` (`[..., 3, H, W]` channels-first): a NumPy array, a nested list
            or a tensor of the current backend, any numeric dtype.
        dataset: whose constants: a name of `keras_preact.choices.DATASETS` or a `(mean, std)`
            pair of per-channel values on 0-255 pixels.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        `(x - mean) / std` per channel, float32: a NumPy array for NumPy or list input, else a
        backend tensor.

    >>> preprocess_input(np.full((1, 32, 32, 3), 128, np.uint8), "cifar10")[0, 0, 0].round(4)
    array([0.0429, 0.0805, 0.2114], dtype=float32)
    """
    mean, std = normalization(dataset)
    data_format = choices.DATA_FORMATS.check(data_format or keras.config.image_data_format())
    axis = -1 if data_format == "channels_last" else -3  # from the end: one image or a batch
    as_numpy = isinstance(x, (np.ndarray, list, tuple, np.generic))
    shape = np.shape(x) if as_numpy else tuple(x.shape)
    if len(shape) < 3 or shape[axis] != 3:
        raise ValueError(
            f"preprocess_input takes RGB images with 3 channels on axis {axis} ({data_format}); got shape "
            f"{tuple(shape)}."
        )
    if data_format == "channels_first":
        mean, std = mean[:, None, None], std[:, None, None]
    if as_numpy:
        return ((np.asarray(x, np.float32) - mean) / std).astype(np.float32)
    return (keras.ops.cast(x, "float32") - keras.ops.convert_to_tensor(mean)) / keras.ops.convert_to_tensor(std)


def decode_predictions(preds, dataset="cifar10", top=5, class_names=None):
    """The `top` classes of each prediction, best first, as keras.applications' helper gives them.

    Args:
        preds: probabilities (or logits) `[batch, classes]`: NumPy array or backend tensor.
        dataset: a name of `keras_preact.choices.DATASETS`, whose class names are used.
        top: how many classes per prediction (at most the number of classes).
        class_names: names in label order, instead of the dataset's (e.g. an image folder run's
            `results.json["class_names"]`); `dataset` is then not read.

    Returns:
        One list per prediction of `(class_id, class_name, score)` tuples: `class_id` is the
        WordNet ID for ImageNet (as keras.applications), the class index otherwise.

    >>> decode_predictions(np.eye(10)[[3]], "cifar10", top=2)
    [[(3, 'cat', 1.0), (0, 'airplane', 0.0)]]
    """
    if class_names is None:
        names = dataset_class_names(dataset)
        ids = _imagenet_classes()[0] if dataset == "imagenet" else range(len(names))
    else:
        if isinstance(class_names, str) or not all(isinstance(name, str) for name in class_names):
            raise ValueError(f"class_names must be a list of strings, got {class_names!r}.")
        names, ids = tuple(class_names), range(len(class_names))
    scores = np.asarray(preds if isinstance(preds, (np.ndarray, list)) else keras.ops.convert_to_numpy(preds))
    if scores.ndim != 2 or scores.shape[1] != len(names):
        raise ValueError(
            f"decode_predictions takes predictions of shape [batch, {len(names)}] ({len(names)} classes); got "
            f"shape {list(scores.shape)}."
        )
    choices.check_count("top", top)
    if top > len(names):
        raise ValueError(f"top={top} exceeds the {len(names)} classes.")
    ids = list(ids)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    return [[(ids[i], names[i], float(row[i])) for i in order] for row, order in zip(scores, best)]
