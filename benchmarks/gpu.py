"""Training throughput and peak memory on a GPU: keras_preact on JAX or torch, or native PyTorch.

Synthetic batches already on the device, mixed bfloat16, compiled steps (XLA on JAX; on torch
`--step`: Keras' eager step, the whole step as one CUDA graph as a run takes it with
`step_capture="cuda_graph"`, or `torch.compile`); the native baseline in its variants,
the step captured as one CUDA graph among them (`native_throughput`). keras_preact is timed through `fit` — the
path a run takes — with no per-step callback, so Keras dispatches steps without waiting for the
device. Needs no TensorFlow. `benchmarks/gpu.sh` runs it; it prints one JSON line per measurement.

    KERAS_BACKEND=jax python benchmarks/gpu.py --depth=164 --batch=128
    KERAS_BACKEND=torch python benchmarks/gpu.py --depth=1001 --batch=128 --remat
    KERAS_BACKEND=torch python benchmarks/gpu.py --depth=164 --step=cuda_graph       # the captured step
    python benchmarks/gpu.py --impl=native --depth=164 --batch=128          # channels-last, bf16: eager and CUDA graph
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def synchronize(model):
    """Waits until the device has finished `model`'s last step: steps run asynchronously, so a
    clock read without waiting times their dispatch, not their work."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        jax.block_until_ready([variable.value for variable in model.variables])
    else:
        _torch_synchronize()


def _torch_synchronize():
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def peak_memory_gib():
    """Peak device memory of this process in GiB, or None on a CPU (no device allocator to ask)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats()
        return stats["peak_bytes_in_use"] / 2**30 if stats and "peak_bytes_in_use" in stats else None
    return _torch_peak_memory_gib()


def _torch_peak_memory_gib():
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def static_shapes_for_torch_compile():
    """On torch, before `jit_compile=True`: one static graph per input shape.

    Keras' torch layers break dynamo's graph at every layer call, so each unit is compiled on its
    own; once a unit's code has seen two shapes dynamo makes them symbolic, and inductor then
    failed on CPU in bfloat16 ("cannot determine truth value of Relational: 16*s50*s69 < 16").
    """
    import keras

    if keras.backend.backend() == "torch":
        import torch._dynamo

        torch._dynamo.config.automatic_dynamic_shapes = False


def device_name():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return str(jax.local_devices()[0].device_kind)
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def keras_throughput(args):
    import keras
    import numpy as np

    from keras_preact.choices import PRECISIONS, default_block
    from keras_preact.model.builders import PreActResNet
    from keras_preact.training.recipe import TorchSGD

    class SameBatch(keras.utils.PyDataset):
        """One batch on the device, `steps` times: the step's cost without the input pipeline's."""

        def __init__(self, x, y, steps):
            super().__init__()
            self.x, self.y, self.steps = x, y, steps

        def __len__(self):
            return self.steps

        def __getitem__(self, index):
            return self.x, self.y

    class EpochSeconds(keras.callbacks.Callback):
        """Wall seconds of each epoch, the device drained at both ends (epoch hooks only: no sync per step)."""

        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            synchronize(self.model)
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            synchronize(self.model)
            self.seconds.append(time.perf_counter() - self.start)

    if args.step == "compile":
        static_shapes_for_torch_compile()
    start = time.perf_counter()
    model = PreActResNet(args.depth, block=default_block(args.depth), remat=args.remat, scan_units=args.scan_units,
                         dtype=PRECISIONS[args.precision])
    build_seconds = time.perf_counter() - start
    model.compile(optimizer=TorchSGD(0.1, momentum=0.9, coupled_weight_decay=1e-4), loss="sparse_categorical_crossentropy",
                  jit_compile=args.compile)
    step = _captured_step(model) if args.step == "cuda_graph" else None
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.normal(size=(args.batch, 32, 32, 3)).astype("float32"))
    y = keras.ops.convert_to_tensor(rng.integers(0, 10, size=args.batch).astype("int32"))
    timer = EpochSeconds()
    # Epoch 1 traces and compiles; the others are timed.
    model.fit(SameBatch(x, y, args.steps), epochs=1 + args.repeats, shuffle=False, callbacks=[timer], verbose=0)
    seconds = statistics.median(timer.seconds[1:]) / args.steps
    return {"impl": f"keras_preact/{keras.backend.backend()}", "build_seconds": build_seconds,
            "first_epoch_seconds": timer.seconds[0], "step_ms": 1000 * seconds, "images_per_second": args.batch / seconds,
            "peak_gib": peak_memory_gib(), "device": device_name(), "parameters": model.count_params(),
            **({} if step is None else _capture_record(step))}


def _captured_step(model):
    """The step as a run with step_capture="cuda_graph" takes it (`training.step_capture`),
    installed as the model's train_function; eager where there is no CUDA device."""
    import torch

    from keras_preact.training import step_capture

    mode = "cuda_graph" if torch.cuda.is_available() else "eager"
    step = step_capture.CapturedStep(model.train_step, step_capture.graphs_for(mode))
    model.train_function = step.keras_train_function
    return step


