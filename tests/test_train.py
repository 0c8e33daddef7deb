"""Training runs: loss goes down, results and curves, kill -9 and resume, multi-replica, NaN, errors."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from helpers import backend_independent, run_python

import keras_preact
from keras_preact import choices, training
from keras_preact.training import callbacks, recipe
from keras_preact.training.data import from_arrays
from keras_preact.training.report import read_history

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "data", "cifar10-sample")
CIFAR = [sys.executable, os.path.join(ROOT, "examples", "cifar.py"), f"--data_dir={SAMPLE}", "--depth=8", "--batch_size=10"]


def toy_splits(n=120, seed=0):
    """A learnable toy task: the class is the colour channel that is brightest."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    images = rng.integers(0, 120, size=(n, 32, 32, 3))
    images[np.arange(n), :, :, labels] += 120
    split = from_arrays(images.astype(np.uint8), labels)
    return split, split


def test_small_run_lowers_the_loss(tmp_path):
    config = training.RunConfig(depth=8, recipe="official", epochs=4, batch_size=20, model_dir=str(tmp_path), seed=1)
    results = training.run(config, *toy_splits(), verbose=0)
    history = read_history(str(tmp_path / "history.csv"))
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    assert history[-1]["loss"] < 0.6 * history[0]["loss"], [row["loss"] for row in history]
    for key in ("dataset", "depth", "block", "backend", "epochs", "steps", "replicas", "test_error",
                "test_accuracy", "train_images_per_second", "wall_seconds"):
        assert key in results
    assert results["block"] == "basic" and results["steps"] == 4 * 6 and results["replicas"] == 1
    assert results["backend"] == keras.backend.backend()
    assert results["test_error"] == pytest.approx(100 * (1 - results["test_accuracy"]), abs=1e-3)
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "model.weights.h5").exists() and list((tmp_path / "logs").iterdir())


jax_only = pytest.mark.skipif(keras.backend.backend() != "jax", reason="the look-ahead is Keras' JAX trainer's")


@pytest.fixture
def look_ahead(monkeypatch):
    """Keras' JAX trainer as on an accelerator, where it reads the input one batch ahead
    (`JAXEpochIterator._get_iterator` skips that on the CPU only); counts the epochs read so."""
    import jax
    from keras.src.backend.jax.trainer import JAXEpochIterator

    real = JAXEpochIterator._one_batch_ahead_iterator
    read = []

    def counted(self, iterator):
        read.append(self)
        return real(self, iterator)

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(JAXEpochIterator, "_one_batch_ahead_iterator", counted)
    return read


def assert_finished(model_dir, export_dir, steps, epochs):
    results = json.loads((model_dir / "results.json").read_text())
    assert results["steps"] == steps and results["epochs"] == epochs
    assert [row["epoch"] for row in read_history(str(model_dir / "history.csv"))] == list(range(epochs))
    assert (model_dir / "model.weights.h5").exists() and (export_dir / "1" / "saved_model.pb").exists()
    return results


@jax_only
@pytest.mark.parametrize("pipeline", ["device", "tf_data"])
def test_a_run_that_reads_ahead_as_on_an_accelerator_finishes(tmp_path, look_ahead, pipeline):
    """Several epochs through Keras' look-ahead to results.json, the weights and the export."""
    config = training.RunConfig(depth=8, epochs=3, batch_size=20, model_dir=str(tmp_path / "run"), input_pipeline=pipeline)
    training.run(config, *toy_splits(60), export_dir=str(tmp_path / "export"), verbose=0)
    assert look_ahead, "the run did not take the look-ahead path"
    assert assert_finished(tmp_path / "run", tmp_path / "export", 3 * 3, 3)["input_pipeline"] == pipeline


