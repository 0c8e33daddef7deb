"""Command: export a trained run (or a weights file) as a TF Serving SavedModel.

    python -m keras_preact.export --model_dir runs/cifar10_resnet164 --export_dir serving/resnet164
    python -m keras_preact.export --weights model.weights.h5 --depth 110 --export_dir serving/resnet110

The model is rebuilt from the run's `config.json` (or the flags) with `training.build_model`, the
same function training used; the class names are the run's (`results.json`, e.g. an image folder's
class folders) or the dataset's. Every bad input is reported in one line, before any work.
"""

import dataclasses
import json
import os
import sys

from keras_preact import choices, command_line



def _parser():
    parser = command_line.ArgumentParser(prog="python -m keras_preact.export", description=__doc__.split("\n\n")[0],
                                     formatter_class=command_line.HelpFormatter)
    parser.add_argument("--model_dir", help="a run's folder: reads config.json and model.weights.h5 (or checkpoint.weights.h5); give it or --weights with --depth")
    parser.add_argument("--weights", help="a .weights.h5 file (default: the run's)")
    parser.add_argument("--export_dir", required=True, help="base folder; the model goes to EXPORT_DIR/VERSION (required)")
    parser.add_argument("--depth", type=int, help="without --model_dir: the network's depth (no default)")
    parser.add_argument("--block", choices=choices.BLOCKS.names, help="without --model_dir: the block (default: the paper's for the depth)")
    parser.add_argument("--dataset", choices=choices.TRAINING_DATASETS.names, help="without --model_dir: the dataset (default: cifar10)")
    parser.add_argument("--version", type=int, default=None, help="version folder (default: the next free one)")
    parser.add_argument("--verbosity", choices=command_line.VERBOSITIES, default="warning",
                        help="the least severe log lines shown (info: TensorFlow's export notes too); TensorFlow's "
                             "C++ log follows $TF_CPP_MIN_LOG_LEVEL")
    return parser


def _run_weights(model_dir):
    for name in ("model.weights.h5", "checkpoint.weights.h5"):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{model_dir} has no model.weights.h5 or checkpoint.weights.h5 yet.")


def _run_class_names(model_dir):
    """The class names a run saved (`class_names.json` when it started; `results.json` of runs
    before it wrote that file); None (the dataset's) without either."""
    path = os.path.join(model_dir, "class_names.json")
    if not os.path.exists(path):
        path = os.path.join(model_dir, "results.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            names = json.load(f).get("class_names")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise ValueError(f"{path} is not a readable JSON object with class_names: {error}.") from None
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"{path}: class_names must be a list of strings, got {names!r}.")
    return names


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.model_dir and (args.depth is None or args.weights is None):
        parser.error("give --model_dir, or --weights with --depth")
    command_line.set_log_levels(args.verbosity, "%(message)s")
    from keras_preact.serving.layout import check_export_dir, check_version, next_version, versions
    from keras_preact.serving.saved_model import ENCODED_SIGNATURE, SIGNATURE, export_saved_model
    from keras_preact.training.config import RunConfig, build_model

    try:
        if args.version is not None:
            check_version("--version", args.version)
        check_export_dir(args.export_dir)
        version = next_version(args.export_dir) if args.version is None else args.version
        if version in versions(args.export_dir):
            raise FileExistsError(f"{os.path.join(args.export_dir, str(version))} exists. Choose a new --version, or remove it.")
        if args.model_dir:
            config = RunConfig.load(os.path.join(args.model_dir, "config.json"))
        else:
            config = RunConfig(depth=args.depth)
        flags = {key: getattr(args, key) for key in ("depth", "block", "dataset") if getattr(args, key) is not None}
        # Served in float32 whatever the training precision; the weights are float32 either way.
        config = dataclasses.replace(config, mixed_precision="none", **flags).resolved()
        weights = args.weights or _run_weights(args.model_dir)
        names = _run_class_names(args.model_dir) if args.model_dir else None
        model = build_model(config, weights=weights)
        path = export_saved_model(model, args.export_dir, config.dataset_record(), version, class_names=names)
    except (ValueError, OSError, RuntimeError) as error:
        parser.exit(1, f"error: {error}\n")
    print(
        f"SavedModel written to {path}: signatures {SIGNATURE!r} (uint8 images -> probabilities, classes) and "
        f"{ENCODED_SIGNATURE!r} (JPEG/PNG files -> probabilities, classes, class_names); class names from "
        f"{'the run' if names else 'dataset ' + repr(config.dataset)}"
    )


if __name__ == "__main__":
    sys.exit(main())
