"""Flags shared by the example scripts, and the RunConfig they describe."""

from absl import app, flags

from keras_preact import choices

FLAGS = flags.FLAGS


def define_training_flags(depth):
    flags.DEFINE_enum("dataset", "cifar10", choices.TRAINING_DATASETS.names, "Dataset.")
    flags.DEFINE_string(
        "data_dir", None,
        "TFDS data directory (downloads when online), or an image folder with train/<class>/*.jpg and "
        "test/<class>/*.jpg.",
    )
    flags.DEFINE_integer("depth", depth, "Network depth: 9n+2 (bottleneck) or 6n+2 (basic).")
    flags.DEFINE_enum("block", None, choices.BLOCKS.names, "Residual unit; default as the paper: 110 basic, 164/1001 bottleneck.")
    flags.DEFINE_enum("recipe", "paper", choices.RECIPES.names, "paper: batch 128, warm-up, 64k iterations. official: batch 64, Nesterov, 200 epochs.")
    flags.DEFINE_integer("epochs", None, "Epochs (default: the recipe's); the schedule scales with it.")
    flags.DEFINE_integer("batch_size", None, "Global batch size (default: the recipe's); the learning rate scales linearly.")
    flags.DEFINE_integer("train_subset", None, "Train on N images only, taken class by class in turn (class-balanced).")
    flags.DEFINE_string("model_dir", None, "Checkpoints, logs and results (default: runs/<dataset>_resnet<depth>).")
    flags.DEFINE_enum("strategy", "auto", choices.STRATEGIES.names, "Device placement.")
    flags.DEFINE_integer("cpu_replicas", None, "Split the CPU into N logical devices (TensorFlow, JAX) to run the multi-replica path without GPUs.")
    flags.DEFINE_enum("mixed_precision", "none", choices.PRECISIONS.names, "Mixed precision compute type.")
    flags.DEFINE_enum("batch_norm", "per_replica", choices.BATCH_NORMS.names,
                      "BatchNorm statistics over several replicas: each replica's batch, or the global batch.")
    flags.DEFINE_list("job_addresses", None, "JAX processes: coordinator first (default: $KERAS_DISTRIBUTION_JOB_ADDRESSES).")
    flags.DEFINE_integer("num_processes", None, "JAX processes in the run (default: $KERAS_DISTRIBUTION_NUM_PROCESSES).")
    flags.DEFINE_integer("process_id", None, "This JAX process's index (default: $KERAS_DISTRIBUTION_PROCESS_ID).")
    flags.DEFINE_integer("seed", 0, "Random seed (initialisation, shuffling, augmentation).")
    flags.DEFINE_enum("stem", None, choices.STEMS.names, "Network family: cifar (default) or imagenet (depth 50, 101, 152, 200).")
    flags.DEFINE_integer("image_size", None, "Side of the images the model takes (default: the recipe's, 32 or 224 for imagenet).")
    flags.DEFINE_list("normalization", None, "Per-channel mean and std on 0-255 pixels, 6 numbers "
                      "(default: the dataset's; computed from the training images for --dataset=folder).")
    flags.DEFINE_enum(
        "input_pipeline", "auto", choices.INPUT_PIPELINES.names,
        "tf_data: tf.data on the host (TensorFlow). device: the split on the accelerator, batches made there "
        "(jax/torch backends, an image folder as --data_dir, no TensorFlow). auto: tf_data where TensorFlow is installed.",
    )


def prepare(argv):
    """Rejects stray arguments, then, before the backend initialises its devices, joins the other
    processes of a multi-process run and splits the CPU as `--cpu_replicas` asks."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from keras_preact.training import distribute

    addresses = ",".join(FLAGS.job_addresses) if FLAGS.job_addresses else None
    distribute.start(FLAGS.cpu_replicas, addresses, FLAGS.num_processes, FLAGS.process_id)


def run_config(**overrides):
    """The RunConfig the flags describe, resolved (call `prepare` first)."""
    from keras_preact.training import RunConfig

    names = ("dataset", "data_dir", "depth", "block", "recipe", "epochs", "batch_size", "train_subset",
             "model_dir", "strategy", "mixed_precision", "batch_norm", "seed", "input_pipeline", "image_size")
    values = {name: getattr(FLAGS, name) for name in names}
    values["model_options"] = {"stem": FLAGS.stem} if FLAGS.stem else {}
    if FLAGS.normalization is not None:
        numbers = [float(value) for value in FLAGS.normalization]
        if len(numbers) != 6:
            raise app.UsageError(f"--normalization takes 6 numbers (3 means, 3 stds), got {len(numbers)}.")
        values["normalization"] = [numbers[:3], numbers[3:]]
    return RunConfig(**{**values, **overrides}).resolved()
