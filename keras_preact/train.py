"""Command: train a pre-activation ResNet with the paper's recipe, evaluate it, and export it.

    keras-preact-train                                          # ResNet-164, CIFAR-10, paper recipe
    keras-preact-train --depth=1001 --dataset=cifar100 --recipe=official
    keras-preact-train --data_dir=../shared/data/cifar10-jpeg --depth=20 --epochs=3
    KERAS_BACKEND=jax keras-preact-train --data_dir=DIR --input_pipeline=device   # no TensorFlow needed

Start the same command again after an interruption: it resumes after the last finished epoch.
The training flags are generated from `keras_preact.training.RunConfig`'s fields, each with its
help line in `RUN_CONFIG_HELP`, so the command and the Python API cannot drift apart.
"""

import argparse
import dataclasses
import json
import sys

from keras_preact import choices, command_line
from keras_preact.training.config import RunConfig

# One help line per RunConfig field. A field without one fails tests/test_commands.py; where the
# field's default is None the line says what None means.
RUN_CONFIG_HELP = {
    "dataset": "the dataset, for its class count and normalisation",
    "data_dir": "an image folder (train/<class>/*, test/<class>/*, JPEG or PNG) or a TFDS data directory "
                "(default: TFDS's, which downloads when online)",
    "depth": "network depth: 9n+2 (bottleneck) or 6n+2 (basic)",
    "block": "residual unit (default: as the paper: 110 basic, 164/1001 bottleneck)",
    "recipe": "paper: batch 128, warm-up, 64k iterations. official: batch 64, Nesterov, 200 epochs",
    "epochs": "epochs (default: the recipe's); the schedule's boundaries scale with it",
    "batch_size": "global batch size (default: the recipe's); the learning rate scales linearly with it",
    "learning_rate": "SGD's learning rate at the recipe's batch size, scaled linearly with batch_size "
                     "(default: the recipe's)",
    "weight_decay": "coupled (L2) weight decay added to the gradient (default: the recipe's)",
    "momentum": "SGD momentum in [0, 1) (default: the recipe's)",
    "nesterov": "Nesterov momentum (default: the recipe's)",
    "warmup_epochs": "epochs (fractions allowed) at the recipe's warm-up rate before its full rate "
                     "(default: the recipe's share of the run)",
    "train_subset": "train on N images only, taken class by class in turn (default: all)",
    "model_dir": "where the run writes checkpoints, logs and results (default: runs/<dataset>_resnet<depth>)",
    "strategy": "device placement: auto is every device and process there is",
    "mixed_precision": "mixed precision compute type",
    "batch_norm": "BatchNorm statistics over several replicas: each replica's batch, or the global batch",
    "seed": "random seed of initialisation, shuffling and augmentation",
    "input_pipeline": "tf_data: tf.data on the host (TensorFlow). device: the split on the accelerator, batches "
                      "made there (jax/torch, an image folder, no TensorFlow). auto: tf_data where TensorFlow is installed",
    "image_size": "side of the training crops and test images: 32 for the CIFAR recipes; any for recipe=imagenet "
                  "(default: the recipe's, 32 or 224)",
    "normalization": "per-channel [mean, std] of 0-255 pixels as JSON, e.g. '[[125.3, 123, 113.9], [63, 62.1, 66.7]]' "
                     "(default: the dataset's; dataset=folder: computed from the training images)",
    "classes": "the number of classes (default: the dataset's; dataset=folder: its class folders)",
    "step_capture": "torch: the whole training step as one CUDA graph (cuda_graph, a CUDA device), Keras' eager "
                    "step (eager), or auto: cuda_graph on CUDA, eager elsewhere; JAX and TensorFlow take auto",
    "model_options": 'further PreActResNet arguments as a JSON object, e.g. \'{"unit": "original", "remat": true}\' '
                     "(default: none)",
}

# The fields whose values are a registry's names: the help lists them and argparse checks them.
RUN_CONFIG_CHOICES = {
    "dataset": choices.TRAINING_DATASETS,
    "block": choices.BLOCKS,
    "recipe": choices.RECIPES,
    "strategy": choices.STRATEGIES,
    "mixed_precision": choices.PRECISIONS,
    "batch_norm": choices.BATCH_NORMS,
    "input_pipeline": choices.INPUT_PIPELINES,
    "step_capture": choices.STEP_CAPTURES,
}

def _json(kind, example):
    """An argparse type: JSON text holding a `kind` (dict or list), such as `example`."""
    name = {dict: "object", list: "array"}[kind]

    def parse(text):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise argparse.ArgumentTypeError(f"not JSON ({error}); give one such as '{example}'") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"must be a JSON {name} such as '{example}', got {text!r}")
        return value

    return parse


