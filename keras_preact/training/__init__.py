"""Training: run configuration, input pipelines, the recipe, placement over devices and processes,
and the run itself.

>>> from keras_preact import training
>>> config = training.RunConfig(depth=20, epochs=3).resolved()
>>> config.block, config.batch_size
('basic', 128)
"""

from keras_preact.training.config import RunConfig, build_model
from keras_preact.training.runner import TrainingDiverged, run

__all__ = ["RunConfig", "TrainingDiverged", "build_model", "run"]
