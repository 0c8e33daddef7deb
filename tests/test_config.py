"""Run configuration: one place resolves defaults and rejects bad values; one registry of choices."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest

from keras_preact import choices, train
from keras_preact.training import RunConfig, build_model
from keras_preact.training.config import ResolvedRunConfig
from keras_preact.training.recipe import OPTIMIZER_SETTINGS, make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_none_means_default_and_nothing_else_does():
    config = RunConfig(depth=110).resolved()
    assert (config.block, config.epochs, config.batch_size) == ("basic", 164, 128)
    assert config.model_dir == os.path.join("runs", "cifar10_resnet110")
    official = RunConfig(depth=164, recipe="official", epochs=3, batch_size=32, model_dir="here").resolved()
    assert (official.block, official.epochs, official.batch_size, official.model_dir) == ("bottleneck", 3, 32, "here")
    assert official.resolved() == official  # resolving twice changes nothing


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(epochs=0), "epochs must be a positive integer, got 0"),
        (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
        (dict(batch_size=-8), "batch_size must be a positive integer, got -8"),
        (dict(epochs=2.5), "epochs must be a positive integer, got 2.5"),
        (dict(train_subset=0), "train_subset must be a positive integer, got 0"),
        (dict(seed=-1), "seed must be a non-negative integer of at most 4294967295, got -1"),
        (dict(seed=2**32), "seed must be a non-negative integer of at most 4294967295, got 4294967296"),
        (dict(depth=20, model_options={"stride_on": "3x3"}), "stride_on applies to bottleneck units"),
        (dict(model_options={"shortcut": "constant_scaling", "shortcut_scale": 10**400}), "shortcut_scale must be a finite number"),
        (dict(model_options={"unit": None, "typo": None}), "Unknown model option\\(s\\) typo"),
        (dict(depth=True), "depth must be a positive integer, got True"),
        (dict(depth=12), "depth=12 does not fit"),
        (dict(block="wide"), "Unknown block='wide'. Valid values: 'basic', 'bottleneck'"),
        (dict(dataset="imagenet"), "Unknown dataset='imagenet'. Valid values: 'cifar10', 'cifar100'"),
        (dict(recipe="fast"), "Unknown recipe='fast'"),
        (dict(strategy="everywhere"), "Unknown strategy='everywhere'"),
        (dict(mixed_precision="int8"), "Unknown mixed_precision='int8'"),
        (dict(model_dir=""), "model_dir must be a path, got ''"),
        (dict(model_options={"units": "original"}), "Unknown model option\\(s\\) units"),
        (dict(model_options={"unit": "preact"}), "Unknown unit='preact'"),
        (dict(model_options={"remat": "yes"}), "remat must be True or False"),
        (dict(model_options={"shortcut": "constant_scaling", "shortcut_scale": "x"}), "shortcut_scale must be a finite number, got 'x'"),
        (dict(model_options={"gate_bias": -6.0}), "gate_bias=-6.0 applies to shortcut='exclusive_gating' or 'shortcut_only_gating'"),
        (dict(learning_rate=0), "learning_rate must be a positive number, got 0"),
        (dict(learning_rate=float("nan")), "learning_rate must be a finite number, got nan"),
        (dict(weight_decay=-1e-4), "weight_decay must be >= 0, got -0.0001"),
        (dict(momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
        (dict(nesterov="yes"), "nesterov must be True or False, got 'yes'"),
        (dict(epochs=10, warmup_epochs=10), r"warmup_epochs must be in \[0, 10\), got 10.0"),
        (dict(recipe="official", warmup_epochs=2), "warmup_epochs=2 needs a warm-up rate, and this recipe has none"),
    ],
)
def test_bad_values_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{"depth": 20, **overrides}).resolved()


def test_saved_configuration_round_trips(tmp_path):
    config = RunConfig(depth=20, epochs=2, model_options={"unit": "original"}).resolved()
    config.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json") == config


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not a readable run configuration \\(JSON\\)"),
        ("[1, 2]", "must be a JSON object of run settings"),
        ('{"dataset": "cifar10", "block": "basic"}', "lacks depth: it was not written by a keras_preact run"),
        ('{"dataset": "cifar10", "depth": 20, "block": "basic", "colour": 1}', "unknown setting\\(s\\) colour"),
        ('{"dataset": "cifar10", "depth": 20, "block": "basic", "epochs": 0}', "epochs must be a positive integer, got 0"),
    ],
)
def test_bad_saved_configuration(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        RunConfig.load(path)


def test_build_model_follows_the_configuration():
    model = build_model(RunConfig(dataset="cifar100", depth=11, mixed_precision="bfloat16", model_options={"unit": "original"}))
    assert model.output.shape[-1] == 100
    assert model.get_layer("stage1_unit1").dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("predictions").dtype_policy.name == "float32"
    assert model.get_layer("stage1_unit1").ordering == "original"


def test_every_choice_is_read_from_the_registry():
    """The command lines offer exactly the registry's names."""
    text = train.parser().format_help()  # the command's --help (tests/test_commands.py runs it)
    for flag, table in (("dataset", choices.TRAINING_DATASETS), ("recipe", choices.RECIPES),
                        ("strategy", choices.STRATEGIES), ("mixed_precision", choices.PRECISIONS), ("block", choices.BLOCKS)):
        offered = re.search(rf"--{flag} {{([^}}]*)}}", text).group(1).split(",")
        assert offered == list(table.names), flag


