"""Which input pipeline feeds a run: tf.data on the host, or batches made on the accelerator.

Each is a module with the same three functions — `load(name, data_dir)`,
`train_dataset(split, info, batch_size, seed, epochs, first_epoch, process)` and
`eval_dataset(split, info, batch_size)` — so the runner names none of them. Only the tf.data one
imports TensorFlow, and only when it is chosen.
"""

import importlib.util

import keras

from keras_preact import choices


def tensorflow_installed():
    """Whether TensorFlow can be imported here (it is not imported to find out)."""
    return importlib.util.find_spec("tensorflow") is not None


def resolve(name):
    """The input pipeline `name` names on this backend: "auto" is "tf_data" where TensorFlow is
    installed and "device" where it is not; an unusable choice is an error that names the fix.

    >>> resolve("auto") in ("tf_data", "device")
    True
    """
    choices.INPUT_PIPELINES.check(name)
    backend = keras.backend.backend()
    if name == "auto":
        return "tf_data" if backend == "tensorflow" or tensorflow_installed() else "device"
    if name == "device" and backend == "tensorflow":
        raise ValueError(
            "input_pipeline='device' is for the jax and torch backends; the tensorflow backend "
            "reads tf.data (input_pipeline='tf_data' or 'auto')."
        )
    if name == "tf_data" and not tensorflow_installed():
        raise ValueError(
            "input_pipeline='tf_data' needs TensorFlow, which is not installed here. Install "
            "tensorflow, or use input_pipeline='device' (jax or torch backend, an image folder as data_dir)."
        )
    return name


def get(name):
    """The module of input pipeline `name` (resolved first): `data` (tf.data) or `device_data`."""
    if resolve(name) == "device":
        from keras_preact.training import device_data

        return device_data
    from keras_preact.training import data

    return data
