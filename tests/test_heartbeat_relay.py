"""The heartbeat's relay of a training process's standard error (training/heartbeat.py), with one
process and no peers: nothing the training process writes is lost, whatever happens to its child."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from helpers import backend_independent
from test_distributed import free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(body):
    """Python code: a training process whose stderr the heartbeat relays, then `body`."""
    return textwrap.dedent(f"""
        import os, signal, sys, time
        from keras_preact.training import heartbeat
        heartbeat.start("127.0.0.1:{free_ports(1)[0]}", 0, 1)
        print(heartbeat._current.pid, flush=True)
    """) + textwrap.dedent(body)


def run(body, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", script(body)], capture_output=True, text=True, timeout=120, env=env,
                          **kwargs)


@backend_independent
def test_a_killed_heartbeat_child_gives_the_training_process_its_stderr_and_stops_it():
    """Its peers count it as lost once its heartbeat is gone, so it stops too, saying why."""
    done = run("""
        sys.stderr.write("before\\n")
        time.sleep(2 * heartbeat.HOLD_SECONDS)  # relayed (a killed child loses what it still holds)
        os.kill(heartbeat._current.pid, signal.SIGKILL)
        time.sleep(30)
    """)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0] == "before" and lines[-1].startswith("keras_preact: the heartbeat process of process 0 of 1 ended"), done.stderr
    assert "Run the same command again" in lines[-1]


@backend_independent
def test_ctrl_c_shows_the_training_process_traceback_not_the_heartbeat_child():
    code = script("""
        print("ready", flush=True)
        time.sleep(60)
    """)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    process.stdout.readline()
    process.stdout.readline()
    time.sleep(1)  # the child past its start
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground process group
    _, err = process.communicate(timeout=60)
    assert "heartbeat.py" not in err, err  # not the child's KeyboardInterrupt
    assert 'File "<string>"' in err and err.endswith("KeyboardInterrupt\n"), err  # the training process's own


@backend_independent
def test_the_last_line_and_the_traceback_survive_a_slow_reader_of_stderr(tmp_path):
    reader = ("import os, sys, time\nout = open(sys.argv[1], 'wb')\nwhile b := os.read(0, 65536):\n"
              "    out.write(b); out.flush(); time.sleep(0.05)\n")
    target = str(tmp_path / "stderr.txt")
    slow = subprocess.Popen([sys.executable, "-c", reader, target], stdin=subprocess.PIPE)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    body = script("""
        for i in range(20000):
            sys.stderr.write(f"progress {i:08d} " + "x" * 200 + "\\n")
        raise RuntimeError("the real error")
    """)
    subprocess.run([sys.executable, "-c", body], stdout=subprocess.DEVNULL, stderr=slow.stdin, timeout=120, env=env)
    slow.stdin.close()
    slow.wait(timeout=120)
    text = open(target).read()
    assert text.count("\nprogress ") == 19999, text.count("\nprogress ")  # observed: ~13,500 of 20,000
    assert text.endswith("RuntimeError: the real error\n"), text[-300:]
