"""SavedModel export: the signature, equal probabilities in a process without Keras, every backend."""

import json
import os
import subprocess
import sys

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
