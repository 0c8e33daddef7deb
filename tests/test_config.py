"""Run configuration: one place resolves defaults and rejects bad values; one registry of choices."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from keras_preact import choices
from keras_preact.training import RunConfig, build_model

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
    command = [sys.executable, os.path.join(ROOT, "examples", "cifar.py"), "--help"]
    text = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
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
        assert set(ordering.pre + ordering.between + ordering.tail + ordering.post + ordering.stem + ordering.head) <= {"bn", "relu"}, name


def test_config_json_is_plain_json(tmp_path):
    RunConfig(depth=20).resolved().save(tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["block"] == "basic"


def test_none_means_the_default_for_every_setting():
    fields = [field.name for field in dataclasses.fields(RunConfig)]
    given_none = RunConfig(**{name: None for name in fields}).resolved()
    assert given_none == RunConfig().resolved()
    assert RunConfig(model_options={"unit": None, "remat": None}).resolved().model_options == {}
    assert RunConfig(epochs=np.int64(3), seed=np.int32(1)).resolved().epochs == 3  # NumPy integers are integers
