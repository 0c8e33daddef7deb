"""SavedModels for TF Serving: raw uint8 pixels or encoded JPEG/PNG files in; probabilities,
classes and class names out.

Two steps, the same on every backend: Keras exports the bare network (its float32 input →
probabilities), then TensorFlow wraps it with the decoding, the dataset's normalisation and the
argmax in two signatures. Keras cannot export from torch without torch-xla, so there the first step
runs in a TensorFlow-backend subprocess on the model's `.keras` file.

    python -m keras_preact.export --model_dir runs/cifar10_resnet164 --export_dir serving/resnet164

TF Serving's layout: `export_dir/<version>/saved_model.pb`, numbered version folders, each written
whole to a hidden partial folder first and renamed into place (`keras_preact.serving.layout`).
"""

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence

import keras
import numpy as np

from keras_preact import choices
from keras_preact.model.preprocessing import Normalize, dataset_class_names, normalization, normalize
from keras_preact.serving.layout import check_export_dir, check_version, incomplete, partial_prefix, writer_lock

SIGNATURE = "serving_default"
ENCODED_SIGNATURE = "encoded_images"
# A photo's decoded size is bounded before decoding: a small PNG can claim a huge canvas.
MAX_IMAGE_PIXELS = 40_000_000
# Resizing the shorter side to 256 makes the longer one 256 x the aspect ratio: a 40000x1 file
# would become 10 gigapixels. Bounded, resizing allocates at most ≈16·256² pixels (13 MB float32).
MAX_ASPECT_RATIO = 16


def export_saved_model(
    model: keras.Model,
    export_dir: str | os.PathLike,
    dataset: str | tuple[Sequence[float], Sequence[float]] = "cifar10",
    version: int = 1,
    class_names: Iterable[str] | None = None,
) -> str:
    """Writes `export_dir/<version>/`, a SavedModel that TF Serving can serve, with two signatures.

    `serving_default` takes `images`, uint8 `[batch, H, W, 3]` raw pixels, and returns
    `probabilities` (float32 `[batch, classes]`) and `classes` (int64 `[batch]`, the top-1 class).

    `encoded_images` takes `images`, a string `[batch]` of JPEG or PNG files (`{"b64": ...}` over
    REST), and returns the same plus `class_names` (string `[batch]`, the top-1 class's name). It
    decodes to RGB (JPEGs with libjpeg's accurate IDCT, as Pillow) and checks each image: a dataset
    with a `resize` side (ImageNet) resizes the shorter side to 256 (scaled to the model's size) and
    centre-crops the model's size, refusing files over 40 megapixels or 16:1; any other takes
    exactly the model's size (32x32 for CIFAR) and rejects other sizes with an error that names the
    image. Errors are InvalidArgument (HTTP 400 in TF Serving and the local server).

    Both normalise with `dataset`'s per-channel mean and std, unless the model does it itself
    (`include_preprocessing`; its constants must then equal `dataset`'s). Loading needs only
    TensorFlow. Works from the TensorFlow, JAX and torch backends. The version folder appears
    only when complete: a killed export leaves a hidden `.<version>.partial-*` folder, which
    servers skip.

    Args:
        model: a keras_preact classifier (`include_top=True`), softmax or logits output.
        export_dir: the model's base directory (what TF Serving's `--model_base_path` names).
        dataset: a name of `keras_preact.choices.DATASETS` (its class count must be the model's),
            a `choices.Dataset` record (a run's, `RunConfig.dataset_record()`), or a `(mean, std)`
            pair of per-channel values on 0-255 pixels for other data.
        version: a positive integer (NumPy's too); `export_dir/<version>` must not exist yet.
        class_names: the names of the model's classes in label order, any iterable of strings
            (e.g. an image folder run's `results.json["class_names"]`); default: the dataset's, or
            "0", "1", ... for a `(mean, std)` pair.

    Returns:
        The path of the written version directory.

    Example:

    >>> import tempfile, keras_preact
    >>> path = keras_preact.export_saved_model(keras_preact.PreActResNet(8, block="basic"), tempfile.mkdtemp())
    >>> sorted(os.listdir(path))
    ['assets', 'fingerprint.pb', 'saved_model.pb', 'variables']
    """
    export_dir, version, signature = _checked(model, export_dir, dataset, version, class_names)
    _write_version(model, export_dir, version, signature)
    return os.path.join(export_dir, str(version))


def _checked(model, export_dir, dataset, version, class_names):
    """(export_dir, version, what `_wrap` takes after the input shape) of a valid export, or the
    error that names what is wrong, before any work."""
    check_export_dir(export_dir)
    version = check_version("version", version)
    record = choices.DATASETS[dataset] if isinstance(dataset, str) else dataset if isinstance(dataset, choices.Dataset) else None
    normalization(dataset)  # a bad (mean, std) fails here
    softmax_output = _output_activation(model)
    classes = model.output.shape[-1]
    if record is not None and classes != record.classes:
        raise ValueError(
            f"The model has {classes} classes but dataset={dataset!r} has {record.classes}; pass the "
            "dataset it was trained on, or its (mean, std) and class_names."
        )
    names = _class_names(class_names, dataset, classes)
    image = _encoded_image_policy(model, record)
    normalise = not _normalises_itself(model, dataset)
    export_dir = os.fspath(export_dir)
    target = os.path.join(export_dir, str(version))
    if os.path.exists(target):
        state = f"holds an incomplete export ({incomplete(target)}): remove it" if incomplete(target) else "exists"
        raise FileExistsError(f"{target} {state}. Choose a new version, or remove it first.")
    return export_dir, version, (dataset if normalise else None, softmax_output, names, image)


