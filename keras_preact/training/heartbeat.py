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

The training process's standard error passes through the child, `HOLD_SECONDS` late: the engines
report a lost peer themselves, at the moment of the loss and from C++ (JAX's coordination client
logs a FATAL line, Gloo and gRPC their errors), so the child drops what is held when it finds a
peer lost, and its one line is all a survivor prints.

    >>> message(1, 2, "lost")[:44]
    'keras_preact: process 1 of 2 was lost (kille'
"""

import atexit
import os
import queue
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
HOLD_SECONDS = 0.5  # the training process's stderr is this late, so a lost peer's errors can be dropped
HELD_CHUNKS = 256  # of at most 64 KiB each
DRAIN_SECONDS = 5.0  # after finished(), how long a subprocess that shares the stderr pipe may hold it open

_current = None
_stderr = None  # the training process's own standard error, while the child relays it
_lock = threading.Lock()


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
    relay, relayed = os.pipe()
    child = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), address, str(index), str(count), str(os.getpid()),
                              str(relay)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, pass_fds=(relay,))
    os.close(relay)
    problem = child.stdout.readline().strip()  # "listening" once the chief's port is bound
    if problem != "listening":
        os.close(relayed)
        child.wait()
        raise RuntimeError(problem or "The heartbeat process ended at its start.")
    _relay_stderr(relayed)
    atexit.register(_tell, child, "stopped")
    _current = child
    threading.Thread(target=_outlive, args=(child, index, count), daemon=True, name="keras_preact-heartbeat").start()


def _relay_stderr(relayed):
    """Points this process's standard error (the descriptor: C++ writes to it too) at the child's relay."""
    global _stderr
    try:
        os.fstat(2)
    except OSError:  # started with stderr closed: nothing to relay
        os.close(relayed)
        return
    if sys.stderr is not None:
        sys.stderr.flush()
    _stderr = os.dup(2)
    os.dup2(relayed, 2)
    os.close(relayed)


def _restore_stderr():
    """This process's own standard error back on its descriptor (once)."""
    global _stderr
    with _lock:
        if _stderr is None:
            return
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(_stderr, 2)
        os.close(_stderr)
        _stderr = None


def _outlive(child, index, count):
    """If the child ends before the run does (killed, out of memory), this process's stderr comes
    back to it and it stops: its peers count it as lost and stop too."""
    status = child.wait()
    if _current is not child:  # finished(): the run ended well
        return
    _restore_stderr()
    print(f"keras_preact: the heartbeat process of process {index} of {count} ended (exit status {status}); "
          "this process stops too. Run the same command again on every process to resume from the last checkpoint.",
          file=sys.stderr, flush=True)
    if sys.stdout is not None:
        sys.stdout.flush()
    os._exit(1)


def finished():
    """The run ended well here: the peers stop watching this process, and it stops watching them."""
    global _current
    child, _current = _current, None
    if child is not None:
        _restore_stderr()  # the child relays what it holds, and exits at the pipe's end
        _tell(child, "end")
        child.wait()


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


class _Relay:
    """Copies the training process's standard error (the pipe `fd`) to this process's, each chunk
    `HOLD_SECONDS` after it came, until the pipe ends or `drop()`. At most `HELD_CHUNKS` wait: a
    slow reader of stderr slows its writer, as without the relay."""

    def __init__(self, fd):
        self.chunks, self.dropped = queue.Queue(HELD_CHUNKS), False
        self.reader = threading.Thread(target=self._read, args=(fd,), daemon=True)
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.reader.start()
        self.writer.start()

    def _read(self, fd):
        while chunk := os.read(fd, 65536):
            self.chunks.put((time.monotonic() + HOLD_SECONDS, chunk))
        self.chunks.put((0.0, b""))

    def _write(self):
        while True:
            due, chunk = self.chunks.get()
            if not chunk or self.dropped:
                return
            if self.reader.is_alive():  # once the pipe has ended, the rest goes at once
                time.sleep(max(0.0, due - time.monotonic()))
            if self.dropped:
                return
            try:
                while chunk:
                    chunk = chunk[os.write(2, chunk):]
            except OSError:  # nobody reads this process's stderr any more
                return

    def drop(self):
        self.dropped = True

    def drain(self, seconds):
        """Relays the rest: until the pipe ends (all its writers have exited; at most `seconds`,
        None: no limit), then everything it held."""
        self.reader.join(seconds)
        self.chunks.put((0.0, b""))
        self.writer.join()


class _Heartbeat:
    def __init__(self, address, index, count, parent, relay):
        host, port = address.rsplit(":", 1)
        self.index, self.count, self.lock, self.peers, self.closed = index, count, threading.Lock(), {}, False
        self.parent, self.server, self.relay = parent, None, relay
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
        self.relay.drop()
        print(message(peer, self.count, event), file=sys.stderr, flush=True)
        os.kill(self.parent, signal.SIGKILL)  # no traceback: it may be inside a collective that never returns
        os._exit(1)

    def follow_parent(self):
        """Until the training process says how it ended ("end", "stopped"), or dies (end of input:
        the connections close and the peers see it lost); then relays the rest of its stderr."""
        word = sys.stdin.readline().strip()
        self.close(word or "lost")  # no word: it died
        # After finished() it waits for this process; otherwise it is exiting or gone, and all it wrote is relayed.
        self.relay.drain(DRAIN_SECONDS if word == "end" else None)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the training process's to report
    relay = _Relay(int(sys.argv[5]))
    _Heartbeat(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), relay).follow_parent()
