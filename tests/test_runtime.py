"""Process settings made before a framework starts: oneDNN on TensorFlow, threads by affinity."""

import json
import os
import warnings

import keras
import numpy as np
import pytest
from helpers import backend_independent, run_python

from keras_preact import runtime

ENVIRONMENT = "import json, os, sys; import keras_preact; print(json.dumps({k: os.environ.get(k) for k in sys.argv[1:]}))"


def settings_after_import(env, *names):
    code = ENVIRONMENT.replace("sys.argv[1:]", repr(list(names)))
    result = run_python(code, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


@backend_independent
def test_import_turns_onednn_on_unless_the_user_chose():
    assert settings_after_import({runtime.ONEDNN: None}, runtime.ONEDNN) == {runtime.ONEDNN: "1"}
    assert settings_after_import({runtime.ONEDNN: "0"}, runtime.ONEDNN) == {runtime.ONEDNN: "0"}


@backend_independent
def test_tensorflow_logs_fatal_errors_only_unless_the_user_chose():
    assert settings_after_import({runtime.TF_LOG_LEVEL: None}, runtime.TF_LOG_LEVEL) == {runtime.TF_LOG_LEVEL: "3"}
    assert settings_after_import({runtime.TF_LOG_LEVEL: "0"}, runtime.TF_LOG_LEVEL) == {runtime.TF_LOG_LEVEL: "0"}


@backend_independent
def test_tensorflow_starts_without_its_notes_and_other_lines_pass():
    """TensorFlow's start-up notes, written before its log level applies, are held back; a line
    another part of the process writes meanwhile is not. At level 0 the notes show (they exist)."""
    pytest.importorskip("tensorflow")
    code = ("import sys, keras_preact; sys.stderr.write('before\\n'); import tensorflow as tf; "
            "sys.stderr.write('after\\n'); tf.constant(1) + 1")
    quiet = run_python(code, backend="jax", env={runtime.TF_LOG_LEVEL: None}).stderr
    assert quiet.splitlines() == ["before", "after"], quiet
    loud = run_python(code, backend="jax", env={runtime.TF_LOG_LEVEL: "0"}).stderr
    assert any(runtime.TF_START_UP_NOTE.match(line) for line in loud.splitlines()), loud


def test_threads_follow_the_cpus_this_process_may_use():
    found = settings_after_import({"OMP_NUM_THREADS": None, "TF_NUM_INTRAOP_THREADS": None}, "OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
    assert found == {"OMP_NUM_THREADS": str(len(os.sched_getaffinity(0))), "TF_NUM_INTRAOP_THREADS": str(len(os.sched_getaffinity(0)))}
    pinned = run_python(
        "import os; os.sched_setaffinity(0, {0}); import keras_preact; print(os.environ['OMP_NUM_THREADS'])",
        env={"OMP_NUM_THREADS": None},
    )
    assert pinned.stdout.strip().splitlines()[-1] == "1"
    assert settings_after_import({"OMP_NUM_THREADS": "7"}, "OMP_NUM_THREADS") == {"OMP_NUM_THREADS": "7"}


def test_one_warning_where_tensorflow_came_first_without_onednn(monkeypatch):
    monkeypatch.delenv(runtime.ONEDNN, raising=False)
    monkeypatch.setitem(__import__("sys").modules, "tensorflow", object())
    monkeypatch.setattr(runtime, "tensorflow_onednn_enabled", lambda: False)
    with pytest.warns(RuntimeWarning, match="Set TF_ENABLE_ONEDNN_OPTS=1 in the environment, or import keras_preact before"):
        runtime.configure()
    monkeypatch.setattr(runtime, "tensorflow_onednn_enabled", lambda: True)  # on by default: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.configure()


STEPS = """
import json, numpy as np, keras, keras_preact
keras.utils.set_random_seed(0)
fmt = "{fmt}"
shape = (32, 32, 3) if fmt == "channels_last" else (3, 32, 32)
model = keras_preact.PreActResNet(11, classes=4, data_format=fmt, input_shape=shape)
model.compile(optimizer=keras_preact.TorchSGD(0.05), loss="sparse_categorical_crossentropy")
rng = np.random.default_rng(0)
x, y = rng.normal(size=(8, *shape)).astype("float32"), rng.integers(0, 4, 8)
losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
print(json.dumps({{"losses": losses, "outputs": keras.ops.convert_to_numpy(model(x, training=False)).tolist()}}))
"""


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="oneDNN is TensorFlow's")
@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_onednn_on_and_off_train_to_the_same_numbers(fmt):
    runs = {}
    for flag in ("0", "1"):
        result = run_python(STEPS.format(fmt=fmt), env={runtime.ONEDNN: flag})
        runs[flag] = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(runs["1"]["losses"], runs["0"]["losses"], rtol=1e-4)
    np.testing.assert_allclose(runs["1"]["outputs"], runs["0"]["outputs"], rtol=1e-3, atol=1e-5)
