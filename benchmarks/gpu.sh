#!/usr/bin/env bash
# The package on one GPU machine (one H100/H200, Python 3.12, CUDA builds of jax and torch, no
# TensorFlow, no Keras, no network), in one device call per mode:
#
#   benchmarks/gpu.sh prove       # <= 8 min: timeout_s 480
#   benchmarks/gpu.sh reproduce   # <= 9.5 min: timeout_s 570
#
# prove      a short `examples/cifar.py` run on JAX and on torch through the device input pipeline
#            (bf16, to results.json and weights: no crash after the last step); ResNet-164 images/s
#            at batch 128, bf16, of native PyTorch (eager and the whole step as one CUDA graph:
#            the fair anchor), keras_preact on JAX and on torch (eager, and the whole step captured
#            as one CUDA graph as a run takes it), with their ratios to the best native variant;
#            ResNet-1001 peak memory with and without remat (JAX: with its stacked units compiled
#            once, `--scan_units`).
# reproduce  Table 4's ResNet-164 row: `examples/cifar.py` as a user runs it (device pipeline,
#            bf16, the paper's recipe: 64k iterations at batch 128) on the full CIFAR-10; the
#            trained weights and their record come back as the preset files
#            preact_resnet164.cifar10.weights.h5 and preact_resnet164.cifar10.json (test_error, date, device,
#            paper_error), with the run's history.csv.
#
# Needs benchmarks/carry/ from benchmarks/prepare_gpu.sh (Keras wheels; CIFAR-10 as a .tar.gz):
# on the device tool, carry ["benchmarks/carry"]. Every step runs under a cap inside the mode's
# budget (BUDGET_S: 450 s for prove, 555 s for reproduce) and writes a JSON line when it ends —
# its measurement, or why it failed or was skipped — so the call returns before its limit with
# what it measured. Results (at most 6 files) in ${OUT:-benchmarks/gpu_out}: gpu_results.jsonl (the
# JSON lines), gpu_log.txt (all output), gpu_device.txt, and reproduce's three files.
# DRY_RUN=1: both modes on the CPU in tiny form (the sample folder, depth 8/11, a few steps; no
# install; no caps but the budget); the sizes below may be set in the environment either way.
# ONLY=step1,step2 runs those steps alone. The tests run it.
set -uo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: [BUDGET_S=SECONDS] $0 prove|reproduce: $1" >&2; exit 2; }
(($# == 1)) || usage "takes one mode, got $# argument(s)${*:+: $*}"
mode=$1
case $mode in
prove) budget=${BUDGET_S-450} ;;
reproduce) budget=${BUDGET_S-555} ;;
*) usage "unknown mode '$mode'" ;;
esac
# Bash's arithmetic reads any text as a number (0 for a name): only whole seconds, 1 to 6 digits.
[[ $budget =~ ^[1-9][0-9]{0,5}$ ]] || usage "BUDGET_S must be whole seconds from 1 to 999999, got '$budget'"
out=${OUT:-benchmarks/gpu_out}
mkdir -p "$out"
results=$out/gpu_results.jsonl
log=$out/gpu_log.txt
: >"$results"
: >"$log"
python=${PYTHON:-python3}
runs=${RUNS_DIR:-/tmp/keras_preact_gpu_runs}
rm -rf "$runs"
export PYTHONUNBUFFERED=1

note() { echo "$1" | tee -a "$results"; }

# step NAME CAP BACKEND COMMAND...: COMMAND under KERAS_BACKEND=BACKEND for at most CAP seconds (or
# what the budget has left), its JSON lines tagged with NAME.
step() {
    local name=$1 cap=$2 backend=$3
    shift 3
    if [[ -n ${ONLY:-} && ,$ONLY, != *,$name,* ]]; then return; fi
    local left=$((budget - SECONDS - 5))
    # The caps are sized for the GPU; a dry run on a CPU has only the budget.
    ((cap > left)) || [[ ${DRY_RUN:-0} == 1 ]] && cap=$left
    if ((cap < 15)); then
        note "{\"step\": \"$name\", \"error\": \"skipped: ${left} s of the ${budget} s budget left\"}"
        return
    fi
    echo "== $name: at most ${cap} s, from ${SECONDS} s" | tee -a "$log" >&2
    local started=$SECONDS errors=$out/.step_stderr
    KERAS_BACKEND=$backend timeout -k 10 "$cap" "$@" 2>"$errors" | tee -a "$log" | sed -u -n "s/^{/{\"step\": \"$name\", /p" | tee -a "$results"
    local status=${PIPESTATUS[0]}
    cat "$errors" >>"$log"
    if ((status == 124 || status == 137)); then
        note "{\"step\": \"$name\", \"error\": \"stopped at its cap of ${cap} s\"}"
    elif ((status)); then
        local last  # the error: the last unindented line the step wrote to stderr
        last=$(grep -v '^[[:space:]]' "$errors" | grep -v '^\^' | tail -1 | tr -cd '[:print:]' | tr -d '"\\' | cut -c1-300)
        note "{\"step\": \"$name\", \"error\": \"exit $status after $((SECONDS - started)) s: $last\"}"
    fi
    rm -f "$errors"
}

