"""Keras callbacks of a run: NaN stop, atomic per-epoch checkpoints, throughput."""

import math
import os
import time

import keras
import numpy as np


def _finite(logs, key):
    return math.isfinite(float((logs or {}).get(key, 0.0)))


class StopOnNaN(keras.callbacks.Callback):
    """Stops at the first non-finite training loss, or at an epoch whose evaluation is not finite
    (the weights went non-finite in its last update), and remembers where."""

    def __init__(self):
        super().__init__()
        self.where = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.where = f"epoch {self.epoch + 1}, step {batch + 1}"
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.where is None and not _finite(logs, "val_loss"):
            self.where = f"the evaluation after epoch {epoch + 1}"
            self.model.stop_training = True


class Checkpoint(keras.callbacks.Callback):
    """Writes model + optimizer state after every epoch whose losses are finite, atomically.

    The optimizer's iteration count is inside the file, so a restarted run knows its epoch and
    learning rate from the file alone; a kill at any point leaves the previous file intact.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        if not (_finite(logs, "loss") and _finite(logs, "val_loss")):
            return  # keep the last good state
        partial = self.path + ".partial.weights.h5"
        self.model.save_weights(partial)
        os.replace(partial, self.path)


class Throughput(keras.callbacks.Callback):
    """Training images per second per epoch, from the end of its first step (which holds the
    tracing and compilation) to the start of its evaluation."""

    def __init__(self, global_batch):
        super().__init__()
        self.global_batch = global_batch
        self.rates = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.steps, self.measured = None, 0, False

    def on_train_batch_end(self, batch, logs=None):
        if self.start is None:
            self.start = time.perf_counter()
        else:
            self.steps += 1

    def _record(self):
        if not self.measured and self.steps:
            self.rates.append(self.steps * self.global_batch / (time.perf_counter() - self.start))
            self.measured = True

    def on_test_begin(self, logs=None):
        self._record()

    def on_epoch_end(self, epoch, logs=None):
        self._record()

    def images_per_second(self):
        return float(np.median(self.rates)) if self.rates else 0.0
