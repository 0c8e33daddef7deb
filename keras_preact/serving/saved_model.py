"""SavedModels for TF Serving: raw uint8 pixels in, probabilities and top-1 classes out.

Two steps, the same on every backend: Keras exports the bare network (normalised float32 images →
probabilities), then TensorFlow wraps it with the dataset's normalisation and the argmax in a
`serving_default` signature. Keras cannot export from torch without torch-xla, so there the first
step runs in a TensorFlow-backend subprocess on the model's `.keras` file.

    python -m keras_preact.export --model_dir runs/cifar10_resnet164 --export_dir serving/resnet164

TF Serving's layout: `export_dir/<version>/saved_model.pb`, numbered version folders.
"""

import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_preact import choices
from keras_preact.model.preprocessing import normalize, normalization
from keras_preact.serving.layout import check_export_dir

SIGNATURE = "serving_default"


def export_saved_model(model, export_dir, dataset="cifar10", version=1):
    """Writes `export_dir/<version>/`, a SavedModel that TF Serving can serve.

    Its `serving_default` signature takes `images`, uint8 `[batch, H, W, 3]` raw pixels, normalises
    them with `dataset`'s per-channel mean and std, and returns `probabilities` (float32
    `[batch, classes]`) and `classes` (int64 `[batch]`, the top-1 class). Loading it needs only
    TensorFlow. Works from the TensorFlow, JAX and torch backends.

    Args:
        model: a keras_preact classifier (`include_top=True`), softmax or logits output.
        export_dir: the model's base directory (what TF Serving's `--model_base_path` names).
        dataset: `"cifar10"` or `"cifar100"`: whose normalisation the signature applies.
        version: a positive integer; `export_dir/<version>` must not exist yet.

    Returns:
        The path of the written version directory.

    Example:

    >>> import tempfile, keras_preact
    >>> path = keras_preact.export_saved_model(keras_preact.PreActResNet(8, block="basic"), tempfile.mkdtemp())
    >>> sorted(os.listdir(path))
    ['assets', 'fingerprint.pb', 'saved_model.pb', 'variables']
    """
    check_export_dir(export_dir)
    info = choices.DATASETS[dataset]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer (TF Serving's version folder), got {version!r}.")
    probabilities = _output_activation(model)
    if model.output.shape[-1] != info.classes:
        raise ValueError(
            f"The model has {model.output.shape[-1]} classes but dataset={dataset!r} has {info.classes}."
        )
    target = os.path.join(os.fspath(export_dir), str(version))
    if os.path.exists(target):
        raise FileExistsError(f"{target} exists. Choose a new version, or remove it first.")

    with tempfile.TemporaryDirectory() as scratch:
        bare = os.path.join(scratch, "bare")
        if keras.backend.backend() in ("tensorflow", "jax"):
            model.export(bare, format="tf_saved_model", verbose=False)
        else:
            saved = os.path.join(scratch, "model.keras")
            model.save(saved)
            _export_in_tensorflow_process(saved, bare)
        _wrap(bare, target, info, model.input.shape, probabilities)
    return target


def _output_activation(model):
    try:
        head = model.get_layer("predictions")
    except ValueError:
        raise ValueError(
            "export_saved_model needs a classifier (include_top=True): the model has no "
            "'predictions' layer."
        ) from None
    name = getattr(head.activation, "__name__", str(head.activation))
    if name not in ("softmax", "linear"):
        raise ValueError(f"The classifier's activation is {name}; export needs softmax or linear (logits).")
    return name == "softmax"


def _export_in_tensorflow_process(keras_file, target, export_format="tf_saved_model"):
    code = (
        "import sys, keras, numpy, keras_preact\n"
        "model = keras.models.load_model(sys.argv[1], compile=False)\n"
        "model(numpy.zeros((1, *[d or 32 for d in model.input.shape[1:]]), 'float32'))  # ONNX export wants a called model\n"
        "model.export(sys.argv[2], format=sys.argv[3], verbose=False)\n"
    )
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", code, keras_file, target, export_format], env=env, capture_output=True, text=True
    )
    if result.returncode:
        raise RuntimeError(f"Exporting through the TensorFlow backend failed:\n{result.stderr[-2000:]}")


def export_onnx(model, path, dataset="cifar10"):
    """Writes an ONNX model: float32 raw pixels `[batch, H, W, 3]` (0-255) in, probabilities out.

    The dataset's normalisation is part of the graph, as in the SavedModel. Needs the `[onnx]`
    extra (onnx, tf2onnx); works from every backend (JAX goes through the TensorFlow backend).

    Example:

    >>> import tempfile, keras_preact
    >>> path = keras_preact.export_onnx(keras_preact.PreActResNet(8, block="basic"), tempfile.mkdtemp() + "/m.onnx")
    >>> os.path.getsize(path) > 100_000
    True
    """
    normalization(dataset)  # a bad dataset fails before any work
    _output_activation(model)  # a classifier, softmax or logits
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ValueError(f"The ONNX file name must end in .onnx, got {path!r}.")
    images = keras.Input(model.input.shape[1:], name="images")
    # Constants, not a Normalization layer: tf2onnx turns that layer's variables into graph inputs.
    normalised = normalize(images, dataset)
    served = keras.Model(images, model(normalised), name=f"{model.name}_onnx")
    served(np.zeros((1, *[d or 32 for d in model.input.shape[1:]]), "float32"))  # Keras exports called models only
    if keras.backend.backend() == "jax":
        with tempfile.TemporaryDirectory() as scratch:
            saved = os.path.join(scratch, "model.keras")
            served.save(saved)
            _export_in_tensorflow_process(saved, path, "onnx")
    else:
        served.export(path, format="onnx", verbose=False)
    return path


def _wrap(bare, target, info, input_shape, softmax_output):
    import tensorflow as tf

    network = tf.saved_model.load(bare)

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.network = network

        @tf.function(input_signature=[tf.TensorSpec([None, *input_shape[1:]], tf.uint8, name="images")])
        def serve(self, images):
            outputs = self.network.serve(normalize(tf.cast(images, tf.float32), info))
            probabilities = outputs if softmax_output else tf.nn.softmax(outputs, axis=-1)
            return {
                "probabilities": tf.cast(probabilities, tf.float32),
                "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
            }

    module = Serving()
    # Serving needs no gradients; jax2tf-exported networks carry custom ones that cannot be re-saved.
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    tf.saved_model.save(module, target, signatures={SIGNATURE: module.serve}, options=options)