@jax_only
def test_a_resumed_run_that_reads_ahead_finishes(tmp_path, look_ahead, monkeypatch):
    real_save = callbacks.Checkpoint.on_epoch_end

    def killed_at_the_second(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt  # the process dies here, after epoch 1's checkpoint
        real_save(self, epoch, logs)

    config = training.RunConfig(depth=8, epochs=3, batch_size=20, model_dir=str(tmp_path / "run"), input_pipeline="device")
    monkeypatch.setattr(callbacks.Checkpoint, "on_epoch_end", killed_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        training.run(config, *toy_splits(60), verbose=0)
    monkeypatch.setattr(callbacks.Checkpoint, "on_epoch_end", real_save)
    look_ahead.clear()
    training.run(config, *toy_splits(60), export_dir=str(tmp_path / "export"), verbose=0)
    assert look_ahead, "the resumed run did not take the look-ahead path"
    assert_finished(tmp_path / "run", tmp_path / "export", 3 * 3, 3)


def test_mixed_precision_run_leaves_the_global_policy_alone(tmp_path):
    config = training.RunConfig(depth=8, epochs=1, batch_size=20, model_dir=str(tmp_path), mixed_precision="bfloat16")
    results = training.run(config, *toy_splits(), verbose=0)
    assert 0.0 <= results["test_error"] <= 100.0 and results["steps"] == 6
    assert keras.config.dtype_policy().name == "float32"
    weights = keras_preact.PreActResNet(8, block="basic")
    weights.load_weights(str(tmp_path / "model.weights.h5"))  # float32 weights, loadable anywhere
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in weights.weights)


def test_float16_trains_with_loss_scaling():
    model = keras_preact.PreActResNet(8, block="basic", dtype="mixed_float16")
    model.compile(optimizer=recipe.TorchSGD(0.1), loss="sparse_categorical_crossentropy")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # float16 gradients would underflow
    assert keras.config.dtype_policy().name == "float32"


def test_default_blocks_follow_the_paper():
    assert [choices.default_block(d) for d in (20, 56, 110, 164, 1001, 11, 1202)] == [
        "basic", "basic", "basic", "bottleneck", "bottleneck", "bottleneck", "basic"
    ]


def test_kill_and_resume(tmp_path):
    model_dir = str(tmp_path / "run")
    command = CIFAR + ["--epochs=5", f"--model_dir={model_dir}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = os.path.join(model_dir, "checkpoint.weights.h5")
    deadline = time.time() + 300
    while not os.path.exists(checkpoint) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # kill -9, at whatever point the run has reached
    process.wait()
    assert os.path.exists(checkpoint), "the run never wrote a checkpoint"
    assert not os.path.exists(os.path.join(model_dir, "results.json"))

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr
    epoch = int(resumed.stderr.split("after epoch ")[1].split()[0])
    assert 1 <= epoch <= 5
    results = json.loads(open(os.path.join(model_dir, "results.json")).read())
    assert results["steps"] == 5 * 3  # 30 images / batch 10: the step count carried over
    history = read_history(os.path.join(model_dir, "history.csv"))
    assert [int(row["epoch"]) for row in history] == [0, 1, 2, 3, 4]
    # The learning rate follows the restored iteration count: paper recipe, batch 10, 15 steps.
    schedule = recipe.make_optimizer(choices.RECIPES["paper"], 3, 5, 10)._learning_rate
    assert schedule.boundaries == [8, 11]


def kill_after_first_checkpoint(command, model_dir):
    """Starts `command`, kill -9s it as soon as its first epoch's checkpoint exists."""
    process = subprocess.Popen(command, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = os.path.join(model_dir, "checkpoint.weights.h5")
    deadline = time.time() + 300
    while not os.path.exists(checkpoint) and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert os.path.exists(checkpoint), "the run never wrote a checkpoint"


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="bit-for-bit equality is promised on TensorFlow")
def test_a_resumed_run_equals_the_uninterrupted_run(tmp_path):
    """Kill after epoch 1 of 3, resume: every logged number equals the run that was never killed."""
    common = CIFAR + ["--epochs=3", "--seed=7"]
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(common + [f"--model_dir={whole}"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    kill_after_first_checkpoint(common + [f"--model_dir={resumed}"], resumed)
    again = subprocess.run(common + [f"--model_dir={resumed}"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "Resuming from" in again.stderr, again.stderr[-3000:]
    expected = read_history(os.path.join(whole, "history.csv"))
    assert [row["epoch"] for row in expected] == [0, 1, 2]
    assert read_history(os.path.join(resumed, "history.csv")) == expected  # bit for bit


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="bit-for-bit equality is promised on TensorFlow")
def test_history_follows_the_checkpoint(tmp_path, monkeypatch):
    """Killed after epoch 2's row but before its checkpoint: the resume writes that row again, once;
    a run started afresh (its checkpoint removed) starts history.csv afresh."""
    settings = dict(depth=8, epochs=3, batch_size=20, seed=2)
    whole = training.RunConfig(model_dir=str(tmp_path / "whole"), **settings)
    training.run(whole, *toy_splits(), verbose=0)
    expected = read_history(str(tmp_path / "whole" / "history.csv"))

    real_save = callbacks.Checkpoint.on_epoch_end

    def killed_at_the_second(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt  # the process dies here
        real_save(self, epoch, logs)

    config = training.RunConfig(model_dir=str(tmp_path / "run"), **settings)
    monkeypatch.setattr(callbacks.Checkpoint, "on_epoch_end", killed_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        training.run(config, *toy_splits(), verbose=0)
    assert [row["epoch"] for row in read_history(str(tmp_path / "run" / "history.csv"))] == [0, 1]
    monkeypatch.setattr(callbacks.Checkpoint, "on_epoch_end", real_save)
    training.run(config, *toy_splits(), verbose=0)
    with open(tmp_path / "run" / "history.csv") as f:
        assert [line.split(",")[0] for line in f][1:] == ["0", "1", "2"]  # each epoch's row once
    assert read_history(str(tmp_path / "run" / "history.csv")) == expected

    os.remove(tmp_path / "run" / "checkpoint.weights.h5")
    training.run(config, *toy_splits(), verbose=0)
    assert read_history(str(tmp_path / "run" / "history.csv")) == expected


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    import fcntl

    config = training.RunConfig(depth=8, epochs=1, batch_size=20, model_dir=str(tmp_path))
    with open(tmp_path / ".lock", "w") as held:  # as the first run holds it
        held.write("4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match=r"is in use by another run \(process 4242\); wait for it"):
            training.run(config, *toy_splits(), verbose=0)
    assert not (tmp_path / "checkpoint.weights.h5").exists()


def test_a_second_run_is_refused_before_it_decodes_its_data(tmp_path, monkeypatch):
    import fcntl

    from keras_preact.training import folders

    def decoding(*args):
        raise AssertionError("the data set is being decoded")

    monkeypatch.setattr(folders, "reading", decoding)  # what the data's loading starts with
    sample = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "cifar10-sample")
    config = training.RunConfig(depth=8, epochs=1, batch_size=20, data_dir=sample, model_dir=str(tmp_path))
    with open(tmp_path / ".lock", "w") as held:  # as the first run holds it
        held.write("4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match=r"is in use by another run \(process 4242\); wait for it"):
            training.run(config, verbose=0)
    assert os.listdir(tmp_path) == [".lock"]


def test_a_model_dir_this_process_cannot_write_is_refused_before_decoding(tmp_path, monkeypatch):
    from keras_preact.training import folders

    monkeypatch.setattr(folders, "reading", lambda *args: pytest.fail("the data set is being decoded"))
    real_access = os.access  # a folder of another user's (root may write anywhere), or a read-only mount
    monkeypatch.setattr(os, "access", lambda path, mode: path != str(tmp_path) and real_access(path, mode))
    sample = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "cifar10-sample")
    config = training.RunConfig(depth=8, epochs=1, batch_size=20, data_dir=sample, model_dir=str(tmp_path / "new" / "run"))
    with pytest.raises(PermissionError, match=rf"model_dir {tmp_path}/new/run cannot be written \({tmp_path} is read-only"):
        training.run(config, verbose=0)
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    monkeypatch.setattr(folders, "reading", lambda *args: pytest.fail("the data set is being decoded"))
    (tmp_path / "file").write_text("")
    under_a_file = dataclasses.replace(config, model_dir=str(tmp_path / "file" / "run"))
    with pytest.raises(PermissionError, match=rf"cannot be written \({tmp_path}/file is a file\)"):
        training.run(under_a_file, verbose=0)


def test_images_of_another_class_count_are_refused_before_training(tmp_path):
    images, labels = toy_splits()[0].images, toy_splits()[0].labels
    three = dataclasses.replace(from_arrays(images, labels), class_names=("red", "green", "blue"))
    config = training.RunConfig(depth=8, epochs=1, batch_size=20, model_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"The training images have 3 classes \(red, green, blue\), cifar10 has 10"):
        training.run(config, three, three, verbose=0)
    assert not (tmp_path / "run").exists()


def test_a_channels_first_keras_setting_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(keras.config, "image_data_format", lambda: "channels_first")
    config = training.RunConfig(depth=8, epochs=1, batch_size=20, model_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="feeds channels-last batches .* set it to 'channels_last'"):
        training.run(config, *toy_splits(), verbose=0)


def test_an_evaluation_that_is_not_finite_stops_the_run():
    guard = callbacks.StopOnNaN()
    guard.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    guard.model.stop_training = False  # as fit sets it
    guard.on_epoch_end(0, {"loss": 3.2, "val_loss": 2.9})
    assert guard.where is None and not guard.model.stop_training
    guard.on_epoch_end(1, {"loss": 1e30, "val_loss": float("nan")})
    assert guard.where == "the evaluation after epoch 2" and guard.model.stop_training


@backend_independent
def test_zero_and_negative_settings_are_refused_by_the_command(tmp_path):
    for flag, message in (("--epochs=0", "epochs must be a positive integer, got 0"),
                          ("--batch_size=0", "batch_size must be a positive integer, got 0"),
                          ("--train_subset=-5", "train_subset must be a positive integer, got -5")):
        result = subprocess.run(CIFAR[:2] + [flag, f"--model_dir={tmp_path}"], capture_output=True, text=True,
                                timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert not os.listdir(tmp_path)  # refused before anything was written


def test_a_finished_run_is_not_continued_with_other_epochs(tmp_path):
    train_config = dict(depth=8, batch_size=20, model_dir=str(tmp_path))
    training.run(training.RunConfig(epochs=2, **train_config), *toy_splits(), verbose=0)
    with pytest.raises(ValueError, match=r"holds a run with other settings \(epochs: 2 there, 1 now\)"):
        training.run(training.RunConfig(epochs=1, **train_config), *toy_splits(), verbose=0)


def test_a_checkpoint_that_is_not_hdf5(tmp_path):
    config = training.RunConfig(depth=8, epochs=1, batch_size=20, model_dir=str(tmp_path))
    training.run(config, *toy_splits(), verbose=0)
    (tmp_path / "checkpoint.weights.h5").write_bytes(b"truncated")
    with pytest.raises(ValueError, match=r"checkpoint.weights.h5' is not a readable Keras weights file"):
        training.run(config, *toy_splits(), verbose=0)


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="torch trains on one device")
def test_multi_replica_on_two_logical_cpus(tmp_path):
    result = subprocess.run(
        CIFAR + ["--epochs=1", "--strategy=mirrored", "--cpu_replicas=2", f"--model_dir={tmp_path}"],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["replicas"] == 2
    expected = "MirroredStrategy over 2 devices" if keras.backend.backend() == "tensorflow" else "DataParallel over 2 devices"
    assert expected in results["placement"]


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX shards every evaluation batch evenly")
def test_a_test_set_that_does_not_split_over_the_devices_is_refused_before_training(tmp_path, sample_copy):
    shutil.copy(sample_copy / "test" / "cat" / os.listdir(sample_copy / "test" / "cat")[0], sample_copy / "test" / "cat" / "extra.jpg")
    result = subprocess.run(
        [*CIFAR[:2], f"--data_dir={sample_copy}", *CIFAR[3:], "--epochs=1", "--cpu_replicas=2", f"--model_dir={tmp_path / 'run'}"],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1 and "last batch of 1 images (31 images in batches of 10) does not split over 2 devices" in result.stderr
    assert not (tmp_path / "run").exists()


@backend_independent
def test_torch_backend_says_one_device():
    code = "from keras_preact.training import distribute; print(distribute.place('auto').description)"
    out = run_python(code, backend="torch").stdout
    assert "torch backend: one device (cpu)" in out
    failed = run_python("from keras_preact.training import distribute; distribute.place('mirrored')", backend="torch", check=False)
    assert "on the torch backend runs under torchrun: torchrun --nproc_per_node=N" in failed.stderr


@backend_independent
@pytest.mark.parametrize(
    "tf_config, strategy, message",
    [
        ({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}, "mirrored",
         "TF_CONFIG describes 2 processes, but strategy='mirrored' trains within one"),
        ({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "evaluator", "index": 0}}, "auto",
         "TF_CONFIG names task type\\(s\\) 'evaluator', which keras_preact does not run"),
        ({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 3}}, "auto",
         "is not one of its cluster's training processes \\(worker 0-1\\)"),
        (["worker"], "auto", "TF_CONFIG is not valid JSON"),
    ],
)
def test_a_tf_config_that_does_not_fit_is_refused(tf_config, strategy, message):
    code = f"from keras_preact.training import distribute; distribute.place({strategy!r})"
    failed = run_python(code, backend="tensorflow", env={"TF_CONFIG": json.dumps(tf_config)}, check=False)
    assert failed.returncode == 1 and re.search(message, failed.stderr), failed.stderr[-2000:]


def test_nan_stops_with_a_clear_message_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    def exploding(*args, **kwargs):  # fine for the first epoch (6 steps), then a huge rate
        return recipe.TorchSGD(recipe.StepSchedule(0.01, boundaries=[6], factor=1e30))

    monkeypatch.setattr("keras_preact.training.runner.make_optimizer", exploding)
    config = training.RunConfig(depth=8, epochs=3, batch_size=20, model_dir=str(tmp_path))
    with pytest.raises(training.TrainingDiverged, match=r"loss became NaN or infinite at epoch 2, step \d.*last good state stays in"):
        training.run(config, *toy_splits(), verbose=0)
    model = keras_preact.PreActResNet(8, block="basic", classes=10)
    model.compile(optimizer=exploding(), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    model.load_weights(str(tmp_path / "checkpoint.weights.h5"))
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 6
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)


def test_nan_in_the_first_epoch_says_there_is_no_checkpoint(tmp_path, monkeypatch):
    def exploding(*args, **kwargs):
        return recipe.TorchSGD(recipe.StepSchedule(1e30))

    monkeypatch.setattr("keras_preact.training.runner.make_optimizer", exploding)
    config = training.RunConfig(depth=8, epochs=2, batch_size=20, model_dir=str(tmp_path))
    with pytest.raises(training.TrainingDiverged, match=r"at epoch 1, step \d+\. No epoch finished before it, so no checkpoint was written"):
        training.run(config, *toy_splits(), verbose=0)
    assert not (tmp_path / "checkpoint.weights.h5").exists()


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (dict(dataset="mnist"), ValueError, "Unknown dataset='mnist'"),
        (dict(depth=8, block="bottleneck"), ValueError, r"block='bottleneck' has depth 9n\+2.*fits block='basic'"),
        (dict(recipe="fast"), ValueError, "Unknown recipe='fast'"),
        (dict(mixed_precision="int8"), ValueError, "Unknown mixed_precision='int8'"),
        (dict(data_dir="/no/such/dir"), FileNotFoundError, "'/no/such/dir' does not exist"),
        (dict(strategy="everywhere"), ValueError, "Unknown strategy='everywhere'"),
    ],
)
def test_bad_configuration(tmp_path, overrides, error, message):
    config = training.RunConfig(**{"depth": 8, "epochs": 1, "model_dir": str(tmp_path / "run"), **overrides})
    with pytest.raises(error, match=message):
        training.run(config, verbose=0)
    assert not (tmp_path / "run").exists()  # nothing written, so the corrected command is no other run


def test_model_dir_of_another_run_is_refused(tmp_path):
    training.run(training.RunConfig(depth=8, epochs=1, batch_size=20, model_dir=str(tmp_path)), *toy_splits(), verbose=0)
    with pytest.raises(ValueError, match=r"holds a run with other settings \(depth: 8 there, 14 now\)"):
        training.run(training.RunConfig(depth=14, epochs=1, batch_size=20, model_dir=str(tmp_path)), *toy_splits(), verbose=0)


@backend_independent
def test_command_line_reports_errors_without_traceback(tmp_path):
    result = subprocess.run(
        CIFAR[:2] + ["--depth=12", f"--model_dir={tmp_path}"], capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 1
    assert "depth=12 does not fit" in result.stderr and "Traceback" not in result.stderr


class Recorder(keras.callbacks.Callback):
    """Which epochs and how many steps a run's callbacks saw, and the logs of each epoch."""

    def __init__(self):
        super().__init__()
        self.epochs, self.steps, self.logs = [], 0, []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs))


def test_user_callbacks_are_called_and_the_recipe_settings_recorded(tmp_path):
    recorder = Recorder()
    config = training.RunConfig(depth=8, epochs=2, batch_size=20, model_dir=str(tmp_path), learning_rate=0.05, nesterov=True)
    results = training.run(config, *toy_splits(60), verbose=0, callbacks=[recorder])
    assert recorder.epochs == [0, 1] and recorder.steps == 2 * 3
    assert {"loss", "val_loss", "val_accuracy"} <= set(recorder.logs[-1])
    saved = json.loads((tmp_path / "config.json").read_text())
    for settings in (results, saved):
        assert (settings["learning_rate"], settings["nesterov"], settings["momentum"], settings["weight_decay"]) == (0.05, True, 0.9, 1e-4)
    assert saved["warmup_epochs"] is None  # the recipe's share of the run
    assert results["warmup_epochs"] == pytest.approx(1 / 3)  # what it was: 400/64000 of 6 steps, rounded up to one
    # A config.json written before these settings existed is the same run: started again, it resumes.
    for name in ("learning_rate", "weight_decay", "momentum", "nesterov", "warmup_epochs"):
        del saved[name]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    again = training.run(dataclasses.replace(config, learning_rate=None, nesterov=None), *toy_splits(60), verbose=0)
    assert again["steps"] == 2 * 3 and again["learning_rate"] == 0.1  # the recipe's, as that run's file says


@pytest.mark.parametrize("callbacks", ["EarlyStopping", [keras.callbacks.History(), print]])
def test_a_bad_callbacks_value_is_refused_before_anything_is_written(tmp_path, callbacks):
    config = training.RunConfig(depth=8, epochs=1, batch_size=20, model_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="callbacks must be a list of keras.callbacks.Callback instances, got"):
        training.run(config, *toy_splits(), verbose=0, callbacks=callbacks)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="a torch process; once, in the torch suite")
def test_user_callbacks_on_the_custom_loop(tmp_path):
    """torch's DistributedDataParallel engine (one process here) calls them as fit does."""
    code = f"""
import json, sys, torch.distributed as dist
sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
from test_train import Recorder, toy_splits
from keras_preact import training
from keras_preact.training import distribute
dist.init_process_group("gloo", rank=0, world_size=1, init_method="tcp://127.0.0.1:{free_port()}")
assert distribute.place("auto").custom_loop
recorder = Recorder()
config = training.RunConfig(depth=8, epochs=2, batch_size=20, model_dir={str(tmp_path)!r})
results = training.run(config, *toy_splits(60), verbose=0, callbacks=[recorder])
print(json.dumps({{"epochs": recorder.epochs, "steps": recorder.steps, "logs": sorted(recorder.logs[-1]),
                  "placement": results["placement"]}}))
"""
    seen = json.loads(run_python(code, backend="torch").stdout.strip().splitlines()[-1])
    assert "DistributedDataParallel" in seen["placement"]
    assert seen["epochs"] == [0, 1] and seen["steps"] == 2 * 3
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(seen["logs"])


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_run_resolves_its_configuration_once(tmp_path, monkeypatch):
    """The values a run decides itself (the input pipeline "auto" names) do not resolve it again."""
    resolutions = []
    resolve = training.RunConfig.resolved

    def counted(self):
        resolutions.append(self.depth)
        return resolve(self)

    monkeypatch.setattr(training.RunConfig, "resolved", counted)  # ResolvedRunConfig's own calls it only if unchecked
    training.run(training.RunConfig(depth=8, epochs=1, batch_size=20, model_dir=str(tmp_path)), *toy_splits(40), verbose=0)
    assert resolutions == [8]
