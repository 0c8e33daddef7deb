"""One training run: a resolved configuration in; checkpoints, logs, results and an export out.

`run(RunConfig(...))` is what `examples/cifar.py` and the ablation grid call. A run writes to
`model_dir`: `config.json`, `checkpoint.weights.h5` (model + optimizer after the last good epoch;
a restarted run resumes from it), `history.csv`, TensorBoard `logs/` (tf.data pipeline), and at
the end `model.weights.h5`, `results.json` and `curves.png`. The input pipeline is chosen by
`pipelines` and imported only when chosen: on the device pipeline nothing imports TensorFlow.

The run is six named stages: `prepare` (resolve, check and load; nothing written), `restore`
(the checkpoint, if any: the first epoch), `train`, `evaluate`, `export` and `report`.
"""

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import tempfile
import time

import keras

from keras_preact import choices, runtime
from keras_preact.model.builders import load_weights
from keras_preact.serving.layout import check_export_dir, next_version, unwritable
from keras_preact.serving.saved_model import export_saved_model
from keras_preact.training import custom_loop, distribute, folders, pipelines, step_capture
from keras_preact.training.callbacks import Checkpoint, StopOnNaN, Throughput
from keras_preact.training.config import RunConfig, build_model, write_json
from keras_preact.training.recipe import make_optimizer, warmup_steps
from keras_preact.training.report import plot_curves, read_history

log = logging.getLogger("keras_preact")

CHECKPOINT = "checkpoint.weights.h5"
LOCK = ".lock"  # in model_dir: locked (flock) by the run that writes there, holding its process id


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def run(config, train_split=None, test_split=None, export_dir=None, verbose=1, callbacks=None):
    """Trains, evaluates and returns the results dict (also written to `model_dir/results.json`);
    in a multi-process run, the chief returns it and the other processes return None.

    `config`: a `RunConfig`, resolved here, or the `ResolvedRunConfig` its `resolved()` returned
    (taken as it is). `train_split`/`test_split` (`sources.Split`, e.g. from `sources.from_arrays`)
    replace the dataset source when given. With `export_dir`, the trained model is exported there
    as a TF Serving SavedModel (`export_saved_model`, next free version). `callbacks`: Keras
    callbacks called as the run trains, on every backend and engine (after the run's own).
    """
    started = time.perf_counter()
    prepared = prepare(config, train_split, test_split, export_dir, callbacks, verbose)
    with distribute.peers_report_first(), _own_folder(prepared.config.model_dir, prepared.placement.is_chief) as folder:
        model = _compiled_model(prepared)
        first_epoch = restore(model, prepared.config.model_dir, prepared.plan.steps, prepared.placement)
        # Every process starts where the chief does, with its weights (a worker may have no model_dir).
        first_epoch = distribute.agree_on_start(prepared.placement, model, first_epoch)
        _record_start(prepared, first_epoch)
        engine = _custom_loop_engine(model, prepared.placement, prepared.plan.batch_size, prepared.step)
        step = _train_step(model, engine, prepared.step)
        test_data = _test_batches(prepared)
        rate = train(model, engine, prepared, first_epoch, test_data, folder)
        accuracy = evaluate(model, engine, test_data)
        model.save_weights(os.path.join(folder, "model.weights.h5"))
        exported = export(model, prepared, folder, export_dir)
    distribute.finished()  # a process ending now is not lost to its peers' heartbeat
    if not prepared.placement.is_chief:
        return None
    measured = {"accuracy": accuracy, "rate": rate, "started": started, "step": step}
    return report(prepared, model, first_epoch, measured, exported)


@dataclasses.dataclass(frozen=True)
class PreparedRun:
    """What the stages of a run share: its resolved configuration (the pipeline that runs named),
    where it runs, its data, the plan of its batches, and how a torch step runs (`step`:
    `step_capture.resolve`'s mode, None on the other backends)."""

    config: RunConfig
    placement: distribute.Placement
    pipeline: pipelines.InputPipeline
    train_split: object
    test_split: object
    plan: pipelines.BatchPlan
    class_names: list
    callbacks: list
    verbose: int
    step: str

    @property
    def info(self):
        return self.config.dataset_record()


