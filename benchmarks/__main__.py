"""Side-by-side benchmarks: keras_preact on each backend against native PyTorch, in one run.

    python -m benchmarks            # the full set (≈25 minutes on 2 CPU cores)
    python -m benchmarks --quick    # ResNet-164 training only, one repeat (≈5 minutes)

Every configuration runs in its own process; configurations alternate within each repeat, and
the report gives medians. Results go to benchmarks/results.json, BENCHMARKS.md and
benchmarks/benchmarks.png.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name -> (KERAS_BACKEND, worker arguments)
TRAINING = {
    "keras_preact / tensorflow": ("tensorflow", []),
    "keras_preact / tensorflow + XLA": ("tensorflow", ["--jit"]),
    "keras_preact / jax (jit)": ("jax", []),
    "keras_preact / torch, channels-last": ("torch", []),
    "keras_preact / torch, channels-first": ("torch", ["--channels_first"]),
    "native PyTorch, contiguous": ("torch", ["--impl=torch"]),
    "native PyTorch, channels-last": ("torch", ["--impl=torch", "--channels_last"]),
}
NATIVE = ("native PyTorch, contiguous", "native PyTorch, channels-last")
# name -> (KERAS_BACKEND, input pipeline)
PIPELINES = {
    "tf.data training pipeline": ("tensorflow", "tf_data"),
    "device pipeline / jax": ("jax", "device"),
    "device pipeline / torch": ("torch", "device"),
}
TARGETS = {  # ResNet-164 training at batch 64, ratio to the faster native PyTorch format
    "keras_preact / tensorflow": 1.1,
    "keras_preact / torch, channels-last": 0.8,
    "keras_preact / jax (jit)": 0.5,
}


def measure(task, backend, arguments, timeout=1800):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    command = [sys.executable, "-m", "benchmarks.worker", task, *arguments]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if result.returncode:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"}
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record["process_seconds"] = time.perf_counter() - started
    return record


def run(quick, repeats, data_dir, out):
    records = []

    def note(kind, name, config, record):
        records.append({"kind": kind, "name": name, **config, **record})
        shown = record.get("images_per_second") or record.get("build_seconds") or record.get("error")
        print(f"  {kind:9s} {name:40s} {json.dumps(config):40s} -> {shown}", flush=True)
        with open(out, "w") as f:
            json.dump(records, f, indent=1)

    depths = (164,) if quick else (164, 110)
    steps = ["--steps=4", "--warmup=2"] if quick else ["--steps=8", "--warmup=3"]
    for repeat in range(repeats):
        print(f"repeat {repeat + 1}/{repeats}", flush=True)
        for depth in depths:
            for name, (backend, arguments) in TRAINING.items():
                config = {"depth": depth, "batch": 64, "repeat": repeat}
                note("train", name, config, measure("train", backend, [*arguments, f"--depth={depth}", "--batch=64", *steps]))
    if quick:
        return records
    if os.path.isdir(data_dir):
        for repeat in range(repeats):
            for name, (backend, pipeline) in PIPELINES.items():
                note("pipeline", name, {"batch": 128, "repeat": repeat},
                     measure("pipeline", backend, [f"--data_dir={data_dir}", "--batch=128", f"--input_pipeline={pipeline}"]))
    for backend in ("tensorflow", "jax", "torch"):
        note("build", f"ResNet-1001 / {backend}", {"depth": 1001}, measure("build", backend, ["--depth=1001"]))
    # ResNet-1001 without rematerialisation does not fit batch 128 in 24 GiB here: memory is
    # measured at batch 16 and 32 both ways (and extrapolated), and at 128 with remat.
    for batch, remat in ((16, False), (16, True), (32, False), (32, True), (128, True)):
        arguments = ["--depth=1001", f"--batch={batch}", "--steps=2", "--warmup=1"] + (["--remat"] if remat else [])
        note("remat", f"ResNet-1001 / torch{' + remat' if remat else ''}", {"depth": 1001, "batch": batch, "remat": remat},
             measure("train", "torch", arguments))
    note("serving", "ResNet-164 SavedModel vs Keras predict", {"depth": 164}, measure("serving", "tensorflow", ["--depth=164"]))
    return records


def versions():
    found = {"python": platform.python_version()}
    for package in ("keras", "tensorflow", "jax", "torch", "numpy"):
        try:
            found[package] = __import__(package).__version__
        except ImportError:
            found[package] = "not installed"
    return found


def median(records, **match):
    values = [r["images_per_second"] for r in records if all(r.get(k) == v for k, v in match.items()) and "images_per_second" in r]
    return statistics.median(values) if values else None


def report(records, path, chart):
    """Writes the Markdown report and the chart; returns the Markdown text."""
    lines = [
        "# Benchmarks",
        "",
        f"Run on {datetime.date.today().isoformat()}, {platform.machine()} CPU with {os.cpu_count()} cores, "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + ". Generated by `python -m benchmarks`; medians over repeats, each configuration in its own process.",
        "",
        "## Training throughput (synthetic CIFAR batches of 64, images/s)",
        "",
    ]
    depths = sorted({r["depth"] for r in records if r["kind"] == "train"}, reverse=True)
    lines += ["| implementation | " + " | ".join(f"ResNet-{d}" for d in depths) + " | ratio to best native (ResNet-164) | target |",
              "|---|" + "---|" * len(depths) + "---|---|"]
    best_native = {d: max(filter(None, (median(records, kind="train", name=n, depth=d) for n in NATIVE)), default=None) for d in depths}
    for name in TRAINING:
        cells = []
        for depth in depths:
            value = median(records, kind="train", name=name, depth=depth)
            cells.append("error" if value is None else f"{value:.1f}")
        value = median(records, kind="train", name=name, depth=164)
        ratio = f"{value / best_native[164]:.2f}×" if value and best_native.get(164) else "—"
        target = f"≥ {TARGETS[name]}×" if name in TARGETS else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} | {target} |")
    if any(r["kind"] == "pipeline" for r in records):
        tf_rate = median(records, kind="train", name="keras_preact / tensorflow", depth=164)
        lines += ["", "## Input pipelines (real CIFAR-10 JPEGs, augmentation, batch 128)", "",
                  "| pipeline | images/s | one-time decode of 50,000 JPEGs (s) | × TensorFlow ResNet-164 training rate (target ≥ 10×) |",
                  "|---|---|---|---|"]
        for name in PIPELINES:
            rate = median(records, kind="pipeline", name=name)
            decodes = [r["decode_seconds"] for r in records if r["kind"] == "pipeline" and r["name"] == name and "decode_seconds" in r]
            if rate:
                ratio = f"{rate / tf_rate:.0f}×" if tf_rate else "—"
                lines.append(f"| {name} | {rate:,.0f} | {statistics.median(decodes):.1f} | {ratio} |")
    builds = [r for r in records if r["kind"] == "build"]
    if builds:
        lines += ["", "## ResNet-1001 build time (target ≤ 20 s)", "", "| backend | seconds | layers |", "|---|---|---|"]
        lines += [f"| {r['name'].split(' / ')[1]} | {r.get('build_seconds', float('nan')):.1f} | {r.get('layers', '—')} |" for r in builds]
    remats = [r for r in records if r["kind"] == "remat"]
    if remats:
        lines += ["", "## ResNet-1001 training step, torch backend: rematerialisation", "",
                  "| batch | remat | step seconds | peak RSS (MB) |", "|---|---|---|---|"]
        for r in remats:
            step = f"{r['step_seconds']:.1f}" if "step_seconds" in r else r.get("error", "")
            rss = f"{r['peak_rss_mb']:,.0f}" if "peak_rss_mb" in r else "—"
            lines.append(f"| {r['batch']} | {'yes' if r['remat'] else 'no'} | {step} | {rss} |")
    serving = [r for r in records if r["kind"] == "serving" and "saved_model_latency_ms" in r]
    if serving:
        s = serving[-1]
        lines += ["", "## Serving ResNet-164 (TensorFlow)", "", "| | latency, batch 1 (ms) | throughput, batch 256 (images/s) |", "|---|---|---|",
                  f"| exported SavedModel (`serving_default`, uint8 in) | {s['saved_model_latency_ms']:.1f} | {s['saved_model_images_per_second']:.0f} |",
                  f"| Keras `model.predict` | {s['keras_predict_latency_ms']:.1f} | {s['keras_predict_images_per_second']:.0f} |"]
    analysis = os.path.join(HERE, "ANALYSIS.md")  # hand-written: what limits each missed target
    if os.path.exists(analysis):
        lines += ["", open(analysis).read().strip()]
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    plot(records, depths, chart)
    return text


def plot(records, depths, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(TRAINING)
    figure, axis = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(len(depths), 1)
    for index, depth in enumerate(depths):
        values = [median(records, kind="train", name=n, depth=depth) or 0 for n in names]
        axis.barh([i + index * width for i in range(len(names))], values, height=width, label=f"ResNet-{depth}")
    axis.set_yticks([i + width * (len(depths) - 1) / 2 for i in range(len(names))], names)
    axis.invert_yaxis()
    axis.set_xlabel("training images/s (batch 64, CPU)")
    axis.legend()
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-164 training only, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="default 2 (1 with --quick)")
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg"))
    parser.add_argument("--report_only", action="store_true", help="rewrite the report from benchmarks/results.json")
    args = parser.parse_args()
    out = os.path.join(HERE, "results.json")
    if args.report_only:
        with open(out) as f:
            records = json.load(f)
    else:
        records = run(args.quick, args.repeats or (1 if args.quick else 2), args.data_dir, out)
    print(report(records, os.path.join(ROOT, "BENCHMARKS.md"), os.path.join(HERE, "benchmarks.png")))


if __name__ == "__main__":
    main()
