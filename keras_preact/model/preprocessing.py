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


def normalization(dataset) -> tuple[np.ndarray, np.ndarray]:
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
        if any(isinstance(value, (bool, np.bool_)) for value in np.ravel(np.asarray([mean, std], object))):
            raise TypeError("JSON true/false would pass as 1 and 0")
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


def dataset_class_names(dataset: str) -> tuple[str, ...]:
    """The class names of a dataset of `keras_preact.choices.DATASETS`, in label order.

    >>> dataset_class_names("cifar10")[:3]
    ('airplane', 'automobile', 'bird')
    >>> dataset_class_names("imagenet")[:2]
    ('tench', 'goldfish')
    """
    if choices.DATASETS.check(dataset) == "imagenet":
        return _imagenet_classes()[1]
    return choices.DATASETS[dataset].class_names


def model_dataset(model: keras.Model) -> str:
    """The dataset whose constants and classes a keras_preact network takes, read from the network
    itself (so it survives saving): the ImageNet stem with 1000 classes is "imagenet", the CIFAR
    stem with 10 or 100 classes "cifar10" or "cifar100". Other networks (another class count, or
    no classifier) need the dataset named: a ValueError says so.

    >>> import keras_preact
    >>> model_dataset(keras_preact.PreActResNet(20, block="basic", classes=100))
    'cifar100'
    """
    names = {layer.name for layer in model.layers}
    stem = "imagenet" if "pool1_pool" in names else "cifar"
    classes = model.output_shape[-1] if "predictions" in names else None
    fits = [name for name, d in choices.DATASETS.items() if d.classes == classes and (name == "imagenet") == (stem == "imagenet")]
    if len(fits) != 1:
        raise ValueError(
            f"The dataset of model {model.name!r} ({stem} stem, {classes or 'no'} classes) is not one of "
            f"{', '.join(map(repr, choices.DATASETS))}: pass its dataset name or (mean, std) pair."
        )
    return fits[0]


def _dataset_of(dataset, function):
    """`dataset` as `function` takes it (a name, a (mean, std) pair or a model): a model's is read
    from the model; None is an error, not a default."""
    if dataset is None:
        raise ValueError(
            f"{function} needs the dataset: pass dataset={', '.join(map(repr, choices.DATASETS))}, a (mean, std) "
            "pair, or the keras_preact model (its dataset is read from it)."
        )
    return model_dataset(dataset) if isinstance(dataset, keras.Model) else dataset


def _check_image_size(dataset, height, width):
    """A dataset's images are its size exactly, unless it resizes photos (ImageNet takes any size)."""
    record = choices.DATASETS[dataset]
    if record.resize is not None or None in (height, width) or (height, width) == (record.image_size,) * 2:
        return
    fits = [name for name, d in choices.DATASETS.items() if d.resize is not None or (height, width) == (d.image_size,) * 2]
    raise ValueError(
        f"Images of {height}x{width} do not fit dataset={dataset!r} ({record.image_size}x{record.image_size} images); "
        f"{' or '.join(map(repr, fits))} takes them."
    )


def preprocess_input(x, dataset: str | tuple | keras.Model | None = None, data_format: str | None = None):
    """Raw pixels (0-255, RGB) to the normalised float32 images the networks take, as
    `keras.applications.*.preprocess_input` does for their models.

    Args:
        x: images `[..., H, W, 3]` (`[..., 3, H, W]` channels-first): a NumPy array, a nested list
            or a tensor of the current backend, any numeric dtype.
        dataset: whose constants (required: there is no default): a name of
            `keras_preact.choices.DATASETS`, a `(mean, std)` pair of per-channel values on 0-255
            pixels, or the keras_preact model the images are for (`model_dataset`). A named
            dataset takes images of its size (CIFAR: 32x32; ImageNet: any size).
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        `(x - mean) / std` per channel, float32: a NumPy array for NumPy or list input, else a
        backend tensor.

    >>> preprocess_input(np.full((1, 32, 32, 3), 128, np.uint8), "cifar10")[0, 0, 0].round(4)
    array([0.0429, 0.0805, 0.2114], dtype=float32)
    >>> preprocess_input(np.zeros((1, 224, 224, 3)), "cifar10")
    Traceback (most recent call last):
    ...
    ValueError: Images of 224x224 do not fit dataset='cifar10' (32x32 images); 'imagenet' takes them.
    """
    data_format = choices.DATA_FORMATS.check(data_format or keras.config.image_data_format())
    axis = -1 if data_format == "channels_last" else -3  # from the end: one image or a batch
    as_numpy = isinstance(x, (np.ndarray, list, tuple, np.generic))
    shape = np.shape(x) if as_numpy else tuple(x.shape)
    if len(shape) < 3 or shape[axis] != 3:
        raise ValueError(
            f"preprocess_input takes RGB images with 3 channels on axis {axis} ({data_format}); got shape "
            f"{tuple(shape)}."
        )
    if isinstance(dataset, keras.Model) and "preprocessing" in {layer.name for layer in dataset.layers}:
        raise ValueError(
            f"Model {dataset.name!r} normalises its input itself (include_preprocessing): give it the raw pixels."
        )
    dataset = _dataset_of(dataset, "preprocess_input")
    mean, std = normalization(dataset)
    if isinstance(dataset, str):
        _check_image_size(dataset, *(shape[-3:-1] if data_format == "channels_last" else shape[-2:]))
    if data_format == "channels_first":
        mean, std = mean[:, None, None], std[:, None, None]
    if as_numpy:
        return ((np.asarray(x, np.float32) - mean) / std).astype(np.float32)
    return (keras.ops.cast(x, "float32") - keras.ops.convert_to_tensor(mean)) / keras.ops.convert_to_tensor(std)


