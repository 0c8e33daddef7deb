"""The residual unit of He et al. (2016): one layer for every network and variant of the paper.

A unit is `x_{l+1} = post(a·shortcut(x_l) + b·residual(x_l))`. The paper's unit orderings (Fig. 4)
differ only in where BatchNorm and ReLU sit around the convolutions, and its shortcut variants
(Fig. 2) only in the shortcut's layer and the weights a and b; both are records of
`keras_preact.choices` (`ORDERINGS`, `SHORTCUTS`), so one layer implements all of them, for basic
and bottleneck units alike.
"""

import keras
from keras import ops

from keras_preact import choices
from keras_preact.model.layers import batch_norm, conv
from keras_preact.model.remat import rematerialized_call


BATCH_NORM_OPTIONS = ("synchronized", "virtual_groups")


def check_batch_norm_options(options: dict | None) -> dict:
    """A copy of `options` (None: none), which may hold only `BATCH_NORM_OPTIONS`."""
    if options is None:
        return {}
    if not isinstance(options, dict) or set(options) - set(BATCH_NORM_OPTIONS):
        raise ValueError(f"batch_norm_options must be a dict with keys among {', '.join(BATCH_NORM_OPTIONS)}, got {options!r}.")
    return dict(options)


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
            `"shortcut_only_gating"` (d), `"conv1x1"` (e), `"dropout"` (f). The variants are
            records of `keras_preact.choices.SHORTCUTS`.
        shortcut_scale, residual_scale: `"constant_scaling"`: λ of the shortcut (default 0.5)
            and of the residual (default 1.0).
        gate_bias: gating variants: initial bias of the gate's 1×1 conv (default -6).
        dropout_rate: `"dropout"`: rate on the shortcut, training only (default 0.5).
        remat: recompute the unit's activations in the backward pass instead of keeping them
            (`keras.remat`: `jax.checkpoint`, `tf.recompute_grad`, torch checkpointing), trading
            compute for memory. BatchNorm statistics are still updated once per step.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        batch_norm_options: how the BatchNorms' training statistics span data-parallel replicas:
            `{"synchronized": True}` or `{"virtual_groups": n}` (see `keras_preact.BatchNorm`);
            None: each replica's own batch.

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
        filters: int,
        block: str = "bottleneck",
        strides: int = 1,
        stride_on: str = "first_1x1",
        preactivation: str = "residual",
        downsample: str = "projection",
        ordering: str = "full_preact",
        shortcut: str = "identity",
        shortcut_scale: float | None = None,
        residual_scale: float | None = None,
        gate_bias: float | None = None,
        dropout_rate: float | None = None,
        remat: bool = False,
        data_format: str | None = None,
        batch_norm_options: dict | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        choices.check_count("filters", filters)
        if strides not in (1, 2) or isinstance(strides, bool):
            raise ValueError(f"strides must be 1 or 2, got {strides!r}.")
        choices.check_flag("remat", remat)
        self.filters = filters
        self.block = choices.BLOCKS.check(block)
        self.strides = strides
        self.stride_on = choices.STRIDE_PLACEMENTS.check(stride_on)
        self.preactivation = choices.PREACTIVATIONS.check(preactivation)
        self.downsample = choices.DOWNSAMPLES.check(downsample)
        self.ordering = choices.ORDERINGS.check(ordering, "ordering")
        self.shortcut = choices.SHORTCUTS.check(shortcut)
        options = choices.shortcut_options(
            shortcut,
            dict(shortcut_scale=shortcut_scale, residual_scale=residual_scale, gate_bias=gate_bias, dropout_rate=dropout_rate),
        )
        for option, value in options.items():
            setattr(self, option, value)
        self.remat = remat
        self.data_format = choices.DATA_FORMATS.check(data_format or keras.config.image_data_format())
        self.channel_axis = choices.DATA_FORMATS[self.data_format]
        self.out_channels = filters * choices.BLOCKS[block].expansion
        self.batch_norm_options = check_batch_norm_options(batch_norm_options)

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

    def _conv(self, filters, kernel, strides, name, input_shape):
        """A built conv and the zeros to pad on each side before it (Torch's symmetric padding).

        Keras' "same" pads only the bottom/right for stride 2, which would shift a strided 3x3
        conv's sampled pixels by one against the shortcut; those convs pad explicitly instead.
        """
        explicit = strides > 1 and kernel > 1
        layer = conv(
            filters, kernel, name, strides=strides, padding="valid" if explicit else "same",
            data_format=self.data_format, dtype=self.dtype_policy,
        )
        padding = kernel // 2 if explicit else 0
        padded = list(input_shape)
        for axis in (1, 2) if self.data_format == "channels_last" else (2, 3):
            if padded[axis] is not None:  # the shape it sees: a 2x2 map, padded, takes a strided 3x3
                padded[axis] += 2 * padding
        layer.build(tuple(padded))
        return layer, padding

    def _norms_for(self, site, prefix, shape):
        """The BatchNorm of an `Activation` site, built at `shape`: a list of one, or none."""
        if not site.norm:
            return []
        norm = batch_norm(f"{prefix}_bn", self.channel_axis, self.dtype_policy, **self.batch_norm_options)
        norm.build(shape)
        return [norm]

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
        ordering = choices.ORDERINGS[self.ordering]
        self.pre_norms = self._norms_for(choices.NOTHING if self.preactivation == "none" else ordering.pre, "preact", input_shape)
        # between_norms[i]: the norm of the gap after conv i + 1 (none if the site has none).
        self.convs, self.paddings, self.between_norms = [], [], []
        shape = input_shape
        specs = self._conv_specs()
        for index, (filters, kernel, strides) in enumerate(specs, start=1):
            layer, padding = self._conv(filters, kernel, strides, f"conv{index}", shape)
            shape = self._conv_output_shape(shape, filters, strides)
            self.convs.append(layer)
            self.paddings.append(padding)
            if index < len(specs):
                self.between_norms += self._norms_for(ordering.between, f"conv{index}", shape)
        self.tail_norms = self._norms_for(ordering.tail, "tail", shape)
        self.post_norms = self._norms_for(ordering.post, "post", shape)

        # The shortcut: the downsample where the shape changes, else the variant's.
        variant = self._variant()
        self.projection = self.gate = self.dropout = None
        if variant.projection or self.changes_shape and self.downsample == "projection":
            self.projection, _ = self._conv(self.out_channels, 1, self.strides, "shortcut_conv", input_shape)
        if variant.gated:
            self.gate = conv(
                self.out_channels, 1, "gate_conv", use_bias=True,
                bias_initializer=keras.initializers.Constant(self.gate_bias),
                data_format=self.data_format, dtype=self.dtype_policy,
            )
            self.gate.build(input_shape)
        if variant.dropout:
            self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy, name="shortcut_dropout")

    def _variant(self):
        """The shortcut variant in force: a unit that changes shape keeps its plain downsample."""
        return choices.SHORTCUTS["identity" if self.changes_shape else self.shortcut]

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

    def _activate(self, site, norms, x, training):
        """`site`'s BatchNorm (`norms`: the site's built layer, a list of one if it has one), then its ReLU."""
        if site.norm:
            x = norms[0](x, training=training)
        return ops.relu(x) if site.relu else x

    def _pad_spatial(self, x, amount):
        pads = [[0, 0], [amount, amount], [amount, amount], [0, 0]]
        if self.data_format == "channels_first":
            pads = [[0, 0], [0, 0], [amount, amount], [amount, amount]]
        return ops.pad(x, pads)

    def _shortcut_path(self, x, training):
        if self.projection is not None:
            return self.projection(x)
        if self.dropout is not None:
            return self.dropout(x, training=training)
        if not self.changes_shape:
            return x
        s = self.strides  # zero_pad: subsample, then append zero channels
        x = x[:, ::s, ::s, :] if self.data_format == "channels_last" else x[:, :, ::s, ::s]
        pads = [[0, 0]] * 4
        pads[self.channel_axis] = [0, self.out_channels - self.in_channels]
        return ops.pad(x, pads)

    def _combine(self, shortcut_input, residual, training):
        """a·shortcut + b·residual, with a and b as the shortcut variant has them (paper Fig. 2)."""
        variant = self._variant()
        gate = ops.sigmoid(self.gate(shortcut_input)) if self.gate is not None else None
        options = {option: getattr(self, option) for option in choices.SHORTCUT_OPTIONS}
        shortcut = self._shortcut_path(shortcut_input, training)
        if variant.shortcut_weight is not None:
            shortcut = variant.shortcut_weight(gate, options) * shortcut
        if variant.residual_weight is not None:
            residual = variant.residual_weight(gate, options) * residual
        return shortcut + residual

    def call(self, inputs, training=None):
        if self.remat and training:
            return rematerialized_call(self, lambda x: self._forward(x, True), inputs)
        return self._forward(inputs, training)

    def _forward(self, inputs, training):
        ordering = choices.ORDERINGS[self.ordering]
        if self.preactivation == "shared":
            inputs = self._activate(ordering.pre, self.pre_norms, inputs, training)
            residual = inputs
        elif self.preactivation == "residual":
            residual = self._activate(ordering.pre, self.pre_norms, inputs, training)
        else:
            residual = inputs
        for index, (layer, padding) in enumerate(zip(self.convs, self.paddings)):
            if index:
                residual = self._activate(ordering.between, self.between_norms[index - 1 : index], residual, training)
            residual = layer(self._pad_spatial(residual, padding) if padding else residual)
        residual = self._activate(ordering.tail, self.tail_norms, residual, training)
        outputs = self._combine(inputs, residual, training)
        return self._activate(ordering.post, self.post_norms, outputs, training)

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
                "batch_norm_options": self.batch_norm_options,
            }
        )
        return config
