"""Side-by-side benchmarks: keras_preact on each backend against native PyTorch, in one run.

    python -m benchmarks            # the full set (≈40 minutes on 2 CPU cores)
    python -m benchmarks --quick    # ResNet-164 training only, one repeat (≈5 minutes)
    python -m benchmarks --only e2e # the main job against a plain PyTorch script (≈12 minutes)

Every configuration runs in its own process; configurations alternate within each repeat, and
the report gives medians. Results go to benchmarks/results.json, BENCHMARKS.md and
benchmarks/benchmarks.png.
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _runtime():
    """keras_preact/runtime.py alone: the package's import would set up (and import) TensorFlow in
    this orchestrator, whose children must start as a user's process does."""
    spec = importlib.util.spec_from_file_location("keras_preact_runtime", os.path.join(ROOT, "keras_preact", "runtime.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

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
MAIN_JOB = ("keras_preact", "plain PyTorch")
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


KINDS = ("train", "e2e", "pipeline", "build", "remat", "serving", "rest")


def timed(command, env, timeout, cwd=ROOT):
    """Runs `command`; returns (completed process, wall, user and system CPU seconds of it)."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, time.perf_counter() - started, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def last_line_error(result):
    return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"}


def main_job(implementation, data_dir, epochs, scratch):
    """`examples/cifar.py` as shipped (TensorFlow backend, no settings) or the plain PyTorch
    script, on the image folder: wall time, CPU time, training rate, test error."""
    model_dir = os.path.join(scratch, f"{implementation}-{time.monotonic_ns()}")
    common = [f"--data_dir={data_dir}", "--depth=20", f"--epochs={epochs}"]
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")}
    if implementation == "keras_preact":
        command = [sys.executable, "examples/cifar.py", *common, "--block=basic", f"--model_dir={model_dir}"]
    else:
        command = [sys.executable, "benchmarks/native_cifar.py", *common]
    result, wall, user, system = timed(command, dict(env, TF_CPP_MIN_LOG_LEVEL="3"), timeout=7200)
    if result.returncode:
        return last_line_error(result)
    if implementation == "keras_preact":
        with open(os.path.join(model_dir, "results.json")) as f:
            outcome = json.load(f)
        record = {k: outcome[k] for k in ("train_images_per_second", "test_error")}
        record["onednn"] = outcome["machine"].get("tensorflow_onednn")
    else:
        record = {k: v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()
                  if k in ("train_images_per_second", "test_error")}
    return {**record, "wall_seconds": wall, "user_seconds": user, "system_seconds": system}


def measure(task, backend, arguments, timeout=1800):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    command = [sys.executable, "-m", "benchmarks.worker", task, *arguments]
    result, wall, _, _ = timed(command, env, timeout)
    if result.returncode:
        return last_line_error(result)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record["process_seconds"] = wall
    return record


def run(kinds, quick, repeats, data_dir, out, previous):
    """Measures `kinds`; keeps the `previous` records of the other kinds."""
    machine = dict(_runtime().cpu_description(), date=datetime.date.today().isoformat())
    records = [r for r in previous if r["kind"] not in kinds]

    def note(kind, name, config, record):
        records.append({"kind": kind, "name": name, **config, **record, "machine": machine})
        shown = record.get("images_per_second") or record.get("wall_seconds") or record.get("build_seconds") or record.get("error")
        print(f"  {kind:9s} {name:40s} {json.dumps(config):40s} -> {shown}", flush=True)
        with open(out, "w") as f:
            json.dump(records, f, indent=1)

    if "train" in kinds:
        depths = (164,) if quick else (164, 110)
        steps = ["--steps=4", "--warmup=2"] if quick else ["--steps=8", "--warmup=3"]
        for repeat in range(repeats):
            print(f"repeat {repeat + 1}/{repeats}", flush=True)
            for depth in depths:
                for name, (backend, arguments) in TRAINING.items():
                    config = {"depth": depth, "batch": 64, "repeat": repeat}
                    note("train", name, config, measure("train", backend, [*arguments, f"--depth={depth}", "--batch=64", *steps]))
    if "e2e" in kinds and os.path.isdir(data_dir):
        with tempfile.TemporaryDirectory() as scratch:
            for repeat in range(repeats):  # alternating, so drifts in the machine's speed hit both
                for implementation in MAIN_JOB:
                    note("e2e", implementation, {"depth": 20, "batch": 128, "epochs": 1, "repeat": repeat},
                         main_job(implementation, data_dir, 1, scratch))
                note("e2e", "keras_preact synthetic step", {"depth": 20, "batch": 128, "repeat": repeat},
                     measure("train", "tensorflow", ["--depth=20", "--batch=128", "--steps=8", "--warmup=3"]))
    if "pipeline" in kinds and os.path.isdir(data_dir):
        for repeat in range(repeats):
            for name, (backend, pipeline) in PIPELINES.items():
                note("pipeline", name, {"batch": 128, "repeat": repeat},
                     measure("pipeline", backend, [f"--data_dir={data_dir}", "--batch=128", f"--input_pipeline={pipeline}"]))
    if "build" in kinds:
        for backend in ("tensorflow", "jax", "torch"):
            note("build", f"ResNet-1001 / {backend}", {"depth": 1001}, measure("build", backend, ["--depth=1001"]))
    if "remat" in kinds:
        # ResNet-1001 without rematerialisation does not fit batch 128 in 24 GiB here: memory is
        # measured at batch 16 and 32 both ways (and extrapolated), and at 128 with remat.
        for batch, remat in ((16, False), (16, True), (32, False), (32, True), (128, True)):
            arguments = ["--depth=1001", f"--batch={batch}", "--steps=2", "--warmup=1"] + (["--remat"] if remat else [])
            note("remat", f"ResNet-1001 / torch{' + remat' if remat else ''}", {"depth": 1001, "batch": batch, "remat": remat},
                 measure("train", "torch", arguments))
    if "serving" in kinds:
        note("serving", "ResNet-164 SavedModel vs Keras predict", {"depth": 164}, measure("serving", "tensorflow", ["--depth=164"]))
    if "rest" in kinds:
        note("rest", "ResNet-164 local REST server", {"depth": 164}, measure("rest", "tensorflow", ["--depth=164", f"--data_dir={data_dir}"]))
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
    machines = sorted({described(r["machine"]) for r in records if "machine" in r})
    lines = [
        "# Benchmarks",
        "",
        f"Measured on {'; '.join(machines) or 'an unrecorded machine'}, {os.cpu_count()} cores, "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + ". Generated by `python -m benchmarks`; medians over repeats, each configuration in its own process. "
        "A timing holds for the machine it was measured on: compare ratios measured in one run.",
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
    lines += main_job_section(records)
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
    lines += rest_report(records)
    analysis = os.path.join(HERE, "ANALYSIS.md")  # hand-written: what limits each missed target
    if os.path.exists(analysis):
        lines += ["", open(analysis).read().strip()]
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    plot(records, depths, chart)
    return text


def described(machine):
    return f"{machine['model']} ({', '.join(machine['isa']) or 'no AVX2'}), {machine['date']}"


def main_job_section(records):
    e2e = [r for r in records if r["kind"] == "e2e" and "error" not in r]
    if not e2e:
        return []

    def middle(name, key):
        values = [r[key] for r in e2e if r["name"] == name and key in r]
        return statistics.median(values) if values else None

    lines = ["", "## The main job, end to end (ResNet-20 basic, one epoch of the real CIFAR-10 JPEGs, batch 128)", "",
             f"Machine: {described(e2e[0]['machine'])}; {len({r['repeat'] for r in e2e})} alternating repeats, medians. "
             "Wall time includes decoding the 60,000 JPEGs, building, the epoch and the test-set evaluation.", "",
             "| run | wall s | training images/s | test error after 1 epoch (%) | system share of CPU time |",
             "|---|---|---|---|---|"]
    labels = {"keras_preact": "`examples/cifar.py`, as shipped (TensorFlow, no settings)", "plain PyTorch": "plain PyTorch script (`benchmarks/native_cifar.py`, channels-last)"}
    for name, label in labels.items():
        wall, rate, error = middle(name, "wall_seconds"), middle(name, "train_images_per_second"), middle(name, "test_error")
        user, system = middle(name, "user_seconds"), middle(name, "system_seconds")
        if wall is not None:
            lines.append(f"| {label} | {wall:.0f} | {rate:.0f} | {error:.2f} | {100 * system / (user + system):.1f}% |")
    onednn = [r.get("onednn") for r in e2e if r["name"] == "keras_preact"]
    synthetic = statistics.median([r["images_per_second"] for r in e2e if r["name"] == "keras_preact synthetic step"] or [0])
    wall_ratio = middle("keras_preact", "wall_seconds") / middle("plain PyTorch", "wall_seconds")
    rate_ratio = middle("keras_preact", "train_images_per_second") / synthetic if synthetic else float("nan")
    lines += ["", f"TensorFlow's oneDNN kernels in the keras_preact runs: {'on' if all(onednn) else 'off'}. "
              f"Wall time ratio keras_preact / plain PyTorch: **{wall_ratio:.2f}×** (target ≤ 0.8×). "
              f"Training rate in the run / keras_preact's synthetic train step of the same model and batch "
              f"({synthetic:.0f} images/s): **{rate_ratio:.2f}×** (target ≥ 0.9×)."]
    return lines


def rest_report(records):
    """The local REST server's section: pixel JSON against base64 JPEG files."""
    rest = [r for r in records if r["kind"] == "rest" and "direct_latency_ms" in r]
    if not rest:
        return []
    r = rest[-1]
    return [
        "", f"## Serving ResNet-{r['depth']} over REST (`python -m keras_preact.serve`, one client)", "",
        f"Measured {r['date']} on {r['cpu']} (1-minute load average {r['load_average']:.1f} at the end, this run included); real "
        "CIFAR-10 test JPEGs; medians over sequential requests, the three kinds alternating. Compare rows "
        "within this table (the one above was measured on another day, on a quieter machine).", "",
        "| request | bytes per image | latency, batch 1 (ms) | throughput, batch 64 (images/s) |", "|---|---|---|---|",
        f"| in-process SavedModel call, no HTTP (`serving_default`, uint8) | — | {r['direct_latency_ms']:.1f} | {r['direct_images_per_second']:.0f} |",
        f"| JSON pixels (`serving_default`) | {r['pixels_bytes_per_image']:,.0f} | {r['pixels_latency_ms']:.1f} | {r['pixels_images_per_second']:.0f} |",
        f"| base64 JPEG (`encoded_images`) | {r['jpeg_bytes_per_image']:,.0f} | {r['jpeg_latency_ms']:.1f} | {r['jpeg_images_per_second']:.0f} |",
    ]


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
    parser.add_argument("--only", type=lambda text: text.split(","), default=list(KINDS),
                        help=f"comma-separated parts to measure again (the others keep their last figures): {','.join(KINDS)}")
    parser.add_argument("--report_only", action="store_true", help="rewrite the report from benchmarks/results.json")
    args = parser.parse_args()
    unknown = set(args.only) - set(KINDS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; valid: {', '.join(KINDS)}")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    out = os.path.join(HERE, "results.json")
    previous = []
    if os.path.exists(out):
        with open(out) as f:
            previous = json.load(f)
    if args.report_only:
        records = previous
    else:
        kinds = ["train"] if args.quick else args.only
        records = run(kinds, args.quick, args.repeats or (1 if args.quick else 2), args.data_dir, out, previous)
    print(report(records, os.path.join(ROOT, "BENCHMARKS.md"), os.path.join(HERE, "benchmarks.png")))


if __name__ == "__main__":
    main()
