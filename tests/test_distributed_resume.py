"""Two processes that share no disk: the worker's working directory is not the chief's, so its
`--model_dir=run` is another, empty folder (as on a second machine). A kill -9 of one process
mid-epoch ends the other within seconds with one line; the same commands run again resume where
the chief's checkpoint left off, and the history equals the uninterrupted run's."""

import os
import random
import subprocess
import time

import numpy as np

from keras_preact.training.report import read_history
from test_distributed import process_commands

ARGUMENTS = ["--epochs=2", "--model_dir=run"]


def start(root):
    """The two processes of a run, the chief in `root/chief`, the worker in `root/worker`; each
    writes its output to `output.txt` there (a pipe nobody reads could block it)."""
    processes = []
    for (command, env), name in zip(process_commands(ARGUMENTS), ("chief", "worker")):
        os.makedirs(root / name, exist_ok=True)
        with open(root / name / "output.txt", "w") as output:
            processes.append(subprocess.Popen(command, env=env, cwd=root / name, stdout=output, stderr=subprocess.STDOUT))
    return processes


def output(root, name):
    return (root / name / "output.txt").read_text()


def finish(root):
    processes = start(root)
    for process, name in zip(processes, ("chief", "worker")):
        assert process.wait(timeout=600) == 0, output(root, name)[-4000:]


def history(root):
    return read_history(str(root / "chief" / "run" / "history.csv"))


def test_a_lost_process_ends_the_run_and_the_same_commands_resume_equal(tmp_path):
    finish(tmp_path / "whole")
    processes = start(tmp_path / "killed")
    checkpoint = tmp_path / "killed" / "chief" / "run" / "checkpoint.weights.h5"
    while not checkpoint.exists():
        assert all(p.poll() is None for p in processes), output(tmp_path / "killed", "chief")[-3000:]
        time.sleep(0.05)
    time.sleep(random.uniform(0, 1))  # a moment in the second epoch
    processes[1].kill()
    killed = time.monotonic()
    assert processes[0].wait(timeout=120) != 0
    print(f"survivor exited {time.monotonic() - killed:.1f} s after the kill")
    survivor = output(tmp_path / "killed", "chief")
    assert "process 1 of 2 was lost" in survivor and "Run the same command again" in survivor, survivor[-3000:]
    assert "Traceback" not in survivor, survivor[-3000:]

    finish(tmp_path / "killed")
    assert "Resuming from" in output(tmp_path / "killed", "chief")
    assert not (tmp_path / "killed" / "worker" / "run" / "checkpoint.weights.h5").exists()  # only the chief writes
    whole, resumed = history(tmp_path / "whole"), history(tmp_path / "killed")
    assert [row["epoch"] for row in resumed] == [0, 1]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([r[key] for r in resumed], [r[key] for r in whole], rtol=1e-6, err_msg=key)
