"""The canonical layers (spec.py) as Keras layers, each under the backend's dtype policy."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as the backend module: stage logs stay readable
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

from pipeline.spec import Act, Conv, Dense, Dropout, Flatten, Pool  # noqa: E402


def keras_layer(layer: object, dtype: str) -> keras.layers.Layer:
    """One canonical layer as Keras builds it: 'same' convolutions, NHWC, `dtype` its precision policy."""
    match layer:
        case Conv(k, _, c_out):
            return keras.layers.Conv2D(c_out, k, padding="same", dtype=dtype)
        case Pool(size):
            return keras.layers.MaxPooling2D(size, dtype=dtype)
        case Flatten():
            return keras.layers.Flatten(dtype=dtype)
        case Dense(_, n_out):
            return keras.layers.Dense(n_out, dtype=dtype)
        case Dropout(p):
            return keras.layers.Dropout(p, dtype=dtype)
        case Act(fn):
            return keras.layers.ReLU(dtype=dtype) if fn == "relu" else keras.layers.Activation(fn, dtype=dtype)
    raise TypeError(f"unknown layer {layer!r}")
