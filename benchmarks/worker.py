"""One measurement in a fresh process; prints one JSON line. The orchestrator (`__main__`) runs it.

    python -m benchmarks.worker train --impl=keras --depth=164 --batch=64 [--jit] [--channels_first]
    python -m benchmarks.worker train --impl=torch --depth=164 --batch=64 [--channels_last]
    python -m benchmarks.worker pipeline --data_dir=../shared/data/cifar10-jpeg [--input_pipeline=device]
    python -m benchmarks.worker build --depth=1001
    python -m benchmarks.worker serving --depth=164
    python -m benchmarks.worker rest --depth=164 --data_dir=../shared/data/cifar10-jpeg
"""

import argparse
import json
import os
import resource
import time

import numpy as np

from keras_preact.choices import default_block


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_steps(step, warmup, steps):
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def train_keras(args):
    import keras

    import keras_preact
    from keras_preact.training.recipe import TorchSGD

    if args.channels_first:
        keras.config.set_image_data_format("channels_first")
    shape = (3, 32, 32) if args.channels_first else (32, 32, 3)
    start = time.perf_counter()
    model = keras_preact.PreActResNet(args.depth, block=default_block(args.depth), input_shape=shape, remat=args.remat)
    build_seconds = time.perf_counter() - start
    model.compile(optimizer=TorchSGD(0.01), loss="sparse_categorical_crossentropy", jit_compile=args.jit)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, *shape)).astype("float32")
    y = rng.integers(0, 10, size=args.batch)
    seconds = timed_steps(lambda: model.train_on_batch(x, y), args.warmup, args.steps)
    return {"backend": keras.backend.backend(), "parameters": model.count_params(), "build_seconds": build_seconds,
            "step_seconds": seconds, "images_per_second": args.batch / seconds}


def train_torch(args):
    import torch

    from benchmarks.native_torch import PreActResNet, parameter_counts

    bottleneck = default_block(args.depth) == "bottleneck"
    model = PreActResNet(args.depth, bottleneck)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(args.batch, 3, 32, 32).to(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    seconds = timed_steps(step, args.warmup, args.steps)
    return {"backend": "native torch", "parameters": parameter_counts(model)[1], "torch_threads": torch.get_num_threads(),
            "step_seconds": seconds, "images_per_second": args.batch / seconds}


def pipeline(args):
    """Training batches per second of an input pipeline (tf_data, or device on this backend)."""
    import keras

    from keras_preact import choices
    from keras_preact.training import pipelines

    source = pipelines.get(args.input_pipeline)
    start = time.perf_counter()
    train, _ = source.load("cifar10", args.data_dir)
    decode = time.perf_counter() - start
    dataset = source.train_batches(train, choices.DATASETS["cifar10"], pipelines.BatchPlan(len(train), args.batch), 0, 0)
    batches = len(train) // args.batch
    iterator = iter(dataset)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches - 1):
        images, _ = next(iterator)
    keras.ops.convert_to_numpy(images[:1])  # device batches are made asynchronously: wait for the last
    seconds = time.perf_counter() - start
    return {"backend": keras.backend.backend(), "input_pipeline": pipelines.resolve(args.input_pipeline),
            "decode_seconds": decode, "images_per_second": (batches - 1) * args.batch / seconds}


def build(args):
    import keras

    import keras_preact

    start = time.perf_counter()
    model = keras_preact.PreActResNet(args.depth, block=default_block(args.depth))
    return {"backend": keras.backend.backend(), "build_seconds": time.perf_counter() - start, "layers": len(model.layers)}


def serving(args):
    import tempfile

    import keras
    import tensorflow as tf

    import keras_preact

    model = keras_preact.PreActResNet(args.depth, block=default_block(args.depth))
    path = keras_preact.export_saved_model(model, tempfile.mkdtemp())
    signature = tf.saved_model.load(path).signatures["serving_default"]
    rng = np.random.default_rng(0)
    one = tf.constant(rng.integers(0, 256, size=(1, 32, 32, 3)).astype(np.uint8))
    many = tf.constant(rng.integers(0, 256, size=(256, 32, 32, 3)).astype(np.uint8))
    normalised = rng.normal(size=(256, 32, 32, 3)).astype("float32")
    latency = timed_steps(lambda: signature(images=one), 5, args.steps * 5)
    throughput = 256 / timed_steps(lambda: signature(images=many), 1, args.steps)
    keras_latency = timed_steps(lambda: model.predict(normalised[:1], verbose=0), 3, args.steps * 5)
    keras_throughput = 256 / timed_steps(lambda: model.predict(normalised, batch_size=256, verbose=0), 1, args.steps)
    return {"backend": keras.backend.backend(), "saved_model_latency_ms": 1000 * latency,
            "saved_model_images_per_second": throughput, "keras_predict_latency_ms": 1000 * keras_latency,
            "keras_predict_images_per_second": keras_throughput}


