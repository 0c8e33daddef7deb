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

common.define_training_flags(depth=110)
flags.DEFINE_list("variants", None, "Variants to train (default: all). See keras_preact.ablation.VARIANTS.")
FLAGS = flags.FLAGS


def main(argv):
    common.prepare(argv)
    from keras_preact import ablation, train

    config = common.run_config("runs/ablation")
    try:
        names = ablation.check_variants(FLAGS.variants or list(ablation.VARIANTS))
        rows = ablation.run_grid(config, names, config.model_dir)
    except (ValueError, RuntimeError, OSError) as error:
        logging.error("%s", error)
        sys.exit(1)
    block = config.block or train.default_block(config.depth)
    epochs = config.epochs or train.recipes.get_recipe(config.recipe).epochs
    subset = f", {config.train_subset} training images (class-balanced)" if config.train_subset else ""
    scale = f"ResNet-{config.depth} ({block}), {config.dataset}, {epochs} epochs, {config.recipe} recipe{subset}"
    markdown, _, chart = ablation.write_report(rows, config.model_dir, scale)
    print(open(markdown).read())
    print(f"Chart: {chart}")


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    app.run(main)
