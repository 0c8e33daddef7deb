"""A run's configuration: flags, a saved `config.json` or Python arguments, resolved and validated
in one place, and the one function that builds a run's model.

`RunConfig` takes what the user gave (`None` means "the default", nothing else does);
`resolved()` fills in every default and rejects every bad value with one line that names it. The
resolved configuration is what a run saves as `config.json` and what `build_model` reads.
"""

import dataclasses
import json
import os

from keras_preact import choices
from keras_preact.model import preprocessing
from keras_preact.model.builders import PreActResNet, check_architecture
from keras_preact.training import folders
from keras_preact.training.recipe import OPTIMIZER_SETTINGS, optimizer_settings

# PreActResNet arguments a run may set (beyond depth, block and classes, which it sets itself).
MODEL_OPTIONS = ("stem", "unit", "shortcut", "downsample", "stride_on", "remat", "scan_units", *choices.SHORTCUT_OPTIONS)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run (saved as `model_dir/config.json`).

    Args:
        dataset: `"cifar10"`, `"cifar100"` or `"folder"` (any image folder as `data_dir`: its
            class folders are the classes, its training images give the normalisation).
        data_dir: an image folder (`train/<class>/*`, `test/<class>/*`) or a TFDS data directory;
            None: TFDS's default directory.
        depth: network depth (9n+2 bottleneck or 6n+2 basic; 50, 101, 152 or 200 with
            `model_options={"stem": "imagenet"}`).
        block: `"basic"` or `"bottleneck"`; None: as the paper uses the depth (`default_block`),
            bottleneck for the ImageNet stem.
        recipe: `"paper"`, `"official"` (CIFAR: 32x32 images) or `"imagenet"` (fb.resnet.torch:
            random-sized crops of any image size to `image_size`) (`keras_preact.choices.RECIPES`).
        epochs, batch_size: None: the recipe's. The learning rate scales with the batch size and
            the schedule's boundaries with the number of epochs.
        learning_rate: SGD's rate at the recipe's batch size (scaled by batch_size / the
            recipe's, as the recipe's own); None: the recipe's.
        weight_decay: coupled (L2) weight decay, added to the gradient; None: the recipe's.
        momentum: SGD momentum in [0, 1); None: the recipe's.
        nesterov: Nesterov momentum (True or False); None: the recipe's.
        warmup_epochs: epochs (fractions allowed) at the recipe's warm-up rate before its full
            rate; None: the recipe's share of the run, which follows `epochs` (none for recipes
            without a warm-up). results.json records the warm-up the run had, in epochs.
        train_subset: train on this many images (class-balanced); None: all.
        model_dir: where the run writes; None: `runs/<dataset>_resnet<depth>`.
        strategy: device placement (`keras_preact.choices.STRATEGIES`).
        mixed_precision: `"none"`, `"float16"` or `"bfloat16"`.
        batch_norm: `"per_replica"` (each replica normalises its share of the batch, as the
            paper's Torch code and tf.distribute do) or `"synchronized"` (the global batch).
        seed: initialisation, shuffling and augmentation; epoch e's order and augmentation depend
            on (seed, e) alone.
        input_pipeline: `"auto"` (tf.data where TensorFlow is installed, else on-device batches),
            `"tf_data"` or `"device"` (`keras_preact.choices.INPUT_PIPELINES`; the two draw
            different random orders and crops, so a run resumes on the one it started with).
        model_options: further `PreActResNet` arguments (`MODEL_OPTIONS`).
        image_size: the side of the square images the model takes; None: the recipe's (32, or
            224 for `"imagenet"`, whose evaluation view is the centre crop of the image resized
            to image_size x 256/224).
        normalization: per-channel `[mean, std]` (three numbers each, on 0-255 pixels); None: the
            dataset's constants, or for `"folder"` computed from the training images.
        classes: None: the dataset's, or for `"folder"` its number of class folders.
        step_capture: how the torch backend runs a training step: `"auto"` (one CUDA graph on a
            CUDA device, Keras' eager step elsewhere), `"cuda_graph"` or `"eager"`
            (`keras_preact.choices.STEP_CAPTURES`, `training.step_capture`); JAX and TensorFlow
            compile the step themselves and take "auto". It changes no result: a run resumes
            with another value, and results.json records the step that ran (`train_step`).
        A `"folder"` run records the classes and normalisation it used in `config.json`.
    """

    dataset: str = "cifar10"
    data_dir: str = None
    depth: int = 164
    block: str = None
    recipe: str = "paper"
    epochs: int = None
    batch_size: int = None
    learning_rate: float = None
    weight_decay: float = None
    momentum: float = None
    nesterov: bool = None
    warmup_epochs: float = None
    train_subset: int = None
    model_dir: str = None
    strategy: str = "auto"
    mixed_precision: str = "none"
    batch_norm: str = "per_replica"
    seed: int = 0
    input_pipeline: str = "auto"
    model_options: dict = dataclasses.field(default_factory=dict)
    image_size: int = None
    normalization: list = None
    classes: int = None
    step_capture: str = "auto"

    def resolved(self):
        """This configuration with every default filled in, as a `ResolvedRunConfig`, or a
        ValueError naming the bad value."""
        self = dataclasses.replace(self, **_defaults_for_none(self))
        choices.TRAINING_DATASETS.check(self.dataset)
        _check_path("data_dir", self.data_dir, optional=True)
        choices.check_count("depth", self.depth)
        stem = self.model_options.get("stem") if isinstance(self.model_options, dict) else None
        stem = "cifar" if stem is None else choices.STEMS.check(stem)
        block = (choices.default_block(self.depth) if stem == "cifar" else "bottleneck") if self.block is None else choices.BLOCKS.check(self.block)
        model_options = _check_model_options(self.model_options, self.depth, block)
        recipe = choices.RECIPES[self.recipe]
        image_size = _check_image_size(self.image_size, recipe, self.recipe)
        epochs = recipe.epochs if self.epochs is None else choices.check_count("epochs", self.epochs)
        batch_size = recipe.batch_size if self.batch_size is None else choices.check_count("batch_size", self.batch_size)
        given = {name: getattr(self, name) for name in OPTIMIZER_SETTINGS}
        settings = optimizer_settings(recipe, epochs, **given)
        if self.train_subset is not None:
            choices.check_count("train_subset", self.train_subset)
        model_dir = os.path.join("runs", f"{self.dataset}_resnet{self.depth}") if self.model_dir is None else self.model_dir
        _check_path("model_dir", model_dir)
        choices.STRATEGIES.check(self.strategy)
        choices.PRECISIONS.check(self.mixed_precision)
        choices.BATCH_NORMS.check(self.batch_norm)
        choices.check_count("seed", self.seed, minimum=0, maximum=2**32 - 1)  # the seeds Keras takes
        choices.INPUT_PIPELINES.check(self.input_pipeline)
        choices.STEP_CAPTURES.check(self.step_capture)
        resolved = ResolvedRunConfig(**{
            **{field.name: getattr(self, field.name) for field in dataclasses.fields(RunConfig)},
            **settings,
            "block": block,
            "epochs": epochs,
            "batch_size": batch_size,
            "model_dir": os.fspath(model_dir),
            "data_dir": None if self.data_dir is None else os.fspath(self.data_dir),
            "model_options": model_options,
            "image_size": image_size,
            "normalization": None if self.normalization is None else _check_normalization(self.normalization),
            "classes": None if self.classes is None else choices.check_count("classes", self.classes, minimum=2),
        })
        object.__setattr__(resolved, "checked", True)
        return resolved

    @property
    def optimizer_settings(self):
        """The `recipe.OPTIMIZER_SETTINGS` as a dict (what `recipe.make_optimizer` takes)."""
        return {name: getattr(self, name) for name in OPTIMIZER_SETTINGS}

    def dataset_record(self):
        """The `choices.Dataset` this (resolved) run trains and exports: the named dataset's, at
        this run's image size and normalisation; for `"folder"`, the classes and normalisation the
        run filled in from its data (`training.folders.complete`)."""
        record = choices.TRAINING_DATASETS[self.dataset]
        missing = [name for name in ("classes", "normalization") if getattr(self, name) is None and record.classes is None]
        if missing:
            raise ValueError(
                f"dataset='folder' takes {' and '.join(missing)} from its image folder: train first (config.json "
                "records them), or give them."
            )
        if self.classes is not None and record.classes is not None and self.classes != record.classes:
            raise ValueError(f"classes={self.classes}, but {self.dataset} has {record.classes}; dataset='folder' takes any.")
        mean, std = self.normalization or (record.mean, record.std)
        return dataclasses.replace(
            record, classes=self.classes or record.classes, mean=tuple(mean), std=tuple(std), image_size=self.image_size,
            resize=folders.evaluation_resize(self.recipe, self.image_size),
        )

    def to_dict(self):
        values = dataclasses.asdict(self)
        return {field.name: values[field.name] for field in dataclasses.fields(RunConfig)}

    @classmethod
    def from_dict(cls, values, source="the configuration"):
        """A RunConfig from a dict such as a saved config.json; unknown keys are an error."""
        if not isinstance(values, dict):
            raise ValueError(f"{source} must be a JSON object of run settings, got {type(values).__name__}.")
        fields = {field.name for field in dataclasses.fields(RunConfig)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"{source} has unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}.")
        return cls(**values)

    @classmethod
    def load(cls, path):
        """The resolved configuration saved at `path` (a run's config.json)."""
        try:
            with open(path) as f:
                values = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} does not exist: is its folder a training run's model_dir?") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a readable run configuration (JSON): {error}.") from None
        missing = sorted({"dataset", "depth", "block"} - set(values)) if isinstance(values, dict) else []
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}: it was not written by a keras_preact run.")
        try:
            return cls.from_dict(values, path).resolved()
        except (TypeError, ValueError) as error:
            message = str(error)  # from_dict's own errors name the file already
            raise ValueError(message if message.startswith(os.fspath(path)) else f"{path}: {message}") from None

    def save(self, path):
        """Writes the configuration atomically: other processes may read it meanwhile."""
        write_json(path, self.to_dict())


