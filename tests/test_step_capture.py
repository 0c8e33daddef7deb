"""The torch training step as one CUDA graph (`training.step_capture`), checked without a GPU:
the fall-backs and their log lines, the configuration, the audit of Keras' step for what stops a
capture, and the replay path with a recording stand-in for the CUDA graph."""

import contextlib
import json
import logging
import os

import keras
import numpy as np
import pytest

from helpers import run_python

from keras_preact import choices, training
from keras_preact.training import runner, step_capture
from keras_preact.training.config import build_model
from keras_preact.training.data import from_arrays
from keras_preact.training.recipe import make_optimizer

torch_only = pytest.mark.skipif(keras.backend.backend() != "torch", reason="the torch backend's step")
TESTS = os.path.dirname(os.path.abspath(__file__))


def captured_lines(caplog):
    """The log's lines about the step's capture: where it fell back, and when it was captured."""
    return [r.getMessage() for r in caplog.records if "step capture" in r.getMessage() or "step captured" in r.getMessage()]


def test_a_step_mode_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match="Unknown step_capture='graph'. Valid values: 'auto', 'cuda_graph', 'eager'"):
        training.RunConfig(depth=8, step_capture="graph").resolved()


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="the other backends compile their step themselves")
@pytest.mark.parametrize("mode", ["cuda_graph", "eager"])
def test_a_torch_step_mode_on_another_backend_is_refused(mode):
    with pytest.raises(ValueError, match=f"step_capture='{mode}' is for the torch backend.*leave step_capture at 'auto'"):
        step_capture.resolve(mode)
    assert step_capture.resolve("auto") is None


