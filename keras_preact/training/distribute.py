"""How a run spreads over devices and processes, with each framework's own engine.

- TensorFlow: `MirroredStrategy` over the local GPUs (or logical CPUs), and
  `MultiWorkerMirroredStrategy` over the processes `TF_CONFIG` names.
- JAX: `keras.distribution.DataParallel` over every device of every process; processes join
  through `keras.distribution.initialize` (jax.distributed) from Keras' variables
  `KERAS_DISTRIBUTION_JOB_ADDRESSES` / `_NUM_PROCESSES` / `_PROCESS_ID`, arguments, or what JAX
  detects by itself (Slurm).
- torch: `torch.distributed` processes started by `torchrun` (gloo on CPU, NCCL on GPU), the Keras
  model in `DistributedDataParallel`.

Keras 3.15.1's `fit` runs neither torch processes nor a MultiWorkerMirroredStrategy;
`training.custom_loop` trains those.

Only the chief process (TensorFlow's chief, or worker 0; JAX's process 0; torch's rank 0) writes
a run's files.
"""

import contextlib
import dataclasses
import json
import os
import tempfile

import keras
import numpy as np

from keras_preact import choices, runtime
from keras_preact.training import heartbeat

# The variables keras.distribution.initialize reads (Keras' own names).
JAX_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID")
# MultiWorkerMirroredStrategy's processes; parameter servers and side evaluators are other strategies.
TF_TASK_TYPES = ("chief", "worker")
# Logical CPU devices per CPU: beyond a few, replicas only time-slice the same cores, each with its
# own copy of the model and its batches.
REPLICAS_PER_CPU = 4


@dataclasses.dataclass
class Placement:
    """Where a run executes.

    `replicas`: data-parallel model copies over all processes. `processes`/`process_index`: this
    process among those feeding data. `data_shard`: the (index, count) of the process's slice of
    every global batch it feeds itself (TensorFlow's strategies shard their input themselves).
    """

    description: str
    replicas: int = 1
    strategy: object = None  # a tf.distribute.Strategy on the TensorFlow backend
    processes: int = 1
    process_index: int = 0
    is_chief: bool = True
    data_shard: tuple = (0, 1)
    custom_loop: bool = False  # Keras' fit cannot run it: training.custom_loop does

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()


def start(cpu_replicas=None, job_addresses=None, num_processes=None, process_id=None):
    """Process-level set-up, first thing in a program, before the backend initialises its devices:
    joins the other processes of a multi-process run (JAX, torch) and splits the CPU into
    `cpu_replicas` logical devices so multi-replica code runs without GPUs. Idempotent."""
    backend = keras.backend.backend()
    given = (job_addresses, num_processes, process_id)
    if backend != "jax" and any(value is not None for value in given):
        raise ValueError(
            f"job_addresses, num_processes and process_id start JAX processes; on {backend}, "
            + ("describe the cluster in TF_CONFIG." if backend == "tensorflow" else "start the processes with torchrun.")
        )
    if cpu_replicas is not None:
        _check_cpu_replicas(cpu_replicas)
    if backend == "tensorflow":
        _check_tf_task_types()
    if backend == "jax":
        _start_jax(cpu_replicas, *given)
    elif backend == "torch":
        if cpu_replicas not in (None, 1):
            raise ValueError(
                f"cpu_replicas={cpu_replicas} needs the tensorflow or jax backend; on torch, start "
                f"{cpu_replicas} processes with torchrun --nproc_per_node={cpu_replicas}."
            )
        _start_torch()
    elif cpu_replicas not in (None, 1):
        _split_tensorflow_cpu(cpu_replicas)


def _check_cpu_replicas(replicas):
    limit = REPLICAS_PER_CPU * runtime.cpus()
    try:
        choices.check_count("cpu_replicas", replicas, maximum=limit)
    except ValueError as error:
        raise ValueError(
            f"{error} ({REPLICAS_PER_CPU} per CPU of the {runtime.cpus()} this process may use: more replicas "
            "only share the same cores, each holding a copy of the model)."
        ) from None


