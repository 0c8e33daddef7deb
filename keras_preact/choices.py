"""Every named choice of the package, as data: the one registry that the library, the examples and
the commands read.

Each table is a `Choices`: its valid names in order, a record per name, and one error message for
a name that is not there. A new dataset, recipe, unit ordering or shortcut variant is one entry
here; the code that gives it behaviour reads the record. This module imports nothing of the package
(and no framework), so command lines can list the choices before a backend starts.
"""

import contextlib
import dataclasses
import math
import numbers
from collections.abc import Mapping

import numpy as np


class Choices(Mapping):
    """The valid values of one argument, each with its record.

    >>> colours = Choices("colour", {"red": 1, "blue": 2})
    >>> colours.check("red")
    'red'
    >>> colours.check("green")
    Traceback (most recent call last):
    ...
    ValueError: Unknown colour='green'. Valid values: 'red', 'blue'.
    """

    def __init__(self, argument, records):
        self.argument = argument
        self._records = dict(records)

    def check(self, value, argument=None):
        """Returns `value` if it is a valid name, else raises a ValueError naming the valid ones."""
        if not isinstance(value, str) or value not in self._records:
            raise ValueError(
                f"Unknown {argument or self.argument}={value!r}. Valid values: "
                f"{', '.join(repr(name) for name in self._records)}."
            )
        return value

    def __getitem__(self, name):
        return self._records[self.check(name)]

    def __iter__(self):
        return iter(self._records)

    def __len__(self):
        return len(self._records)

    @property
    def names(self):
        return tuple(self._records)


def check_number(argument, value, low=-math.inf, high=math.inf, high_open=False):
    """A finite real number (not a bool) in [low, high] (or [low, high)); a ValueError otherwise."""
    number = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # an int beyond float's range is not finite either
            number = float(value)
    interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"
    if number is None or not math.isfinite(number):
        bounded = math.isfinite(low) or math.isfinite(high)
        raise ValueError(f"{argument} must be a finite number, got {value!r}{f' (valid: {interval})' if bounded else ''}.")
    value = number
    if value < low or value > high or (high_open and value == high):
        raise ValueError(f"{argument} must be in {interval}, got {value!r}.")
    return float(value)


def check_count(argument, value, minimum=1, maximum=None):
    """An integer (not a bool, NumPy's included) in [minimum, maximum]; a ValueError otherwise."""
    integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not integer or value < minimum or (maximum is not None and value > maximum):
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer of at least {minimum}")
        kind += f" of at most {maximum}" if maximum is not None else ""
        raise ValueError(f"{argument} must be {kind}, got {value!r}.")
    return int(value)


