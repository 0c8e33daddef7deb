"""A kill -9 of one process of a 2-process run, mid-epoch: the other ends within seconds with one
line naming the lost process; the same commands run again resume where the chief's checkpoint left
off, and the history equals the uninterrupted run's, validation included.

Without shared storage the worker's working directory is not the chief's, so its `--model_dir=run`
is another, empty folder (as on a second machine): the worker gets the chief's state through the
engine's broadcast (`distribute.chief_checkpoint`, `distribute.agree_on_start`).
`benchmarks/kill_resume.py` repeats this at
random moments, killing either process, with and without shared storage.
"""

import os
import re
import subprocess
import time

import numpy as np
import pytest

from keras_preact.training.report import read_history
from test_distributed import process_commands

ARGUMENTS = ["--epochs=2", "--model_dir=run"]
NAMES = ("chief", "worker")


def start(root, shared):
    """The two processes of a run in `root/chief` and `root/worker` (both in `root/chief` when
    `shared`); each writes its output to `root/<name>.txt` (a pipe nobody reads could block it)."""
    processes = []
    for (command, env), name in zip(process_commands(ARGUMENTS), NAMES):
        folder = root / ("chief" if shared else name)
        os.makedirs(folder, exist_ok=True)
        with open(root / f"{name}.txt", "w") as output:
            processes.append(subprocess.Popen(command, env=env, cwd=folder, stdout=output, stderr=subprocess.STDOUT))
    return processes


def output(root, name):
    return (root / f"{name}.txt").read_text()


def finish(root, shared=False):
    """Runs both processes to their end; returns the chief's history."""
    for process, name in zip(start(root, shared), NAMES):
        assert process.wait(timeout=600) == 0, output(root, name)[-4000:]
    return read_history(str(root / "chief" / "run" / "history.csv"))


class TooLate(Exception):
    """The victim had ended before the kill: there was nothing to kill."""


def kill_and_resume(root, whole, victim, shared, delay=0.0):
    """Kills process `victim` `delay` seconds after the first checkpoint, checks the survivor's
    end, runs the same commands again and compares with the uninterrupted history `whole`.
    Returns the seconds the survivor took to exit; raises TooLate where the victim had ended."""
    processes = start(root, shared)
    checkpoint = root / "chief" / "run" / "checkpoint.weights.h5"
    while not checkpoint.exists():
        assert all(p.poll() is None for p in processes), output(root, "chief")[-3000:]
        time.sleep(0.05)
    time.sleep(delay)
    if processes[victim].poll() is not None:
        for process in processes:
            process.wait(timeout=120)
        raise TooLate
    processes[victim].kill()
    killed = time.monotonic()
    survivor = 1 - victim
    status = processes[survivor].wait(timeout=120)
    seconds = time.monotonic() - killed
    text = output(root, NAMES[survivor])
    if status == 0:  # the victim was killed after the survivor's part of the run had ended well
        assert survivor == 1 or (root / "chief" / "run" / "results.json").exists(), text[-3000:]
    else:
        assert f"process {victim} of 2 was lost" in text and "Run the same command again" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert not re.search(r"^[FEW]\d{4} \d", text, re.MULTILINE), text[-3000:]  # no C++ error or FATAL log line

    resumed = finish(root, shared)
    assert "Resuming from" in output(root, "chief")
    assert not (root / "worker" / "run" / "checkpoint.weights.h5").exists()  # only the chief writes
    assert [row["epoch"] for row in resumed] == [row["epoch"] for row in whole]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([r[key] for r in resumed], [r[key] for r in whole], rtol=1e-6, err_msg=key)
    return seconds


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted run's history."""
    return finish(tmp_path_factory.mktemp("whole"))


@pytest.mark.parametrize("victim", [1, 0], ids=["worker", "chief"])
def test_a_lost_process_ends_the_run_and_the_same_commands_resume_equal(tmp_path, whole, victim):
    """The chief is also JAX's coordinator: the engines' own errors at its loss (JAX's FATAL line,
    Gloo's) are dropped by the heartbeat, which prints the one line."""
    seconds = kill_and_resume(tmp_path, whole, victim=victim, shared=False)
    print(f"survivor exited {seconds:.1f} s after the kill")