def decode_predictions(
    preds, dataset: str | keras.Model | None = None, top: int = 5, class_names: list[str] | None = None
) -> list[list[tuple]]:
    """The `top` classes of each prediction, best first, as keras.applications' helper gives them.

    Args:
        preds: probabilities (or logits) `[batch, classes]`: NumPy array or backend tensor.
        dataset: whose class names (required unless `class_names`): a name of
            `keras_preact.choices.DATASETS`, or the keras_preact model that predicted
            (`model_dataset`).
        top: how many classes per prediction (at most the number of classes).
        class_names: names in label order, instead of a dataset's (e.g. an image folder run's
            `results.json["class_names"]`); `dataset` is then not read.

    Returns:
        One list per prediction of `(class_id, class_name, score)` tuples: `class_id` is the
        WordNet ID for ImageNet (as keras.applications), the class index otherwise.

    >>> decode_predictions(np.eye(10)[[3]], "cifar10", top=2)
    [[(3, 'cat', 1.0), (0, 'airplane', 0.0)]]
    >>> decode_predictions(np.zeros((1, 100)), "cifar10")
    Traceback (most recent call last):
    ...
    ValueError: decode_predictions takes predictions of shape [batch, 10] (10 classes); got shape [1, 100]: dataset 'cifar100' has 100 classes.
    """
    scores = np.asarray(preds if isinstance(preds, (np.ndarray, list)) else keras.ops.convert_to_numpy(preds))
    if scores.ndim != 2:
        raise ValueError(f"decode_predictions takes predictions of shape [batch, classes]; got shape {list(scores.shape)}.")
    if class_names is None:
        dataset = _dataset_of(dataset, "decode_predictions")
        names = dataset_class_names(dataset)
        ids = _imagenet_classes()[0] if dataset == "imagenet" else range(len(names))
    else:
        if isinstance(class_names, str) or not all(isinstance(name, str) for name in class_names):
            raise ValueError(f"class_names must be a list of strings, got {class_names!r}.")
        names, ids = tuple(class_names), range(len(class_names))
    if scores.shape[1] != len(names):
        fits = [name for name, d in choices.DATASETS.items() if d.classes == scores.shape[1]]
        raise ValueError(
            f"decode_predictions takes predictions of shape [batch, {len(names)}] ({len(names)} classes); got "
            f"shape {list(scores.shape)}" + (f": dataset {fits[0]!r} has {scores.shape[1]} classes." if fits else ".")
        )
    if scores.dtype.kind == "f" and not np.isfinite(scores).all():  # argsort would rank NaN as it happens to
        rows = np.flatnonzero(~np.isfinite(scores).all(axis=1))
        raise ValueError(
            f"decode_predictions got NaN or infinite scores (prediction(s) {', '.join(map(str, rows[:5]))}"
            f"{', ...' if len(rows) > 5 else ''}): the model diverged, or its input was not normalised (preprocess_input)."
        )
    choices.check_count("top", top)
    if top > len(names):
        raise ValueError(f"top={top} exceeds the {len(names)} classes.")
    ids = list(ids)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    return [[(ids[i], names[i], float(row[i])) for i in order] for row, order in zip(scores, best)]
