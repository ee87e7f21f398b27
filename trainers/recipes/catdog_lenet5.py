"""LeNet-5 adapted to 150x150 cat/dog photos.

Where the numbers come from (the recipe as recorded in this project's earlier
trainers/config.py and models.py):
  model        conv5x5/6 relu, avg-pool 2x2/2, conv5x5/16 relu, avg-pool 2x2/2,
               conv5x5/120 relu (all SAME), dense 84 relu, dense 2.
  optimizer    Adam 0.001, constant; batch 32; 2,000 steps.
  evaluation   the recipe holds out no validation images (the Beam job's
               cat/dog default is 0): test precision every 200 steps.
  augmentation the data set's default (metadata.json): random flip and
               standardization; eval: standardization.
Text versus code: the recipe states an initializer only for the output layer
(truncated normal stddev 0.005, bias 0.1); the other layers keep Keras'
defaults (Glorot-uniform kernels, zero biases) rather than guess. A stddev of
0.005 on all five layers would also shrink the activations of the deep stack.
"""

import keras

from trainers import layers
from trainers.recipes import Recipe


def build(num_classes=2, input_shape=(150, 150, 3), weight_decay=None):
  """LeNet-5 for cat/dog photos.

  Args:
    num_classes: Number of logits.
    input_shape: (height, width, channels) of the images.
    weight_decay: L2 factor on every kernel (the recipe has none).

  Returns:
    An uncompiled `keras.Model` from images to logits.
  """
  reg = dict(kernel_regularizer=layers.weight_decay(weight_decay))
  inputs = keras.Input(shape=input_shape, name="images")
  x = keras.layers.Conv2D(6, 5, padding="same", activation="relu", **reg, name="conv1")(inputs)
  x = keras.layers.AveragePooling2D(2, strides=2, padding="same", name="pool1")(x)
  x = keras.layers.Conv2D(16, 5, padding="same", activation="relu", **reg, name="conv2")(x)
  x = keras.layers.AveragePooling2D(2, strides=2, padding="same", name="pool2")(x)
  x = keras.layers.Conv2D(120, 5, padding="same", activation="relu", **reg, name="conv3")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(84, activation="relu", **reg, name="fc1")(x)
  logits = keras.layers.Dense(
    num_classes,
    kernel_initializer=layers.truncated_normal(0.005),
    bias_initializer=layers.constant(0.1),
    **reg,
    name="fc2",
  )(x)
  return keras.Model(inputs, logits, name="catdog_lenet5")


RECIPE = Recipe(
  name="catdog_lenet5",
  dataset="catdog",
  default=True,  # what trainers/catdog.py trains without --recipe
  build=build,
  optimizer="adam",
  learning_rate=0.001,
  batch_size=32,
  max_steps=2_000,
  eval_on="test",
  eval_every=200,
  validation_size=0,
  image_shape=(150, 150, 3),
)
