"""Kill -9 campaign for multi-process resume (issue 21): on the current backend, `--kills` runs
of 2 processes, each killed at a random moment of its second epoch (either process, with and
without shared storage), then run again and compared with the uninterrupted run.

    KERAS_BACKEND=jax python benchmarks/kill_resume.py --kills=10

Prints one line per kill and the counts; the survivor's exit seconds are the lost-process delay.
"""

import argparse
import os
import random
import sys
import tempfile
import pathlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import test_distributed_resume as case  # noqa: E402  (the test's own kill and comparison)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="kills per storage mode")
    kills = parser.parse_args().kills
    with tempfile.TemporaryDirectory() as folder:
        root = pathlib.Path(folder)
        whole = case.finish(root / "whole")
        equal, seconds = 0, []
        for shared in (False, True):
            for kill in range(kills):
                victim = random.randrange(2)
                try:
                    seconds.append(case.kill_and_resume(root / f"{'shared' if shared else 'own'}-{kill}", whole, victim, shared))
                    equal += 1
                    print(f"shared={shared} victim={victim}: resumed equal, survivor exited in {seconds[-1]:.1f} s", flush=True)
                except AssertionError as error:
                    print(f"shared={shared} victim={victim}: FAILED {str(error)[:300]}", flush=True)
    print(f"{equal}/{kills * 2} resumed equal; survivor exit max {max(seconds, default=0):.1f} s")


if __name__ == "__main__":
    main()
