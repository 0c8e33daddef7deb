"""Shared test helpers: fresh-process runs (also without TensorFlow), non-trivial BatchNorm
statistics, a NumPy reference."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

BACKENDS = ("tensorflow", "jax", "torch")

# A check whose outcome cannot depend on the Keras backend this suite runs on (a fresh process
# with its own backend or none, or a refusal before any backend work) runs in one suite: torch's.
backend_independent = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="the same on every backend: run once, in the torch suite"
)


def run_python(code, backend=None, timeout=600, check=True, env=None):
    """Runs `code` in a fresh Python process on `backend` (default: this one); returns the result.
    `env`: variables to set, or to remove where the value is None."""
    env = {**dict(os.environ, KERAS_BACKEND=backend or keras.backend.backend(), TF_CPP_MIN_LOG_LEVEL="3"), **(env or {})}
    env = {name: value for name, value in env.items() if value is not None}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    return result


# Makes TensorFlow unimportable, as on a machine without it: `import tensorflow` (or
# tensorflow_datasets, ...) fails as for a missing package and `importlib.util.find_spec` finds
# nothing. At exit the process prints the TensorFlow modules it holds.
WITHOUT_TENSORFLOW = """
import atexit, importlib.util, json, sys
def _tensorflow(name):
    top = name.split(".")[0]
    return top == "tensorflow" or top.startswith("tensorflow_")
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if _tensorflow(name) else _find_spec(name, package)
class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if _tensorflow(name):
            raise ModuleNotFoundError(f"No module named {name!r} (made unimportable by the test)", name=name)
sys.meta_path.insert(0, _NoTensorFlow())
atexit.register(lambda: print("TENSORFLOW_MODULES", json.dumps(sorted(m for m in sys.modules if _tensorflow(m))), flush=True))
"""


def without_tensorflow(script, arguments):
    """The command that runs the Python file `script` with `arguments` where TensorFlow cannot be
    imported; its last stdout line is "TENSORFLOW_MODULES [...]" (see `tensorflow_modules`)."""
    code = WITHOUT_TENSORFLOW + (
        f"sys.path.insert(0, {os.path.dirname(os.path.abspath(script))!r})\n"
        f"sys.argv = {[script, *arguments]!r}\n"
        f"import runpy\nrunpy.run_path({script!r}, run_name='__main__')\n"
    )
    return [sys.executable, "-c", code]


def tensorflow_modules(stdout):
    """The TensorFlow modules a process started by `without_tensorflow` held at exit."""
    reports = [line.split(" ", 1)[1] for line in stdout.splitlines() if line.startswith("TENSORFLOW_MODULES ")]
    assert reports, "the process did not reach its exit report"
    return json.loads(reports[-1])


def randomize_batch_norms(model, seed=0):
    """Gives every BatchNorm random γ, β and moving statistics, so inference is not the identity."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        name = weight.path.rsplit("/", 1)[-1]
        shape = tuple(weight.shape)
        if name == "gamma":
            weight.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        elif name in ("beta", "moving_mean"):
            weight.assign(rng.normal(0.0, 0.2, shape).astype("float32"))
        elif name == "moving_variance":
            weight.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))


def numpy(x):
    return keras.ops.convert_to_numpy(x)


# --- an independent NumPy forward pass of the paper's unit (channels-last) --------------------


def np_conv(x, kernel, stride):
    """2-D convolution with Torch's padding (k // 2 on every side), NHWC × HWIO."""
    k = kernel.shape[0]
    p = k // 2
    x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    height = (x.shape[1] - k) // stride + 1
    width = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], height, width, kernel.shape[-1]), np.float64)
    for i in range(k):
        for j in range(k):
            patch = x[:, i : i + stride * height : stride, j : j + stride * width : stride, :]
            out += patch @ kernel[i, j]
    return out


def np_bn_relu(x, weights, prefix):
    gamma, beta, mean, var = (weights[f"{prefix}/{n}"] for n in ("gamma", "beta", "moving_mean", "moving_variance"))
    return np.maximum(gamma * (x - mean) / np.sqrt(var + 1e-5) + beta, 0.0)


def reference_unit(unit, x):
    """The full pre-activation unit computed from the paper's rules with the layer's weights."""
    weights = {w.path.split("/", 1)[1]: numpy(w).astype(np.float64) for w in unit.weights}
    x = x.astype(np.float64)
    activated = x if unit.preactivation == "none" else np_bn_relu(x, weights, "preact_bn")
    shortcut_input = x if unit.preactivation == "residual" else activated
    s = unit.strides
    if unit.block == "basic":
        strides = [s, 1]
    else:
        strides = [s, 1, 1] if unit.stride_on == "first_1x1" else [1, s, 1]
    h = activated
    for index, stride in enumerate(strides, start=1):
        if index > 1:
            h = np_bn_relu(h, weights, f"conv{index - 1}_bn")
        h = np_conv(h, weights[f"conv{index}/kernel"], stride)
    if "shortcut_conv/kernel" in weights:
        shortcut = np_conv(shortcut_input, weights["shortcut_conv/kernel"], s)
    elif shortcut_input.shape[-1] != h.shape[-1] or s != 1:
        sub = shortcut_input[:, ::s, ::s, :]
        shortcut = np.pad(sub, ((0, 0), (0, 0), (0, 0), (0, h.shape[-1] - sub.shape[-1])))
    else:
        shortcut = shortcut_input
    return shortcut + h


def train_batches(pipeline, split, batch_size, seed=0, epochs=1, first_epoch=0, process=(0, 1)):
    """`pipeline`'s training batches of `split` (CIFAR-10's constants) as a run of `epochs` at a
    global `batch_size` makes them, from `first_epoch`, in process `process` = (index, count)."""
    from keras_preact import choices
    from keras_preact.training.pipelines import BatchPlan

    plan = BatchPlan(len(split), batch_size, epochs, process=process)
    return pipeline.train_batches(split, choices.DATASETS["cifar10"], plan, seed, first_epoch)


def assert_processes_share_every_global_batch(train_dataset, split, batches):
    """`train_dataset(split, ..., process=(p, 2))` over 2 processes: each step's two halves are the
    one-process global batch, in order."""
    whole = batches(train_dataset(split, batch_size=8, seed=1, epochs=2))
    parts = [batches(train_dataset(split, batch_size=8, seed=1, epochs=2, process=(p, 2))) for p in (0, 1)]
    assert [len(p) for p in parts] == [6, 6] and parts[0][0][0].shape == (4, 32, 32, 3)
    for step, (x, y) in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([parts[0][step][0], parts[1][step][0]]), x)
        np.testing.assert_array_equal(np.concatenate([parts[0][step][1], parts[1][step][1]]), y)