def _check_tf_task_types():
    config = _tf_config()
    task = config.get("task")
    kinds = set(config.get("cluster", {})) | ({task.get("type")} if isinstance(task, dict) else set())
    other = sorted(str(kind) for kind in kinds - set(TF_TASK_TYPES))
    if other:
        raise ValueError(
            f"TF_CONFIG names task type(s) {', '.join(map(repr, other))}, which keras_preact does not run: its "
            f"MultiWorkerMirroredStrategy supports only {' and '.join(map(repr, TF_TASK_TYPES))} processes."
        )


def _split_tensorflow_cpu(replicas):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) == replicas:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError as error:
        raise RuntimeError(
            f"cpu_replicas={replicas}: TensorFlow's devices are already initialised; split the "
            "CPU before any TensorFlow operation runs."
        ) from error


def _start_jax(cpu_replicas, job_addresses, num_processes, process_id):
    import jax

    if cpu_replicas not in (None, 1):
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cpu_replicas}".strip()
    wanted = any(v is not None for v in (job_addresses, num_processes, process_id))
    wanted = wanted or any(os.environ.get(name) for name in JAX_VARIABLES)
    wanted = wanted or int(os.environ.get("SLURM_NTASKS", "1")) > 1  # jax.distributed detects Slurm
    if wanted and not jax.distributed.is_initialized():
        # Cross-process collectives on CPU devices need gloo (GPUs use NCCL regardless).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize(job_addresses, num_processes, process_id)
    if cpu_replicas not in (None, 1) and len(jax.local_devices(backend="cpu")) != cpu_replicas:
        raise RuntimeError(
            f"cpu_replicas={cpu_replicas}: JAX was initialised before the CPU could be split; "
            f"set XLA_FLAGS=--xla_force_host_platform_device_count={cpu_replicas} before starting."
        )


def _start_torch():
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def place(strategy="auto"):
    """The Placement for `strategy` on the current backend (calls `start` if no one did)."""
    choices.STRATEGIES.check(strategy)
    start()
    backend = keras.backend.backend()
    placement = {"tensorflow": _tensorflow_placement, "jax": _jax_placement, "torch": _torch_placement}[backend](strategy)
    if placement.processes > 1:
        host, port = _coordinator(backend).rsplit(":", 1)
        heartbeat.start(f"{host}:{int(port) + heartbeat.PORT_OFFSET}", placement.process_index, placement.processes)
    return placement


def _coordinator(backend):
    """The chief's "host:port" as the engine knows it."""
    if backend == "tensorflow":
        cluster = _tf_config()["cluster"]
        return (cluster.get("chief") or cluster["worker"])[0]
    if backend == "jax":
        from jax._src import distributed  # the address jax.distributed joined (given, or found under Slurm)

        return distributed.global_state.coordinator_address
    return f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"


@contextlib.contextmanager
def peers_report_first():
    """An error inside this block surfaces only after the heartbeat had a moment to end the process
    with its one line, in case the error is a failed collective of a lost peer."""
    try:
        yield
    except Exception:
        heartbeat.wait_for_verdict()
        raise


def finished():
    """This process's part of the run ended well: its peers may exit without it counting as lost."""
    if keras.backend.backend() == "jax":
        import jax

        if jax.distributed.is_initialized():
            # JAX's end-of-run barrier (else at exit), while the heartbeat still watches: a peer
            # lost after the heartbeat ends would hold this process there for the coordination
            # service's 100 s heartbeat timeout, then abort it with a FATAL line.
            jax.distributed.shutdown()
    heartbeat.finished()


@contextlib.contextmanager
def chief_checkpoint(placement, path):
    """Yields the file to restore from: the chief's `path`, or None where the chief has none.

    On JAX, loading a checkpoint is a collective that every process joins (each assignment of host
    values to a variable is a `device_put` the processes agree on), so each JAX process of a
    multi-process run gets the chief's file through the engine's broadcast — a process whose disk
    does not hold it (another machine's) loads a temporary copy, removed afterwards. Elsewhere
    each process restores what its disk holds and `agree_on_start` copies the chief's state."""
    if placement.processes == 1 or keras.backend.backend() != "jax":
        yield path if os.path.exists(path) else None
        return
    from jax.experimental import multihost_utils

    def from_chief(values):
        return np.asarray(multihost_utils.broadcast_one_to_all(values, is_source=placement.is_chief))

    data = np.fromfile(path, np.uint8) if placement.is_chief and os.path.exists(path) else np.zeros(0, np.uint8)
    size = int(from_chief(np.asarray(len(data), np.int32)))  # a checkpoint under 2 GiB
    if size == 0:
        yield None
        return
    data = from_chief(data if placement.is_chief else np.zeros(size, np.uint8))
    if placement.is_chief:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="keras_preact_checkpoint_") as folder:
        local = os.path.join(folder, os.path.basename(path))
        data.tofile(local)
        yield local


