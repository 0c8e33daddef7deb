"""A heartbeat between the processes of a multi-process run, so a lost process ends the run in
seconds, with one line, instead of a collective that waits minutes or aborts with a traceback.

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
import socket
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
    if _current is None:
        _current = _Heartbeat(address, index, count)


def finished():
    """The run ended well here: the peers stop watching this process, and it stops watching them."""
    global _current
    if _current is not None:
        _current.close("end")
        _current = None


class _Heartbeat:
    def __init__(self, address, index, count):
        host, port = address.rsplit(":", 1)
        self.index, self.count, self.lock, self.peers, self.closed = index, count, threading.Lock(), {}, False
        self.server = None
        if index == 0:
            try:
                self.server = server = socket.create_server((host.strip("[]"), int(port)))
            except OSError as error:
                raise RuntimeError(
                    f"The chief could not listen for its processes' heartbeat on {address} ({error.strerror}): "
                    f"keep the port after the coordinator's ({int(port) - PORT_OFFSET}) free."
                ) from None
            self._thread(self._accept, server)
        else:
            self._thread(self._connect, host.strip("[]"), int(port))
        self._thread(self._beat)
        atexit.register(self.close, "stopped")

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
        os._exit(1)  # no traceback: the main thread may be inside a collective that never returns
