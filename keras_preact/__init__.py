"""keras_preact: the pre-activation ResNets of He et al. (ECCV 2016) for Keras 3.

Runs on TensorFlow, JAX and PyTorch (`KERAS_BACKEND`).

>>> import keras_preact
>>> model = keras_preact.ResNet1001(classes=100)
"""

from keras_preact.export import export_onnx, export_saved_model
from keras_preact.models import (
    PreActResNet,
    ResNet50,
    ResNet101,
    ResNet110,
    ResNet152,
    ResNet164,
    ResNet200,
    ResNet1001,
)
from keras_preact.layers import BatchNorm, Conv2D
from keras_preact.units import ResidualUnit

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "Conv2D",
    "export_onnx",
    "export_saved_model",
    "PreActResNet",
    "ResidualUnit",
    "ResNet50",
    "ResNet101",
    "ResNet110",
    "ResNet152",
    "ResNet164",
    "ResNet200",
    "ResNet1001",
    "__version__",
]