def prepare(config, train_split, test_split, export_dir, callbacks, verbose):
    """Everything checked and loaded before the run claims `model_dir`: a bad value fails here,
    with nothing written."""
    config = config.resolved()  # a ResolvedRunConfig is itself
    callbacks = _check_callbacks(callbacks)
    _check_environment(export_dir)
    # "auto" resolved before the run is claimed: config.json names the pipeline that ran, and a
    # resume on another one (other random draws) is refused.
    config = config.completed(input_pipeline=pipelines.resolve(config.input_pipeline))
    step = step_capture.resolve(config.step_capture)
    # First, before TensorFlow runs any op: multi-worker collectives are configured at start-up.
    placement = distribute.place(config.strategy)
    _check_model_dir(config)
    if placement.is_chief:
        _check_free(config.model_dir)  # before minutes of decoding, not after
    keras.utils.set_random_seed(config.seed)
    pipeline = pipelines.get(config.input_pipeline)
    log.info("Input pipeline: %s (%s)", config.input_pipeline, choices.INPUT_PIPELINES[config.input_pipeline])
    if train_split is None or test_split is None:
        train_split, test_split = pipeline.load(config.dataset, config.data_dir, folders.reading(config, verbose))
    train_split = train_split.subset(config.train_subset)
    config = folders.complete(config, train_split)  # a folder's classes and normalisation
    _check_same_images(config, train_split.class_names)  # a resume on a folder that changed since
    plan = pipelines.BatchPlan(len(train_split), config.batch_size, config.epochs, placement.replicas, placement.data_shard)
    _check_test_split(len(test_split), plan)
    log.info(
        "%s: depth %d %s, %s recipe, %d epochs x %d steps of %d images, %s",
        config.dataset, config.depth, config.block, config.recipe, config.epochs, plan.steps,
        config.batch_size, placement.description,
    )
    class_names = _class_names(config, train_split, test_split)
    return PreparedRun(config, placement, pipeline, train_split, test_split, plan, class_names, callbacks, verbose, step)


def _check_environment(export_dir):
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "training.run feeds channels-last batches (height, width, channels), but Keras' image_data_format "
            "is 'channels_first': set it to 'channels_last' (keras.config.set_image_data_format or "
            "~/.keras/keras.json) for training; the trained weights load into a channels-first model too."
        )
    if export_dir is not None:
        check_export_dir(export_dir)  # before hours of training, not after
        if not pipelines.tensorflow_installed():
            raise ValueError(
                "export_dir needs TensorFlow (a SavedModel), which is not installed here. Train without "
                "export_dir and export the run later with `python -m keras_preact.export` where TensorFlow is."
            )


def _check_callbacks(callbacks):
    if callbacks is None:
        return []
    if isinstance(callbacks, keras.callbacks.Callback):
        callbacks = [callbacks]
    if not isinstance(callbacks, (list, tuple)) or not all(isinstance(c, keras.callbacks.Callback) for c in callbacks):
        raise ValueError(f"callbacks must be a list of keras.callbacks.Callback instances, got {callbacks!r}.")
    return list(callbacks)


def _check_test_split(images, plan):
    """JAX shards every batch over the devices evenly (TensorFlow's strategies pad, torch
    processes evaluate their own share): a last test batch that cannot split is refused now
    rather than after the first epoch."""
    last = images % plan.batch_size
    if keras.backend.backend() == "jax" and plan.replicas > 1 and last % plan.replicas:
        raise ValueError(
            f"The test set's last batch of {last} images ({images} images in batches of "
            f"{plan.batch_size}) does not split over {plan.replicas} devices on JAX: pick a batch_size "
            f"whose remainder is a multiple of {plan.replicas}, e.g. one that divides {images}."
        )


def _record_start(prepared, first_epoch):
    """The chief writes the run's files (none before its data loaded): config.json, the class
    names, and history.csv trimmed to the epochs the checkpoint holds."""
    if prepared.placement.is_chief:
        model_dir = prepared.config.model_dir
        prepared.config.save(os.path.join(model_dir, "config.json"))
        write_json(os.path.join(model_dir, "class_names.json"), {"class_names": prepared.class_names})
        _trim_history(os.path.join(model_dir, "history.csv"), first_epoch)


def _test_batches(prepared):
    # torch processes evaluate their own share of the test set, TensorFlow's strategies split
    # it themselves; JAX processes each feed all of it (the global batch holds it per process).
    placement, test_split = prepared.placement, prepared.test_split
    if placement.strategy is None and placement.custom_loop:
        test_split = test_split.shard(*placement.data_shard)
    return prepared.pipeline.eval_batches(test_split, prepared.info, prepared.config.batch_size)


def evaluate(model, engine, test_data):
    """The test accuracy of the trained model (every process's share, on the custom loop)."""
    if engine is not None:
        return float(custom_loop.evaluate(engine, test_data)[1])
    return float(model.evaluate(test_data, verbose=0)[1])


