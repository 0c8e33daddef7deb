"""The paper's ablations (Tables 1 and 2) as a grid of runs, with the paper's figures beside ours.

`run_grid` trains each variant (`keras_preact.choices.VARIANTS`) with one recipe through `run`; `write_report` writes the
Markdown and CSV tables and a bar chart.
"""

import csv
import dataclasses
import logging
import os

from keras_preact import choices
from keras_preact.training.report import chart
from keras_preact.training.runner import TrainingDiverged, run

log = logging.getLogger("keras_preact")

def run_grid(base, names, model_dir):
    """Trains `base` (a RunConfig) once per variant under `model_dir/<variant>`; returns rows.

    Each variant resumes from its checkpoint, so an interrupted grid resumes; a folder of other
    settings is refused.
    A run whose loss diverges is recorded as such (the paper's "fail").
    """
    rows = []
    for name in names:
        choices.VARIANTS.check(name)
    for index, name in enumerate(names, start=1):
        options = choices.VARIANTS[name].options
        config = dataclasses.replace(base, model_dir=os.path.join(model_dir, name), model_options=dict(options))
        log.info("[%d/%d] %s: %s", index, len(names), name, options)
        try:
            # A finished variant resumes with nothing left to train (its settings checked, its
            # test error evaluated again, its training speed and time kept).
            results = run(config)
        except TrainingDiverged as error:
            log.warning("%s diverged: %s", name, error)
            results = {"test_error": None, "diverged": True}
        rows.append({"variant": name, **{k: results.get(k) for k in ("test_error", "wall_seconds", "parameters")},
                     "diverged": bool(results.get("diverged"))})
    return rows


def _paper(value):
    return "—" if value is None else ("fail (>20%)" if value == choices.FAIL else f"{value:.2f}")


def write_report(rows, model_dir, scale):
    """Writes `ablation.md`, `ablation.csv` and `ablation.png` in `model_dir`; returns their paths."""
    os.makedirs(model_dir, exist_ok=True)
    md_path, csv_path, png_path = (os.path.join(model_dir, f"ablation.{ext}") for ext in ("md", "csv", "png"))
    lines = [
        f"Scale: {scale}",
        "",
        "| variant | options | test error % (here) | paper ResNet-110 | paper ResNet-164 |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        options, paper110, paper164 = dataclasses.astuple(choices.VARIANTS[row["variant"]])
        ours = "diverged" if row["diverged"] else f"{row['test_error']:.2f}"
        described = ", ".join(f"{k}={v}" for k, v in options.items())
        lines.append(f"| {row['variant']} | {described} | {ours} | {_paper(paper110)} | {_paper(paper164)} |")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "test_error", "diverged", "paper_resnet110", "paper_resnet164", "parameters", "wall_seconds"])
        for row in rows:
            _, paper110, paper164 = dataclasses.astuple(choices.VARIANTS[row["variant"]])
            writer.writerow([row["variant"], row["test_error"], row["diverged"], paper110, paper164,
                             row["parameters"], row["wall_seconds"]])
    _plot(rows, png_path, scale)
    return md_path, csv_path, png_path


def _plot(rows, path, scale):
    names = [row["variant"] for row in rows]
    ours = [100.0 if row["diverged"] else row["test_error"] for row in rows]
    paper = [choices.VARIANTS[n].paper_resnet110 for n in names]
    paper = [20.0 if p == choices.FAIL else (p or 0.0) for p in paper]
    positions = range(len(names))
    with chart(path, size=(max(6, 0.9 * len(names) + 2), 4.5)) as (_, axis):
        axis.bar([p - 0.2 for p in positions], ours, width=0.4, label=f"here ({scale})")
        axis.bar([p + 0.2 for p in positions], paper, width=0.4, label="paper, ResNet-110 (fail drawn at 20)")
        axis.set_xticks(list(positions), names, rotation=35, ha="right")
        axis.set_ylabel("CIFAR-10 test error (%)")
        axis.set_title("Shortcut variants and unit orderings")
        axis.set_ylim(0, 1.45 * max(ours + paper))  # room for the legend above the bars
        axis.legend(loc="upper left")
        axis.grid(axis="y", alpha=0.3)
