"""The recipe: schedule values, the Torch-style SGD step with coupled weight decay, presets."""

import keras
import numpy as np
import pytest
from helpers import numpy

from keras_preact import choices
from keras_preact.training import recipe
from keras_preact.training.recipe import StepSchedule, TorchSGD


def rates(schedule, steps):
    return [round(float(numpy(schedule(step))), 8) for step in steps]


def test_paper_preset_schedule():
    # 390 steps per epoch (50,000 images, batch 128) x 164 epochs = 63,960 iterations.
    optimizer = recipe.make_optimizer(choices.RECIPES["paper"], steps_per_epoch=390, epochs=164, batch_size=128)
    schedule = optimizer._learning_rate
    assert schedule.boundaries == [31980, 47970] and schedule.warmup_steps == 400
    assert rates(schedule, [0, 399, 400, 31979, 31980, 47969, 47970, 63959]) == [
        0.01, 0.01, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001
    ]
    assert not optimizer.nesterov and optimizer.momentum == 0.9 and optimizer.coupled_weight_decay == 1e-4


def test_official_preset_schedule():
    optimizer = recipe.make_optimizer(choices.RECIPES["official"], steps_per_epoch=781, epochs=200, batch_size=64)
    schedule = optimizer._learning_rate
    assert schedule.boundaries == [81 * 781, 122 * 781] and schedule.warmup_steps == 0
    assert rates(schedule, [0, 81 * 781 - 1, 81 * 781, 122 * 781]) == [0.1, 0.1, 0.01, 0.001]
    assert optimizer.nesterov


def test_shorter_run_and_other_batch_scale_the_schedule():
    # 20 epochs at batch 256 on the paper recipe: boundaries at 10 and 15 epochs, lr x2.
    optimizer = recipe.make_optimizer(choices.RECIPES["paper"], steps_per_epoch=195, epochs=20, batch_size=256)
    schedule = optimizer._learning_rate
    assert schedule.boundaries == [1950, 2925]
    assert schedule.warmup_steps == 25  # ceil(400/64000 * 3900)
    assert rates(schedule, [0, 25, 1950, 2925]) == [0.02, 0.2, 0.02, 0.002]


def hand_torch_sgd(w, grads, rates_, momentum, weight_decay, nesterov):
    """Torch's SGD (dampening 0) with weight decay added to the gradient, written out."""
    buffer = np.zeros_like(w)
    for g, lr in zip(grads, rates_):
        g = g + weight_decay * w
        buffer = momentum * buffer + g
        w = w - lr * (g + momentum * buffer if nesterov else buffer)
    return w


@pytest.mark.parametrize("nesterov", [False, True])
def test_step_equals_hand_computed_torch_update(nesterov):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype("float32")
    grads = [rng.normal(size=(5, 3)).astype("float32") for _ in range(3)]
    schedule = StepSchedule(0.1, boundaries=[2], warmup_steps=1, warmup_rate=0.01)  # 0.01, 0.1, 0.01
    variable = keras.Variable(w0)
    optimizer = TorchSGD(schedule, momentum=0.9, nesterov=nesterov, coupled_weight_decay=1e-4)
    for g in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
    expected = hand_torch_sgd(w0.astype(np.float64), grads, [0.01, 0.1, 0.01], 0.9, 1e-4, nesterov)
    np.testing.assert_allclose(numpy(variable), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_step_equals_torch_optim_sgd(nesterov):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(4, 4)).astype("float32")
    grads = [rng.normal(size=(4, 4)).astype("float32") for _ in range(4)]
    reference = torch.nn.Parameter(torch.tensor(w0))
    torch_optimizer = torch.optim.SGD([reference], lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=1e-4)
    variable = keras.Variable(w0)
    optimizer = TorchSGD(0.1, momentum=0.9, nesterov=nesterov, coupled_weight_decay=1e-4)
    for g in grads:
        reference.grad = torch.tensor(g)
        torch_optimizer.step()
        optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
    np.testing.assert_allclose(numpy(variable), reference.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_weight_decay_equals_l2_penalty_of_half():
    # Coupled decay 1e-4 = the gradient of an L2 penalty 5e-5 * sum(w^2): one plain SGD step each.
    w0 = np.array([1.0, -2.0, 3.0], "float32")
    decayed = keras.Variable(w0)
    TorchSGD(1.0, momentum=0.0, coupled_weight_decay=1e-4).apply([keras.ops.zeros(3)], [decayed])
    np.testing.assert_allclose(numpy(decayed), w0 - 1.0 * 2 * 5e-5 * w0, rtol=1e-6)


def test_serialisation_round_trip():
    optimizer = TorchSGD(StepSchedule(0.2, [10, 20], warmup_steps=3, warmup_rate=0.02), nesterov=True)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, TorchSGD) and restored.nesterov and restored.coupled_weight_decay == 1e-4
    assert rates(restored._learning_rate, [0, 3, 10, 20]) == [0.02, 0.2, 0.02, 0.002]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: choices.RECIPES["fast"], "Unknown recipe='fast'. Valid values: 'paper', 'official'"),
        (lambda: StepSchedule(0.1, boundaries=[20, 10]), "boundaries must be non-negative and increasing"),
        (lambda: StepSchedule(0.0), "rate must be a positive number"),
        (lambda: TorchSGD(0.1, momentum=1.0), r"momentum must be in \[0, 1\)"),
        (lambda: TorchSGD(0.1, coupled_weight_decay=-1), "coupled_weight_decay must be >= 0"),
    ],
)
def test_bad_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()
