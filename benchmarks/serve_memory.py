"""The server's memory under load (issue 21): VmRSS idle, its peak while 8 clients send near-limit
JSON bodies and bad requests, and after each of `--rounds` rounds of 480 requests.

    python -m benchmarks.serve_memory --rounds 10
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np

CLIENTS, REQUESTS_PER_ROUND = 8, 480


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def post(url, body):
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def bodies(max_batch):
    rng = np.random.default_rng(0)
    full = json.dumps({"instances": rng.integers(0, 256, (max_batch, 32, 32, 3)).tolist()}).encode()
    floats = json.dumps({"instances": (rng.random((max_batch // 2, 32, 32, 3)) * 255).tolist()}).encode()
    ragged = json.dumps({"instances": [[[[1, 2, 3]] * 32] * 32] * (max_batch // 2) + [[[1]]]}).encode()
    return [full, full, floats, ragged, b"{not json", b'{"instances": [[[[' + b"9" * 5000 + b"]]]]}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--max_batch", type=int, default=256)
    args = parser.parse_args()
    import keras_preact

    export_dir = tempfile.mkdtemp()
    keras_preact.export_saved_model(keras_preact.PreActResNet(8, block="basic"), export_dir)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "keras_preact.serve", f"--export_dir={export_dir}", "--model_name=m",
                               f"--port={port}", f"--max_batch={args.max_batch}", "--verbosity=warning"],
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1/models/m:predict"
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/m", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        post(url, json.dumps({"instances": [[[[0, 0, 0]] * 32] * 32]}).encode())  # the first inference's allocations
        time.sleep(1)
        idle = rss_mb(server.pid)
        peak, done = [idle], threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(server.pid))
                time.sleep(0.02)

        threading.Thread(target=watch, daemon=True).start()
        kinds, statuses, ends = bodies(args.max_batch), {}, []
        for _ in range(args.rounds):
            def client(index):
                for request in range(REQUESTS_PER_ROUND // CLIENTS):
                    status = post(url, kinds[(index + request) % len(kinds)])
                    statuses[status] = statuses.get(status, 0) + 1

            threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            ends.append(rss_mb(server.pid))
            print(f"round {len(ends)}: {ends[-1]:.0f} MB (idle {idle:.0f}, peak so far {peak[0]:.0f}); "
                  f"answers {dict(sorted(statuses.items()))}", flush=True)
        done.set()
    finally:
        server.terminate()
        server.wait()
    drift = (max(ends[1:]) - min(ends[1:])) / min(ends[1:]) if len(ends) > 1 else 0.0
    print(f"body {len(kinds[0]):,} bytes; idle {idle:.0f} MB, peak {peak[0]:.0f} MB ({peak[0] / idle:.2f}x idle); "
          f"after each round: {', '.join(f'{e:.0f}' for e in ends)} MB (rounds 2-{args.rounds} within {drift:.1%}); "
          f"answers {dict(sorted(statuses.items()))}")


if __name__ == "__main__":
    main()