def _capture_record(step):
    summary = step.summary()
    record = {"captured": summary["replayed_steps"] > 0, "capture_seconds": summary["capture_seconds"],
              "replayed_steps": summary["replayed_steps"], "eager_steps": summary["eager_steps"]}
    if summary["fallbacks"]:
        record["note"] = "; ".join(summary["fallbacks"])
    elif not record["captured"]:
        record["note"] = "no CUDA device: ran eagerly"
    return record


def native_throughput(args):
    """Native PyTorch ResNet-164 (channels-last, bf16 autocast), one JSON record per variant in
    `args.native`: `eager`; `cuda_graph`, the whole step (forward, backward, SGD) captured once with
    `torch.cuda.CUDAGraph` and replayed on static inputs, as a PyTorch user who cares about launch
    overhead writes it (~500 layers, launch-bound otherwise); `compiled`, `torch.compile` with
    mode="reduce-overhead" (inductor kernels, replayed as CUDA graphs). Each reports its setup
    seconds (first steps, capture or compilation) beside its images/s. Without a CUDA device the
    graph variants run uncaptured and say so."""
    import torch

    from benchmarks.native_torch import PreActResNet
    from keras_preact.choices import default_block

    device = "cuda" if torch.cuda.is_available() else "cpu"
    records = []
    for variant in args.native.split(","):
        torch.manual_seed(0)
        model = PreActResNet(args.depth, default_block(args.depth) == "bottleneck").to(device, memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True)
        forward = torch.compile(model, mode="reduce-overhead") if variant == "compiled" else model
        x = torch.randn(args.batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch,), device=device)

        def step():
            # No autocast weight cache: a captured graph must not hold tensors cast outside it.
            with torch.autocast(device, dtype=torch.bfloat16, enabled=args.precision == "bfloat16", cache_enabled=False):
                loss = torch.nn.functional.cross_entropy(forward(x), y)
            loss.backward()
            optimizer.step()

        def eager_step():
            step()
            optimizer.zero_grad(set_to_none=True)

        start = time.perf_counter()
        if variant == "cuda_graph" and device == "cuda":
            run, captured = _captured(step, eager_step, optimizer), True
        else:
            run, captured = eager_step, variant == "compiled" and device == "cuda"
        for _ in range(3):
            run()
        _torch_synchronize()
        setup_seconds = time.perf_counter() - start
        seconds = _median_step_seconds(run, args.steps, args.repeats)
        records.append({"impl": f"native_torch/{variant}", "captured": captured, "setup_seconds": setup_seconds,
                        "step_ms": 1000 * seconds, "images_per_second": args.batch / seconds,
                        "peak_gib": _torch_peak_memory_gib(),
                        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                        **({} if captured or variant == "eager" else {"note": "no CUDA device: ran uncaptured"})})
    return records


def _captured(step, eager_step, optimizer):
    """`step` captured as one CUDA graph, its replay returned. PyTorch's recipe for whole-network
    capture: warm-up steps on a side stream (the optimizer's state exists before capture), then the
    gradients set to None, so that the captured backward writes them afresh at each replay."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            eager_step()
    torch.cuda.current_stream().wait_stream(stream)
    optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _median_step_seconds(run, steps, repeats):
    repeats_seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            run()
        _torch_synchronize()
        repeats_seconds.append((time.perf_counter() - start) / steps)
    return statistics.median(repeats_seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", choices=["keras", "native"], default="keras")
    parser.add_argument("--native", default="eager,cuda_graph",
                        help="native variants, comma-separated: eager, cuda_graph, compiled (torch.compile reduce-overhead)")
    parser.add_argument("--depth", type=int, default=164)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (the median counts)")
    parser.add_argument("--remat", action="store_true", help="keras_preact only: recompute each unit in the backward pass")
    parser.add_argument("--scan_units", action="store_true",
                        help="keras_preact only: each stage's units after its first as one scan (compiled once)")
    parser.add_argument("--precision", choices=["none", "bfloat16"], default="bfloat16")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="keras_preact: XLA on JAX, torch.compile on torch (the default of --step)")
    parser.add_argument("--step", choices=["eager", "cuda_graph", "compile"],
                        help="keras_preact on torch: Keras' eager step, the whole step as one CUDA graph "
                             "(training.step_capture), or torch.compile (default: compile with --compile, else eager)")
    args = parser.parse_args()
    import keras

    if args.step is not None and (args.impl != "keras" or keras.backend.backend() != "torch"):
        parser.error("--step chooses keras_preact's torch step: give it with KERAS_BACKEND=torch and --impl=keras")
    if keras.backend.backend() == "torch":
        args.step = args.step or ("compile" if args.compile else "eager")
        args.compile = args.step == "compile"
    config = {"depth": args.depth, "batch": args.batch, "precision": args.precision}
    if args.impl == "native":
        records = native_throughput(args)
    else:
        step = {"train_step": args.step} if args.step else {}
        records = [{"remat": args.remat, "scan_units": args.scan_units, "compile": args.compile, **step, **keras_throughput(args)}]
    for record in records:
        print(json.dumps({"kind": "throughput", **config, **record}), flush=True)


if __name__ == "__main__":
    main()
