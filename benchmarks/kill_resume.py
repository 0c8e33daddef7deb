"""Kill -9 campaign for multi-process resume (issue 21): on the current backend, `--kills` runs
of 2 processes for each storage mode (each process on its own disk, and one shared disk), each
run killing a random process at a random moment, then run again and compared with the
uninterrupted run.

    KERAS_BACKEND=jax python benchmarks/kill_resume.py --kills=10

The moment is drawn uniformly from the uninterrupted run's span from its first checkpoint to its
end (epoch 2's steps, its checkpoint, the evaluations, the final export and report); a kill that
comes after the victim has ended is not a kill, so that run is drawn again. Prints one line per kill
and the counts; the survivor's exit seconds are the lost-process delay.
"""

import argparse
import os
import random
import sys
import tempfile
import pathlib
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import test_distributed_resume as case  # noqa: E402  (the test's own kill and comparison)

from keras_preact.training.report import read_history  # noqa: E402


def uninterrupted(root):
    """The uninterrupted run's history, and its seconds from the first checkpoint to its end."""
    processes = case.start(root, shared=False)
    checkpoint = root / "chief" / "run" / "checkpoint.weights.h5"
    while not checkpoint.exists():
        time.sleep(0.05)
    first = time.monotonic()
    for process, name in zip(processes, case.NAMES):
        assert process.wait(timeout=600) == 0, case.output(root, name)[-4000:]
    return read_history(str(root / "chief" / "run" / "history.csv")), time.monotonic() - first


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="kills per storage mode")
    kills = parser.parse_args().kills
    with tempfile.TemporaryDirectory() as folder:
        root = pathlib.Path(folder)
        whole, span = uninterrupted(root / "whole")
        print(f"uninterrupted: {span:.1f} s from the first checkpoint to the end", flush=True)
        equal, late, seconds = 0, 0, []
        for shared in (False, True):
            done = 0
            while done < kills:
                victim, moment = random.randrange(2), random.uniform(0, span)
                where = root / f"{'shared' if shared else 'own'}-{done}-{late}"
                try:
                    seconds.append(case.kill_and_resume(where, whole, victim, shared, delay=moment))
                    equal += 1
                    print(f"shared={shared} victim={victim} at +{moment:.2f} s: resumed equal, survivor exited in "
                          f"{seconds[-1]:.1f} s", flush=True)
                except case.TooLate:
                    late += 1
                    print(f"shared={shared} victim={victim} at +{moment:.2f} s: the victim had ended; drawn again", flush=True)
                    continue
                except AssertionError as error:
                    print(f"shared={shared} victim={victim} at +{moment:.2f} s: FAILED {str(error)[:300]}", flush=True)
                done += 1
    print(f"{equal}/{kills * 2} resumed equal ({late} kills came after the victim ended and were drawn again); "
          f"survivor exit max {max(seconds, default=0):.1f} s")


if __name__ == "__main__":
    main()
