#!/usr/bin/env bash
# Downloads keras and the pure-Python/binary wheels it needs for the GPU machine (Python 3.12,
# x86_64), so benchmarks/gpu.sh can install it without network. Run on a networked machine.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf wheels && mkdir wheels
pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d wheels \
    keras==3.15.1 absl-py namex optree rich h5py ml-dtypes packaging
du -sh wheels
