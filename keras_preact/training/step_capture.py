"""The torch backend's training step replayed as one CUDA graph (`RunConfig.step_capture`).

Keras' torch trainer dispatches a step op by op from Python, so ResNet-164's ~500 layers leave a
GPU waiting on the host (451 images/s on an H200, 17x below JAX's compiled step). `CapturedStep`
runs the first steps eagerly, then records the whole step (forward, backward, the optimizer's
update, the metrics) once with `torch.cuda.graph`; from then on each batch is copied into the
graph's input tensors and the graph replayed: one launch per step.

A captured step must never make the host wait for the device. A torch function mode
(`capture_safe`), active over the warm-up steps and the capture, writes Keras' constants made of
Python numbers with fill kernels (`torch.as_tensor(0.1, device="cuda")` copies from host memory,
which waits) and records every host read of a device value (`.item()`, `if tensor:`, ...). Where the step cannot be captured it
runs eagerly, and the log names why, once per reason:

- no CUDA device (`resolve`, for step_capture="auto");
- the warm-up steps read device values on the host (float16 loss scaling decides each step there);
- the capture raised (its first line);
- a batch of other shapes than the captured one (a last partial batch) runs the eager step.
"""

import contextlib
import functools
import logging
import os
import time
import traceback

import keras

from keras_preact import choices

log = logging.getLogger("keras_preact")

NO_CUDA = "torch step capture needs CUDA; running the eager step"
# PyTorch's recipe for whole-network capture: a few eager steps on a side stream first (lazy
# initialisation, the optimizer's state); DistributedDataParallel needs 11 (PyTorch's CUDA graphs notes).
WARMUP_STEPS = 3
DDP_WARMUP_STEPS = 11
# Host data up to this many numbers becomes a constant written by fill kernels; more is a copy.
MAX_CONSTANT = 64
# Keras' dispatch to the backend, skipped when naming the code that read a device value.
KERAS_DISPATCH = ("keras/src/ops/", "keras/src/backend/", "keras/src/utils/traceback_utils.py")


def resolve(requested):
    """The step mode a run takes: "cuda_graph" or "eager" on torch, None on JAX and TensorFlow
    (which compile the whole step themselves); a ValueError where `requested` cannot run here."""
    choices.STEP_CAPTURES.check(requested)
    backend = keras.backend.backend()
    if backend != "torch":
        if requested != "auto":
            raise ValueError(
                f"step_capture={requested!r} is for the torch backend; {backend} compiles the whole step itself "
                "(XLA or tf.function): leave step_capture at 'auto'."
            )
        return None
    if requested == "eager":
        return "eager"
    import torch

    if torch.cuda.is_available():
        return "cuda_graph"
    if requested == "cuda_graph":
        raise ValueError(
            "step_capture='cuda_graph' needs a CUDA device, and torch sees none: use step_capture='auto' "
            "(a CUDA graph where there is CUDA, the eager step elsewhere) or 'eager'."
        )
    log.info(NO_CUDA)
    return "eager"


def graphs_for(mode):
    """The capture `CapturedStep` takes for a resolved `mode`: CUDA graphs, or None (eager)."""
    return CudaGraphs() if mode == "cuda_graph" else None


