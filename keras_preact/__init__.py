"""keras_preact: the pre-activation ResNets of He et al. (ECCV 2016) for Keras 3.

Runs on TensorFlow, JAX and PyTorch (`KERAS_BACKEND`).

>>> import keras_preact
>>> model = keras_preact.ResNet1001(classes=100)
>>> keras_preact.create_model("preact_resnet164").name
'resnet164'

The package follows the data: `model` (layers, the residual unit, the builders, preprocessing) →
`training` (configuration, input pipelines, recipe, placement, the run) → `serving` (SavedModel
and ONNX export, a TF-Serving-style REST server); `choices` holds every named option as data. The
commands are `keras-preact-train`, `keras-preact-export` and `keras-preact-serve` (installed
with the package; `examples/cifar.py` is the first as an example).
"""

# First, before Keras imports its backend: oneDNN and thread settings (see runtime.py).
from keras_preact import runtime  # isort: skip

runtime.configure()

from keras_preact.model.builders import (
    PreActResNet,
    ResNet50,
    ResNet101,
    ResNet110,
    ResNet152,
    ResNet164,
    ResNet200,
    ResNet1001,
)
from keras_preact.model.layers import BatchNorm, Conv2D
from keras_preact.model.preprocessing import decode_predictions, preprocess_input
from keras_preact.model.registry import create_model, list_models
from keras_preact.model.units import ResidualUnit
from keras_preact.serving.saved_model import export_onnx, export_saved_model

# Registered with Keras for `.keras` files of compiled models.
from keras_preact.training.recipe import StepSchedule, TorchSGD

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "Conv2D",
    "create_model",
    "decode_predictions",
    "export_onnx",
    "export_saved_model",
    "list_models",
    "PreActResNet",
    "preprocess_input",
    "ResidualUnit",
    "ResNet50",
    "ResNet101",
    "ResNet110",
    "ResNet152",
    "ResNet164",
    "ResNet200",
    "ResNet1001",
    "StepSchedule",
    "TorchSGD",
    "__version__",
]
