"""Where a training step's time goes on the torch backend, against native PyTorch (torch.profiler).

    KERAS_BACKEND=torch python -m benchmarks.profile_torch --depth=164 [--channels_first]

Prints the operators with the most self CPU time for one ResNet training step of each.
"""

import argparse

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile


def top_ops(step, rows):
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3
    return total, table


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=164)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels_first", action="store_true")
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    import keras

    import keras_preact
    from benchmarks.native_torch import PreActResNet
    from keras_preact.training.recipe import TorchSGD

    if args.channels_first:
        keras.config.set_image_data_format("channels_first")
    shape = (3, 32, 32) if args.channels_first else (32, 32, 3)
    model = keras_preact.PreActResNet(args.depth, block="bottleneck", input_shape=shape)
    model.compile(optimizer=TorchSGD(0.01), loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(args.batch, *shape)).astype("float32")
    y = np.arange(args.batch) % 10
    total, table = top_ops(lambda: model.train_on_batch(x, y), args.rows)
    print(f"keras_preact, torch backend ({'channels-first' if args.channels_first else 'channels-last'}): {total:.0f} ms self CPU per step")
    print(table)

    native = PreActResNet(args.depth, bottleneck=True).train()
    optimizer = torch.optim.SGD(native.parameters(), lr=0.01, momentum=0.9)
    xt, yt = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(native(xt), yt).backward()
        optimizer.step()

    total, table = top_ops(step, args.rows)
    print(f"native PyTorch (contiguous): {total:.0f} ms self CPU per step")
    print(table)


if __name__ == "__main__":
    main()