def export(model, prepared, folder, export_dir):
    """The SavedModel export's summary, or None without `export_dir`. Every process exports (a
    collective on JAX); the others into their scratch folder."""
    if export_dir is None:
        return None
    target = export_dir if prepared.placement.is_chief else os.path.join(folder, "export")
    return export_saved_model(model, target, prepared.info, version=next_version(target), class_names=prepared.class_names)


def report(prepared, model, first_epoch, measured, exported):
    """Writes results.json and curves.png; returns the results."""
    config, placement = prepared.config, prepared.placement
    results = {
        "dataset": config.dataset,
        "depth": config.depth,
        "block": config.block,
        "recipe": config.recipe,
        "backend": keras.backend.backend(),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        **config.optimizer_settings,
        "warmup_epochs": warmup_steps(choices.RECIPES[config.recipe], config.warmup_epochs, config.epochs, prepared.plan.steps)
        / prepared.plan.steps,  # the warm-up the run had
        "train_images": len(prepared.train_split),
        "steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "replicas": placement.replicas,
        "processes": placement.processes,
        "batch_norm": config.batch_norm,
        "placement": placement.description,
        "input_pipeline": config.input_pipeline,
        "test_error": round(100.0 * (1.0 - measured["accuracy"]), 3),
        "test_accuracy": measured["accuracy"],
        "train_images_per_second": round(measured["rate"], 1),
        "wall_seconds": round(time.perf_counter() - measured["started"], 1),
        **_earlier_training(config.model_dir, first_epoch, config.epochs),
        "parameters": model.count_params(),
        "model_options": config.model_options,
        "class_names": prepared.class_names,
        "machine": runtime.describe(),
        **({"train_step": measured["step"].summary()} if measured["step"] else {}),
        **({"export": exported} if exported else {}),
    }
    write_json(os.path.join(config.model_dir, "results.json"), results)
    title = f"{config.dataset} ResNet-{config.depth} ({config.block})"
    plot_curves(read_history(os.path.join(config.model_dir, "history.csv")), os.path.join(config.model_dir, "curves.png"), title=title)
    log.info("Test error %.2f%% after %d epochs; results in %s", results["test_error"], config.epochs, config.model_dir)
    return results


@contextlib.contextmanager
def _own_folder(model_dir, chief):
    """Where this process saves weights: `model_dir` (created) for the chief; for the others a
    scratch folder, removed at the end. They must save too: on JAX, reading a sharded variable is a collective that
    every process joins (TensorFlow's multi-worker guide does the same with temporary folders)."""
    if chief:
        os.makedirs(model_dir, exist_ok=True)
        with _exclusive(model_dir):
            yield model_dir
    else:
        with tempfile.TemporaryDirectory(prefix="keras_preact_worker_") as scratch:
            yield scratch


