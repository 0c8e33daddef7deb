"""Two real processes on loopback, with each framework's own engine: TensorFlow workers from
TF_CONFIG, JAX processes from Keras' variables, torch processes as torchrun starts them.

Only the chief writes: the other process sees `model_dir` through a read-only bind mount (a
private mount namespace), so any write it attempted would fail the run.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_preact.training.report import read_history

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "data", "cifar10-sample")
BACKEND = keras.backend.backend()
# 30 training images at a global batch of 10: 3 steps an epoch.
RUN = [os.path.join(ROOT, "examples", "cifar.py"), f"--data_dir={SAMPLE}", "--depth=8", "--batch_size=10", "--seed=3"]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _read_only_mounts_work():
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(
    shutil.which("unshare") is None or not _read_only_mounts_work(),
    reason="needs unshare -m (a private mount namespace) to show the non-chief writes nothing",
)


def read_only(command, folder):
    """`command` run with `folder` mounted read-only for it alone."""
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, folder, *command]


def process_commands(arguments, count=2):
    """(command, environment) of each of `count` processes of one run, as a cluster starts them."""
    base = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    ports = free_ports(count)
    started = []
    for index in range(count):
        env = dict(base)
        if BACKEND == "tensorflow":
            cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        elif BACKEND == "jax":
            env.update(KERAS_DISTRIBUTION_JOB_ADDRESSES=",".join(f"127.0.0.1:{port}" for port in ports),
                       KERAS_DISTRIBUTION_NUM_PROCESSES=str(count), KERAS_DISTRIBUTION_PROCESS_ID=str(index))
        else:  # the variables torchrun gives each process it starts
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), WORLD_SIZE=str(count), RANK=str(index),
                       LOCAL_RANK=str(index), LOCAL_WORLD_SIZE=str(count))
        started.append(([sys.executable, *RUN, *arguments], env))
    return started


def run_processes(arguments, model_dir, timeout=600):
    """Runs a 2-process run to its end; the non-chief cannot write into `model_dir`."""
    os.makedirs(model_dir, exist_ok=True)
    processes = []
    for index, (command, env) in enumerate(process_commands(arguments + [f"--model_dir={model_dir}"])):
        command = command if index == 0 else read_only(command, model_dir)
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-4000:]
    return outputs


@needs_mounts
def test_two_processes_train_like_one_and_only_the_chief_writes(tmp_path):
    """Global batch 10 over 2 processes, BatchNorm synchronised: the same losses as 1 process.

    Tolerance: float32 sums of the same numbers in another order (each process reduces its half
    of the batch, then the halves are combined) differ in the last bits, and 6 SGD steps carry
    that forward; 1e-4 relative is far above it and far below any real difference (the next
    batch's loss, or per-replica statistics, differ in the first or second digit).
    """
    common = ["--epochs=2", "--batch_norm=synchronized"]
    outputs = run_processes(common, str(tmp_path / "two"))
    single = subprocess.run([sys.executable, *RUN, "--epochs=2", "--batch_norm=synchronized", f"--model_dir={tmp_path / 'one'}"],
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["processes"] == 2 and results["replicas"] == 2 and results["steps"] == 6
    assert results["batch_norm"] == "synchronized"
    assert "test error" in outputs[0] and "test error" not in outputs[1]  # the chief reports
    two, one = (read_history(str(tmp_path / name / "history.csv")) for name in ("two", "one"))
    assert [row["epoch"] for row in two] == [0, 1]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([row[key] for row in two], [row[key] for row in one], rtol=1e-4, err_msg=key)


def start_and_kill_after_first_checkpoint(commands, model_dir, kill_all):
    """Starts the processes; once a checkpoint exists, kill -9s one (or all), then stops the rest."""
    processes = [subprocess.Popen(c, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                 for c, e in commands]
    checkpoint = os.path.join(model_dir, "checkpoint.weights.h5")
    deadline = time.time() + 400
    while not os.path.exists(checkpoint) and time.time() < deadline and all(p.poll() is None for p in processes):
        time.sleep(0.05)
    assert os.path.exists(checkpoint), "no checkpoint was written"
    if kill_all:
        victims = processes
    elif BACKEND == "torch":  # one of the workers torchrun started
        workers = subprocess.run(["pgrep", "-P", str(processes[0].pid)], capture_output=True, text=True).stdout.split()
        os.kill(int(workers[-1]), signal.SIGKILL)
        victims = []
    else:
        victims = processes[-1:]
    for process in victims:
        os.killpg(process.pid, signal.SIGKILL)
    for process in processes:  # a survivor waits for its peer forever: a scheduler would stop it
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert not os.path.exists(os.path.join(model_dir, "results.json"))


def finish(commands):
    processes = [subprocess.Popen(c, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c, e in commands]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-4000:]
    return outputs


def test_kill_one_process_then_run_the_same_command_again(tmp_path):
    model_dir = str(tmp_path / "run")
    arguments = ["--epochs=2", f"--model_dir={model_dir}"]
    if BACKEND == "torch":  # the command a user runs
        port = free_ports(1)[0]
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", *RUN, *arguments]
        commands = [(command, dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))]
    else:
        commands = process_commands(arguments)
    start_and_kill_after_first_checkpoint(commands, model_dir, kill_all=False)
    outputs = finish(commands if BACKEND == "torch" else process_commands(arguments))
    assert "Resuming from" in outputs[0]
    results = json.loads(open(os.path.join(model_dir, "results.json")).read())
    assert results["steps"] == 2 * 3 and results["processes"] == 2
    assert [int(row["epoch"]) for row in read_history(os.path.join(model_dir, "history.csv"))] == [0, 1]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the checkpoint is one Keras weights file on every backend; "
                    "each backend's own resume is tested above")
def test_a_checkpoint_of_two_processes_resumes_in_one(tmp_path):
    model_dir = str(tmp_path / "run")
    arguments = ["--epochs=2", f"--model_dir={model_dir}"]
    start_and_kill_after_first_checkpoint(process_commands(arguments), model_dir, kill_all=True)
    output = finish([([sys.executable, *RUN, *arguments], dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))])[0]
    assert "Resuming from" in output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 6 and results["processes"] == 1
    assert results["batch_norm"] == json.loads((tmp_path / "run" / "config.json").read_text())["batch_norm"] == "per_replica"


def test_cpu_replicas_beyond_what_the_cpus_hold_are_refused_naming_the_bound():
    from keras_preact import runtime
    from keras_preact.training import distribute

    limit = distribute.REPLICAS_PER_CPU * runtime.cpus()
    with pytest.raises(ValueError, match=f"cpu_replicas must be a positive integer of at most {limit}, got 100000.*per CPU"):
        distribute.start(cpu_replicas=100000)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TF_CONFIG describes TensorFlow's clusters")
@pytest.mark.parametrize("kind", ["ps", "evaluator"])
def test_tf_config_task_types_other_than_chief_and_worker_are_refused(monkeypatch, kind):
    from keras_preact.training import distribute

    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"], kind: ["127.0.0.1:3"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": kind, "index": 0}}))
    with pytest.raises(ValueError, match=f"task type\\(s\\) '{kind}'.*only 'chief' and 'worker'"):
        distribute.start()


def test_a_heartbeat_port_in_use_is_named_with_the_fix():
    from keras_preact.training import heartbeat

    with socket.create_server(("127.0.0.1", 0)) as busy:
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(RuntimeError, match=f"heartbeat on {address} .*keep the port after the coordinator's"):
            heartbeat.start(address, 0, 2)
