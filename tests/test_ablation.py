"""The ablation runner: a grid of variants through the training code, tables beside the paper's."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from keras_preact import choices, training
from keras_preact.training import ablation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "data", "cifar10-sample")


def base(tmp_path):
    return training.RunConfig(data_dir=SAMPLE, depth=8, epochs=1, batch_size=10, model_dir=str(tmp_path))


def test_grid_trains_each_variant_and_reports(tmp_path, monkeypatch):
    calls = []
    real_run = training.run

    def recording_run(config, *args, **kwargs):
        calls.append(config.model_options)
        if config.model_options.get("shortcut") == "dropout":
            raise training.TrainingDiverged("loss became NaN")
        return real_run(config, *args, verbose=0, **kwargs)

    monkeypatch.setattr(ablation, "run", recording_run)
    names = ["original", "exclusive_gating", "dropout_shortcut"]
    rows = ablation.run_grid(base(tmp_path), names, str(tmp_path))
    assert calls == [choices.VARIANTS[name].options for name in names]
    assert [row["variant"] for row in rows] == names
    assert rows[2]["diverged"] and rows[2]["test_error"] is None
    assert 0 <= rows[0]["test_error"] <= 100
    # The gate's 1x1 convs (C*C + C per shape-keeping unit) show in the parameter counts.
    # ResNet-8: one unit per stage, only stage 1 (16 channels) keeps its shape.
    assert rows[1]["parameters"] - rows[0]["parameters"] == 16 * 16 + 16

    markdown, table, chart = ablation.write_report(rows, str(tmp_path), scale="toy")
    text = open(markdown).read()
    assert "Scale: toy" in text
    assert "| original | unit=original |" in text and "| 6.61 | 5.93 |" in text
    assert "| dropout_shortcut | unit=original, shortcut=dropout | diverged | fail (>20%) | — |" in text
    with open(table) as f:
        assert [row["variant"] for row in csv.DictReader(f)] == names
    assert open(chart, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    # A finished variant resumes with nothing left to train: the same numbers, its speed kept.
    calls.clear()
    again = ablation.run_grid(base(tmp_path), ["original"], str(tmp_path))
    assert calls == [{"unit": "original"}]
    assert [again[0][k] for k in ("test_error", "wall_seconds")] == [rows[0][k] for k in ("test_error", "wall_seconds")]
    # ... and a grid of other settings over it is refused, not reported with the old numbers.
    with pytest.raises(ValueError, match="holds a run with other settings .*epochs: 1 there, 2 now"):
        ablation.run_grid(dataclasses.replace(base(tmp_path), epochs=2), ["original"], str(tmp_path))


def test_every_paper_variant_is_listed():
    options = [v.options for v in choices.VARIANTS.values()]
    assert {o.get("unit") for o in options} == {"original", "bn_after_addition", "relu_before_addition", "relu_only_preact", "full_preact"}
    assert {o.get("shortcut", "identity") for o in options} == {
        "identity", "constant_scaling", "exclusive_gating", "shortcut_only_gating", "conv1x1", "dropout"
    }


def test_unknown_variant():
    with pytest.raises(ValueError, match="Unknown variant='gated'. Valid values: 'original', "):
        ablation.run_grid(training.RunConfig(), ["original", "gated"], "unused")


def test_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "ablation.py"), f"--data_dir={SAMPLE}", "--depth=8",
         "--epochs=1", "--batch_size=10", f"--model_dir={tmp_path}", "--variants=full_preact"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Scale: ResNet-8 (basic), cifar10, 1 epochs, paper recipe" in result.stdout
    assert json.loads((tmp_path / "full_preact" / "results.json").read_text())["model_options"] == {"unit": "full_preact"}
