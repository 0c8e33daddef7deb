"""The main job in plain PyTorch: the baseline `examples/cifar.py` is timed against, end to end.

Same network (`native_torch.PreActResNet`, channels-last, the official init), recipe (the paper's,
compressed to --epochs: warm-up, x0.1 at 1/2 and 3/4, lr scaled with the batch, SGD momentum 0.9
with coupled weight decay 1e-4), data (the JPEG folder, decoded once), per-image augmentation
(flip, 4-pixel zero pad in normalised space, random crop) and a test-set evaluation per epoch.
Prints one JSON line.

    python benchmarks/native_cifar.py --data_dir=../shared/data/cifar10-jpeg --depth=20 --epochs=1
"""

import argparse
import concurrent.futures
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from native_torch import PreActResNet  # noqa: E402

MEAN, STD = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)  # fb.resnet.torch's CIFAR-10 constants


def read_split(folder):
    classes = sorted(c for c in os.listdir(folder) if not c.startswith("."))
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(folder, name)) if f.lower().endswith((".jpg", ".png")))
        paths += [os.path.join(folder, name, f) for f in files]
        labels += [label] * len(files)
    with concurrent.futures.ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:  # PIL releases the GIL
        images = list(pool.map(lambda p: np.asarray(Image.open(p).convert("RGB")), paths))
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


def normalise(images):  # uint8 NHWC -> float NHWC
    return (images.float() - torch.tensor(MEAN)) / torch.tensor(STD)


def augment(images, generator):
    """Per image: random flip, zero pad 4 (normalised space), random 32x32 crop. NHWC in and out."""
    n = len(images)
    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(2), images)
    padded = torch.nn.functional.pad(images, (0, 0, 4, 4, 4, 4))
    dy, dx = (torch.randint(0, 9, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(32))[:, :, None]
    cols = (dx[:, None] + torch.arange(32))[:, None, :]
    return padded[torch.arange(n)[:, None, None], rows, cols]


def official_init(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            torch.nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(module, torch.nn.Linear):
            torch.nn.init.zeros_(module.bias)


def to_model(batch):  # NHWC -> NCHW view in channels-last memory
    return batch.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    train_x, train_y = read_split(os.path.join(args.data_dir, "train"))
    test_x, test_y = read_split(os.path.join(args.data_dir, "test"))
    decode_seconds = time.perf_counter() - started
    train_x, test_x = normalise(train_x), to_model(normalise(test_x))

    model = PreActResNet(args.depth, bottleneck=(args.depth - 2) % 6 != 0).to(memory_format=torch.channels_last)
    official_init(model)
    steps = len(train_x) // args.batch_size
    total = steps * args.epochs
    scale = args.batch_size / 128
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1 * scale, momentum=0.9, weight_decay=1e-4)
    warmup, drops = math.ceil(400 / 64000 * total), [round(0.5 * total), round(0.75 * total)]

    def rate(step):  # the paper's: 0.01 during the warm-up, then 0.1, x0.1 at each drop
        return 0.01 if step < warmup else 0.1 * 0.1 ** sum(step >= d for d in drops)

    loss_fn = torch.nn.CrossEntropyLoss()
    step, rates, test_error = 0, [], None
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for index in range(steps):
            if index == 1:  # as keras_preact counts: from the end of the first step
                epoch_start = time.perf_counter()
            chosen = order[index * args.batch_size : (index + 1) * args.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = rate(step) * scale
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(to_model(augment(train_x[chosen], generator))), train_y[chosen])
            loss.backward()
            optimizer.step()
            step += 1
        rates.append((steps - 1) * args.batch_size / (time.perf_counter() - epoch_start))
        model.eval()
        with torch.no_grad():
            correct = sum(
                int((model(test_x[i : i + 500]).argmax(1) == test_y[i : i + 500]).sum()) for i in range(0, len(test_x), 500)
            )
        test_error = 100.0 * (1 - correct / len(test_x))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "wall_seconds": time.perf_counter() - started, "decode_seconds": decode_seconds,
        "train_images_per_second": float(np.median(rates)), "test_error": test_error,
        "user_seconds": usage.ru_utime, "system_seconds": usage.ru_stime, "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
