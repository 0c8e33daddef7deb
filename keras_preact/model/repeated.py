"""Identical residual units compiled once: a stage's shape-keeping units as one scan.

A stage's units after its first are the same layer with different weights. Written out, a compiler
sees each of them anew, so compiling (XLA) and tracing grow with the depth: ResNet-1001 has 333
units. `RepeatedUnits` holds one template `ResidualUnit` and every unit's variables stacked along
a new leading axis, and runs the units as `keras.ops.scan` over those stacks: the compiler sees
one unit, whatever the depth. The template runs as a pure function of its input and one unit's
values (`remat.pure_call`); BatchNorm's new moving statistics are outputs of the scan, assigned
once after it.

The network computes what the written-out one does, with the same weights: `copy_weights` moves
weights between the two layouts (weights files of either load into both, see
`builders.load_weights`).
"""

import re

import h5py
import keras
from keras import ops

from keras_preact import choices
from keras_preact.model.remat import pure_call
from keras_preact.model.units import ResidualUnit

# The builders' name of the stacked units that stand for a stage's units 2..n (`stage3_units2to18`).
REPEATED_NAME = re.compile(r"stage(\d+)_units(\d+)to(\d+)$")


class _Unhooked:
    """Holds the template out of Keras' tracking and saving: its variables are keys that the
    stacked values stand in for, not weights of the model."""

    def __init__(self, layer):
        self.layer = layer
        self.variables = []  # the template's variables, in the order of the stacked ones


@keras.saving.register_keras_serializable(package="keras_preact")
class RepeatedUnits(keras.layers.Layer):
    """`count` shape-keeping `ResidualUnit`s in a row, run as one scan over their stacked weights.

    Equal to `count` `ResidualUnit(**unit)` layers applied in turn (same outputs, same training
    step, same parameter count); the compiled graph holds one unit instead of `count`.

    Args:
        count: the number of units.
        unit: the `ResidualUnit` arguments of every unit (name and dtype are this layer's). The
            units must keep their input's shape (stride 1, as many output as input channels) and
            draw no random numbers (no `shortcut="dropout"`).
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Each variable of the template unit is one variable here of shape `(count, *shape)`, named
    after its path in the unit (`conv1_kernel`, `preact_bn_moving_mean`, ...).

    Example:

    >>> import numpy as np
    >>> layer = RepeatedUnits(3, {"filters": 4, "block": "bottleneck"})
    >>> tuple(layer(np.zeros((2, 8, 8, 16), "float32")).shape)
    (2, 8, 8, 16)
    >>> tuple(layer.get_weight("conv1_kernel").shape)
    (3, 1, 1, 16, 4)
    """

    def __init__(self, count: int, unit: dict, **kwargs) -> None:
        super().__init__(**kwargs)
        self.count = choices.check_count("count", count)
        if not isinstance(unit, dict) or {"name", "dtype"} & set(unit):
            raise ValueError(f"unit must be a dict of ResidualUnit arguments other than name and dtype, got {unit!r}.")
        if unit.get("strides", 1) != 1 or unit.get("shortcut") == "dropout":
            raise ValueError(
                f"RepeatedUnits stands for units that keep their shape and draw no random numbers; got strides="
                f"{unit.get('strides', 1)!r}, shortcut={unit.get('shortcut')!r}. Build such units as ResidualUnit layers."
            )
        self.unit = dict(unit)
        self._template = _Unhooked(ResidualUnit(**self.unit, dtype=self.dtype_policy, name="unit"))

    def build(self, input_shape):
        # The written-out units, built in the order the written-out network builds them: the same
        # initial values for the same seed. The first is the template; the values of all are stacked.
        units = [self._template.layer] + [
            ResidualUnit(**self.unit, dtype=self.dtype_policy, name="unit") for _ in range(self.count - 1)
        ]
        template = self._template.layer
        template.trainable = True  # variables made trainable or not by their nature (a frozen layer's would all be not)
        for unit in units:
            unit.build(input_shape)
        if template.changes_shape:
            raise ValueError(
                f"{self.name}: its units must keep their input's shape, but they map {template.in_channels} channels "
                f"to {template.out_channels}. Build the stage's first unit as a ResidualUnit."
            )
        self._template.variables = template.weights
        # The unit's state: what its call assigns (BatchNorm's moving statistics).
        self._state = [index for index, variable in enumerate(template.weights) if not variable.trainable]
        template.trainable = self.trainable
        self.stacked = []
        for index, variable in enumerate(template.weights):
            values = ops.stack([unit.weights[index].value for unit in units])
            self.stacked.append(
                self.add_weight(
                    shape=values.shape, initializer=lambda shape, dtype, values=values: ops.cast(values, dtype),
                    dtype=variable.dtype, trainable=variable.trainable, autocast=False,
                    name=_relative_name(variable, template),
                )
            )

    @property
    def trainable(self):
        return super().trainable

    @trainable.setter
    def trainable(self, value):
        keras.layers.Layer.trainable.fset(self, value)
        if hasattr(self, "_template"):  # frozen units normalise with their moving statistics, as written-out ones
            self._template.layer.trainable = value

    def get_weight(self, name: str):
        """The stacked variable `name` (e.g. `"conv1_kernel"`)."""
        for variable in self.stacked:
            if variable.name == name:
                return variable
        raise ValueError(f"{self.name} has no weight {name!r}; its weights: {', '.join(v.name for v in self.stacked)}.")

    def call(self, inputs, training=None):
        template, variables = self._template.layer, self._template.variables
        state = [variables[index] for index in self._state]
        updates = bool(training) and self.trainable

        def step(x, values):
            outputs, new_state = pure_call(lambda: template(x, training=training), variables, values, state)
            return outputs, new_state if updates else []

        values = [ops.convert_to_tensor(v.value) for v in self.stacked]
        outputs, new_state = _scan(step, inputs, values, [values[index] for index in self._state] if updates else [])
        if updates:
            for index, value in zip(self._state, new_state):
                self.stacked[index].assign(value)
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "count": self.count, "unit": dict(self.unit)}


