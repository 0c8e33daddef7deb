"""The on-device input pipeline (JAX, torch): the tf.data pipeline's semantics, batches made on the
accelerator, Keras feeding them as they are, and no TensorFlow anywhere on the way."""

import csv
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from helpers import assert_processes_share_every_global_batch, tensorflow_modules, train_batches, without_tensorflow

from keras_preact import choices, train, training
from keras_preact.training import device_data, pipelines, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "data", "cifar10-sample")
CIFAR10 = choices.DATASETS["cifar10"]
DEVICE = device_data.DevicePipeline()
BACKEND = keras.backend.backend()
device_backends = pytest.mark.skipif(
    BACKEND == "tensorflow", reason="the on-device pipeline is for the jax and torch backends; TensorFlow reads tf.data"
)


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def batches(dataset):
    return [(numpy(x), numpy(y)) for x, y in (dataset[i] for i in range(len(dataset)))]


def random_split(count, seed=0):
    """Random pixels, and each image's index as its label (to find the source of a batch row)."""
    images = np.random.default_rng(seed).integers(0, 256, size=(count, 32, 32, 3)).astype(np.uint8)
    return sources.from_arrays(images, np.arange(count))


def normalised(images):
    return (images.astype(np.float32) - np.array(CIFAR10.mean, np.float32)) / np.array(CIFAR10.std, np.float32)


def crop_of(output, source):
    """(dy, dx, mirrored) of the unique 32x32 window of the zero-padded (mirrored or not) `source`
    that equals `output`; None if no window or several do."""
    found = []
    for mirrored in (False, True):
        padded = np.pad(source[:, ::-1] if mirrored else source, ((4, 4), (4, 4), (0, 0)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (32, 32, 3))[:, :, 0]  # [9, 9, 32, 32, 3]
        close = np.abs(windows - output).max(axis=(2, 3, 4)) <= 1e-5
        found += [(dy, dx, mirrored) for dy, dx in zip(*np.nonzero(close))]
    return found[0] if len(found) == 1 else None


# --- loading: the tf.data pipeline's rules, without TensorFlow ------------------------------------


def test_loads_what_the_tf_data_pipeline_loads():
    data = pytest.importorskip("keras_preact.training.data")
    for ours, theirs in zip(device_data.load("cifar10", SAMPLE), data.load("cifar10", SAMPLE)):
        np.testing.assert_array_equal(ours.images, theirs.images)
        np.testing.assert_array_equal(ours.labels, theirs.labels)
        assert ours.class_names == theirs.class_names == choices.CIFAR10_CLASSES


def test_folder_rules_are_the_shared_ones(sample_copy):
    (sample_copy / "train" / "cat" / "._0000.jpg").write_bytes(b"macOS resource fork, not a JPEG")
    (sample_copy / "test" / ".ipynb_checkpoints").mkdir()
    train, test = device_data.load("cifar10", sample_copy)
    assert len(train) == len(test) == 30
    (sample_copy / "train" / "dog" / "0001.jpg").write_bytes(b"this is not a JPEG")
    with pytest.raises(ValueError, match=r"Cannot decode .*train/dog/0001.jpg: not a readable JPEG or PNG"):
        device_data.load("cifar10", sample_copy)
    shutil.rmtree(sample_copy / "test" / "ship")
    with pytest.raises(ValueError, match=r"train and test have different class folders \(ship differ\)"):
        device_data.load("cifar10", sample_copy)


def test_images_that_are_not_32x32(sample_copy):
    from PIL import Image

    Image.new("RGB", (24, 16)).save(sample_copy / "test" / "cat" / "odd.png")
    with pytest.raises(ValueError, match=r"test/cat/odd.png is 24x16; CIFAR images must be 32x32 RGB"):
        device_data.load("cifar10", sample_copy)


def test_grayscale_and_alpha_images_read_as_rgb(sample_copy):
    """As serving decodes them (issue 21.8): grey repeated into R, G and B, alpha dropped."""
    from PIL import Image

    Image.new("L", (32, 32), 7).save(sample_copy / "train" / "cat" / "gray.png")
    Image.new("RGBA", (32, 32), (1, 2, 3, 4)).save(sample_copy / "train" / "cat" / "rgba.png")
    train, _ = device_data.load("cifar10", sample_copy)
    first = list(train.labels).index(3) + 3  # after cat's 3 JPEGs, in name order
    np.testing.assert_array_equal(train.images[first], np.full((32, 32, 3), 7))
    np.testing.assert_array_equal(train.images[first + 1], np.broadcast_to([1, 2, 3], (32, 32, 3)))


def test_a_palette_png_reads_as_its_colours(sample_copy):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3)).astype(np.uint8)
    Image.fromarray(pixels).quantize(16).save(sample_copy / "train" / "cat" / "palette.png")
    expected = np.asarray(Image.open(sample_copy / "train" / "cat" / "palette.png").convert("RGB"))
    train, _ = device_data.load("cifar10", sample_copy)
    np.testing.assert_array_equal(train.images[list(train.labels).index(3) + 3], expected)  # after cat's 3 JPEGs


