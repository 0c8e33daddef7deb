"""Rematerialisation of a stateful layer: its training forward pass recomputed in the backward pass,
with its state updates (BatchNorm statistics, seed generators) applied once.

Keras' `RematScope` fails on these units (measured with Keras 3.15.1): TensorFlow's
`tf.recompute_grad` rejects the `training=` keyword in graph mode, the stateful BatchNorm update
escapes `jax.checkpoint`, and torch's recomputation updates the moving statistics a second time.
So the forward pass runs as a *pure function* of the input and the layer's variables
(`pure_call`) under `keras.remat`; the new state values are outputs of that function, assigned
after it.
"""

import keras
from keras import ops


def pure_call(forward, variables, values, state):
    """`forward()` as a pure function: each of `variables` reads as its entry of `values` and
    nothing is assigned. Returns its outputs and the new values of the variables `state`."""
    with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
        outputs = forward()
    return outputs, [scope.get_current_value(variable) for variable in state]


def rematerialized_call(layer, forward, inputs):
    """`forward(inputs)` (a training forward pass of `layer`) under `keras.remat`."""
    variables = layer.trainable_variables + layer.non_trainable_variables
    state = layer.non_trainable_variables

    def pure(x, *values):
        outputs, new_state = pure_call(lambda: forward(x), variables, values, state)
        return (outputs, *new_state)

    # Copies of the state: it is assigned below, and torch's checkpoint keeps the inputs it
    # recomputes from (an in-place update would invalidate them).
    values = [ops.convert_to_tensor(v.value) for v in layer.trainable_variables]
    values += [ops.copy(v.value) for v in state]
    results = keras.remat(pure)(inputs, *values)
    for variable, value in zip(state, results[1:]):
        variable.assign(value)
    return results[0]