def check_flag(argument, value):
    """`value` as a bool if it is True or False (NumPy's too); a ValueError otherwise (1, "yes" and
    None are not flags)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{argument} must be True or False, got {value!r}.")
    return bool(value)


# --- data ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What a model needs to know about the images it was trained on."""

    classes: int
    mean: tuple  # per channel, on 0-255 pixels
    std: tuple
    image_size: int  # the side of the square images the model takes
    class_names: tuple = None  # None: see `model.preprocessing.dataset_class_names`
    trainable: bool = False  # `training.run` has a source for it
    # Encoded images (JPEG/PNG) for serving: None takes them at exactly the model's size; a side
    # length resizes the shorter side to it (scaled with the model's size), then centre-crops.
    resize: int = None


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CIFAR-100's fine labels in their label order (alphabetical, as in the dataset's meta file).
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
    camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
    dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
    leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
    otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray
    road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
    sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
    wardrobe whale willow_tree wolf woman worm""".split()
)

DATASETS = Choices(
    "dataset",
    {
        # The official code's constants (fb.resnet.torch datasets/cifar*.lua).
        "cifar10": Dataset(10, (125.3, 123.0, 113.9), (63.0, 62.1, 66.7), 32, CIFAR10_CLASSES, True),
        "cifar100": Dataset(100, (129.3, 124.1, 112.4), (68.2, 65.4, 70.4), 32, CIFAR100_CLASSES, True),
        # fb.resnet.torch's ImageNet constants (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) x 255.
        # Class names: keras_preact/model/imagenet_classes.tsv. Photos: shorter side 256, centre 224.
        "imagenet": Dataset(1000, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), 224, resize=256),
    },
)
# Any image folder (train/<class>/*, test/<class>/*): its classes, normalisation and image size
# come from the folder and the run (`training.RunConfig.dataset_record`), not from this table.
FOLDER = Dataset(classes=None, mean=None, std=None, image_size=None, trainable=True)
TRAINING_DATASETS = Choices("dataset", {**{name: d for name, d in DATASETS.items() if d.trainable}, "folder": FOLDER})

# --- networks ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
    depth_rule: tuple  # (a, b): CIFAR depth = a * n + b for n units per stage
    expansion: int  # output channels per filter


BLOCKS = Choices("block", {"basic": Block((6, 2), 1), "bottleneck": Block((9, 2), 4)})


def default_block(depth):
    """The block the paper uses at a CIFAR `depth`: bottleneck for 164 and 1001, basic for the
    6n+2 family (20 … 110, 1202), bottleneck for the other 9n+2 depths.

    >>> [default_block(d) for d in (20, 38, 110, 164, 1001, 1202, 11)]
    ['basic', 'basic', 'basic', 'bottleneck', 'bottleneck', 'basic', 'bottleneck']
    """
    if depth in (164, 1001):
        return "bottleneck"
    for block in ("basic", "bottleneck"):
        a, b = BLOCKS[block].depth_rule
        if isinstance(depth, int) and depth > b and (depth - b) % a == 0:
            return block
    return "bottleneck"  # units_per_stage then explains which depths are valid


@dataclasses.dataclass(frozen=True)
class Stem:
    input_shape: tuple  # channels-last default
    classes: int
    stride_on: str  # where a strided bottleneck unit puts its stride
    stages: tuple  # (filters, stride) per stage
    total_stride: int  # the network's downsampling: the smallest input side


STEMS = Choices(
    "stem",
    {
        # CIFAR: three stages at 32, 16, 8 pixels (bottleneck outputs 4x wider).
        "cifar": Stem((32, 32, 3), 10, "first_1x1", ((16, 1), (32, 2), (64, 2)), 4),
        # ImageNet (FAIR preresnet.lua): 7x7/2 conv and 3x3/2 max-pool, then four stages.
        "imagenet": Stem((224, 224, 3), 1000, "3x3", ((64, 1), (128, 2), (256, 2), (512, 2)), 32),
    },
)
IMAGENET_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
STRIDE_PLACEMENTS = Choices("stride_on", {"first_1x1": "official CIFAR code", "3x3": "FAIR, timm"})
PREACTIVATIONS = Choices(
    "preactivation",
    {
        "residual": "on the residual branch only; the shortcut reads the raw input",
        "shared": "once, before the split (the first unit of a stage)",
        "none": "not at all (the input is already activated)",
    },
)
DOWNSAMPLES = Choices("downsample", {"projection": "1x1 conv", "zero_pad": "subsample, append zero channels"})
DATA_FORMATS = Choices("data_format", {"channels_last": -1, "channels_first": 1})  # -> channel axis


@dataclasses.dataclass(frozen=True)
class Activation:
    """What one site of a unit or of the stack applies: BatchNorm, then ReLU, each if set."""

    norm: bool = False
    relu: bool = False


NOTHING, BN, RELU, BN_RELU = Activation(), Activation(norm=True), Activation(relu=True), Activation(True, True)


@dataclasses.dataclass(frozen=True)
class Ordering:
    """Where BatchNorm and ReLU sit in a unit and around the stack (paper Fig. 4): an `Activation`
    per site.

    `pre`, `between`, `tail`, `post`: the unit's sites before its first conv, between two convs,
    after its last conv, and after the addition. `stem`: what the CIFAR stem applies after its
    conv; `head`: what the network applies after the last unit, before pooling. Pre-activation
    units activate their own input and leave the last sum unactivated (hence a head); units that
    activate after the addition expect an activated input (hence a stem) and end activated.
    """

    figure: str
    pre: Activation
    between: Activation
    tail: Activation
    post: Activation
    stem: Activation
    head: Activation


ORDERINGS = Choices(
    "unit",
    {
        "full_preact": Ordering("4(e)", BN_RELU, BN_RELU, NOTHING, NOTHING, NOTHING, BN_RELU),
        "original": Ordering("4(a)", NOTHING, BN_RELU, BN, RELU, BN_RELU, NOTHING),
        "bn_after_addition": Ordering("4(b)", NOTHING, BN_RELU, NOTHING, BN_RELU, BN_RELU, NOTHING),
        "relu_before_addition": Ordering("4(c)", NOTHING, BN_RELU, BN_RELU, NOTHING, BN_RELU, NOTHING),
        # The paper does not spell out (d)'s stem and head: conv-BN so the first ReLU sees a
        # normalised input, and a final ReLU (our reading, BUILD_NOTES.md).
        "relu_only_preact": Ordering("4(d)", RELU, BN_RELU, BN, NOTHING, BN, RELU),
    },
)


@dataclasses.dataclass(frozen=True)
class Shortcut:
    """A shortcut variant of a shape-keeping unit (paper Fig. 2): `a·layer(x) + b·F(x)`.

    `projection`, `dropout`: the shortcut's layer (a 1x1 conv, or dropout; neither: identity).
    `gated`: the unit computes gate = sigmoid(1x1 conv(x) + gate_bias). `shortcut_weight`,
    `residual_weight`: a and b as functions of (gate, options), None for 1. `options`: the
    variant's options and their defaults.
    """

    figure: str
    projection: bool = False
    dropout: bool = False
    gated: bool = False
    shortcut_weight: object = None
    residual_weight: object = None
    options: tuple = ()  # ((name, default), ...)


def _gate(gate, options):
    return gate


def _one_minus_gate(gate, options):
    return 1.0 - gate


GATE_BIAS = (("gate_bias", -6.0),)
SHORTCUTS = Choices(
    "shortcut",
    {
        "identity": Shortcut("2(a)"),
        "constant_scaling": Shortcut(
            "2(b)",
            shortcut_weight=lambda gate, options: options["shortcut_scale"],
            residual_weight=lambda gate, options: options["residual_scale"],
            options=(("shortcut_scale", 0.5), ("residual_scale", 1.0)),
        ),
        "exclusive_gating": Shortcut(
            "2(c)", gated=True, shortcut_weight=_one_minus_gate, residual_weight=_gate, options=GATE_BIAS
        ),
        "shortcut_only_gating": Shortcut("2(d)", gated=True, shortcut_weight=_one_minus_gate, options=GATE_BIAS),
        "conv1x1": Shortcut("2(e)", projection=True),
        "dropout": Shortcut("2(f)", dropout=True, options=(("dropout_rate", 0.5),)),
    },
)
# Every shortcut option and the values it takes.
SHORTCUT_OPTIONS = {
    "shortcut_scale": lambda v: check_number("shortcut_scale", v),
    "residual_scale": lambda v: check_number("residual_scale", v),
    "gate_bias": lambda v: check_number("gate_bias", v),
    "dropout_rate": lambda v: check_number("dropout_rate", v, 0.0, 1.0, high_open=True),
}

# --- training ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A training recipe. Schedule points are fractions of the run, so shorter runs scale them."""

    batch_size: int
    epochs: int
    learning_rate: float
    boundaries: tuple  # fractions of the total iterations
    warmup: float  # fraction of the total iterations at warmup_rate
    warmup_rate: float
    nesterov: bool
    momentum: float = 0.9
    weight_decay: float = 1e-4
    augmentation: str = "cifar"  # "cifar": flip, 4-px pad, crop; "imagenet": `training.imagenet_augment`
    image_size: int = 32  # the default side of the images the model takes


