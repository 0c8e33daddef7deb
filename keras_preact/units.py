"""The residual unit of He et al. (2016): one layer for every network and variant of the paper.

A unit is `x_{l+1} = post(shortcut(x_l) ⊕ residual(x_l))`. The paper's unit orderings (Fig. 4)
differ only in where BatchNorm and ReLU sit around the convolutions, so an ordering is data — four
tuples of operations — and its shortcut variants (Fig. 2) differ only in ⊕. One layer implements
all of them, for basic and bottleneck units alike.
"""

import keras
from keras import ops

from keras_preact.layers import Conv2D, batch_norm

# The official init: normal(0, sqrt(2 / (k*k*C_out))), He fan-out, *untruncated* (Keras' HeNormal is
# fan-in and truncated).
CONV_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}

# ordering -> (pre, between, tail, post): operations before the first conv, between two convs, after
# the last conv, and after the addition. "bn" and "relu" are the only operations the paper moves.
ORDERINGS = {
    "full_preact": (("bn", "relu"), ("bn", "relu"), (), ()),  # (e) the paper's proposal
    "original": ((), ("bn", "relu"), ("bn",), ("relu",)),  # (a) conv-BN-ReLU-conv-BN, add, ReLU
    "bn_after_addition": ((), ("bn", "relu"), (), ("bn", "relu")),  # (b)
    "relu_before_addition": ((), ("bn", "relu"), ("bn", "relu"), ()),  # (c)
    "relu_only_preact": (("relu",), ("bn", "relu"), ("bn",), ()),  # (d) ReLU-conv-BN-ReLU-conv-BN
}

# Paper Fig. 2: what the shortcut of a shape-keeping unit does. Units that change shape use the
# projection (or zero padding) whatever the variant, as in the paper's experiments.
SHORTCUTS = (
    "identity",  # (a) x + F(x)
    "constant_scaling",  # (b) λs·x + λr·F(x)
    "exclusive_gating",  # (c) (1 - g)·x + g·F(x), g = sigmoid(1x1 conv(x) + b)
    "shortcut_only_gating",  # (d) (1 - g)·x + F(x)
    "conv1x1",  # (e) 1x1 conv(x) + F(x)
    "dropout",  # (f) dropout(x) + F(x)
)
# Options of one shortcut variant, with their defaults; None in the constructor means "default".
SHORTCUT_OPTIONS = {
    "shortcut_scale": (("constant_scaling",), 0.5),
    "residual_scale": (("constant_scaling",), 1.0),
    "gate_bias": (("exclusive_gating", "shortcut_only_gating"), -6.0),
    "dropout_rate": (("dropout",), 0.5),
}

BLOCKS = ("basic", "bottleneck")
STRIDE_PLACEMENTS = ("first_1x1", "3x3")
PREACTIVATIONS = ("residual", "shared", "none")
DOWNSAMPLES = ("projection", "zero_pad")
BOTTLENECK_EXPANSION = 4


def check_choice(argument, value, choices):
    """Raises a ValueError naming `argument`, the bad `value` and the valid choices."""
    if value not in choices:
        raise ValueError(
            f"Unknown {argument}={value!r}. Valid values: {', '.join(repr(c) for c in choices)}."
        )


def output_channels(block, filters):
    """Channels a unit of `block` type with `filters` outputs."""
    return filters * BOTTLENECK_EXPANSION if block == "bottleneck" else filters


