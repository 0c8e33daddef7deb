"""Builders for the paper's networks: one generic `PreActResNet` and the named depths.

A builder knows only how units stack into stages; the units know their own layout (`units.py`),
and the stems, blocks and orderings are records of `keras_preact.choices`. The arguments follow
keras.applications, so the models drop into code written for `ResNet50V2`.
"""

import os
import re

import keras

from keras_preact import choices
from keras_preact.model import presets
from keras_preact.model.layers import batch_norm, conv
from keras_preact.model.preprocessing import Normalize, normalization
from keras_preact.model.repeated import RepeatedUnits, copy_weights, stacks_units
from keras_preact.model.units import ResidualUnit, check_batch_norm_options

# Torch's nn.Linear init, uniform(±1/sqrt(fan_in)); the official code zeroes the bias.
DENSE_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_in", "distribution": "uniform"},
}


def units_per_stage(depth: int, block: str, stem: str) -> tuple[int, ...]:
    """Residual units in each stage for a network of `depth` layers, or a ValueError."""
    choices.BLOCKS.check(block)
    if choices.STEMS.check(stem) == "imagenet":
        if block != "bottleneck" or depth not in choices.IMAGENET_UNITS:
            valid = ", ".join(str(d) for d in choices.IMAGENET_UNITS)
            raise ValueError(
                f"An ImageNet pre-activation ResNet has depth {valid} with block='bottleneck'; "
                f"got depth={depth!r}, block={block!r}."
            )
        return choices.IMAGENET_UNITS[depth]
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise ValueError(f"depth must be an integer, got {depth!r}.")
    a, b = choices.BLOCKS[block].depth_rule
    n, remainder = divmod(depth - b, a)
    if remainder or n < 1:
        lower = max(a * n + b, a + b)
        nearest = sorted({lower, lower + a} if remainder else {a + b})
        other = "basic" if block == "bottleneck" else "bottleneck"
        oa, ob = choices.BLOCKS[other].depth_rule
        hint = ""
        if depth > ob and (depth - ob) % oa == 0:
            hint = f" depth={depth} fits block={other!r} ({oa}n+{ob})."
        raise ValueError(
            f"A CIFAR ResNet with block={block!r} has depth {a}n+{b} (n >= 1); depth={depth} "
            f"does not fit. Nearest valid depths: {', '.join(map(str, nearest))}.{hint}"
        )
    return (n,) * len(choices.STEMS["cifar"].stages)


def check_architecture(
    depth: int,
    block: str = "bottleneck",
    stem: str = "cifar",
    unit: str = "full_preact",
    shortcut: str = "identity",
    downsample: str = "projection",
    stride_on: str | None = None,
    remat: bool = False,
    scan_units: bool = False,
    **shortcut_options: float,
) -> tuple[int, ...]:
    """Checks the architecture arguments of `PreActResNet` (the one place their rules live: the
    builders and `RunConfig.resolved()` call it); returns the residual units per stage.

    >>> check_architecture(164)
    (18, 18, 18)
    >>> check_architecture(110, "basic", stride_on="3x3")
    Traceback (most recent call last):
    ...
    ValueError: stride_on applies to bottleneck units; basic units stride on their first 3x3 conv.
    """
    choices.BLOCKS.check(block)
    choices.STEMS.check(stem)
    choices.ORDERINGS.check(unit)
    choices.SHORTCUTS.check(shortcut)
    choices.DOWNSAMPLES.check(downsample)
    if stride_on is not None:
        choices.STRIDE_PLACEMENTS.check(stride_on)
    choices.check_flag("remat", remat)
    choices.check_flag("scan_units", scan_units)
    choices.shortcut_options(shortcut, shortcut_options)  # misplaced or bad options fail here
    if scan_units and shortcut == "dropout":
        raise ValueError("scan_units=True runs units that draw no random numbers; shortcut='dropout' needs scan_units=False.")
    if stem == "imagenet" and unit != "full_preact":
        raise ValueError(f"unit={unit!r} is one of the paper's CIFAR ablations; the ImageNet networks use 'full_preact'.")
    if stride_on is not None and block == "basic":
        raise ValueError("stride_on applies to bottleneck units; basic units stride on their first 3x3 conv.")
    return units_per_stage(depth, block, stem)


