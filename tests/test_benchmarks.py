"""The benchmark harness stays runnable and its baseline stays the same network (not timed)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras_preact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("depth, block", [(110, "basic"), (164, "bottleneck")])
def test_native_torch_baseline_has_our_parameter_count(depth, block):
    sys.path.insert(0, ROOT)
    from benchmarks.native_torch import PreActResNet, parameter_counts

    ours = keras_preact.PreActResNet(depth, block=block)
    trainable = sum(int(np.prod(w.shape)) for w in ours.trainable_weights)
    assert parameter_counts(PreActResNet(depth, block == "bottleneck")) == (trainable, ours.count_params())


@pytest.mark.parametrize("arguments", [["--impl=torch", "--channels_last"], []])
def test_worker_measures_a_training_step(arguments):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", "train", "--depth=8", "--batch=4", "--steps=1", "--warmup=1", *arguments],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["images_per_second"] > 0 and record["peak_rss_mb"] > 0


def test_worker_measures_the_rest_server():
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the server is TensorFlow whatever the backend; one run is enough")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", "rest", "--depth=8", "--steps=1", "--data_dir=/nonexistent"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    for kind in ("pixels", "jpeg"):
        assert record[f"{kind}_latency_ms"] > 0 and record[f"{kind}_images_per_second"] > 0
    assert record["jpeg_bytes_per_image"] < record["pixels_bytes_per_image"] / 5  # what base64 JPEG saves
    assert "cores" in record["cpu"]
