"""A heartbeat between the processes of a multi-process run, so a lost process ends the run in
seconds, with one line, instead of a collective that waits minutes or aborts with a traceback.

It runs in a small child process of each training process (this file as a script, standard
library only): a thread of the training process would stall with it, since a collective waiting
for a lost peer can hold the GIL (seen on JAX). On a loss the child prints the line and kills its
training process; a training process killed closes the child's stdin, and the child exits.

The chief listens on its coordinator's port + 1 (TensorFlow's chief address, JAX's coordinator,
torch's MASTER_PORT); every other process connects to it. Each side sends a beat every
`BEAT_SECONDS`; a connection that closes, or stays silent for `SILENT_SECONDS` (a machine that
vanished sends no FIN), means the peer was lost. A process that exits before `finished()` tells
its peers it stopped (its own output says why); the chief passes a loss on to the others, so
each survivor names the process that was lost.

    >>> message(1, 2, "lost")[:44]
    'keras_preact: process 1 of 2 was lost (kille'
"""

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time

BEAT_SECONDS = 2.0
SILENT_SECONDS = 20.0  # survivors stop within this after a peer's machine vanishes
CONNECT_SECONDS = 300.0  # how long a process waits for the chief to listen
PORT_OFFSET = 1  # the heartbeat's port: the coordinator's + 1

_current = None


def message(index, count, event):
    """The one line a survivor prints when process `index` of `count` was lost or stopped."""
    what = {
        "lost": "was lost (killed, or its machine stopped)",
        "stopped": "stopped before the run ended (its output says why)",
        "unreachable": "could not be reached on the heartbeat port",
    }[event]
    return (
        f"keras_preact: process {index} of {count} {what}; this process stops too. Run the same command again "
        "on every process to resume from the last checkpoint."
    )


def start(address, index, count):
    """Watches the other processes (`address`: the chief's "host:port" heartbeat address)."""
    global _current
    if _current is not None:
        return
    child = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), address, str(index), str(count), str(os.getpid())],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    problem = child.stdout.readline().strip()  # "listening" once the chief's port is bound
    if problem != "listening":
        child.wait()
        raise RuntimeError(problem or "The heartbeat process ended at its start.")
    atexit.register(_tell, child, "stopped")
    _current = child


def finished():
    """The run ended well here: the peers stop watching this process, and it stops watching them."""
    global _current
    if _current is not None:
        _tell(_current, "end")
        _current.wait()
        _current = None


def wait_for_verdict(seconds=5.0):
    """Gives the child `seconds` to end this process where a peer was lost, or returns at once
    without a heartbeat: a training process often learns of a lost peer first from a collective
    that fails, and the run's one line, not that error's traceback, is what its user should see."""
    if _current is not None and _current.poll() is None:
        time.sleep(seconds)


def _tell(child, word):
    try:
        child.stdin.write(f"{word}\n")
        child.stdin.close()
    except (OSError, ValueError):
        pass  # already told, or already gone


class _Heartbeat:
    def __init__(self, address, index, count, parent):
        host, port = address.rsplit(":", 1)
        self.index, self.count, self.lock, self.peers, self.closed = index, count, threading.Lock(), {}, False
        self.parent, self.server = parent, None
        if index == 0:
            try:
                self.server = server = socket.create_server((host.strip("[]"), int(port)))
            except OSError as error:
                print(f"The chief could not listen for its processes' heartbeat on {address} ({error.strerror}): "
                      f"keep the port after the coordinator's ({int(port) - PORT_OFFSET}) free.", flush=True)
                sys.exit(1)
            self._thread(self._accept, server)
        else:
            self._thread(self._connect, host.strip("[]"), int(port))
        print("listening", flush=True)
        self._thread(self._beat)

    def _thread(self, target, *args):
        threading.Thread(target=target, args=args, daemon=True, name="keras_preact-heartbeat").start()

    def _accept(self, server):
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed: the run ended
                return
            self._thread(self._watch, connection, None)

    def _connect(self, host, port):
        deadline = time.monotonic() + CONNECT_SECONDS
        while True:
            try:
                connection = socket.create_connection((host, port), timeout=BEAT_SECONDS)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self._stop(0, "unreachable")
                time.sleep(0.2)
        self._send(connection, f"hello {self.index}")
        with self.lock:
            self.peers[0] = connection
        self._watch(connection, 0)

    def _watch(self, connection, peer):
        """Reads `peer`'s messages until it ends; `peer` is None until its hello names it."""
        connection.settimeout(SILENT_SECONDS)
        reader = connection.makefile("r")
        try:
            for line in reader:
                word, _, value = line.strip().partition(" ")
                if word == "hello":
                    peer = int(value)
                    with self.lock:
                        self.peers[peer] = connection
                elif word == "end":
                    with self.lock:
                        self.peers.pop(peer, None)
                    return
                elif word in ("stopped", "lost"):
                    self._stop(int(value) if value else peer, word)
        except (OSError, ValueError):
            pass  # a reset, or SILENT_SECONDS without a beat
        if peer is not None:
            self._stop(peer, "lost")

    def _beat(self):
        while not self.closed:
            with self.lock:
                connections = list(self.peers.values())
            for connection in connections:
                self._send(connection, "beat")
            time.sleep(BEAT_SECONDS)

    def _send(self, connection, line):
        try:
            connection.sendall(f"{line}\n".encode())
        except OSError:
            pass  # the reading side notices a lost peer

    def close(self, word):
        if self.closed:
            return
        self.closed = True
        with self.lock:
            connections, self.peers = list(self.peers.values()), {}
        for connection in connections:
            self._send(connection, word if word == "end" else f"{word} {self.index}")
        if self.server is not None:
            self.server.close()

    def _stop(self, peer, event):
        if self.closed:
            return
        with self.lock:
            others = [c for p, c in self.peers.items() if p != peer]
        for connection in others:  # the chief tells the others which process it was
            self._send(connection, f"{event if event != 'unreachable' else 'lost'} {peer}")
        self.closed = True
        print(message(peer, self.count, event), file=sys.stderr, flush=True)
        os.kill(self.parent, signal.SIGKILL)  # no traceback: it may be inside a collective that never returns
        os._exit(1)

    def follow_parent(self):
        """Until the training process says how it ended ("end", "stopped"), or dies (end of input:
        the connections close and the peers see it lost)."""
        word = sys.stdin.readline().strip()
        if word:
            self.close(word)


if __name__ == "__main__":
    _Heartbeat(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])).follow_parent()
