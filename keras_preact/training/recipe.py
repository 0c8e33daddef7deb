"""The paper's training recipe: Torch-style SGD with coupled weight decay, the step schedule, presets.

Keras' own SGD keeps the learning rate inside the velocity (`v = m·v - lr·g`) and its
`weight_decay=` is decoupled; Torch (the released code) adds `wd·w` to the gradient before the
momentum and applies the learning rate at the update. `TorchSGD` does exactly that on every backend.
"""

import math

import keras
from keras import ops

from keras_preact import choices

# The recipe's numbers a run may set (`RunConfig`), each None for the recipe's own.
OPTIMIZER_SETTINGS = ("learning_rate", "weight_decay", "momentum", "nesterov", "warmup_epochs")


@keras.saving.register_keras_serializable(package="keras_preact")
class StepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Constant `warmup_rate` for `warmup_steps`, then `rate`, times `factor` at each boundary.

    Steps are optimizer iterations, counted from 0.

    >>> schedule = StepSchedule(0.1, boundaries=[32000, 48000], warmup_steps=400, warmup_rate=0.01)
    >>> [round(float(schedule(s)), 6) for s in (0, 399, 400, 31999, 32000, 48000)]
    [0.01, 0.01, 0.1, 0.1, 0.01, 0.001]
    """

    def __init__(self, rate, boundaries=(), factor=0.1, warmup_steps=0, warmup_rate=None):
        check_positive("rate", rate)
        if list(boundaries) != sorted(boundaries) or any(b < 0 for b in boundaries):
            raise ValueError(f"boundaries must be non-negative and increasing, got {list(boundaries)}.")
        self.rate = float(rate)
        self.boundaries = [int(b) for b in boundaries]
        self.factor = float(factor)
        self.warmup_steps = int(warmup_steps)
        self.warmup_rate = float(rate if warmup_rate is None else warmup_rate)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        rate = ops.convert_to_tensor(self.rate, "float32")
        for boundary in self.boundaries:
            rate = ops.where(step >= boundary, rate * self.factor, rate)
        return ops.where(step < self.warmup_steps, ops.cast(self.warmup_rate, "float32"), rate)

    def get_config(self):
        return {
            "rate": self.rate,
            "boundaries": self.boundaries,
            "factor": self.factor,
            "warmup_steps": self.warmup_steps,
            "warmup_rate": self.warmup_rate,
        }


@keras.saving.register_keras_serializable(package="keras_preact")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with momentum as Torch computes it, with coupled (L2) weight decay on every parameter.

    Per parameter `w` with gradient `g`:

        g ← g + weight_decay · w            (= an L2 penalty of weight_decay/2 · Σw²)
        b ← momentum · b + g
        w ← w - lr · (g + momentum · b)     if nesterov, else  w ← w - lr · b

    Args:
        learning_rate: float or schedule.
        momentum: momentum coefficient (0.9 in the paper).
        nesterov: Nesterov momentum (the released code uses it).
        coupled_weight_decay: added to the gradient before the momentum (1e-4 in the paper).
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        nesterov=False,
        coupled_weight_decay=1e-4,
        name="torch_sgd",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = check_momentum("momentum", momentum)
        self.nesterov = choices.check_flag("nesterov", nesterov)
        self.coupled_weight_decay = check_decay("coupled_weight_decay", coupled_weight_decay)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.buffers = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay:
            gradient = gradient + ops.cast(self.coupled_weight_decay, variable.dtype) * variable
        buffer = self.buffers[self._get_variable_index(variable)]
        new_buffer = ops.cast(self.momentum, variable.dtype) * buffer + gradient
        self.assign(buffer, new_buffer)
        step = gradient + ops.cast(self.momentum, variable.dtype) * new_buffer if self.nesterov else new_buffer
        self.assign_sub(variable, learning_rate * step)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # On torch, one multi-tensor (foreach) kernel per operation for all parameters, as
        # torch.optim.SGD does, instead of ≈10 dispatched ops per parameter (ResNet-164 on 2 CPU
        # cores: 7.7 instead of 44.6 ms per step). Same arithmetic as update_step.
        if keras.backend.backend() != "torch":
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        import torch

        with torch.no_grad():
            weights = [variable.value for variable in trainable_variables]
            buffers = [self.buffers[self._get_variable_index(v)].value for v in trainable_variables]
            grads = [g.to(w.dtype) for g, w in zip(grads, weights)]
            if self.coupled_weight_decay:
                grads = torch._foreach_add(grads, weights, alpha=self.coupled_weight_decay)
            torch._foreach_mul_(buffers, self.momentum)
            torch._foreach_add_(buffers, grads)
            step = torch._foreach_add(grads, buffers, alpha=self.momentum) if self.nesterov else buffers
            torch._foreach_sub_(weights, torch._foreach_mul(step, learning_rate))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "nesterov": self.nesterov,
                "coupled_weight_decay": self.coupled_weight_decay,
            }
        )
        return config


def make_optimizer(recipe, steps_per_epoch, epochs, batch_size, settings=None):
    """The recipe's TorchSGD for a run of `epochs` at `batch_size`.

    `settings`: the run's `optimizer_settings` (None: the recipe's own). The learning rates
    (the warm-up's at the recipe's ratio to the rate) scale linearly with the batch size relative
    to the recipe's; the boundaries keep their place as fractions of the run.
    """
    settings = optimizer_settings(recipe, epochs) if settings is None else settings
    total = epochs * steps_per_epoch
    rate = settings["learning_rate"] * batch_size / recipe.batch_size
    schedule = StepSchedule(
        rate,
        boundaries=[round(fraction * total) for fraction in recipe.boundaries],
        warmup_steps=warmup_steps(recipe, settings["warmup_epochs"], epochs, steps_per_epoch),
        warmup_rate=rate * (recipe.warmup_rate / recipe.learning_rate),
    )
    return TorchSGD(
        schedule,
        momentum=settings["momentum"],
        nesterov=settings["nesterov"],
        coupled_weight_decay=settings["weight_decay"],
    )


def warmup_steps(recipe, warmup_epochs, epochs, steps_per_epoch):
    """The steps at the warm-up rate: `warmup_epochs` of them, or with None the recipe's share
    of the run's `epochs` (a step begun is a step at the warm-up rate)."""
    if warmup_epochs is None:
        return math.ceil(recipe.warmup * epochs * steps_per_epoch)
    return math.ceil(warmup_epochs * steps_per_epoch)