def agree_on_start(placement, model, chief_first_epoch):
    """The epoch every process resumes after, with the chief's weights and optimizer state copied
    into every process by the engine's own broadcast: a process without the chief's model_dir
    (another machine's disk) starts where the chief does. Returns the chief's `chief_first_epoch`.

    Every process restores what it can first (its own `chief_first_epoch` is ignored): on JAX each
    assignment of host values to a variable is a collective (`device_put` checks that the
    processes agree), so the processes must assign the same variables in the same order, and a
    JAX worker without the checkpoint loads the chief's (`chief_checkpoint`)."""
    if placement.processes == 1:
        return chief_first_epoch
    variables = [*model.variables, *model.optimizer.variables]
    arrays = [np.asarray(chief_first_epoch, np.int64), *(keras.ops.convert_to_numpy(v) for v in variables)]
    # As bytes: the broadcast copies every dtype exactly (a sum with zeros, on TensorFlow).
    packed = np.concatenate([a.reshape(-1).view(np.uint8) for a in arrays])
    packed = np.pad(packed, (0, -len(packed) % 4)).view(np.int32)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        packed = _broadcast_tensorflow(placement.strategy, packed)
    elif backend == "jax":
        from jax.experimental import multihost_utils

        packed = np.asarray(multihost_utils.broadcast_one_to_all(packed, is_source=placement.is_chief))
    else:
        packed = _broadcast_torch(packed)
    chief, offset = [], 0
    for array in arrays:
        chief.append(packed.view(np.uint8)[offset : offset + array.nbytes].view(array.dtype).reshape(array.shape))
        offset += array.nbytes
    for variable, value in zip(variables, chief[1:]):
        variable.assign(value)
    return int(chief[0])


def _broadcast_tensorflow(strategy, values):
    import tensorflow as tf

    def chief_only(values):
        context = tf.distribute.get_replica_context()
        mine = tf.where(tf.equal(context.replica_id_in_sync_group, 0), values, tf.zeros_like(values))
        return context.all_reduce("SUM", mine)

    summed = tf.function(lambda v: strategy.run(chief_only, args=(v,)))(tf.constant(values))
    return strategy.experimental_local_results(summed)[0].numpy()


def _broadcast_torch(values):
    import torch
    import torch.distributed as dist

    tensor = torch.from_numpy(values.copy())
    if dist.get_backend() == "nccl":
        tensor = tensor.to(f"cuda:{torch.cuda.current_device()}")
    dist.broadcast(tensor, src=0)
    return tensor.cpu().numpy()


