"""Keras' Conv2D and BatchNormalization on each backend's fastest kernels, with Keras' numbers.

Costs of Keras 3 that a pre-activation ResNet, with a BatchNorm before every convolution, pays
in full (measured in benchmarks/ANALYSIS.md):

- BatchNorm is built from separate ops (mean, variance, subtract, multiply, add), each a pass over
  the activations and another in the backward pass. TensorFlow and PyTorch each ship one fused
  kernel; `BatchNorm` calls it (on torch, ResNet-164: ≈650 ms of BatchNorm kernels per step before,
  ≈270 ms like native PyTorch after).
- On torch with channels-last data, Keras' convolution copies its input twice (to contiguous NCHW,
  then to channels-last NCHW), though an NHWC tensor already *is* a channels-last NCHW tensor.
  `Conv2D` hands PyTorch the view.
- On JAX, XLA:CPU computes a 1×1 convolution's filter gradient 3.5× slower than the same matrix
  product; `Conv2D` writes stride-1 1×1 convolutions as one.

Both keep Keras' conventions, so outputs and weights are those of the Keras layers (weights load
either way; a `.keras` file names these registered classes):
the moving variance averages the *biased* batch variance, and half-precision inputs are
normalised in float32.
"""

import functools

import keras
from keras import ops

BN_MOMENTUM = 0.9  # Torch's running-average momentum 0.1
BN_EPSILON = 1e-5  # Torch's default
# The official init: normal(0, sqrt(2 / (k*k*C_out))), He fan-out, *untruncated* (Keras' HeNormal is
# fan-in and truncated).
CONV_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}


def _torch_kernel(x, gamma, beta, mean, variance, channels_first, epsilon, training):
    import torch

    if not channels_first:
        # NHWC as an NCHW view in channels-last strides: PyTorch's kernel reads it in place.
        x = x.permute(0, 3, 1, 2)
    batch_mean = batch_variance = None
    if training:
        # native_batch_norm also returns the batch statistics it used (F.batch_norm does not).
        outputs, batch_mean, inverse_std = torch.native_batch_norm(x, gamma, beta, None, None, True, 0.0, epsilon)
        # It saves 1/sqrt(var + eps) for its backward pass; the biased variance is in it.
        batch_mean, inverse_std = batch_mean.detach(), inverse_std.detach()
        batch_variance = inverse_std.square().reciprocal() - epsilon
    else:
        # The public op: exportable to ONNX and torch.export.
        outputs = torch.nn.functional.batch_norm(x, mean, variance, gamma, beta, False, 0.0, epsilon)
    if not channels_first:
        outputs = outputs.permute(0, 2, 3, 1)
    return outputs, batch_mean, batch_variance


