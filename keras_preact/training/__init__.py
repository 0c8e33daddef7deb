"""Training: run configuration, input pipelines, the recipe, placement over devices and processes,
and the run itself.

>>> from keras_preact import training
>>> config = training.RunConfig(depth=20, epochs=3).resolved()
>>> config.block, config.batch_size
('basic', 128)
"""

from keras_preact.training.config import RunConfig, build_model

__all__ = ["RunConfig", "TrainingDiverged", "build_model", "run"]


def __getattr__(name):
    # The runner imports TensorFlow (tf.data); loaded on first use, so that `import keras_preact`
    # on JAX or torch (preprocess_input, the builders) does not start TensorFlow.
    if name in ("TrainingDiverged", "run"):
        from keras_preact.training import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
