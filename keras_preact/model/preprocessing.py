"""What turns pixels into the normalised images the networks take: one normalisation for training,
export and serving.

The networks take images normalised per channel, `(pixels - mean) / std` with a dataset's
constants (`keras_preact.choices.DATASETS`); training pipelines, exported signatures and
`include_preprocessing` all read them from here.
"""

import numpy as np

from keras_preact import choices


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
    """`(images - mean) / std` with `dataset`'s constants (see `normalization`).

    `images`: float pixels (0-255) of any framework whose tensors take NumPy operands (TensorFlow,
    JAX, NumPy, Keras symbolic tensors), channels last.
    """
    mean, std = normalization(dataset)
    return (images - mean) / std