def test_the_device_pipeline_needs_an_image_folder(tmp_path):
    with pytest.raises(ValueError, match=r"reads cifar10 from an image folder and got no data_dir.*input_pipeline='tf_data'"):
        device_data.load("cifar10", None)
    with pytest.raises(ValueError, match=r"has no train/ and test/ folders"):
        device_data.load("cifar10", tmp_path)


# --- batches: the tf.data pipeline's semantics ----------------------------------------------------


@device_backends
def test_eval_batches_normalise_only_every_example_in_order():
    _, test = device_data.load("cifar10", SAMPLE)
    ours = batches(DEVICE.eval_batches(test, CIFAR10, batch_size=8))
    assert [len(y) for _, y in ours] == [8, 8, 8, 6]
    x = np.concatenate([b[0] for b in ours])
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, normalised(test.images), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in ours]), test.labels)
    data = pytest.importorskip("keras_preact.training.data")
    theirs = np.concatenate([b[0].numpy() for b in data.TFDataPipeline().eval_batches(test, CIFAR10, batch_size=8)])
    np.testing.assert_allclose(x, theirs, rtol=0, atol=1e-6)


@device_backends
def test_batches_stay_backend_tensors():
    x, y = train_batches(DEVICE, random_split(16), batch_size=8)[0]
    if BACKEND == "jax":
        import jax

        assert isinstance(x, jax.Array) and isinstance(y, jax.Array)
    else:
        import torch

        assert isinstance(x, torch.Tensor) and x.device == torch.device(keras.src.backend.torch.core.get_device())
    assert keras.backend.standardize_dtype(x.dtype) == "float32" and keras.backend.standardize_dtype(y.dtype) == "int32"
    assert tuple(x.shape) == (8, 32, 32, 3) and tuple(y.shape) == (8,)


def augmentations(dataset, split):
    """(dy, dx, mirrored) of every training example, by batch; asserts each is such a crop."""
    found = []
    for x, y in batches(dataset):
        rows = [crop_of(image, normalised(split.images[label])) for image, label in zip(x, y)]
        assert None not in rows, "an augmented image is not a flip and crop of its zero-padded source"
        found.append(rows)
    return found


@device_backends
def test_augmentation_is_a_flip_and_a_crop_of_the_zero_padded_image():
    split = random_split(256)
    found = augmentations(train_batches(DEVICE, split, batch_size=64, seed=1, epochs=4), split)
    every = [row for batch in found for row in batch]
    assert len(every) == 4 * 256
    assert 0.44 < np.mean([mirrored for _, _, mirrored in every]) < 0.56  # flip rate 1/2 (±3.8 sigma)
    for axis in (0, 1):
        counts = np.bincount([row[axis] for row in every], minlength=9)
        assert counts.size == 9 and counts.min() > 0.6 * len(every) / 9, counts  # offsets 0..8, each about 1/9
    for batch in found:
        assert len({(dy, dx) for dy, dx, _ in batch}) > 20  # per image, not one offset per batch
    # Rows and columns that fall in the padding are exactly zero (in normalised space).
    x, y = train_batches(DEVICE, split, batch_size=64, seed=1)[0]
    x = numpy(x)
    for image, (dy, dx, _) in zip(x, found[0]):
        assert (image[: max(0, 4 - dy)] == 0).all() and (image[36 - dy :] == 0).all()
        assert (image[:, : max(0, 4 - dx)] == 0).all() and (image[:, 36 - dx :] == 0).all()
        assert not (image[max(0, 4 - dy) : 36 - dy, max(0, 4 - dx) : 36 - dx] == 0).all(axis=-1).any()  # no zero pixel inside


