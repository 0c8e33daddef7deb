"""SavedModel export: the signature, equal probabilities in a process without Keras, every backend."""

import json
import os
import re
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from helpers import numpy, randomize_batch_norms

import keras_preact
from keras_preact import choices

# Loads a SavedModel with TensorFlow alone: keras and keras_preact are made unimportable first
# (TensorFlow probes for keras at import; to it they look not installed).
TF_ONLY_LOADER = """
import importlib.util, json, sys
BLOCKED = ("keras", "keras_preact", "tf_keras")
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if name.split(".")[0] in BLOCKED else _find(name, package)
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import numpy as np, tensorflow as tf
signature = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
outputs = signature(images=tf.constant(np.load(sys.argv[2])))
np.save(sys.argv[3], outputs["probabilities"].numpy())
spec = signature.structured_input_signature[1]["images"]
print(json.dumps({
    "input": [spec.name, spec.dtype.name, spec.shape.as_list()],
    "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in signature.structured_outputs.items()},
    "classes": outputs["classes"].numpy().tolist(),
    "imported": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
}))
"""


def load_without_keras(path, images, tmp_path):
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run(
        [sys.executable, "-c", TF_ONLY_LOADER, path, str(tmp_path / "images.npy"), str(tmp_path / "p.npy")],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), np.load(tmp_path / "p.npy")


def keras_probabilities(model, images, dataset="cifar10"):
    info = choices.DATASETS[dataset]
    x = ((images.astype(np.float32) - np.array(info.mean)) / np.array(info.std)).astype(np.float32)
    return numpy(model(x))


@pytest.mark.parametrize("activation", ["softmax", None])
def test_export_serves_raw_pixels_without_keras(tmp_path, activation):
    model = keras_preact.PreActResNet(11, classes=100, classifier_activation=activation)
    randomize_batch_norms(model)
    path = keras_preact.export_saved_model(model, str(tmp_path / "export"), dataset="cifar100", version=3)
    assert path == str(tmp_path / "export" / "3") and os.path.exists(os.path.join(path, "saved_model.pb"))
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3)).astype(np.uint8)
    info, probabilities = load_without_keras(path, images, tmp_path)
    assert info["imported"] == []
    assert info["input"] == ["images", "uint8", [None, 32, 32, 3]]
    assert info["outputs"] == {"probabilities": ["float32", [None, 100]], "classes": ["int64", [None]]}
    expected = keras_probabilities(model, images, "cifar100")
    if activation is None:
        expected = numpy(keras.ops.softmax(expected))
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert info["classes"] == expected.argmax(axis=1).tolist()


def test_saved_model_cli_lists_the_signature(tmp_path):
    path = keras_preact.export_saved_model(keras_preact.PreActResNet(8, block="basic"), str(tmp_path))
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    out = shown.stdout
    assert "signature_def['serving_default']" in out
    assert "inputs['images'] tensor_info:" in out and "dtype: DT_UINT8" in out
    assert "outputs['classes'] tensor_info:" in out and "dtype: DT_INT64" in out
    assert "outputs['probabilities'] tensor_info:" in out


