"""Trained weights that ship in the package: `keras_preact.ResNet164(weights="cifar10")`.

A preset is a network trained on a dataset, named `<model>.<dataset>` (timm's tags), e.g.
`preact_resnet164.cifar10`. It ships as two files in `keras_preact/presets/`: the weights,
`<name>.weights.h5`, and their record, `<name>.json` (the network they fit, the measured test
error, date and device, and the paper's figure). `PRESETS` names the presets the package plans;
one ships when its files are there. They come from a GPU: `bash benchmarks/gpu.sh reproduce`
trains the network, and `write_preset` turns its run folder into the two files.
"""

import dataclasses
import datetime
import json
import os

from keras_preact import choices

# Options of how a network runs, not of what it computes: a preset's weights fit either way.
EXECUTION_OPTIONS = ("remat", "scan_units")
PRESETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "presets")


@dataclasses.dataclass(frozen=True)
class Preset:
    """A network trained on a dataset, with the paper's test error (%) for it."""

    model: str  # a name of `keras_preact.list_models()`
    dataset: str  # a name of `keras_preact.choices.DATASETS`
    paper_error: float
    paper_figure: str

    @property
    def name(self) -> str:
        return f"{self.model}.{self.dataset}"


PRESETS = {
    preset.name: preset
    for preset in (
        Preset("preact_resnet164", "cifar10", 5.46, "Table 4, ResNet-164 (median of 5 runs)"),
        Preset("preact_resnet110", "cifar10", 6.37, "Table 4, ResNet-110"),
    )
}


def architecture(depth, block, stem="cifar", unit="full_preact", shortcut="identity", downsample="projection",
                 stride_on=None, **shortcut_options):
    """What decides a network's weights and function: a preset's record holds it, and a model
    takes the preset's weights only where its own is the same."""
    return {
        "depth": depth, "block": block, "stem": stem, "unit": unit, "shortcut": shortcut, "downsample": downsample,
        "stride_on": stride_on or choices.STEMS[stem].stride_on, **choices.shortcut_options(shortcut, shortcut_options),
    }


def shipped(name: str) -> bool:
    """Whether the preset's weights and record are in `PRESETS_DIR`."""
    return all(os.path.isfile(path) for path in _files(name))


def _files(name):
    return os.path.join(PRESETS_DIR, f"{name}.weights.h5"), os.path.join(PRESETS_DIR, f"{name}.json")


def record(name: str) -> dict:
    """The shipped record of preset `name`, or a ValueError saying why there is none."""
    model, _, dataset = name.partition(".")
    if name not in PRESETS:
        planned = [preset.dataset for preset in PRESETS.values() if preset.model == model]
        raise ValueError(
            f"No pretrained weights are published for {model} on {dataset!r}; presets of {model}: "
            f"{', '.join(map(repr, planned)) or 'none'}. Pass None for random initialisation or the path of a "
            "`.weights.h5` file."
        )
    if not shipped(name):
        raise ValueError(
            f"No pretrained weights are published for {name} yet: none ship with this package. They are made on a "
            "GPU by `bash benchmarks/gpu.sh reproduce`; copy the files it writes "
            f"({name}.weights.h5 and {name}.json) into keras_preact/presets/."
        )
    with open(_files(name)[1], encoding="utf-8") as f:
        return json.load(f)


def weights_file(name: str, fits: dict, classes: int) -> str:
    """The path of preset `name`'s weights, once its record shows they fit the network `fits`
    (an `architecture`) with `classes` classes."""
    values = record(name)
    wanted = {**values["architecture"], "classes": values["classes"]}
    given = {**fits, "classes": classes}
    differ = [f"{key}={wanted[key]!r} (this model: {given.get(key)!r})" for key in wanted if given.get(key) != wanted[key]]
    if differ:
        raise ValueError(f"The {name} weights were trained with {', '.join(differ)}: build the model that way.")
    return _files(name)[0]


def write_preset(model_dir: str, destination: str | None = None, device: str | None = None) -> str:
    """Turns a finished training run (its `config.json`, `results.json` and `model.weights.h5`)
    into a preset's two files in `destination` (default `PRESETS_DIR`); returns the preset's name.
    `device`: the accelerator that trained it (default: what results.json names)."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    with open(os.path.join(model_dir, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    options = {k: v for k, v in config["model_options"].items() if k not in EXECUTION_OPTIONS}
    name = f"preact_resnet{config['depth']}.{config['dataset']}"
    preset = PRESETS.get(name)
    values = {
        "name": name,
        "dataset": config["dataset"],
        "classes": choices.DATASETS[config["dataset"]].classes,
        "architecture": architecture(config["depth"], config["block"], **options),
        "test_error": results["test_error"],
        "paper_error": preset and preset.paper_error,
        "paper_figure": preset and preset.paper_figure,
        "date": datetime.datetime.fromtimestamp(os.path.getmtime(os.path.join(model_dir, "results.json")), datetime.timezone.utc)
        .date()
        .isoformat(),
        "device": device or results.get("device") or results.get("placement"),
        "machine": results.get("machine"),
        "backend": results.get("backend"),
        "epochs": results.get("epochs"),
        "recipe": config.get("recipe"),
    }
    destination = PRESETS_DIR if destination is None else destination
    os.makedirs(destination, exist_ok=True)
    with open(os.path.join(model_dir, "model.weights.h5"), "rb") as source:
        weights = source.read()
    with open(os.path.join(destination, f"{name}.weights.h5"), "wb") as f:
        f.write(weights)
    with open(os.path.join(destination, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(values, f, indent=2)
    return name
