"""How a run spreads over devices, per Keras backend.

TensorFlow: tf.distribute strategies (MirroredStrategy on several GPUs or on logical CPUs,
MultiWorkerMirroredStrategy from TF_CONFIG). JAX: `keras.distribution.DataParallel` over the
visible devices. torch: one device — Keras 3 has no multi-device `fit` for torch.
"""

import contextlib
import dataclasses
import json
import os

import keras

from keras_preact import choices


@dataclasses.dataclass
class Placement:
    """Where a run executes: a scope to build and compile in, and its replica count."""

    description: str
    replicas: int
    strategy: object = None  # a tf.distribute.Strategy on the TensorFlow backend

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()


def split_cpu(replicas):
    """Splits the host CPU into `replicas` logical devices so multi-replica code runs without GPUs.

    Must run before the backend initialises its devices (first thing in a program).
    """
    if replicas is None or replicas <= 1:
        return
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
        except RuntimeError as error:
            raise RuntimeError(
                f"cpu_replicas={replicas}: TensorFlow's devices are already initialised; split the "
                "CPU before any TensorFlow operation runs."
            ) from error
    elif backend == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={replicas}".strip()
        import jax

        if len(jax.devices("cpu")) != replicas:
            raise RuntimeError(
                f"cpu_replicas={replicas}: JAX was initialised before the CPU could be split; "
                f"set XLA_FLAGS=--xla_force_host_platform_device_count={replicas} before starting."
            )
    else:
        raise ValueError(
            f"cpu_replicas={replicas} needs the tensorflow or jax backend; the {backend} backend "
            "trains on one device."
        )


def place(strategy="auto"):
    """The Placement for `strategy` on the current backend."""
    choices.STRATEGIES.check(strategy)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_placement(strategy)
    if backend == "jax":
        return _jax_placement(strategy)
    if strategy in ("mirrored", "multi_worker"):
        raise ValueError(
            f"strategy={strategy!r} is not available on the torch backend: Keras 3 trains torch "
            "models on one device. Use KERAS_BACKEND=tensorflow or jax for several devices."
        )
    import torch

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    return Placement(f"torch backend: one device ({device}); Keras 3 has no multi-device fit for torch", 1)


def _tensorflow_placement(strategy):
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if strategy == "auto":
        if os.environ.get("TF_CONFIG") and len(json.loads(os.environ["TF_CONFIG"]).get("cluster", {}).get("worker", [])) > 1:
            strategy = "multi_worker"
        elif len(gpus) > 1 or len(cpus) > 1:
            strategy = "mirrored"
        else:
            strategy = "one_device"
    if strategy == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("strategy='multi_worker' needs the TF_CONFIG environment variable describing the cluster.")
        distributed = tf.distribute.MultiWorkerMirroredStrategy()
        return Placement(
            f"MultiWorkerMirroredStrategy: {distributed.num_replicas_in_sync} replicas "
            f"(worker {distributed.cluster_resolver.task_id})",
            distributed.num_replicas_in_sync,
            distributed,
        )
    devices = [d.name for d in (gpus or cpus)]
    if strategy == "mirrored":
        distributed = tf.distribute.MirroredStrategy(devices=devices)
        return Placement(f"MirroredStrategy over {len(devices)} devices: {', '.join(devices)}", len(devices), distributed)
    # No strategy for one device: a OneDeviceStrategy feeds `fit` through a per-device generator
    # dataset, which sets glibc's M_TRIM_THRESHOLD (BUILD_NOTES.md, "Speed on every CPU").
    return Placement(f"TensorFlow: one device ({devices[0]})", 1)


def _jax_placement(strategy):
    import jax

    if strategy == "multi_worker":
        raise ValueError(
            "strategy='multi_worker' is TensorFlow's TF_CONFIG cluster; on JAX start each host with "
            "jax.distributed.initialize() and use strategy='mirrored'."
        )
    devices = jax.devices()
    if strategy == "one_device" or (strategy == "auto" and len(devices) == 1):
        keras.distribution.set_distribution(None)
        return Placement(f"JAX: one device ({devices[0]})", 1)
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return Placement(f"JAX DataParallel over {len(devices)} devices", len(devices))
