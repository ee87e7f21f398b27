"""The basic two-convolution MNIST CNN.

Where the numbers come from (the recipe as recorded in this project's earlier
trainers/config.py and models.py, and issue 8's line-by-line comparison):
  model        conv3x3/16 relu, conv3x3/32 stride 2 relu, max-pool 2x2 VALID,
               dense 32 relu, dense logits; Keras' default initializers.
               55,338 parameters at 28x28x1.
  optimizer    Adam 0.001, constant.
  batch, steps batch 100 for 10 epochs: 55,000 training images / 100 = 550
               steps per epoch, so 5,500 steps.
  validation   the recipe holds out 5,000 of MNIST's 60,000 training images
               (the Beam job's MNIST default), and validates on them.
  evaluation   not stated by the recipe: validation every 550 steps (once per
               epoch) is our choice.
  augmentation the data set's default (metadata.json): pixels scaled to [0, 1].
Text versus code: no disagreement found. (Before issue 8 this project trained
2,000 steps; the recipe's 10 epochs are 5,500.)
"""

import keras

from trainers import layers
from trainers.recipes import Recipe


def build(num_classes=10, input_shape=(28, 28, 1), weight_decay=None):
  """The basic MNIST CNN.

  Args:
    num_classes: Number of logits.
    input_shape: (height, width, channels) of the images.
    weight_decay: L2 factor on every kernel (the recipe has none).

  Returns:
    An uncompiled `keras.Model` from images to logits.
  """
  reg = dict(kernel_regularizer=layers.weight_decay(weight_decay))
  inputs = keras.Input(shape=input_shape, name="images")
  x = keras.layers.Conv2D(16, 3, strides=1, padding="same", activation="relu", **reg, name="conv1")(
    inputs
  )
  x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", **reg, name="conv2")(
    x
  )
  x = keras.layers.MaxPooling2D(2, strides=2, padding="valid", name="pool1")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(32, activation="relu", **reg, name="fc1")(x)
  logits = keras.layers.Dense(num_classes, **reg, name="logits")(x)
  return keras.Model(inputs, logits, name="mnist_basic")


RECIPE = Recipe(
  name="mnist_basic",
  dataset="mnist",
  default=True,  # what trainers/mnist.py trains without --recipe
  build=build,
  optimizer="adam",
  learning_rate=0.001,
  batch_size=100,
  max_steps=5_500,
  eval_on="validation",
  eval_every=550,
  validation_size=5_000,
  image_shape=(28, 28, 1),
)
