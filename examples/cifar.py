"""Trains a pre-activation ResNet on CIFAR-10/100 with the paper's recipe, evaluates and exports:
the example behind the installed command `keras-preact-train` (`keras_preact/train.py`), with the
same flags (`python examples/cifar.py --help`).

    python examples/cifar.py                                   # ResNet-164, CIFAR-10, paper recipe
    python examples/cifar.py --depth=1001 --dataset=cifar100 --recipe=official
    python examples/cifar.py --data_dir=../shared/data/cifar10-jpeg --depth=20 --epochs=3
    KERAS_BACKEND=jax python examples/cifar.py --data_dir=DIR --input_pipeline=device   # no TensorFlow needed

Start the same command again after an interruption: it resumes after the last finished epoch.
"""

import sys

from keras_preact.train import main

if __name__ == "__main__":
    sys.exit(main(prog="examples/cifar.py"))