def cpu_model():
    """The CPU's model name and its widest vector instructions, from lscpu."""
    import subprocess

    info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    isa = [name for name, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("AMX", "amx_tile")) if flag in flags]
    return f"{fields.get('Model name', 'unknown').strip()} ({', '.join(isa) or 'no AVX2'}), {os.cpu_count()} cores"


def rest(args):
    """The local REST server (`python -m keras_preact.serve`) on ResNet-`depth`, one client: median
    latency of one image and throughput at batch 64, as JSON pixels and as base64 JPEG files of the
    test folder (request bodies built beforehand)."""
    import base64
    import glob
    import socket
    import subprocess
    import sys
    import tempfile
    import urllib.request

    import keras_preact

    export_dir = tempfile.mkdtemp()
    keras_preact.export_saved_model(keras_preact.PreActResNet(args.depth, block=default_block(args.depth)), export_dir)
    files = sorted(glob.glob(os.path.join(args.data_dir, "test", "*", "*.jpg")))[:64]
    if len(files) < 64:  # the 60-image sample that ships with the tests, repeated
        sample = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "tests", "data", "cifar10-sample", "test", "*", "*.jpg")))
        files = (sample * 2)[:64]
    import tensorflow as tf

    jpegs = [open(f, "rb").read() for f in files]
    pixels = [tf.io.decode_jpeg(data).numpy().tolist() for data in jpegs]
    bodies = {
        "pixels": lambda n: json.dumps({"instances": pixels[:n]}).encode(),
        "jpeg": lambda n: json.dumps({"signature_name": "encoded_images",
                                      "instances": [{"b64": base64.b64encode(d).decode()} for d in jpegs[:n]]}).encode(),
    }
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "keras_preact.serve", f"--export_dir={export_dir}", "--model_name=m", f"--port={port}",
         "--max_batch=64"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1/models/m:predict"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/m", timeout=1)
                break
            except OSError:
                time.sleep(0.2)

        def post(body):
            with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=120) as response:
                assert response.status == 200 and response.read()

        # The same SavedModel called in this process, without HTTP and JSON: the server's overhead.
        signature = tf.saved_model.load(os.path.join(export_dir, "1")).signatures["serving_default"]
        uint8 = np.asarray(pixels, np.uint8)

        def call(batch):
            return lambda: signature(images=tf.constant(uint8[:batch]))

        result = {"cpu": cpu_model(), "depth": args.depth, "date": time.strftime("%Y-%m-%d"),
                  "load_average": os.getloadavg()[0]}
        # The kinds alternate request by request, so that load from elsewhere hits them alike.
        for batch, repeats in ((1, 5 * args.steps), (64, args.steps)):
            requests = {kind: (lambda b=body(batch): post(b)) for kind, body in bodies.items()}
            requests["direct"] = call(batch)
            times = {kind: [] for kind in requests}
            for step in range(2 + repeats):
                for kind, request in requests.items():
                    started = time.perf_counter()
                    request()
                    if step >= 2:
                        times[kind].append(time.perf_counter() - started)
            for kind in requests:
                median = float(np.median(times[kind]))
                if batch == 1:
                    result[f"{kind}_latency_ms"] = 1000 * median
                else:
                    result[f"{kind}_images_per_second"] = batch / median
        result.update({f"{kind}_bytes_per_image": len(body(64)) / 64 for kind, body in bodies.items()})
    finally:
        server.terminate()
        server.wait(timeout=60)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=["train", "pipeline", "build", "serving", "rest"])
    parser.add_argument("--impl", choices=["keras", "torch"], default="keras")
    parser.add_argument("--depth", type=int, default=164)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--jit", action="store_true")
    parser.add_argument("--channels_first", action="store_true")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--data_dir", default=os.path.join("..", "shared", "data", "cifar10-jpeg"))
    parser.add_argument("--input_pipeline", default="tf_data", help="tf_data or device (jax and torch backends)")
    args = parser.parse_args()
    if args.task == "train":
        result = train_torch(args) if args.impl == "torch" else train_keras(args)
    else:
        result = {"pipeline": pipeline, "build": build, "serving": serving, "rest": rest}[args.task](args)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
