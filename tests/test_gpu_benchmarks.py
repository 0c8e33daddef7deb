"""benchmarks/gpu.sh runs as the GPU machine will run it — no TensorFlow — in a dry run on the CPU:
tiny depths, one epoch on a subset of the sample folder, every JSON line it promises."""

import json
import os
import subprocess
import sys

import keras
import pytest
from helpers import WITHOUT_TENSORFLOW

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()
pytestmark = pytest.mark.skipif(BACKEND == "tensorflow", reason="the GPU script measures the jax and torch backends")


def dry_run(tmp_path, mode="all", **env):
    """Runs gpu.sh with DRY_RUN=1 where every Python process finds TensorFlow unimportable (a
    sitecustomize module) and reports the TensorFlow modules it held at exit."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(WITHOUT_TENSORFLOW)
    out = tmp_path / "out"
    environment = dict(os.environ, DRY_RUN="1", OUT=str(out), PYTHON=sys.executable, PYTHONPATH=f"{site}:{ROOT}",
                       TF_CPP_MIN_LOG_LEVEL="3", **env)
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), mode], env=environment,
                          capture_output=True, text=True, timeout=900)
    lines = [json.loads(line) for line in (out / "gpu_results.jsonl").read_text().splitlines()]
    log = (out / "gpu_log.txt").read_text()
    return done, lines, log


def test_dry_run_of_the_gpu_script(tmp_path):
    steps = ("native_r164", f"{BACKEND}_r1001_remat", "train")
    done, lines, log = dry_run(tmp_path, ONLY=",".join(steps), TRAIN_BACKEND=BACKEND)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line for line in lines if "error" in line] == []
    assert [line["step"] for line in lines] == ["native_r164", "train", "train", f"{BACKEND}_r1001_remat"]  # by priority
    native, epoch, summary, remat = lines
    assert native["impl"] == "native_torch" and native["images_per_second"] > 0 and native["precision"] == "bfloat16"
    assert remat["impl"] == f"keras_preact/{BACKEND}" and remat["remat"] and remat["depth"] == 11 and remat["images_per_second"] > 0
    assert epoch["kind"] == "epoch" and epoch["epoch"] == 1 and 0 <= epoch["test_error"] <= 100
    assert summary["kind"] == "train_summary" and summary["backend"] == BACKEND and summary["epochs_run"] == 1
    assert summary["train_images"] == 20 and summary["mixed_precision"] == "bfloat16"
    assert summary["target_reached_epoch"] == 1 and summary["time_to_target_seconds"] == epoch["elapsed_seconds"]
    reports = [line for line in log.splitlines() if line.startswith("TENSORFLOW_MODULES")]
    assert len(reports) == 4 and set(reports) == {"TENSORFLOW_MODULES []"}  # the version line and 3 steps


def test_a_failed_or_skipped_step_is_a_json_line_and_the_rest_go_on(tmp_path):
    # gpu_train.py on the tensorflow backend cannot even import Keras where TensorFlow is missing.
    done, lines, _ = dry_run(tmp_path, ONLY="train", TRAIN_BACKEND="tensorflow")
    assert done.returncode == 0
    assert len(lines) == 1 and lines[0]["step"] == "train" and lines[0]["error"].startswith("exit 1 after")
    done, lines, _ = dry_run(tmp_path, mode="throughput", BUDGET_S="10")
    assert done.returncode == 0
    assert [line["step"] for line in lines] == ["native_r164", "jax_r164", "torch_r164", "jax_r1001_remat",
                                                "torch_r1001_remat", "torch_r1001", "jax_r1001"]
    assert all(line["error"].startswith("skipped: ") for line in lines)


def test_an_unknown_mode_is_refused(tmp_path):
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), "everything"], capture_output=True, text=True,
                          env=dict(os.environ, OUT=str(tmp_path)), timeout=60)
    assert done.returncode == 2 and "usage:" in done.stderr