def test_library_errors_name_arguments_not_flags():
    """Library messages speak of arguments (data_dir=...), not of one command's flags or our paths."""
    for folder in ("model", "training", "serving"):
        for name in os.listdir(os.path.join(ROOT, "keras_preact", folder)):
            if name.endswith(".py"):
                text = open(os.path.join(ROOT, "keras_preact", folder, name)).read()
                assert "../shared" not in text, name
                for message in re.findall(r'raise \w+\(\s*f?"([^"]*)"', text):
                    assert not re.search(r"(?<![\w-])--[a-z]", message), (name, message)


def test_a_record_per_ordering_holds_unit_stem_and_head():
    for name, ordering in choices.ORDERINGS.items():
        assert {f.name for f in dataclasses.fields(ordering)} == {"figure", "pre", "between", "tail", "post", "stem", "head"}
        sites = (ordering.pre, ordering.between, ordering.tail, ordering.post, ordering.stem, ordering.head)
        assert all(isinstance(site, choices.Activation) for site in sites), name


def test_config_json_is_plain_json(tmp_path):
    RunConfig(depth=20).resolved().save(tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["block"] == "basic"


def test_none_means_the_default_for_every_setting():
    fields = [field.name for field in dataclasses.fields(RunConfig)]
    given_none = RunConfig(**{name: None for name in fields}).resolved()
    assert given_none == RunConfig().resolved()
    assert RunConfig(model_options={"unit": None, "remat": None}).resolved().model_options == {}
    assert RunConfig(epochs=np.int64(3), seed=np.int32(1)).resolved().epochs == 3  # NumPy integers are integers


def test_the_recipe_numbers_are_settings():
    """None: the recipe's number, filled in and saved; a given one reaches the optimizer."""
    assert RunConfig(depth=20, epochs=32).resolved().optimizer_settings == {
        "learning_rate": 0.1, "weight_decay": 1e-4, "momentum": 0.9, "nesterov": False, "warmup_epochs": None
    }  # warmup_epochs None: the recipe's share of the run, whatever its epochs
    official = RunConfig(depth=20, recipe="official").resolved()
    assert (official.nesterov, official.momentum) == (True, 0.9)
    given = RunConfig(depth=20, epochs=10, batch_size=256, learning_rate=0.05, weight_decay=5e-4, momentum=0.8,
                      nesterov=True, warmup_epochs=2).resolved()
    optimizer = make_optimizer(choices.RECIPES["paper"], 100, given.epochs, given.batch_size, given.optimizer_settings)
    schedule = optimizer._learning_rate
    assert schedule.rate == pytest.approx(0.1) and schedule.warmup_rate == pytest.approx(0.01)  # x2 for batch 256
    assert schedule.warmup_steps == 200 and schedule.boundaries == [500, 750]
    assert (optimizer.momentum, optimizer.nesterov, optimizer.coupled_weight_decay) == (0.8, True, 5e-4)


def test_a_config_json_from_before_the_recipe_settings_reads_as_the_recipe(tmp_path):
    config = RunConfig(depth=20, epochs=2, recipe="official").resolved()
    saved = config.to_dict()
    for name in OPTIMIZER_SETTINGS:
        del saved[name]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert RunConfig.load(tmp_path / "config.json") == config


def test_a_resolved_configuration_is_resolved_once(monkeypatch):
    config = RunConfig(depth=20, epochs=2).resolved()
    assert isinstance(config, ResolvedRunConfig) and not isinstance(RunConfig(depth=20), ResolvedRunConfig)
    monkeypatch.setattr("keras_preact.training.config.check_architecture", None)  # a second resolution would call it
    assert config.resolved() is config
    assert build_model(config).name  # takes it as it is
    monkeypatch.undo()
    with pytest.raises(ValueError, match="depth=12 does not fit"):  # a copy with other values is checked again
        dataclasses.replace(config, depth=12).resolved()