# train NAME CAP BACKEND PRESET FLAGS...: examples/cifar.py as a user runs it (device pipeline,
# bf16) into $runs/NAME, then its results.json as a JSON line; with a PRESET name, also the weights
# and their record as that preset's files in $out (benchmarks/gpu_record.py).
train() {
    local name=$1 cap=$2 backend=$3 preset=$4
    shift 4
    # shellcheck disable=SC2016
    step "$name" "$cap" "$backend" bash -c '"$0" examples/cifar.py --input_pipeline=device --mixed_precision=bfloat16 \
        --verbosity=warning --model_dir="$1" "${@:4}" && "$0" benchmarks/gpu_record.py --model_dir="$1" ${3:+--preset --out="$2"}' \
        "$python" "$runs/$name" "$out" "$preset" "--data_dir=$data" "$@"
}

if [[ ${DRY_RUN:-0} == 1 ]]; then
    data=tests/data/cifar10-sample
    : "${R164_DEPTH:=11}" "${R1001_DEPTH:=11}" "${BENCH_BATCH:=10}" "${BENCH_STEPS:=2}" "${BENCH_REPEATS:=1}"
    : "${PROVE_TRAIN:=--depth=8 --epochs=2 --batch_size=10}" "${REPRODUCE_TRAIN:=--depth=11 --epochs=1 --batch_size=10}"
    export PYTHONPATH=${PYTHONPATH:-$PWD}
else
    $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        benchmarks/carry/wheels/*.whl 2>&1 | tail -3 ||
        { note '{"error": "installing benchmarks/carry/wheels failed: run benchmarks/prepare_gpu.sh and carry benchmarks/carry"}'; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu_device.txt"
    tar xzf benchmarks/carry/cifar10-jpeg.tar.gz -C /tmp || { note '{"error": "no benchmarks/carry/cifar10-jpeg.tar.gz"}'; exit 1; }
    data=/tmp/cifar10-jpeg
fi
# The paper's ResNet-164 and ResNet-1001 at batch 128, 30 timed steps twice; prove trains ResNet-20
# for 2 epochs of 10,000 images; reproduce trains the paper's whole schedule.
r164=${R164_DEPTH:-164} r1001=${R1001_DEPTH:-1001} batch=${BENCH_BATCH:-128}
timing="--steps=${BENCH_STEPS:-30} --repeats=${BENCH_REPEATS:-2}"
KERAS_BACKEND=jax $python -c "import sys, jax, torch, keras, numpy, PIL; print(f'python {sys.version.split()[0]} | jax {jax.__version__} | torch {torch.__version__} | keras {keras.__version__} | numpy {numpy.__version__} | pillow {PIL.__version__}')" 2>&1 | tee -a "$log"

# shellcheck disable=SC2086
case $mode in
prove)
    train train_jax 120 jax "" ${PROVE_TRAIN:---depth=20 --epochs=2 --train_subset=10000}
    train train_torch 120 torch "" ${PROVE_TRAIN:---depth=20 --epochs=2 --train_subset=10000}
    step native_r164 75 torch $python benchmarks/gpu.py --impl=native --native=eager,cuda_graph --depth=$r164 --batch=$batch $timing
    step jax_r164 100 jax $python benchmarks/gpu.py --depth=$r164 --batch=$batch $timing
    step torch_r164 60 torch $python benchmarks/gpu.py --depth=$r164 --batch=$batch $timing --step=eager
    # The whole step as one CUDA graph, as a run takes it (step_capture): its capture seconds beside its images/s.
    step torch_r164_graph 60 torch $python benchmarks/gpu.py --depth=$r164 --batch=$batch $timing --step=cuda_graph
    step ratios 15 jax $python benchmarks/gpu_record.py --ratios="$results"
    # ResNet-1001: 333 units, so few timed steps; eager torch compiles nothing, so it fits.
    few="--steps=${R1001_STEPS:-3} --repeats=1"
    step torch_r1001 60 torch $python benchmarks/gpu.py --depth=$r1001 --batch=$batch --no-compile $few
    step torch_r1001_remat 60 torch $python benchmarks/gpu.py --depth=$r1001 --batch=$batch --no-compile --remat $few
    step jax_r1001_remat 120 jax $python benchmarks/gpu.py --depth=$r1001 --batch=$batch --remat --scan_units $few
    ;;
reproduce)
    train reproduce 100000 jax preset ${REPRODUCE_TRAIN:---depth=164}
    cp "$runs/reproduce/history.csv" "$out/reproduce_history.csv" 2>/dev/null
    ;;
esac
echo "== done at ${SECONDS} s of ${budget} s: $results" >&2
