#!/usr/bin/env bash
# Fills benchmarks/carry/ (git-ignored) with what benchmarks/gpu.sh needs on a GPU machine that has
# Python 3.12, jax, torch, numpy and Pillow but no Keras and no network: the wheels of Keras and of
# its two needs that machine lacks (namex, optree), and the CIFAR-10 image folder as one .tar.gz
# (19 MB: the JPEGs share their headers). Run it where pip reaches PyPI, then carry the folder:
#
#   benchmarks/prepare_gpu.sh [CIFAR_IMAGE_FOLDER]     # default: ../shared/data/cifar10-jpeg
#
# It ends by checking that the working tree and the carried folder stay under the 60 MiB we allow
# ourselves of the device machine's 64 MiB.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=$(realpath "${1:-$root/../shared/data/cifar10-jpeg}")
[[ -d $data/train && -d $data/test ]] || { echo "$data is not an image folder with train/ and test/" >&2; exit 1; }
carry=$root/benchmarks/carry
rm -rf "$carry" && mkdir -p "$carry/wheels"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$carry/wheels" keras==3.15.1 namex==0.1.0 optree==0.20.0
tar czf "$carry/cifar10-jpeg.tar.gz" -C "$(dirname "$data")" "$(basename "$data")"
carried=$(du -sb --apparent-size "$carry" | cut -f1)
tree=$(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk "{s += \$1} END {print s + 0}")
echo "carry: $((carried / 1024)) KiB ($(ls "$carry/wheels" | tr '\n' ' ')); working tree: $((tree / 1024)) KiB"
if ((carried + tree > 60 * 1024 * 1024)); then
    echo "Together over 60 MiB: the device machine takes 64 MiB at most." >&2
    exit 1
fi