@keras.saving.register_keras_serializable(package="keras_preact")
class ResidualUnit(keras.layers.Layer):
    """A residual unit: basic (two 3×3 convs) or bottleneck (1×1, 3×3, 1×1).

    The default is the paper's full pre-activation unit (Fig. 4e): BN → ReLU → conv → BN → ReLU →
    conv (→ BN → ReLU → conv), added to the shortcut with nothing after the addition.

    Args:
        filters: output channels of a basic unit; bottleneck width of a bottleneck unit, whose
            output has `4 * filters` channels.
        block: `"basic"` or `"bottleneck"`.
        strides: spatial stride of the unit (1, or 2 where a stage halves the feature map).
        stride_on: bottleneck only: which conv carries the stride — `"first_1x1"` as in the
            official CIFAR code (`resnet-pre-act.lua`), or `"3x3"` as in FAIR's ImageNet code.
            Basic units always stride on their first 3×3.
        preactivation: where the unit's leading BN → ReLU applies. `"residual"`: on the residual
            branch only; the shortcut reads the raw input (every unit but a stage's first).
            `"shared"`: once, before the split, so the shortcut reads the pre-activated tensor
            (the first unit of a stage). `"none"`: not at all, for a unit whose input is already
            activated (the first ImageNet unit, after the stem's BN → ReLU).
        downsample: the shortcut where the unit changes shape (channels or stride):
            `"projection"` (1×1 conv, no BN, carrying the stride) or `"zero_pad"` (subsample,
            then append zero channels; parameter-free, FAIR's CIFAR option A). Units that keep
            their shape always use the identity.
        ordering: where BN and ReLU sit (paper Fig. 4): `"full_preact"` (e, default),
            `"original"` (a: conv-BN-ReLU-conv-BN, add, ReLU), `"bn_after_addition"` (b),
            `"relu_before_addition"` (c), `"relu_only_preact"` (d).
        shortcut: the shortcut of a unit that keeps its shape (paper Fig. 2): `"identity"`
            (a, default), `"constant_scaling"` (b), `"exclusive_gating"` (c),
            `"shortcut_only_gating"` (d), `"conv1x1"` (e), `"dropout"` (f).
        shortcut_scale, residual_scale: `"constant_scaling"`: λ of the shortcut (default 0.5)
            and of the residual (default 1.0).
        gate_bias: gating variants: initial bias of the gate's 1×1 conv (default -6).
        dropout_rate: `"dropout"`: rate on the shortcut, training only (default 0.5).
        remat: recompute the unit's activations in the backward pass instead of keeping them
            (`keras.remat`: `jax.checkpoint`, `tf.recompute_grad`, torch checkpointing), trading
            compute for memory. BatchNorm statistics are still updated once per step.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Convolutions have no bias and use the official init; BatchNorm has Torch's epsilon 1e-5 and
    momentum (Keras `momentum=0.9`). Padding follows Torch (symmetric, `k // 2` on each side), so
    strided 3×3 convs sample the same pixels as the official code and the 1×1 projection.

    Example:

    >>> import numpy as np
    >>> unit = ResidualUnit(16, block="bottleneck", strides=2, preactivation="shared")
    >>> tuple(unit(np.zeros((1, 32, 32, 16), "float32")).shape)
    (1, 16, 16, 64)
    """

    def __init__(
        self,
        filters,
        block="bottleneck",
        strides=1,
        stride_on="first_1x1",
        preactivation="residual",
        downsample="projection",
        ordering="full_preact",
        shortcut="identity",
        shortcut_scale=None,
        residual_scale=None,
        gate_bias=None,
        dropout_rate=None,
        remat=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"filters must be a positive integer, got {filters!r}.")
        if strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, got {strides!r}.")
        check_choice("block", block, BLOCKS)
        check_choice("stride_on", stride_on, STRIDE_PLACEMENTS)
        check_choice("preactivation", preactivation, PREACTIVATIONS)
        check_choice("downsample", downsample, DOWNSAMPLES)
        check_choice("ordering", ordering, tuple(ORDERINGS))
        check_choice("shortcut", shortcut, SHORTCUTS)
        given = {
            "shortcut_scale": shortcut_scale,
            "residual_scale": residual_scale,
            "gate_bias": gate_bias,
            "dropout_rate": dropout_rate,
        }
        for option, value in given.items():
            variants, default = SHORTCUT_OPTIONS[option]
            if value is not None and shortcut not in variants:
                raise ValueError(
                    f"{option}={value!r} applies to shortcut={' or '.join(map(repr, variants))}, "
                    f"not shortcut={shortcut!r}."
                )
            setattr(self, option, default if value is None and shortcut in variants else value)
        if self.dropout_rate is not None and not 0 <= self.dropout_rate < 1:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}.")
        self.filters = filters
        self.block = block
        self.strides = strides
        self.stride_on = stride_on
        self.preactivation = preactivation
        self.downsample = downsample
        data_format = data_format or keras.config.image_data_format()
        check_choice("data_format", data_format, ("channels_last", "channels_first"))
        self.data_format = data_format
        self.channel_axis = -1 if self.data_format == "channels_last" else 1
        self.out_channels = output_channels(block, filters)
        self.ordering = ordering
        self.shortcut = shortcut
        self.remat = bool(remat)

    # --- structure -------------------------------------------------------------------------

    def _conv_specs(self):
        """(filters, kernel, strides) of each conv on the residual branch."""
        if self.block == "basic":
            return [(self.filters, 3, self.strides), (self.filters, 3, 1)]
        first_stride = self.strides if self.stride_on == "first_1x1" else 1
        middle_stride = self.strides if self.stride_on == "3x3" else 1
        return [
            (self.filters, 1, first_stride),
            (self.filters, 3, middle_stride),
            (self.out_channels, 1, 1),
        ]

    def _conv(self, filters, kernel, strides, name):
        # Strided 3×3 convs pad explicitly in call(): Keras' "same" pads only the bottom/right
        # for stride 2, which would shift the sampled pixels by one against the shortcut.
        padding = "valid" if (strides > 1 and kernel > 1) else "same"
        return Conv2D(
            filters,
            kernel,
            strides=strides,
            padding=padding,
            use_bias=False,
            kernel_initializer=keras.initializers.get(CONV_INITIALIZER),
            data_format=self.data_format,
            dtype=self.dtype_policy,
            name=name,
        )

    def _norms_for(self, operations, prefix, shape):
        """BatchNorm layers for the "bn" entries of `operations`, built at `shape`."""
        norms = []
        for operation in operations:
            if operation == "bn":
                norm = batch_norm(f"{prefix}_bn", self.channel_axis, self.dtype_policy)
                norm.build(shape)
                norms.append(norm)
        return norms

    def build(self, input_shape):
        in_channels = input_shape[self.channel_axis]
        if in_channels is None:
            raise ValueError(f"{self.name}: the channel dimension of the input must be known.")
        self.in_channels = in_channels
        self.changes_shape = in_channels != self.out_channels or self.strides != 1
        if self.changes_shape and self.downsample == "zero_pad" and in_channels > self.out_channels:
            raise ValueError(
                f"{self.name}: downsample='zero_pad' can only add channels, but the unit maps "
                f"{in_channels} to {self.out_channels}. Use downsample='projection'."
            )
        pre, between, tail, post = ORDERINGS[self.ordering]
        if self.preactivation == "none":
            pre = ()
        self.pre_norms = self._norms_for(pre, "preact", input_shape)
        # One flat list (nested lists are not tracked as layers); the norms between conv i and
        # conv i+1 are the i-th run of len(between's "bn") entries.
        self.convs, self.between_norms = [], []
        shape = input_shape
        specs = self._conv_specs()
        for index, (filters, kernel, strides) in enumerate(specs, start=1):
            conv = self._conv(filters, kernel, strides, f"conv{index}")
            conv.build(shape)
            shape = self._conv_output_shape(shape, filters, strides)
            self.convs.append(conv)
            if index < len(specs):
                self.between_norms += self._norms_for(between, f"conv{index}", shape)
        self.tail_norms = self._norms_for(tail, "tail", shape)
        self.post_norms = self._norms_for(post, "post", shape)
        self.projection = self.gate = self.dropout = None
        if (self.changes_shape and self.downsample == "projection") or (
            not self.changes_shape and self.shortcut == "conv1x1"
        ):
            self.projection = self._conv(self.out_channels, 1, self.strides, "shortcut_conv")
            self.projection.build(input_shape)
        if not self.changes_shape and self.shortcut.endswith("_gating"):
            self.gate = Conv2D(
                self.out_channels,
                1,
                kernel_initializer=keras.initializers.get(CONV_INITIALIZER),
                bias_initializer=keras.initializers.Constant(self.gate_bias),
                data_format=self.data_format,
                dtype=self.dtype_policy,
                name="gate_conv",
            )
            self.gate.build(input_shape)
        if not self.changes_shape and self.shortcut == "dropout":
            self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy, name="shortcut_dropout")

    def _conv_output_shape(self, shape, filters, strides):
        shape = list(shape)
        spatial = (1, 2) if self.data_format == "channels_last" else (2, 3)
        for axis in spatial:
            if shape[axis] is not None:
                shape[axis] = -(-shape[axis] // strides)  # ceil: Torch padding k // 2
        shape[self.channel_axis] = filters
        return tuple(shape)

    def compute_output_shape(self, input_shape):
        return self._conv_output_shape(input_shape, self.out_channels, self.strides)

    # --- forward ---------------------------------------------------------------------------

    def _apply(self, operations, norms, x, training):
        norms = iter(norms)
        for operation in operations:
            if operation == "bn":
                x = next(norms)(x, training=training)
            else:
                x = ops.relu(x)
        return x

    def _pad_spatial(self, x, amount):
        pads = [[0, 0], [amount, amount], [amount, amount], [0, 0]]
        if self.data_format == "channels_first":
            pads = [[0, 0], [0, 0], [amount, amount], [amount, amount]]
        return ops.pad(x, pads)

    def _run_conv(self, conv, x):
        if conv.padding == "valid":
            x = self._pad_spatial(x, conv.kernel_size[0] // 2)
        return conv(x)

    def _shortcut(self, x):
        if self.projection is not None:
            return self.projection(x)
        if not self.changes_shape:
            return x
        s = self.strides
        x = x[:, ::s, ::s, :] if self.data_format == "channels_last" else x[:, :, ::s, ::s]
        pads = [[0, 0]] * 4
        pads[self.channel_axis] = [0, self.out_channels - self.in_channels]
        return ops.pad(x, pads)

    def _combine(self, shortcut_input, residual, training):
        """The addition, as the shortcut variant has it (paper Fig. 2)."""
        shortcut = self._shortcut(shortcut_input)
        if self.changes_shape or self.shortcut in ("identity", "conv1x1"):
            return shortcut + residual
        if self.shortcut == "constant_scaling":
            return self.shortcut_scale * shortcut + self.residual_scale * residual
        if self.shortcut == "dropout":
            return self.dropout(shortcut, training=training) + residual
        gate = ops.sigmoid(self.gate(shortcut_input))
        if self.shortcut == "exclusive_gating":
            return (1.0 - gate) * shortcut + gate * residual
        return (1.0 - gate) * shortcut + residual  # shortcut_only_gating

    def call(self, inputs, training=None):
        if self.remat and training:
            return self._rematerialized_forward(inputs)
        return self._forward(inputs, training)

    def _rematerialized_forward(self, inputs):
        """The training forward pass as a pure function of the input and the unit's state, under
        `keras.remat`. The recomputation in the backward pass then repeats no side effect: the
        new BatchNorm statistics (and dropout seed state) are outputs, assigned once, here."""
        variables = self.trainable_variables + self.non_trainable_variables
        state = self.non_trainable_variables

        def forward(x, *values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
                outputs = self._forward(x, True)
                new_state = []
                for variable, value in zip(state, values[len(variables) - len(state) :]):
                    current = scope.get_current_value(variable)
                    new_state.append(value if current is None else current)
            return (outputs, *new_state)

        # Copies of the state: it is assigned below, and torch's checkpoint keeps the inputs it
        # recomputes from (an in-place update would invalidate them).
        values = [ops.convert_to_tensor(v.value) for v in self.trainable_variables]
        values += [ops.copy(v.value) for v in state]
        results = keras.remat(forward)(inputs, *values)
        for variable, value in zip(state, results[1:]):
            variable.assign(value)
        return results[0]

    def _forward(self, inputs, training):
        pre, between, tail, post = ORDERINGS[self.ordering]
        if self.preactivation == "shared":
            inputs = self._apply(pre, self.pre_norms, inputs, training)
            residual = inputs
        elif self.preactivation == "residual":
            residual = self._apply(pre, self.pre_norms, inputs, training)
        else:
            residual = inputs
        per_gap = between.count("bn")
        for index, conv in enumerate(self.convs):
            if index:
                norms = self.between_norms[(index - 1) * per_gap : index * per_gap]
                residual = self._apply(between, norms, residual, training)
            residual = self._run_conv(conv, residual)
        residual = self._apply(tail, self.tail_norms, residual, training)
        outputs = self._combine(inputs, residual, training)
        return self._apply(post, self.post_norms, outputs, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "block": self.block,
                "strides": self.strides,
                "stride_on": self.stride_on,
                "preactivation": self.preactivation,
                "downsample": self.downsample,
                "ordering": self.ordering,
                "shortcut": self.shortcut,
                "shortcut_scale": self.shortcut_scale,
                "residual_scale": self.residual_scale,
                "gate_bias": self.gate_bias,
                "dropout_rate": self.dropout_rate,
                "remat": self.remat,
                "data_format": self.data_format,
            }
        )
        return config
