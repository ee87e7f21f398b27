"""The TensorFlow CIFAR-10 tutorial (tensorflow/models tutorials/image/cifar10).

Where the numbers come from (cifar10.py, cifar10_input.py, cifar10_train.py,
cifar10_eval.py of the tutorial):
  model        cifar10.inference: conv5x5/64 relu, pool 3x3/2, LRN(4, 1, 0.001/9,
               0.75); conv5x5/64 relu (bias 0.1), LRN, pool; local3 384 and
               local4 192 relu (stddev 0.04, bias 0.1, wd 0.004);
               softmax_linear (stddev 1/192). 1,068,298 parameters at 24x24x3.
  optimizer    GradientDescentOptimizer, INITIAL_LEARNING_RATE 0.1, decayed x0.1
               (LEARNING_RATE_DECAY_FACTOR) every NUM_EPOCHS_PER_DECAY = 350
               epochs, staircase.
  batch, steps batch_size 128, max_steps 1,000,000 (cifar10_train flags).
  EMA          MOVING_AVERAGE_DECAY 0.9999 with num_updates = global step;
               cifar10_eval restores the averaged weights.
  evaluation   cifar10_eval runs on the test set (eval_data='test', all 10,000
               examples) every eval_interval_secs = 300 s; a step count suits
               a run on any hardware, so every 1,000 steps here.
  logging      log_frequency 10 steps.
  augmentation the data set's default (metadata.json): random 24x24 crop,
               flip, brightness 63, contrast 0.2-1.8, standardization; eval:
               centre crop 24x24 and standardization.
Text versus code: the tutorial's text says the model reaches ~86% "after 100K
steps"; its code trains 1M steps by default. We keep the code's 1M steps. The
tutorial also adds the weight-decay term of local3/local4 only (conv layers
have wd 0.0 in the code); kept as in the code.
"""

import keras

from trainers import layers
from trainers.recipes import Recipe


def build(num_classes=10, input_shape=(24, 24, 3), weight_decay=0.004):
  """cifar10.inference as a Keras model from images to logits.

  Args:
    num_classes: Number of logits.
    input_shape: (height, width, channels) of the (cropped) images.
    weight_decay: L2 factor of local3 and local4 (the tutorial's wd).

  Returns:
    An uncompiled `keras.Model`.
  """
  lrn = dict(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
  decay = layers.weight_decay(weight_decay)
  inputs = keras.Input(shape=input_shape, name="images")
  x = keras.layers.Conv2D(
    64,
    5,
    strides=1,
    padding="same",
    activation="relu",
    kernel_initializer=layers.truncated_normal(5e-2),
    bias_initializer=layers.constant(0.0),
    name="conv1",
  )(inputs)
  x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
  x = layers.LocalResponseNormalization(**lrn, name="norm1")(x)
  x = keras.layers.Conv2D(
    64,
    5,
    strides=1,
    padding="same",
    activation="relu",
    kernel_initializer=layers.truncated_normal(5e-2),
    bias_initializer=layers.constant(0.1),
    name="conv2",
  )(x)
  # The tutorial normalizes before pooling in the second stage.
  x = layers.LocalResponseNormalization(**lrn, name="norm2")(x)
  x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(
    384,
    activation="relu",
    kernel_initializer=layers.truncated_normal(0.04),
    bias_initializer=layers.constant(0.1),
    kernel_regularizer=decay,
    name="local3",
  )(x)
  x = keras.layers.Dense(
    192,
    activation="relu",
    kernel_initializer=layers.truncated_normal(0.04),
    bias_initializer=layers.constant(0.1),
    kernel_regularizer=decay,
    name="local4",
  )(x)
  logits = keras.layers.Dense(
    num_classes,
    kernel_initializer=layers.truncated_normal(1.0 / 192.0),
    bias_initializer=layers.constant(0.0),
    name="softmax_linear",
  )(x)
  return keras.Model(inputs, logits, name="cifar10_tutorial")


RECIPE = Recipe(
  name="cifar10_tutorial",
  dataset="cifar10",
  default=True,  # what trainers/cifar10.py trains without --recipe
  build=build,
  optimizer="sgd",
  learning_rate=0.1,
  lr_decay_rate=0.1,
  lr_decay_epochs=350,
  batch_size=128,
  max_steps=1_000_000,
  ema_decay=0.9999,
  weight_decay=0.004,
  eval_on="test",
  eval_every=1000,
  log_every=10,
  augmentation=None,
  validation_size=0,
  image_shape=(32, 32, 3),
)
