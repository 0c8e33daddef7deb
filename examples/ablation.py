"""Trains the paper's shortcut variants (Table 1) and unit orderings (Table 2) with one recipe,
then writes a Markdown and CSV table of test error beside the paper's figures, and a bar chart.

    python examples/ablation.py --data_dir=../shared/data/cifar10-jpeg --depth=20 --epochs=3
    python examples/ablation.py --variants=original,full_preact --depth=110       # the paper's scale

Start the same command again after an interruption: finished variants are kept, the current one
resumes.
"""

import sys

from absl import app, flags, logging

import common
from keras_preact import choices

common.define_training_flags(depth=110)
flags.DEFINE_list("variants", None, f"Variants to train (default: all): {', '.join(choices.VARIANTS.names)}.")
FLAGS = flags.FLAGS


def main(argv):
    try:
        common.prepare(argv)
        from keras_preact.training import ablation

        config = common.run_config(model_dir=FLAGS.model_dir or "runs/ablation")
        rows = ablation.run_grid(config, FLAGS.variants or list(choices.VARIANTS), config.model_dir)
    except (ValueError, RuntimeError, OSError) as error:
        logging.error("%s", error)
        sys.exit(1)
    subset = f", {config.train_subset} training images (class-balanced)" if config.train_subset else ""
    scale = (f"ResNet-{config.depth} ({config.block}), {config.dataset}, {config.epochs} epochs, "
             f"{config.recipe} recipe{subset}")
    markdown, _, chart = ablation.write_report(rows, config.model_dir, scale)
    print(open(markdown).read())
    print(f"Chart: {chart}")


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    app.run(main)
