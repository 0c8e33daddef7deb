#!/usr/bin/env bash
# GPU benchmark for a machine with one GPU, torch and JAX but no TensorFlow and no network.
# Keras and its small pure-Python dependencies come as wheels in benchmarks/wheels (fill it on a
# networked machine with benchmarks/fetch_wheels.sh). Results: JSON lines on stdout and in
# ${OUT:-benchmarks}/gpu_results.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks}/gpu_results.jsonl"
: > "$out"
python3 -m pip install -q --no-index --find-links benchmarks/wheels keras 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "${OUT:-benchmarks}/gpu_device.txt"
python3 -c "import jax, torch, keras; print('jax', jax.__version__, '| torch', torch.__version__, '| keras', keras.__version__)"
for backend in jax torch; do
    for config in "--depth=164 --batch=128" "--depth=1001 --batch=64" "--depth=1001 --batch=64 --remat"; do
        # shellcheck disable=SC2086
        KERAS_BACKEND=$backend timeout 240 python3 benchmarks/gpu.py $config --steps=10 | tee -a "$out" \
            || echo "{\"backend\": \"$backend\", \"config\": \"$config\", \"error\": \"failed or timed out\"}" | tee -a "$out"
    done
done
