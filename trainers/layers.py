"""Layers and initializers shared by the recipes' model builders.

The recipes (trainers/recipes/*.py) each hold their own architecture; what
several of them use lives here: local response normalization (Keras 3 has no
LRN layer), a bias added after a residual sum (the MNIST ResNet's variant),
TF1's truncated-normal initializer and the tutorial's weight-decay convention.
Custom layers are registered so `keras.models.load_model` rebuilds them in safe
mode (a `Lambda` layer would refuse to load).
"""

import keras
import tensorflow as tf

_PACKAGE = "cnn_pipeline"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LocalResponseNormalization(keras.layers.Layer):
  """`tf.nn.local_response_normalization` over the channel axis, as a layer.

  Args:
    depth_radius: Half-width of the channel window.
    bias: Offset added inside the power (k in AlexNet).
    alpha: Scale of the sum of squares (not divided by the window size).
    beta: Exponent.
  """

  def __init__(self, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5, **kwargs):
    super().__init__(**kwargs)
    self.depth_radius = depth_radius
    self.bias = bias
    self.alpha = alpha
    self.beta = beta

  def call(self, inputs):
    # Under --precision mixed_*, in float32 and cast back: TensorFlow's CPU
    # kernel has no bfloat16 version, XLA's LRN fails on float16 ("mixed
    # precision is disallowed"), and the squares it sums overflow float16 soon.
    dtype = inputs.dtype
    if dtype in (tf.bfloat16, tf.float16):
      inputs = tf.cast(inputs, tf.float32)
    return tf.cast(
      tf.nn.local_response_normalization(
        inputs, depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha, beta=self.beta
      ),
      dtype,
    )

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha, beta=self.beta)
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BiasAdd(keras.layers.Layer):
  """Adds a learned per-channel bias (TF1's `tf.nn.bias_add` after a sum).

  Args:
    bias_initializer: Initializer of the bias vector.
  """

  def __init__(self, bias_initializer="zeros", **kwargs):
    super().__init__(**kwargs)
    self.bias_initializer = keras.initializers.get(bias_initializer)

  def build(self, input_shape):
    self.bias = self.add_weight(
      shape=(input_shape[-1],), initializer=self.bias_initializer, name="bias"
    )

  def call(self, inputs):
    return inputs + self.bias

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(bias_initializer=keras.initializers.serialize(self.bias_initializer))
    return config


def truncated_normal(stddev):
  """TF1's tf.truncated_normal_initializer: redraws beyond two standard deviations."""
  return keras.initializers.TruncatedNormal(mean=0.0, stddev=stddev)


def constant(value):
  return keras.initializers.Constant(value)


def weight_decay(wd):
  """The TF tutorial's `wd * tf.nn.l2_loss(W)` = `wd * sum(W**2) / 2` as a regularizer.

  tf.nn.l2_loss halves the sum of squares; keras' L2 does not. None: no decay.
  """
  return keras.regularizers.L2(wd / 2.0) if wd else None
