"""One training run: data, model, recipe and placement in; checkpoints, logs and results out.

`run(RunConfig(...))` is what `examples/cifar.py` and `examples/ablation.py` call. A run writes to
`model_dir`: `config.json`, `checkpoint.weights.h5` (model + optimizer after the last good epoch;
a restarted run resumes from it), `history.csv`, TensorBoard `logs/`, and at the end
`model.weights.h5`, `results.json` and `curves.png`.
"""

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import time

import keras
import numpy as np

from keras_preact import data, distribute, recipe as recipes
from keras_preact.export import export_saved_model
from keras_preact.models import CIFAR_DEPTH_RULE, PreActResNet, units_per_stage

log = logging.getLogger("keras_preact")

PRECISIONS = {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


@dataclasses.dataclass
class RunConfig:
    """Everything that defines a run (saved as `model_dir/config.json`)."""

    dataset: str = "cifar10"
    data_dir: str = None
    depth: int = 164
    block: str = None  # None: as the paper uses the depth (see default_block)
    recipe: str = "paper"
    epochs: int = None  # None: the recipe's
    batch_size: int = None  # None: the recipe's; the learning rate scales with it
    train_subset: int = None
    model_dir: str = "runs/cifar"
    strategy: str = "auto"
    mixed_precision: str = "none"
    seed: int = 0
    model_options: dict = dataclasses.field(default_factory=dict)  # more PreActResNet arguments


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def default_block(depth):
    """The block the paper uses at `depth`: basic for the 6n+2 family (20 … 110, 1202),
    bottleneck for 164, 1001 and other 9n+2 depths."""
    if depth in (164, 1001):
        return "bottleneck"
    for block in ("basic", "bottleneck"):
        a, b = CIFAR_DEPTH_RULE[block]
        if depth > b and (depth - b) % a == 0:
            return block
    return "bottleneck"  # PreActResNet then explains which depths are valid


# --- callbacks --------------------------------------------------------------------------------


class StopOnNaN(keras.callbacks.Callback):
    """Stops at the first non-finite training loss and remembers where."""

    def __init__(self):
        super().__init__()
        self.where = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.where = f"epoch {self.epoch + 1}, step {batch + 1}"
            self.model.stop_training = True


class Checkpoint(keras.callbacks.Callback):
    """Writes model + optimizer state after every epoch whose loss is finite, atomically.

    The optimizer's iteration count is inside the file, so a restarted run knows its epoch and
    learning rate from the file alone; a kill at any point leaves the previous file intact.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite(float((logs or {}).get("loss", 0.0))):
            return  # keep the last good state
        partial = self.path + ".partial.weights.h5"
        self.model.save_weights(partial)
        os.replace(partial, self.path)


class Throughput(keras.callbacks.Callback):
    """Training images per second per epoch, validation excluded."""

    def __init__(self, global_batch):
        super().__init__()
        self.global_batch = global_batch
        self.rates = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.steps, self.measured = time.perf_counter(), 0, False

    def on_train_batch_end(self, batch, logs=None):
        self.steps = batch + 1

    def _record(self):
        if not self.measured and self.steps:
            self.rates.append(self.steps * self.global_batch / (time.perf_counter() - self.start))
            self.measured = True

    def on_test_begin(self, logs=None):
        self._record()

    def on_epoch_end(self, epoch, logs=None):
        self._record()

    def images_per_second(self):
        # The first epoch includes tracing and compilation; leave it out when there are others.
        rates = self.rates[1:] or self.rates
        return float(np.median(rates)) if rates else 0.0


# --- the run ----------------------------------------------------------------------------------


def _check_resumable(config, path):
    saved = dataclasses.asdict(config)
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        differences = [k for k in saved if k != "epochs" and previous.get(k) != saved[k]]
        if differences:
            raise ValueError(
                f"{config.model_dir} holds a run with other settings ({', '.join(differences)}: "
                f"{', '.join(f'{previous.get(k)!r} there, {saved[k]!r} now' for k in differences)}). "
                "Use a new --model_dir, or the same settings to resume."
            )
    with open(path, "w") as f:
        json.dump(saved, f, indent=2)


@contextlib.contextmanager
def _dtype_policy(name):
    """Keras reads the global dtype policy when a layer is made: set it for this model only, so a
    mixed-precision run does not change the caller's later models."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def run(config, train_split=None, test_split=None, export_dir=None, verbose=1):
    """Trains, evaluates and returns the results dict (also written to `model_dir/results.json`).

    `train_split`/`test_split` (`data.Split`, e.g. from `data.from_arrays`) replace the dataset
    source when given. With `export_dir`, the trained model is exported there as a TF Serving
    SavedModel (`export_saved_model`, next free version).
    """
    started = time.perf_counter()
    info = data.dataset_info(config.dataset)
    plan = recipes.get_recipe(config.recipe)
    if config.mixed_precision not in PRECISIONS:
        raise ValueError(f"Unknown mixed_precision={config.mixed_precision!r}. Valid: {', '.join(PRECISIONS)}.")
    block = config.block or default_block(config.depth)
    epochs = config.epochs or plan.epochs
    batch_size = config.batch_size or plan.batch_size
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}.")
    units_per_stage(config.depth, block, "cifar")  # a bad depth/block fails before any data loads

    os.makedirs(config.model_dir, exist_ok=True)
    _check_resumable(config, os.path.join(config.model_dir, "config.json"))
    keras.utils.set_random_seed(config.seed)

    placement = distribute.place(config.strategy)
    if train_split is None or test_split is None:
        train_split, test_split = data.load(config.dataset, config.data_dir)
    train_split = train_split.subset(config.train_subset)
    if batch_size % placement.replicas:
        raise ValueError(f"batch_size={batch_size} must divide evenly over {placement.replicas} replicas.")
    train_data = data.train_dataset(train_split, info, batch_size, seed=config.seed)
    test_data = data.eval_dataset(test_split, info, batch_size)
    steps_per_epoch = len(train_split) // batch_size
    log.info(
        "%s: depth %d %s, %s recipe, %d epochs x %d steps of %d images, %s",
        config.dataset, config.depth, block, plan.name, epochs, steps_per_epoch, batch_size, placement.description,
    )

    with placement.scope():
        with _dtype_policy(PRECISIONS[config.mixed_precision]):
            model = PreActResNet(config.depth, block=block, classes=info.classes, **config.model_options)
        model.compile(
            optimizer=recipes.make_optimizer(plan, steps_per_epoch, epochs, batch_size),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        checkpoint_path = os.path.join(config.model_dir, "checkpoint.weights.h5")
        initial_epoch = 0
        if os.path.exists(checkpoint_path):
            model.optimizer.build(model.trainable_variables)
            model.load_weights(checkpoint_path)
            done = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
            if done == 0:  # Keras only warns when the optimizer state does not fit
                raise ValueError(
                    f"{checkpoint_path} holds no optimizer state for this run; use a new --model_dir."
                )
            initial_epoch = done // steps_per_epoch
            log.info("Resuming from %s after epoch %d", checkpoint_path, initial_epoch)

    nan_guard, throughput = StopOnNaN(), Throughput(batch_size)
    callbacks = [
        nan_guard,
        throughput,
        keras.callbacks.CSVLogger(os.path.join(config.model_dir, "history.csv"), append=True),
        Checkpoint(checkpoint_path),
        keras.callbacks.TensorBoard(os.path.join(config.model_dir, "logs")),
    ]
    if initial_epoch < epochs:
        model.fit(
            train_data,
            epochs=epochs,
            initial_epoch=initial_epoch,
            validation_data=test_data,
            shuffle=False,  # the pipeline shuffles, reproducibly
            callbacks=callbacks,
            verbose=verbose,
        )
    if nan_guard.where:
        raise TrainingDiverged(
            f"The training loss became NaN at {nan_guard.where}. The last good state stays in "
            f"{checkpoint_path}. Lower the learning rate (a smaller --batch_size scales it down) "
            "or check the input data."
        )

    _, accuracy = model.evaluate(test_data, verbose=0)
    model.save_weights(os.path.join(config.model_dir, "model.weights.h5"))
    history = read_history(os.path.join(config.model_dir, "history.csv"))
    results = {
        "dataset": config.dataset,
        "depth": config.depth,
        "block": block,
        "recipe": plan.name,
        "backend": keras.backend.backend(),
        "epochs": epochs,
        "batch_size": batch_size,
        "train_images": len(train_split),
        "steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "replicas": placement.replicas,
        "placement": placement.description,
        "test_error": round(100.0 * (1.0 - float(accuracy)), 3),
        "test_accuracy": float(accuracy),
        "train_images_per_second": round(throughput.images_per_second(), 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "parameters": model.count_params(),
        "model_options": config.model_options,
    }
    if export_dir:
        results["export"] = export_saved_model(model, export_dir, config.dataset, version=next_version(export_dir))
    with open(os.path.join(config.model_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot_curves(history, os.path.join(config.model_dir, "curves.png"), title=f"{config.dataset} ResNet-{config.depth} ({block})")
    log.info("Test error %.2f%% after %d epochs; results in %s", results["test_error"], epochs, config.model_dir)
    return results


def next_version(export_dir):
    """One more than the highest numbered version folder in `export_dir` (1 when there is none)."""
    versions = [int(name) for name in os.listdir(export_dir) if name.isdigit()] if os.path.isdir(export_dir) else []
    return max(versions, default=0) + 1


def read_history(path):
    """Per-epoch rows of history.csv, the last row kept where a resumed run repeated an epoch."""
    if not os.path.exists(path):
        return []
    rows = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            rows[int(row["epoch"])] = {k: float(v) for k, v in row.items() if v not in ("", None)}
    return [rows[epoch] for epoch in sorted(rows)]


def plot_curves(history, path, title=""):
    """Loss and error (%) per epoch, training and test, as a PNG."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] + 1 for row in history]
    figure, (loss_axis, error_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("loss", "train"), ("val_loss", "test")):
        if key in history[0]:
            loss_axis.plot(epochs, [row[key] for row in history], marker=".", label=label)
    for key, label in (("accuracy", "train"), ("val_accuracy", "test")):
        if key in history[0]:
            error_axis.plot(epochs, [100 * (1 - row[key]) for row in history], marker=".", label=label)
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    error_axis.set(xlabel="epoch", ylabel="error (%)", title="error")
    for axis in (loss_axis, error_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
