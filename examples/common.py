"""Flags shared by the example scripts, and the RunConfig they describe."""

from absl import app, flags

FLAGS = flags.FLAGS


def define_training_flags(depth):
    flags.DEFINE_enum("dataset", "cifar10", ["cifar10", "cifar100"], "Dataset.")
    flags.DEFINE_string(
        "data_dir", None,
        "TFDS data directory (downloads when online), or an image folder with train/<class>/*.jpg and "
        "test/<class>/*.jpg such as ../shared/data/cifar10-jpeg.",
    )
    flags.DEFINE_integer("depth", depth, "Network depth: 9n+2 (bottleneck) or 6n+2 (basic).")
    flags.DEFINE_enum("block", None, ["basic", "bottleneck"], "Residual unit; default as the paper: 110 basic, 164/1001 bottleneck.")
    flags.DEFINE_enum("recipe", "paper", ["paper", "official"], "paper: batch 128, warm-up, 64k iterations. official: batch 64, Nesterov, 200 epochs.")
    flags.DEFINE_integer("epochs", None, "Epochs (default: the recipe's); the schedule scales with it.")
    flags.DEFINE_integer("batch_size", None, "Global batch size (default: the recipe's); the learning rate scales linearly.")
    flags.DEFINE_integer("train_subset", None, "Train on N images only, taken class by class in turn (class-balanced).")
    flags.DEFINE_string("model_dir", None, "Checkpoints, logs and results.")
    flags.DEFINE_enum("strategy", "auto", ["auto", "mirrored", "multi_worker", "one_device"], "Device placement.")
    flags.DEFINE_integer("cpu_replicas", None, "Split the CPU into N logical devices (TensorFlow, JAX) to run the multi-replica path without GPUs.")
    flags.DEFINE_enum("mixed_precision", "none", ["none", "float16", "bfloat16"], "Mixed precision compute type.")
    flags.DEFINE_integer("seed", 0, "Random seed (initialisation, shuffling, augmentation).")


def prepare(argv):
    """Rejects stray arguments and splits the CPU as `--cpu_replicas` asks, before the backend
    initialises its devices."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from keras_preact import distribute

    distribute.split_cpu(FLAGS.cpu_replicas)


def run_config(model_dir):
    """The RunConfig the flags describe (call `prepare` first)."""
    from keras_preact import train

    return train.RunConfig(
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        depth=FLAGS.depth,
        block=FLAGS.block,
        recipe=FLAGS.recipe,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        train_subset=FLAGS.train_subset,
        model_dir=FLAGS.model_dir or model_dir,
        strategy=FLAGS.strategy,
        mixed_precision=FLAGS.mixed_precision,
        seed=FLAGS.seed,
    )
