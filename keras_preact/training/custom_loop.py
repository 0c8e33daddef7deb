"""A training loop for the multi-process runs that Keras 3.15.1's `fit` cannot run:

- torch processes under `torchrun`: `fit` has no data-parallel mode for torch (Keras' torch
  DataParallel is on its main branch, unreleased); the Keras model runs in
  `DistributedDataParallel`, which averages the gradients across processes.
- TensorFlow's `MultiWorkerMirroredStrategy`: `fit` reduces scalar metrics with
  `strategy.reduce(..., axis=0)` and cannot build a model from a distributed batch
  (keras-team/keras#20585, open); the step runs under `strategy.run` instead.

The loop does for a run what `fit` does: the compiled optimizer (TorchSGD and its schedule), the
loss and accuracy of the global batch, the same callbacks (checkpoints, history.csv, TensorBoard,
NaN stop, progress bar), and an evaluation after every epoch.
"""

import contextlib

import keras
import numpy as np

from keras_preact.training import step_capture


class TorchProcesses:
    """One step of a torch.distributed process: DDP forward and backward, the Keras optimizer;
    run as `step_mode` says (`step_capture.resolve`): with "cuda_graph", the step and its
    gradient all-reduce are replayed as one CUDA graph (NCCL collectives are captured)."""

    def __init__(self, model, step_mode="eager"):
        import torch

        self.torch = torch
        self.device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        ids = [torch.cuda.current_device()] if self.device != "cpu" else None
        graphs = step_capture.graphs_for(step_mode)
        # PyTorch's CUDA graphs notes: DDP built on a side stream (the capture's) before a full-backward capture.
        with graphs.side_stream() if graphs else contextlib.nullcontext():
            self.model, self.ddp = model, torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.loss = keras.losses.SparseCategoricalCrossentropy()  # the loss the run compiles
        self.step = step_capture.CapturedStep(self._device_step, graphs, step_capture.DDP_WARMUP_STEPS, self._all_agree)

    def batches(self, dataset):
        for batch in dataset:  # tf.data's host tensors, or the device pipeline's torch tensors
            yield tuple(self.torch.as_tensor(part if self.torch.is_tensor(part) else np.asarray(part)).to(self.device)
                        for part in batch)

    def _sums(self, values):
        return self._summed(self.torch.tensor(values, dtype=self.torch.float64, device=self.device))

    def _summed(self, tensor):
        import torch.distributed as dist

        dist.all_reduce(tensor)
        return tensor.tolist()

    def _all_agree(self, ok):
        return self._sums([float(not ok)])[0] == 0

    def _device_step(self, batch):
        """The step on the device, capturable: the batch's loss sum and correct count as a tensor."""
        x, y = batch
        trainable = self.model.trainable_variables
        for variable in trainable:
            variable.value.grad = None
        logits = self.ddp(x, training=True)
        loss = self.loss(y, logits)
        self.model.optimizer.scale_loss(loss).backward()  # DDP averages the gradients here
        self.model.optimizer.apply([variable.value.grad for variable in trainable], trainable)
        sums = [loss.detach().to(self.torch.float64) * len(y), (logits.argmax(-1) == y).sum().to(self.torch.float64)]
        return self.torch.stack(sums)

    def train_step(self, batch):
        count = self.torch.full((1,), len(batch[1]), dtype=self.torch.float64, device=self.device)
        return self._summed(self.torch.cat([self.step(batch), count]))  # a copy: the graph's output stays its own

    def test_step(self, batch):
        x, y = batch
        with self.torch.no_grad():
            logits = self.model(x, training=False)
            return [float(self.loss(y, logits)) * len(y), float((logits.argmax(-1) == y).sum()), len(y)]

    def total(self, sums):
        return self._sums(sums)

    def end_epoch(self):
        """Averages the BatchNorm moving statistics, which each process updated from its own
        batches, as a MirroredStrategy keeps them (the moving average is linear, so once per
        epoch equals every step)."""
        import torch.distributed as dist

        for variable in moving_statistics(self.model):
            dist.all_reduce(variable.value.data, op=dist.ReduceOp.AVG)


