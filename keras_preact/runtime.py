"""Process settings that must be made before a framework starts: TensorFlow's oneDNN kernels and
thread counts that follow the CPUs this process may use.

`keras_preact/__init__.py` calls `configure()` first, before it imports Keras (which imports the
backend).
Every setting is an environment variable the user may set themselves; theirs always wins.

- **oneDNN.** TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with AVX-512
  VNNI/BF16 or AMX. Without them (AVX2 machines such as AMD EPYC) it trains 2.8x slower (measured:
  ResNet-20, one CIFAR-10 epoch, 683 s vs 241 s) and cannot train channels-first convolutions at all.
  The variable is read once, when TensorFlow is imported.
- **TensorFlow's C++ log.** `TF_CPP_MIN_LOG_LEVEL=3` (fatal only: TensorFlow's errors reach
  Python as exceptions), so that commands do not open with TensorFlow's INFO, WARNING and ERROR
  lines (on a CPU machine with TensorFlow's CUDA build: "failed call to cuInit"). Like oneDNN's, it
  is read when TensorFlow loads. TensorFlow 2.21 also writes its start-up notes (oneDNN, CUDA
  drivers, "All log messages before absl::InitializeLog()") before its logging reads the level;
  unless the level is set below 2, those lines are held back while `tensorflow` imports
  (`QuietTensorFlowImport`) and everything else written meanwhile is passed on.
- **Threads.** Intra-op thread pools of TensorFlow, PyTorch (OpenMP) and XLA sized to
  `os.sched_getaffinity`, not to the machine's core count: a process pinned to 2 of 64 cores
  must not start 64 threads per pool.
"""

import contextlib
import importlib.abc
import os
import re
import sys
import tempfile
import warnings

ONEDNN = "TF_ENABLE_ONEDNN_OPTS"
TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
# What TensorFlow writes to stderr at import before its log level applies.
TF_START_UP_NOTE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|[IW]\d{4} [\d:.]+ +\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\] "
)


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
    for name, value in {**thread_settings(), TF_LOG_LEVEL: "3"}.items():
        os.environ.setdefault(name, value)
    if os.environ[TF_LOG_LEVEL] not in ("0", "1") and not any(isinstance(f, QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietTensorFlowImport())
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


class QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Imports `tensorflow` with its start-up notes (`TF_START_UP_NOTE`) held back; the rest of
    what is written to stderr meanwhile follows when the import ends, and all of it if it fails."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *_: None)(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _NotesHeld(spec.loader)
                return spec
        return None


class _NotesHeld(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with _stderr_without_start_up_notes():
            self.loader.exec_module(module)


@contextlib.contextmanager
def _stderr_without_start_up_notes():
    """File descriptor 2 (C++ writes to it directly) into a temporary file; its lines but the
    start-up notes written back after the block, every line where the block raised."""
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if failed or not TF_START_UP_NOTE.match(line))
            if kept:
                os.write(2, kept.encode())
