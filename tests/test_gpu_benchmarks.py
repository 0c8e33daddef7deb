"""benchmarks/gpu.sh runs as the GPU machine will run it — no TensorFlow — in dry runs of both
modes on the CPU: tiny depths, the sample folder, every JSON line and file it promises."""

import json
import os
import subprocess
import sys

import h5py
import keras
import pytest
from helpers import WITHOUT_TENSORFLOW

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()
pytestmark = pytest.mark.skipif(BACKEND == "tensorflow", reason="the GPU script measures the jax and torch backends")


def dry_run(tmp_path, mode, **env):
    """Runs gpu.sh with DRY_RUN=1 where every Python process finds TensorFlow unimportable (a
    sitecustomize module) and reports the TensorFlow modules it held at exit."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(WITHOUT_TENSORFLOW)
    out = tmp_path / "out"
    environment = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "RUNS_DIR": str(tmp_path / "runs"), "PYTHON": sys.executable,
                   "PYTHONPATH": f"{site}:{ROOT}", "BUDGET_S": "1500", **env}
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), mode], env=environment,
                          capture_output=True, text=True, timeout=1600)
    lines = [json.loads(line) for line in (out / "gpu_results.jsonl").read_text().splitlines()]
    log = (out / "gpu_log.txt").read_text()
    return done, lines, log, out


def test_prove_trains_and_compares_with_the_best_native_variant(tmp_path):
    # This backend's training step (the other backend's is the same command): each test run stays short.
    steps = (f"train_{BACKEND}", "native_r164", f"{BACKEND}_r164", "ratios", "torch_r1001_remat")
    done, lines, log, _ = dry_run(tmp_path, "prove", ONLY=",".join(steps))
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line for line in lines if "error" in line] == []
    assert [line["step"] for line in lines] == [f"train_{BACKEND}", "native_r164", "native_r164", f"{BACKEND}_r164",
                                                "ratios", "torch_r1001_remat"]
    run, eager, graph, ours, ratios, remat = lines
    # examples/cifar.py reached results.json: no error after the last step.
    assert run["kind"] == "train" and run["backend"] == BACKEND and run["input_pipeline"] == "device"
    assert run["epochs"] == 2 and 0 <= run["test_error"] <= 100
    assert eager["impl"] == "native_torch/eager" and graph["impl"] == "native_torch/cuda_graph"
    assert graph["captured"] is False and graph["note"] == "no CUDA device: ran uncaptured" and graph["setup_seconds"] > 0
    assert ours["impl"] == f"keras_preact/{BACKEND}" and ours["depth"] == 11 and ours["precision"] == "bfloat16"
    best = max((eager, graph), key=lambda line: line["images_per_second"])
    assert ratios["best_native"] == best["impl"]
    assert ratios[f"{BACKEND}_r164"] == round(ours["images_per_second"] / best["images_per_second"], 3)
    assert remat["remat"] and remat["impl"] == "keras_preact/torch"
    reports = [line for line in log.splitlines() if line.startswith("TENSORFLOW_MODULES")]
    assert len(reports) == 7 and set(reports) == {"TENSORFLOW_MODULES []"}  # version line, run and record, 4 steps


@pytest.mark.skipif(BACKEND != "jax", reason="reproduce trains on JAX whatever the backend; one run is enough")
def test_reproduce_writes_the_preset_files(tmp_path):
    done, lines, _, out = dry_run(tmp_path, "reproduce")
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = lines
    assert line["step"] == "reproduce" and line["kind"] == "train" and line["preset"] == "preact_resnet11.cifar10"
    assert line["backend"] == "jax" and line["input_pipeline"] == "device" and line["depth"] == 11
    record = json.loads((out / "preact_resnet11.cifar10.json").read_text())
    assert record["test_error"] == line["test_error"] and record["device"] == "cpu" and record["name"] == "preact_resnet11.cifar10"
    assert record["paper_error"] is None  # the paper has no ResNet-11; 5.46 for the real ResNet-164
    assert len(record["date"]) == 10
    with h5py.File(out / "preact_resnet11.cifar10.weights.h5") as weights:
        assert len(weights.keys()) > 0
    assert (out / "reproduce_history.csv").read_text().startswith("epoch")
    assert sorted(os.listdir(out)) == ["gpu_log.txt", "gpu_results.jsonl", "preact_resnet11.cifar10.json",
                                       "preact_resnet11.cifar10.weights.h5", "reproduce_history.csv"]


def test_a_failed_or_skipped_step_is_a_json_line_and_the_rest_go_on(tmp_path):
    done, lines, _, _ = dry_run(tmp_path, "prove", ONLY="train_jax,native_r164",
                                PROVE_TRAIN="--depth=8 --epochs=1 --batch_size=10 --recipe=unknown")
    assert done.returncode == 0
    assert lines[0]["step"] == "train_jax" and lines[0]["error"].startswith("exit 2 after")
    assert "argument --recipe: invalid choice: 'unknown'" in lines[0]["error"]
    assert [line["step"] for line in lines[1:]] == ["native_r164", "native_r164"] and "error" not in lines[1]
    done, lines, _, _ = dry_run(tmp_path, "prove", BUDGET_S="10")
    assert done.returncode == 0
    assert [line["step"] for line in lines] == ["train_jax", "train_torch", "native_r164", "jax_r164", "torch_r164",
                                                "torch_r164_graph", "ratios", "torch_r1001", "torch_r1001_remat", "jax_r1001_remat"]
    assert all(line["error"].startswith("skipped: ") for line in lines)


@pytest.mark.skipif(BACKEND != "torch", reason="keras_preact's torch step")
def test_the_captured_torch_step_is_timed_and_says_when_it_ran_eagerly():
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--depth=11", "--batch=10", "--steps=5",
               "--repeats=1", "--step=cuda_graph"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [record] = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert record["impl"] == "keras_preact/torch" and record["train_step"] == "cuda_graph" and record["compile"] is False
    assert record["captured"] is False and record["note"] == "no CUDA device: ran eagerly"
    assert record["replayed_steps"] == 0 and record["eager_steps"] == 10 and record["capture_seconds"] is None


def test_an_unknown_mode_is_refused(tmp_path):
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), "all"], capture_output=True, text=True,
                          env=dict(os.environ, OUT=str(tmp_path)), timeout=60)
    assert done.returncode == 2 and "usage:" in done.stderr


@pytest.mark.parametrize(
    "arguments, budget, problem",
    [
        (["prove", "extra"], None, "takes one mode, got 2 argument(s): prove extra"),
        ([], None, "takes one mode, got 0 argument(s)"),
        (["prove"], "1.5", "BUDGET_S must be whole seconds from 1 to 999999, got '1.5'"),
        (["reproduce"], "0", "got '0'"),
        (["prove"], "-5", "got '-5'"),
        (["prove"], "", "got ''"),
    ],
)
def test_extra_arguments_and_a_bad_budget_are_refused_before_anything_runs(tmp_path, arguments, budget, problem):
    environment = {key: value for key, value in os.environ.items() if key != "BUDGET_S"}
    environment.update(OUT=str(tmp_path / "out"), **({} if budget is None else {"BUDGET_S": budget}))
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), *arguments], capture_output=True,
                          text=True, env=environment, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and problem in done.stderr, done.stderr
    assert done.stderr.startswith("usage: ") and not (tmp_path / "out").exists()  # refused before any step