@device_backends
def test_the_tf_data_pipeline_augments_the_same_way():
    """The reference: tf.data's examples, classified the same way, have the same rates."""
    data = pytest.importorskip("keras_preact.training.data")
    split = random_split(256)
    dataset = train_batches(data.TFDataPipeline(), split, batch_size=64, seed=1, epochs=4)
    every = []
    for x, y in dataset:
        every += [crop_of(image, normalised(split.images[label])) for image, label in zip(x.numpy(), y.numpy())]
    assert None not in every
    assert 0.44 < np.mean([mirrored for _, _, mirrored in every]) < 0.56
    assert {dy for dy, _, _ in every} == {dx for _, dx, _ in every} == set(range(9))


@device_backends
def test_an_epoch_depends_on_the_seed_and_its_number_only():
    """What a resumed run sees: epoch 2 started on its own equals epoch 2 after epochs 0 and 1."""
    _, test = device_data.load("cifar10", SAMPLE)
    uninterrupted = batches(train_batches(DEVICE, test, batch_size=8, seed=5, epochs=3))
    resumed = batches(train_batches(DEVICE, test, batch_size=8, seed=5, epochs=3, first_epoch=2))
    assert len(uninterrupted) == 9 and len(resumed) == 3  # 30 images: each epoch drops its partial batch
    for (xa, ya), (xb, yb) in zip(uninterrupted[6:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    again = batches(train_batches(DEVICE, test, batch_size=8, seed=5, epochs=3))
    for (xa, ya), (xb, yb) in zip(uninterrupted, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    epoch_labels = [np.concatenate([y for _, y in uninterrupted[e * 3 : e * 3 + 3]]) for e in range(3)]
    assert not np.array_equal(epoch_labels[0], epoch_labels[1])  # reshuffled every epoch
    other = batches(train_batches(DEVICE, test, batch_size=8, seed=6, epochs=1))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(uninterrupted, other))


@device_backends
def test_the_same_batches_on_jax_and_torch(tmp_path):
    """The draws are NumPy's: the other backend, in a fresh process, makes the same batches."""
    other = {"jax": "torch", "torch": "jax"}[BACKEND]
    code = (
        "import numpy as np, keras\n"
        "from keras_preact import choices\n"
        "from keras_preact.training import device_data, pipelines\n"
        "_, test = device_data.load('cifar10', %r)\n"
        "d = device_data.TrainBatches(test, choices.DATASETS['cifar10'], pipelines.BatchPlan(len(test), 8, 2), seed=9)\n"
        "np.savez(%r, *[keras.ops.convert_to_numpy(t) for i in range(len(d)) for t in d[i]])\n"
    ) % (SAMPLE, str(tmp_path / "other.npz"))
    env = dict(os.environ, KERAS_BACKEND=other, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _, test = device_data.load("cifar10", SAMPLE)
    ours = [t for batch in batches(train_batches(DEVICE, test, batch_size=8, seed=9, epochs=2)) for t in batch]
    theirs = np.load(tmp_path / "other.npz")
    assert len(theirs.files) == len(ours) == 12
    for index, array in enumerate(ours):
        np.testing.assert_allclose(theirs[f"arr_{index}"], array, rtol=0, atol=1e-6)


@device_backends
def test_processes_share_every_global_batch():
    _, test = device_data.load("cifar10", SAMPLE)
    assert_processes_share_every_global_batch(functools.partial(train_batches, DEVICE), test, batches)


@device_backends
@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(batch_size=8, process=(0, 3)), "batch_size=8 must divide evenly over 3 processes"),
        (dict(batch_size=8, process=(2, 2)), r"process index 2 must be in 0..1"),
        (dict(batch_size=64), "The training split has 30 images, fewer than one batch of 64"),
        (dict(batch_size=8, epochs=2, first_epoch=2), r"first_epoch=2 must be in 0..1 \(epochs=2\)"),
    ],
)
def test_bad_train_arguments(arguments, message):
    _, test = device_data.load("cifar10", SAMPLE)
    with pytest.raises(ValueError, match=message):
        train_batches(DEVICE, test, **arguments)