@dataclasses.dataclass(frozen=True)
class ResolvedRunConfig(RunConfig):
    """A `RunConfig` whose every default is filled in and every value checked: what
    `RunConfig.resolved()` returns, and what `training.run` and `build_model` take as it is
    (resolving it again returns it unchanged, without checking anything twice).

    >>> config = RunConfig(depth=20, epochs=3).resolved()
    >>> config.resolved() is config, config.block, config.learning_rate
    (True, 'basic', 0.1)
    """

    # Set by RunConfig.resolved() alone: a copy with other values (dataclasses.replace) lacks it,
    # and resolves (and checks) again.
    checked: bool = dataclasses.field(default=False, init=False, repr=False, compare=False)

    def resolved(self):
        return self if self.checked else super().resolved()

    def completed(self, **values):
        """A copy with `values` the run decided itself and checked where it made them (the input
        pipeline "auto" names, a folder's classes and normalisation), taken as resolved: a run
        resolves its configuration once."""
        copy = dataclasses.replace(self, **values)
        object.__setattr__(copy, "checked", True)
        return copy


def write_json(path, values):
    """Writes atomically: a kill leaves the previous file or the new one, never half of one."""
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        json.dump(values, f, indent=2)
    os.replace(partial, path)


def _check_path(argument, value, optional=False):
    if value is None and optional:
        return
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ValueError(f"{argument} must be a path, got {value!r}.")


