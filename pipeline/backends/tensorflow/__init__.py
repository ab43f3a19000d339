"""TensorFlow (Keras 3): a tf.function step; XLA and Model.fit variants; multi-worker strategy.

Its import calls into CUDA's runtime, and CUDA touched before a fork fails in the child (tensorflow/tensorflow#57877):
where a GPU is visible its bench children start from nothing rather than from a forked zygote.
"""
from pipeline.backends import Framework

FRAMEWORK = Framework(
    name="tensorflow", label="TensorFlow", short="tf", module="tensorflow",
    packages=("tensorflow", "keras"), loader="tf.data, num_parallel_calls (and AUTOTUNE)", forks_on_gpu=False,
    engine="MultiWorkerMirroredStrategy, one process per worker (TF_CONFIG)")
