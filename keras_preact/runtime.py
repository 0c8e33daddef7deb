"""Process settings that must be made before a framework starts: TensorFlow's oneDNN kernels and
thread counts that follow the CPUs this process may use.

`keras_preact/__init__.py` calls `configure()` first, before it imports Keras (which imports the
backend).
Every setting is an environment variable the user may set themselves; theirs always wins.

- **oneDNN.** TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with AVX-512
  VNNI/BF16 or AMX. Without them (AVX2 machines such as AMD EPYC) it trains 2.8x slower (measured:
  ResNet-20, one CIFAR-10 epoch, 683 s vs 241 s) and cannot train channels-first convolutions at all.
  The variable is read once, when TensorFlow is imported.
- **TensorFlow's C++ log.** `TF_CPP_MIN_LOG_LEVEL=2` (errors only), so that commands do not open
  with TensorFlow's INFO and WARNING lines. Like oneDNN's, it is read when TensorFlow loads.
  (TensorFlow 2.21 writes a few lines at import before its logging starts, whatever the level.)
- **Threads.** Intra-op thread pools of TensorFlow, PyTorch (OpenMP) and XLA sized to
  `os.sched_getaffinity`, not to the machine's core count: a process pinned to 2 of 64 cores
  must not start 64 threads per pool.
"""

import os
import sys
import warnings

ONEDNN = "TF_ENABLE_ONEDNN_OPTS"
TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"


def cpus():
    """The number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_settings():
    """Environment variables giving each framework's intra-op pool `cpus()` threads."""
    count = str(cpus())
    return {"TF_NUM_INTRAOP_THREADS": count, "OMP_NUM_THREADS": count}


def tensorflow_onednn_enabled():
    """Whether an imported TensorFlow runs its oneDNN kernels (None if it cannot tell)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def cpu_description():
    """The CPU's model name and the ISA extensions that decide TensorFlow's and XLA's kernels."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    isa = [name for name in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if name in flags]
    return {"model": model, "isa": isa}


def describe():
    """What decides this process's speed: CPU, usable CPUs, thread settings, oneDNN's state."""
    info = {**cpu_description(), "cpus": cpus()}
    info.update({name: os.environ.get(name) for name in (*thread_settings(), ONEDNN)})
    if "tensorflow" in sys.modules:
        info["tensorflow_onednn"] = tensorflow_onednn_enabled()
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    return info


def configure():
    """Applies the settings above; warns once where TensorFlow was imported too early for them."""
    for name, value in {**thread_settings(), TF_LOG_LEVEL: "2"}.items():
        os.environ.setdefault(name, value)
    if ONEDNN in os.environ:
        return  # the user's choice, "0" included
    if "tensorflow" not in sys.modules:
        os.environ[ONEDNN] = "1"
    elif tensorflow_onednn_enabled() is False:
        warnings.warn(
            "TensorFlow was imported before keras_preact with its oneDNN kernels off (this CPU has no "
            "AVX-512 VNNI/AMX, where TensorFlow leaves them off). Training is about 2.8x slower so. "
            f"Set {ONEDNN}=1 in the environment, or import keras_preact before TensorFlow and Keras.",
            RuntimeWarning,
            stacklevel=3,
        )


def return_freed_memory(threshold=1 << 20, arenas=2):
    """glibc's allocator for a long-running server: blocks of `threshold` bytes and more mapped on
    their own (returned to the system when freed) and at most `arenas` allocation arenas, so that
    the large, short-lived buffers of request bodies do not stay in per-thread arenas and grow the
    resident memory with every peak. Does nothing where the C library is not glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold, m_arena_max = -3, -8  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, threshold)) and bool(mallopt(m_arena_max, arenas))