def _validate_input_shape(input_shape, stem, data_format):
    if len(input_shape) != 3:
        raise ValueError(
            f"input_shape must have 3 dimensions (height, width, channels), got {input_shape}."
        )
    channels = input_shape[-1] if data_format == "channels_last" else input_shape[0]
    spatial = input_shape[:2] if data_format == "channels_last" else input_shape[1:]
    if channels != 3:
        raise ValueError(
            f"input_shape {tuple(input_shape)} has {channels} channels; these networks take RGB "
            f"images with 3 channels ({data_format})."
        )
    minimum = choices.STEMS[stem].total_stride
    if any(size is not None and size < minimum for size in spatial):
        raise ValueError(
            f"input_shape {tuple(input_shape)} is too small: the {stem} network downsamples "
            f"{minimum}x, so height and width must be at least {minimum}."
        )


def _inputs(input_tensor, input_shape, stem, data_format):
    if input_shape is None:
        default = choices.STEMS[stem].input_shape
        input_shape = default if data_format == "channels_last" else (3, *default[:2])
        if input_tensor is not None:
            input_shape = tuple(input_tensor.shape[1:])
    _validate_input_shape(tuple(input_shape), stem, data_format)
    if input_tensor is None:
        return keras.Input(shape=input_shape, name="images")
    if not keras.backend.is_keras_tensor(input_tensor):
        return keras.Input(tensor=input_tensor, shape=input_shape, name="images")
    return input_tensor


def _preprocessing(x, include_preprocessing, stem, classes, axis, dtype):
    if include_preprocessing is False:
        return x
    dataset = include_preprocessing
    if include_preprocessing is True:
        dataset = "imagenet" if stem == "imagenet" else {10: "cifar10", 100: "cifar100"}.get(classes)
        if dataset is None:
            raise ValueError(
                f"include_preprocessing=True picks CIFAR-10 or CIFAR-100 by the classes (10 or 100), got "
                f"classes={classes}: pass a dataset name or a (mean, std) pair."
            )
    refusal = f"include_preprocessing must be True, False, a dataset name or (mean, std); got {include_preprocessing!r}."
    if isinstance(dataset, bool) or not isinstance(dataset, (str, tuple, list)):
        raise ValueError(refusal)
    try:
        mean_std = normalization(dataset)
    except ValueError as error:
        raise ValueError(f"{refusal} ({error})") from None
    return Normalize(*mean_std, axis=axis, dtype=dtype, name="preprocessing")(x)


def _activate(x, site, prefix, axis, dtype, norm_options):
    """An `Activation` site of the stack: BatchNorm `{prefix}_bn`, then ReLU `{prefix}_relu`, each if set."""
    if site.norm:
        x = batch_norm(f"{prefix}_bn", axis, dtype, **norm_options)(x)
    if site.relu:
        x = keras.layers.ReLU(dtype=dtype, name=f"{prefix}_relu")(x)
    return x


def _stem(x, stem, unit, data_format, axis, dtype, norm_options):
    layout = dict(data_format=data_format, dtype=dtype)
    if stem == "cifar":
        # Full pre-activation: a bare conv; the first unit pre-activates (resnet-pre-act.lua).
        x = conv(16, 3, "conv1", **layout)(x)
        return _activate(x, choices.ORDERINGS[unit].stem, "conv1", axis, dtype, norm_options)
    # Explicit symmetric padding = Torch's 7x7/2 pad 3 and 3x3/2 max-pool pad 1; after the ReLU,
    # zero padding equals Torch's -inf padding for the max-pool.
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad", **layout)(x)
    x = conv(64, 7, "conv1_conv", strides=2, padding="valid", **layout)(x)
    x = _activate(x, choices.BN_RELU, "conv1", axis, dtype, norm_options)
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad", **layout)(x)
    return keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool", **layout)(x)


def _weights_file(weights, preset):
    """The weights file to load, or None: `weights` is None, a file, or a preset's dataset
    (`preset`: the model's name without the dataset, its `presets.architecture` and classes)."""
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights must be None, a preset's dataset (e.g. 'cifar10') or the path to a weights file, got {weights!r}."
        )
    path = os.fspath(weights)
    if not os.path.exists(path) and os.sep not in path and "." not in path:  # a preset's dataset such as "cifar10"
        name, fits, classes = preset
        return presets.weights_file(f"{name}.{path}", fits, classes)
    return path