@device_backends
def test_training_batches_go_on_past_the_run_as_its_next_epoch():
    """What Keras' JAX trainer reads after the last step on an accelerator (one batch ahead)."""
    split = random_split(16)
    run = train_batches(DEVICE, split, batch_size=8, seed=2, epochs=1)
    longer = train_batches(DEVICE, split, batch_size=8, seed=2, epochs=2)
    for ours, theirs in zip(run[len(run)], longer[len(run)]):
        np.testing.assert_array_equal(numpy(ours), numpy(theirs))
    with pytest.raises(IndexError, match="Batch -1 of an endless stream"):
        run[-1]


@device_backends
def test_batches_past_the_end_are_an_index_error():
    dataset = DEVICE.eval_batches(random_split(10), CIFAR10, batch_size=4)
    with pytest.raises(IndexError, match="Batch 3 of 3"):
        dataset[3]


# --- Keras feeds the batches as they are ------------------------------------------------------------


@device_backends
def test_keras_passes_the_device_batches_through_unchanged():
    """fit's own adapter (Keras 3.15: PyDatasetAdapter) hands the steps the tensors we made, in our
    order: no copy to the host and back, no reshuffling."""
    from keras.src.trainers.data_adapters import get_data_adapter

    made = []

    class Recorded(device_data.TrainBatches):
        def __getitem__(self, index):
            made.append(super().__getitem__(index))
            return made[-1]

    dataset = Recorded(random_split(32), CIFAR10, pipelines.BatchPlan(32, 8, 3))
    with pytest.warns(UserWarning, match="shuffle=True` was passed, but will be ignored"):
        adapter = get_data_adapter(dataset, shuffle=True)  # fit's default: our order stands
    iterator = iter(adapter.get_jax_iterator() if BACKEND == "jax" else adapter.get_torch_dataloader())
    fed = [next(iterator) for _ in range(len(dataset))]
    assert len(made) == len(dataset)
    for ours, theirs in zip(made, fed):
        if BACKEND == "jax":
            assert theirs[0] is ours[0] and theirs[1] is ours[1]
        else:
            assert theirs[0].data_ptr() == ours[0].data_ptr() and theirs[0].device == ours[0].device
            assert theirs[1].data_ptr() == ours[1].data_ptr()
    np.testing.assert_array_equal(numpy(fed[4][1]), numpy(dataset[4][1]))  # batch i is batch i


# --- choosing the pipeline ------------------------------------------------------------------------


def test_choosing_the_pipeline(monkeypatch):
    with pytest.raises(ValueError, match=r"Unknown input_pipeline='gpu'. Valid values: 'auto', 'tf_data', 'device'"):
        pipelines.resolve("gpu")
    monkeypatch.setattr(pipelines, "tensorflow_installed", lambda: True)
    assert pipelines.resolve("auto") == "tf_data"
    if BACKEND == "tensorflow":
        with pytest.raises(ValueError, match="input_pipeline='device' is for the jax and torch backends"):
            pipelines.resolve("device")
        return
    assert pipelines.resolve("device") == "device" and isinstance(pipelines.get("device"), device_data.DevicePipeline)
    monkeypatch.setattr(pipelines, "tensorflow_installed", lambda: False)
    assert pipelines.resolve("auto") == "device"
    with pytest.raises(ValueError, match="input_pipeline='tf_data' needs TensorFlow, which is not installed here"):
        pipelines.resolve("tf_data")


def test_the_command_offers_the_registry_choices():
    text = train.parser().format_help()  # the command's --help (tests/test_commands.py runs it)
    assert "--input_pipeline {auto,tf_data,device}" in text
    assert list(choices.INPUT_PIPELINES.names) == ["auto", "tf_data", "device"]


def test_a_bad_choice_in_the_configuration():
    with pytest.raises(ValueError, match=r"Unknown input_pipeline='host'"):
        training.RunConfig(depth=8, input_pipeline="host").resolved()


# --- runs -----------------------------------------------------------------------------------------


