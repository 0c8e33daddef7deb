"""GPU throughput and memory of ResNet-164 and ResNet-1001 on the JAX and torch backends.

Synthetic data, mixed bfloat16, compiled train steps (XLA on JAX, torch.compile on torch).
Needs keras_preact's models only (no TensorFlow). Run by benchmarks/gpu.sh; prints JSON lines.

    KERAS_BACKEND=jax python benchmarks/gpu.py --depth=164 --batch=128
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def peak_memory_gib():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**30
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=164)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--precision", default="mixed_bfloat16")
    args = parser.parse_args()
    import keras
    import numpy as np

    from keras_preact.model.builders import PreActResNet
    from keras_preact.training.recipe import TorchSGD

    keras.config.set_dtype_policy(args.precision)
    start = time.perf_counter()
    model = PreActResNet(args.depth, block="bottleneck", remat=args.remat)
    build = time.perf_counter() - start
    model.compile(optimizer=TorchSGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy", jit_compile=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=args.batch)
    start = time.perf_counter()
    model.train_on_batch(x, y)
    compile_seconds = time.perf_counter() - start
    for _ in range(3):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = model.train_on_batch(x, y)
    float(loss)  # wait for the device
    seconds = (time.perf_counter() - start) / args.steps
    print(json.dumps({
        "backend": keras.backend.backend(), "depth": args.depth, "batch": args.batch, "remat": args.remat,
        "precision": args.precision, "images_per_second": args.batch / seconds, "step_ms": 1000 * seconds,
        "peak_gib": peak_memory_gib(), "build_seconds": build, "first_step_seconds": compile_seconds,
    }), flush=True)


if __name__ == "__main__":
    main()
