#!/usr/bin/env bash
# One call proves the package on a GPU machine: one H100/H200, Python 3.12, CUDA builds of jax and
# torch, no TensorFlow, no Keras, no network.
#
#   benchmarks/gpu.sh [all|throughput|train]
#
# throughput  keras_preact ResNet-164 at batch 128 on JAX (XLA) and torch, and native PyTorch
#             (channels-last, bfloat16, torch.compile) in the same call; ResNet-1001 at batch 128
#             with and without remat; all mixed bfloat16, with peak GPU memory (benchmarks/gpu.py).
# train       time to accuracy on the real CIFAR-10 with the on-device input pipeline
#             (benchmarks/gpu_train.py): TRAIN_DEPTH (default 164), TRAIN_EPOCHS (the recipe's 164),
#             TRAIN_BACKEND (jax): the paper's ResNet-164 schedule, for a call of its own.
# all         (default) the ResNet-164 throughputs, then the training run that fits beside them
#             (ResNet-20, the paper's recipe compressed to TRAIN_EPOCHS=30, with the projection to
#             the full schedule), then ResNet-1001 and a torch.compile attempt as time allows.
#
# Needs benchmarks/carry/ from benchmarks/prepare_gpu.sh (Keras wheels; CIFAR-10 as a .tar.gz).
# On the device tool: command "bash benchmarks/gpu.sh all", carry ["benchmarks/carry"], timeout_s
# 600. Every step runs under a cap inside BUDGET_S (default 560 s); one that fails or runs out of
# time leaves a JSON line saying so, and the rest go on. ONLY=step1,step2 runs those steps alone.
# Results: JSON lines on stdout and in ${OUT:-benchmarks/gpu_out}/gpu_results.jsonl, the whole
# output in gpu_log.txt beside it, the GPU in gpu_device.txt.
# DRY_RUN=1: every step on the CPU in tiny form (depth 8/11, the sample folder, no install); the
# tests run it.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}
case $mode in all | throughput | train) ;; *) echo "usage: $0 [all|throughput|train]" >&2; exit 2 ;; esac
out=${OUT:-benchmarks/gpu_out}
mkdir -p "$out"
results=$out/gpu_results.jsonl
log=$out/gpu_log.txt
: >"$results"
: >"$log"
budget=${BUDGET_S:-560}
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3

note() { echo "$1" | tee -a "$results"; }

# step NAME CAP BACKEND COMMAND...: COMMAND under KERAS_BACKEND=BACKEND for at most CAP seconds (or
# what the budget has left), its JSON lines tagged with NAME.
step() {
    local name=$1 cap=$2 backend=$3
    shift 3
    if [[ -n ${ONLY:-} && ,$ONLY, != *,$name,* ]]; then return; fi
    local left=$((budget - SECONDS - 5))
    ((cap > left)) && cap=$left
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

if [[ ${DRY_RUN:-0} == 1 ]]; then
    data=tests/data/cifar10-sample
    r164=11 r1001=11 batch=10 timing="--steps=2 --repeats=1" native_compile=--no-compile
    # A target of 100% is met at once: the time-to-target path runs too.
    train_arguments="--depth=8 --epochs=1 --train_subset=20 --batch_size=10 --target_error=100"
    all_train_arguments=$train_arguments
else
    $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        benchmarks/carry/wheels/*.whl 2>&1 | tail -3 ||
        { note '{"error": "installing benchmarks/carry/wheels failed: run benchmarks/prepare_gpu.sh and carry benchmarks/carry"}'; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu_device.txt"
    tar xzf benchmarks/carry/cifar10-jpeg.tar.gz -C /tmp || { note '{"error": "no benchmarks/carry/cifar10-jpeg.tar.gz"}'; exit 1; }
    data=/tmp/cifar10-jpeg
    r164=164 r1001=1001 batch=128 timing="--steps=30 --repeats=2" native_compile=--compile
    train_arguments="--depth=${TRAIN_DEPTH:-164} ${TRAIN_EPOCHS:+--epochs=$TRAIN_EPOCHS}"
    all_train_arguments="--depth=${TRAIN_DEPTH:-20} --epochs=${TRAIN_EPOCHS:-30}"
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
KERAS_BACKEND=jax $python -c "import sys, jax, torch, keras, numpy, PIL; print(f'python {sys.version.split()[0]} | jax {jax.__version__} | torch {torch.__version__} | keras {keras.__version__} | numpy {numpy.__version__} | pillow {PIL.__version__}')" 2>&1 | tee -a "$log"

throughput_core() {
    step native_r164 75 torch $python benchmarks/gpu.py --impl=native --depth=$r164 --batch=$batch $timing $native_compile
    step jax_r164 110 jax $python benchmarks/gpu.py --depth=$r164 --batch=$batch $timing
    step torch_r164 80 torch $python benchmarks/gpu.py --depth=$r164 --batch=$batch $timing --no-compile
}

throughput_extra() {
    # ResNet-1001: 333 units, so fewer timed steps; remat keeps only each unit's input.
    local few="--steps=${R1001_STEPS:-10} --repeats=1"
    [[ ${DRY_RUN:-0} == 1 ]] && few=$timing
    step jax_r1001_remat 120 jax $python benchmarks/gpu.py --depth=$r1001 --batch=$batch --remat $few
    step torch_r1001_remat 75 torch $python benchmarks/gpu.py --depth=$r1001 --batch=$batch --remat --no-compile $few
    step torch_r1001 60 torch $python benchmarks/gpu.py --depth=$r1001 --batch=$batch --no-compile $few
    step jax_r1001 120 jax $python benchmarks/gpu.py --depth=$r1001 --batch=$batch $few
    # Keras' torch layers break dynamo's graph at every layer: compiling may not pay (last).
    [[ ${DRY_RUN:-0} == 1 ]] || step torch_r164_compiled 150 torch $python benchmarks/gpu.py --depth=$r164 --batch=$batch $timing --compile
}

# shellcheck disable=SC2086
case $mode in
throughput)
    throughput_core
    throughput_extra
    ;;
train) step train 100000 "${TRAIN_BACKEND:-jax}" $python benchmarks/gpu_train.py --data_dir=$data $train_arguments ;;
all)
    throughput_core
    step train 170 "${TRAIN_BACKEND:-jax}" $python benchmarks/gpu_train.py --data_dir=$data $all_train_arguments
    throughput_extra
    ;;
esac
echo "== done at ${SECONDS} s of ${budget} s: $results" >&2