def test_export_command_from_a_run(tmp_path):
    # A run's directory is all the command needs: config.json and the weights.
    model = keras_preact.PreActResNet(8, block="basic")
    randomize_batch_norms(model)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model.save_weights(str(run_dir / "model.weights.h5"))
    (run_dir / "config.json").write_text(json.dumps({"dataset": "cifar10", "depth": 8, "block": "basic", "model_options": {}}))
    result = subprocess.run(
        [sys.executable, "-m", "keras_preact.export", f"--model_dir={run_dir}", f"--export_dir={tmp_path / 'serving'}"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SavedModel written to" in result.stdout
    images = np.random.default_rng(1).integers(0, 256, size=(3, 32, 32, 3)).astype(np.uint8)
    _, probabilities = load_without_keras(str(tmp_path / "serving" / "1"), images, tmp_path)
    np.testing.assert_allclose(probabilities, keras_probabilities(model, images), atol=1e-4)


def test_training_run_exports_at_the_end(tmp_path):
    from keras_preact import training
    from keras_preact.serving.layout import next_version
    from keras_preact.training import data

    rng = np.random.default_rng(0)
    split = data.from_arrays(rng.integers(0, 256, size=(20, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, 20))
    config = training.RunConfig(depth=8, epochs=1, batch_size=10, model_dir=str(tmp_path / "run"))
    first = training.run(config, split, split, export_dir=str(tmp_path / "serving"), verbose=0)
    assert first["export"] == str(tmp_path / "serving" / "1")
    assert os.path.exists(tmp_path / "serving" / "1" / "saved_model.pb")
    assert next_version(str(tmp_path / "serving")) == 2


@pytest.mark.parametrize(
    "build, kwargs, error, message",
    [
        (lambda: keras_preact.PreActResNet(8, block="basic", include_top=False, pooling="avg"), {}, ValueError, "needs a classifier"),
        (lambda: keras_preact.PreActResNet(8, block="basic", classes=100), {}, ValueError, "has 100 classes but dataset='cifar10' has 10"),
        (lambda: keras_preact.PreActResNet(8, block="basic"), {"version": 0}, ValueError, "version must be a positive integer"),
        (lambda: keras_preact.PreActResNet(8, block="basic"), {"dataset": "svhn"}, ValueError, "Unknown dataset='svhn'"),
        (lambda: keras_preact.PreActResNet(8, block="basic", classifier_activation="sigmoid"), {}, ValueError, "activation is sigmoid"),
    ],
)
def test_bad_export_arguments(tmp_path, build, kwargs, error, message):
    with pytest.raises(error, match=message):
        keras_preact.export_saved_model(build(), str(tmp_path), **kwargs)


def test_existing_version_is_not_overwritten(tmp_path):
    model = keras_preact.PreActResNet(8, block="basic")
    keras_preact.export_saved_model(model, str(tmp_path))
    with pytest.raises(FileExistsError, match="exists. Choose a new version"):
        keras_preact.export_saved_model(model, str(tmp_path))


def test_onnx_export_matches_keras(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = keras_preact.PreActResNet(11, classes=100)
    randomize_batch_norms(model)
    path = keras_preact.export_onnx(model, str(tmp_path / "model.onnx"), dataset="cifar100")
    assert path == str(tmp_path / "model.onnx")
    session = ort.InferenceSession(path)
    assert [i.name for i in session.get_inputs()] == ["images"]
    pixels = np.random.default_rng(2).integers(0, 256, size=(4, 32, 32, 3)).astype(np.uint8)
    probabilities = session.run(None, {"images": pixels.astype(np.float32)})[0]
    np.testing.assert_allclose(probabilities, keras_probabilities(model, pixels, "cifar100"), atol=1e-4)


def test_onnx_needs_onnx_file_name(tmp_path):
    with pytest.raises(ValueError, match="must end in .onnx"):
        keras_preact.export_onnx(keras_preact.PreActResNet(8, block="basic"), str(tmp_path / "model.pb"))


# --- the encoded-image signature -----------------------------------------------------------------

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "cifar10-sample", "test")
JPEGS = sorted(os.path.join(SAMPLE, c, f) for c in sorted(os.listdir(SAMPLE)) for f in sorted(os.listdir(os.path.join(SAMPLE, c))))


def encode_png(pixels):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_encoded_jpegs_give_the_keras_models_predictions_on_the_training_pipelines_pixels(tmp_path):
    import tensorflow as tf

    from keras_preact.training.sources import _decode_file

    model = keras_preact.PreActResNet(8, block="basic")
    randomize_batch_norms(model)
    path = keras_preact.export_saved_model(model, str(tmp_path), version=1)
    signatures = tf.saved_model.load(path).signatures
    assert set(signatures) == {"serving_default", "encoded_images"}
    files = [open(f, "rb").read() for f in JPEGS]
    outputs = signatures["encoded_images"](images=tf.constant(files))
    # Pillow, as training decodes: TensorFlow's default (fast) IDCT differs by up to 5 levels here.
    decoded = np.stack([_decode_file(f) for f in JPEGS])
    expected = numpy(model(keras_preact.preprocess_input(decoded, "cifar10")))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-6)
    assert outputs["classes"].numpy().tolist() == expected.argmax(axis=1).tolist()
    assert [n.decode() for n in outputs["class_names"].numpy()] == [choices.CIFAR10_CLASSES[i] for i in expected.argmax(axis=1)]
    # The same images as uint8 pixels through serving_default: the same answer.
    pixels = signatures["serving_default"](images=tf.constant(decoded))
    np.testing.assert_allclose(pixels["probabilities"].numpy(), outputs["probabilities"].numpy(), atol=1e-6)
    # A PNG of the same pixels is lossless: the same answer as its pixels.
    png = signatures["encoded_images"](images=tf.constant([encode_png(decoded[0])]))
    np.testing.assert_allclose(png["probabilities"].numpy(), expected[:1], atol=1e-5)


def test_encoded_images_are_checked(tmp_path):
    import tensorflow as tf

    path = keras_preact.export_saved_model(keras_preact.PreActResNet(8, block="basic"), str(tmp_path))
    encoded = tf.saved_model.load(path).signatures["encoded_images"]
    good = open(JPEGS[0], "rb").read()
    gray = encode_png(np.full((32, 32), 7, np.uint8))  # grey and RGBA files decode to RGB
    rgba = encode_png(np.full((32, 32, 4), 7, np.uint8))
    assert encoded(images=tf.constant([good, gray, rgba]))["probabilities"].shape == (3, 10)
    for bad, message in [
        (encode_png(np.zeros((30, 40, 3), np.uint8)), "Image 1 is 40x30 pixels (width x height); this model takes exactly 32x32"),
        (b"GIF89a", "Image 1 is not a JPEG or PNG file."),
        (b"", "Image 1 is not a JPEG or PNG file."),
        (good[:100], "Invalid JPEG data"),
    ]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
            encoded(images=tf.constant([good, bad]))


def test_imagenet_builder_exports_with_resize_and_centre_crop(tmp_path):
    """ResNet50 (here at 64x64 to keep it short): ImageNet constants, 1000 names, shorter side
    64·256/224 = 73, centre crop 64."""
    import tensorflow as tf

    model = keras_preact.ResNet50(input_shape=(64, 64, 3))
    path = keras_preact.export_saved_model(model, str(tmp_path), dataset="imagenet")
    encoded = tf.saved_model.load(path).signatures["encoded_images"]
    image = np.random.default_rng(3).integers(0, 256, size=(90, 120, 3)).astype(np.uint8)  # 120 wide, 90 high
    outputs = encoded(images=tf.constant([encode_png(image)]))
    resized = tf.image.resize(image.astype(np.float32), [73, 97], method="bilinear", antialias=True).numpy()
    crop = resized[4:68, 16:80]  # (73 - 64) // 2, (97 - 64) // 2
    expected = numpy(model(keras_preact.preprocess_input(crop[None], "imagenet")))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
    assert outputs["class_names"].numpy()[0].decode() == keras_preact.decode_predictions(expected, "imagenet", top=1)[0][0][1]
    # Resized, a 40000x1 file would be 73x2920000 (a 224 model: 256x10240000, 31 GB of float32):
    # aspect ratios over 16:1 are refused before decoding.
    assert encoded(images=tf.constant([encode_png(np.zeros((4, 64, 3), np.uint8))]))["probabilities"].shape == (1, 1000)
    for width, height in [(68, 4), (40000, 1), (1, 40000)]:
        refused = f"Image 0 is {width}x{height} pixels: aspect ratio too extreme (over 16:1)"
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(refused)):
            encoded(images=tf.constant([encode_png(np.zeros((height, width, 3), np.uint8))]))


def test_custom_normalisation_and_class_names(tmp_path):
    import tensorflow as tf

    mean, std = (100.0, 110.0, 120.0), (50.0, 60.0, 70.0)
    model = keras_preact.PreActResNet(8, block="basic", classes=3)
    randomize_batch_norms(model)
    # Any iterable of names, a generator too.
    path = keras_preact.export_saved_model(model, str(tmp_path), dataset=(mean, std), class_names=(n for n in ["cat", "dog", "cow"]))
    signatures = tf.saved_model.load(path).signatures
    pixels = np.random.default_rng(4).integers(0, 256, size=(4, 32, 32, 3)).astype(np.uint8)
    expected = numpy(model(keras_preact.preprocess_input(pixels, (mean, std))))
    np.testing.assert_allclose(signatures["serving_default"](images=tf.constant(pixels))["probabilities"].numpy(), expected, atol=1e-5)
    names = signatures["encoded_images"](images=tf.constant([encode_png(p) for p in pixels]))["class_names"].numpy()
    assert [n.decode() for n in names] == [["cat", "dog", "cow"][i] for i in expected.argmax(axis=1)]
    unnamed = keras_preact.export_saved_model(model, str(tmp_path), dataset=(mean, std), version=np.int64(2))
    assert unnamed == str(tmp_path / "2")
    names = tf.saved_model.load(unnamed).signatures["encoded_images"](images=tf.constant([encode_png(pixels[0])]))["class_names"]
    assert names.numpy()[0].decode() == str(expected[0].argmax())


def test_a_model_with_include_preprocessing_is_normalised_once(tmp_path):
    import tensorflow as tf

    model = keras_preact.PreActResNet(8, block="basic", classes=100, include_preprocessing=True)
    randomize_batch_norms(model)
    path = keras_preact.export_saved_model(model, str(tmp_path), dataset="cifar100")
    pixels = np.random.default_rng(5).integers(0, 256, size=(3, 32, 32, 3)).astype(np.uint8)
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(pixels))["probabilities"]
    np.testing.assert_allclose(served.numpy(), numpy(model(pixels.astype("float32"))), atol=1e-5)
    with pytest.raises(ValueError, match=r"normalises its input itself \(include_preprocessing\) with mean \[129.3"):
        keras_preact.export_saved_model(model, str(tmp_path), dataset=((0, 0, 0), (1, 1, 1)), version=2)
    onnx_path = pytest.importorskip("onnxruntime") and keras_preact.export_onnx(model, str(tmp_path / "m.onnx"), "cifar100")
    import onnxruntime

    onnx = onnxruntime.InferenceSession(onnx_path).run(None, {"images": pixels.astype(np.float32)})[0]
    np.testing.assert_allclose(onnx, served.numpy(), atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"class_names": ["a"] * 9}, ValueError, "9 class_names for a model of 10 classes"),
        ({"class_names": ["a"] * 9 + [""]}, ValueError, "class_names must be a list of non-empty strings"),
        ({"class_names": 10}, ValueError, "class_names must be a list of non-empty strings, got 10"),
        ({"dataset": ((1, 2), (3, 4))}, ValueError, "3 finite numbers each"),
        ({"dataset": "imagenet"}, ValueError, "has 10 classes but dataset='imagenet' has 1000"),
        ({"version": 2**63}, ValueError, "version=9223372036854775808 is above 9223372036854775807, the largest version TF Serving reads"),
    ],
)
def test_bad_class_names_and_normalisation(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        keras_preact.export_saved_model(keras_preact.PreActResNet(8, block="basic"), str(tmp_path), **kwargs)
    assert os.listdir(tmp_path) == []  # checked before any work


def test_export_dir_must_be_a_writable_folder(tmp_path):
    model = keras_preact.PreActResNet(8, block="basic")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        keras_preact.export_saved_model(model, str(tmp_path / "file"))
    with pytest.raises(NotADirectoryError, match="lies under the file"):
        keras_preact.export_saved_model(model, str(tmp_path / "file" / "sub"))
    if os.path.isdir("/proc/self"):  # writable by its mode bits (for root), yet no folder can be made there
        with pytest.raises(PermissionError, match="no folder can be created in '/proc'"):
            keras_preact.export_saved_model(model, "/proc/keras_preact_export")


def test_incomplete_version_folder_is_named_and_skipped(tmp_path):
    from keras_preact.serving.layout import next_version, servable_versions

    model = keras_preact.PreActResNet(8, block="basic")
    (tmp_path / "1").mkdir()  # e.g. copied half-way
    with pytest.raises(FileExistsError, match=r"1 holds an incomplete export \(no saved_model.pb\): remove it"):
        keras_preact.export_saved_model(model, str(tmp_path), version=1)
    (tmp_path / ".3.partial-0123").mkdir()
    path = keras_preact.export_saved_model(model, str(tmp_path), version=next_version(str(tmp_path)))
    assert path.endswith(os.sep + "2") and oct(os.stat(path).st_mode & 0o777) == oct(0o777 & ~current_umask())
    assert servable_versions(str(tmp_path)) == (
        [2], [("1", "no saved_model.pb"), (".3.partial-0123", "an export that did not finish (safe to delete)")]
    )


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- kill -9 during export (TensorFlow backend: the rename is the same on every backend) ----------

EXPORT_FOREVER = """
import sys, keras_preact
from keras_preact.serving.layout import next_version
model = keras_preact.PreActResNet(8, block="basic")
while True:
    version = next_version(sys.argv[1])
    print("exporting", version, flush=True)
    keras_preact.export_saved_model(model, sys.argv[1], version=version)
"""


def test_kill_during_export_never_leaves_a_version_that_cannot_be_served(tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("one backend is enough: the folder handling is backend-independent (and slow to start)")
    import random

    from keras_preact.serving.layout import incomplete, servable_versions, versions
    from keras_preact.serving.rest import Servable

    export_dir = str(tmp_path / "serving")
    keras_preact.export_saved_model(keras_preact.PreActResNet(8, block="basic"), export_dir, version=1)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    rng = random.Random(0)
    for _ in range(10):  # the count
        child = subprocess.Popen([sys.executable, "-c", EXPORT_FOREVER, export_dir], stdout=subprocess.PIPE, env=env, text=True)
        assert child.stdout.readline().startswith("exporting")
        time.sleep(rng.uniform(0.0, 6.0))  # the first export in a process takes ≈3-5 s here
        child.kill()
        child.wait()
        child.stdout.close()
        complete, skipped = servable_versions(export_dir)
        assert all(incomplete(os.path.join(export_dir, str(v))) is None for v in versions(export_dir))
        assert all(".partial-" in name for name, _ in skipped)
        servable = Servable(export_dir)  # what the server does at start
        assert servable.latest == complete[-1]
        images = np.zeros((1, 32, 32, 3), np.uint8)
        assert servable.versions[servable.latest].signatures["serving_default"](images=images)["classes"].shape == (1,)
    assert skipped, "no kill landed during an export"
    assert complete == list(range(1, len(complete) + 1))  # a partial folder never blocked the next export


# --- the export command: bad inputs are one line, before any work ---------------------------------


def export_command(capsys, *arguments):
    """(exit status, stdout, stderr) of `python -m keras_preact.export` run in this process."""
    from keras_preact import export

    try:
        status = export.main(list(arguments))
    except SystemExit as stop:
        status = stop.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_export_command_reports_bad_inputs_in_one_line(tmp_path, capsys):
    def run_dir(name, config=None, weights=None):
        folder = tmp_path / name
        folder.mkdir()
        if config is not None:
            (folder / "config.json").write_text(config)
        if weights is not None:
            (folder / "model.weights.h5").write_bytes(weights)
        return str(folder)

    good_config = json.dumps({"dataset": "cifar10", "depth": 8, "block": "basic", "model_options": {}})
    (tmp_path / "a_file").write_text("x")
    out = str(tmp_path / "out")
    corrupt = run_dir("corrupt", '{"dataset": ')
    no_depth = run_dir("nodepth", json.dumps({"dataset": "cifar10", "block": "basic"}))
    cases = [
        ([f"--model_dir={corrupt}"], "config.json is not a readable run configuration (JSON)"),
        ([f"--model_dir={no_depth}"], "config.json lacks depth"),
        ([f"--model_dir={run_dir('badweights', good_config, b'not HDF5')}"], "is not a readable Keras weights file (HDF5)"),
        ([f"--model_dir={run_dir('noweights', good_config)}"], "has no model.weights.h5 or checkpoint.weights.h5"),
        ([f"--model_dir={tmp_path / 'missing'}"], "config.json does not exist"),
        ([f"--model_dir={run_dir('good', good_config)}", f"--export_dir={tmp_path / 'a_file'}"], "is a file; pass a folder"),
        ([f"--model_dir={tmp_path / 'good'}", "--version=0"], "--version must be a positive integer, got 0"),
    ]
    if os.path.isdir("/proc/self"):  # refused before the model is built, not as [Errno 2] after
        cases.append(([f"--model_dir={tmp_path / 'good'}", "--export_dir=/proc/keras_preact_export"], "no folder can be created"))
    for arguments, message in cases:
        if not any(a.startswith("--export_dir") for a in arguments):
            arguments = [*arguments, f"--export_dir={out}"]
        status, _, stderr = export_command(capsys, *arguments)
        assert status == 1 and stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr, (arguments, stderr)
    assert not os.path.exists(out)


def test_a_run_with_an_image_folder_exports_its_class_names(tmp_path, capsys):
    import tensorflow as tf

    model = keras_preact.PreActResNet(8, block="basic")
    run = tmp_path / "run"
    run.mkdir()
    model.save_weights(str(run / "model.weights.h5"))
    (run / "config.json").write_text(json.dumps({"dataset": "cifar10", "depth": 8, "block": "basic", "model_options": {}}))
    names = [f"kind{i}" for i in range(10)]
    (run / "results.json").write_text(json.dumps({"class_names": names}))
    status, out, _ = export_command(capsys, f"--model_dir={run}", f"--export_dir={tmp_path / 'serving'}")
    assert status is None and "class names from the run" in out
    encoded = tf.saved_model.load(str(tmp_path / "serving" / "1")).signatures["encoded_images"]
    pixels = np.random.default_rng(6).integers(0, 256, size=(2, 32, 32, 3)).astype(np.uint8)
    served = encoded(images=tf.constant([encode_png(p) for p in pixels]))
    expected = keras_probabilities(model, pixels).argmax(axis=1)
    assert [n.decode() for n in served["class_names"].numpy()] == [names[i] for i in expected]


def test_cifar_example_refuses_an_export_dir_that_is_a_file_before_training(tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the check is the same on every backend; one process start is enough")
    (tmp_path / "a_file").write_text("x")
    example = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "cifar.py")
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "cifar10-sample")
    result = subprocess.run(
        [sys.executable, example, f"--data_dir={data}", "--depth=8", "--block=basic", "--epochs=1", "--batch_size=10",
         f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'a_file'}"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "export_dir" in result.stderr and "is a file" in result.stderr
    assert not os.path.exists(tmp_path / "run")  # nothing trained, nothing written