JSON_TYPES = {
    dict: (_json(dict, '{"remat": true}'), "JSON"),
    list: (_json(list, "[[125.3, 123.0, 113.9], [63.0, 62.1, 66.7]]"), "JSON"),
}


def _comma_list(text):
    return [item for item in text.split(",") if item]


def _add_run_config_flag(group, field, default):
    """A flag for one RunConfig field: its type from the annotation, its help from RUN_CONFIG_HELP."""
    if field.name not in RUN_CONFIG_HELP:
        raise KeyError(f"RunConfig.{field.name} has no help line: add one to RUN_CONFIG_HELP in {__name__}.")
    help_text = RUN_CONFIG_HELP[field.name] + ("" if default is None else " (default: %(default)s)")
    options = {"default": default, "help": help_text}
    if field.name in RUN_CONFIG_CHOICES:
        options["choices"] = RUN_CONFIG_CHOICES[field.name].names
    elif field.type is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif field.type in JSON_TYPES:
        options["type"], options["metavar"] = JSON_TYPES[field.type]
    elif field.type in (int, float, str):
        options["type"] = field.type
    else:
        raise TypeError(f"RunConfig.{field.name} has type {field.type!r}, which {__name__} has no flag type for.")
    group.add_argument(f"--{field.name}", **options)


def parser(prog=None, description=None, export=True, **defaults):
    """The training command's parser: a flag per RunConfig field (`defaults` overrides the
    dataclass's defaults), the process's setup flags, `--export_dir` where `export`, and
    `--verbosity`."""
    result = command_line.ArgumentParser(prog=prog, description=description or __doc__.split("\n\n")[0])
    run = result.add_argument_group("the run (keras_preact.training.RunConfig)")
    for field in dataclasses.fields(RunConfig):
        default = field.default if field.default is not dataclasses.MISSING else None
        _add_run_config_flag(run, field, defaults.get(field.name, default))
    setup = result.add_argument_group("this process")
    setup.add_argument("--cpu_replicas", type=int, help="split the CPU into N logical devices (TensorFlow, JAX) to run "
                       "the multi-replica path without GPUs (default: one device)")
    setup.add_argument("--job_addresses", type=_comma_list, metavar="HOST:PORT,...",
                       help="JAX processes, the coordinator first (default: $KERAS_DISTRIBUTION_JOB_ADDRESSES)")
    setup.add_argument("--num_processes", type=int, help="JAX processes in the run (default: $KERAS_DISTRIBUTION_NUM_PROCESSES)")
    setup.add_argument("--process_id", type=int, help="this JAX process's index (default: $KERAS_DISTRIBUTION_PROCESS_ID)")
    setup.add_argument("--verbosity", choices=command_line.VERBOSITIES, default="info",
                       help="the least severe log lines shown (TensorFlow's Python log: warnings, or all at debug); "
                            "TensorFlow's C++ log follows $TF_CPP_MIN_LOG_LEVEL, read when TensorFlow loads (default: %(default)s)")
    if export:
        setup.add_argument("--export_dir", help="export a SavedModel for TF Serving here at the end (default: no export)")
    return result


def prepare(args):
    """Sets the log level, then, before the backend initialises its devices, joins the other
    processes of a multi-process run and splits the CPU as `--cpu_replicas` asks."""
    command_line.set_log_levels(args.verbosity)
    from keras_preact.training import distribute

    addresses = ",".join(args.job_addresses) if args.job_addresses else None
    distribute.start(args.cpu_replicas, addresses, args.num_processes, args.process_id)


def run_config(args, **overrides):
    """The RunConfig the flags describe, resolved (call `prepare` first)."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(RunConfig)}
    return RunConfig(**{**values, **overrides}).resolved()


def main(argv=None, prog="keras-preact-train"):
    command = parser(prog)
    args = command.parse_args(argv)
    try:
        prepare(args)
        from keras_preact import training

        config = run_config(args)
        results = training.run(config, export_dir=args.export_dir)
    except (ValueError, RuntimeError, OSError) as error:
        command.exit(1, f"error: {error}\n")
    if results is None:
        return 0  # not the chief of a multi-process run: the chief reports
    print(f"test error {results['test_error']:.2f}% | {results['train_images_per_second']:.0f} images/s | "
          f"{results['wall_seconds']:.0f} s | input pipeline {results['input_pipeline']} | {config.model_dir}/results.json")
    if "export" in results:
        print(f"SavedModel for TF Serving: {results['export']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