class CudaGraphs:
    """Capture on the current CUDA device, all on one side stream: the warm-up steps (and the
    DistributedDataParallel wrapper's construction) and the capture into a `torch.cuda.CUDAGraph`
    (tests put a stand-in with the same three members in its place)."""

    def __init__(self):
        import torch

        self.torch = torch
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream()

    @contextlib.contextmanager
    def side_stream(self):
        torch = self.torch
        self.stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:
            torch.cuda.current_stream().wait_stream(self.stream)

    def capture(self, run):
        """(replay, outputs): `run()` recorded, not run; `replay()` runs it and rewrites `outputs`."""
        graph = self.torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (an input pipeline's) do not void the capture.
        with self.torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            outputs = run()
        return graph.replay, outputs


class CapturedStep:
    """`step(batch)`, a training step that returns its logs as tensors, run eagerly for
    `warmup_steps` batches, then captured by `graphs` and replayed for every batch of the captured
    shapes; eager throughout where `graphs` is None or capture is impossible.

    `agree(ok)`: whether every process captured (a multi-process run replays its collectives
    only if all do); None for one process. `summary()` is what results.json records.
    """

    def __init__(self, step, graphs, warmup_steps=WARMUP_STEPS, agree=None):
        self.step, self.graphs, self.warmup_steps, self.agree = step, graphs, warmup_steps, agree
        self.mode = "eager" if graphs is None else "cuda_graph"
        self.shapes = None  # of the first batch: the shapes captured
        self.warmed = self.replayed = self.eager = 0
        self.replay = self.inputs = self.outputs = None
        self.capture_seconds = None
        self.fallbacks = []  # why steps ran eagerly, each reason once

    def __call__(self, batch):
        parts = keras.tree.flatten(batch)
        shapes = [_shape(part) for part in parts]
        self.shapes = self.shapes or shapes
        if self.graphs is not None and shapes != self.shapes:
            self._fall_back(f"a batch of {_described(shapes)}, not the captured {_described(self.shapes)}")
        elif self.replay is not None:
            for static, part in zip(self.inputs, parts):
                if _is_tensor(part):
                    static.copy_(part)
            self.replay()
            self.replayed += 1
            return self.outputs
        elif self.graphs is not None and self.warmed < self.warmup_steps:
            return self._warm_up(batch, parts)
        elif self.graphs is not None:
            return self._capture(batch, parts)
        self.eager += 1
        return self.step(batch)

    def keras_train_function(self, data):
        """`model.train_function` for Keras' torch `fit`, which passes a list of one batch."""
        return self(data[0])

    def summary(self):
        return {"mode": self.mode, "replayed_steps": self.replayed, "eager_steps": self.eager + self.warmed,
                "capture_seconds": None if self.capture_seconds is None else round(self.capture_seconds, 2),
                "fallbacks": list(self.fallbacks)}

    def _on_device(self, batch, parts):
        """The batch with its tensors copied to the device, before the audited step: a host batch
        (tf.data's) is copied into the graph's inputs before each replay, not by the step."""
        copies = [part.to(self.graphs.device, copy=True) if _is_tensor(part) else part for part in parts]
        return keras.tree.pack_sequence_as(batch, copies), copies

    def _warm_up(self, batch, parts):
        batch, _ = self._on_device(batch, parts)
        safe = capture_safe(self.graphs.device)
        with self.graphs.side_stream(), safe:
            outputs = self.step(batch)
        self.warmed += 1
        if safe.host_reads:
            self._give_up(f"the step reads device values on the host ({safe.host_reads[0]})")
        return outputs

    def _capture(self, batch, parts):
        started = time.perf_counter()
        static, inputs = self._on_device(batch, parts)
        try:
            with capture_safe(self.graphs.device):
                replay, outputs = self.graphs.capture(lambda: self.step(static))
            error = None
        except Exception as raised:  # whatever the capture met, the eager step still trains
            error = f"the capture failed: {(str(raised).strip() or type(raised).__name__).splitlines()[0]}"
        if self.agree is not None and not self.agree(error is None):
            error = error or "another process's capture failed"
        if error:
            self._give_up(error)
            self.eager += 1
            return self.step(batch)
        self.replay, self.inputs, self.outputs = replay, inputs, outputs
        replay()  # the capture recorded this batch's step without running it
        self.replayed += 1
        self.capture_seconds = time.perf_counter() - started
        log.info("torch step captured as one CUDA graph after %d eager steps, in %.1f s", self.warmed, self.capture_seconds)
        return outputs

    def _give_up(self, reason):
        self.graphs, self.mode = None, "eager"
        self._fall_back(reason)

    def _fall_back(self, reason):
        if reason not in self.fallbacks:
            self.fallbacks.append(reason)
            log.info("torch step capture: %s; running the eager step", reason)


def capture_safe(device):
    """A torch function mode for the steps before and during a capture on `device`: host numbers
    Keras turns into tensors there become fill kernels (`device_constant`), and each host read of
    a value on `device` (or copy between it and the host) is recorded in `host_reads` as
    "what at file:line". On the CPU (tests) it audits a step for what would stop its capture on a GPU.

    >>> import torch
    >>> with capture_safe("cpu") as safe:
    ...     rate = torch.as_tensor(0.1, device="cpu")  # written by a fill kernel
    ...     _ = bool(rate > 0)  # read on the host
    >>> float(rate), safe.host_reads[0].split(" at ")[0]
    (0.10000000149011612, 'Tensor.__bool__')
    """
    return _capture_safe_class()(device)


@functools.cache  # defined on first use: torch is imported on the torch backend alone
def _capture_safe_class():
    import torch
    from torch.overrides import TorchFunctionMode

    Tensor = torch.Tensor
    host_reads = {Tensor.item, Tensor.__bool__, Tensor.__int__, Tensor.__float__, Tensor.__index__, Tensor.tolist,
                  Tensor.numpy, Tensor.nonzero, torch.nonzero, Tensor.masked_select, torch.masked_select, torch.unique}
    copies = {Tensor.to, Tensor.cpu, Tensor.cuda}
    factories = {torch.as_tensor, torch.tensor}

    class CaptureSafeMode(TorchFunctionMode):
        def __init__(self, device):
            super().__init__()
            self.device_type = torch.device(device).type
            self.host_reads = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in factories and args and not torch.is_tensor(args[0]) and not kwargs.get("requires_grad"):
                dtype = args[1] if len(args) > 1 else kwargs.get("dtype")
                device = args[2] if len(args) > 2 else kwargs.get("device")
                if device is not None and torch.device(device).type == self.device_type:
                    constant = device_constant(args[0], dtype, device)
                    if constant is not None:
                        return constant
                    self._record("a copy of host data to the device")
            elif func in host_reads and args and torch.is_tensor(args[0]) and args[0].device.type == self.device_type:
                self._record(_name(func))
            result = func(*args, **kwargs)
            if func in copies and torch.is_tensor(result) and self.device_type in {args[0].device.type, result.device.type} \
                    and args[0].device.type != result.device.type:
                self._record(f"{_name(func)} between the host and the device")
            return result

        def _record(self, what):
            self.host_reads.append(f"{what} at {_caller()}")

    return CaptureSafeMode


def device_constant(data, dtype, device):
    """`torch.as_tensor(data, dtype, device)` for host numbers, each written on the device by a fill
    kernel (which a CUDA graph records as a constant) instead of copied from host memory (which
    waits for the device); None for host data of more than `MAX_CONSTANT` numbers.

    >>> import torch
    >>> device_constant((2, 3), torch.int32, "cpu"), device_constant(0.5, None, "cpu")
    (tensor([2, 3], dtype=torch.int32), tensor(0.5000))
    """
    import torch

    host = torch.as_tensor(data, dtype=dtype)  # on the host: no copy
    if host.numel() > MAX_CONSTANT:
        return None
    numbers = [torch.full((), value, dtype=host.dtype, device=device) for value in host.reshape(-1).tolist()]
    if not numbers:
        return torch.empty(host.shape, dtype=host.dtype, device=device)
    return numbers[0] if host.dim() == 0 else torch.stack(numbers).reshape(host.shape)


def _is_tensor(value):
    import torch

    return torch.is_tensor(value)


def _shape(part):
    return (tuple(part.shape), str(part.dtype).removeprefix("torch.")) if _is_tensor(part) else type(part).__name__


def _described(shapes):
    return ", ".join(f"{list(s[0])} {s[1]}" if isinstance(s, tuple) else s for s in shapes)


def _name(func):
    return getattr(func, "__qualname__", getattr(func, "__name__", repr(func))).replace("TensorBase.", "Tensor.")


def _caller():
    """Where: the innermost frame outside torch and this module, and the innermost outside Keras'
    ops and backend that led there ("file:line (function), from file:line"), paths from
    site-packages or from the repository."""
    import torch

    skipped = (os.path.dirname(torch.__file__), os.path.abspath(__file__))
    frames = [frame for frame in traceback.extract_stack() if not os.path.abspath(frame.filename).startswith(skipped)]
    if not frames:
        return "?"
    inner = f"{_short(frames[-1].filename)}:{frames[-1].lineno} ({frames[-1].name})"
    origins = [frame for frame in frames[:-1] if not _short(frame.filename).startswith(KERAS_DISPATCH)]
    return f"{inner}, from {_short(origins[-1].filename)}:{origins[-1].lineno}" if origins else inner


def _short(path):
    repository = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.abspath(path).rsplit(f"site-packages{os.sep}", 1)[-1]
    return os.path.relpath(path, repository) if os.path.isabs(path) else path