class TensorFlowWorkers:
    """One step of a MultiWorkerMirroredStrategy: `strategy.run` of a gradient step, whose
    gradients the Keras optimizer all-reduces."""

    def __init__(self, model, strategy, global_batch):
        import tensorflow as tf

        self.model, self.strategy, self.tf = model, strategy, tf
        loss = keras.losses.SparseCategoricalCrossentropy(reduction=None)

        def replica_train(x, y):
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                losses = loss(y, logits)
                scaled = tf.reduce_sum(losses) / global_batch  # the replicas' sum: the global mean
            trainable = model.trainable_variables
            grads = tape.gradient(model.optimizer.scale_loss(scaled), trainable)
            model.optimizer.apply(grads, trainable)
            return self._sums(y, logits, losses)

        def replica_test(x, y):
            logits = model(x, training=False)
            return self._sums(y, logits, loss(y, logits))

        def replica_average():
            statistics = [variable.value for variable in moving_statistics(model)]
            means = tf.distribute.get_replica_context().all_reduce("MEAN", [v.read_value() for v in statistics])
            for variable, mean in zip(statistics, means):
                variable.assign(mean)  # aggregation "none": each replica's own copy

        self._train = tf.function(lambda x, y: self._reduce(strategy.run(replica_train, args=(x, y))))
        self._test = tf.function(lambda x, y: self._reduce(strategy.run(replica_test, args=(x, y))))
        self._average = tf.function(lambda: strategy.run(replica_average))

    def _sums(self, y, logits, losses):
        tf = self.tf
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.float32))
        return tf.reduce_sum(losses), correct, tf.cast(tf.size(y), tf.float32)

    def _reduce(self, sums):
        return [self.strategy.reduce("SUM", value, axis=None) for value in sums]

    def batches(self, dataset):
        return iter(self.strategy.experimental_distribute_dataset(dataset))

    def train_step(self, batch):
        return [float(v) for v in self._train(*batch)]

    def test_step(self, batch):
        return [float(v) for v in self._test(*batch)]

    def total(self, sums):
        return sums  # already summed over the workers

    def end_epoch(self):
        """Averages the BatchNorm moving statistics: Keras creates them with aggregation "none",
        so each replica updates its own copy from its own batches, and the checkpoint holds the
        chief's alone (a resumed run would then evaluate with other statistics)."""
        self._average()


def moving_statistics(model):
    """The float non-trainable variables: BatchNorm's moving means and variances."""
    return [variable for variable in model.non_trainable_variables if variable.dtype.startswith("float")]


def evaluate(engine, dataset):
    """(loss, accuracy) over every process's part of `dataset`."""
    sums = [0.0, 0.0, 0.0]
    for batch in engine.batches(dataset):
        sums = [a + b for a, b in zip(sums, engine.test_step(batch))]
    loss, correct, count = engine.total(sums)
    return loss / count, correct / count


def fit(model, engine, dataset, plan, initial_epoch, validation_data, callbacks, verbose):
    """`model.fit` for the engines above (`dataset`: this process's batches of epochs
    `initial_epoch` … `plan.epochs - 1`, `plan` the run's `pipelines.BatchPlan`), calling
    `callbacks` (Keras callbacks) as fit does."""
    epochs, steps_per_epoch = plan.epochs, plan.steps
    callbacks = keras.callbacks.CallbackList(
        callbacks, add_progbar=bool(verbose), model=model, verbose=verbose, epochs=epochs, steps=steps_per_epoch
    )
    batches = engine.batches(dataset)
    model.stop_training = False
    callbacks.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        callbacks.on_epoch_begin(epoch)
        sums, logs = [0.0, 0.0, 0.0], {}
        for step in range(steps_per_epoch):
            callbacks.on_train_batch_begin(step)
            sums = [a + b for a, b in zip(sums, engine.train_step(next(batches)))]
            logs = {"loss": sums[0] / sums[2], "accuracy": sums[1] / sums[2]}
            callbacks.on_train_batch_end(step, logs)
            if model.stop_training:  # every process sees the same global loss, so all stop
                break
        engine.end_epoch()
        logs["val_loss"], logs["val_accuracy"] = evaluate(engine, validation_data)
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end()