def _write_version(model, export_dir, version, signature):
    """Exports `model` to `export_dir/<version>` through a hidden partial folder; `signature`: what
    `_wrap` takes after the input shape."""
    target = os.path.join(export_dir, str(version))
    os.makedirs(export_dir, exist_ok=True)
    # Not mkdtemp: its 0700 mode would stay on the version folder, unreadable to a server of another user.
    partial = os.path.join(export_dir, partial_prefix(version) + secrets.token_hex(6))
    os.mkdir(partial)
    try:
        with writer_lock(partial), tempfile.TemporaryDirectory() as scratch:  # a server logs it as being written
            bare = os.path.join(scratch, "bare")
            if keras.backend.backend() in ("tensorflow", "jax"):
                model.export(bare, format="tf_saved_model", verbose=False)
            else:
                saved = os.path.join(scratch, "model.keras")
                model.save(saved)
                _export_in_tensorflow_process(saved, bare)
            _wrap(bare, partial, model.input.shape, *signature)
            for folder, _, files in os.walk(partial):  # durable before the rename: a crash leaves no torn version
                for name in files:
                    _fsync(os.path.join(folder, name))
        _publish(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _publish(partial, target):
    """Renames the finished (and synced) `partial` folder to `target`, durably: a reader (or a
    crash) sees no version folder or a whole one."""
    try:
        os.rename(partial, target)  # atomic; fails on a non-empty target written meanwhile
    except OSError:
        raise FileExistsError(f"{target} was written by another export meanwhile; choose a new version.") from None
    _fsync(os.path.dirname(target))


def _fsync(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _class_names(class_names, dataset, classes):
    if class_names is None and isinstance(dataset, choices.Dataset) and dataset.class_names:
        class_names = dataset.class_names  # a run's record of a named dataset
    if class_names is None:
        return dataset_class_names(dataset) if isinstance(dataset, str) else tuple(map(str, range(classes)))
    # Any iterable (a generator is read once, here); a string would be a list of letters.
    names = tuple(class_names) if isinstance(class_names, Iterable) and not isinstance(class_names, (str, bytes)) else None
    if names is None or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"class_names must be a list of non-empty strings, got {class_names!r}.")
    if len(names) != classes:
        raise ValueError(f"{len(names)} class_names for a model of {classes} classes.")
    return names


def _encoded_image_policy(model, record):
    """(height, width, shorter side or None) of the encoded-image signature: the model's size; a
    shorter side to resize to before the centre crop where the dataset resizes (ImageNet)."""
    if model.input.shape[-1] != 3:
        raise ValueError(
            f"The model's input has shape {tuple(model.input.shape)}; export needs channels-last RGB "
            "images (build it with data_format='channels_last')."
        )
    height, width = model.input.shape[1:3]
    if height is None or width is None:
        if record is None:
            raise ValueError(
                "The model takes any image size and dataset is a (mean, std) pair: build it with a "
                "fixed input_shape, so the encoded-image signature knows what size to take."
            )
        height, width = height or record.image_size, width or record.image_size
    shorter = None
    if record is not None and record.resize:
        shorter = round(min(height, width) * record.resize / record.image_size)
    return height, width, shorter


def _normalises_itself(model, dataset):
    """Whether the model starts with keras_preact's normalisation (`include_preprocessing`); a
    ValueError if its constants are not `dataset`'s."""
    try:
        layer = model.get_layer("preprocessing")
    except ValueError:
        return False
    if not isinstance(layer, Normalize):
        return False
    mean, std = np.array(layer.mean), np.array(layer.std)
    expected_mean, expected_std = normalization(dataset)
    if not (np.allclose(mean, expected_mean, rtol=1e-5) and np.allclose(std, expected_std, rtol=1e-5)):
        raise ValueError(
            f"The model normalises its input itself (include_preprocessing) with mean {mean.round(3).tolist()} "
            f"and std {std.round(3).tolist()}, but dataset={dataset!r} has mean {expected_mean.round(3).tolist()} "
            f"and std {expected_std.round(3).tolist()}: pass the dataset the model was built with."
        )
    return True


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


def export_onnx(
    model: keras.Model, path: str | os.PathLike, dataset: str | tuple[Sequence[float], Sequence[float]] = "cifar10"
) -> str:
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
    normalise = not _normalises_itself(model, dataset)
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ValueError(f"The ONNX file name must end in .onnx, got {path!r}.")
    images = keras.Input(model.input.shape[1:], name="images")
    # Constants, not a Normalization layer: tf2onnx turns that layer's variables into graph inputs.
    served = keras.Model(images, model(normalize(images, dataset) if normalise else images), name=f"{model.name}_onnx")
    served(np.zeros((1, *[d or 32 for d in model.input.shape[1:]]), "float32"))  # Keras exports called models only
    if keras.backend.backend() == "jax":
        with tempfile.TemporaryDirectory() as scratch:
            saved = os.path.join(scratch, "model.keras")
            served.save(saved)
            _export_in_tensorflow_process(saved, path, "onnx")
    else:
        served.export(path, format="onnx", verbose=False)
    return path


def _wrap(bare, target, input_shape, dataset, softmax_output, names, image):
    """Saves the two signatures around the bare network at `target`; `dataset` None: the network
    normalises itself."""
    import tensorflow as tf

    network = tf.saved_model.load(bare)
    height, width, _ = image

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.network = network
            self.class_names = tf.constant(names)

        def predict(self, pixels):
            """float32 0-255 pixels → probabilities, top-1 classes."""
            outputs = self.network.serve(pixels if dataset is None else normalize(pixels, dataset))
            probabilities = tf.cast(outputs if softmax_output else tf.nn.softmax(outputs, axis=-1), tf.float32)
            return probabilities, tf.argmax(probabilities, axis=-1, output_type=tf.int64)

        @tf.function(input_signature=[tf.TensorSpec([None, *input_shape[1:]], tf.uint8, name="images")])
        def serve(self, images):
            probabilities, classes = self.predict(tf.cast(images, tf.float32))
            return {"probabilities": probabilities, "classes": classes}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve_encoded(self, images):
            pixels = tf.map_fn(
                lambda item: _decode(*item, image),
                (tf.range(tf.size(images, out_type=tf.int64)), images),
                fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32),
            )
            probabilities, classes = self.predict(pixels)
            return {"probabilities": probabilities, "classes": classes, "class_names": tf.gather(self.class_names, classes)}

    module = Serving()
    # Serving needs no gradients; jax2tf-exported networks carry custom ones that cannot be re-saved.
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    signatures = {SIGNATURE: module.serve, ENCODED_SIGNATURE: module.serve_encoded}
    tf.saved_model.save(module, target, signatures=signatures, options=options)