@torch_only
def test_auto_on_the_cpu_trains_with_the_eager_step_and_says_so_once(tmp_path, caplog):
    rng = np.random.default_rng(0)
    split = from_arrays(rng.integers(0, 255, (40, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, 40))
    config = training.RunConfig(depth=8, epochs=2, batch_size=20, model_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="keras_preact"):
        results = training.run(config, split, split, verbose=0)
    assert captured_lines(caplog) == [step_capture.NO_CUDA]
    assert results["train_step"] == {"mode": "eager", "replayed_steps": 0, "eager_steps": 4, "capture_seconds": None,
                                     "fallbacks": []}
    assert json.loads((tmp_path / "config.json").read_text())["step_capture"] == "auto"


@torch_only
def test_cuda_graph_without_cuda_is_refused_before_the_run_writes_anything(tmp_path):
    config = training.RunConfig(depth=8, epochs=1, batch_size=20, model_dir=str(tmp_path / "run"), step_capture="cuda_graph")
    with pytest.raises(ValueError, match="step_capture='cuda_graph' needs a CUDA device, and torch sees none: use "
                                         "step_capture='auto'"):
        training.run(config, *[from_arrays(np.zeros((20, 32, 32, 3), np.uint8), np.zeros(20, int))] * 2, verbose=0)
    assert not (tmp_path / "run").exists()


def test_a_run_resumes_with_another_step_mode(tmp_path):
    def config(**values):
        return training.RunConfig(depth=8, model_dir=str(tmp_path), input_pipeline="device", **values).resolved()

    config(step_capture="eager").save(str(tmp_path / "config.json"))
    runner._check_model_dir(config())  # no error: the same run
    with pytest.raises(ValueError, match="seed: 0 there, 1 now"):
        runner._check_model_dir(config(seed=1))


class RecordingGraphs:
    """`step_capture.CudaGraphs` as the CPU can play it: a capture runs nothing (the state the
    step changed is put back, as a CUDA graph's capture leaves it) and returns the outputs the
    replays rewrite in place; each replay runs the recorded step on the captured inputs."""

    device = "cpu"

    def __init__(self, model, fail=None):
        self.model, self.fail, self.replays = model, fail, 0

    @contextlib.contextmanager
    def side_stream(self):
        yield

    def capture(self, run):
        if self.fail:
            raise RuntimeError(self.fail)
        state = [*self.model.variables, *self.model.optimizer.variables, *self.model.metrics_variables]
        before = [variable.value.detach().clone() for variable in state]
        outputs = run()
        for variable, value in zip(state, before):
            variable.value.data.copy_(value)

        def replay():
            self.replays += 1
            keras.tree.map_structure(lambda output, new: output.copy_(new), outputs, run())

        return replay, outputs


def compiled_model(precision="none"):
    keras.utils.set_random_seed(1)
    config = training.RunConfig(depth=8, recipe="official", epochs=2, batch_size=8, mixed_precision=precision).resolved()
    model = build_model(config)
    model.compile(optimizer=make_optimizer(choices.RECIPES["official"], 7, 2, 8), loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    model.optimizer.build(model.trainable_variables)
    return model


def fit(model, step=None):
    """Two epochs of 6 full batches of 8 and a last one of 3, through Keras' fit."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(51, 32, 32, 3)).astype("float32"), rng.integers(0, 10, 51)
    if step is not None:
        model.train_function = step.keras_train_function
    return model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history


@torch_only
def test_the_replayed_step_trains_as_the_eager_step(caplog):
    eager = compiled_model()
    expected = fit(eager)
    model = compiled_model()
    graphs = RecordingGraphs(model)
    step = step_capture.CapturedStep(model.train_step, graphs, warmup_steps=2)
    with caplog.at_level(logging.INFO, logger="keras_preact"):
        history = fit(model, step)
    # Steps 1-2 warm up, 3 is captured and replayed, so are all full batches after; each epoch's last runs eagerly.
    assert graphs.replays == 14 - 2 - 2 and step.replayed == 10
    assert step.summary()["eager_steps"] == 4 and step.summary()["mode"] == "cuda_graph"
    captured, *fallbacks = captured_lines(caplog)
    assert captured.startswith("torch step captured as one CUDA graph after 2 eager steps, in ")
    assert fallbacks == [
        "torch step capture: a batch of [3, 32, 32, 3] float32, [3] int64, not the captured [8, 32, 32, 3] float32, "
        "[8] int64; running the eager step"
    ]
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 14
    for ours, theirs in zip([*model.variables, *model.optimizer.variables], [*eager.variables, *eager.optimizer.variables]):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-5)
    np.testing.assert_allclose(history["accuracy"], expected["accuracy"])


@torch_only
@pytest.mark.parametrize("precision", ["none", "bfloat16"])
def test_keras_step_with_the_recipe_reads_no_device_value_on_the_host(precision, monkeypatch):
    model = compiled_model(precision)
    batch = (keras.ops.zeros((8, 32, 32, 3)), keras.ops.zeros((8,), "int32"))
    constants, original = [], step_capture.device_constant

    def counted(data, dtype, device):
        constants.append(data)
        return original(data, dtype, device)

    monkeypatch.setattr(step_capture, "device_constant", counted)
    with step_capture.capture_safe("cpu") as safe:
        model.train_step(batch)
    assert safe.host_reads == []
    # Keras' Python-number constants (the schedule's rates, the loss's divisor, the metrics'
    # counts, iterations + 1) were written by fill kernels, not copied from the host.
    rate = 0.1 * 8 / choices.RECIPES["official"].batch_size  # the recipe rate at batch 8
    assert rate in constants and (8,) in constants and len(constants) >= 5, constants


@torch_only
def test_float16_loss_scaling_is_not_captured_and_the_log_says_where(caplog):
    model = compiled_model("float16")
    graphs = RecordingGraphs(model)
    step = step_capture.CapturedStep(model.train_step, graphs, warmup_steps=2)
    with caplog.at_level(logging.INFO, logger="keras_preact"):
        fit(model, step)
    assert graphs.replays == 0 and step.summary()["mode"] == "eager" and step.summary()["eager_steps"] == 14
    lines = captured_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith(
        "torch step capture: the step reads device values on the host (Tensor.__bool__ at "
        "keras/src/backend/torch/core.py:"
    ) and "(cond), from keras/src/optimizers/loss_scale_optimizer.py:" in lines[0], lines


@torch_only
def test_a_capture_that_fails_falls_back_with_its_first_line(caplog):
    model = compiled_model()
    graphs = RecordingGraphs(model, fail="CUDA error: operation not permitted when stream is capturing\nCUDA kernel errors ...")
    step = step_capture.CapturedStep(model.train_step, graphs, warmup_steps=1)
    with caplog.at_level(logging.INFO, logger="keras_preact"):
        fit(model, step)
    assert step.summary()["fallbacks"] == ["the capture failed: CUDA error: operation not permitted when stream is capturing"]
    assert captured_lines(caplog) == [
        "torch step capture: the capture failed: CUDA error: operation not permitted when stream is capturing; "
        "running the eager step"
    ]
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 14 and step.summary()["eager_steps"] == 14


@torch_only
def test_the_replayed_ddp_step_trains_as_its_eager_step():
    """torch's DistributedDataParallel engine (one gloo process) with the recording stand-in: 11
    warm-up steps, then replays; a partial batch between them runs eagerly."""
    code = f"""
import json, sys, keras, numpy as np, torch.distributed as dist
sys.path.insert(0, {TESTS!r})
from test_step_capture import RecordingGraphs, compiled_model
from test_train import free_port
from keras_preact.training import custom_loop, step_capture
dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{{free_port()}}")
rng = np.random.default_rng(2)
batches = [(keras.ops.convert_to_tensor(rng.normal(size=(n, 32, 32, 3)).astype("float32")),
            keras.ops.convert_to_tensor(rng.integers(0, 10, n))) for n in [8] * 14 + [3, 8]]
def train(graphs):
    model = compiled_model()
    engine = custom_loop.TorchProcesses(model)
    if graphs:
        engine.step = step_capture.CapturedStep(engine._device_step, graphs(model), step_capture.DDP_WARMUP_STEPS, engine._all_agree)
    sums = [engine.train_step(batch) for batch in batches]
    return [keras.ops.convert_to_numpy(v) for v in [*model.variables, *model.optimizer.variables]], sums, engine.step.summary()
weights, sums, _ = train(None)
replayed_weights, replayed_sums, summary = train(RecordingGraphs)
difference = max(float(np.max(np.abs(a - b))) for a, b in zip(weights, replayed_weights))
print(json.dumps({{"difference": difference, "sums": np.max(np.abs(np.subtract(sums, replayed_sums))), "summary": summary}}))
"""
    seen = json.loads(run_python(code, backend="torch").stdout.strip().splitlines()[-1])
    assert seen["summary"]["replayed_steps"] == 4 and seen["summary"]["eager_steps"] == 12, seen
    assert seen["summary"]["fallbacks"] == [
        "a batch of [3, 32, 32, 3] float32, [3] int64, not the captured [8, 32, 32, 3] float32, [8] int64"
    ]
    assert seen["difference"] < 1e-5 and seen["sums"] < 1e-4, seen