def _tensorflow_placement(strategy):
    import tensorflow as tf

    cluster = _tf_config().get("cluster", {})
    workers = sum(len(cluster.get(kind, [])) for kind in TF_TASK_TYPES)
    if workers > 1 and strategy in ("mirrored", "one_device"):
        # Each process would train alone and all would write model_dir as its chief.
        raise ValueError(
            f"TF_CONFIG describes {workers} processes, but strategy={strategy!r} trains within one: use "
            "strategy='multi_worker' (or 'auto'), or unset TF_CONFIG."
        )
    if strategy == "auto":
        # The cluster first: listing devices starts TensorFlow's runtime, after which a
        # MultiWorkerMirroredStrategy can no longer configure its collectives.
        if workers > 1:
            strategy = "multi_worker"
        else:
            gpus, cpus = tf.config.list_logical_devices("GPU"), tf.config.list_logical_devices("CPU")
            strategy = "mirrored" if len(gpus) > 1 or len(cpus) > 1 else "one_device"
    if strategy == "multi_worker":
        if not cluster:
            raise ValueError("strategy='multi_worker' on TensorFlow needs TF_CONFIG describing the cluster.")
        task = _tf_config().get("task")
        kinds = [kind for kind in TF_TASK_TYPES if kind in cluster]
        known = isinstance(task, dict) and task.get("type") in kinds and isinstance(task.get("index"), int)
        if not known or not 0 <= task["index"] < len(cluster[task["type"]]):
            raise ValueError(
                f"TF_CONFIG's task {task!r} is not one of its cluster's training processes "
                f"({', '.join(f'{kind} 0-{len(cluster[kind]) - 1}' for kind in kinds)}): each process's TF_CONFIG "
                "names its own type (chief or worker) and index."
            )
        distributed = tf.distribute.MultiWorkerMirroredStrategy()
        resolver = distributed.cluster_resolver
        index = sum(len(cluster[kind]) for kind in kinds[: kinds.index(resolver.task_type)]) + resolver.task_id
        return Placement(
            f"MultiWorkerMirroredStrategy: {distributed.num_replicas_in_sync} replicas in "
            f"{sum(len(cluster[k]) for k in kinds)} processes ({resolver.task_type} {resolver.task_id})",
            distributed.num_replicas_in_sync,
            distributed,
            processes=sum(len(cluster[k]) for k in kinds),
            process_index=index,
            is_chief=index == 0,  # the chief, or worker 0 where there is no chief
            custom_loop=True,
        )
    devices = [d.name for d in (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))]
    if strategy == "mirrored":
        distributed = tf.distribute.MirroredStrategy(devices=devices)
        return Placement(f"MirroredStrategy over {len(devices)} devices: {', '.join(devices)}", len(devices), distributed)
    # No strategy for one device: a OneDeviceStrategy feeds `fit` through a per-device generator
    # dataset, which sets glibc's M_TRIM_THRESHOLD (BUILD_NOTES.md, "Speed on every CPU").
    return Placement(f"TensorFlow: one device ({devices[0]})")


def _tf_config():
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        if not isinstance(config, dict) or not isinstance(config.get("cluster", {}), dict):
            raise json.JSONDecodeError("not an object with a cluster object", "", 0)
        return config
    except json.JSONDecodeError as error:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({error}); set it to a JSON object such as "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}.'
        ) from None


def _jax_placement(strategy):
    import jax

    processes, index = jax.process_count(), jax.process_index()
    devices = jax.devices()
    if strategy == "multi_worker" and processes == 1:
        raise ValueError(
            "strategy='multi_worker' on JAX needs several processes: set KERAS_DISTRIBUTION_JOB_ADDRESSES, "
            "KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID (or run under Slurm)."
        )
    if strategy == "one_device" and processes > 1:
        raise ValueError(f"strategy='one_device' cannot span this run's {processes} processes.")
    if strategy == "one_device" or len(devices) == 1:
        keras.distribution.set_distribution(None)
        return Placement(f"JAX: one device ({devices[0]})")
    # Each process feeds its own slice of every global batch (training.data's process slicing).
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
    return Placement(
        f"JAX DataParallel over {len(devices)} devices in {processes} process(es)",
        len(devices),
        processes=processes,
        process_index=index,
        is_chief=index == 0,
        data_shard=(index, processes),
    )


def _torch_placement(strategy):
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        if strategy == "one_device":
            raise ValueError(f"strategy='one_device' cannot span the {world} torchrun processes of this run.")
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        return Placement(
            f"torch DistributedDataParallel: {world} processes ({dist.get_backend()}), rank {rank} on {device}",
            world,
            processes=world,
            process_index=rank,
            is_chief=rank == 0,
            data_shard=(rank, world),
            custom_loop=True,
        )
    if strategy in ("mirrored", "multi_worker"):
        raise ValueError(
            f"strategy={strategy!r} on the torch backend runs under torchrun: "
            "torchrun --nproc_per_node=N examples/cifar.py ... (one process per GPU)."
        )
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    return Placement(f"torch backend: one device ({device})")


def batch_norm_options(batch_norm, placement):
    """The BatchNorm options that give `batch_norm` ("per_replica" or "synchronized") statistics
    under `placement` (see `keras_preact.BatchNorm`)."""
    choices.BATCH_NORMS.check(batch_norm)
    if placement.replicas == 1:
        return {}
    if keras.backend.backend() == "jax":
        # DataParallel normalises over the global batch; per replica = per device's group.
        return {"virtual_groups": placement.replicas} if batch_norm == "per_replica" else {}
    return {"synchronized": True} if batch_norm == "synchronized" else {}

