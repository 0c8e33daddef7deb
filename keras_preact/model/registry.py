"""Models by name, as timm and torchvision name theirs: `create_model("preact_resnet164")`,
`list_models("preact_resnet1*")`. The names are those the builders register (`builders.MODELS`);
a preset adds its dataset as a tag (`"preact_resnet164.cifar10"`, `keras_preact.model.presets`).
"""

import difflib
import fnmatch
import re

import keras

from keras_preact.model import presets
from keras_preact.model.builders import MODELS


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """The names `create_model` takes that match `pattern` (shell-style, as `fnmatch`), in
    natural order (depth 50 before 101).

    Args:
        pattern: e.g. `"*"` (every model) or `"preact_resnet1*"`.
        pretrained: list the presets whose trained weights ship with the package
            (`"<model>.<dataset>"`) instead of the networks.

    >>> list_models("preact_resnet1*")
    ['preact_resnet101', 'preact_resnet110', 'preact_resnet152', 'preact_resnet164', 'preact_resnet1001']
    >>> list_models()[0]
    'preact_resnet'
    """
    if not isinstance(pattern, str):
        raise ValueError(f"pattern must be a string such as 'preact_resnet1*', got {pattern!r}.")
    names = [name for name in presets.PRESETS if presets.shipped(name)] if pretrained else list(MODELS)
    return sorted(fnmatch.filter(names, pattern), key=_natural)


def _natural(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def create_model(name: str, weights: str | None = None, **kwargs) -> keras.Model:
    """The model named `name` (`list_models()`), built by its builder with `kwargs`.

    Args:
        name: a network, e.g. `"preact_resnet164"`, or `"preact_resnet"` with `depth=...`; or a
            preset, `"<network>.<dataset>"`, which is `weights=<dataset>`.
        weights: `None`, a preset's dataset (e.g. `"cifar10"`) or a weights file.
        **kwargs: the builder's arguments (`keras_preact.PreActResNet`'s), e.g. `classes`.

    >>> create_model("preact_resnet110").count_params()
    1738618
    >>> create_model("preact_resnet", depth=20, block="basic", classes=100).output_shape
    (None, 100)
    >>> create_model("preact_resnet146")
    Traceback (most recent call last):
    ...
    ValueError: Unknown model 'preact_resnet146'. Close matches: 'preact_resnet164', 'preact_resnet', 'preact_resnet152'; list_models() names them all.
    """
    if not isinstance(name, str):
        raise ValueError(f"name must be a model name such as 'preact_resnet164', got {name!r}.")
    model, _, tag = name.partition(".")
    if model not in MODELS:
        close = difflib.get_close_matches(model.lower(), MODELS, n=3, cutoff=0.6)
        hint = f" Close matches: {', '.join(map(repr, close))};" if close else ""
        raise ValueError(f"Unknown model {name!r}.{hint} list_models() names them all.")
    if tag:
        if weights is not None:
            raise ValueError(f"{name!r} names the weights {tag!r} already; weights={weights!r} contradicts it.")
        weights = tag
    if model == "preact_resnet" and "depth" not in kwargs:
        raise ValueError("'preact_resnet' is the generic network: give its depth, e.g. create_model('preact_resnet', depth=56).")
    if model != "preact_resnet" and "depth" in kwargs:
        raise ValueError(f"{model!r} has its depth in its name; for depth={kwargs['depth']!r} use 'preact_resnet'.")
    return MODELS[model](weights=weights, **kwargs)