RECIPES = Choices(
    "recipe",
    {
        # Paper appendix (Caffe): batch 128, lr 0.1 (0.01 for the first 400 iterations), /10 at 32k
        # and 48k, stop at 64k iterations = 164 epochs of 50,000 images.
        "paper": Recipe(128, 164, 0.1, (32000 / 64000, 48000 / 64000), 400 / 64000, 0.01, False),
        # Released code (fb.resnet.torch + resnet-pre-act.lua): batch 64, Nesterov, /10 at epochs 81
        # and 122, 200 epochs, no warm-up.
        "official": Recipe(64, 200, 0.1, (81 / 200, 122 / 200), 0.0, 0.1, True),
        # fb.resnet.torch (the paper's ImageNet models): batch 256, lr 0.1, /10 every 30 epochs of
        # 90, Nesterov momentum 0.9, weight decay 1e-4; random-sized crops to 224, colour jitter,
        # PCA lighting, flip; evaluation on the 224 centre crop of the image resized to 256.
        "imagenet": Recipe(256, 90, 0.1, (30 / 90, 60 / 90), 0.0, 0.1, True, augmentation="imagenet", image_size=224),
    },
)
# The policy for each --mixed_precision value.
PRECISIONS = Choices("mixed_precision", {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"})
STRATEGIES = Choices(
    "strategy",
    {
        "auto": "several devices or processes when there are, else one device",
        "mirrored": "every local device (TensorFlow MirroredStrategy, JAX DataParallel)",
        "multi_worker": "several processes or machines (TF_CONFIG, JAX coordinator, torchrun)",
        "one_device": "the first device only",
    },
)
INPUT_PIPELINES = Choices(
    "input_pipeline",
    {
        "auto": "tf_data where TensorFlow is installed, else device",
        "tf_data": "tf.data on the host (TensorFlow), every backend",
        "device": "the split on the accelerator, batches made there; jax and torch backends, no TensorFlow",
    },
)


# How the torch backend runs a training step (`training.step_capture`); JAX and TensorFlow compile
# the whole step themselves (XLA, tf.function) and take "auto" alone.
STEP_CAPTURES = Choices(
    "step_capture",
    {
        "auto": "torch: cuda_graph on a CUDA device, eager elsewhere",
        "cuda_graph": "torch: the whole step captured once as a CUDA graph and replayed (a CUDA device)",
        "eager": "torch: Keras' step, op by op",
    },
)


def shortcut_options(shortcut, given):
    """Every shortcut option for `shortcut`: the given value or the variant's default where the
    variant has the option, None elsewhere. An option given to a variant without it is an error."""
    record = SHORTCUTS[shortcut]
    unknown = set(given) - set(SHORTCUT_OPTIONS)
    if unknown:
        raise TypeError(f"Unknown shortcut option(s) {', '.join(sorted(unknown))}; valid: {', '.join(SHORTCUT_OPTIONS)}.")
    defaults = dict(record.options)
    resolved = {}
    for option, check in SHORTCUT_OPTIONS.items():
        value = given.get(option)
        if value is not None and option not in defaults:
            users = [name for name, r in SHORTCUTS.items() if option in dict(r.options)]
            raise ValueError(
                f"{option}={value!r} applies to shortcut={' or '.join(map(repr, users))}, not shortcut={shortcut!r}."
            )
        if option in defaults:
            value = check(defaults[option] if value is None else value)
        resolved[option] = value
    return resolved

FAIL = "fail"  # the paper's "fail": test error above 20%


@dataclasses.dataclass(frozen=True)
class Variant:
    """One run of the paper's ablations: PreActResNet options and the paper's CIFAR-10 test error
    (%) at ResNet-110 and ResNet-164 (None: the paper has no such run)."""

    options: dict
    paper_resnet110: object
    paper_resnet164: object


# Table 1 varies the shortcut of the original (post-activation) unit on ResNet-110; Table 2 the unit
# ordering on ResNet-110 and ResNet-164.
VARIANTS = Choices(
    "variant",
    {
        "original": Variant({"unit": "original"}, 6.61, 5.93),
        "constant_scaling_shortcut": Variant({"unit": "original", "shortcut": "constant_scaling"}, FAIL, None),
        "constant_scaling_both": Variant(
            {"unit": "original", "shortcut": "constant_scaling", "shortcut_scale": 0.5, "residual_scale": 0.5}, 12.35, None
        ),
        "exclusive_gating": Variant({"unit": "original", "shortcut": "exclusive_gating", "gate_bias": -6.0}, 8.70, None),
        "shortcut_only_gating": Variant({"unit": "original", "shortcut": "shortcut_only_gating", "gate_bias": -6.0}, 6.91, None),
        "conv1x1_shortcut": Variant({"unit": "original", "shortcut": "conv1x1"}, 12.22, None),
        "dropout_shortcut": Variant({"unit": "original", "shortcut": "dropout"}, FAIL, None),
        "bn_after_addition": Variant({"unit": "bn_after_addition"}, 8.17, 6.50),
        "relu_before_addition": Variant({"unit": "relu_before_addition"}, 7.84, 6.14),
        "relu_only_preact": Variant({"unit": "relu_only_preact"}, 6.71, 5.91),
        "full_preact": Variant({"unit": "full_preact"}, 6.37, 5.46),
    },
)

BATCH_NORMS = Choices(
    "batch_norm",
    {
        # The paper's Torch code and tf.distribute's default: each replica normalises its own batch.
        "per_replica": "statistics of each replica's share of the batch",
        "synchronized": "statistics of the global batch, all-reduced across replicas",
    },
)
