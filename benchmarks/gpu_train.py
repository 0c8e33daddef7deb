"""Time to accuracy on one GPU: a pre-activation ResNet on a real CIFAR image folder with the paper's
recipe, the on-device input pipeline, mixed bfloat16 and compiled steps (XLA on JAX; on torch
Keras' default is eager, and `--jit_compile` asks for `torch.compile`). Needs no TensorFlow.

    KERAS_BACKEND=jax python benchmarks/gpu_train.py --data_dir=/tmp/cifar10-jpeg --depth=164
    KERAS_BACKEND=jax python benchmarks/gpu_train.py --data_dir=/tmp/cifar10-jpeg --depth=20 --epochs=30

Prints a JSON line per epoch (test error, training images/s with the input pipeline included,
peak device memory, seconds since training began) and a summary: the first epoch at or under the
target test error and when it came, and the projected wall time of the recipe's full schedule.
The clock starts when training starts (compilation included; decoding the images is reported
apart). No checkpoints: `examples/cifar.py` is the command for runs to keep.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.gpu import device_name, peak_memory_gib, static_shapes_for_torch_compile, synchronize  # noqa: E402


def paper_error(depth):
    """The paper's CIFAR-10 test error (%) of the full pre-activation ResNet at `depth`, if it has one."""
    from keras_preact import choices

    record = choices.VARIANTS["full_preact"]
    return {110: record.paper_resnet110, 164: record.paper_resnet164}.get(depth)


def epoch_report(steps, batch_size, target_error):
    import keras

    class EpochReport(keras.callbacks.Callback):
        """One JSON line per epoch; remembers when the test error first reached the target.

        Epoch hooks only: a per-step hook would make Keras wait for the device after every step."""

        def __init__(self):
            super().__init__()
            self.epochs, self.reached, self.diverged = [], None, None

        def on_train_begin(self, logs=None):
            self.train_start = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            synchronize(self.model)
            self.epoch_start = time.perf_counter()

        def on_test_begin(self, logs=None):
            synchronize(self.model)
            self.train_seconds = time.perf_counter() - self.epoch_start

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            logs = logs or {}
            row = {
                "kind": "epoch", "epoch": epoch + 1, "loss": logs.get("loss"),
                "test_error": round(100.0 * (1.0 - logs["val_accuracy"]), 3),
                "images_per_second": round(steps * batch_size / self.train_seconds, 1),
                "epoch_seconds": round(now - self.epoch_start, 3),
                "elapsed_seconds": round(now - self.train_start, 3),
                "peak_gib": peak_memory_gib(),
            }
            self.epochs.append(row)
            print(json.dumps(row), flush=True)
            if not math.isfinite(row["loss"]):
                self.diverged = epoch + 1
                self.model.stop_training = True
            elif self.reached is None and target_error is not None and row["test_error"] <= target_error:
                self.reached = row

    return EpochReport()


def main():
    from keras_preact import choices

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True, help="image folder: train/<class>/*.jpg, test/<class>/*.jpg")
    parser.add_argument("--dataset", default="cifar10", choices=choices.TRAINING_DATASETS.names)
    parser.add_argument("--depth", type=int, default=164)
    parser.add_argument("--block", default=None, choices=choices.BLOCKS.names)
    parser.add_argument("--recipe", default="paper", choices=choices.RECIPES.names)
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's (164 for the paper's)")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--train_subset", type=int, default=None)
    parser.add_argument("--mixed_precision", default="bfloat16", choices=choices.PRECISIONS.names)
    parser.add_argument("--jit_compile", action=argparse.BooleanOptionalAction, default=None,
                        help="default: Keras' choice (XLA on JAX, eager on torch)")
    parser.add_argument("--target_error", type=float, default=None,
                        help="test error (%%) to time; default: the paper's for ResNet-110/164 on CIFAR-10")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras

    from keras_preact.training import RunConfig, build_model, device_data
    from keras_preact.training.pipelines import BatchPlan
    from keras_preact.training.recipe import make_optimizer

    config = RunConfig(
        dataset=args.dataset, data_dir=args.data_dir, depth=args.depth, block=args.block, recipe=args.recipe,
        epochs=args.epochs, batch_size=args.batch_size, train_subset=args.train_subset,
        mixed_precision=args.mixed_precision, seed=args.seed, input_pipeline="device",
    ).resolved()
    target = args.target_error if args.target_error is not None else (
        paper_error(config.depth) if config.dataset == "cifar10" else None)
    keras.utils.set_random_seed(config.seed)
    started = time.perf_counter()
    train, test = device_data.load(config.dataset, config.data_dir)
    train = train.subset(config.train_subset)
    load_seconds = time.perf_counter() - started
    info = choices.DATASETS[config.dataset]
    batches = device_data.TrainBatches(train, info, BatchPlan(len(train), config.batch_size, config.epochs), config.seed)
    recipe = choices.RECIPES[config.recipe]
    model = build_model(config)
    model.compile(
        optimizer=make_optimizer(recipe, batches.steps, config.epochs, config.batch_size, config.optimizer_settings),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile="auto" if args.jit_compile is None else args.jit_compile,
    )
    if args.jit_compile:
        static_shapes_for_torch_compile()
    report = epoch_report(batches.steps, config.batch_size, target)
    model.fit(batches, epochs=config.epochs, steps_per_epoch=batches.steps,
              validation_data=device_data.EvalBatches(test, info, config.batch_size),
              shuffle=False, callbacks=[report], verbose=0)

    rows = report.epochs
    steady = [row["epoch_seconds"] for row in rows[1:]] or [rows[0]["epoch_seconds"]]
    epoch_seconds = statistics.median(steady)
    summary = {
        "kind": "train_summary", "backend": keras.backend.backend(), "device": device_name(),
        "dataset": config.dataset, "depth": config.depth, "block": config.block, "recipe": config.recipe,
        "mixed_precision": config.mixed_precision, "jit_compile": bool(model.jit_compile),
        "epochs": config.epochs, "epochs_run": len(rows), "batch_size": config.batch_size,
        "train_images": len(train), "load_seconds": round(load_seconds, 1),
        "final_test_error": rows[-1]["test_error"], "best_test_error": min(row["test_error"] for row in rows),
        "target_error": target,
        "target_reached_epoch": report.reached and report.reached["epoch"],
        "time_to_target_seconds": report.reached and report.reached["elapsed_seconds"],
        "training_seconds": rows[-1]["elapsed_seconds"], "first_epoch_seconds": rows[0]["epoch_seconds"],
        "median_epoch_seconds": round(epoch_seconds, 3),
        "median_images_per_second": statistics.median(row["images_per_second"] for row in (rows[1:] or rows)),
        "peak_gib": peak_memory_gib(), "diverged_at_epoch": report.diverged,
        # The recipe's whole schedule on the whole split at this speed: the first epoch
        # (compilation) plus the rest; not projected from a subset.
        "projected_full_schedule_seconds": None if config.train_subset else round(
            rows[0]["epoch_seconds"] + (recipe.epochs - 1) * epoch_seconds, 1),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
