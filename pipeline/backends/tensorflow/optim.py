"""The optimizers in Keras with torch.optim's maths, and fp16 loss scaling as PyTorch's."""
from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as the backend module: stage logs stay readable
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from keras import ops  # noqa: E402

from pipeline.spec import LOSS_SCALE, LOSS_SCALE_GROWTH, Optim  # noqa: E402


class TorchFormAdam(keras.optimizers.Adam):
    """Adam with epsilon added after bias correction, as torch.optim.Adam and the paper's Algorithm 1.

    Keras' Adam adds epsilon to sqrt(v) before bias correction, which equals torch's eps scaled by
    sqrt(1 - beta2^t): a different optimizer in the first thousands of steps.
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        dt = variable.dtype
        lr, g = ops.cast(learning_rate, dt), ops.cast(gradient, dt)
        t = ops.cast(self.iterations + 1, dt)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(g, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(g), v), 1 - self.beta_2))
        m_hat = ops.divide(m, 1 - ops.power(ops.cast(self.beta_1, dt), t))
        v_hat = ops.divide(v, 1 - ops.power(ops.cast(self.beta_2, dt), t))
        self.assign_sub(variable, ops.divide(ops.multiply(lr, m_hat), ops.add(ops.sqrt(v_hat), self.epsilon)))


def make_optimizer(o: Optim, loss_scaled: bool = False) -> keras.optimizers.Optimizer:
    """Every hyperparameter explicit; `loss_scaled` (fp16) wraps it in dynamic loss scaling with spec's settings,
    as the PyTorch backend's GradScaler has them (Keras' own wrapping in compile() would use its defaults)."""
    if o.name == "adam":
        opt = TorchFormAdam(learning_rate=o.lr, beta_1=o.beta1, beta_2=o.beta2, epsilon=o.eps, amsgrad=False,
                            name="torch_form_adam")  # Keras derives scope names from the class name otherwise
    else:
        opt = keras.optimizers.SGD(learning_rate=o.lr, momentum=o.momentum if o.name == "momentum" else 0.0,
                                   nesterov=False)
    return keras.optimizers.LossScaleOptimizer(opt, initial_scale=LOSS_SCALE, dynamic_growth_steps=LOSS_SCALE_GROWTH) \
        if loss_scaled else opt


def scaled_loss(opt: keras.optimizers.Optimizer, loss: Any) -> Any:
    """The loss to differentiate: multiplied by the current scale under fp16's loss scaling, else itself."""
    return opt.scale_loss(loss) if isinstance(opt, keras.optimizers.LossScaleOptimizer) else loss