def _relative_name(variable, unit):
    """A unit variable's path below the unit, as one name: `conv1/kernel` → `conv1_kernel`."""
    return variable.path.rpartition(f"{unit.name}/")[2].replace("/", "_")


def _scan(step, carry, stacked, output_stacks):
    """`keras.ops.scan(step, carry, stacked)`, whose step outputs are shaped like slices of
    `output_stacks`. Keras 3.15.1's TensorFlow scan builds its per-step output arrays with the
    carry's shape and dtype, so TensorFlow takes the same loop written here."""
    if keras.backend.backend() != "tensorflow":
        return ops.scan(step, carry, stacked)
    import tensorflow as tf

    count = stacked[0].shape[0]
    arrays = [tf.TensorArray(values.dtype, size=count, element_shape=values.shape[1:]) for values in output_stacks]

    def body(index, carry, arrays):
        carry, outputs = step(carry, [tf.gather(values, index) for values in stacked])
        return index + 1, carry, [array.write(index, output) for array, output in zip(arrays, outputs)]

    _, carry, arrays = tf.while_loop(lambda index, *_: index < count, body, (tf.constant(0), carry, arrays))
    return carry, [array.stack() for array in arrays]


def stacks_units(weights) -> bool:
    """Whether `weights`, a model or the path of a `.weights.h5` file, holds `RepeatedUnits`."""
    if isinstance(weights, keras.Model):
        return any(isinstance(layer, RepeatedUnits) for layer in weights.layers)
    with h5py.File(weights, "r") as file:  # Keras names a model's layers there by their class
        return any(name.startswith("repeated_units") for name in file.get("layers", {}))


def _written_out(model):
    """Every weight of `model` under its place in the written-out network: `{(layer name, index
    in layer.weights): (variable, unit)}`, `unit` the index into a stacked variable (None: none)."""
    places = {}
    for layer in model.layers:
        match = REPEATED_NAME.match(layer.name)
        if isinstance(layer, RepeatedUnits) and match:
            stage, first = match.group(1), int(match.group(2))
            for unit in range(layer.count):
                for index, variable in enumerate(layer.stacked):
                    places[(f"stage{stage}_unit{first + unit}", index)] = (variable, unit)
        else:
            for index, variable in enumerate(layer.weights):
                places[(layer.name, index)] = (variable, None)
    return places


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Sets `target`'s weights to `source`'s, where both are the same network built by
    `PreActResNet`, each with or without `scan_units`: stacks or unstacks the units' weights.

    >>> import numpy as np
    >>> import keras_preact
    >>> plain = keras_preact.PreActResNet(20, block="basic")
    >>> scanned = keras_preact.PreActResNet(20, block="basic", scan_units=True)
    >>> copy_weights(plain, scanned)
    >>> stacked = scanned.get_layer("stage1_units2to3").get_weight("conv1_kernel")
    >>> kernel = plain.get_layer("stage1_unit3").convs[0].kernel  # the third unit's first conv
    >>> bool(np.array_equal(ops.convert_to_numpy(stacked)[1], ops.convert_to_numpy(kernel)))
    True
    """
    sources, targets = _written_out(source), _written_out(target)
    if set(sources) != set(targets):
        differ = sorted({name for name, _ in set(sources) ^ set(targets)})
        raise ValueError(f"{source.name} and {target.name} are not the same network: their weights differ in {', '.join(differ[:6])}.")
    arrays = {}  # each source variable as NumPy, once

    def value(place):
        variable, unit = sources[place]
        if id(variable) not in arrays:
            arrays[id(variable)] = ops.convert_to_numpy(variable)
        return arrays[id(variable)] if unit is None else arrays[id(variable)][unit]

    units = {}  # a stacked target variable's values, one per unit
    for place, (variable, unit) in targets.items():
        if unit is None:
            variable.assign(value(place))
        else:
            units.setdefault(id(variable), (variable, {}))[1][unit] = value(place)
    for variable, values in units.values():
        variable.assign(ops.stack([values[unit] for unit in range(len(values))]))
