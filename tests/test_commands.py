"""The installed commands (`[project.scripts]`): each resolves, and `--help` lists every one of its
flags with help text, and nothing else."""

import dataclasses
import importlib
import os
import re
import subprocess
import sys
import tomllib

import pytest
from helpers import backend_independent

from keras_preact import command_line, train
from keras_preact.training.config import RunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    SCRIPTS = tomllib.load(f)["project"]["scripts"]


def test_the_three_commands_are_installed_and_resolve():
    assert set(SCRIPTS) == {"keras-preact-train", "keras-preact-export", "keras-preact-serve"}
    for target in SCRIPTS.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_every_run_config_field_is_a_flag_with_help_and_default():
    actions = {action.dest: action for action in train.parser()._actions}
    for field in dataclasses.fields(RunConfig):
        assert field.name in train.RUN_CONFIG_HELP, f"RunConfig.{field.name} has no help line in RUN_CONFIG_HELP"
        assert actions[field.name].option_strings[0] == f"--{field.name}"  # a flag's --no-x follows it
    for dest, action in actions.items():
        if dest != "help":
            assert action.help and "default" in action.help, dest  # "(default: X)" or what None means


def test_flags_give_the_run_config():
    args = train.parser().parse_args(["--depth=20", "--epochs=2", "--model_options", '{"remat": true}', "--mixed_precision=bfloat16"])
    config = train.run_config(args, model_dir="runs/x")
    assert config == RunConfig(depth=20, epochs=2, model_options={"remat": True}, mixed_precision="bfloat16",
                               model_dir="runs/x").resolved()
    assert train.run_config(train.parser().parse_args([])) == RunConfig().resolved()  # the defaults are RunConfig's


@pytest.mark.parametrize("value, message", [("[1]", "must be a JSON object"), ("{remat", "not JSON")])
def test_a_bad_model_options_flag_is_one_line(value, message, capsys):
    with pytest.raises(SystemExit):
        train.parser().parse_args([f"--model_options={value}"])
    assert message in capsys.readouterr().err


def test_a_field_without_help_or_flag_type_is_refused(monkeypatch):
    extended = dataclasses.make_dataclass("Extended", [("label_smoothing", float, None)], bases=(RunConfig,), frozen=True)
    monkeypatch.setattr(train, "RunConfig", extended)
    with pytest.raises(KeyError, match="RunConfig.label_smoothing has no help line: add one to RUN_CONFIG_HELP"):
        train.parser()
    monkeypatch.setitem(train.RUN_CONFIG_HELP, "label_smoothing", "smoothing of the labels (default: none)")
    assert train.parser().parse_args(["--label_smoothing=0.1"]).label_smoothing == 0.1


def described_flags(text):
    """The flags of a `--help` text, each with the description argparse printed beside or below it."""
    flags, current = {}, None
    for line in text.splitlines():
        match = re.match(r"  (--\w+)(?:,? \S+)?(?:  +(.*))?$", line)  # "--x, --no-x" for a yes/no flag
        if match:
            current = match.group(1)
            flags[current] = match.group(2) or ""
        elif current and re.match(r" {10,}\S", line):
            flags[current] += " " + line.strip()
        elif not line.startswith(" "):
            current = None
    return flags


@backend_independent
@pytest.mark.parametrize("module", ["keras_preact.train", "keras_preact.export", "keras_preact.serve"])
def test_help_lists_every_flag_with_help_and_nothing_else(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    assert not re.search(r"helpfull|absl|tpu|test_", text, re.IGNORECASE), text
    usage = set(re.findall(r"(?:^|[\s\[])(--\w+)(?![\w-])", text.split("\n\n")[0]))  # not --no-x of --x
    described = described_flags(text)
    assert usage == set(described), module
    assert all(description.strip() for description in described.values()), described
    if module == "keras_preact.train":
        assert set(described) == {f"--{a.dest}" for a in train.parser()._actions if a.dest != "help"}


@backend_independent
def test_the_example_is_the_command():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "cifar.py"), "--help"], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0 and done.stdout.startswith("usage: examples/cifar.py")
    assert set(described_flags(done.stdout)) == {f"--{a.dest}" for a in train.parser()._actions if a.dest != "help"}


@backend_independent
def test_a_bad_setting_is_one_line_on_stderr(tmp_path):
    done = subprocess.run([sys.executable, "-m", "keras_preact.train", "--depth=12", f"--model_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 1 and not os.listdir(tmp_path)
    assert done.stderr.strip().splitlines()[-1].startswith("error: A CIFAR ResNet with block='bottleneck' has depth 9n+2")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("verbosity, ours, tensorflows", [("info", "INFO", "WARNING"), ("debug", "DEBUG", "DEBUG"),
                                                         ("error", "ERROR", "ERROR")])
def test_verbosity_sets_the_log_levels(verbosity, ours, tensorflows, monkeypatch):
    import logging

    monkeypatch.setattr(logging.root, "handlers", [logging.NullHandler()])  # basicConfig adds none then
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    saved = {name: logging.getLogger(name).level for name in ("tensorflow", "absl")}
    try:
        command_line.set_log_levels(verbosity)
        assert logging.getLevelName(logging.root.level) == ours
        assert logging.getLevelName(logging.getLogger("keras_preact").getEffectiveLevel()) == ours
        assert {logging.getLevelName(logging.getLogger(name).level) for name in saved} == {tensorflows}
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def test_verbosity_is_a_choice(capsys):
    with pytest.raises(SystemExit):
        train.parser().parse_args(["--verbosity=loud"])
    assert "argument --verbosity: invalid choice: 'loud'" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--learning_rate=abc", "--image_size=32.5", "--verbosity=loud", "--depth"])
def test_a_flag_of_the_wrong_type_is_one_line(flag, capsys):
    with pytest.raises(SystemExit) as stop:
        train.parser(prog="keras-preact-train").parse_args([flag])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1, lines  # argparse would print its 25-line usage first
    assert lines[0].startswith("keras-preact-train: error: argument") and "--help lists every flag" in lines[0]
