"""JSON lines for `benchmarks/gpu.sh`, from what its steps left behind.

    python benchmarks/gpu_record.py --model_dir=RUN                        # a training run's results
    python benchmarks/gpu_record.py --model_dir=RUN --preset=resnet164_cifar10 --out=DIR
    python benchmarks/gpu_record.py --ratios=gpu_results.jsonl              # against the best native

`--preset` also writes the run's weights and their record as a preset's two files in DIR:
NAME.weights.h5 and NAME.json (test_error, date, device, paper_test_error, and how it was trained).
"""

import argparse
import datetime
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What each line keeps of a run's results.json.
RUN_KEYS = ("backend", "depth", "block", "epochs", "batch_size", "steps", "train_images", "input_pipeline",
            "test_error", "train_images_per_second", "wall_seconds", "placement")


def run_record(model_dir):
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    return {"kind": "train", **{key: results.get(key) for key in RUN_KEYS}}


def paper_test_error(depth):
    """The paper's CIFAR-10 test error (%) of the full pre-activation ResNet at `depth`, if it has one."""
    from keras_preact import choices

    record = choices.VARIANTS["full_preact"]
    return {110: record.paper_resnet110, 164: record.paper_resnet164}.get(depth)


def write_preset(model_dir, record, name, out):
    """NAME.weights.h5 (the run's final weights) and NAME.json in `out`."""
    from benchmarks.gpu import device_name

    shutil.copyfile(os.path.join(model_dir, "model.weights.h5"), os.path.join(out, f"{name}.weights.h5"))
    preset = {"test_error": record["test_error"], "date": datetime.date.today().isoformat(), "device": device_name(),
              "paper_test_error": paper_test_error(record["depth"]),
              **{key: record[key] for key in RUN_KEYS if key != "test_error"}}
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(preset, f, indent=2)
    return {"preset": name, "device": preset["device"], "paper_test_error": preset["paper_test_error"]}


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
    parser.add_argument("--preset", help="with --model_dir and --out: write the preset files NAME.weights.h5 and NAME.json")
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
            line.update(write_preset(args.model_dir, line, args.preset, args.out))
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