def _defaults_for_none(config):
    """None means the default, for every setting (model options included)."""
    replaced = {}
    for field in dataclasses.fields(config):
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        if getattr(config, field.name) is None and default is not None:
            replaced[field.name] = default
    if isinstance(config.model_options, dict):
        # an unknown name stays, to be refused
        replaced["model_options"] = {k: v for k, v in config.model_options.items() if v is not None or k not in MODEL_OPTIONS}
    return replaced


def _check_image_size(image_size, recipe, name):
    if image_size is None:
        return recipe.image_size
    choices.check_count("image_size", image_size)
    if recipe.augmentation == "cifar" and image_size != recipe.image_size:
        raise ValueError(
            f"recipe={name!r} trains on {recipe.image_size}x{recipe.image_size} images (4-pixel padding and crops); "
            f"image_size={image_size} needs recipe='imagenet' (random-sized crops of any image)."
        )
    return image_size


def _check_normalization(normalization):
    """[mean, std] as lists of floats (JSON's form), or the ValueError of `normalization`."""
    try:
        preprocessing.normalization(tuple(normalization))  # three finite numbers each, std positive
    except TypeError:
        raise ValueError(f"normalization must be [mean, std] of three numbers each, got {normalization!r}.") from None
    return [[float(value) for value in values] for values in normalization]  # float64: the same after JSON


def _check_model_options(options, depth, block):
    """The run's model options, checked with the network's depth and block by the builders'
    own rules (`check_architecture`)."""
    if not isinstance(options, dict):
        raise ValueError(f"model_options must be a dict of PreActResNet arguments, got {options!r}.")
    unknown = sorted(set(options) - set(MODEL_OPTIONS))
    if unknown:
        raise ValueError(f"Unknown model option(s) {', '.join(unknown)}; valid: {', '.join(MODEL_OPTIONS)}.")
    check_architecture(depth, block, **options)
    return dict(options)


def build_model(config, weights=None, batch_norm_options=None):
    """The model of a run (resolved or not): its network, classes and precision policy.
    `batch_norm_options`: how BatchNorm statistics span replicas (`distribute.batch_norm_options`)."""
    config = config.resolved()
    return PreActResNet(
        config.depth,
        block=config.block,
        classes=config.dataset_record().classes,
        input_shape=(config.image_size, config.image_size, 3),
        dtype=choices.PRECISIONS[config.mixed_precision],
        weights=weights,
        batch_norm_options=batch_norm_options,
        **config.model_options,
    )