def _compiled_model(prepared):
    config, placement = prepared.config, prepared.placement
    with placement.scope():
        model = build_model(config, batch_norm_options=distribute.batch_norm_options(config.batch_norm, placement))
        model.compile(  # a mixed_float16 model gets Keras' loss scaling here
            optimizer=make_optimizer(
                choices.RECIPES[config.recipe], prepared.plan.steps, config.epochs, config.batch_size,
                config.optimizer_settings,
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        model.optimizer.build(model.trainable_variables)  # under the strategy, before any step
    return model


def _custom_loop_engine(model, placement, global_batch, step_mode):
    """The step of `training.custom_loop` where Keras' fit cannot train (None elsewhere)."""
    if not placement.custom_loop:
        return None
    if placement.strategy is not None:
        return custom_loop.TensorFlowWorkers(model, placement.strategy, global_batch)
    return custom_loop.TorchProcesses(model, step_mode)


def _train_step(model, engine, step_mode):
    """The torch training step as `step_mode` runs it (a `step_capture.CapturedStep`; fit's is
    installed as the model's train_function); None on the other backends."""
    if step_mode is None:
        return None
    if engine is not None:
        return engine.step
    step = step_capture.CapturedStep(model.train_step, step_capture.graphs_for(step_mode))
    model.train_function = step.keras_train_function  # Keras' torch fit keeps a train_function it finds
    return step


def train(model, engine, prepared, first_epoch, test_data, folder):
    """Trains the remaining epochs (fit, or the custom loop's `engine`); returns the training images/s."""
    config, plan = prepared.config, prepared.plan
    nan_guard, throughput = StopOnNaN(), Throughput(config.batch_size)
    callbacks = [nan_guard, throughput, *prepared.callbacks]
    if prepared.placement.is_chief:
        callbacks += [keras.callbacks.CSVLogger(os.path.join(folder, "history.csv"), append=True), *_tensorboard(config, folder)]
    # Last: a kill between the epoch's row and its checkpoint leaves a row the resume trims and
    # writes again; the other order would lose the row.
    callbacks.append(Checkpoint(os.path.join(folder, CHECKPOINT)))
    if first_epoch < config.epochs:
        augmentation = choices.RECIPES[config.recipe].augmentation
        train_data = prepared.pipeline.train_batches(
            prepared.train_split, prepared.info, plan, config.seed, first_epoch, augmentation
        )
        verbose = prepared.verbose if prepared.placement.is_chief else 0
        if engine is not None:
            custom_loop.fit(model, engine, train_data, plan, first_epoch, test_data, callbacks, verbose)
        else:
            model.fit(
                train_data,
                epochs=config.epochs,
                initial_epoch=first_epoch,
                steps_per_epoch=plan.steps,
                validation_data=test_data,
                shuffle=False,  # the pipeline shuffles, per (seed, epoch)
                callbacks=callbacks,
                verbose=verbose,
            )
    if nan_guard.where:
        raise TrainingDiverged(_divergence_message(nan_guard.where, os.path.join(config.model_dir, CHECKPOINT)))
    return throughput.images_per_second()


def _tensorboard(config, folder):
    """Keras' TensorBoard callback writes through TensorFlow, which the device pipeline leaves out."""
    if config.input_pipeline != "tf_data":
        log.info("No TensorBoard logs with input_pipeline=%r (they need TensorFlow); history.csv and "
                 "curves.png hold the curves.", config.input_pipeline)
        return []
    return [keras.callbacks.TensorBoard(os.path.join(folder, "logs"))]


def _check_model_dir(config):
    """Checks that the `config.json` there, if any, describes this run (a resume)."""
    if os.path.exists(config.model_dir) and not os.path.isdir(config.model_dir):
        raise NotADirectoryError(f"model_dir {config.model_dir!r} is a file; pass a folder for the run's files.")
    path = os.path.join(config.model_dir, "config.json")
    if os.path.exists(path):
        try:
            previous = RunConfig.load(path).to_dict()
        except (OSError, ValueError) as error:
            raise ValueError(f"{error} Use a new model_dir, or remove {path}.") from None
        if previous["input_pipeline"] == "auto":  # written before the pipeline was recorded
            previous["input_pipeline"] = pipelines.resolve("auto")
        now = config.to_dict()
        # Where the folder is, how its data folder is spelled, or how the step runs (the same
        # arithmetic) does not make it another run.
        for values in (previous, now):
            values["data_dir"] = values["data_dir"] and os.path.realpath(values["data_dir"])
        # What the data fills in (a folder's classes and normalisation) is compared once it has.
        differences = [key for key in now if key not in ("model_dir", "step_capture") and previous[key] != now[key]
                       and not (key in folders.FROM_DATA and now[key] is None)]
        if differences:
            raise ValueError(
                f"{config.model_dir} holds a run with other settings ("
                + ", ".join(f"{key}: {previous[key]!r} there, {now[key]!r} now" for key in differences)
                + "). Use a new model_dir, or the same settings to resume."
            )


def _check_same_images(config, class_names):
    """Refuses to resume a run on an image folder that changed since the run began: what the data
    decides (its classes, `folders.FROM_DATA`) must be what the run recorded."""
    path = os.path.join(config.model_dir, "config.json")
    if config.dataset != "folder" or not os.path.exists(path):
        return
    names_path = os.path.join(config.model_dir, "class_names.json")
    recorded_names = None
    if os.path.exists(names_path):
        with open(names_path) as f:
            recorded_names = json.load(f)["class_names"]
    changed = folders.changes(RunConfig.load(path).to_dict(), config.to_dict(), recorded_names, class_names)
    if changed:
        raise ValueError(
            f"{config.model_dir} holds a run on other images than {config.data_dir} holds now ({'; '.join(changed)}): "
            "restore the folder's images to resume, or use a new model_dir."
        )


def _class_names(config, train_split, test_split):
    """The names of the classes the model will output; a folder of another dataset is refused
    before training, not at export."""
    dataset = config.dataset_record()
    names = list(train_split.class_names or dataset.class_names or map(str, range(dataset.classes)))
    if len(names) != dataset.classes and config.dataset == "folder":
        raise ValueError(
            f"classes={dataset.classes}, but the image folder has {len(names)} class folders ({', '.join(names[:12])}): "
            "leave classes unset to take the folder's."
        )
    if len(names) != dataset.classes:
        raise ValueError(
            f"The training images have {len(names)} classes ({', '.join(names[:12])}), {config.dataset} has "
            f"{dataset.classes}: pass the dataset these images belong to (dataset='folder' takes any image folder's classes), "
            "or a folder with one subfolder per class."
        )
    if test_split.class_names is not None and list(test_split.class_names) != names:
        raise ValueError(
            f"The test images' classes ({', '.join(test_split.class_names[:12])}) are not the training images' "
            f"({', '.join(names[:12])}): give train/ and test/ the same class folders."
        )
    return names


def _lock(lock, model_dir, mode):
    """Takes the flock `mode` on `lock`, the open LOCK file of `model_dir`, without waiting; a
    RuntimeError naming the run that holds it otherwise."""
    try:
        fcntl.flock(lock, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        raise RuntimeError(
            f"{model_dir} is in use by another run (process {lock.read().strip() or '?'}); wait for it to "
            "finish, or use another model_dir."
        ) from None


def _check_free(model_dir):
    """Refuses now a `model_dir` that this run could not write, or that another run holds
    (`_exclusive`), which this run claims only once its data is loaded (nothing is written before)."""
    found = unwritable(model_dir)
    if found is not None:
        existing, reason = found
        raise PermissionError(
            f"model_dir {model_dir} cannot be written ({existing} {'is a file' if reason == 'file' else 'is read-only to this process'}); "
            "pass a folder this process may write, where the run keeps its checkpoint and results."
        )
    try:
        lock = open(os.path.join(model_dir, LOCK))
    except OSError:  # no lock file (no run has written there), or no folder
        return
    with lock:
        _lock(lock, model_dir, fcntl.LOCK_SH)  # released at once: the claim is `_exclusive`'s


@contextlib.contextmanager
def _exclusive(model_dir):
    """Holds a lock on `model_dir` while this run writes there: a second run into the same folder
    (the same command started twice) is refused instead of interleaving checkpoints."""
    with open(os.path.join(model_dir, LOCK), "a+") as lock:
        _lock(lock, model_dir, fcntl.LOCK_EX)
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def _trim_history(path, first_epoch):
    """Keeps the rows of the epochs the checkpoint holds: a row written before a kill (or before
    the checkpoint was removed to start afresh) is written again by the epoch that redoes it."""
    if not os.path.exists(path):
        return
    if first_epoch == 0:
        os.remove(path)
        return
    with open(path) as f:
        lines = f.readlines()
    epochs = [line.split(",", 1)[0] for line in lines[1:]]
    kept = lines[:1] + [line for line, epoch in zip(lines[1:], epochs) if epoch.isdigit() and int(epoch) < first_epoch]
    if kept != lines:
        log.info("history.csv: kept the rows of the %d finished epochs", first_epoch)
        with open(f"{path}.partial", "w") as f:
            f.writelines(kept)
        os.replace(f"{path}.partial", path)


def _earlier_training(model_dir, first_epoch, epochs):
    """A run started again after its last epoch trains nothing: its results keep the speed and
    time of the training that did."""
    path = os.path.join(model_dir, "results.json")
    if first_epoch < epochs or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            earlier = json.load(f)
        return {key: earlier[key] for key in ("train_images_per_second", "wall_seconds")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def restore(model, model_dir, steps_per_epoch, placement):
    """Loads `model_dir`'s checkpoint (model and optimizer) into `model` if there is one (the
    chief's, in a run of several processes: `distribute.chief_checkpoint`); returns the first epoch
    to train: the number of epochs it finished, 0 without a checkpoint."""
    checkpoint = os.path.join(model_dir, CHECKPOINT)
    with distribute.chief_checkpoint(placement, checkpoint) as local:
        if local is None:
            return 0
        load_weights(model, local, "this run's model (remove the file to start the run afresh)")
    done = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if done == 0 or done % steps_per_epoch:  # Keras only warns when the optimizer state does not fit
        raise ValueError(
            f"{checkpoint} holds {done} optimizer steps, not a whole number of this run's "
            f"{steps_per_epoch}-step epochs; use a new model_dir."
        )
    log.info("Resuming from %s after epoch %d", checkpoint, done // steps_per_epoch)
    return done // steps_per_epoch


def _divergence_message(where, checkpoint):
    if os.path.exists(checkpoint):
        kept = f"The last good state stays in {checkpoint}."
    else:
        kept = "No epoch finished before it, so no checkpoint was written."
    return (
        f"The loss became NaN or infinite at {where}. {kept} Lower the learning rate (a smaller "
        "batch_size scales it down) or check the input data."
    )