def _tensorflow_kernel(x, gamma, beta, mean, variance, channels_first, epsilon, training):
    import tensorflow as tf

    outputs, batch_mean, batch_variance = tf.compat.v1.nn.fused_batch_norm(
        x,
        gamma,
        beta,
        mean=None if training else mean,
        variance=None if training else variance,
        epsilon=epsilon,
        data_format="NCHW" if channels_first else "NHWC",
        is_training=training,
    )
    if not training:
        return outputs, None, None
    # TensorFlow returns the Bessel-corrected variance; Keras' moving average uses the biased one.
    count = tf.cast(tf.size(x) // tf.size(batch_mean), batch_variance.dtype)
    return outputs, batch_mean, batch_variance * (count - 1.0) / count


FUSED_KERNELS = {"torch": _torch_kernel, "tensorflow": _tensorflow_kernel}


@functools.cache
def _tensorflow_cpu_needs_nhwc():
    """Whether TensorFlow convolves on the CPU without oneDNN, which takes NHWC only."""
    import tensorflow as tf

    from keras_preact.runtime import tensorflow_onednn_enabled

    return tensorflow_onednn_enabled() is False and not tf.config.list_logical_devices("GPU")


@keras.saving.register_keras_serializable(package="keras_preact")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` on the faster kernel where Keras' own is slow (channels-last data).

    On torch the NHWC input is given to `torch.nn.functional.conv2d` as the NCHW view it is
    (channels-last strides, which PyTorch's CPU and cuDNN kernels prefer) instead of being copied
    twice; padding "same" takes this path where it is symmetric (stride 1 with an odd kernel, or a
    1×1 kernel). On JAX a stride-1 1×1 convolution is a matrix product, whose gradients XLA:CPU
    computes faster. Grouped convolutions and everything else are Keras' own code.

    Example:

    >>> import numpy as np
    >>> conv = Conv2D(4, 3, padding="same", use_bias=False)
    >>> tuple(conv(np.zeros((1, 8, 8, 3), "float32")).shape)
    (1, 8, 8, 4)
    """

    def _torch_padding(self):
        if self.padding == "valid":
            return 0
        if all(k == 1 for k in self.kernel_size) or (
            all(s == 1 for s in self.strides) and all(k % 2 for k in self.kernel_size)
        ):
            return tuple(d * (k // 2) for k, d in zip(self.kernel_size, self.dilation_rate))
        return None

    def call(self, inputs):
        outputs = self.convolution_op(inputs, self.kernel)
        if self.use_bias:
            shape = [1] * len(outputs.shape)
            shape[-1 if self.data_format == "channels_last" else 1] = self.filters
            # `+`, not keras.ops.add: on TensorFlow (Keras 3.15.1) ops.add turns an
            # (N, C, H, W) + (1, C, 1, 1) sum into a bias_add over the *last* axis when W == C.
            outputs = outputs + ops.reshape(self.bias, shape)
        return outputs if self.activation is None else self.activation(outputs)

    def convolution_op(self, inputs, kernel):
        backend = keras.backend.backend()
        if backend == "tensorflow" and self.data_format == "channels_first" and _tensorflow_cpu_needs_nhwc():
            # TensorFlow's own CPU kernels (oneDNN off) refuse NCHW convolutions and their
            # gradients; convolve the NHWC view of the same numbers instead.
            outputs = ops.conv(
                ops.transpose(inputs, (0, 2, 3, 1)), kernel, strides=self.strides, padding=self.padding,
                dilation_rate=self.dilation_rate, data_format="channels_last",
            )
            return ops.transpose(outputs, (0, 3, 1, 2))
        if self.data_format != "channels_last" or self.groups != 1 or backend not in ("jax", "torch"):
            return super().convolution_op(inputs, kernel)
        if backend == "jax":
            # XLA:CPU computes a 1×1 filter gradient 3.5× faster as a matrix product.
            if all(k == 1 for k in self.kernel_size) and all(s == 1 for s in self.strides):
                return ops.matmul(inputs, kernel[0, 0])
            return super().convolution_op(inputs, kernel)
        padding = self._torch_padding()
        if padding is None:
            return super().convolution_op(inputs, kernel)
        import torch

        inputs, kernel = ops.convert_to_tensor(inputs), ops.convert_to_tensor(kernel)
        outputs = torch.nn.functional.conv2d(
            inputs.permute(0, 3, 1, 2),  # NHWC -> NCHW view, channels-last strides
            kernel.permute(3, 2, 0, 1),  # HWIO -> OIHW
            stride=self.strides,
            padding=padding,
            dilation=self.dilation_rate,
        )
        return outputs.permute(0, 2, 3, 1)


@keras.saving.register_keras_serializable(package="keras_preact")
class BatchNorm(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that runs the backend's fused kernel where there is one.

    On TensorFlow (`FusedBatchNormV3`) and torch (`native_batch_norm`), 4-D inputs normalised over
    the channel axis (first or last) take one fused kernel, in training and inference. JAX has no
    such kernel (XLA fuses the element-wise ops itself), and masks, renormalisation and synchronised
    statistics are Keras-only features; those take Keras' implementation. Either way the outputs and
    the moving statistics are Keras' within float32 rounding.

    Statistics across data-parallel replicas (training): `synchronized=True` computes them over the
    global batch — Keras' own implementation on TensorFlow's strategies, an all-gather of every
    process's moments under torch.distributed (our addition), and on JAX the global batch that
    `DataParallel` already normalises over. `virtual_groups=n` computes them per group of
    batch/n consecutive examples (TensorFlow 1's "ghost" batch norm): per-replica statistics on
    JAX, whose data-parallel batch is split across n devices the same way. The moving statistics
    average the groups' (or replicas') updates, as a MirroredStrategy does.

    Args:
        fused: use the fused kernel where the backend has one (True), or always Keras' ops.
        virtual_groups: normalise each of this many consecutive groups of a training batch with
            its own statistics (1: the whole batch).
        **kwargs: arguments of `keras.layers.BatchNormalization` (`synchronized` included).

    Example:

    >>> import numpy as np
    >>> layer = BatchNorm(momentum=0.9, epsilon=1e-5)
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(8, 4, 4, 2)).astype("float32")
    >>> y = keras.ops.convert_to_numpy(layer(x, training=True))
    >>> bool(np.allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5))
    True
    >>> bool(np.allclose(keras.ops.convert_to_numpy(layer.moving_mean), 0.1 * x.mean(axis=(0, 1, 2)), atol=1e-5))
    True
    """

    def __init__(self, fused=True, virtual_groups=1, synchronized=False, **kwargs):
        if not isinstance(synchronized, bool):
            raise TypeError(f"synchronized must be True or False, got {synchronized!r}.")
        # Keras implements synchronized statistics on TensorFlow only (and refuses the flag
        # elsewhere); on torch ours all-gathers across processes, and JAX's DataParallel
        # normalises over the global batch already.
        super().__init__(synchronized=synchronized and keras.backend.backend() == "tensorflow", **kwargs)
        self.synchronized_statistics = synchronized
        if not isinstance(fused, bool):
            raise TypeError(f"fused must be True or False, got {fused!r}.")
        if isinstance(virtual_groups, bool) or not isinstance(virtual_groups, int) or virtual_groups < 1:
            raise ValueError(f"virtual_groups must be a positive integer, got {virtual_groups!r}.")
        self.fused = fused
        self.virtual_groups = virtual_groups

    def _replica_statistics(self, training):
        """How this call's batch statistics span replicas: None (the batch as Keras has it),
        "groups" (virtual groups) or "processes" (an all-gather across torch processes)."""
        if not (training and self.trainable):
            return None
        if self.virtual_groups > 1:
            return "groups"
        if self.synchronized_statistics and keras.backend.backend() == "torch":
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                return "processes"
        return None

    def _kernel(self, inputs, mask):
        if not self.fused or mask is not None or self.renorm or self.synchronized or len(inputs.shape) != 4:
            return None
        if self.axis % 4 not in (1, 3) or not (self.scale and self.center):
            return None
        if keras.backend.standardize_dtype(inputs.dtype) not in ("float16", "bfloat16", "float32"):
            return None
        return FUSED_KERNELS.get(keras.backend.backend())

    def call(self, inputs, training=None, mask=None):
        spans = self._replica_statistics(training)
        if spans is not None:
            if mask is not None or self.renorm or len(inputs.shape) != 4 or self.axis % 4 not in (1, 3):
                raise ValueError(f"{self.name}: virtual_groups and torch's synchronized statistics take 4-D, unmasked inputs.")
            return self._normalize_across_replicas(inputs, spans)
        kernel = self._kernel(inputs, mask)
        if kernel is None:
            return super().call(inputs, training=training, mask=mask)
        training = bool(training and self.trainable)
        gamma, beta, moving_mean, moving_variance = (
            ops.cast(v, "float32") for v in (self.gamma, self.beta, self.moving_mean, self.moving_variance)
        )
        outputs, mean, variance = kernel(
            inputs, gamma, beta, moving_mean, moving_variance, self.axis % 4 == 1, self.epsilon, training
        )
        if training:
            self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return ops.cast(outputs, self.compute_dtype)

    def _normalize_across_replicas(self, inputs, spans):
        x = ops.cast(inputs, "float32")
        channels = self.axis % 4
        groups = self.virtual_groups if spans == "groups" else 1
        if x.shape[0] is not None and x.shape[0] % groups:
            raise ValueError(f"{self.name}: a batch of {x.shape[0]} does not split into virtual_groups={groups}.")
        grouped = ops.reshape(x, (groups, -1, *x.shape[1:]))  # (groups, batch / groups, ...)
        axes = [axis + 1 for axis in range(4) if axis != channels]
        mean = ops.mean(grouped, axis=axes, keepdims=True)
        variance = ops.mean(ops.square(grouped - mean), axis=axes, keepdims=True)  # biased, as Keras'
        if spans == "processes":
            mean, variance = _all_process_moments(mean, variance)
        shape = [1, 1, 1, 1, 1]
        shape[channels + 1] = -1
        gamma = ops.reshape(ops.cast(self.gamma, "float32"), shape)
        beta = ops.reshape(ops.cast(self.beta, "float32"), shape)
        outputs = (grouped - mean) * ops.rsqrt(variance + self.epsilon) * gamma + beta
        # The moving statistics average the groups' updates, as a MirroredStrategy averages its replicas'.
        for variable, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            batch = ops.mean(ops.reshape(batch, (-1, batch.shape[channels + 1])), axis=0)
            variable.assign(ops.cast(variable, "float32") * self.momentum + batch * (1.0 - self.momentum))
        return ops.cast(ops.reshape(outputs, ops.shape(inputs)), self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "fused": self.fused,
            "virtual_groups": self.virtual_groups,
            "synchronized": self.synchronized_statistics,
        }


def _all_process_moments(mean, variance):
    """The batch's mean and biased variance over every torch process (equal local batches), from
    each process's; differentiable, as SyncBatchNorm's."""
    import torch
    from torch.distributed.nn.functional import all_gather

    means, variances = torch.stack(all_gather(mean)), torch.stack(all_gather(variance))
    global_mean = means.mean(dim=0)
    return global_mean, (variances + (means - global_mean) ** 2).mean(dim=0)


def batch_norm(name, axis, dtype=None, **options):
    """BatchNorm with Torch's epsilon and momentum: the one used everywhere in the networks.
    `options`: how statistics span replicas (`synchronized`, `virtual_groups`)."""
    return BatchNorm(axis=axis, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, name=name, **options)


def conv(filters, kernel, name, strides=1, padding="same", use_bias=False, data_format=None, dtype=None, **kwargs):
    """Conv2D with the official init and, unless asked, no bias: every conv of the networks."""
    return Conv2D(
        filters,
        kernel,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer=keras.initializers.get(CONV_INITIALIZER),
        data_format=data_format,
        dtype=dtype,
        name=name,
        **kwargs,
    )
