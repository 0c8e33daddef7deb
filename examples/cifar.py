"""Trains a pre-activation ResNet on CIFAR-10/100 with the paper's recipe, evaluates and exports.

    python examples/cifar.py                                   # ResNet-164, CIFAR-10, paper recipe
    python examples/cifar.py --depth=1001 --dataset=cifar100 --recipe=official
    python examples/cifar.py --data_dir=../shared/data/cifar10-jpeg --depth=20 --epochs=3
    KERAS_BACKEND=jax python examples/cifar.py --data_dir=DIR --input_pipeline=device   # no TensorFlow needed

Start the same command again after an interruption: it resumes after the last finished epoch.
"""

import sys

from absl import app, flags, logging

import common

common.define_training_flags(depth=164)
flags.DEFINE_string("export_dir", None, "Export a SavedModel for TF Serving here at the end.")
FLAGS = flags.FLAGS


def main(argv):
    try:
        common.prepare(argv)
        from keras_preact import training

        config = common.run_config()
        results = training.run(config, export_dir=FLAGS.export_dir)
    except (ValueError, RuntimeError, OSError) as error:
        logging.error("%s", error)
        sys.exit(1)
    if results is None:
        return  # not the chief of a multi-process run: the chief reports
    print(f"test error {results['test_error']:.2f}% | {results['train_images_per_second']:.0f} images/s | "
          f"{results['wall_seconds']:.0f} s | input pipeline {results['input_pipeline']} | {config.model_dir}/results.json")
    if "export" in results:
        print(f"SavedModel for TF Serving: {results['export']}")


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    app.run(main)
