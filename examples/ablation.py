"""Trains the paper's shortcut variants (Table 1) and unit orderings (Table 2) with one recipe,
then writes a Markdown and CSV table of test error beside the paper's figures, and a bar chart.

    python examples/ablation.py --data_dir=../shared/data/cifar10-jpeg --depth=20 --epochs=3
    python examples/ablation.py --variants=original,full_preact --depth=110       # the paper's scale

Start the same command again after an interruption: finished variants are kept, the current one
resumes. The training flags are `keras-preact-train`'s (`python examples/ablation.py --help`).
"""

import sys

from keras_preact import choices, train


def main(argv=None):
    command = train.parser(description=__doc__.split("\n\n")[0], export=False, depth=110)
    command.add_argument("--variants", type=lambda text: text.split(","), default=list(choices.VARIANTS),
                         help=f"variants to train, comma-separated (default: all): {', '.join(choices.VARIANTS.names)}")
    args = command.parse_args(argv)
    try:
        train.prepare(args)
        from keras_preact.training import ablation

        config = train.run_config(args, model_dir=args.model_dir or "runs/ablation")
        rows = ablation.run_grid(config, args.variants, config.model_dir)
    except (ValueError, RuntimeError, OSError) as error:
        command.exit(1, f"error: {error}\n")
    subset = f", {config.train_subset} training images (class-balanced)" if config.train_subset else ""
    scale = (f"ResNet-{config.depth} ({config.block}), {config.dataset}, {config.epochs} epochs, "
             f"{config.recipe} recipe{subset}")
    markdown, _, chart = ablation.write_report(rows, config.model_dir, scale)
    print(open(markdown).read())
    print(f"Chart: {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
