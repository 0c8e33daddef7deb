"""Trains a pre-activation ResNet on CIFAR-10/100 with the paper's recipe, evaluates and exports.

    python examples/cifar.py                                   # ResNet-164, CIFAR-10, paper recipe
    python examples/cifar.py --depth=1001 --dataset=cifar100 --recipe=official
    python examples/cifar.py --data_dir=../shared/data/cifar10-jpeg --depth=20 --epochs=3

Start the same command again after an interruption: it resumes after the last finished epoch.
"""

import os
import sys

from absl import app, flags, logging

flags.DEFINE_enum("dataset", "cifar10", ["cifar10", "cifar100"], "Dataset.")
flags.DEFINE_string(
    "data_dir", None,
    "TFDS data directory (downloads when online), or an image folder with train/<class>/*.jpg and "
    "test/<class>/*.jpg such as ../shared/data/cifar10-jpeg.",
)
flags.DEFINE_integer("depth", 164, "Network depth: 9n+2 (bottleneck) or 6n+2 (basic).")
flags.DEFINE_enum("block", None, ["basic", "bottleneck"], "Residual unit; default as the paper: 110 basic, 164/1001 bottleneck.")
flags.DEFINE_enum("recipe", "paper", ["paper", "official"], "paper: batch 128, warm-up, 64k iterations. official: batch 64, Nesterov, 200 epochs.")
flags.DEFINE_integer("epochs", None, "Epochs (default: the recipe's); the schedule scales with it.")
flags.DEFINE_integer("batch_size", None, "Global batch size (default: the recipe's); the learning rate scales linearly.")
flags.DEFINE_integer("train_subset", None, "Train on the first N training images only.")
flags.DEFINE_string("model_dir", None, "Checkpoints, logs and results (default: runs/<dataset>_resnet<depth>).")
flags.DEFINE_string("export_dir", None, "Export a SavedModel for TF Serving here at the end.")
flags.DEFINE_enum("strategy", "auto", ["auto", "mirrored", "multi_worker", "one_device"], "Device placement.")
flags.DEFINE_integer("cpu_replicas", None, "Split the CPU into N logical devices (TensorFlow, JAX) to run the multi-replica path without GPUs.")
flags.DEFINE_enum("mixed_precision", "none", ["none", "float16", "bfloat16"], "Mixed precision compute type.")
flags.DEFINE_integer("seed", 0, "Random seed (initialisation, shuffling, augmentation).")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from keras_preact import distribute

    distribute.split_cpu(FLAGS.cpu_replicas)  # before the backend touches its devices
    from keras_preact import train

    config = train.RunConfig(
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        depth=FLAGS.depth,
        block=FLAGS.block,
        recipe=FLAGS.recipe,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        train_subset=FLAGS.train_subset,
        model_dir=FLAGS.model_dir or os.path.join("runs", f"{FLAGS.dataset}_resnet{FLAGS.depth}"),
        strategy=FLAGS.strategy,
        mixed_precision=FLAGS.mixed_precision,
        seed=FLAGS.seed,
    )
    try:
        results = train.run(config, export_dir=FLAGS.export_dir)
    except (ValueError, RuntimeError, OSError) as error:
        logging.error("%s", error)
        sys.exit(1)
    print(f"test error {results['test_error']:.2f}% | {results['train_images_per_second']:.0f} images/s | "
          f"{results['wall_seconds']:.0f} s | {config.model_dir}/results.json")
    if "export" in results:
        print(f"SavedModel for TF Serving: {results['export']}")


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    app.run(main)
