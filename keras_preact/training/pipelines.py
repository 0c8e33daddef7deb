"""Input pipelines: which one feeds a run, the one interface they share, and the plan they follow.

A pipeline is an `InputPipeline`: `load` reads a dataset's (train, test) Splits; `train_batches`
makes the shuffled, augmented batches of a run's remaining epochs as its `BatchPlan` says;
`eval_batches` the test set's batches, normalised only. The runner names no implementation:
`get(name)` gives the one `IMPLEMENTATIONS` registers, imported only when chosen (only the tf.data
one imports TensorFlow). Adding a pipeline: a module with an `InputPipeline` subclass, its line in
`IMPLEMENTATIONS` and its name in `keras_preact.choices.INPUT_PIPELINES` (which the flags offer).
"""

import abc
import dataclasses
import importlib
import importlib.util

import keras

from keras_preact import choices

# name -> (module, class) of each pipeline
IMPLEMENTATIONS = {
    "tf_data": ("keras_preact.training.data", "TFDataPipeline"),
    "device": ("keras_preact.training.device_data", "DevicePipeline"),
}


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """How a run's training images become steps, computed and checked once for the pipelines and
    the training loop.

    `images` training images in global batches of `batch_size`, each spread evenly over
    `replicas` model copies; `process=(index, count)`: this process feeds its slice of every
    global batch (`local_batch` images), so that `count` processes together see exactly the
    batches one would. Each epoch drops its last partial batch.

    >>> plan = BatchPlan(images=50_000, batch_size=128, epochs=164, process=(1, 2))
    >>> plan.steps, plan.local_batch
    (390, 64)
    """

    images: int
    batch_size: int
    epochs: int = 1
    replicas: int = 1
    process: tuple = (0, 1)

    def __post_init__(self):
        index, count = self.process
        for parts, what in ((self.replicas, "replicas"), (count, "processes")):
            if self.batch_size % parts:
                raise ValueError(f"batch_size={self.batch_size} must divide evenly over {parts} {what}.")
        if not 0 <= index < count:
            raise ValueError(f"process index {index} must be in 0..{count - 1}.")
        if self.images < self.batch_size:
            raise ValueError(f"The training split has {self.images} images, fewer than one batch of {self.batch_size}.")

    @property
    def steps(self):
        """Steps per epoch."""
        return self.images // self.batch_size

    @property
    def local_batch(self):
        """The images of every global batch this process feeds."""
        return self.batch_size // self.process[1]


class InputPipeline(abc.ABC):
    """What the runner asks of an input pipeline."""

    @abc.abstractmethod
    def load(self, dataset, data_dir, reading=None):
        """(train, test) `sources.Split`s of `dataset` (a name of `choices.TRAINING_DATASETS`);
        an image folder is read as `reading` (`folders.Reading`) says."""

    @abc.abstractmethod
    def train_batches(self, split, info, plan, seed, first_epoch, augmentation="cifar"):
        """This process's batches of epochs `first_epoch` … `plan.epochs - 1` of `split`, one
        after another, normalised with the `choices.Dataset` record `info` and augmented as the
        recipe's `augmentation` says ("cifar": the paper's; "imagenet": `imagenet_augment`);
        epoch e's order and augmentation a function of (seed, e) alone."""

    @abc.abstractmethod
    def eval_batches(self, split, info, batch_size):
        """Every example of `split` in order, normalised only, in batches of `batch_size`."""


def tensorflow_installed():
    """Whether TensorFlow can be imported here (it is not imported to find out)."""
    return importlib.util.find_spec("tensorflow") is not None


def resolve(name):
    """The input pipeline `name` names on this backend: "auto" is "tf_data" where TensorFlow is
    installed and "device" where it is not; an unusable choice is an error that names the fix.

    >>> resolve("auto") in ("tf_data", "device")
    True
    """
    choices.INPUT_PIPELINES.check(name)
    backend = keras.backend.backend()
    if name == "auto":
        return "tf_data" if backend == "tensorflow" or tensorflow_installed() else "device"
    if name == "device" and backend == "tensorflow":
        raise ValueError(
            "input_pipeline='device' is for the jax and torch backends; the tensorflow backend "
            "reads tf.data (input_pipeline='tf_data' or 'auto')."
        )
    if name == "tf_data" and not tensorflow_installed():
        raise ValueError(
            "input_pipeline='tf_data' needs TensorFlow, which is not installed here. Install "
            "tensorflow, or use input_pipeline='device' (jax or torch backend, an image folder as data_dir)."
        )
    return name


def get(name):
    """The `InputPipeline` `name` names (resolved first)."""
    module, implementation = IMPLEMENTATIONS[resolve(name)]
    return getattr(importlib.import_module(module), implementation)()