def _decode(index, data, image):
    """One JPEG/PNG file to float32 pixels of the model's size (`image`: height, width, shorter side
    or None), or an InvalidArgument error."""
    import tensorflow as tf

    height, width, shorter = image
    is_jpeg = tf.strings.substr(data, 0, 3) == b"\xff\xd8\xff"
    is_png = (tf.strings.substr(data, 0, 8) == b"\x89PNG\r\n\x1a\n") & (tf.strings.length(data) >= 24)
    known = tf.debugging.Assert(is_jpeg | is_png, [tf.strings.format("Image {} is not a JPEG or PNG file.", index)])
    with tf.control_dependencies([known]):
        # From the header, before decoding: (height, width).
        size = tf.cond(
            is_jpeg,
            lambda: tf.io.extract_jpeg_shape(data)[:2],
            lambda: tf.reverse(tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.int32, little_endian=False), [0]),
        )
    if shorter is None:
        checks = [((size[0] == height) & (size[1] == width),
                   "Image {} is {}x{} pixels (width x height); this model takes exactly %dx%d (images are not "
                   "resized for it)." % (width, height))]
    else:
        longer, short = (tf.cast(side, tf.int64) for side in (tf.reduce_max(size), tf.reduce_min(size)))
        checks = [(longer * short <= MAX_IMAGE_PIXELS,
                   "Image {} is {}x{} pixels, over %d megapixels." % (MAX_IMAGE_PIXELS // 10**6)),
                  (longer <= MAX_ASPECT_RATIO * short,
                   "Image {} is {}x{} pixels: aspect ratio too extreme (over %d:1); the model sees a square "
                   "centre crop, so crop the image nearer to square first." % MAX_ASPECT_RATIO)]
    checked = [tf.debugging.Assert(fits, [tf.strings.format(problem, (index, size[1], size[0]))]) for fits, problem in checks]
    with tf.control_dependencies(checked):
        # libjpeg's accurate integer IDCT, as Pillow (the training pipeline's decoder) uses:
        # TensorFlow's default fast IDCT differs by up to 5 levels a pixel.
        pixels = tf.cond(
            is_jpeg,
            lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_png(data, channels=3),
        )
    if shorter is None:
        return tf.ensure_shape(tf.cast(pixels, tf.float32), [height, width, 3])
    # The standard evaluation view: shorter side to `shorter`, then the centre crop (resized
    # from uint8: a float32 copy of a large photo would be 4x its size).
    scale = shorter / tf.cast(tf.reduce_min(size), tf.float32)
    resized = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), [height, width])
    pixels = tf.image.resize(pixels, resized, method="bilinear", antialias=True)
    top, left = (resized[0] - height) // 2, (resized[1] - width) // 2
    return tf.ensure_shape(pixels[top : top + height, left : left + width, :], [height, width, 3])