def optimizer_settings(recipe, epochs, **given):
    """The recipe's numbers for a run of `epochs`, each replaced by a `given` one that is not
    None, and checked: the `OPTIMIZER_SETTINGS` of `RunConfig`.

    `learning_rate` is the rate at the recipe's batch size; `warmup_epochs` the epochs (a
    fraction allowed) at the recipe's warm-up rate, None for the recipe's share of the run
    (which follows the run's epochs: `warmup_steps`).

    >>> optimizer_settings(choices.RECIPES["paper"], epochs=32, momentum=0.8)
    {'learning_rate': 0.1, 'weight_decay': 0.0001, 'momentum': 0.8, 'nesterov': False, 'warmup_epochs': None}
    """
    unknown = sorted(set(given) - set(OPTIMIZER_SETTINGS))
    if unknown:
        raise ValueError(f"Unknown optimizer setting(s) {', '.join(unknown)}; valid: {', '.join(OPTIMIZER_SETTINGS)}.")
    own = {"learning_rate": recipe.learning_rate, "weight_decay": recipe.weight_decay, "momentum": recipe.momentum,
           "nesterov": recipe.nesterov, "warmup_epochs": None}
    values = {name: own[name] if given.get(name) is None else given[name] for name in OPTIMIZER_SETTINGS}
    warmup = values["warmup_epochs"]
    if warmup is not None:
        warmup = choices.check_number("warmup_epochs", warmup, 0, epochs, high_open=True)
    if warmup and recipe.warmup_rate == recipe.learning_rate:
        raise ValueError(
            f"warmup_epochs={warmup:g} needs a warm-up rate, and this recipe has none (it starts at its full "
            "rate): use a recipe with a warm-up (e.g. recipe='paper'), or leave warmup_epochs unset."
        )
    return {
        "learning_rate": check_positive("learning_rate", values["learning_rate"]),
        "weight_decay": check_decay("weight_decay", values["weight_decay"]),
        "momentum": check_momentum("momentum", values["momentum"]),
        "nesterov": choices.check_flag("nesterov", values["nesterov"]),
        "warmup_epochs": warmup,
    }


def check_positive(argument, value):
    """A finite number above 0, as a float; a ValueError otherwise."""
    if choices.check_number(argument, value) <= 0:
        raise ValueError(f"{argument} must be a positive number, got {value!r}.")
    return float(value)


def check_decay(argument, value):
    """A finite number of at least 0, as a float; a ValueError otherwise."""
    if choices.check_number(argument, value) < 0:
        raise ValueError(f"{argument} must be >= 0, got {value!r}.")
    return float(value)


def check_momentum(argument, value):
    return choices.check_number(argument, value, 0, 1, high_open=True)
