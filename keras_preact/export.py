"""SavedModels for TF Serving: raw uint8 pixels in, probabilities and top-1 classes out.

Two steps, the same on every backend: Keras exports the bare network (normalised float32 images →
probabilities), then TensorFlow wraps it with the dataset's normalisation and the argmax in a
`serving_default` signature. Keras cannot export from torch without torch-xla, so there the first
step runs in a TensorFlow-backend subprocess on the model's `.keras` file.

    python -m keras_preact.export --model_dir runs/cifar10_resnet164 --export_dir serving/resnet164
"""

import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

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
    from keras_preact.data import dataset_info  # TensorFlow only when exporting

    info = dataset_info(dataset)
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
    from keras_preact.data import dataset_info

    info = dataset_info(dataset)
    _output_activation(model)  # a classifier, softmax or logits
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ValueError(f"The ONNX file name must end in .onnx, got {path!r}.")
    images = keras.Input(model.input.shape[1:], name="images")
    # Constants, not a Normalization layer: tf2onnx turns that layer's variables into graph inputs.
    normalised = (images - np.array(info.mean, "float32")) / np.array(info.std, "float32")
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
    mean = tf.constant(info.mean, tf.float32)
    std = tf.constant(info.std, tf.float32)

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.network = network

        @tf.function(input_signature=[tf.TensorSpec([None, *input_shape[1:]], tf.uint8, name="images")])
        def serve(self, images):
            outputs = self.network.serve((tf.cast(images, tf.float32) - mean) / std)
            probabilities = outputs if softmax_output else tf.nn.softmax(outputs, axis=-1)
            return {
                "probabilities": tf.cast(probabilities, tf.float32),
                "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
            }

    module = Serving()
    # Serving needs no gradients; jax2tf-exported networks carry custom ones that cannot be re-saved.
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    tf.saved_model.save(module, target, signatures={SIGNATURE: module.serve}, options=options)


# --- command line: export a trained model from its weights -----------------------------------


def main(argv=None):
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m keras_preact.export",
        description="Export a trained keras_preact CIFAR model as a TF Serving SavedModel.",
    )
    parser.add_argument("--model_dir", help="a run's directory: reads config.json and model.weights.h5 (or checkpoint.weights.h5)")
    parser.add_argument("--weights", help="a weights or checkpoint file (default: the run's)")
    parser.add_argument("--export_dir", required=True, help="base directory; the model goes to EXPORT_DIR/VERSION")
    parser.add_argument("--depth", type=int, help="without --model_dir: the network's depth")
    parser.add_argument("--block", choices=["basic", "bottleneck"], help="without --model_dir: default as the paper")
    parser.add_argument("--dataset", choices=["cifar10", "cifar100"], help="without --model_dir: default cifar10")
    parser.add_argument("--version", type=int, default=1)
    args = parser.parse_args(argv)

    from keras_preact.data import dataset_info
    from keras_preact.models import PreActResNet
    from keras_preact.train import default_block

    config = {"dataset": "cifar10", "model_options": {}}
    weights = args.weights
    if args.model_dir:
        config_path = os.path.join(args.model_dir, "config.json")
        if not os.path.exists(config_path):
            parser.exit(1, f"error: {config_path} does not exist: is {args.model_dir} a training run's --model_dir?\n")
        with open(config_path) as f:
            config = json.load(f)
        if weights is None:
            weights = next(
                (os.path.join(args.model_dir, name) for name in ("model.weights.h5", "checkpoint.weights.h5")
                 if os.path.exists(os.path.join(args.model_dir, name))),
                None,
            )
            if weights is None:
                parser.exit(1, f"error: {args.model_dir} has no model.weights.h5 or checkpoint.weights.h5 yet.\n")
    elif args.depth is None or weights is None:
        parser.error("give --model_dir, or --weights with --depth")
    for key in ("depth", "block", "dataset"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    try:
        model = PreActResNet(
            config["depth"],
            block=config.get("block") or default_block(config["depth"]),
            classes=dataset_info(config["dataset"]).classes,
            weights=weights,
            **config.get("model_options", {}),
        )
        path = export_saved_model(model, args.export_dir, dataset=config["dataset"], version=args.version)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        parser.exit(1, f"error: {error}\n")
    print(f"SavedModel written to {path} (signature {SIGNATURE!r}: images uint8 -> probabilities, classes)")


if __name__ == "__main__":
    main()