def read_history(path):
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@device_backends
def test_a_run_on_the_sample_folder_learns_without_tensorflow_and_resumes_bit_for_bit(tmp_path):
    """examples/cifar.py where TensorFlow cannot be imported: auto picks the device pipeline, says
    so, records it, and the loss falls; killed (-9) after its first epoch and started again, it
    logs exactly what the uninterrupted run logged."""
    cifar = os.path.join(ROOT, "examples", "cifar.py")
    common = [f"--data_dir={SAMPLE}", "--depth=8", "--batch_size=10", "--epochs=16", "--recipe=official", "--seed=3"]
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")

    def run(model_dir):
        done = subprocess.run(without_tensorflow(cifar, common + [f"--model_dir={model_dir}"]), env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        assert tensorflow_modules(done.stdout) == []
        return done

    whole = tmp_path / "whole"
    done = run(whole)
    assert "Input pipeline: device" in done.stderr and "input pipeline device" in done.stdout
    results = json.loads((whole / "results.json").read_text())
    assert results["input_pipeline"] == "device" and results["steps"] == 16 * 3
    assert json.loads((whole / "config.json").read_text())["input_pipeline"] == "device"
    history = read_history(whole / "history.csv")
    losses, accuracies = [row["loss"] for row in history], [row["accuracy"] for row in history]
    assert np.mean(losses[-5:]) < 0.92 * losses[0], losses
    assert np.mean(accuracies[-5:]) > 0.25, accuracies  # 10 classes: chance is 0.1
    assert not (whole / "logs").exists()  # TensorBoard writes through TensorFlow
    assert (whole / "curves.png").exists()

    resumed = tmp_path / "resumed"
    process = subprocess.Popen(without_tensorflow(cifar, common + [f"--model_dir={resumed}"]), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (resumed / "checkpoint.weights.h5").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (resumed / "checkpoint.weights.h5").exists(), "the run never wrote a checkpoint"
    assert "Resuming from" in run(resumed).stderr
    assert read_history(resumed / "history.csv") == history  # bit for bit


@device_backends
def test_a_run_resumes_only_on_its_own_pipeline(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    split = random_split(40)
    split = sources.Split(split.images, split.labels % 10)
    settings = dict(depth=8, epochs=1, batch_size=20, model_dir=str(tmp_path))
    assert training.run(training.RunConfig(**settings, input_pipeline="device"), split, split, verbose=0)["input_pipeline"] == "device"
    with pytest.raises(ValueError, match=r"other settings \(input_pipeline: 'device' there, 'tf_data' now\)"):
        training.run(training.RunConfig(**settings, input_pipeline="tf_data"), split, split, verbose=0)
    # With TensorFlow installed "auto" is tf_data: not this run's pipeline either.
    with pytest.raises(ValueError, match=r"input_pipeline: 'device' there, 'tf_data' now"):
        training.run(training.RunConfig(**settings), split, split, verbose=0)
    # A config.json from before the field existed reads as "auto", resolved as today.
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["input_pipeline"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    monkeypatch.setattr(pipelines, "tensorflow_installed", lambda: False)
    assert training.run(training.RunConfig(**settings), split, split, verbose=0)["input_pipeline"] == "device"


@device_backends
def test_export_without_tensorflow_is_refused_before_training(tmp_path):
    arguments = [f"--data_dir={SAMPLE}", "--depth=8", "--batch_size=10", "--epochs=1",
                 f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}"]
    done = subprocess.run(without_tensorflow(os.path.join(ROOT, "examples", "cifar.py"), arguments),
                          env=dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "export_dir needs TensorFlow (a SavedModel), which is not installed here" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()  # refused before anything was written


@device_backends
def test_two_processes_with_the_device_pipeline_train_like_one(tmp_path):
    """JAX processes under DataParallel, torch processes under DDP: each makes its slice of every
    global batch on its device; the losses equal one process's (see test_distributed for the
    tolerance)."""
    from test_distributed import RUN, process_commands

    common = ["--epochs=2", "--batch_norm=synchronized", "--input_pipeline=device"]
    processes = [subprocess.Popen(command + common + [f"--model_dir={tmp_path / 'two'}"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for command, env in process_commands([])]
    for process in processes:
        output = process.communicate(timeout=600)[0]
        assert process.returncode == 0, output[-4000:]
    single = subprocess.run([sys.executable, *RUN, *common, f"--model_dir={tmp_path / 'one'}"], capture_output=True, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["processes"] == 2 and results["input_pipeline"] == "device"
    two, one = (read_history(tmp_path / name / "history.csv") for name in ("two", "one"))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([row[key] for row in two], [row[key] for row in one], rtol=1e-4, err_msg=key)