def load_weights(model: keras.Model, path: str, description: str, other_layout=None) -> None:
    """`model.load_weights(path)` with errors that name the file and what to do. `other_layout`:
    None, or a function that builds `model`'s network with the other `scan_units`, whose
    weights files load too (`repeated.copy_weights`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"weights file {path!r} {'is a directory' if os.path.isdir(path) else 'does not exist'}. "
            "Pass the path of a `.weights.h5` file saved from the same network."
        )
    if not path.endswith(".weights.h5"):
        raise ValueError(f"weights file {path!r} must end in .weights.h5 (Keras' weights format).")
    try:
        if other_layout is not None and stacks_units(path) != stacks_units(model):
            other = other_layout()
            other.load_weights(path)
            copy_weights(other, model)
        else:
            model.load_weights(path)
    except OSError as error:  # h5py: "file signature not found", truncated files
        raise ValueError(f"weights file {path!r} is not a readable Keras weights file (HDF5): {error}.") from None
    except (ValueError, KeyError) as error:
        # Keras lists the failing layers after a dump of their arrays; name the layers only.
        message = str(error)
        failed = list(dict.fromkeys(re.findall(r"name=([\w.-]+)", message.rpartition("could not be loaded")[2])))
        shown = ", ".join(failed[:6]) + (", ..." if len(failed) > 6 else "")
        detail = f"missing or differently shaped weights in layer(s) {shown}" if failed else message[:500]
        raise ValueError(
            f"weights file {path!r} does not fit {description}: {detail}. Build the model with the "
            "depth, block, classes and include_top the weights were saved with."
        ) from error


def PreActResNet(
    depth: int,
    block: str = "bottleneck",
    stem: str = "cifar",
    include_top: bool = True,
    weights: str | os.PathLike | None = None,
    input_tensor=None,
    input_shape: tuple | None = None,
    pooling: str | None = None,
    classes: int | None = None,
    classifier_activation: str | None = "softmax",
    downsample: str = "projection",
    unit: str = "full_preact",
    shortcut: str = "identity",
    stride_on: str | None = None,
    remat: bool = False,
    scan_units: bool = False,
    dtype: str | keras.DTypePolicy | None = None,
    data_format: str | None = None,
    batch_norm_options: dict | None = None,
    name: str | None = None,
    include_preprocessing: bool | str | tuple = False,
    **shortcut_options: float,
) -> keras.Model:
    """Builds a pre-activation ResNet (He et al., "Identity Mappings in Deep Residual Networks").

    Every unit is the full pre-activation unit (`ResidualUnit`); the first unit of each stage
    applies its BN → ReLU before splitting, so its projection shortcut reads the pre-activated
    tensor; the last unit is followed by BN → ReLU, global average pooling and the classifier.
    The model takes *normalised* images (`keras_preact` data pipelines, exported serving
    signatures and `keras_preact.preprocess_input` normalise), unless `include_preprocessing`.

    Args:
        depth: number of weighted layers. CIFAR: `9n+2` with bottleneck units (164, 1001) or
            `6n+2` with basic units (110). ImageNet: 50, 101, 152 or 200.
        block: `"bottleneck"` or `"basic"` (CIFAR only).
        stem: `"cifar"` (3×3 conv to 16 channels; stages at 32/16/8 px; the bottleneck stride on
            the first 1×1 conv, as in the official `resnet-pre-act.lua`) or `"imagenet"` (7×7/2
            conv, BN, ReLU, 3×3/2 max-pool; the stride on the 3×3 conv, as in FAIR's code).
        include_top: whether to end in the dense classifier.
        weights: `None` (random init), the dataset of a preset that ships trained weights of this
            network (e.g. `"cifar10"`; `keras_preact.list_models(pretrained=True)`), or the path
            to a weights file of the same network.
        input_tensor: optional tensor to use as the model's input.
        input_shape: optional `(height, width, 3)` (`(3, height, width)` channels-first); defaults to (32, 32, 3) for
            CIFAR and (224, 224, 3) for ImageNet. Height and width may be None.
        pooling: with `include_top=False`: `None` (4-D feature map), `"avg"` or `"max"`.
        classes: number of classes; defaults to 10 (CIFAR) or 1000 (ImageNet).
        classifier_activation: activation of the classifier, e.g. `"softmax"` or `None` for
            logits.
        downsample: shortcut where a unit changes shape: `"projection"` (1×1 conv, the paper's
            choice) or `"zero_pad"` (parameter-free, FAIR's CIFAR option for basic units).
        unit: the unit's ordering of BN and ReLU (paper Fig. 4, CIFAR stem): `"full_preact"`
            (e, default), `"original"` (a; the network then has a conv-BN-ReLU stem and no final
            BN-ReLU), `"bn_after_addition"` (b), `"relu_before_addition"` (c),
            `"relu_only_preact"` (d).
        shortcut: the shortcut of shape-keeping units (paper Fig. 2): `"identity"` (default),
            `"constant_scaling"`, `"exclusive_gating"`, `"shortcut_only_gating"`, `"conv1x1"`,
            `"dropout"`. Units that change shape keep their `downsample` shortcut.
        stride_on: bottleneck stride on `"first_1x1"` (official CIFAR code) or `"3x3"` (FAIR,
            timm); defaults to the stem's official placement.
        remat: recompute each unit's activations in the backward pass (less memory, more
            compute; see `ResidualUnit`). For ResNet-1001 on TensorFlow add `scan_units=True`:
            tracing hundreds of recomputed units written out takes many minutes.
        scan_units: run each stage's units after its first as one `RepeatedUnits` layer named
            `stage{s}_units2to{n}`: one scan over their stacked weights, so JAX (XLA) and
            TensorFlow compile or trace one unit per stage and that time no longer grows with
            the depth. Same outputs, training and parameters as the written-out network, whose
            weights files load either way.
        dtype: the dtype policy of every layer (e.g. `"mixed_bfloat16"`); defaults to Keras'
            global policy. Under a mixed policy the classifier computes in float32.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        batch_norm_options: how every BatchNorm's training statistics span data-parallel
            replicas (`{"synchronized": True}`, `{"virtual_groups": n}`; see `ResidualUnit`).
        name: model name; defaults to `"preact_resnet{depth}"`.
        include_preprocessing: `True`, a dataset name or a `(mean, std)` pair: the model starts
            with a `Normalize` layer named "preprocessing" and takes raw 0-255 pixels. `True`
            takes the stem's dataset: "imagenet", or the CIFAR dataset with `classes` classes.
        **shortcut_options: `shortcut_scale`, `residual_scale` (constant scaling), `gate_bias`
            (gating), `dropout_rate` (dropout); see `ResidualUnit`.

    Returns:
        A functional `keras.Model`.

    Example:

    >>> import keras_preact
    >>> model = keras_preact.PreActResNet(20, block="basic")
    >>> model.count_params()
    273658
    """
    arguments = dict(locals())  # before any other name: to build the other layout of the network
    unknown = set(shortcut_options) - set(choices.SHORTCUT_OPTIONS)
    if unknown:
        raise TypeError(f"PreActResNet() got unexpected keyword argument(s): {', '.join(sorted(unknown))}.")
    stages = check_architecture(
        depth, block, stem, unit=unit, shortcut=shortcut, downsample=downsample, stride_on=stride_on, remat=remat,
        scan_units=scan_units, **shortcut_options,
    )
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"Unknown pooling={pooling!r}. Valid values: None, 'avg', 'max'.")
    classes = choices.STEMS[stem].classes if classes is None else choices.check_count("classes", classes)
    data_format = choices.DATA_FORMATS.check(data_format or keras.config.image_data_format())
    axis = choices.DATA_FORMATS[data_format]
    policy = keras.dtype_policies.get(dtype or keras.config.dtype_policy())
    norm_options = check_batch_norm_options(batch_norm_options)
    fits = presets.architecture(depth, block, stem, unit, shortcut, downsample, stride_on, **shortcut_options)
    weights_file = _weights_file(weights, (f"preact_resnet{depth}", fits, classes))  # before the build: fail fast
    name = name or f"preact_resnet{depth}"

    inputs = _inputs(input_tensor, input_shape, stem, data_format)
    x = _preprocessing(inputs, include_preprocessing, stem, classes, axis, policy)
    x = _stem(x, stem, unit, data_format, axis, policy, norm_options)
    for stage, ((filters, stride), count) in enumerate(zip(choices.STEMS[stem].stages, stages), start=1):
        options = dict(
            filters=filters, block=block, stride_on=stride_on or choices.STEMS[stem].stride_on, downsample=downsample,
            ordering=unit, shortcut=shortcut, remat=remat, data_format=data_format,
            batch_norm_options=norm_options, **shortcut_options,
        )
        # The first unit of a stage pre-activates before the split (none after the ImageNet stem's BN-ReLU).
        first = "none" if stem == "imagenet" and stage == 1 else "shared"
        x = ResidualUnit(strides=stride, preactivation=first, dtype=policy, name=f"stage{stage}_unit1", **options)(x)
        if scan_units and count > 1:
            x = RepeatedUnits(count - 1, options, dtype=policy, name=f"stage{stage}_units2to{count}")(x)
            continue
        for index in range(2, count + 1):
            x = ResidualUnit(dtype=policy, name=f"stage{stage}_unit{index}", **options)(x)
    x = _activate(x, choices.ORDERINGS[unit].head, "post", axis, policy, norm_options)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(data_format=data_format, dtype=policy, name="avg_pool")(x)
        x = keras.layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=keras.initializers.get(DENSE_INITIALIZER),
            # Under mixed precision the classifier still computes (and softmaxes) in float32.
            dtype="float32" if policy.name.startswith("mixed") else policy,
            name="predictions",
        )(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(data_format=data_format, dtype=policy, name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(data_format=data_format, dtype=policy, name="max_pool")(x)

    if input_tensor is not None and keras.backend.is_keras_tensor(input_tensor):
        inputs = keras.utils.get_source_inputs(input_tensor)
    model = keras.Model(inputs, x, name=name)
    # The model's own policy too: Keras' compile adds loss scaling when it is mixed_float16.
    model.dtype_policy = policy
    if weights_file is not None:
        other = {key: value for key, value in arguments.items() if key != "shortcut_options"}
        other.update(arguments["shortcut_options"], scan_units=not scan_units, weights=None)
        load_weights(
            model, weights_file, f"{name} (depth={depth}, block={block!r}, classes={classes}, include_top={include_top})",
            other_layout=lambda: PreActResNet(**other),
        )
    return model


# Every builder by its timm-style name (`keras_preact.create_model`); presets add `.<dataset>`.
MODELS = {"preact_resnet": PreActResNet}

_BUILDER_DOC = """Builds the paper's {title}: {summary}.

    Args:
        include_top: whether to end in the dense classifier.
        weights: `None` (random init), a preset's dataset (e.g. `"cifar10"`, where trained
            weights ship) or the path to a weights file of the same network.
        input_tensor: optional tensor to use as the model's input.
        input_shape: optional `(height, width, 3)`; default {shape}.
        pooling: with `include_top=False`: `None`, `"avg"` or `"max"`.
        classes: number of classes (default {classes}).
        classifier_activation: activation of the classifier; `None` gives logits.
        name: model name.
        **kwargs: further options of `keras_preact.PreActResNet` (e.g. `downsample`).

    Returns:
        A functional `keras.Model` taking normalised images (raw pixels with
        `include_preprocessing=True`).

    Example:

    >>> import keras_preact
    >>> keras_preact.{builder}({example}).count_params()
    {count}
    """


def _named_builder(builder, depth, block, stem, summary, example, count):
    """The builder `builder` of the paper's network, registered in `MODELS` as `preact_resnet{depth}`."""
    classes = choices.STEMS[stem].classes

    def build(
        include_top: bool = True,
        weights: str | os.PathLike | None = None,
        input_tensor=None,
        input_shape: tuple | None = None,
        pooling: str | None = None,
        classes: int = classes,
        classifier_activation: str | None = "softmax",
        name: str = builder.lower(),
        **kwargs,
    ) -> keras.Model:
        return PreActResNet(
            depth,
            block=block,
            stem=stem,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            name=name,
            **kwargs,
        )

    build.__name__ = build.__qualname__ = builder
    build.__doc__ = _BUILDER_DOC.format(
        title=f"pre-activation ResNet-{depth}",
        summary=summary,
        shape=choices.STEMS[stem].input_shape,
        classes=classes,
        builder=builder,
        example=example,
        count=count,
    )
    MODELS[f"preact_resnet{depth}"] = build
    return build


ResNet110 = _named_builder(
    "ResNet110", 110, "basic", "cifar", "CIFAR, 54 basic units, 1.7M parameters", "", "1738618"
)
ResNet164 = _named_builder(
    "ResNet164", 164, "bottleneck", "cifar", "CIFAR, 54 bottleneck units, 1.7M parameters",
    "", "1727482",
)
ResNet1001 = _named_builder(
    "ResNet1001", 1001, "bottleneck", "cifar", "CIFAR, 333 bottleneck units, 10.3M parameters",
    "classes=100", "10500052",
)
ResNet50 = _named_builder(
    "ResNet50", 50, "bottleneck", "imagenet", "ImageNet, 16 bottleneck units", "", "25594792"
)
ResNet101 = _named_builder(
    "ResNet101", 101, "bottleneck", "imagenet", "ImageNet, 33 bottleneck units", "", "44639144"
)
ResNet152 = _named_builder(
    "ResNet152", 152, "bottleneck", "imagenet", "ImageNet, 50 bottleneck units", "", "60328872"
)
ResNet200 = _named_builder(
    "ResNet200", 200, "bottleneck", "imagenet", "ImageNet, 66 bottleneck units", "", "64834472"
)
