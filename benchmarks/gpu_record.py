"""JSON lines for `benchmarks/gpu.sh`, from what its steps left behind.

    python benchmarks/gpu_record.py --model_dir=RUN                        # a training run's results
    python benchmarks/gpu_record.py --model_dir=RUN --preset --out=DIR
    python benchmarks/gpu_record.py --ratios=gpu_results.jsonl              # against the best native

`--preset` also writes the run's weights and their record as its preset's two files in DIR
(`keras_preact.model.presets.write_preset`: NAME.weights.h5 and NAME.json, NAME such as
preact_resnet164.cifar10), ready to copy into keras_preact/presets/.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What each line keeps of a run's results.json.
RUN_KEYS = ("backend", "depth", "block", "epochs", "batch_size", "steps", "train_images", "input_pipeline",
            "test_error", "train_images_per_second", "wall_seconds", "placement", "train_step")


def run_record(model_dir):
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    return {"kind": "train", **{key: results.get(key) for key in RUN_KEYS}}


def write_preset(model_dir, out):
    """The run's weights and record as its preset's two files in `out`
    (`keras_preact.model.presets.write_preset`), with this machine's accelerator named."""
    from benchmarks.gpu import device_name
    from keras_preact.model import presets

    name = presets.write_preset(model_dir, out, device=device_name())
    with open(os.path.join(out, f"{name}.json")) as f:
        preset = json.load(f)
    return {"preset": name, "device": preset["device"], "paper_error": preset["paper_error"]}


def ratios(results_path):
    """keras_preact's ResNet images/s over the best native variant measured in the same call."""
    with open(results_path) as f:
        lines = [json.loads(line) for line in f]
    measured = [line for line in lines if line.get("kind") == "throughput" and "images_per_second" in line]
    native = [line for line in measured if line["impl"].startswith("native_torch")]
    if not native:
        raise SystemExit("no native measurement in this call: nothing to compare with")
    best = max(native, key=lambda line: line["images_per_second"])
    keras_lines = [line for line in measured if line["impl"].startswith("keras_preact") and line["depth"] == best["depth"]]
    return {"kind": "ratios", "best_native": best["impl"], "best_native_images_per_second": best["images_per_second"],
            **{line["step"]: round(line["images_per_second"] / best["images_per_second"], 3) for line in keras_lines}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", help="a finished training run's folder")
    parser.add_argument("--preset", action="store_true", help="with --model_dir and --out: write the run's preset files")
    parser.add_argument("--out", help="the folder for the preset files")
    parser.add_argument("--ratios", metavar="JSONL", help="gpu.sh's results so far")
    args = parser.parse_args()
    if bool(args.model_dir) == bool(args.ratios) or bool(args.preset) != bool(args.out) or (args.preset and not args.model_dir):
        parser.error("give --model_dir (with --preset and --out for a preset), or --ratios")
    if args.ratios:
        line = ratios(args.ratios)
    else:
        line = run_record(args.model_dir)
        if args.preset:
            line.update(write_preset(args.model_dir, args.out))
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
